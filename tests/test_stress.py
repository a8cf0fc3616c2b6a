"""Numerical stress: batch norm far from the origin, on constant channels and near the
float32 range; convolutions with thousands of terms per output within the accumulation
bound; NaN and Inf reaching exactly the outputs whose windows contain them."""
from __future__ import annotations

import numpy as np
import pytest

import pyconv
import pyconv.reference as ref
from _ops import available, op_cases

AVAILABLE = {c.name for c in op_cases() if available(c)}


def needs(*ops):
    missing = [op for op in ops if op not in AVAILABLE]
    return pytest.mark.skipif(bool(missing), reason=f"not implemented yet: {missing}")


def _standardised(y, axes):
    y = y.astype(np.float64)
    return y.mean(axis=axes), y.var(axis=axes)


# ------------------------------------------------------------------------- batch norm


@needs("batch_norm_train")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_large_mean(isa, dtype):
    """Data at mean 1e6 with unit spread: E[x^2]-E[x]^2 would cancel catastrophically;
    the output is standardised and the running stats match the float64 reference."""
    r = np.random.default_rng(1)
    x = (1e6 + r.standard_normal((16, 3, 9, 11))).astype(dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y = pyconv.batch_norm(x, rm, rv, training=True, momentum=1.0, eps=0.0)
    assert np.isfinite(y).all()
    m, v = _standardised(y, (0, 2, 3))
    tol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(m, 0, atol=tol)
    np.testing.assert_allclose(v, 1, atol=tol)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(rm, xd.mean(axis=(0, 2, 3)), rtol=1e-7 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(rv, xd.var(axis=(0, 2, 3), ddof=1), rtol=1e-4 if dtype == np.float32 else 1e-9)


@needs("batch_norm_train", "batch_norm_eval")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.1, 3.7, -1e6 + 0.3, 1e-30, 7e37])
@pytest.mark.parametrize("shape", [(2, 3), (5, 3, 17), (3, 3, 7, 9), (64, 3, 1, 33)])
def test_batch_norm_constant_channel_gives_bias(isa, dtype, value, shape):
    """A constant channel normalises to exactly `bias` (the design's evaluation order)."""
    x = np.full(shape, value, dtype=dtype)
    x[:, 1] = dtype(-2.5)        # channels with different constants
    w = np.array([1.5, -2.0, 0.25], dtype)
    b = np.array([0.125, 3.0, -7.75], dtype)
    y = pyconv.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    want = np.broadcast_to(b.reshape((1, 3) + (1,) * (len(shape) - 2)), shape)
    assert np.array_equal(y, want), f"max deviation {np.max(np.abs(y - want))}"
    # eval with the channel's own statistics as running stats: also exactly bias
    rm = np.array([x[:, c].flat[0] for c in range(3)], dtype)
    y = pyconv.batch_norm(x, rm, np.ones(3, dtype), w, b, training=False)
    assert np.array_equal(y, want)


@needs("batch_norm_train")
def test_batch_norm_float32_near_1e20(isa):
    """float32 inputs around 1e20 (squares overflow float32): finite, standardised."""
    r = np.random.default_rng(2)
    x = (3e20 + 1e20 * r.standard_normal((8, 4, 10, 10))).astype(np.float32)
    x[:, 3] = (-1e20 * (1 + r.random((8, 10, 10)))).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = pyconv.batch_norm(x, rm, rv, training=True, momentum=0.5)
    # the batch variance (~1e40) exceeds float32: running_var may be inf, nothing else
    assert np.isfinite(y).all() and np.isfinite(rm).all() and not np.isnan(rv).any()
    m, v = _standardised(y, (0, 2, 3))
    np.testing.assert_allclose(m, 0, atol=1e-4)
    np.testing.assert_allclose(v, 1, atol=1e-4)
    np.testing.assert_allclose(y, ref.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32),
                                                 training=True, momentum=0.5), atol=1e-4, rtol=1e-4)


