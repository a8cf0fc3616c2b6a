"""The Winograd F(2x2,3x3) convolution path (csrc/conv_winograd.cpp): forward, grad input
and grad weight against the float64 reference, bit-exact on integers, independent of the
thread count, per ISA, and the automatic choice."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import pyconv
from pyconv import _core
from pyconv import reference as ref
from _ops import conv_case_arrays

EPS = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}


def _fwd(x, w, b, pads, groups=1, path="winograd"):
    return _core.conv2d_forward(x, w, b, 1, 1, *pads, 1, 1, groups, path)


def _bwd(dy, x, w, pads, groups=1, path="winograd"):
    return _core.conv2d_backward(dy, x, w, 1, 1, *pads, 1, 1, groups, True, True, True, path)


def _kw(pads, groups):
    return dict(padding=((pads[0], pads[1]), (pads[2], pads[3])), groups=groups)


def _winograd_tol(got, want, bound, terms):
    """The direct sum's accumulation bound 4 * terms * eps * sum|x||w|, with 16 more terms
    for the transforms (sums of up to 4 inputs, 9 weights, 9 products; measured errors
    stay below 0.2 of terms * eps * bound); a wrong index or a
    lost term would be off by O(sum|x||w|), about 1/eps times more.

    The transforms mix the elements of one tile (and the 9 taps of a weight), so an
    element's rounding error scales with its neighbours' magnitudes: a tap or output whose
    own sum|x||w| is 0 (it sees only padding) gets a tiny nonzero value where the direct
    sum gives exactly 0. The bound is therefore taken per plane (per 3x3 kernel for grad
    weight): its largest sum|x||w|."""
    assert got.shape == want.shape and got.dtype == want.dtype
    if bound.ndim >= 2 and bound.size:
        bound = np.broadcast_to(bound.max(axis=(-2, -1), keepdims=True), bound.shape)
    tol = 4.0 * (terms + 16) * EPS[got.dtype] * bound.astype(np.float64) + 1e-300
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= tol), f"max err {err.max()} vs tol {tol.ravel()[np.argmax(err - tol)]}"


@st.composite
def cases(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 9))
    cout = groups * draw(st.integers(1, 9))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    # output size H + top + bottom - 2 >= 1
    H = draw(st.integers(max(1, 3 - pads[0] - pads[1]), 13))
    W = draw(st.integers(max(1, 3 - pads[2] - pads[3]), 13))
    n = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return dict(n=n, cin=cin, cout=cout, H=H, W=W, pads=pads, groups=groups, dtype=dtype, bias=bias, seed=seed)


def _arrays(c, ints):
    return conv_case_arrays(c, (3, 3), ints)


@given(case=cases())
def test_matches_reference_real_values(case):
    x, w, b, rng = _arrays(case, ints=False)
    pads, g = case["pads"], case["groups"]
    kw = _kw(pads, g)
    y = _fwd(x, w, b, pads, g)
    bound = ref.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                       None if b is None else np.abs(b).astype(np.float64), **kw)
    _winograd_tol(y, ref.conv2d(x, w, b, **kw), bound, case["cin"] // g * 9 + 1)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dx, dw, db = _bwd(dy, x, w, pads, g)
    want = ref.conv2d_backward(dy, x, w, **kw)
    bounds = ref.conv2d_backward(np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64),
                                 np.abs(w).astype(np.float64), **kw)
    out_px = y.shape[2] * y.shape[3] * max(case["n"], 1)
    for got, r, bd, t in zip((dx, dw, db), want, bounds, (case["cout"] // g * 9, out_px, out_px)):
        _winograd_tol(got, r, bd, t)


@given(case=cases())
def test_bit_exact_on_integers(case):
    x, w, b, rng = _arrays(case, ints=True)
    pads, g = case["pads"], case["groups"]
    kw = _kw(pads, g)
    y = _fwd(x, w, b, pads, g)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **kw))
    dy = rng.integers(-3, 4, size=y.shape).astype(x.dtype)
    for got, want in zip(_bwd(dy, x, w, pads, g), ref.conv2d_backward(dy, x, w, **kw)):
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, want)


# Named edge shapes: 1x1 and 2x2 planes, odd/even sizes, one channel, channels past a
# register tile, kernel == padded input, asymmetric padding, empty batch.
EDGE = [
    (1, 1, 1, 1, 1, (1, 1, 1, 1), 1),
    (2, 3, 5, 2, 2, (1, 1, 1, 1), 1),
    (1, 17, 35, 3, 3, (0, 0, 0, 0), 1),
    (2, 4, 6, 7, 8, (2, 0, 0, 2), 2),
    (3, 33, 19, 9, 5, (0, 1, 2, 0), 1),
    (0, 8, 8, 6, 6, (1, 1, 1, 1), 1),
    (1, 6, 4, 1, 16, (1, 1, 0, 2), 2),
    (2, 5, 7, 9, 36, (1, 1, 2, 1), 1),   # wide odd planes: 16-tile panels over one or two tile rows
]


@pytest.mark.parametrize("case", EDGE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_shapes_each_isa(case, dtype, isa):
    """Every ISA's transforms and micro-kernel: exact on integers, close on real values."""
    n, cin, cout, H, W, pads, g = case
    rng = np.random.default_rng(7)
    kw = _kw(pads, g)
    x = rng.integers(-3, 4, (n, cin, H, W)).astype(dtype)
    w = rng.integers(-3, 4, (cout, cin // g, 3, 3)).astype(dtype)
    b = rng.integers(-3, 4, cout).astype(dtype)
    y = _fwd(x, w, b, pads, g)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **kw))
    dy = rng.integers(-3, 4, y.shape).astype(dtype)
    for got, want in zip(_bwd(dy, x, w, pads, g), ref.conv2d_backward(dy, x, w, **kw)):
        np.testing.assert_array_equal(got, want)
    x, w = rng.standard_normal(x.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    bound = ref.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, **kw)
    _winograd_tol(_fwd(x, w, None, pads, g), ref.conv2d(x, w, None, **kw), bound, cin // g * 9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_channels_each_isa(dtype, isa):
    """Channel counts spanning several K blocks and register panels, many tile blocks."""
    rng = np.random.default_rng(3)
    n, cin, cout, H, W, pads = 2, 67, 45, 23, 21, (1, 1, 1, 1)
    kw = _kw(pads, 1)
    x = rng.standard_normal((n, cin, H, W)).astype(dtype)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(dtype)
    y = _fwd(x, w, None, pads)
    bound = ref.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, **kw)
    _winograd_tol(y, ref.conv2d(x, w, None, **kw), bound, cin * 9)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = ref.conv2d_backward(dy, x, w, **kw)
    bounds = ref.conv2d_backward(np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64),
                                 np.abs(w).astype(np.float64), **kw)
    for got, r, bd, t in zip(_bwd(dy, x, w, pads), want, bounds, (cout * 9, n * H * W, n * H * W)):
        _winograd_tol(got, r, bd, t)


