"""Max-pool with switches, its backward and unpool: against the NumPy reference, PyTorch,
between kernel paths (scalar / AVX2), across layouts and thread counts, and on bad input."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import pyconv
from pyconv import _core
from pyconv import reference as ref

DTYPES = [np.float32, np.float64]
# The `isa` fixture only selects a kernel path; it holds no per-example state.
isa_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def same(a, b):
    """Bitwise-equal values (NaN == NaN), same dtype and shape."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(a, b, equal_nan=True), (a, b)


def int_values(rng, shape, dtype, lo=-4, hi=4, nan=0.0, ninf=0.0):
    """Small integers (many ties), optionally sprinkled with NaN and -inf."""
    x = rng.integers(lo, hi + 1, size=shape).astype(dtype)
    if nan:
        x[rng.random(shape) < nan] = np.nan
    if ninf:
        x[rng.random(shape) < ninf] = -np.inf
    return x


def ref_valid(call):
    """Runs the reference; a ValueError means the parameters are invalid."""
    try:
        return call(), None
    except ValueError as e:
        return None, e


@st.composite
def pool_cases(draw, nd):
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 5) for _ in range(nd)])))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    ceil = draw(st.booleans())
    sizes = tuple(draw(st.integers(1, 12 if (nd == 2 and i == 0) else 45)) for i in range(nd))
    batched = draw(st.booleans())
    n = draw(st.integers(0, 2)) if batched else None
    c = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    special = draw(st.sampled_from(["none", "nan", "ninf", "both"]))
    shape = ((n,) if batched else ()) + (c,) + sizes
    return dict(k=k, s=s, p=p, d=d, ceil=ceil, shape=shape, dtype=dtype, seed=seed, special=special)


def make_input(case):
    rng = np.random.default_rng(case["seed"])
    sp = case["special"]
    return int_values(rng, case["shape"], case["dtype"],
                      nan=0.05 if sp in ("nan", "both") else 0.0,
                      ninf=0.3 if sp in ("ninf", "both") else 0.0)


# ------------------------------------------------------------------ forward vs reference


@pytest.mark.parametrize("nd", [1, 2])
@isa_ok
@given(data=st.data())
def test_forward_matches_reference(isa, nd, data):
    case = data.draw(pool_cases(nd))
    x = make_input(case)
    fn = pyconv.max_pool2d if nd == 2 else pyconv.max_pool1d
    rfn = ref.max_pool2d if nd == 2 else ref.max_pool1d
    args = (case["k"], case["s"], case["p"], case["d"], case["ceil"])
    want, err = ref_valid(lambda: rfn(x, *args, return_indices=True))
    if err is not None:
        with pytest.raises(ValueError):
            fn(x, *args, return_indices=True)
        return
    out, idx = fn(x, *args, return_indices=True)
    same(out, want[0])
    same(idx, want[1])
    assert idx.dtype == np.int64 and out.flags.c_contiguous and idx.flags.c_contiguous
    same(fn(x, *args), want[0])  # the no-indices kernels give the same values


# ------------------------------------------------------------------ backward / unpool


@pytest.mark.parametrize("nd", [1, 2])
@isa_ok
@given(data=st.data())
def test_backward_matches_reference(isa, nd, data):
    case = data.draw(pool_cases(nd))
    x = make_input(case)
    fn = pyconv.max_pool2d if nd == 2 else pyconv.max_pool1d
    bfn = pyconv.max_pool2d_backward if nd == 2 else pyconv.max_pool1d_backward
    rbfn = ref.max_pool2d_backward if nd == 2 else ref.max_pool1d_backward
    args = (case["k"], case["s"], case["p"], case["d"], case["ceil"])
    assume(ref_valid(lambda: pyconv.pool_output_size(x.shape[-nd:], *args))[1] is None)
    try:
        _, idx = fn(x, *args, return_indices=True)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(case["seed"] + 1)
    g = int_values(rng, idx.shape, case["dtype"], -8, 8)
    gi = bfn(g, idx, x.shape)
    same(gi, rbfn(g, idx, x.shape))
    # arbitrary in-range indices, duplicates included
    plane = int(np.prod(x.shape[-nd:]))
    idx2 = rng.integers(0, plane, size=idx.shape)
    same(bfn(g, idx2, x.shape), rbfn(g, idx2, x.shape))


