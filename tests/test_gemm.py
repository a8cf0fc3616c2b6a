"""The packed GEMM behind _core.matmul: exactness, layouts, ISA paths, threads, errors.

The oracle is NumPy in float64. Integer-valued inputs keep every partial sum exact in
float32 (|sum| < 2^24), so those results must be bitwise equal to the exact product
whatever the blocking, edge tiles or micro-kernel.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyconv import _core

# Register tiles and cache blocks the kernels use (scalar 4x8, AVX2 6x16 / 6x8; KC 256;
# MC 144 / 72 / 128 / 64), with their neighbours, plus primes and odd sizes.
EDGE_MN = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 23, 31, 32, 33, 47, 71, 73,
           97, 127, 129, 143, 145]
EDGE_K = [0, 1, 2, 3, 5, 7, 8, 16, 17, 31, 64, 97, 255, 256, 257, 300, 511, 513]

dims_mn = st.one_of(st.sampled_from(EDGE_MN), st.integers(0, 160))
dims_k = st.one_of(st.sampled_from(EDGE_K), st.integers(0, 600))
dtypes = st.sampled_from([np.float32, np.float64])
# The isa fixture holds one ISA for all of a test's examples, which is what we want.
per_isa = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
_DETECTED = _core.kernel_info()["detected_isa"]
ISAS = ["scalar"] + (["avx2"] if _DETECTED in ("avx2", "avx512") else []) + (["avx512"] if _DETECTED == "avx512" else [])


def exact(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)


def int_inputs(rng, m, n, k, dtype, lim=8):
    a = rng.integers(-lim, lim + 1, size=(m, k)).astype(dtype)
    b = rng.integers(-lim, lim + 1, size=(k, n)).astype(dtype)
    return a, b


def real_inputs(rng, m, n, k, dtype):
    return (rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype))


def assert_close(c, a, b):
    """|err| <= K * eps * (|a| @ |b|) + tiny: the bound of any summation order."""
    ref = exact(a, b)
    bound = exact(np.abs(a), np.abs(b))
    eps = np.finfo(a.dtype).eps
    k = a.shape[1]
    tol = (k + 2) * eps * bound + np.finfo(a.dtype).tiny
    assert c.shape == ref.shape
    assert np.all(np.abs(c.astype(np.float64) - ref) <= tol)


@pytest.fixture
def threads_restored():
    before = _core.get_num_threads()
    yield
    _core.set_num_threads(before)


# ------------------------------------------------------------------ exactness


@per_isa
@given(m=dims_mn, n=dims_mn, k=dims_k, dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_integer_valued_exact(isa, m, n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = int_inputs(rng, m, n, k, dtype)
    c = _core.matmul(a, b)
    assert c.dtype == dtype and c.shape == (m, n) and c.flags.c_contiguous
    np.testing.assert_array_equal(c, exact(a, b).astype(dtype))


@per_isa
@given(m=dims_mn, n=dims_mn, k=dims_k, dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_real_valued_close(isa, m, n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = real_inputs(rng, m, n, k, dtype)
    assert_close(_core.matmul(a, b), a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "m,n,k",
    [(145, 4081, 257),   # one past MC, NC and KC of the AVX2 float32 kernel
     (73, 2049, 513),    # one past the float64 / scalar blocks, two K blocks + 1
     (64, 3136, 576),    # conv-shaped: 3x3 over 64 channels, 56x56 output
     (6, 16, 1), (5, 15, 2), (7, 17, 3), (1, 4097, 1), (4097, 1, 3),
     # AVX-512 kernel: MR = 16 tiles (full, ragged by one each way), one past its KC
     (16, 16, 1), (15, 15, 2), (17, 33, 385), (161, 47, 769)],
)
def test_named_shapes_exact(isa, m, n, k, dtype):
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    a, b = int_inputs(rng, m, n, k, dtype, lim=4)
    np.testing.assert_array_equal(_core.matmul(a, b), exact(a, b).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_and_k_zero(isa, dtype):
    z = _core.matmul(np.ones((0, 5), dtype), np.ones((5, 3), dtype))
    assert z.shape == (0, 3) and z.dtype == dtype
    z = _core.matmul(np.ones((4, 5), dtype), np.ones((5, 0), dtype))
    assert z.shape == (4, 0)
    z = _core.matmul(np.ones((4, 0), dtype), np.ones((0, 3), dtype))
    assert z.shape == (4, 3)
    np.testing.assert_array_equal(z, np.zeros((4, 3), dtype))


def test_nan_and_inf_propagate(isa):
    a = np.ones((7, 9), np.float32)
    b = np.ones((9, 19), np.float32)
    a[2, 4] = np.nan
    b[3, 17] = np.inf
    c = _core.matmul(a, b)
    ref = exact(a, b)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(ref))
    np.testing.assert_array_equal(c[~np.isnan(c)], ref[~np.isnan(ref)].astype(np.float32))


@per_isa
@given(m=dims_mn, n=dims_mn, k=dims_k, extra_m=st.integers(0, 20), extra_n=st.integers(0, 40),
       seed=st.integers(0, 2**32 - 1))
def test_result_independent_of_tile_position(isa, m, n, k, extra_m, extra_n, seed):
    """Each C element gets the same arithmetic whether its tile is full, ragged or narrow."""
    rng = np.random.default_rng(seed)
    a, b = real_inputs(rng, m + extra_m, n + extra_n, k, np.float32)
    big = _core.matmul(a, b)
    small = _core.matmul(a[:m], b[:, :n])
    np.testing.assert_array_equal(small, big[:m, :n])


@per_isa
@given(m=dims_mn, n=dims_mn, k=dims_k, dtype=dtypes, threads=st.sampled_from([1, 2, 3]),
       accumulate=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_explicit_workspace_and_accumulate(isa, m, n, k, dtype, threads, accumulate, seed):
    """gemm() with a caller-provided workspace of gemm_workspace_elems (canary-guarded:
    the hook raises if anything outside it is written) and with accumulate = true."""
    rng = np.random.default_rng(seed)
    a, b = int_inputs(rng, m, n, k, dtype)
    c0 = rng.integers(-50, 50, size=(m, n)).astype(dtype) if accumulate else None
    got = _core._gemm_checked(a, b, c0, threads)
    want = exact(a, b) + (c0 if accumulate else 0)
    np.testing.assert_array_equal(got, want.astype(dtype))
    if not accumulate:
        ar, br = real_inputs(rng, m, n, k, dtype)
        np.testing.assert_array_equal(_core._gemm_checked(ar, br, None, threads), _core.matmul(ar, br))


# ------------------------------------------------------------------ ISA paths


@given(m=dims_mn, n=dims_mn, k=dims_k, dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_scalar_path_matches_fast_path(m, n, k, dtype, seed):
    if len(ISAS) < 2:
        pytest.skip("only the scalar path exists on this CPU")
    rng = np.random.default_rng(seed)
    ai, bi = int_inputs(rng, m, n, k, dtype)
    ar, br = real_inputs(rng, m, n, k, dtype)
    before = _core.kernel_info()["isa"]
    try:
        out = {}
        for name in ISAS:
            _core._set_isa(name)
            out[name] = (_core.matmul(ai, bi), _core.matmul(ar, br))
    finally:
        _core._set_isa(before)
    base_i, base_r = out["scalar"]
    for name in ISAS[1:]:
        np.testing.assert_array_equal(out[name][0], base_i)
        # Both are within the summation bound of the exact product.
        assert_close(out[name][1], ar, br)
    assert_close(base_r, ar, br)


# ------------------------------------------------------------------ layouts


def layouts(x):
    """Views and copies of x with the same values and different memory layouts."""
    yield "fortran", np.asfortranarray(x)
    yield "transposed-copy", np.ascontiguousarray(x.T).T
    if x.size:
        flipped = np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
        yield "negative-strides", flipped
        big = np.zeros((x.shape[0] * 2, x.shape[1] * 3), x.dtype)
        big[::2, ::3] = x
        yield "step-slices", big[::2, ::3]
    ro = x.copy()
    ro.flags.writeable = False
    yield "read-only", ro
    buf = np.zeros(x.size * x.itemsize + 1, np.uint8)
    un = buf[1:].view(x.dtype).reshape(x.shape)
    un[...] = x
    yield "unaligned", un
    yield "byteswapped", x.astype(x.dtype.newbyteorder(">"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(13, 37, 29), (6, 16, 257), (1, 1, 1), (31, 5, 300)])
def test_layouts_bitwise_equal(isa, dtype, m, n, k):
    rng = np.random.default_rng(3)
    a, b = real_inputs(rng, m, n, k, dtype)
    want = _core.matmul(a, b)
    for name, av in layouts(a):
        np.testing.assert_array_equal(_core.matmul(av, b), want, err_msg=f"a {name}")
    for name, bv in layouts(b):
        np.testing.assert_array_equal(_core.matmul(a, bv), want, err_msg=f"b {name}")
    assert_close(want, a, b)


@per_isa
@given(m=dims_mn, n=dims_mn, k=dims_k, seed=st.integers(0, 2**32 - 1))
def test_transposed_b_packer(isa, m, n, k, seed):
    """b given as a transpose view (column stride != 1) goes through the strided packer."""
    rng = np.random.default_rng(seed)
    a, b = real_inputs(rng, m, n, k, np.float32)
    bt = np.ascontiguousarray(b.T).T
    assert bt.strides[1] != bt.itemsize or n <= 1 or k <= 1
    np.testing.assert_array_equal(_core.matmul(a, bt), _core.matmul(a, b))
    at = np.ascontiguousarray(a.T).T
    np.testing.assert_array_equal(_core.matmul(at, bt), _core.matmul(a, b))


def test_broadcast_inputs(isa):
    a = np.broadcast_to(np.arange(7, dtype=np.float32)[None, :], (20, 7))
    b = np.broadcast_to(np.float32(2.0), (7, 33))
    np.testing.assert_array_equal(_core.matmul(a, b), _core.matmul(a.copy(), b.copy()))


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("m,n,k", [(3, 700, 64), (300, 20, 300), (150, 260, 520), (64, 3136, 96),
                                   (1, 1, 5), (7, 17, 259)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_bitwise_identical(isa, threads_restored, m, n, k, dtype):
    rng = np.random.default_rng(11)
    a, b = real_inputs(rng, m, n, k, dtype)
    out = []
    for t in (1, 2, 3):
        _core.set_num_threads(t)
        out.append(_core.matmul(a, b))
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])
    assert_close(out[0], a, b)


def test_concurrent_python_threads():
    """Calls from several Python threads (GIL released) use their own scratch memory."""
    import threading

    rng = np.random.default_rng(5)
    pairs = [real_inputs(rng, 40 + i, 300 - 7 * i, 200 + i, np.float32) for i in range(4)]
    want = [_core.matmul(a, b) for a, b in pairs]
    got = [None] * len(pairs)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = _core.matmul(*pairs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------ errors


def test_bad_inputs_raise():
    f32 = np.ones((3, 4), np.float32)
    b32 = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError):
        _core.matmul(np.ones(4, np.float32), b32)
    with pytest.raises(ValueError):
        _core.matmul(f32, np.ones((4, 5, 1), np.float32))
    with pytest.raises(ValueError):
        _core.matmul(f32, np.ones((5, 4), np.float32))
    with pytest.raises(TypeError):
        _core.matmul(f32, b32.astype(np.float64))
    with pytest.raises(TypeError):
        _core.matmul(f32.astype(np.int32), b32.astype(np.int32))
    with pytest.raises(TypeError):
        _core.matmul(f32.astype(np.float16), b32.astype(np.float16))
    with pytest.raises(TypeError):
        _core.matmul([[1.0]], [[1.0]])
    with pytest.raises(TypeError):
        _core.matmul(f32, None)
    with pytest.raises(TypeError):
        _core.matmul(f32)


def test_huge_broadcast_overflows():
    one = np.ones(1, np.float32)
    a = np.lib.stride_tricks.as_strided(one, shape=(2**40, 2**20), strides=(0, 0))
    b = np.lib.stride_tricks.as_strided(one, shape=(2**20, 2**40), strides=(0, 0))
    with pytest.raises(OverflowError):
        _core.matmul(a, b)


def test_fma_peak():
    g = _core._fma_peak_gflops(1, 0.01)
    assert isinstance(g, float) and g > 0
    with pytest.raises(ValueError):
        _core._fma_peak_gflops(0, 0.01)
    with pytest.raises(ValueError):
        _core._fma_peak_gflops(1, 0.0)
    with pytest.raises(ValueError):
        _core._fma_peak_gflops(1, float("nan"))
    with pytest.raises(TypeError):
        _core._fma_peak_gflops("1", 0.01)
