"""The 1D Winograd path for 2- and 3-tap kernels (csrc/conv_winograd_1d.cpp): forward, grad
input and grad weight against the float64 reference, bit-exact on integers, the same bits on every
ISA and thread count, and the automatic choice on WaveNet-style and 3-tap layers."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import pyconv
from pyconv import _core
from pyconv import reference as ref
from _ops import conv_case_arrays

EPS = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
PATH = "winograd_1d"


def _fwd(x, w, b, pads, d, groups=1, sh=1, path=PATH, hpads=(0, 0)):
    return _core.conv2d_forward(x, w, b, sh, 1, *hpads, *pads, 1, d, groups, path)


def _bwd(dy, x, w, pads, d, groups=1, sh=1, path=PATH, hpads=(0, 0)):
    return _core.conv2d_backward(dy, x, w, sh, 1, *hpads, *pads, 1, d, groups, True, True, True, path)


def _kw(pads, d, groups, sh=1, hpads=(0, 0)):
    return dict(stride=(sh, 1), padding=(hpads, pads), dilation=(1, d), groups=groups)


def _pair_bound(B, d):
    """B computed with every tap of a weight set to sum|W_q|: B[t] covers the inputs of
    output t; an output's Winograd error also involves its pair partner's inputs (t + d
    or t - d), so the bound is B[t] + B[t - d] + B[t + d]."""
    out = B.astype(np.float64).copy()
    if B.shape[-1] > d:
        out[..., d:] += B[..., :-d]
        out[..., :-d] += B[..., d:]
    return out


def _abs_pair_weights(w):
    s = np.abs(w).astype(np.float64).sum(axis=-1, keepdims=True)
    return np.broadcast_to(s, w.shape).copy()


def _tol_check(got, want, bound, terms):
    """The direct sum's bound 4 * terms * eps * sum|x||w| with 8 more terms for the
    transforms (each input and weight transform rounds once or twice), where the bound
    comes from _pair_bound; a wrong index or a lost term would be off by O(sum|x||w|)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 4.0 * (terms + 8) * EPS[got.dtype] * bound.astype(np.float64) + 1e-300
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= tol), f"max err {err.max()} vs tol {tol.ravel()[np.argmax(err - tol)]}"


def _fwd_bound(x, w, b, kw, d):
    B = ref.conv2d(np.abs(x).astype(np.float64), _abs_pair_weights(w),
                   None if b is None else np.abs(b).astype(np.float64), **kw)
    return _pair_bound(B, d)


def _dw_bound(dy, x, w, kw):
    """Every product the Winograd weight gradient forms pairs a grad output with an input
    that one of the taps pairs it with: the bound of each tap is the sum over the taps of
    the direct sums sum|dy||x|."""
    B = ref.conv2d_backward(np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64),
                            np.abs(w).astype(np.float64), **kw)[1]
    return np.broadcast_to(B.sum(axis=-1, keepdims=True), B.shape)


def _dx_bound(dy, x, w, kw, d):
    B = ref.conv2d_backward(np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64),
                            _abs_pair_weights(w), **kw)[0]
    return _pair_bound(B, d)


@st.composite
def cases(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 11))
    cout = groups * draw(st.integers(1, 19))
    taps = draw(st.sampled_from([2, 3]))
    d = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16, 24]))
    pads = (draw(st.integers(0, taps * d)), draw(st.integers(0, taps * d)))
    W = draw(st.integers(max(1, (taps - 1) * d + 1 - pads[0] - pads[1]), 70))
    H = draw(st.integers(1, 3))
    n = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return dict(n=n, cin=cin, cout=cout, H=H, W=W, taps=taps, d=d, pads=pads, groups=groups, dtype=dtype,
                bias=bias, seed=seed)


def _arrays(c, ints):
    return conv_case_arrays(c, (1, c["taps"]), ints)


@given(case=cases())
def test_matches_reference_real_values(case):
    x, w, b, rng = _arrays(case, ints=False)
    pads, d, g = case["pads"], case["d"], case["groups"]
    kw = _kw(pads, d, g)
    y = _fwd(x, w, b, pads, d, g)
    taps = case["taps"]
    _tol_check(y, ref.conv2d(x, w, b, **kw), _fwd_bound(x, w, b, kw, d), case["cin"] // g * taps + 1)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dx, dw, _ = _bwd(dy, x, w, pads, d, g)
    want = ref.conv2d_backward(dy, x, w, **kw)
    _tol_check(dx, want[0], _dx_bound(dy, x, w, kw, d), case["cout"] // g * taps)
    _tol_check(dw, want[1], _dw_bound(dy, x, w, kw), case["n"] * case["H"] * y.shape[-1])


@given(case=cases())
def test_bit_exact_on_integers(case):
    x, w, b, rng = _arrays(case, ints=True)
    pads, d, g = case["pads"], case["d"], case["groups"]
    kw = _kw(pads, d, g)
    y = _fwd(x, w, b, pads, d, g)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **kw))
    dy = rng.integers(-3, 4, size=y.shape).astype(x.dtype)
    for got, want in zip(_bwd(dy, x, w, pads, d, g), ref.conv2d_backward(dy, x, w, **kw)):
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, want)