@pytest.mark.parametrize("nd", [1, 2])
@given(data=st.data())
def test_unpool_matches_reference(nd, data):
    k = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    p = tuple(data.draw(st.integers(0, ki // 2)) for ki in k)
    sizes = tuple(data.draw(st.integers(1, 9)) for _ in range(nd))
    batched = data.draw(st.booleans())
    lead = ((data.draw(st.integers(0, 2)),) if batched else ()) + (data.draw(st.integers(1, 3)),)
    dtype = data.draw(st.sampled_from(DTYPES))
    default = tuple((sizes[i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(nd))
    delta = tuple(data.draw(st.integers(-(s[i] - 1), s[i] - 1)) for i in range(nd))
    size = tuple(default[i] + delta[i] for i in range(nd))
    assume(all(v >= 1 for v in size))
    form = data.draw(st.sampled_from(["none", "spatial", "full"]))
    if form == "none":
        assume(delta == (0,) * nd)
        output_size = None
    else:
        output_size = size if form == "spatial" else lead + size
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = int_values(rng, lead + sizes, dtype, -9, 9)
    idx = rng.integers(0, int(np.prod(size)), size=x.shape)  # duplicates likely
    fn = pyconv.max_unpool2d if nd == 2 else pyconv.max_unpool1d
    rfn = ref.max_unpool2d if nd == 2 else ref.max_unpool1d
    out = fn(x, idx, k, s, p, output_size)
    same(out, rfn(x, idx, k, s, p, output_size))
    assert out.shape == lead + size


def test_unpool_duplicates_last_wins():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]], dtype=np.float32)
    idx = np.array([[[5, 1, 5, 1]]], dtype=np.int64)
    out = pyconv.max_unpool1d(x, idx, 2)  # default length (4-1)*2 + 2 = 8
    same(out, np.array([[[0, 4, 0, 0, 0, 3, 0, 0]]], dtype=np.float32))


def test_unpool_inverts_pool(rng):
    x = rng.permutation(2 * 3 * 8 * 10).reshape(2, 3, 8, 10).astype(np.float64)
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    up = pyconv.max_unpool2d(out, idx, 2)
    mask = up != 0
    same(up[mask], x[mask])
    assert mask.sum() == out.size


# ------------------------------------------------------------------ index semantics


def test_ties_pick_first_in_scan_order():
    x = np.zeros((1, 1, 4, 4), np.float32)
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    same(idx, np.array([[[[0, 2], [8, 10]]]]))
    x = np.array([[[1, 5, 5, 2, 5, 5]]], np.float64)
    out, idx = pyconv.max_pool1d(x, 3, 1, return_indices=True)
    same(idx, np.array([[[1, 1, 2, 4]]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_reports_last_nan(isa, dtype):
    # window of 3x3 inside a wide row so the vector kernels take it
    x = np.zeros((1, 1, 3, 40), dtype)
    x[0, 0, 0, 5] = np.nan
    x[0, 0, 2, 4] = np.nan
    x[0, 0, 1, 3] = 7
    out, idx = pyconv.max_pool2d(x, 3, 1, return_indices=True)
    assert np.isnan(out[0, 0, 0, 3]) and idx[0, 0, 0, 3] == 2 * 40 + 4
    assert np.isnan(out[0, 0, 0, 2]) and idx[0, 0, 0, 2] == 2 * 40 + 4
    assert np.isnan(out[0, 0, 0, 5]) and idx[0, 0, 0, 5] == 5  # only (0, 5) in 5..7
    assert out[0, 0, 0, 1] == 7 and idx[0, 0, 0, 1] == 40 + 3
    same(out, ref.max_pool2d(x, 3, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_neg_inf_window_reports_first_in_bounds(isa, dtype):
    x = np.full((1, 1, 5, 40), -np.inf, dtype)
    out, idx = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert np.all(out == -np.inf)
    # window (oh, ow) starts at (2oh-1, 2ow-1); first in-bounds element clamps to 0
    want = np.array([[max(2 * i - 1, 0) * 40 + max(2 * j - 1, 0) for j in range(20)]
                     for i in range(3)])
    same(idx[0, 0], want)


def test_padding_indices_are_unpadded_coordinates(isa):
    x = np.arange(1, 1 + 5 * 7, dtype=np.float32).reshape(1, 1, 5, 7)
    x = -x  # maximum at the top-left of every window
    out, idx = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    want = np.array([[max(2 * i - 1, 0) * 7 + max(2 * j - 1, 0) for j in range(4)] for i in range(3)])
    same(idx[0, 0], want)
    same(out[0, 0], x.reshape(-1)[want])


def test_ceil_mode_drops_window_starting_in_padding():
    # L=5, k=2, s=2, p=1: ceil gives 4 windows, the last would start at 5 (right padding)
    x = np.arange(5, dtype=np.float32)[None, None]
    out, idx = pyconv.max_pool1d(x, 2, 2, 1, ceil_mode=True, return_indices=True)
    same(idx, np.array([[[0, 2, 4]]]))
    out, idx = pyconv.max_pool1d(x[..., :4], 2, 2, 0, ceil_mode=True, return_indices=True)
    same(idx, np.array([[[1, 3]]]))
    out, idx = pyconv.max_pool1d(x, 2, 2, 0, ceil_mode=True, return_indices=True)
    same(idx, np.array([[[1, 3, 4]]]))  # partial last window kept (starts inside)


def test_dilation_taps():
    x = np.array([[[0, 9, 1, 0, 2, 0, 3]]], np.float64)
    out, idx = pyconv.max_pool1d(x, 3, 1, 0, 2, return_indices=True)
    same(idx, np.array([[[4, 1, 6]]]))
    same(out, np.array([[[2.0, 9.0, 3.0]]]))


def test_window_covering_nothing_is_value_error():
    # size 2, kernel 2, padding 1, dilation 3: taps at -1 and 2, both outside
    x = np.zeros((1, 1, 2), np.float32)
    with pytest.raises(ValueError, match="covers no input element"):
        pyconv.max_pool1d(x, 2, 1, 1, 3)
    with pytest.raises(ValueError, match="covers no input element"):
        _core.max_pool2d(x[:, :, None, :], 1, 2, 1, 1, 0, 1, 1, 3, False, True)
    with pytest.raises(ValueError):
        ref.max_pool1d(x, 2, 1, 1, 3)


# ------------------------------------------------------------------ kernel paths


CONFIGS = [  # (k, s, p, d, ceil, expected AVX2 variant)
    ((2, 2), (2, 2), (0, 0), (1, 1), False, "avx2_s2_2x2"),
    ((3, 3), (2, 2), (1, 1), (1, 1), False, "avx2_s2_3x3"),
    ((3, 3), (2, 2), (1, 1), (1, 1), True, "avx2_s2_3x3"),
    ((2, 5), (1, 2), (1, 2), (2, 1), False, "avx2_s2"),
    ((3, 3), (1, 1), (1, 1), (1, 2), False, "avx2_s1"),
    ((2, 2), (3, 3), (1, 1), (1, 1), True, "scalar"),
]


@pytest.mark.parametrize("k,s,p,d,ceil,variant", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avx2_equals_scalar_bitwise(k, s, p, d, ceil, variant, dtype):
    if pyconv.kernel_info()["detected_isa"] not in ("avx2", "avx512"):
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 23, 77)).astype(dtype)
    x[rng.random(x.shape) < 0.02] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    x[rng.random(x.shape) < 0.1] = 0.5  # ties
    before = pyconv.kernel_info()["isa"]
    try:
        res = {}
        for isa in ("scalar", "avx2"):
            _core._set_isa(isa)
            name = _core._max_pool2d_variant(23, 77, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                                             ceil, dtype == np.float64)
            assert name == ("scalar" if isa == "scalar" else variant)
            res[isa] = pyconv.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
            same(res[isa][0], pyconv.max_pool2d(x, k, s, p, d, ceil))
    finally:
        _core._set_isa(before)
    same(res["scalar"][0], res["avx2"][0])
    same(res["scalar"][1], res["avx2"][1])
    want = ref.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    same(res["avx2"][0], want[0])
    same(res["avx2"][1], want[1])


@pytest.mark.parametrize("width", [1, 2, 7, 8, 9, 15, 16, 17, 18, 19, 31, 33, 34])
def test_row_edges_and_narrow_interiors(isa, width):
    rng = np.random.default_rng(width)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (5, 2, 2), (1, 1, 0)]:
        if ref_valid(lambda: pyconv.pool_output_size(width, k, s, p))[1] is not None:
            continue
        x = int_values(rng, (1, 2, 5, width), np.float32, nan=0.02)
        got = pyconv.max_pool2d(x, k, s, p, return_indices=True)
        want = ref.max_pool2d(x, k, s, p, return_indices=True)
        same(got[0], want[0])
        same(got[1], want[1])


@pytest.mark.parametrize("shape", [(64, 8, 8, 8), (32, 8, 4, 4), (5, 7, 6, 7), (3, 4, 9, 13),
                                   (6, 5, 7, 6), (4, 3, 12, 14), (3, 3, 2, 14), (5, 3, 2, 2),
                                   (7, 5, 6, 2), (3, 3, 7, 4)])
def test_small_planes_equal_scalar(shape):
    """Planes narrower than a vector: 2x2/s2 over whole planes 8 outputs at a time
    (gathered taps; planes of 8x8, 7x6 with an unused last row and a scalar tail, 12x14
    with every lane phase), or for planes of fewer than 8 outputs (4x4, 2x14, 2x2, 6x2)
    over the whole tensor flat across plane boundaries (7x4 has an unused last row: not
    flat, the row path), other windows with interiors of
    up to 8 windows in lockstep (forward), and the per-output 2x2 tail built by masks
    (backward). Ties, NaN and -inf; several window shapes (padding, dilation, stride 1);
    bitwise equal to the scalar path at 1, 2 and 3 threads and to the reference."""
    if pyconv.kernel_info()["detected_isa"] not in ("avx2", "avx512"):
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(shape[2] * 100 + shape[3])
    x = int_values(rng, shape, np.float32, -3, 3, nan=0.03, ninf=0.05)
    configs = [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 1), (2, 1, 0, 2), (3, 3, 1, 1)]
    before, before_thr = pyconv.kernel_info()["isa"], pyconv.get_num_threads()
    try:
        _core._set_isa("avx2")
        h, w = shape[2:]
        variant = _core._max_pool2d_variant(h, w, 2, 2, 2, 2, 0, 0, 1, 1, False, False)
        if w % 2 == 0 and h % 2 == 0 and h // 2 * (w // 2) < 8:
            assert variant == "avx2_tiny_2x2"
        elif w % 2 == 0 and h // 2 * (w // 2) >= 8:
            assert variant == "avx2_small_2x2"
        else:
            assert variant == "avx2_s2_2x2"
        for k, s, p, d in configs:
            if ref_valid(lambda: ref.max_pool2d(x, k, s, p, d))[1] is not None:
                continue
            _core._set_isa("scalar")
            want = pyconv.max_pool2d(x, k, s, p, d, return_indices=True)
            g = rng.integers(-5, 6, size=want[0].shape).astype(np.float32)
            g.flat[::5] = -0.0
            want_b = pyconv.max_pool2d_backward(g, want[1], shape)
            _core._set_isa("avx2")
            for t in (1, 2, 3):
                pyconv.set_num_threads(t)
                got = pyconv.max_pool2d(x, k, s, p, d, return_indices=True)
                same(got[0], want[0])
                same(got[1], want[1])
                same(pyconv.max_pool2d_backward(g, got[1], shape), want_b)
            r = ref.max_pool2d(x, k, s, p, d, return_indices=True)
            same(want[0], r[0])
            same(want[1], r[1])
            same(want_b, ref.max_pool2d_backward(g, r[1], shape))
    finally:
        _core._set_isa(before)
        pyconv.set_num_threads(before_thr)


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 8, 16), (1, 1, 2, 2), (2, 2, 5, 40)])
def test_backward_2x2_windows_built_directly(isa, shape):
    """2x2/s2 indices: the AVX2 path writes each plane straight from indices and grads
    (0 + g: a -0.0 grad gives +0.0, NaN stays NaN), bitwise as zero-fill + scatter-add;
    a plane with an index outside its own window (still in range) falls back."""
    rng = np.random.default_rng(sum(shape))
    x = int_values(rng, shape, np.float32, -3, 3)
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    g = rng.integers(-5, 6, size=out.shape).astype(np.float32)
    g.flat[::7] = -0.0
    g.flat[3::11] = np.nan
    for dt in (np.float32, np.float64):
        got = pyconv.max_pool2d_backward(g.astype(dt), idx, shape)
        same(got, ref.max_pool2d_backward(g.astype(dt), idx, shape))
        assert not np.signbit(got[got == 0]).any()
    # one plane gets an in-range index that lies in another window (and a duplicate)
    idx2 = idx.copy()
    idx2[-1, -1, -1, -1] = 0
    idx2[0, 0, 0, 0] = shape[2] * shape[3] - 1
    same(pyconv.max_pool2d_backward(g, idx2, shape), ref.max_pool2d_backward(g, idx2, shape))


def backward_scalar_and_avx2_threads(g, idx, shape):
    """max_pool2d_backward on the scalar path, and on the AVX2 path at 1, 2 and 3 threads
    (ISA and thread count restored afterwards): (scalar result, [AVX2 results])."""
    before, threads = pyconv.kernel_info()["isa"], pyconv.get_num_threads()
    res = []
    try:
        _core._set_isa("scalar")
        want = pyconv.max_pool2d_backward(g, idx, shape)
        _core._set_isa("avx2")
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            res.append(pyconv.max_pool2d_backward(g, idx, shape))
    finally:
        _core._set_isa(before)
        pyconv.set_num_threads(threads)
    return want, res


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1)])
def test_backward_streamed_large_equals_scalar(k, s, p):
    """Destinations over 8 MiB are built in staging buffers and streamed out (odd widths:
    rows not line-aligned); bitwise equal to the scalar path and across thread counts,
    including a plane that falls back from the 2x2 construction."""
    if pyconv.kernel_info()["detected_isa"] not in ("avx2", "avx512"):
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(k)
    shape = (8, 40, 75, 77)  # 14.8 MB of float64, planes of 46200 bytes
    x = int_values(rng, shape, np.float32, -50, 50)
    out, idx = pyconv.max_pool2d(x, k, s, p, return_indices=True)
    idx[1, 2, 5, 7] = 0
    g = rng.integers(-9, 10, size=out.shape).astype(np.float64)
    g.flat[::13] = -0.0
    want, res = backward_scalar_and_avx2_threads(g, idx, shape)
    for r in res:
        same(r, want)
    assert np.count_nonzero(want) > 0