@pytest.mark.parametrize("shape", [(2, 40, 36, 30, 29, (1, 1, 1, 1), 1), (3, 24, 32, 17, 18, (0, 2, 1, 0), 2),
                                   (9, 64, 48, 7, 7, (1, 1, 1, 1), 1)])
def test_thread_counts_bitwise_equal(shape):
    n, cin, cout, H, W, pads, g = shape
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, cin, H, W)).astype(np.float32)
    w = rng.standard_normal((cout, cin // g, 3, 3)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            y = _fwd(x, w, b, pads, g)
            dy = np.sin(y)
            outs.append((y, *_bwd(dy, x, w, pads, g)))
    finally:
        pyconv.set_num_threads(before)
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)


def _exact_fwd_dx(x, w, pads=(1, 1, 1, 1)):
    kw = _kw(pads, 1)
    y = _fwd(x, w, None, pads)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, None, **kw))
    dy = np.random.default_rng(2).integers(-2, 3, y.shape).astype(x.dtype)
    dx = _core.conv2d_backward(dy, x, w, 1, 1, *pads, 1, 1, 1, True, False, False, "winograd")[0]
    np.testing.assert_array_equal(dx, ref.conv2d_backward(dy, x, w, **kw)[0])
    return y, dx


def test_large_weights_weight_stationary_each_isa(isa):
    """16 x C_out x C_in transformed weights above 8 MB with more output channels than
    tiles: the weight-stationary order (a shared V of all the tiles, then output-channel
    groups each with its own U slice), forward and grad input exact on integers."""
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, (1, 400, 5, 4)).astype(np.float32)
    w = rng.integers(-2, 3, (408, 400, 3, 3)).astype(np.float32)
    _exact_fwd_dx(x, w)