# (n, cin, cout, H, W, taps, d, pads, groups): a row shorter than a vector, the kernel span
# equal to the padded row, channels past a register tile, several K blocks (cin > 128),
# causal and anti-causal padding, dilations 1, 2, 4 and multiples of 8 (the AVX-512
# kernels) and others (portable kernels), a pad past the span (grad input then goes generic), an
# empty batch.
EDGE = [
    (1, 1, 1, 1, 1, 2, 8, (8, 0), 1),
    (1, 3, 5, 1, 9, 2, 8, (0, 0), 1),
    (2, 17, 9, 1, 40, 2, 8, (8, 0), 1),
    (1, 130, 21, 1, 77, 2, 16, (16, 0), 1),
    (2, 6, 10, 2, 50, 2, 24, (0, 24), 2),
    (1, 5, 7, 1, 33, 2, 3, (2, 3), 1),
    (1, 5, 7, 1, 33, 2, 3, (2, 4), 1),
    (0, 8, 8, 1, 20, 2, 8, (8, 0), 1),
    (2, 9, 13, 1, 37, 2, 1, (1, 0), 1),
    (1, 1, 1, 1, 1, 3, 1, (1, 1), 1),
    (2, 19, 14, 1, 53, 3, 1, (1, 1), 1),
    (1, 131, 7, 1, 66, 3, 1, (2, 0), 1),
    (2, 6, 12, 2, 41, 3, 8, (16, 0), 2),
    (1, 4, 6, 1, 3, 3, 1, (0, 0), 1),
    (1, 5, 5, 1, 29, 3, 2, (2, 2), 1),
    (2, 18, 11, 1, 71, 2, 2, (2, 0), 1),
    (1, 21, 17, 1, 90, 2, 4, (4, 0), 1),
    (2, 7, 9, 1, 45, 3, 4, (4, 4), 1),
]