def test_backward_streamed_mixed_planes_equals_scalar():
    """Streamed float32 destination whose planes alternate at random between indices that
    fit 2x2 windows (built directly), 3x3/s2/p1 indices (scattered, staging buffers reused
    zeroed) and 2x2 indices with one index moved into the 3x3 window late in the plane (the
    direct build fails after writing rows; those rows are cleared): bitwise equal to the
    scalar path and the reference, at 1, 2 and 3 threads."""
    if pyconv.kernel_info()["detected_isa"] not in ("avx2", "avx512"):
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(7)
    shape = (8, 48, 80, 84)  # 10.3 MB of float32
    x = int_values(rng, shape, np.float32, -50, 50)
    _, i2 = pyconv.max_pool2d(x, 2, 2, 0, return_indices=True)
    _, i3 = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert i2.shape == i3.shape
    kind = rng.integers(0, 3, size=shape[:2])
    idx = np.where((kind == 1)[:, :, None, None], i3, i2)
    late = np.argwhere(kind == 2)
    for n, c in late:
        oh = int(rng.integers(1, i2.shape[2]))
        ow = int(rng.integers(1, i2.shape[3]))
        idx[n, c, oh, ow] = (2 * oh) * shape[3] + 2 * ow - 1  # left column of the 3x3 window
    g = rng.integers(-9, 10, size=i2.shape).astype(np.float32)
    g.flat[::13] = -0.0
    want, res = backward_scalar_and_avx2_threads(g, idx, shape)
    for r in res:
        same(r, want)
    same(want[:1, :4], ref.max_pool2d_backward(g[:1, :4], idx[:1, :4], (1, 4) + shape[2:]))
    assert not np.signbit(want[want == 0]).any()


