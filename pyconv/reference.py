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


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch norm over every axis but 1, in float64; updates running stats in place when
    training (unbiased variance into running_var). Returns the input dtype."""
    x = np.asarray(input, dtype=np.float64)
    c = x.shape[1]
    axes, bshape = _bn_axes(x)
    if training:
        n = x.size // c if c else 0
        if n < 2:
            raise ValueError("expected more than 1 value per channel when training")
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
        if running_mean is not None:
            running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean
        if running_var is not None:
            running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * var * n / (n - 1)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, dtype=np.float64)
    out = (x - mean.reshape(bshape)) * (invstd * w).reshape(bshape) + b.reshape(bshape)
    return out.astype(input.dtype)


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=1e-5):
    """(grad_input, grad_weight, grad_bias) of batch_norm, in float64; grad_weight and
    grad_bias are None when weight is None (taken as 1)."""
    x = np.asarray(input, dtype=np.float64)
    dy = np.asarray(grad_output, dtype=np.float64)
    c = x.shape[1]
    axes, bshape = _bn_axes(x)
    if training:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    gb = dy.sum(axis=axes)
    gw = (dy * xhat).sum(axis=axes)
    a = (w * invstd).reshape(bshape)
    if training:
        n = x.size // c
        dx = a * (dy - (gb / n).reshape(bshape) - xhat * (gw / n).reshape(bshape))
    else:
        dx = a * dy
    dt = input.dtype
    if weight is None:
        return dx.astype(dt), None, None
    return dx.astype(dt), gw.astype(dt), gb.astype(dt)


# ========================== end batchnorm =========================
