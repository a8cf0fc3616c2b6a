import os

import numpy as np
import pytest
from hypothesis import settings

import pyconv

# 'ci' and 'dev' are derandomized: every run draws the same examples, so CI checks exactly
# what was run before submitting. 'long' draws fresh random examples for fuzzing campaigns.
settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True, derandomize=True)
settings.register_profile("dev", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_DETECTED = pyconv.kernel_info()["detected_isa"]
ISAS = ["scalar"] + (["avx2"] if _DETECTED in ("avx2", "avx512") else []) + (["avx512"] if _DETECTED == "avx512" else [])


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs a test once per kernel path this CPU has, restoring the default after."""
    before = pyconv.kernel_info()["isa"]
    pyconv._core._set_isa(request.param)
    yield request.param
    pyconv._core._set_isa(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