@pytest.mark.parametrize("pos", [(0, 0, 0, 0), (3, 7, 39, 41), (5, 20, 6, 17), (7, 47, 39, 40)])
@pytest.mark.parametrize("bad", [-1, 80 * 84, 2**62])
def test_backward_streamed_bad_index_reported(pos, bad):
    """A bad index anywhere in a streamed destination (first element, last element of a
    plane, inside a checked block, the block tail) raises IndexError naming its position,
    with every thread count."""
    rng = np.random.default_rng(3)
    shape = (8, 48, 80, 84)
    x = rng.standard_normal(shape).astype(np.float32)
    out, idx = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    idx[pos] = bad
    threads = pyconv.get_num_threads()
    try:
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            with pytest.raises(IndexError, match=re.escape(str(pos))):
                _core.max_pool2d_backward(out, idx, 80, 84)
    finally:
        pyconv.set_num_threads(threads)


def test_unpool_streamed_large_equals_reference():
    """Unpooling into a destination over 8 MiB (staged planes, zeroed as they stream out
    and reused): equal to the reference (a duplicated index with another value: the later
    element wins) and to a NumPy scatter elsewhere, at 1, 2 and 3 threads."""
    rng = np.random.default_rng(9)
    shape = (8, 48, 80, 84)
    x = int_values(rng, shape, np.float32, -50, 50)
    out, idx = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    idx[1, 3, 4, 5] = idx[1, 3, 4, 6]
    out[1, 3, 4, 5] = 1000.0  # the earlier write, overwritten by out[1, 3, 4, 6]
    planes = shape[0] * shape[1]
    want = np.zeros((planes, shape[2] * shape[3]), np.float32)
    np.put_along_axis(want, idx.reshape(planes, -1), out.reshape(planes, -1), axis=1)
    want = want.reshape(shape)
    want[:2] = ref.max_unpool2d(out[:2], idx[:2], 3, 2, 1, output_size=shape[2:])
    assert want[1, 3].max() < 1000.0
    threads = pyconv.get_num_threads()
    try:
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            same(pyconv.max_unpool2d(out, idx, 3, 2, 1, output_size=shape[2:]), want)
    finally:
        pyconv.set_num_threads(threads)