def test_large_weights_streamed_transform():
    """Transformed weights above 8 MB but fewer output channels than tiles: U in full,
    written with non-temporal stores at one thread (AVX-512 float32); the grad input of
    the same call (16 -> 8200 channels) takes the weight-stationary order."""
    rng = np.random.default_rng(12)
    x = rng.integers(-2, 3, (1, 8200, 10, 10)).astype(np.float32)
    w = rng.integers(-2, 3, (16, 8200, 3, 3)).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            pyconv.set_num_threads(t)
            outs.append(_exact_fwd_dx(x, w))
    finally:
        pyconv.set_num_threads(before)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_weight_stationary_thread_counts_bitwise_equal():
    """Weight-stationary forward with several output-channel groups and tile chunks per
    group (384 -> 384 channels, 150 tiles): real-valued results identical at 1, 2 and 3
    threads, and exact on integers."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((6, 384, 10, 10)).astype(np.float32)
    w = rng.standard_normal((384, 384, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 384, 10, 10)).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            outs.append((_fwd(x, w, None, (1, 1, 1, 1)),
                         _core.conv2d_backward(dy, x, w, 1, 1, 1, 1, 1, 1, 1, 1, 1, True, False, False,
                                               "winograd")[0]))
    finally:
        pyconv.set_num_threads(before)
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)
    xi, wi = np.rint(x).astype(np.float32), np.rint(w).astype(np.float32)
    np.testing.assert_array_equal(_fwd(xi, wi, None, (1, 1, 1, 1)),
                                  _fwd(xi, wi, None, (1, 1, 1, 1), path="generic"))


@pytest.mark.parametrize("dtype,shape", [(np.float64, (1, 128, 28, 28)), (np.float32, (3, 128, 28, 28))])
def test_grad_weight_several_tile_blocks_each_isa(dtype, shape, isa):
    """Enough tiles for more than one grad-weight tile block (dM summed across blocks in
    a full array; a single block sums each task's rows in a per-thread buffer instead):
    exact on integers."""
    rng = np.random.default_rng(14)
    x = rng.integers(-2, 3, shape).astype(dtype)
    w = rng.integers(-2, 3, (shape[1], shape[1], 3, 3)).astype(dtype)
    dy = rng.integers(-2, 3, shape).astype(dtype)
    dw = _core.conv2d_backward(dy, x, w, 1, 1, 1, 1, 1, 1, 1, 1, 1, False, True, False, "winograd")[1]
    np.testing.assert_array_equal(dw, ref.conv2d_backward(dy, x, w, **_kw((1, 1, 1, 1), 1))[1])


BENCH_SHAPES = [(1, 64, 56), (8, 64, 56), (1, 128, 28), (8, 128, 28), (1, 256, 14), (8, 256, 14), (8, 512, 7)]


@pytest.mark.parametrize("n,c,px", BENCH_SHAPES)
def test_auto_chooses_winograd_on_benchmark_shapes(n, c, px):
    assert _core.conv_path([n, c, px, px], [c, c, 3, 3], 1, 1, 1, 1, 1, 1, 1, 1, 1) == "winograd"


@pytest.mark.parametrize("xs,ws,s,pads,d,g", [
    ((1, 3, 28, 28), (16, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),     # few input channels
    ((1, 64, 56, 56), (64, 64, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),   # strided
    ((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),   # dilated
    ((1, 64, 56, 56), (64, 64, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),   # 5x5
    ((1, 64, 56, 56), (64, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 64),   # depthwise
])
def test_auto_leaves_other_shapes(xs, ws, s, pads, d, g):
    assert _core.conv_path(list(xs), list(ws), *s, *pads, *d, g) != "winograd"


def test_forcing_winograd_where_unsupported_is_an_error():
    x = np.zeros((1, 4, 9, 9), np.float32)
    for w, s, d in [((4, 4, 3, 3), (2, 1), (1, 1)), ((4, 4, 3, 3), (1, 1), (1, 2)),
                    ((4, 4, 5, 5), (1, 1), (1, 1)), ((4, 4, 3, 1), (1, 1), (1, 1))]:
        with pytest.raises(ValueError, match="winograd"):
            _core.conv2d_forward(x, np.zeros(w, np.float32), None, *s, 1, 1, 1, 1, *d, 1, "winograd")


def test_generic_stays_the_direct_sum():
    """On a shape auto sends to Winograd, auto equals path='winograd' and path='generic'
    still runs the direct sum (the two differ in the last bits on real data)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 32, 12, 12)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    pads = (1, 1, 1, 1)
    assert _core.conv_path(list(x.shape), list(w.shape), 1, 1, *pads, 1, 1, 1) == "winograd"
    yw, yg = _fwd(x, w, None, pads, path="winograd"), _fwd(x, w, None, pads, path="generic")
    np.testing.assert_array_equal(_fwd(x, w, None, pads, path="auto"), yw)
    assert not np.array_equal(yw, yg)
