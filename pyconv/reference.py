"""NumPy reference implementation of every op, forward and backward.

This is the oracle the tests compare the C++ kernels against. It is public: users may
call it to check results. It accumulates in float64 and returns arrays of the input
dtype. It mirrors the functional API's names and arguments (padding in every form,
unbatched inputs) and the conventions in the design: NCHW, cross-correlation, flat
h*W + w pooling indices, biased variance to normalise and unbiased into running_var.
"""
from __future__ import annotations

import numpy as np

from . import shapes as _shapes

# ============================== conv ==============================

# ============================ end conv ============================

# ============================== pool ==============================

# ============================ end pool ============================

# ============================ batchnorm ===========================

# ========================== end batchnorm =========================