def test_threads_bitwise_equal(rng):
    x = rng.standard_normal((4, 8, 40, 50)).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        res = []
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            out, idx = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
            g = np.ones_like(out)
            res.append((out, idx, pyconv.max_pool2d_backward(g, idx, x.shape),
                        pyconv.max_unpool2d(out, idx, 3, 2, 1, output_size=x.shape)))
    finally:
        pyconv.set_num_threads(before)
    for r in res[1:]:
        for a, b in zip(res[0], r):
            same(a, b)


# ------------------------------------------------------------------ PyTorch


@pytest.mark.parametrize("seed", range(6))
def test_matches_torch(seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(seed)
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    ceil = bool(rng.integers(0, 2))
    dtype = DTYPES[seed % 2]
    x = int_values(rng, (2, 3, int(rng.integers(6, 15)), int(rng.integers(6, 40))), dtype,
                   nan=0.02 if seed % 3 == 0 else 0.0)
    try:
        want, widx = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil, return_indices=True)
    except RuntimeError:
        with pytest.raises(ValueError):
            pyconv.max_pool2d(x, k, s, p, d, ceil)
        return
    out, idx = pyconv.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    same(out, want.numpy())
    same(idx, widx.numpy())
    g = int_values(rng, out.shape, dtype, -5, 5)
    tgi = torch.ops.aten.max_pool2d_with_indices_backward(
        torch.from_numpy(g), torch.from_numpy(x), list(k), list(s), list(p), list(d), ceil, widx)
    same(pyconv.max_pool2d_backward(g, idx, x.shape), tgi.numpy())
    if d == (1, 1):
        up = F.max_unpool2d(want, widx, k, s, p, output_size=x.shape[-2:])
        same(pyconv.max_unpool2d(out, idx, k, s, p, output_size=x.shape[-2:]), up.numpy())


