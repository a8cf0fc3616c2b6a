"""The generic (implicit GEMM) convolution path: the AVX-512 stride-2 unfolding packer,
the bias added to the finished sum, and grad weight summed in fixed pieces (whole images,
or row slices of an image when the batch is small) whatever the thread count."""
import numpy as np
import pytest

import pyconv
from pyconv import _core
from pyconv import reference as ref

from conftest import ISAS

DTYPES = [np.float32, np.float64]


def _ints(rng, shape, dtype, lo=-3, hi=4):
    return rng.integers(lo, hi, size=shape).astype(dtype)


def _with_threads(n, fn):
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(n)
        return fn()
    finally:
        pyconv.set_num_threads(before)


def _with_isa(name, fn):
    before = pyconv.kernel_info()["isa"]
    try:
        _core._set_isa(name)
        return fn()
    finally:
        _core._set_isa(before)


# (n, cin, cout, H, W, k, stride, padding, dilation, groups)
STRIDE2_CASES = [
    (1, 3, 20, 40, 46, (7, 7), 2, 3, 1, 1),                      # stem-like, Wo = 23
    (2, 4, 6, 9, 37, (3, 3), (1, 2), ((1, 2), (0, 3)), 1, 2),    # asymmetric padding, groups
    (2, 3, 5, 11, 50, (3, 5), 2, 2, (1, 2), 1),                  # dilation along W
    (3, 2, 4, 5, 7, (3, 3), 2, 1, 1, 1),                         # Wo = 4: panels span rows and images
    (1, 2, 3, 1, 70, (1, 4), 2, ((0, 0), (3, 1)), 1, 1),         # H = 1 (a 1D convolution)
    (2, 2, 3, 6, 9, (2, 9), 2, 0, 1, 1),                         # kernel == input width
    (1, 5, 17, 12, 64, (3, 3), 2, 1, 1, 1),                      # Wo = 32: whole panels
    (2, 3, 4, 8, 8, (3, 3), 3, 1, 1, 1),                         # stride 3 (not the packer's)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", STRIDE2_CASES)
def test_strided_forward_same_on_every_isa(dtype, case):
    """Stride 2 along W packs with two masked loads and a permute under AVX-512: it packs
    the same values as the portable packer, so the results equal the AVX2 path's bitwise
    (same GEMM arithmetic) and the reference exactly on integer data."""
    n, cin, cout, H, W, k, s, pad, d, g = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, cin, H, W)).astype(dtype)
    w = rng.standard_normal((cout, cin // g) + k).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    kw = dict(stride=s, padding=pad, dilation=d, groups=g)
    xi, wi, bi = _ints(rng, x.shape, dtype), _ints(rng, w.shape, dtype), _ints(rng, b.shape, dtype)
    want = ref.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    got = {}
    for isa in ISAS:
        y = _with_isa(isa, lambda: pyconv.conv2d(x, w, b, algorithm="generic", **kw))
        tol = 2e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
        exact = _with_isa(isa, lambda: pyconv.conv2d(xi, wi, bi, algorithm="generic", **kw))
        np.testing.assert_array_equal(exact, ref.conv2d(xi, wi, bi, **kw))
        for t in (2, 3):
            again = _with_threads(t, lambda: _with_isa(isa, lambda: pyconv.conv2d(x, w, b, algorithm="generic", **kw)))
            np.testing.assert_array_equal(again, _with_threads(1, lambda: _with_isa(
                isa, lambda: pyconv.conv2d(x, w, b, algorithm="generic", **kw))))
        got[isa] = y
    if "avx2" in got and "avx512" in got:
        np.testing.assert_array_equal(got["avx2"], got["avx512"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,wshape,kw", [
    ((2, 6, 3000), (64, 6, 2), dict(padding=(8, 0), dilation=8)),   # one image: bias in column blocks
    ((5, 50, 6, 6), (9, 50, 3, 3), dict(padding=1)),                 # small planes batched, K > one k block
    ((3, 40, 9, 9), (7, 40, 1, 1), dict()),                          # pointwise
    ((2, 4, 17, 33), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
])
def test_bias_is_added_to_the_finished_sum(dtype, xshape, wshape, kw):
    """conv(x, w, b) == conv(x, w) + b bitwise on the generic path (and pointwise): the bias
    is one rounding added after the sum, in the batched and per-image drivers alike, so a
    batch gives each image exactly its own result."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype) * 10
    conv = pyconv.conv1d if x.ndim == 3 else pyconv.conv2d
    algo = "pointwise" if wshape[2:] == (1, 1) else "generic"
    y = conv(x, w, b, algorithm=algo, **kw)
    y0 = conv(x, w, None, algorithm=algo, **kw)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    np.testing.assert_array_equal(y, y0 + b.reshape(bshape))
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(y[i:i + 1], conv(x[i:i + 1], w, b, algorithm=algo, **kw))
    tol = 2e-4 if dtype == np.float32 else 1e-10
    rconv = ref.conv1d if x.ndim == 3 else ref.conv2d
    want = rconv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,wshape,kw", [
    ((1, 3, 131, 127), (16, 3, 7, 7), dict(stride=2, padding=3)),   # stem-like b1: 8 row slices
    ((3, 1, 28, 28), (8, 1, 5, 5), dict()),                         # C_in = 1, K = 25: 3 slices per image
    ((10, 1, 28, 28), (8, 1, 5, 5), dict(padding=2)),               # C_in = 1, 10 images in 8 pieces
    ((1, 1, 21, 20), (4, 1, 5, 5), dict()),                         # Ho = 17: slices of 3 rows, last of 2
    ((2, 4, 70, 66), (6, 2, 3, 3), dict(padding=(2, 0), groups=2, dilation=(2, 1))),  # 2 groups
    ((2, 5, 64, 64), (7, 5, 1, 1), dict()),                         # pointwise, row slices
    ((3, 2, 1, 5000), (4, 2, 1, 3), dict(padding=(0, 1))),          # H = 1: whole images
    ((1, 2, 170, 160), (6, 2, 3, 5), dict(stride=(2, 3), padding=((1, 0), (2, 2)), dilation=(1, 2))),  # stride 3
])
def test_weight_grad_pieces_threads_and_reference(dtype, xshape, wshape, kw):
    """Grad weight of few-group convolutions with large planes (or a narrow unfolded
    matrix) is summed in fixed pieces, images or row slices of one image, each a partial
    sum, the partials added in piece order: bitwise identical for 1, 2 and 3 threads,
    exact on integer data, close to the float64 reference. (Under AVX-512, float32 pieces
    with rows >= 16 wide take the direct lane-parallel dot products; H = 1 with 5000
    columns also crosses their runs of 256 vectors.)"""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    dy = rng.standard_normal(pyconv.conv2d(x, w, None, **kw).shape).astype(dtype)
    mask = (False, True, False)
    got = [_with_threads(t, lambda: pyconv.conv2d_backward(dy, x, w, output_mask=mask, algorithm="generic", **kw)[1])
           for t in (1, 2, 3)]
    for g in got[1:]:
        np.testing.assert_array_equal(got[0], g)
    want = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kw)[1]
    if dtype == np.float32:
        # long reductions: bound by the sum of |terms| (one float32 rounding per term)
        xw = ref.conv2d_backward(np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64),
                                 np.abs(w).astype(np.float64), **kw)[1]
        terms = dy.shape[0] * dy[0, 0].size
        assert np.all(np.abs(got[0] - want) <= 1e-5 + terms * 2.0**-24 * xw)
    else:
        np.testing.assert_allclose(got[0], want, rtol=1e-10, atol=1e-10)
    xi, dyi = _ints(rng, x.shape, dtype), _ints(rng, dy.shape, dtype)
    for t in (1, 2):
        exact = _with_threads(t, lambda: pyconv.conv2d_backward(dyi, xi, w, output_mask=mask,
                                                                 algorithm="generic", **kw)[1])
        np.testing.assert_array_equal(exact, ref.conv2d_backward(dyi, xi, w, **kw)[1])
    # the automatic path agrees with the reference as well (it may pick another lowering)
    auto = pyconv.conv2d_backward(dy, x, w, **kw)
    tol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(auto[1], want, rtol=tol, atol=tol * (1 + np.abs(want).max()))


def test_weight_grad_pieces_batch_zero():
    x = np.zeros((0, 1, 28, 28), np.float32)
    w = np.ones((8, 1, 5, 5), np.float32)
    dy = np.zeros((0, 8, 24, 24), np.float32)
    dx, dw, db = pyconv.conv2d_backward(dy, x, w, algorithm="generic")
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (8,)
    assert not dw.any() and not db.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,wshape,kw", [
    ((1, 3, 70, 61), (8, 3, 7, 7), dict(stride=2, padding=3)),                     # stem-like
    ((1, 2, 40, 33), (5, 2, 3, 5), dict(padding=((2, 0), (1, 3)), dilation=(2, 1))),  # stride 1, Cg < 8
    ((1, 1, 3, 9), (4, 1, 3, 3), dict(padding=10)),                                # rows mostly padding
    ((1, 4, 37, 20), (6, 4, 5, 5), dict(stride=(3, 2), padding=(2, 1))),
])
def test_input_grad_row_bands(dtype, xshape, wshape, kw):
    """Grad input of one image with few channels runs in bands of input rows (each band
    recomputes the output rows its neighbour needs and keeps only its own rows): equal to
    the reference (exactly on integer data) and bitwise the same for 1, 2 and 3 threads."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    dy = rng.standard_normal(pyconv.conv2d(x, w, None, **kw).shape).astype(dtype)
    mask = (True, False, False)
    got = [_with_threads(t, lambda: pyconv.conv2d_backward(dy, x, w, output_mask=mask, algorithm="generic", **kw)[0])
           for t in (1, 2, 3)]
    for g in got[1:]:
        np.testing.assert_array_equal(got[0], g)
    want = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kw)[0]
    tol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got[0], want, rtol=tol, atol=tol)
    wi, dyi = _ints(rng, w.shape, dtype), _ints(rng, dy.shape, dtype)
    for t in (1, 2):
        exact = _with_threads(t, lambda: pyconv.conv2d_backward(dyi, x, wi, output_mask=mask, algorithm="generic", **kw)[0])
        np.testing.assert_array_equal(exact, ref.conv2d_backward(dyi, x, wi, **kw)[0])


# AVX-512 float32 paths of the generic lowering: the direct forward (no B packing; K in
# one block, output rows >= 16 wide, one image per GEMM) and at stride >= 2 along W the
# forward B packed from a phase-split padded copy, the grad-input col2im through a
# phase-split buffer, and the grad-weight B from runs of consecutive taps (dilation 1
# along W, kernel >= 4 columns, any stride). Each computes, packs or adds exactly what the
# portable code does, so forward and grad input equal the AVX2 path bit for bit (one K
# block on both), and all three equal the reference on integer data.
# (n, cin, cout, H, W, k, stride, padding, dilation, groups)
PHASE_CASES = [
    (1, 3, 16, 45, 47, (7, 7), 2, 3, 1, 1),                          # stem-like, odd H and W: row bands
    (1, 2, 5, 13, 29, (3, 5), (1, 3), ((1, 0), (2, 1)), 1, 1),       # stride 3, asymmetric padding, Wo = 10
    (1, 2, 4, 17, 31, (3, 4), 2, ((0, 2), (3, 0)), (1, 2), 1),       # dilation along W
    (1, 1, 3, 6, 9, (4, 10), (1, 2), ((0, 0), (1, 0)), 1, 1),        # kernel == padded input width
    (2, 3, 4, 11, 23, (2, 5), (3, 6), 1, 1, 1),                      # stride > kernel
    (2, 6, 10, 9, 40, (3, 7), 2, 3, 1, 2),                           # groups, channels not multiples of 16
    (3, 2, 3, 7, 20, (3, 4), 2, 1, 1, 1),                            # Wo = 10: panels span output rows
    (1, 4, 20, 1, 301, (1, 9), 4, ((0, 0), (4, 5)), 1, 1),           # H = 1 (1D), stride 4
    (1, 1, 8, 40, 44, (5, 5), 1, 2, 1, 1),                           # stride 1: direct forward, runs packer
    (1, 5, 20, 19, 37, (3, 3), 1, ((1, 0), (0, 2)), (2, 1), 1),      # direct, 20 channels: a partial tile
    (1, 128, 16, 1, 40, (1, 3), 1, ((0, 0), (1, 1)), 1, 1),          # K = 384: the direct forward's largest
    (1, 130, 16, 1, 40, (1, 3), 1, ((0, 0), (1, 1)), 1, 1),          # K = 390: packed GEMM, two K blocks
    # grad input's W^T dY with 1, 2, 5 or 6 rows in its last row panel (the narrow tile)
    (2, 1, 5, 9, 33, (1, 1), 2, 0, 1, 1),
    (1, 2, 4, 11, 35, (3, 3), 2, 1, 1, 1),
    (1, 1, 6, 12, 40, (1, 5), (1, 2), ((0, 0), (2, 2)), 1, 1),
    (2, 1, 7, 10, 30, (2, 3), 1, 1, 1, 1),
]


def _phase_case(case, dtype, rng, ints):
    n, cin, cout, H, W, k, s, pad, d, g = case
    make = (lambda shape: _ints(rng, shape, dtype)) if ints else (lambda shape: rng.standard_normal(shape).astype(dtype))
    x = make((n, cin, H, W))
    w = make((cout, cin // g) + k)
    kw = dict(stride=s, padding=pad, dilation=d, groups=g)
    dy = make(ref.conv2d(np.zeros((n, cin, H, W)), np.zeros(w.shape), None, **kw).shape)
    return x, w, dy, kw


def _generic_all(x, w, dy, kw):
    y = pyconv.conv2d(x, w, None, algorithm="generic", **kw)
    dx, dw, _ = pyconv.conv2d_backward(dy, x, w, output_mask=(True, True, False), algorithm="generic", **kw)
    return y, dx, dw


@pytest.mark.parametrize("case", PHASE_CASES)
def test_phase_and_run_packers_match_portable_paths(case):
    rng = np.random.default_rng(17)
    x, w, dy, kw = _phase_case(case, np.float32, rng, ints=False)
    xi, wi, dyi = _phase_case(case, np.float32, rng, ints=True)[:3]
    want = [ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, **kw)]
    want += list(ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kw)[:2])
    exact = [ref.conv2d(xi, wi, None, **kw)] + list(ref.conv2d_backward(dyi, xi, wi, **kw)[:2])
    got = {}
    for isa in ISAS:
        res = _with_isa(isa, lambda: _generic_all(x, w, dy, kw))
        for a, r in zip(res, want):
            np.testing.assert_allclose(a, r, rtol=2e-4, atol=2e-4 * (1 + np.abs(r).max()))
        for a, r in zip(_with_isa(isa, lambda: _generic_all(xi, wi, dyi, kw)), exact):
            np.testing.assert_array_equal(a, r)
        for t in (2, 3):
            again = _with_threads(t, lambda: _with_isa(isa, lambda: _generic_all(x, w, dy, kw)))
            for a, b in zip(again, res):
                np.testing.assert_array_equal(a, b)
        got[isa] = res
    if "avx2" in got and "avx512" in got:
        # one K block on both ISAs (AVX2: K <= 256): the same sums in the same order
        n, cin, cout, H, W, k, s, pad, d, g = case
        if cin // g * k[0] * k[1] <= 256:
            np.testing.assert_array_equal(got["avx512"][0], got["avx2"][0])   # forward
        if cout // g <= 256:
            np.testing.assert_array_equal(got["avx512"][1], got["avx2"][1])   # grad input


# Grad input through W^T dY and the col2im scatter (mirrored padding invalid, or a plane
# below kDxForwardMinCols): the column tiles' width comes from the shape, so the order of
# each dx element's additions, and its bits, do not depend on the thread count, which
# splits the input channels of one image over the threads.
# (n, cin, cout, H, W, k, padding, algorithm)
COL2IM_THREAD_CASES = [
    (1, 64, 8, 10, 22, (3, 3), 2, "generic"),       # plane 12 x 24: one tile or two before
    (1, 70, 17, 10, 22, (3, 3), 2, "generic"),
    (1, 48, 17, 16, 16, (3, 3), 3, "winograd"),     # pad 3: Winograd's grad input is generic
    (1, 64, 8, 10, 22, (3, 3), 2, "auto"),
    (1, 40, 12, 6, 30, (1, 3), ((2, 2), (1, 1)), "winograd_1d"),  # H padding: generic dx
    (2, 33, 9, 9, 13, (3, 3), 3, "generic"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", COL2IM_THREAD_CASES)
def test_col2im_grad_input_same_bits_on_any_thread_count(case, dtype):
    n, cin, cout, H, W, k, pad, alg = case
    rng = np.random.default_rng(29)
    x = rng.standard_normal((n, cin, H, W)).astype(dtype)
    w = rng.standard_normal((cout, cin) + k).astype(dtype)
    dy = rng.standard_normal(ref.conv2d(x, w, padding=pad).shape).astype(dtype)
    runs = [_with_threads(t, lambda: pyconv.conv2d_backward(dy, x, w, padding=pad, algorithm=alg)) for t in (1, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    want = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), padding=pad)[0]
    np.testing.assert_allclose(runs[0][0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_phase_paths_batch_zero_and_bias():
    """Batch 0 through the strided generic paths, and the bias added after the phase-packed
    forward sum (conv(x, w, b) == conv(x, w) + b bitwise)."""
    kw = dict(stride=2, padding=3)
    x0 = np.zeros((0, 3, 30, 31), np.float32)
    w = np.ones((8, 3, 7, 7), np.float32)
    y0 = pyconv.conv2d(x0, w, algorithm="generic", **kw)
    assert y0.shape == (0, 8, 15, 16)
    dx, dw, db = pyconv.conv2d_backward(np.zeros(y0.shape, np.float32), x0, w, algorithm="generic", **kw)
    assert dx.shape == x0.shape and not dw.any() and not db.any()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 40, 41)).astype(np.float32)   # one image, Wo = 21: the direct forward
    b = rng.standard_normal(8).astype(np.float32) * 10
    y = pyconv.conv2d(x, w, b, algorithm="generic", **kw)
    np.testing.assert_array_equal(y, pyconv.conv2d(x, w, None, algorithm="generic", **kw) + b.reshape(1, -1, 1, 1))
