"""Batch norm: forward (training / eval, running-stat updates) and backward, against the
NumPy reference, float64 finite differences and PyTorch; numerical stress cases; the
scalar and AVX2 paths bit for bit; input layouts; and every invalid argument."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyconv
from pyconv import _core
from pyconv import reference as ref

DTYPES = [np.float32, np.float64]
SETTINGS = dict(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _batch_stats(x):
    """Float64 mean and biased variance per channel."""
    axes, bshape = _axes(x)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes)
    var = ((x64 - mean.reshape(bshape)) ** 2).mean(axis=axes)
    return mean, var


def _unit(dtype):
    return 1e-12 if dtype == np.float64 else 1e-5


def check_forward(out, x, mean, var, weight, bias, eps, expected):
    """|out - expected| <= u * (|x - mean| * |a| + |b|) + tiny, a = invstd * weight."""
    assert out.dtype == x.dtype and out.shape == x.shape and out.flags.c_contiguous
    _, bshape = _axes(x)
    c = x.shape[1]
    a = (1.0 / np.sqrt(var + eps)) * (np.ones(c) if weight is None else weight.astype(np.float64))
    b = np.zeros(c) if bias is None else bias.astype(np.float64)
    dev = np.abs(x.astype(np.float64) - mean.reshape(bshape))
    scale = dev * np.abs(a).reshape(bshape) + np.abs(b).reshape(bshape)
    # both means (ours and the reference's) carry a rounding of about 1e-16 * |x|
    mean_err = 1e-14 * np.abs(x.astype(np.float64)) * np.abs(a).reshape(bshape)
    err = np.abs(out.astype(np.float64) - expected.astype(np.float64))
    u = _unit(x.dtype)
    bound = u * scale + mean_err + u * 1e-3
    assert np.all(err <= bound), float(np.max(err - bound))


def check_backward(got, want, x, dy, weight, training, mean, var, eps):
    dx, gw, gb = got
    rdx, rgw, rgb = want
    u = _unit(x.dtype)
    axes, bshape = _axes(x)
    c = x.shape[1]
    n = x.size // c if c else 1
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    xhat = (x64 - mean.reshape(bshape)) * invstd.reshape(bshape)
    xhat_abs = np.abs(xhat) + 1e-14 / u * np.abs(x64) * invstd.reshape(bshape)
    absdyx = (np.abs(dy64) * xhat_abs).sum(axis=axes)
    absdy = np.abs(dy64).sum(axis=axes)
    a = np.abs(w * invstd).reshape(bshape)
    if training:
        scale = a * (np.abs(dy64) + (absdy / n).reshape(bshape) + xhat_abs * (absdyx / n).reshape(bshape))
    else:
        scale = a * np.abs(dy64)
    assert dx.dtype == x.dtype and dx.shape == x.shape and dx.flags.c_contiguous
    err = np.abs(dx.astype(np.float64) - rdx.astype(np.float64))
    assert np.all(err <= 4 * u * scale + u * 1e-3), float(np.max(err - 4 * u * scale))
    if weight is None:
        assert gw is None and gb is None
        return
    assert gw.dtype == x.dtype and gb.dtype == x.dtype and gw.shape == (c,) and gb.shape == (c,)
    assert np.all(np.abs(gw.astype(np.float64) - rgw.astype(np.float64)) <= u * absdyx + u * 1e-3)
    assert np.all(np.abs(gb.astype(np.float64) - rgb.astype(np.float64)) <= u * absdy + u * 1e-3)


@st.composite
def bn_case(draw):
    rank = draw(st.integers(2, 5))
    c = draw(st.sampled_from([1, 2, 3, 5, 7, 9, 13, 17]))
    n = draw(st.integers(1, 4))
    spatial = [draw(st.integers(1, 6)) for _ in range(rank - 2)]
    if rank == 3 and draw(st.booleans()):
        spatial = [draw(st.integers(500, 1300))]  # long runs: the chunked statistics path
    shape = (n, c, *spatial)
    ns = n * int(np.prod(spatial, dtype=np.int64))
    training = draw(st.booleans()) and ns >= 2
    return dict(
        shape=shape,
        dtype=draw(st.sampled_from(DTYPES)),
        training=training,
        has_weight=draw(st.booleans()),
        has_bias=draw(st.booleans()),
        has_running=draw(st.booleans()) or not training,
        momentum=draw(st.sampled_from([0.0, 1.0, 0.1, 0.5, -0.3, 2.0])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5, 0.0])),
        offset=draw(st.sampled_from([0.0, 3.0, -100.0])),
        spread=draw(st.sampled_from([1.0, 0.01, 50.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_inputs(case):
    rng = np.random.default_rng(case["seed"])
    dt = case["dtype"]
    shape = case["shape"]
    c = shape[1]
    x = (rng.standard_normal(shape) * case["spread"] + case["offset"]).astype(dt)
    w = rng.standard_normal(c).astype(dt) if case["has_weight"] else None
    b = rng.standard_normal(c).astype(dt) if case["has_bias"] else None
    if case["has_running"]:
        rm = rng.standard_normal(c).astype(dt) * case["spread"] + dt(case["offset"])
        rv = (rng.random(c) + 0.5).astype(dt) * dt(case["spread"] ** 2)
    else:
        rm = rv = None
    dy = rng.standard_normal(shape).astype(dt)
    return x, w, b, rm, rv, dy


# ------------------------------------------------------------------ forward / reference


@settings(**SETTINGS)
@given(case=bn_case())
def test_forward_matches_reference(isa, case):
    x, w, b, rm, rv, _ = make_inputs(case)
    training, mom, eps = case["training"], case["momentum"], case["eps"]
    if not training and eps == 0.0:
        eps = 1e-5
    rm_ref = None if rm is None else rm.copy()
    rv_ref = None if rv is None else rv.copy()
    if training:
        mean, var = _batch_stats(x)
    else:
        mean, var = rm.astype(np.float64), rv.astype(np.float64)
    if training and eps == 0.0 and np.any(var == 0):
        eps = 1e-5
    out = pyconv.batch_norm(x, rm, rv, w, b, training=training, momentum=mom, eps=eps)
    expected = ref.batch_norm(x, rm_ref, rv_ref, w, b, training=training, momentum=mom, eps=eps)
    check_forward(out, x, mean, var, w, b, eps, expected)
    if rm is not None:
        u = _unit(x.dtype)
        big = np.abs(1 - mom) * np.abs(rm_ref) + 1 + np.abs(mom) * np.abs(mean)
        np.testing.assert_array_less(np.abs(rm.astype(np.float64) - rm_ref.astype(np.float64)), u * (big + 1))
        bigv = np.abs(1 - mom) * np.abs(rv_ref) + 1 + np.abs(mom) * var * 2
        np.testing.assert_array_less(np.abs(rv.astype(np.float64) - rv_ref.astype(np.float64)), u * (bigv + 1))


@settings(**SETTINGS)
@given(case=bn_case())
def test_backward_matches_reference(isa, case):
    x, w, _, rm, rv, dy = make_inputs(case)
    training, eps = case["training"], max(case["eps"], 1e-5)
    got = pyconv.batch_norm_backward(dy, x, w, rm, rv, training=training, eps=eps)
    want = ref.batch_norm_backward(dy, x, w, rm, rv, training=training, eps=eps)
    if training:
        mean, var = _batch_stats(x)
    else:
        mean, var = rm.astype(np.float64), rv.astype(np.float64)
    check_backward(got, want, x, dy, w, training, mean, var, eps)


def test_running_stats_update_exact_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 5)).astype(np.float64)
    rm = np.array([0.5, -1.0, 2.0])
    rv = np.array([1.0, 2.0, 0.25])
    rm0, rv0 = rm.copy(), rv.copy()
    pyconv.batch_norm(x, rm, rv, training=True, momentum=0.25)
    mean = x.mean(axis=(0, 2))
    uvar = x.transpose(1, 0, 2).reshape(3, -1).var(axis=1, ddof=1)
    np.testing.assert_allclose(rm, 0.75 * rm0 + 0.25 * mean, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(rv, 0.75 * rv0 + 0.25 * uvar, rtol=1e-14, atol=1e-15)
    # momentum 0 leaves them as they are; momentum 1 replaces them by the batch values
    a, b = rm.copy(), rv.copy()
    pyconv.batch_norm(x, a, b, training=True, momentum=0.0)
    assert np.array_equal(a, rm) and np.array_equal(b, rv)
    pyconv.batch_norm(x, a, b, training=True, momentum=1.0)
    np.testing.assert_allclose(a, mean, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(b, uvar, rtol=1e-14)
    # eval never touches them
    a2, b2 = a.copy(), b.copy()
    pyconv.batch_norm(x, a2, b2, training=False, momentum=0.5)
    assert np.array_equal(a2, a) and np.array_equal(b2, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_running_stats_through_noncontiguous_views(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5, 3, 3)).astype(dtype)
    buf_m = np.full(10, 7.0, dtype=dtype)
    buf_v = np.full((5, 3), 9.0, dtype=dtype)
    rm = buf_m[::2]             # stride 2
    rv = buf_v[::-1, 1]         # negative stride, column of a 2-D array
    rm_ref, rv_ref = rm.copy(), rv.copy()
    pyconv.batch_norm(x, rm, rv, training=True, momentum=0.3)
    ref.batch_norm(x, rm_ref, rv_ref, training=True, momentum=0.3)
    u = _unit(dtype)
    np.testing.assert_allclose(buf_m[::2], rm_ref, rtol=u, atol=u)
    np.testing.assert_allclose(buf_v[::-1, 1], rv_ref, rtol=u, atol=u)
    assert np.all(buf_m[1::2] == 7.0)          # untouched neighbours
    assert np.all(buf_v[:, [0, 2]] == 9.0)


# ------------------------------------------------------------------ finite differences, torch


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 4), (2, 3), (2, 2, 2, 3)])
def test_backward_finite_differences(training, shape):
    rng = np.random.default_rng(3)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    w = rng.standard_normal(c)
    b = rng.standard_normal(c)
    rm = rng.standard_normal(c)
    rv = rng.random(c) + 0.5
    g = rng.standard_normal(shape)
    eps = 1e-3

    def loss(x_, w_, b_):
        return float(np.sum(pyconv.batch_norm(x_, rm.copy(), rv.copy(), w_, b_, training=training,
                                              eps=eps) * g))

    dx, dw, db = pyconv.batch_norm_backward(g, x, w, rm, rv, training=training, eps=eps)
    h = 1e-6
    for arr, grad, name in ((x, dx, "x"), (w, dw, "w"), (b, db, "b")):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            lp = loss(x, w, b)
            arr[i] = old - h
            lm = loss(x, w, b)
            arr[i] = old
            num[i] = (lp - lm) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (3, 5, 7), (2, 3, 4, 5), (2, 2, 3, 2, 2), (2, 3, 600)])
def test_matches_torch(training, shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 1
    w = rng.standard_normal(c)
    b = rng.standard_normal(c)
    rm = rng.standard_normal(c)
    rv = rng.random(c) + 0.5
    g = rng.standard_normal(shape)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = F.batch_norm(xt, rm_t, rv_t, wt, bt, training=training, momentum=0.2, eps=1e-4)
    yt.backward(torch.tensor(g))
    rm_p, rv_p = rm.copy(), rv.copy()
    y = pyconv.batch_norm(x, rm_p, rv_p, w, b, training=training, momentum=0.2, eps=1e-4)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rm_p, rm_t.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv_p, rv_t.numpy(), rtol=1e-12, atol=1e-12)
    dx, dw, db = pyconv.batch_norm_backward(g, x, w, rm, rv, training=training, eps=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ numerical stress


@pytest.mark.parametrize("shape", [(16, 3, 40), (4, 2, 3000)])
def test_float32_large_mean_small_spread(isa, shape):
    rng = np.random.default_rng(5)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    rm = np.zeros(shape[1], np.float32)
    rv = np.zeros(shape[1], np.float32)
    out = pyconv.batch_norm(x, rm, rv, training=True, momentum=1.0, eps=0.0)
    x64 = x.astype(np.float64).transpose(1, 0, 2).reshape(shape[1], -1)
    np.testing.assert_allclose(rv, x64.var(axis=1, ddof=1), rtol=1e-3)
    np.testing.assert_allclose(rm, x64.mean(axis=1), rtol=1e-7)
    o = out.astype(np.float64).transpose(1, 0, 2).reshape(shape[1], -1)
    np.testing.assert_allclose(o.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose(o.std(axis=1), 1, atol=1e-3)


@pytest.mark.parametrize("shape", [(8, 2, 30), (2, 2, 2000)])
def test_float32_huge_magnitudes(isa, shape):
    rng = np.random.default_rng(6)
    x = (1e20 * rng.standard_normal(shape) + 3e20).astype(np.float32)
    out = pyconv.batch_norm(x, None, None, training=True)
    assert np.all(np.isfinite(out))
    o = out.astype(np.float64).transpose(1, 0, 2).reshape(shape[1], -1)
    np.testing.assert_allclose(o.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(o.std(axis=1), 1, atol=1e-4)
    dx, dw, db = pyconv.batch_norm_backward(rng.standard_normal(shape).astype(np.float32), x,
                                            np.ones(shape[1], np.float32))
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw)) and np.all(np.isfinite(db))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 7), (3, 2, 1500), (9, 4)])
@pytest.mark.parametrize("value", [0.1, 1e4, -3.7e20, 0.0, 1.0 / 3.0])
def test_constant_channel_gives_bias_exactly(isa, dtype, shape, value):
    x = np.full(shape, value, dtype=dtype)
    c = shape[1]
    w = np.linspace(-2, 3, c).astype(dtype)
    b = np.linspace(0.3, -1.7, c).astype(dtype)
    out = pyconv.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    assert np.array_equal(out, np.broadcast_to(b.reshape((1, c) + (1,) * (x.ndim - 2)), shape))


# ------------------------------------------------------------------ scalar == AVX2, layouts


BITWISE_SHAPES = [(3, 5, 7), (3, 7, 8), (4, 5, 2, 4), (2, 3, 1100), (16, 13), (2, 9, 6, 5), (2, 1, 40000), (1, 3, 2, 33000), (40000, 1, 2), (30000, 3), (3, 5000), (6, 4, 300)]


def _run_all(x, dy, w, b, rm, rv):
    rm1, rv1 = rm.copy(), rv.copy()
    res = [pyconv.batch_norm(x, rm1, rv1, w, b, training=True, momentum=0.3), rm1, rv1]
    res.append(pyconv.batch_norm(x, rm, rv, w, b, training=False))
    res.extend(pyconv.batch_norm_backward(dy, x, w, training=True))
    res.extend(pyconv.batch_norm_backward(dy, x, w, rm, rv, training=False))
    res.append(pyconv.batch_norm_backward(dy, x, None, training=True)[0])
    return res


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BITWISE_SHAPES)
def test_scalar_equals_avx2_bitwise(dtype, shape, threads):
    if "avx2" not in pyconv.kernel_info()["detected_isa"] and pyconv.kernel_info()["detected_isa"] != "avx512":
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(7)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    before_isa, before_thr = pyconv.kernel_info()["isa"], pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(threads)
        out = {}
        for isa_name in ("scalar", "avx2"):
            _core._set_isa(isa_name)
            out[isa_name] = _run_all(x, dy, w, b, rm.copy(), rv.copy())
            again = _run_all(x, dy, w, b, rm.copy(), rv.copy())
            for a1, a2 in zip(out[isa_name], again):
                assert np.array_equal(a1, a2)  # run-to-run reproducible
    finally:
        _core._set_isa(before_isa)
        pyconv.set_num_threads(before_thr)
    for i, (s, v) in enumerate(zip(out["scalar"], out["avx2"])):
        assert s.dtype == v.dtype and np.array_equal(s, v), i


@pytest.mark.parametrize("shape,dtype", [((700, 64, 49), np.float32), ((33000, 8, 8), np.float32),
                                         ((2, 3, 0), np.float32),
                                         ((5, 7, 60000), np.float32), ((350, 64, 49), np.float64),
                                         ((9, 3000, 9), np.float32)])
def test_eval_forward_linear_runs(shape, dtype):
    """Eval forward walks the (n, c) runs in memory order: short runs through a staging
    buffer (runs straddling vectors and cache lines), long runs directly, outputs over
    8 MiB streamed. Bitwise equal between the scalar and AVX2 paths at 1, 2 and 3 threads,
    and equal to the reference within rounding."""
    if "avx2" not in pyconv.kernel_info()["detected_isa"] and pyconv.kernel_info()["detected_isa"] != "avx512":
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(11)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    before_isa, before_thr = pyconv.kernel_info()["isa"], pyconv.get_num_threads()
    outs = []
    try:
        _core._set_isa("scalar")
        want = pyconv.batch_norm(x, rm, rv, w, b, training=False)
        _core._set_isa("avx2")
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            outs.append(pyconv.batch_norm(x, rm, rv, w, b, training=False))
    finally:
        _core._set_isa(before_isa)
        pyconv.set_num_threads(before_thr)
    for o in outs:
        assert o.dtype == want.dtype and np.array_equal(o, want)
    expected = ref.batch_norm(x, rm.copy(), rv.copy(), w, b, training=False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(want, expected, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("shape", [(2, 263, 4096), (40, 14, 4000)])
def test_backward_pipelined_units(shape):
    """Long runs over 8 MiB with given statistics: the unit pipeline (reduction of the
    next unit interleaved with the element-wise pass of the current one; units of several
    channels with a shorter last one, or one channel each). Training (dx) and eval
    (scale) backward with weight grads: bitwise equal between the scalar and AVX2 paths
    at 1, 2 and 3 threads, and close to the reference."""
    if "avx2" not in pyconv.kernel_info()["detected_isa"] and pyconv.kernel_info()["detected_isa"] != "avx512":
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(5)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32)
    rm, rv = rng.standard_normal(c).astype(np.float32), (rng.random(c) + 0.5).astype(np.float32)
    _, sm, si = pyconv.batch_norm(x, None, None, w, None, training=True, return_stats=True)

    def both():
        return (pyconv.batch_norm_backward(dy, x, w, save_mean=sm, save_invstd=si)
                + pyconv.batch_norm_backward(dy, x, w, rm, rv, training=False))

    before_isa, before_thr = pyconv.kernel_info()["isa"], pyconv.get_num_threads()
    got = []
    try:
        _core._set_isa("scalar")
        want = both()
        _core._set_isa("avx2")
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            got.append(both())
    finally:
        _core._set_isa(before_isa)
        pyconv.set_num_threads(before_thr)
    for g in got:
        for a, b in zip(g, want):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    # a few channels alone are far below the streaming size: the unpipelined path, whose
    # per-channel results must be the same bits
    sub = (pyconv.batch_norm_backward(dy[:, 3:8].copy(), x[:, 3:8].copy(), w[3:8],
                                      save_mean=sm[3:8].copy(), save_invstd=si[3:8].copy())
           + pyconv.batch_norm_backward(dy[:, 3:8].copy(), x[:, 3:8].copy(), w[3:8], rm[3:8], rv[3:8],
                                        training=False))
    for a, b in zip(got[0], sub):
        assert np.array_equal(a[:, 3:8] if a.ndim > 1 else a[3:8], b)
    exp = ref.batch_norm_backward(dy[:, :5], x[:, :5], w[:5], training=True)
    for a, b in zip(want[:3], exp):
        np.testing.assert_allclose(a[:, :5] if a.ndim > 1 else a[:5], b, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("shape,dtype", [((2, 263, 4096), np.float32), ((40, 14, 4000), np.float32),
                                         ((703, 64, 49), np.float32), ((350, 62, 49), np.float64)])
def test_training_forward_streamed(shape, dtype):
    """Training forward over 8 MiB (streamed output): long runs take the unit pipeline
    (statistics of the next unit read from memory while the current one is normalised;
    units of several channels or one), short runs the column scheme normalising run by
    run through a staging buffer (row count not a multiple of 4). Output and statistics
    bitwise equal between the scalar and AVX2 paths at 1, 2 and 3 threads and to the
    cache-resident path on a few channels alone; close to the reference."""
    if "avx2" not in pyconv.kernel_info()["detected_isa"] and pyconv.kernel_info()["detected_isa"] != "avx512":
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(9)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    before_isa, before_thr = pyconv.kernel_info()["isa"], pyconv.get_num_threads()
    got = []
    try:
        _core._set_isa("scalar")
        pyconv.set_num_threads(1)
        want = pyconv.batch_norm(x, None, None, w, b, training=True, return_stats=True)
        sub = pyconv.batch_norm(x[:, 3:6].copy(), None, None, w[3:6], b[3:6], training=True,
                                return_stats=True)
        _core._set_isa("avx2")
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            got.append(pyconv.batch_norm(x, None, None, w, b, training=True, return_stats=True))
    finally:
        _core._set_isa(before_isa)
        pyconv.set_num_threads(before_thr)
    for g in got:
        for a, e in zip(g, want):
            assert a.dtype == e.dtype and np.array_equal(a, e)
    assert np.array_equal(want[0][:, 3:6], sub[0])
    assert np.array_equal(want[1][3:6], sub[1]) and np.array_equal(want[2][3:6], sub[2])
    x4 = x[:, :4].copy()
    mean, var = _batch_stats(x4)
    np.testing.assert_allclose(want[1][:4], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(want[2][:4], 1.0 / np.sqrt(var + 1e-5), rtol=1e-12)
    exp = ref.batch_norm(x4, None, None, w[:4], b[:4], training=True)
    check_forward(want[0][:, :4].copy(), x4, mean, var, w[:4], b[:4], 1e-5, exp)


def _layouts(a):
    """Views of `a` with other memory layouts but the same values."""
    yield "reversed", np.flip(np.flip(a.copy(), axis=0).copy(), axis=0)
    yield "fortran", np.asfortranarray(a)
    big = np.zeros((a.shape[0] * 2,) + a.shape[1:], a.dtype)
    big[::2] = a
    yield "strided", big[::2]
    raw = np.zeros(a.nbytes + 1, np.uint8)
    un = raw[1:].view(a.dtype).reshape(a.shape)
    un[...] = a
    yield "unaligned", un
    ro = a.copy()
    ro.flags.writeable = False
    yield "readonly", ro
    if a.shape[0] == 1 or np.all(a == a[:1]):
        yield "broadcast", np.broadcast_to(a[:1], a.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (4, 6), (2, 3, 700)])
def test_layouts_equal_contiguous(isa, dtype, shape):
    rng = np.random.default_rng(8)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    y0 = pyconv.batch_norm(x, None, None, w, b, training=True)
    e0 = pyconv.batch_norm(x, rm, rv, w, b)
    g0 = pyconv.batch_norm_backward(dy, x, w, training=True)
    for name, xv in _layouts(x):
        assert np.array_equal(pyconv.batch_norm(xv, None, None, w, b, training=True), y0), name
        assert np.array_equal(pyconv.batch_norm(xv, rm, rv, w, b), e0), name
        for name2, dyv in _layouts(dy):
            g = pyconv.batch_norm_backward(dyv, xv, w, training=True)
            for a1, a2 in zip(g, g0):
                assert np.array_equal(a1, a2), (name, name2)
    wv, bv = w[::-1].copy()[::-1], np.asfortranarray(b)
    assert np.array_equal(pyconv.batch_norm(x, None, None, wv, bv, training=True), y0)
    # broadcast input: compare with its contiguous copy
    xb = np.broadcast_to(x[:1], shape)
    assert np.array_equal(pyconv.batch_norm(xb, rm, rv, w, b), pyconv.batch_norm(xb.copy(), rm, rv, w, b))


# ------------------------------------------------------------------ edge shapes


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_zero_in_eval(dtype):
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    for shape in [(0, 3), (0, 3, 4), (0, 3, 2, 2), (2, 3, 0)]:
        x = np.zeros(shape, dtype)
        out = pyconv.batch_norm(x, rm, rv)
        assert out.shape == shape and out.dtype == dtype
        dx, dw, db = pyconv.batch_norm_backward(x, x, np.ones(3, dtype), rm, rv, training=False)
        assert dx.shape == shape
        assert np.array_equal(dw, np.zeros(3, dtype)) and np.array_equal(db, np.zeros(3, dtype))


def test_two_values_per_channel_in_training():
    x = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)
    out = pyconv.batch_norm(x, None, None, training=True, eps=0.0)
    assert np.array_equal(out[:, 0], np.array([-1.0, 1.0], np.float32))
    assert np.all(np.isnan(out[:, 1]))  # zero variance with eps = 0: 0 * inf
    out = pyconv.batch_norm(x, None, None, training=True, eps=1e-5)
    assert np.array_equal(out[:, 1], np.zeros(2, np.float32))


@pytest.mark.parametrize("shape", [(3, 1, 60000), (60000, 1, 3), (50000, 2)])
def test_split_plan_is_reproducible_and_accurate(shape):
    """Few channels and many threads: each channel's statistics merge from pieces (long
    runs cut anywhere; short runs cut at rows)."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) + 2).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(2)
        a = pyconv.batch_norm(x, None, None, training=True)
        b = pyconv.batch_norm(x, None, None, training=True)
        assert np.array_equal(a, b)
        w = np.ones(shape[1], np.float32)
        g1 = pyconv.batch_norm_backward(dy, x, w)
        g2 = pyconv.batch_norm_backward(dy, x, w)
        for p, q in zip(g1, g2):
            assert np.array_equal(p, q)
    finally:
        pyconv.set_num_threads(before)
    mean, var = _batch_stats(x)
    check_forward(a, x, mean, var, None, None, 1e-5, ref.batch_norm(x, None, None, training=True))
    check_backward(g1, ref.batch_norm_backward(dy, x, w), x, dy, w, True, mean, var, 1e-5)