def test_matches_torch_1d_unbatched():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = int_values(rng, (4, 50), np.float32)
    want, widx = F.max_pool1d(torch.from_numpy(x), 3, 2, 1, return_indices=True)
    out, idx = pyconv.max_pool1d(x, 3, 2, 1, return_indices=True)
    same(out, want.numpy())
    same(idx, widx.numpy())
    up = F.max_unpool1d(want, widx, 3, 2, 1, output_size=[50])
    same(pyconv.max_unpool1d(out, idx, 3, 2, 1, output_size=50), up.numpy())
    assert idx.max() == 49  # the default length (25-1)*2 - 2 + 3 = 49 cannot hold it
    with pytest.raises(IndexError):
        pyconv.max_unpool1d(out, idx, 3, 2, 1)


# ------------------------------------------------------------------ layouts


def layouts(x):
    """Views of x's values in other memory layouts (each equal to x elementwise)."""
    yield "fortran", np.asfortranarray(x)
    big = np.zeros(tuple(2 * n for n in x.shape), x.dtype)
    big[tuple(slice(None, None, 2) for _ in x.shape)] = x
    yield "strided", big[tuple(slice(None, None, 2) for _ in x.shape)]
    rev = np.ascontiguousarray(x[..., ::-1])
    yield "negative", rev[..., ::-1]
    buf = np.zeros(x.nbytes + x.itemsize, np.uint8)
    un = np.frombuffer(buf.data, dtype=x.dtype, count=x.size, offset=1).reshape(x.shape)
    un[...] = x
    yield "unaligned", un
    ro = x.copy()
    ro.flags.writeable = False
    yield "readonly", ro


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_equal_contiguous(dtype, rng):
    x = int_values(rng, (2, 3, 9, 21), dtype)
    out, idx = pyconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    g = int_values(rng, out.shape, dtype)
    gi = pyconv.max_pool2d_backward(g, idx, x.shape)
    up = pyconv.max_unpool2d(out, idx, 3, 2, 1, output_size=x.shape[-2:])
    for (name, xv), (_, gv), (_, iv), (_, ov) in zip(layouts(x), layouts(g), layouts(idx), layouts(out)):
        o2, i2 = pyconv.max_pool2d(xv, 3, 2, 1, return_indices=True)
        same(o2, out)
        same(i2, idx)
        assert o2.flags.c_contiguous, name
        same(pyconv.max_pool2d_backward(gv, iv, x.shape), gi)
        same(pyconv.max_unpool2d(ov, iv, 3, 2, 1, output_size=x.shape[-2:]), up)


def test_broadcast_input():
    row = np.arange(20, dtype=np.float32)
    x = np.broadcast_to(row, (2, 3, 6, 20))
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    same(out, pyconv.max_pool2d(np.ascontiguousarray(x), 2))
    same(idx, pyconv.max_pool2d(np.ascontiguousarray(x), 2, return_indices=True)[1])
    g = np.broadcast_to(np.float32(1), out.shape)
    same(pyconv.max_pool2d_backward(g, idx, x.shape),
         pyconv.max_pool2d_backward(np.ones(out.shape, np.float32), idx, x.shape))


# ------------------------------------------------------------------ shapes and empties


def test_unbatched_and_empty():
    x = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    assert out.shape == (3, 4, 4) and idx.shape == (3, 4, 4)
    assert pyconv.max_pool2d_backward(out, idx, x.shape).shape == x.shape
    assert pyconv.max_unpool2d(out, idx, 2).shape == x.shape
    for shape in [(0, 3, 8, 8), (2, 0, 8, 8), (0, 8, 8)]:
        e = np.zeros(shape, np.float64)
        out, idx = pyconv.max_pool2d(e, 2, return_indices=True)
        assert out.shape == shape[:-2] + (4, 4) and out.dtype == np.float64 and idx.size == 0
        assert pyconv.max_pool2d_backward(out, idx, shape).shape == shape
        assert pyconv.max_unpool2d(out, idx, 2).shape == shape
    e = np.zeros((0, 2, 9), np.float32)
    out, idx = pyconv.max_pool1d(e, 3, return_indices=True)
    assert out.shape == (0, 2, 3)
    assert pyconv.max_pool1d_backward(out, idx, (0, 2, 9)).shape == (0, 2, 9)