@pytest.mark.parametrize("case", EDGE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_shapes_same_bits_on_every_isa(case, dtype, isa):
    """Each ISA's kernels: exact on integers, and on real values the same bits as the
    portable kernels (same operations in the same order)."""
    n, cin, cout, H, W, taps, d, pads, g = case
    rng = np.random.default_rng(7)
    kw = _kw(pads, d, g)
    x = rng.integers(-3, 4, (n, cin, H, W)).astype(dtype)
    w = rng.integers(-3, 4, (cout, cin // g, 1, taps)).astype(dtype)
    b = rng.integers(-3, 4, cout).astype(dtype)
    y = _fwd(x, w, b, pads, d, g)
    np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **kw))
    dy = rng.integers(-3, 4, y.shape).astype(dtype)
    for got, want in zip(_bwd(dy, x, w, pads, d, g), ref.conv2d_backward(dy, x, w, **kw)):
        np.testing.assert_array_equal(got, want)
    x, w = rng.standard_normal(x.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    y = _fwd(x, w, b, pads, d, g)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, _ = _bwd(dy, x, w, pads, d, g)
    before = pyconv.kernel_info()["isa"]
    try:
        _core._set_isa("scalar")
        np.testing.assert_array_equal(y, _fwd(x, w, b, pads, d, g))
        sdx, sdw, _ = _bwd(dy, x, w, pads, d, g)
        np.testing.assert_array_equal(dw, sdw)
        if max(pads) <= (taps - 1) * d:  # else grad input goes generic (its bits vary by ISA)
            np.testing.assert_array_equal(dx, sdx)
    finally:
        _core._set_isa(before)
    _tol_check(y, ref.conv2d(x, w, b, **kw), _fwd_bound(x, w, b, kw, d), cin // g * taps + 1)


@pytest.mark.parametrize("taps", [2, 3])
def test_2d_rows_stride_and_padding(taps):
    """A 1 x 2 / 1 x 3 kernel on 2D input: rows strided and padded (padding rows give the
    bias)."""
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 4, (2, 12, 7, 45)).astype(np.float32)
    w = rng.integers(-3, 4, (20, 12, 1, taps)).astype(np.float32)
    b = rng.integers(-3, 4, 20).astype(np.float32)
    for sh, hp in [(1, (0, 0)), (2, (1, 2)), (3, (2, 0))]:
        kw = _kw((8, 0), 8, 1, sh, hp)
        y = _fwd(x, w, b, (8, 0), 8, 1, sh, hpads=hp)
        np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **kw))
        dy = rng.integers(-3, 4, y.shape).astype(np.float32)
        for got, want in zip(_bwd(dy, x, w, (8, 0), 8, 1, sh, hpads=hp), ref.conv2d_backward(dy, x, w, **kw)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("taps,d", [(2, 8), (3, 1)])
def test_bias_is_added_to_the_finished_sum(taps, d):
    """conv(x, w, b) == conv(x, w) + b bitwise, across K blocks (cin > 128)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 150, 1, 200)).astype(np.float32)
    w = rng.standard_normal((24, 150, 1, taps)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    y = _fwd(x, w, b, (d, 0), d)
    np.testing.assert_array_equal(y, _fwd(x, w, None, (d, 0), d) + b[None, :, None, None])


@pytest.mark.parametrize("shape", [(3, 64, 64, 1, 3000, 2, 8, (8, 0), 1), (2, 24, 40, 2, 517, 2, 16, (0, 16), 2),
                                   (5, 20, 36, 1, 300, 2, 3, (3, 0), 1), (4, 32, 30, 1, 700, 3, 1, (1, 1), 1),
                                   (3, 40, 24, 1, 900, 2, 4, (4, 0), 1)])
def test_thread_counts_bitwise_equal(shape):
    n, cin, cout, H, W, taps, d, pads, g = shape
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, cin, H, W)).astype(np.float32)
    w = rng.standard_normal((cout, cin // g, 1, taps)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            y = _fwd(x, w, b, pads, d, g)
            outs.append((y, *_bwd(np.sin(y), x, w, pads, d, g)))
    finally:
        pyconv.set_num_threads(before)
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)


def test_auto_takes_it_on_the_benchmark_layers():
    """conv1d causal k=2 d=8 64 channels and k=3 pad 1 128 channels: auto runs
    winograd_1d where AVX-512 is active (and its results equal the forced path's), the
    generic lowering elsewhere."""
    want = "winograd_1d" if pyconv.kernel_info()["isa"] == "avx512" else "generic"
    assert _core.conv_path([8, 64, 1, 16000], [64, 64, 1, 2], 1, 1, 0, 0, 8, 0, 1, 8, 1) == want
    assert _core.conv_path([32, 128, 1, 1024], [128, 128, 1, 3], 1, 1, 0, 0, 1, 1, 1, 1, 1) == want
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 64, 300)).astype(np.float32)
    w = rng.standard_normal((64, 64, 2)).astype(np.float32)
    y = pyconv.conv1d(x, w, padding="causal", dilation=8)
    np.testing.assert_array_equal(y, pyconv.conv1d(x, w, padding="causal", dilation=8, algorithm=want))
    # the automatic backward: float32 grad weight through the Winograd domain where
    # AVX-512 runs, float64 through the generic reduction
    dy = np.cos(y)
    auto = pyconv.conv1d_backward(dy, x, w, padding="causal", dilation=8)
    forced = pyconv.conv1d_backward(dy, x, w, padding="causal", dilation=8, algorithm=want)
    for a, f in zip(auto, forced):
        np.testing.assert_array_equal(a, f)
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_array_equal(pyconv.conv1d_backward(dy64, x64, w64, padding="causal", dilation=8)[1],
                                  pyconv.conv1d_backward(dy64, x64, w64, padding="causal", dilation=8,
                                                         algorithm="generic")[1])
    y_direct = pyconv.conv1d(x, w, padding="causal", dilation=8, algorithm="generic")
    bound = _pair_bound(ref.conv1d(np.abs(x).astype(np.float64), _abs_pair_weights(w), padding="causal",
                                   dilation=8), 8)
    _tol_check(y, y_direct, bound, 64 * 2 * 2)


@pytest.mark.parametrize("xs,ws,s,pads,d", [
    ((1, 64, 1, 500), (64, 64, 1, 2), (1, 1), (0, 0, 3, 0), (1, 3)),    # dilation 3: portable kernels only
    ((1, 4, 1, 500), (64, 4, 1, 2), (1, 1), (0, 0, 8, 0), (1, 8)),      # few input channels
    ((1, 64, 1, 20), (64, 64, 1, 2), (1, 1), (0, 0, 8, 0), (1, 8)),     # few output pairs
    ((1, 64, 1, 500), (64, 64, 1, 4), (1, 1), (0, 0, 8, 0), (1, 8)),    # kernel 4
    ((1, 64, 1, 500), (64, 64, 1, 3), (1, 2), (0, 0, 1, 1), (1, 1)),    # strided
])
def test_auto_leaves_other_shapes(xs, ws, s, pads, d):
    assert _core.conv_path(list(xs), list(ws), *s, *pads, *d, 1) != "winograd_1d"


def test_forcing_it_where_unsupported_is_an_error():
    x = np.zeros((1, 4, 3, 30), np.float32)
    for ws, s in [((4, 4, 1, 4), (1, 1)), ((4, 4, 2, 2), (1, 1)), ((4, 4, 1, 2), (1, 2)), ((4, 4, 1, 1), (1, 1))]:
        with pytest.raises(ValueError, match="winograd_1d"):
            _core.conv2d_forward(x, np.zeros(ws, np.float32), None, *s, 0, 0, 0, 0, 1, 1, 1, PATH)
    with pytest.raises(ValueError, match="winograd_1d"):
        pyconv.conv1d(np.zeros((1, 4, 30), np.float32), np.zeros((4, 4, 5), np.float32), algorithm=PATH)


# Forward outputs of 8 MiB and more written in one K block (cin/groups <= 64) are streamed
# past the caches where a tile's lines are whole and 64-byte aligned (float32 d = 1, 2, 4,
# 8 or a multiple of 16; float64 d = 1, 2, 4 or a multiple of 8). The rest are stored as
# before: dilation 24 float32, rows not a whole number of lines (W = 16001), two K blocks.
STREAMED = [  # dtype, dilation, taps, W, cin, padding
    (np.float32, 8, 2, 16000, 64, (8, 0)),
    (np.float32, 16, 2, 16384, 64, (0, 0)),
    (np.float32, 32, 3, 16384, 64, (32, 32)),
    (np.float32, 1, 3, 16384, 64, (1, 1)),
    (np.float32, 2, 2, 16000, 48, (2, 0)),
    (np.float32, 4, 3, 16000, 64, (3, 5)),
    (np.float64, 8, 2, 8000, 64, (8, 0)),
    (np.float64, 16, 3, 8192, 40, (16, 16)),
    (np.float64, 1, 2, 8192, 64, (1, 0)),
    (np.float32, 24, 2, 16000, 64, (24, 0)),
    (np.float32, 8, 2, 16001, 64, (8, 0)),
    (np.float32, 8, 2, 16000, 100, (8, 0)),
]


@pytest.mark.parametrize("case", STREAMED)
def test_streamed_outputs_same_bits(case):
    """Large outputs (streamed or not): exact on integers against the direct path, and on
    real values the portable kernels' bits, the bias included, on 1 and 2 threads."""
    dtype, d, taps, W, cin, pads = case
    rng = np.random.default_rng(11)
    x = rng.integers(-4, 5, (3, cin, 1, W)).astype(dtype)
    w = rng.integers(-3, 4, (64, cin, 1, taps)).astype(dtype)
    b = rng.integers(-3, 4, 64).astype(dtype)
    y = _fwd(x, w, b, pads, d)
    assert y.nbytes >= 8 << 20 and y.ctypes.data % 64 == 0
    np.testing.assert_array_equal(y, _fwd(x, w, b, pads, d, path="generic"))
    x, w = rng.standard_normal(x.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    b = rng.standard_normal(64).astype(dtype)
    before_t, before_isa = pyconv.get_num_threads(), pyconv.kernel_info()["isa"]
    try:
        outs = []
        for t in (1, 2):
            pyconv.set_num_threads(t)
            outs.append(_fwd(x, w, b, pads, d))
        _core._set_isa("scalar")
        outs.append(_fwd(x, w, b, pads, d))
    finally:
        pyconv.set_num_threads(before_t)
        _core._set_isa(before_isa)
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)


def test_streamed_grad_input_same_bits():
    """Grad input of a causal d = 8 layer runs the mirrored forward (a 12 MiB output)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 64, 1, 16000)).astype(np.float32)
    w = rng.standard_normal((64, 64, 1, 2)).astype(np.float32)
    dy = rng.standard_normal((3, 64, 1, 16000)).astype(np.float32)
    dx = _bwd(dy, x, w, (8, 0), 8)[0]
    before = pyconv.kernel_info()["isa"]
    try:
        _core._set_isa("scalar")
        np.testing.assert_array_equal(dx, _bwd(dy, x, w, (8, 0), 8)[0])
    finally:
        _core._set_isa(before)
    xi = rng.integers(-3, 4, x.shape).astype(np.float32)
    wi = rng.integers(-3, 4, w.shape).astype(np.float32)
    dyi = rng.integers(-3, 4, dy.shape).astype(np.float32)
    np.testing.assert_array_equal(_bwd(dyi, xi, wi, (8, 0), 8)[0], _bwd(dyi, xi, wi, (8, 0), 8, path="generic")[0])