# ------------------------------------------------------------------ invalid arguments


def _f32(*shape):
    return np.ones(shape, np.float32)


FWD_ERRORS = [
    # (kwargs overrides, exception, message fragment)
    (dict(running_mean=_f32(4)), ValueError, "running_mean"),
    (dict(running_var=_f32(2)), ValueError, "running_var"),
    (dict(weight=_f32(4)), ValueError, "weight"),
    (dict(bias=_f32(3, 1)), ValueError, "bias"),
    (dict(running_mean=None, training=False), ValueError, "running_mean"),
    (dict(running_var=None, training=False), ValueError, "running_var"),
    (dict(input=_f32(1, 3), training=True), ValueError, "more than 1 value"),
    (dict(input=_f32(1, 3, 1, 1), training=True), ValueError, "more than 1 value"),
    (dict(input=_f32(5)), ValueError, "input"),
    (dict(weight=np.ones(3, np.float64)), TypeError, "weight"),
    (dict(running_mean=np.ones(3, np.float64)), TypeError, "running_mean"),
    (dict(input=np.ones((2, 3), np.int32)), TypeError, "input"),
    (dict(input=[[1.0, 2.0, 3.0]] * 2), TypeError, "input"),
    (dict(weight=[1.0, 2.0, 3.0]), TypeError, "weight"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps=-1e-5), ValueError, "eps"),
    (dict(momentum=float("nan")), ValueError, "momentum"),
    (dict(momentum=float("-inf")), ValueError, "momentum"),
    (dict(momentum=None), TypeError, "momentum"),
    (dict(eps="1e-5"), TypeError, "eps"),
]