def test_kernel_equals_input_and_one_pixel():
    x = np.array([[[[3.0, 1.0], [4.0, 1.0]]]], np.float32)
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    assert out.shape == (1, 1, 1, 1) and out[0, 0, 0, 0] == 4 and idx[0, 0, 0, 0] == 2
    one = np.full((1, 1, 1, 1), 5.0)
    out, idx = pyconv.max_pool2d(one, 1, return_indices=True)
    same(out, one)
    same(idx, np.zeros((1, 1, 1, 1), np.int64))


# ------------------------------------------------------------------ errors


def test_bad_parameters():
    x = np.zeros((1, 2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="kernel_size"):
        pyconv.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="stride"):
        pyconv.max_pool2d(x, 2, 0)
    with pytest.raises(ValueError, match="padding"):
        pyconv.max_pool2d(x, 2, 2, 2)
    with pytest.raises(ValueError, match="padding"):
        pyconv.max_pool2d(x, 3, 1, -1)
    with pytest.raises(ValueError, match="dilation"):
        pyconv.max_pool2d(x, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="input"):
        pyconv.max_pool2d(x[0, 0], 2)
    with pytest.raises(ValueError, match="input"):
        pyconv.max_pool1d(x, 2)
    with pytest.raises(ValueError):
        pyconv.max_pool2d(x, 9)  # kernel larger than the input
    with pytest.raises(TypeError, match="input"):
        pyconv.max_pool2d(x.tolist(), 2)
    with pytest.raises(TypeError, match="input"):
        pyconv.max_pool2d(x.astype(np.float16), 2)
    with pytest.raises(TypeError, match="input"):
        pyconv.max_pool2d(x.astype(np.int64), 2)
    with pytest.raises(TypeError, match="kernel_size"):
        pyconv.max_pool2d(x, 2.5)


