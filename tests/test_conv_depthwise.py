"""Depthwise convolution (C_in/groups == 1): every kernel variant of the depthwise path
(the AVX-512 stride-1 planes without a padded copy: the row-streamed 3x3 form, centred or
not, the any-kernel register blocks, the fused backward and the fused 3x3 'same' plane
backward; the AVX2 planes, the scalar loop) against the
scalar path (bit-exact on integer data) and the NumPy reference, and bitwise reproducible
across thread counts."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyconv
from pyconv import _core
from pyconv import reference as ref

DTYPES = [np.float32, np.float64]

# (n, cin, mult, H, W, kH, kW, pads (top, bottom, left, right), dilation (h, w), stride (h, w))
CASES = [
    (1, 3, 1, 9, 56, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),       # the MobileNet shape, small
    (2, 4, 1, 7, 17, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),       # W one past a vector
    (1, 2, 3, 5, 16, 3, 3, (0, 2, 2, 0), (1, 1), (1, 1)),       # multiplier 3, asymmetric pads
    (2, 3, 2, 6, 70, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),       # two column blocks
    (1, 2, 1, 4, 1, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),        # one column
    (1, 2, 1, 1, 33, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),       # one row
    (1, 3, 1, 3, 3, 3, 3, (0, 0, 0, 0), (1, 1), (1, 1)),        # kernel == input, 1x1 output
    (1, 2, 1, 10, 23, 3, 3, (3, 4, 5, 3), (1, 1), (1, 1)),      # padding wider than the kernel
    (2, 3, 1, 11, 29, 3, 3, (2, 2, 2, 2), (2, 2), (1, 1)),      # dilated 3x3: any-kernel form
    (1, 2, 2, 12, 31, 5, 5, (2, 2, 2, 2), (1, 1), (1, 1)),      # 5x5
    (1, 2, 1, 9, 40, 2, 5, (1, 0, 0, 4), (2, 3), (1, 1)),       # 2x5 dilated, asymmetric
    (1, 2, 1, 13, 19, 7, 7, (3, 3, 3, 3), (1, 1), (1, 1)),      # 7x7, 49 taps (tap groups)
    (1, 3, 1, 1, 1100, 1, 2, (0, 0, 8, 0), (1, 8), (1, 1)),     # 1D causal, two column strips
    (2, 2, 1, 1, 50, 1, 3, (0, 0, 1, 1), (1, 1), (1, 1)),       # 1D 3-tap
    (1, 2, 1, 6, 20, 3, 3, (1, 1, 1, 1), (1, 1), (2, 2)),       # stride 2: AVX2/scalar planes
    (1, 2, 2, 7, 21, 3, 3, (1, 1, 1, 1), (1, 1), (2, 1)),       # stride 2 in H only
    (1, 2, 1, 5, 9, 1, 70, (0, 0, 35, 34), (1, 1), (1, 1)),     # kW > 64: the AVX2 planes
    # centred 3x3 row-streamed forward (strips of 4 vectors, float 8-lane tail) and the
    # fused 'same' backward (column passes, 8-lane tail column)
    (2, 3, 1, 5, 150, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),      # several strips, ragged tail
    (1, 2, 1, 6, 64, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),       # 4 whole float vectors
    (1, 2, 1, 4, 8, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),        # only the 8-lane tail
    (1, 2, 2, 8, 100, 3, 3, (2, 0, 1, 1), (1, 1), (1, 1)),      # top pad 2, multiplier: dx accumulates
    (3, 2, 1, 70, 24, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1)),      # > 64 rows: weight sums flushed
    # row-streamed 3x3 without centring (one masked load per tap column)
    (1, 2, 1, 6, 58, 3, 3, (0, 0, 0, 0), (1, 1), (1, 1)),       # 'valid': 3 vectors and the tail
    (2, 2, 2, 5, 38, 3, 3, (2, 1, 0, 3), (1, 1), (1, 1)),       # asymmetric, multiplier 2
]
IDS = [f"c{i}" for i in range(len(CASES))]


def _ints(rng, shape, dtype):
    return rng.integers(-3, 4, size=shape).astype(dtype)


def _call(case, x, w, dy, b):
    n, cin, mult, H, W, kH, kW, pads, d, s = case
    kw = dict(stride=s, padding=((pads[0], pads[1]), (pads[2], pads[3])), dilation=d, groups=cin)
    y = pyconv.conv2d(x, w, b, **kw)
    grads = pyconv.conv2d_backward(dy, x, w, **kw)
    return (y,) + tuple(grads), kw


def _inputs(case, dtype, rng, integers):
    n, cin, mult, H, W, kH, kW, pads, d, s = case
    make = (lambda sh: _ints(rng, sh, dtype)) if integers else (lambda sh: rng.standard_normal(sh).astype(dtype))
    x, w, b = make((n, cin, H, W)), make((cin * mult, 1, kH, kW)), make((cin * mult,))
    Ho = (H + pads[0] + pads[1] - d[0] * (kH - 1) - 1) // s[0] + 1
    Wo = (W + pads[2] + pads[3] - d[1] * (kW - 1) - 1) // s[1] + 1
    dy = make((n, cin * mult, Ho, Wo))
    return x, w, dy, b


def _with_isa(name, fn):
    before = pyconv.kernel_info()["isa"]
    _core._set_isa(name)
    try:
        return fn()
    finally:
        _core._set_isa(before)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_kernels_match_scalar_and_reference(case, dtype, isa):
    """Each ISA's depthwise kernels equal the scalar path bit for bit on integer data and
    agree with the reference on real data (forward, grad input, grad weight, grad bias)."""
    n, cin, mult, H, W, kH, kW, pads, d, s = case
    assert _core.conv_path([n, cin, H, W], [cin * mult, 1, kH, kW], *s, *pads, *d, cin) == "depthwise"
    rng = np.random.default_rng(21)
    xi, wi, dyi, bi = _inputs(case, dtype, rng, True)
    got, kw = _call(case, xi, wi, dyi, bi)
    want = _with_isa("scalar", lambda: _call(case, xi, wi, dyi, bi)[0])
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(got[0], ref.conv2d(xi, wi, bi, **kw))
    for a, r in zip(got[1:], ref.conv2d_backward(dyi, xi, wi, **kw)):
        np.testing.assert_array_equal(a, r)
    x, w, dy, b = _inputs(case, dtype, rng, False)
    got, _ = _call(case, x, w, dy, b)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got[0], ref.conv2d(x, w, b, **kw), **tol)
    for a, r in zip(got[1:], ref.conv2d_backward(dy, x, w, **kw)):
        np.testing.assert_allclose(a, r, **tol)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[8], CASES[12]], ids=["3x3", "mult3", "dilated", "1d"])
def test_depthwise_bitwise_across_threads(case, isa):
    """Real data: forward and backward are bitwise identical for 1, 2 and 3 threads (each
    plane and each weight-gradient sum has one owner and a fixed order)."""
    case = (3,) + case[1:]
    rng = np.random.default_rng(4)
    x, w, dy, b = _inputs(case, np.float32, rng, False)
    before = pyconv.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            outs.append(_call(case, x, w, dy, b)[0])
    finally:
        pyconv.set_num_threads(before)
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)


def test_depthwise_weight_grad_long_sum_accuracy(isa):
    """A large plane (float partial sums flushed into double ones): grad weight stays
    within a few float32 ulps of the float64 reference, with a mean far from zero."""
    rng = np.random.default_rng(9)
    x = (rng.random((2, 2, 150, 150)) + 0.5).astype(np.float32)
    dy = (rng.random((2, 2, 150, 150)) + 0.5).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    _, gw, _ = pyconv.conv2d_backward(dy, x, w, padding=1, groups=2)
    want = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                               padding=1, groups=2)[1]
    np.testing.assert_allclose(gw, want, rtol=1.2e-7, atol=0)  # a float-only sum is off by ~4e-7 here


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_depthwise_random_geometry(isa, data):
    """Random stride-1 depthwise geometries (all kernel variants) against the scalar path
    on integer data."""
    kH, kW = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    dh, dw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    pads = tuple(data.draw(st.integers(0, 4)) for _ in range(4))
    H = data.draw(st.integers(max(1, dh * (kH - 1) + 1 - pads[0] - pads[1]), 12))
    W = data.draw(st.integers(max(1, dw * (kW - 1) + 1 - pads[2] - pads[3]), 40))
    case = (data.draw(st.integers(1, 2)), data.draw(st.integers(2, 3)), data.draw(st.integers(1, 2)),
            H, W, kH, kW, pads, (dh, dw), (1, 1))
    dtype = data.draw(st.sampled_from(DTYPES))
    xi, wi, dyi, bi = _inputs(case, dtype, np.random.default_rng(data.draw(st.integers(0, 99))), True)
    got, kw = _call(case, xi, wi, dyi, bi)
    want = _with_isa("scalar", lambda: _call(case, xi, wi, dyi, bi)[0])
    for a, c in zip(got, want):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("pad_w", [(1, 0), (1, 1), (0, 2)])
def test_depthwise_inf_past_the_output_row(pad_w, isa):
    """inf in the last input column: every path agrees with the scalar one (taps that
    never meet that column stay finite; lanes past the output row add nothing)."""
    rng = np.random.default_rng(3)
    x = _ints(rng, (1, 2, 9, 37), np.float32)
    x[..., -1] = np.inf
    w = _ints(rng, (2, 1, 3, 3), np.float32)
    kw = dict(padding=((1, 1), pad_w), groups=2)
    dy = rng.integers(1, 4, size=pyconv.conv2d(x, w, None, **kw).shape).astype(np.float32)
    got = pyconv.conv2d_backward(dy, x, w, **kw)[1]
    want = _with_isa("scalar", lambda: pyconv.conv2d_backward(dy, x, w, **kw)[1])
    np.testing.assert_array_equal(got, want)
    assert not np.isfinite(want).all()
    if pad_w[0] == 1:  # the left tap column never reaches the last input column
        assert np.isfinite(want[..., 0]).all()