@needs("batch_norm_backward_train")
def test_batch_norm_backward_large_mean(isa):
    r = np.random.default_rng(3)
    x = (1e6 + r.standard_normal((16, 3, 8, 8))).astype(np.float64)
    gy = r.standard_normal(x.shape)
    w = r.standard_normal(3)
    got = pyconv.batch_norm_backward(gy, x, w, training=True)
    want = ref.batch_norm_backward(gy, x, w, training=True)
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt, rtol=1e-7, atol=1e-7 * np.max(np.abs(wnt)))


# ------------------------------------------------------------------------ convolution


@needs("conv2d", "conv2d_backward")
@pytest.mark.parametrize("shape", [
    # (N, C_in, H, W, C_out, k): K = C_in * k * k terms per output
    (1, 512, 6, 6, 8, 3),        # K = 4608
    (2, 96, 9, 9, 5, 7),         # K = 4704
    (1, 3000, 2, 3, 4, 1),       # K = 3000, 1x1
])
def test_conv_long_reductions_within_bound(isa, shape):
    """float32 results within K * 2^-24 * sum|x*w| of the float64 reference, forward
    and both backward products (which reduce over N*Ho*Wo or C_out*k*k terms)."""
    n, c, h, w_, co, k = shape
    r = np.random.default_rng(4)
    x = r.standard_normal((n, c, h, w_)).astype(np.float32)
    w = r.standard_normal((co, c, k, k)).astype(np.float32)
    pad = k // 2
    K = c * k * k
    y = pyconv.conv2d(x, w, padding=pad)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = ref.conv2d(x64, w64, padding=pad)
    absum = ref.conv2d(np.abs(x64), np.abs(w64), padding=pad)
    bound = K * 2.0**-24 * absum + 1e-30
    assert np.all(np.abs(y - want) <= bound), f"max err/bound {np.max(np.abs(y - want) / bound):.3g}"
    # the rounding is real: a float32 reduction of this length is not exact
    assert np.any(y != want.astype(np.float32)) or K < 1000

    gy = r.standard_normal(y.shape).astype(np.float32)
    gx, gw, _ = pyconv.conv2d_backward(gy, x, w, padding=pad)
    gy64 = gy.astype(np.float64)
    rgx, rgw, _ = ref.conv2d_backward(gy64, x64, w64, padding=pad)
    agx, agw, _ = ref.conv2d_backward(np.abs(gy64), np.abs(x64), np.abs(w64), padding=pad)
    Kx = co * k * k
    Kw = n * y.shape[2] * y.shape[3]
    assert np.all(np.abs(gx - rgx) <= Kx * 2.0**-24 * agx + 1e-30)
    assert np.all(np.abs(gw - rgw) <= Kw * 2.0**-24 * agw + 1e-30)


def _window_mask(mask, k, stride, pad, dilation):
    """Which outputs' windows contain a flagged input (a max-pool over the 0/1 mask)."""
    m = mask.astype(np.float64)
    return ref.max_pool2d(m, k, stride=stride, padding=pad, dilation=dilation) > 0