def test_bad_indices_backward():
    x = np.zeros((1, 2, 8, 8), np.float32)
    out, idx = pyconv.max_pool2d(x, 2, return_indices=True)
    g = np.ones_like(out)
    with pytest.raises(TypeError, match="indices"):
        pyconv.max_pool2d_backward(g, idx.astype(np.int32), x.shape)
    with pytest.raises(TypeError, match="indices"):
        pyconv.max_pool2d_backward(g, idx.astype(np.float32), x.shape)
    with pytest.raises(TypeError, match="indices"):
        pyconv.max_pool2d_backward(g, idx.tolist(), x.shape)
    with pytest.raises(ValueError, match="indices"):
        pyconv.max_pool2d_backward(g, idx[..., :1], x.shape)
    with pytest.raises(ValueError, match="input_shape"):
        pyconv.max_pool2d_backward(g, idx, (1, 3, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        pyconv.max_pool2d_backward(g, idx, (8, 8))
    with pytest.raises(TypeError, match="grad_output"):
        pyconv.max_pool2d_backward(g.astype(np.float16), idx, x.shape)
    for bad in (-1, 64, 2**62, -(2**63)):
        b = idx.copy()
        b[0, 1, 3, 2] = bad
        with pytest.raises(IndexError, match="out of range"):
            pyconv.max_pool2d_backward(g, b, x.shape)
        with pytest.raises(IndexError):
            ref.max_pool2d_backward(g, b, x.shape)
        with pytest.raises(IndexError, match=r"\(0, 1, 3, 2\)"):
            _core.max_pool2d_backward(g, b, 8, 8)
    with pytest.raises(IndexError):
        pyconv.max_pool1d_backward(g[:, :, 0], np.full((1, 2, 4), 8, np.int64), (1, 2, 8))


def test_bad_indices_unpool():
    x = np.ones((2, 2, 3, 3), np.float64)
    idx = np.zeros(x.shape, np.int64)
    with pytest.raises(TypeError, match="indices"):
        pyconv.max_unpool2d(x, idx.astype(np.uint64), 2)
    with pytest.raises(ValueError, match="indices"):
        pyconv.max_unpool2d(x, idx[:1], 2)
    b = idx.copy()
    b[1, 1, 2, 2] = 36  # output is 6x6
    with pytest.raises(IndexError, match="out of range"):
        pyconv.max_unpool2d(x, b, 2)
    b[1, 1, 2, 2] = -3
    with pytest.raises(IndexError):
        pyconv.max_unpool2d(x, b, 2)
    with pytest.raises(ValueError, match="output_size"):
        pyconv.max_unpool2d(x, idx, 2, output_size=(8, 6))  # not within a stride of 6
    with pytest.raises(ValueError, match="output_size"):
        pyconv.max_unpool2d(x, idx, 2, output_size=(3, 6, 6, 6))  # wrong leading dims
    with pytest.raises(ValueError, match="output_size"):
        pyconv.max_unpool2d(x, idx, 2, output_size=(6,))
    assert pyconv.max_unpool2d(x, idx, 2, output_size=(7, 5)).shape == (2, 2, 7, 5)
    assert pyconv.max_unpool2d(x, idx, 2, output_size=(2, 2, 7, 5)).shape == (2, 2, 7, 5)
    with pytest.raises(TypeError, match="input"):
        pyconv.max_unpool2d(x.astype(np.int32), idx, 2)


def test_core_validates_directly():
    x = np.zeros((1, 1, 6, 6), np.float32)
    with pytest.raises(ValueError, match="kernel_size"):
        _core.max_pool2d(x, 0, 2, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises(ValueError, match="stride"):
        _core.max_pool2d(x, 2, 2, 1, 0, 0, 0, 1, 1, False, True)
    with pytest.raises(ValueError, match="dilation"):
        _core.max_pool2d(x, 2, 2, 1, 1, 0, 0, 1, -1, False, True)
    with pytest.raises(ValueError, match="padding"):
        _core.max_pool2d(x, 2, 2, 1, 1, 2, 0, 1, 1, False, True)
    with pytest.raises(ValueError, match="padding"):
        _core.max_pool2d(x, 2, 2, 1, 1, -1, 0, 1, 1, False, True)
    with pytest.raises(ValueError, match="input"):
        _core.max_pool2d(x[0], 2, 2, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises(ValueError):
        _core.max_pool2d(x, 7, 7, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises(TypeError, match="input"):
        _core.max_pool2d([1.0], 2, 2, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises(TypeError, match="input"):
        _core.max_pool2d(x.astype(np.int16), 2, 2, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises(TypeError, match="kernel_size"):
        _core.max_pool2d(x, 2.0, 2, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises((OverflowError, ValueError)):
        _core.max_pool2d(x, 2, 2, 1, 1, 0, 0, 2**62, 2**62, False, True)
    with pytest.raises(OverflowError):
        _core.max_pool2d(x, 2**70, 2, 1, 1, 0, 0, 1, 1, False, True)
    with pytest.raises(TypeError, match="stride"):
        _core.max_pool2d(x, 2, 2, True, 1, 0, 0, 1, 1, False, True)
    big = 2**63 - 1  # extreme but valid: kernel 1 (dilation unused), huge stride
    same(_core.max_pool2d(x, 1, 1, big, big, 0, 0, big, big, False, True)[1],
         np.zeros((1, 1, 1, 1), np.int64))
    out, idx = _core.max_pool2d(x, np.int64(2), 2, 2, 2, 0, 0, 1, 1, False, False)
    assert out.shape == (1, 1, 3, 3) and idx is None
    g = np.zeros((1, 1, 3, 3), np.float32)
    i = np.zeros((1, 1, 3, 3), np.int64)
    with pytest.raises(ValueError, match="input_shape"):
        _core.max_pool2d_backward(g, i, 0, 6)
    with pytest.raises(ValueError, match="indices"):
        _core.max_pool2d_backward(g, i[:, :, :2], 6, 6)
    with pytest.raises(TypeError, match="indices"):
        _core.max_pool2d_backward(g, i.astype(np.int32), 6, 6)
    with pytest.raises(ValueError, match="grad_output"):
        _core.max_pool2d_backward(g[0], i[0], 6, 6)
    with pytest.raises(TypeError, match="grad_output"):
        _core.max_pool2d_backward(g.tolist(), i, 6, 6)
    with pytest.raises((OverflowError, ValueError)):
        _core.max_pool2d_backward(g, i, 2**40, 2**40)
    with pytest.raises(IndexError):
        _core.max_unpool2d(g, i + 9, 3, 3)
    with pytest.raises(ValueError, match="output_size"):
        _core.max_unpool2d(g, i, 3, -3)
    with pytest.raises(TypeError, match="indices"):
        _core.max_unpool2d(g, g, 3, 3)


EDGE_INTS = st.sampled_from([-(2**63), -(2**31), -2, -1, 0, 1, 2, 3, 5, 2**31, 2**62, 2**63 - 1])


@given(params=st.lists(st.one_of(EDGE_INTS, st.integers(-3, 6)), min_size=8, max_size=8),
       h=st.integers(1, 7), w=st.integers(1, 20), ceil=st.booleans())
def test_core_never_crashes_on_arbitrary_parameters(params, h, w, ceil):
    x = np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)
    try:
        out, idx = _core.max_pool2d(x, *params, ceil, True)
    except (ValueError, OverflowError):
        return
    kh, kw, sh, sw, ph, pw, dh, dw = params
    want, widx = ref.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil, return_indices=True)
    same(out, want)
    same(idx, widx)


def test_empty_output_with_overflowing_strides_is_rejected():
    """(0, 0, 2**62) holds no elements, but its C strides (itemsize * 2**62) overflow
    int64: an OverflowError, not a sanitizer report or a wrapped stride (found by fuzzing)."""
    g = np.zeros((0, 0, 1), np.float32)
    i = np.zeros((0, 0, 1), np.int64)
    with pytest.raises(OverflowError):
        pyconv.max_pool1d_backward(g, i, (0, 0, 2**62))
    assert pyconv.max_pool1d_backward(g, i, (0, 0, 4)).shape == (0, 0, 4)