def _fwd_args(**over):
    args = dict(input=_f32(2, 3, 4), running_mean=_f32(3), running_var=_f32(3), weight=_f32(3),
                bias=_f32(3), training=True, momentum=0.1, eps=1e-5)
    args.update(over)
    return args


@pytest.mark.parametrize("over,exc,msg", FWD_ERRORS)
def test_forward_errors(over, exc, msg):
    with pytest.raises(exc, match=msg):
        pyconv.batch_norm(**_fwd_args(**over))
    a = _fwd_args(**over)
    with pytest.raises(exc, match=msg):
        _core.batch_norm_forward(a["input"], a["running_mean"], a["running_var"], a["weight"],
                                 a["bias"], a["training"], a["momentum"], a["eps"])


@pytest.mark.parametrize("direct", [False, True])
def test_running_stats_read_only_or_aliased(direct):
    def call(x, rm, rv, training):
        if direct:
            return _core.batch_norm_forward(x, rm, rv, None, None, training, 0.1, 1e-5)
        return pyconv.batch_norm(x, rm, rv, training=training)

    x = np.random.default_rng(10).standard_normal((4, 3, 2)).astype(np.float32)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean.*read-only"):
        call(x, ro, np.ones(3, np.float32), True)
    with pytest.raises(ValueError, match="running_var.*read-only"):
        call(x, np.zeros(3, np.float32), np.broadcast_to(np.float32(1), (3,)), True)
    call(x, ro, np.ones(3, np.float32), False)  # eval only reads them
    buf = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        call(x, buf, buf, True)
    buf = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        call(x, buf[:3], buf[1:], True)
    buf = np.ones(6, np.float32)
    call(x, buf[::2], buf[1::2], True)  # interleaved, disjoint: fine, both updated in place
    rm_ref, rv_ref = np.ones(3, np.float32), np.ones(3, np.float32)
    ref.batch_norm(x, rm_ref, rv_ref, training=True)
    np.testing.assert_allclose(buf[::2], rm_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(buf[1::2], rv_ref, rtol=1e-6)
    call(x, buf[::2], buf[::2], False)  # aliasing is harmless in eval


BWD_ERRORS = [
    (dict(grad_output=_f32(2, 3, 5)), ValueError, "grad_output"),
    (dict(grad_output=np.ones((2, 3, 4), np.float64)), TypeError, "grad_output"),
    (dict(weight=_f32(2)), ValueError, "weight"),
    (dict(weight=np.ones(3, np.float64)), TypeError, "weight"),
    (dict(training=False), ValueError, "running_mean"),
    (dict(training=False, running_mean=_f32(3)), ValueError, "running_var"),
    (dict(running_var=_f32(4)), ValueError, "running_var"),
    (dict(input=_f32(1, 3), grad_output=_f32(1, 3)), ValueError, "more than 1 value"),
    (dict(input=_f32(3), grad_output=_f32(3)), ValueError, "input"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(input="x"), TypeError, "input"),
]


@pytest.mark.parametrize("over,exc,msg", BWD_ERRORS)
def test_backward_errors(over, exc, msg):
    args = dict(grad_output=_f32(2, 3, 4), input=_f32(2, 3, 4), weight=_f32(3), running_mean=None,
                running_var=None, training=True, eps=1e-5)
    args.update(over)
    with pytest.raises(exc, match=msg):
        pyconv.batch_norm_backward(**args)
    with pytest.raises(exc, match=msg):
        _core.batch_norm_backward(args["grad_output"], args["input"], args["weight"],
                                  args["running_mean"], args["running_var"], args["training"],
                                  args["eps"])


def test_core_rejects_bad_flags():
    x = _f32(2, 3)
    with pytest.raises(TypeError, match="training"):
        _core.batch_norm_forward(x, None, None, None, None, "yes", 0.1, 1e-5)
    with pytest.raises(TypeError, match="momentum"):
        _core.batch_norm_forward(x, None, None, None, None, True, True, 1e-5)
    with pytest.raises(TypeError, match="eps"):
        _core.batch_norm_backward(x, x, None, None, None, True, None)


# ------------------------------------------------------------------ saved statistics


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 2, 700), (16, 5), (70000, 2), (1, 2, 70000)])
def test_saved_stats_round_trip(isa, dtype, shape, threads):
    before = pyconv.get_num_threads()
    pyconv.set_num_threads(threads)  # 2 threads: the last two shapes take split plans
    try:
        _saved_stats_round_trip(dtype, shape)
    finally:
        pyconv.set_num_threads(before)