@needs("conv2d")
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", [
    dict(k=3, stride=1, pad=1, dilation=1),
    dict(k=3, stride=2, pad=1, dilation=2),
    dict(k=1, stride=1, pad=0, dilation=1),
    dict(k=5, stride=3, pad=2, dilation=1),
])
def test_conv_nonfinite_reach_only_their_windows(isa, special, dtype, cfg):
    r = np.random.default_rng(5)
    k = cfg["k"]
    x = r.integers(-3, 4, (2, 3, 13, 14)).astype(dtype)
    w = r.integers(1, 4, (4, 3, k, k)).astype(dtype)      # positive: no inf - inf
    flags = np.zeros(x.shape, bool)
    flags[0, 1, 6, 7] = True
    flags[1, 2, 0, 13] = True
    flags[1, 0, 12, 0] = True
    flags[0, 2, 7, 9] = True         # odd coordinates: reached by the stride-2 dilation-2 taps
    xs = x.copy()
    xs[flags] = special
    kw = dict(stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dilation"])
    y = pyconv.conv2d(xs, w, **kw)
    clean = pyconv.conv2d(x, w, **kw)
    # every output channel sees every input channel: reduce the mask over channels
    hit = _window_mask(flags.any(axis=1, keepdims=True), k, cfg["stride"], cfg["pad"], cfg["dilation"])
    hit = np.broadcast_to(hit, y.shape)
    assert hit.any()
    if np.isnan(special):
        assert np.isnan(y[hit]).all()
    else:
        assert np.isinf(y[hit]).all() and (np.sign(y[hit]) == np.sign(special)).all()
    assert np.isfinite(y[~hit]).all()
    assert np.array_equal(y[~hit], clean[~hit]), "outputs away from the non-finite inputs changed"


@needs("conv2d")
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", [
    dict(k=(3, 3), pad=1, dilation=1, alg="winograd"),
    dict(k=(1, 2), pad=((0, 0), (8, 0)), dilation=(1, 8), alg="winograd_1d"),
    dict(k=(1, 3), pad=((0, 0), (1, 1)), dilation=1, alg="winograd_1d"),
])
def test_winograd_nonfinite_reach_only_their_windows(isa, special, dtype, cfg):
    """The Winograd paths: the non-finite outputs are exactly those whose windows hold a
    NaN or Inf (an Inf may arrive as NaN: the input transforms subtract neighbours, the
    weights here are positive), and every other output equals the clean call's."""
    r = np.random.default_rng(6)
    x = r.integers(-3, 4, (2, 16, 12, 40)).astype(dtype)
    w = r.integers(1, 4, (16, 16) + cfg["k"]).astype(dtype)
    flags = np.zeros(x.shape, bool)
    flags[0, 3, 5, 7] = flags[1, 15, 0, 39] = flags[1, 0, 11, 0] = flags[0, 9, 6, 20] = True
    xs = x.copy()
    xs[flags] = special
    kw = dict(padding=cfg["pad"], dilation=cfg["dilation"], algorithm=cfg["alg"])
    y = pyconv.conv2d(xs, w, **kw)
    clean = pyconv.conv2d(x, w, **kw)
    ones = np.ones((1, 1) + cfg["k"])
    hit = ref.conv2d(flags.any(axis=1, keepdims=True).astype(np.float64), ones, padding=cfg["pad"],
                     dilation=cfg["dilation"]) > 0
    hit = np.broadcast_to(hit, y.shape)
    assert hit.any() and (~hit).any()
    assert not np.isfinite(y[hit]).any()
    if np.isnan(special):
        assert np.isnan(y[hit]).all()
    assert np.array_equal(y[~hit], clean[~hit]), "outputs away from the non-finite inputs changed"


@needs("max_pool2d")
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", [
    dict(k=2, stride=2, pad=0, dilation=1),
    dict(k=3, stride=2, pad=1, dilation=1),
    dict(k=3, stride=1, pad=1, dilation=2),
])
def test_pool_nonfinite_reach_only_their_windows(isa, special, dtype, cfg):
    r = np.random.default_rng(6)
    x = r.standard_normal((2, 3, 12, 15)).astype(dtype)
    flags = np.zeros(x.shape, bool)
    flags[0, 1, 5, 6] = True
    flags[0, 1, 5, 7] = True
    flags[1, 2, 11, 14] = True
    flags[1, 0, 0, 0] = True
    xs = x.copy()
    xs[flags] = special
    kw = dict(stride=cfg["stride"], padding=cfg["pad"], dilation=cfg["dilation"])
    y, idx = pyconv.max_pool2d(xs, cfg["k"], **kw, return_indices=True)
    cy, cidx = pyconv.max_pool2d(x, cfg["k"], **kw, return_indices=True)
    ry, ridx = ref.max_pool2d(xs, cfg["k"], **kw, return_indices=True)
    hit = _window_mask(flags, cfg["k"], cfg["stride"], cfg["pad"], cfg["dilation"])
    assert hit.any()
    if np.isnan(special):
        assert np.isnan(y[hit]).all()
    elif special > 0:
        assert (y[hit] == np.inf).all()
    else:
        # -inf never wins a window that also holds a finite value (every window here does)
        assert np.isfinite(y).all()
    assert np.array_equal(y[~hit], cy[~hit]) and np.array_equal(idx[~hit], cidx[~hit])
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)     # NaN: the last NaN's index, as PyTorch