def _saved_stats_round_trip(dtype, shape):
    rng = np.random.default_rng(11)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    out, sm, si = pyconv.batch_norm(x, None, None, w, b, training=True, eps=1e-4, return_stats=True)
    assert np.array_equal(out, pyconv.batch_norm(x, None, None, w, b, training=True, eps=1e-4))
    mean, var = _batch_stats(x)
    assert sm.dtype == np.float64 and si.dtype == np.float64
    np.testing.assert_allclose(sm, mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(si, 1 / np.sqrt(var + 1e-4), rtol=1e-12)
    got = pyconv.batch_norm_backward(dy, x, w, eps=1e-4, save_mean=sm, save_invstd=si)
    want = ref.batch_norm_backward(dy, x, w, eps=1e-4)
    check_backward(got, want, x, dy, w, True, mean, var, 1e-4)
    # eval: the running statistics come back
    rm, rv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    _, em, ei = pyconv.batch_norm(x, rm, rv, training=False, eps=1e-4, return_stats=True)
    np.testing.assert_array_equal(em, rm.astype(np.float64))
    np.testing.assert_allclose(ei, 1 / np.sqrt(rv.astype(np.float64) + 1e-4), rtol=1e-15)


@pytest.mark.parametrize("direct", [False, True])
def test_saved_stats_errors(direct):
    x = _f32(2, 3, 4)
    ok = np.ones(3)

    def call(sm, si, training=True):
        r = _f32(3)
        if direct:
            return _core.batch_norm_backward(x, x, None, r, r, training, 1e-5, sm, si)
        return pyconv.batch_norm_backward(x, x, None, r, r, training=training, save_mean=sm,
                                          save_invstd=si)

    with pytest.raises(ValueError, match="together"):
        call(ok, None)
    with pytest.raises(TypeError, match="save_invstd.*float64"):
        call(ok, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="save_mean"):
        call(np.ones(4), ok)
    with pytest.raises(ValueError, match="training=True only"):
        call(ok, ok, training=False)
    with pytest.raises(TypeError, match="save_mean"):
        call([1.0, 2.0, 3.0], ok)


def test_nan_stays_in_its_channel(isa):
    rng = np.random.default_rng(12)
    for shape in [(4, 3, 5), (2, 3, 900), (40, 3)]:
        x = rng.standard_normal(shape).astype(np.float32)
        x[1, 1, ...] = np.nan
        out = pyconv.batch_norm(x, None, None, training=True)
        assert np.all(np.isnan(out[:, 1]))
        clean = pyconv.batch_norm(np.delete(x, 1, axis=1), None, None, training=True)
        assert np.array_equal(np.delete(out, 1, axis=1), clean)


def test_concurrent_calls_from_python_threads():
    import threading
    rng = np.random.default_rng(13)
    xs = [rng.standard_normal((8, 6, 300)).astype(np.float32) for _ in range(4)]
    want = [pyconv.batch_norm(x, None, None, training=True) for x in xs]
    got = [None] * 4

    def work(i):
        for _ in range(20):
            got[i] = pyconv.batch_norm(xs[i], None, None, training=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_zero_channels_match_reference():
    """C == 0: no statistic to compute; kernel and reference both return empty arrays."""
    x = np.zeros((2, 0), np.float64)
    assert pyconv.batch_norm(x, None, None, training=True).shape == (2, 0)
    assert ref.batch_norm(x, None, None, training=True).shape == (2, 0)
    gx, gw, gb = pyconv.batch_norm_backward(x, x)
    rx, rw, rb = ref.batch_norm_backward(x, x)
    assert gx.shape == rx.shape == (2, 0) and gw is rw is None and gb is rb is None
