"""Convolution forward and backward against the NumPy reference, plus the adjoint
identities, finite differences, PyTorch, layouts, every lowering path and bad inputs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import pyconv
from pyconv import _core
from pyconv import reference as ref

DTYPES = [np.float32, np.float64]
EPS = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}


# ----------------------------------------------------------------------------- helpers


def _ints(rng, shape, dtype, lo=-3, hi=4):
    """Integer-valued floats: every product and sum is exact, so results are bit-exact."""
    return rng.integers(lo, hi, size=shape).astype(dtype)


def _assert_close(got, want, bound, terms):
    """|got - want| <= terms * eps * bound, bound = the same op on absolute values
    (sum |x*w| per output element), plus a tiny floor."""
    assert got.shape == want.shape and got.dtype == want.dtype
    eps = EPS[got.dtype]
    tol = 4.0 * max(terms, 1) * eps * bound.astype(np.float64) + 1e-300
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= tol), f"max err {err.max()} vs tol {tol.ravel()[np.argmax(err - tol)]}"


def _call(nd, fn, *args, **kw):
    f = {("fwd", 2): pyconv.conv2d, ("fwd", 1): pyconv.conv1d,
         ("bwd", 2): pyconv.conv2d_backward, ("bwd", 1): pyconv.conv1d_backward}[(fn, nd)]
    return f(*args, **kw)


def _ref(nd, fn, *args, **kw):
    f = {("fwd", 2): ref.conv2d, ("fwd", 1): ref.conv1d,
         ("bwd", 2): ref.conv2d_backward, ("bwd", 1): ref.conv1d_backward}[(fn, nd)]
    return f(*args, **kw)


@st.composite
def conv_cases(draw, nd=None, depthwise=None):
    """Valid parameters first (every padding form), then shapes that fit them."""
    nd = draw(st.sampled_from([1, 2])) if nd is None else nd
    dw = draw(st.booleans()) if depthwise is None else depthwise
    if dw:
        groups = draw(st.integers(1, 5))
        cin_g, cout_g = 1, draw(st.integers(1, 3))
    else:
        groups = draw(st.integers(1, 3))
        cin_g, cout_g = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    forms = ["int", "tuple", "pairs", "valid", "same"] + (["causal", "flatpair"] if nd == 1 else [])
    form = draw(st.sampled_from(forms))
    if form == "int":
        padding = draw(st.integers(0, 3))
        pads = [(padding, padding)] * nd
    elif form == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(nd))
        pads = [(p, p) for p in padding]
    elif form in ("pairs", "flatpair"):
        pads = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd)]
        padding = tuple(pads) if form == "pairs" else pads[0]
    elif form == "causal":
        padding, pads = "causal", [(d[0] * (k[0] - 1), 0)]
    else:
        padding, pads = form, None
    sizes = []
    for i in range(nd):
        span = d[i] * (k[i] - 1) + 1
        lo = max(1, span - (pads[i][0] + pads[i][1] if pads else 0))
        if form == "valid":
            lo = span
        sizes.append(draw(st.integers(lo, lo + 7)))
    n = draw(st.integers(0, 3))
    return dict(nd=nd, n=n, cin=groups * cin_g, cout=groups * cout_g, groups=groups,
                k=k, stride=s, dilation=d, padding=padding, sizes=tuple(sizes),
                bias=draw(st.booleans()), batched=draw(st.booleans()) or n != 1,
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31)))


def _arrays(case, ints=True):
    rng = np.random.default_rng(case["seed"])
    make = (lambda shape: _ints(rng, shape, case["dtype"])) if ints else \
        (lambda shape: rng.standard_normal(shape).astype(case["dtype"]))
    xshape = ((case["n"],) if case["batched"] else ()) + (case["cin"],) + case["sizes"]
    x = make(xshape)
    w = make((case["cout"], case["cin"] // case["groups"]) + case["k"])
    b = make((case["cout"],)) if case["bias"] else None
    return x, w, b


def _kw(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


# ----------------------------------------------------------------------------- vs reference


@given(case=conv_cases())
def test_forward_backward_exact_on_integers(case):
    """Integer-valued data: forward and all three gradients bit-exact vs the reference."""
    nd = case["nd"]
    x, w, b = _arrays(case)
    y = _call(nd, "fwd", x, w, b, **_kw(case))
    yr = _ref(nd, "fwd", x, w, b, **_kw(case))
    assert y.dtype == x.dtype and y.flags.c_contiguous
    np.testing.assert_array_equal(y, yr)
    dy = _ints(np.random.default_rng(case["seed"] + 1), y.shape, x.dtype)
    got = _call(nd, "bwd", dy, x, w, **_kw(case))
    want = _ref(nd, "bwd", dy, x, w, **_kw(case))
    for g, r in zip(got, want):
        assert g.dtype == x.dtype and g.shape == r.shape
        np.testing.assert_array_equal(g, r)


@given(case=conv_cases())
def test_forward_backward_real_values(case):
    """Gaussian data: within the accumulation bound K * eps * sum|x*w| of the reference."""
    nd = case["nd"]
    x, w, b = _arrays(case, ints=False)
    kw = _kw(case)
    terms = case["cin"] // case["groups"] * int(np.prod(case["k"])) + 1
    y = _call(nd, "fwd", x, w, b, **kw)
    bound = _ref(nd, "fwd", np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                 None if b is None else np.abs(b).astype(np.float64), **kw)
    _assert_close(y, _ref(nd, "fwd", x, w, b, **kw), bound, terms)
    dy = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape).astype(x.dtype)
    got = _call(nd, "bwd", dy, x, w, **kw)
    want = _ref(nd, "bwd", dy, x, w, **kw)
    bounds = _ref(nd, "bwd", np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64),
                  np.abs(w).astype(np.float64), **kw)
    out_px = int(np.prod(y.shape[-nd:])) * max(case["n"], 1)
    for g, r, bd, t in zip(got, want, bounds, (case["cout"] * int(np.prod(case["k"])), out_px, out_px)):
        _assert_close(g, r, bd, t)


@given(case=conv_cases())
def test_output_mask(case):
    nd = case["nd"]
    x, w, _ = _arrays(case)
    y = _call(nd, "fwd", x, w, None, **_kw(case))
    dy = _ints(np.random.default_rng(1), y.shape, x.dtype)
    full = _call(nd, "bwd", dy, x, w, **_kw(case))
    for mask in [(True, False, False), (False, True, False), (False, False, True), (False, False, False)]:
        got = _call(nd, "bwd", dy, x, w, output_mask=mask, **_kw(case))
        for m, g, f in zip(mask, got, full):
            if m:
                np.testing.assert_array_equal(g, f)
            else:
                assert g is None


# ----------------------------------------------------------------------------- identities


@given(case=conv_cases())
def test_adjoint_identities(case):
    """<conv(x, w), y> == <x, grad_input(y)> == <w, grad_weight(y)> (float64)."""
    case = dict(case, dtype=np.float64)
    nd = case["nd"]
    x, w, _ = _arrays(case, ints=False)
    y = _call(nd, "fwd", x, w, None, **_kw(case))
    g = np.random.default_rng(case["seed"] + 7).standard_normal(y.shape)
    gx, gw, gb = _call(nd, "bwd", g, x, w, **_kw(case))
    lhs = float(np.sum(y * g))
    scale = float(np.sum(np.abs(y * g))) + 1e-12
    assert abs(lhs - float(np.sum(x * gx))) <= 1e-11 * scale * 10
    assert abs(lhs - float(np.sum(w * gw))) <= 1e-11 * scale * 10
    ch_axis = 1 if (case["batched"]) else 0
    axes = tuple(i for i in range(g.ndim) if i != ch_axis)
    np.testing.assert_allclose(gb, g.sum(axis=axes), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd", [1, 2])
def test_finite_differences(nd):
    """Central differences of L = <conv(x, w) + b, y> match every gradient (float64)."""
    rng = np.random.default_rng(3)
    k = (3,) * nd
    x = rng.standard_normal((2, 4) + (7,) * nd)
    w = rng.standard_normal((6, 2) + k)
    b = rng.standard_normal(6)
    kw = dict(stride=2, padding=((1, 2),) * nd if nd == 2 else (1, 2), dilation=1, groups=2)
    y = _call(nd, "fwd", x, w, b, **kw)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = _call(nd, "bwd", g, x, w, **kw)
    h = 1e-6

    def loss(x_, w_, b_):
        return float(np.sum(_call(nd, "fwd", x_, w_, b_, **kw) * g))

    for arr, grad, name in ((x, gx, "x"), (w, gw, "w"), (b, gb, "b")):
        for _ in range(6):
            idx = tuple(rng.integers(0, s) for s in arr.shape)
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += h
            minus[idx] -= h
            args_p = {"x": (plus, w, b), "w": (x, plus, b), "b": (x, w, plus)}[name]
            args_m = {"x": (minus, w, b), "w": (x, minus, b), "b": (x, w, minus)}[name]
            fd = (loss(*args_p) - loss(*args_m)) / (2 * h)
            assert abs(fd - grad[idx]) <= 1e-6 * (1 + abs(fd)), (name, idx, fd, grad[idx])


# ----------------------------------------------------------------------------- paths and ISAs


def _fwd_core(x, w, b, s, pads, d, g, path):
    return _core.conv2d_forward(x, w, b, s[0], s[1], pads[0], pads[1], pads[2], pads[3], d[0], d[1], g, path)


def _bwd_core(dy, x, w, s, pads, d, g, path):
    return _core.conv2d_backward(dy, x, w, s[0], s[1], pads[0], pads[1], pads[2], pads[3], d[0], d[1], g,
                                 True, True, True, path)


PATH_CASES = [
    # (n, cin, cout, H, W, kH, kW, stride, pads(ph_lo, ph_hi, pw_lo, pw_hi), dilation, groups, path)
    (2, 13, 11, 5, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, "pointwise"),
    (1, 24, 40, 9, 9, 1, 1, (1, 1), (0, 0, 0, 0), (2, 3), 2, "pointwise"),
    (3, 6, 9, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 3, "pointwise"),
    (2, 12, 12, 11, 37, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 12, "depthwise"),
    (2, 5, 15, 9, 21, 3, 5, (1, 1), (2, 0, 0, 3), (2, 1), 5, "depthwise"),
    (1, 4, 8, 13, 40, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 4, "depthwise"),
    (2, 7, 7, 6, 6, 6, 6, (1, 1), (0, 0, 0, 0), (1, 1), 7, "depthwise"),
    (1, 3, 6, 1, 64, 1, 2, (1, 1), (0, 0, 8, 0), (1, 8), 3, "depthwise"),
    (1, 2, 2, 12, 13, 9, 9, (1, 1), (4, 4, 3, 5), (1, 1), 2, "depthwise"),   # > 64 taps: chunked
    (2, 3, 3, 10, 30, 3, 3, (2, 1), (1, 1, 1, 1), (1, 2), 3, "depthwise"),   # stride 2 in H only
]


@pytest.mark.parametrize("case", PATH_CASES, ids=[f"{c[-1]}-{i}" for i, c in enumerate(PATH_CASES)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_path_matches_generic(case, dtype, isa):
    """Every specialised candidate equals the generic implicit GEMM on the same inputs
    (bit-exact on integer data) and agrees with the reference on real data."""
    n, cin, cout, H, W, kH, kW, s, pads, d, g, path = case
    rng = np.random.default_rng(11)
    x, w, b = _ints(rng, (n, cin, H, W), dtype), _ints(rng, (cout, cin // g, kH, kW), dtype), _ints(rng, (cout,), dtype)
    assert _core.conv_path([n, cin, H, W], [cout, cin // g, kH, kW], *s, *pads, *d, g) == path
    y_fast = _fwd_core(x, w, b, s, pads, d, g, path)
    y_gen = _fwd_core(x, w, b, s, pads, d, g, "generic")
    np.testing.assert_array_equal(y_fast, y_gen)
    dy = _ints(rng, y_fast.shape, dtype)
    for a, c in zip(_bwd_core(dy, x, w, s, pads, d, g, path), _bwd_core(dy, x, w, s, pads, d, g, "generic")):
        np.testing.assert_array_equal(a, c)
    # real data, vs the reference
    x, w = rng.standard_normal(x.shape).astype(dtype), rng.standard_normal(w.shape).astype(dtype)
    dy = rng.standard_normal(dy.shape).astype(dtype)
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    kw = dict(stride=s, padding=padding, dilation=d, groups=g)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_fwd_core(x, w, None, s, pads, d, g, path), ref.conv2d(x, w, None, **kw), **tol)
    for a, r in zip(_bwd_core(dy, x, w, s, pads, d, g, path), ref.conv2d_backward(dy, x, w, **kw)):
        np.testing.assert_allclose(a, r, **tol)


def test_forcing_an_unsupported_path_is_an_error():
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="pointwise"):
        _fwd_core(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, "pointwise")
    with pytest.raises(ValueError, match="depthwise"):
        _fwd_core(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, "depthwise")
    with pytest.raises(ValueError, match="path"):
        _fwd_core(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, "fft")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,cin,cout,k,stride", [(1, 13, 17, 3, 1), (1, 3, 8, 7, 2), (2, 8, 6, 3, 1),
                                                     (16, 16, 32, 3, 1), (16, 16, 16, 3, 2)])
def test_isa_paths_agree(dtype, groups, cin, cout, k, stride, isa):
    """The scalar and AVX2 paths agree with the reference (and exactly on integers)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, cin, 19, 23)).astype(dtype)
    w = rng.standard_normal((cout, cin // groups, k, k)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    kw = dict(stride=stride, padding=k // 2, groups=groups)
    y = pyconv.conv2d(x, w, b, **kw)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, **kw), **tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    for a, r in zip(pyconv.conv2d_backward(dy, x, w, **kw), ref.conv2d_backward(dy, x, w, **kw)):
        np.testing.assert_allclose(a, r, **tol)
    xi, wi, dyi = _ints(rng, x.shape, dtype), _ints(rng, w.shape, dtype), _ints(rng, y.shape, dtype)
    np.testing.assert_array_equal(pyconv.conv2d(xi, wi, None, **kw), ref.conv2d(xi, wi, None, **kw))
    for a, r in zip(pyconv.conv2d_backward(dyi, xi, wi, **kw), ref.conv2d_backward(dyi, xi, wi, **kw)):
        np.testing.assert_array_equal(a, r)


def test_threads_reproducible_and_consistent():
    """Same thread count: bitwise identical run to run; 1 vs 2 threads agree."""
    rng = np.random.default_rng(8)
    before = pyconv.get_num_threads()
    cases = [((1, 16, 14, 14), (32, 16, 3, 3), 1), ((3, 16, 9, 9), (16, 8, 3, 3), 2),
             ((1, 8, 30, 30), (16, 1, 3, 3), 8), ((1, 32, 12, 12), (8, 32, 1, 1), 1)]
    try:
        for xs, ws, g in cases:
            x = rng.standard_normal(xs).astype(np.float32)
            w = rng.standard_normal(ws).astype(np.float32)
            res = {}
            for t in (1, 2):
                pyconv.set_num_threads(t)
                y1 = pyconv.conv2d(x, w, None, padding=ws[-1] // 2, groups=g)
                y2 = pyconv.conv2d(x, w, None, padding=ws[-1] // 2, groups=g)
                np.testing.assert_array_equal(y1, y2)
                dy = np.ones_like(y1)
                b1 = pyconv.conv2d_backward(dy, x, w, padding=ws[-1] // 2, groups=g)
                b2 = pyconv.conv2d_backward(dy, x, w, padding=ws[-1] // 2, groups=g)
                for a, c in zip(b1, b2):
                    np.testing.assert_array_equal(a, c)
                res[t] = (y1,) + b1
            for a, c in zip(res[1], res[2]):
                np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)
    finally:
        pyconv.set_num_threads(before)


# ----------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=2, padding=0, dilation=2, groups=2),
    dict(stride=1, padding="same", dilation=2, groups=4),
    dict(stride=3, padding=2, dilation=1, groups=8),
])
def test_matches_torch(nd, dtype, cfg):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8) + (11,) * nd).astype(dtype)
    w = rng.standard_normal((16, 8 // cfg["groups"]) + (3,) * nd).astype(dtype)
    b = rng.standard_normal(16).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = (F.conv2d if nd == 2 else F.conv1d)(tx, tw, tb, **cfg)
    y = _call(nd, "fwd", x, w, b, **cfg)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    gx, gw, gb = _call(nd, "bwd", g, x, w, **cfg)
    np.testing.assert_allclose(gx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(gw, tw.grad.numpy(), **tol)
    np.testing.assert_allclose(gb, tb.grad.numpy(), **tol)


def test_asymmetric_and_causal_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 9, 10))
    w = rng.standard_normal((6, 4, 3, 2))
    want = F.conv2d(F.pad(torch.tensor(x), (0, 2, 1, 3)), torch.tensor(w), stride=2).numpy()
    np.testing.assert_allclose(pyconv.conv2d(x, w, padding=((1, 3), (0, 2)), stride=2), want, rtol=1e-10, atol=1e-10)
    x1 = rng.standard_normal((2, 4, 50))
    w1 = rng.standard_normal((4, 4, 2))
    want = F.conv1d(F.pad(torch.tensor(x1), (8, 0)), torch.tensor(w1), dilation=8).numpy()
    np.testing.assert_allclose(pyconv.conv1d(x1, w1, padding="causal", dilation=8), want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- named edges


@pytest.mark.parametrize("dtype", DTYPES)
def test_named_edge_shapes(dtype):
    rng = np.random.default_rng(9)
    cases = [
        # (x shape, w shape, kwargs)
        ((2, 13, 6, 6), (11, 13, 3, 3), dict(padding=1)),                  # channels not a multiple of 8
        ((1, 3, 5, 4), (2, 3, 7, 6), dict(padding=1)),                     # kernel == padded input
        ((2, 2, 9, 9), (3, 2, 2, 2), dict(stride=4)),                      # stride > kernel
        ((3, 5, 1, 1), (4, 5, 1, 1), dict()),                              # 1x1 spatial
        ((3, 5, 1, 1), (4, 5, 3, 3), dict(padding=1)),                     # 1x1 spatial, padded 3x3
        ((2, 4, 7, 9), (4, 4, 3, 3), dict(padding="same", stride=2)),      # 'same' at stride 2
        ((2, 4, 7, 9), (4, 4, 3, 3), dict(padding="same", dilation=(2, 3))),
        ((2, 4, 7, 9), (4, 4, 3, 3), dict(padding="valid")),
        ((6, 6, 5), (9, 2, 3, 3), dict(padding=(1, 2), groups=3)),         # unbatched
        ((2, 4, 7, 9), (12, 1, 3, 3), dict(padding=1, groups=4)),          # depthwise, multiplier 3
        ((1, 3, 40, 40), (8, 3, 7, 7), dict(stride=2, padding=3)),         # stem-like
        ((7, 6, 7, 7), (8, 3, 3, 3), dict(stride=2, padding=1, groups=2)),  # small planes, images batched
    ]
    for xs, ws, kw in cases:
        x, w, b = _ints(rng, xs, dtype), _ints(rng, ws, dtype), _ints(rng, (ws[0],), dtype)
        y = pyconv.conv2d(x, w, b, **kw)
        np.testing.assert_array_equal(y, ref.conv2d(x, w, b, **kw))
        dy = _ints(rng, y.shape, dtype)
        for a, r in zip(pyconv.conv2d_backward(dy, x, w, **kw), ref.conv2d_backward(dy, x, w, **kw)):
            np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,cin_g", [(1, 3), (3, 1)])
def test_batch_zero(dtype, groups, cin_g):
    x = np.zeros((0, groups * cin_g, 6, 6), dtype)
    w = np.ones((6, cin_g, 3, 3), dtype)
    y = pyconv.conv2d(x, w, np.ones(6, dtype), padding=1, groups=groups)
    assert y.shape == (0, 6, 6, 6) and y.dtype == dtype
    gx, gw, gb = pyconv.conv2d_backward(y, x, w, padding=1, groups=groups)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros_like(w))
    np.testing.assert_array_equal(gb, np.zeros(6, dtype))
    y1 = pyconv.conv1d(np.zeros((0, 4, 9), dtype), np.ones((2, 4, 3), dtype))
    assert y1.shape == (0, 2, 7)


@pytest.mark.parametrize("padding", [0, 1, (2,), (1, 3), ((0, 2),), "valid", "same", "causal"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv1d_padding_forms(padding, stride):
    rng = np.random.default_rng(6)
    x, w = _ints(rng, (2, 5, 17), np.float32), _ints(rng, (4, 5, 3), np.float32)
    y = pyconv.conv1d(x, w, None, stride=stride, padding=padding, dilation=2)
    np.testing.assert_array_equal(y, ref.conv1d(x, w, None, stride=stride, padding=padding, dilation=2))
    pads = pyconv.shapes.resolve_conv_padding(padding, (17,), (3,), (stride,), (2,))
    assert y.shape[-1] == pyconv.conv_output_size(17, 3, stride, pads[0], 2)
    if padding == "causal":  # output t sees inputs t - 4 .. t only
        x2 = x.copy()
        x2[..., 10:] += 100
        assert np.array_equal(pyconv.conv1d(x2, w, padding="causal", dilation=2)[..., :10],
                              pyconv.conv1d(x, w, padding="causal", dilation=2)[..., :10])


# ----------------------------------------------------------------------------- layouts


def _layouts(a):
    """(name, array equal in value to `a`, with an unusual layout)."""
    out = [("fortran", np.asfortranarray(a)), ("readonly", a.copy())]
    out[1][1].flags.writeable = False
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    sl = tuple(slice(None, None, 2) for _ in a.shape)
    big[sl] = a
    out.append(("strided", big[sl]))
    rev = a[..., ::-1].copy()
    out.append(("negative", rev[..., ::-1]))
    buf = np.zeros(a.nbytes + 1, np.uint8)
    un = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    un[...] = a
    out.append(("unaligned", un))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_equal_contiguous(dtype):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 7, 8)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    kw = dict(padding=1, groups=2)
    y = pyconv.conv2d(x, w, b, **kw)
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = pyconv.conv2d_backward(dy, x, w, **kw)
    for (name, xl), (_, wl), (_, bl), (_, dyl) in zip(_layouts(x), _layouts(w), _layouts(b), _layouts(dy)):
        np.testing.assert_array_equal(pyconv.conv2d(xl, wl, bl, **kw), y, err_msg=name)
        for a, c in zip(pyconv.conv2d_backward(dyl, xl, wl, **kw), grads):
            np.testing.assert_array_equal(a, c, err_msg=name)
    # broadcast (zero strides)
    xb = np.broadcast_to(x[:, :1], x.shape)
    np.testing.assert_array_equal(pyconv.conv2d(xb, w, b, **kw), pyconv.conv2d(np.ascontiguousarray(xb), w, b, **kw))


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((2, 4, 8, 8), np.float32)
    w = np.zeros((6, 2, 3, 3), np.float32)
    bad = [
        (dict(stride=0), ValueError, "stride"),
        (dict(dilation=0), ValueError, "dilation"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(padding=((1, -1), (0, 0))), ValueError, "padding"),
        (dict(groups=0), ValueError, "groups"),
        (dict(groups=3), ValueError, "groups"),
        (dict(groups=1), ValueError, "weight"),
        (dict(padding="causal"), ValueError, "causal"),
        (dict(padding="bogus"), ValueError, "padding"),
    ]
    for kw, exc, msg in bad:
        kw = {"groups": 2, **kw}
        with pytest.raises(exc, match=msg):
            pyconv.conv2d(x, w, **kw)
    with pytest.raises(ValueError, match="kernel"):
        pyconv.conv2d(x, np.zeros((6, 2, 11, 3), np.float32), groups=2)           # larger than padded input
    with pytest.raises(ValueError, match="kernel_size"):
        pyconv.conv2d(x, np.zeros((6, 2, 0, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match="bias"):
        pyconv.conv2d(x, w, np.zeros(5, np.float32), groups=2)
    with pytest.raises(ValueError, match="input"):
        pyconv.conv2d(x[0, 0], w, groups=2)
    with pytest.raises(ValueError, match="weight"):
        pyconv.conv2d(x, w[0], groups=2)
    with pytest.raises(TypeError, match="dtype"):
        pyconv.conv2d(x, w.astype(np.float64), groups=2)
    with pytest.raises(TypeError, match="bias"):
        pyconv.conv2d(x, w, np.zeros(6), groups=2)
    with pytest.raises(TypeError, match="input"):
        pyconv.conv2d(x.tolist(), w, groups=2)
    with pytest.raises(TypeError, match="dtype"):
        pyconv.conv2d(x.astype(np.int32), w.astype(np.int32), groups=2)
    with pytest.raises(ValueError, match="grad_output"):
        pyconv.conv2d_backward(np.zeros((2, 6, 5, 5), np.float32), x, w, groups=2)
    with pytest.raises(TypeError, match="grad_output"):
        pyconv.conv2d_backward(np.zeros((2, 6, 6, 6)), x, w, groups=2)
    with pytest.raises(ValueError, match="input"):
        pyconv.conv1d(x, w, groups=2)


def test_core_validates_on_its_own():
    """Direct _core calls with bad arguments raise; nothing crashes."""
    x = np.zeros((2, 4, 8, 8), np.float32)
    w = np.zeros((6, 2, 3, 3), np.float32)
    ok = (1, 1, 0, 0, 0, 0, 1, 1, 2)

    def args(**ch):
        names = ["sh", "sw", "phl", "phh", "pwl", "pwh", "dh", "dw", "g"]
        vals = dict(zip(names, ok))
        vals.update(ch)
        return [vals[n] for n in names]

    for ch, msg in [(dict(sh=0), "stride"), (dict(dw=0), "dilation"), (dict(phl=-1), "padding"),
                    (dict(g=0), "groups"), (dict(g=3), "groups"), (dict(g=1), "weight"),
                    (dict(pwh=-5), "padding")]:
        with pytest.raises(ValueError, match=msg):
            _core.conv2d_forward(x, w, None, *args(**ch))
        with pytest.raises(ValueError, match=msg):
            _core.conv2d_backward(np.zeros((2, 6, 6, 6), np.float32), x, w, *args(**ch), True, True, True)
    with pytest.raises(ValueError, match="output size"):
        _core.conv2d_forward(x, np.zeros((6, 2, 9, 3), np.float32), None, *args())
    with pytest.raises(ValueError, match="kernel_size"):
        _core.conv2d_forward(x, np.zeros((6, 2, 0, 3), np.float32), None, *args())
    with pytest.raises(ValueError, match="input"):
        _core.conv2d_forward(x[0], w, None, *args())
    with pytest.raises(ValueError, match="bias"):
        _core.conv2d_forward(x, w, np.zeros((6, 1), np.float32), *args())
    with pytest.raises(ValueError, match="bias"):
        _core.conv2d_forward(x, w, np.zeros(7, np.float32), *args())
    with pytest.raises(TypeError):
        _core.conv2d_forward(x, w.astype(np.float64), None, *args())
    with pytest.raises(TypeError):
        _core.conv2d_forward("x", w, None, *args())
    with pytest.raises(ValueError, match="grad_output"):
        _core.conv2d_backward(np.zeros((2, 6, 6, 5), np.float32), x, w, *args(), True, True, True)
    with pytest.raises(ValueError, match="channel"):
        _core.conv2d_forward(np.zeros((2, 0, 8, 8), np.float32), np.zeros((6, 0, 3, 3), np.float32), None, *args(g=1))
    with pytest.raises((OverflowError, ValueError)):
        _core.conv2d_forward(x, w, None, *args(phl=2 ** 62, phh=2 ** 62))
    with pytest.raises((OverflowError, ValueError)):
        _core.conv2d_forward(x, w, None, *args(dh=2 ** 62))


def test_concurrent_calls_from_python_threads():
    """The GIL is released in the kernels and workspaces are per calling thread: calls
    from several Python threads at once give the serial results."""
    import threading
    rng = np.random.default_rng(13)
    cases = []
    for xs, ws, g in [((2, 8, 12, 12), (8, 8, 3, 3), 1), ((2, 8, 12, 12), (16, 1, 3, 3), 8),
                      ((2, 8, 12, 12), (4, 8, 1, 1), 1)]:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        y = pyconv.conv2d(x, w, padding=ws[-1] // 2, groups=g)
        grads = pyconv.conv2d_backward(np.ones_like(y), x, w, padding=ws[-1] // 2, groups=g)
        cases.append((x, w, g, y, grads))
    errors = []

    def work(i):
        try:
            for _ in range(5):
                x, w, g, y, grads = cases[i % len(cases)]
                pad = w.shape[-1] // 2
                if not np.array_equal(pyconv.conv2d(x, w, padding=pad, groups=g), y):
                    errors.append(("fwd", i))
                got = pyconv.conv2d_backward(np.ones_like(y), x, w, padding=pad, groups=g)
                if not all(np.array_equal(a, b) for a, b in zip(got, grads)):
                    errors.append(("bwd", i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ----------------------------------------------------------------------------- AVX-512


_HAS_AVX512 = pyconv.kernel_info()["detected_isa"] == "avx512"

# Generic-path geometries for the AVX-512 unfolding packer (stride 1 along W): planes wider
# and narrower than a panel (16 floats / 8 doubles), panels spanning output rows and
# images, left/right/top/bottom padding, dilation, stride along H only, groups.
# (n, cin, cout, H, W, kH, kW, stride, pads (top, bottom, left, right), dilation, groups)
AVX512_CASES = [
    (1, 16, 20, 56, 56, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 12, 9, 14, 14, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (3, 8, 17, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 5, 7, 9, 33, 5, 3, (1, 1), (2, 0, 0, 3), (1, 2), 1),
    (1, 6, 6, 19, 23, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1), 2),
    (4, 3, 5, 1, 3, 1, 2, (1, 1), (0, 0, 1, 2), (1, 1), 1),
    (2, 4, 33, 20, 17, 4, 4, (1, 1), (3, 3, 3, 3), (2, 3), 1),
    (1, 28, 16, 10, 40, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),
]


@pytest.mark.skipif(not _HAS_AVX512, reason="this CPU has no AVX-512")
@pytest.mark.parametrize("case", AVX512_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avx512_generic_forward_bitwise_equals_avx2(case, dtype):
    """Real-valued data, K <= 256 (one K block for both kernels): the AVX-512 packer and
    micro-kernel give the AVX2 results bit for bit (same FMA sequence per element), and
    both agree with the reference; integer data are exact."""
    n, cin, cout, H, W, kH, kW, s, pads, d, g = case
    assert cin // g * kH * kW <= 256
    rng = np.random.default_rng(21)
    x = rng.standard_normal((n, cin, H, W)).astype(dtype)
    w = rng.standard_normal((cout, cin // g, kH, kW)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    xi, wi = _ints(rng, x.shape, dtype), _ints(rng, w.shape, dtype)
    before = pyconv.kernel_info()["isa"]
    out = {}
    try:
        for name in ("avx2", "avx512"):
            _core._set_isa(name)
            out[name] = (_fwd_core(x, w, b, s, pads, d, g, "generic"),
                         _fwd_core(xi, wi, None, s, pads, d, g, "generic"))
    finally:
        _core._set_isa(before)
    np.testing.assert_array_equal(out["avx512"][0], out["avx2"][0])
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    kw = dict(stride=s, padding=padding, dilation=d, groups=g)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["avx512"][0], ref.conv2d(x, w, b, **kw), **tol)
    np.testing.assert_array_equal(out["avx512"][1], ref.conv2d(xi, wi, None, **kw))


@pytest.mark.skipif(not _HAS_AVX512, reason="this CPU has no AVX-512")
@given(case=conv_cases(depthwise=False))
def test_avx512_random_geometry_bitwise_equals_avx2(case):
    """Any geometry (every stride, dilation and padding form): the forward under avx512
    equals avx2 bit for bit on real data (K here is at most 80, one K block)."""
    nd = case["nd"]
    x, w, b = _arrays(case, ints=False)
    before = pyconv.kernel_info()["isa"]
    out = {}
    try:
        for name in ("avx2", "avx512"):
            _core._set_isa(name)
            out[name] = _call(nd, "fwd", x, w, b, **_kw(case))
    finally:
        _core._set_isa(before)
    np.testing.assert_array_equal(out["avx512"], out["avx2"])


# Stride-1 grad input routed through the forward GEMM (mirrored padding, flipped and
# transposed weights): at least 8 input channels per group and n*H*W >= 256.
# (n, cin, cout, H, W, kH, kW, pads (top, bottom, left, right), dilation, groups)
DX_FORWARD_CASES = [
    (1, 8, 16, 16, 16, 3, 3, (1, 1, 1, 1), (1, 1), 1),
    (2, 9, 5, 13, 11, 3, 2, (0, 2, 1, 0), (1, 1), 1),
    (1, 16, 12, 20, 18, 5, 3, (2, 1, 0, 2), (2, 3), 2),
    (3, 10, 7, 1, 100, 1, 4, (0, 0, 3, 0), (1, 2), 1),      # 1D causal-like
    (1, 24, 6, 17, 19, 3, 3, (0, 0, 0, 0), (1, 1), 3),      # valid padding, groups
    (4, 8, 8, 9, 9, 7, 7, (6, 6, 6, 6), (1, 1), 1),         # padding = (k-1)*d: no mirror pad
]


@pytest.mark.parametrize("case", DX_FORWARD_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_grad_via_forward(case, dtype, isa):
    n, cin, cout, H, W, kH, kW, pads, d, g = case
    rng = np.random.default_rng(31)
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    kw = dict(stride=1, padding=padding, dilation=d, groups=g)
    xi = _ints(rng, (n, cin, H, W), dtype)
    wi = _ints(rng, (cout, cin // g, kH, kW), dtype)
    y = pyconv.conv2d(xi, wi, None, **kw)
    dyi = _ints(rng, y.shape, dtype)
    for a, r in zip(pyconv.conv2d_backward(dyi, xi, wi, **kw), ref.conv2d_backward(dyi, xi, wi, **kw)):
        np.testing.assert_array_equal(a, r)
    x, w = rng.standard_normal(xi.shape).astype(dtype), rng.standard_normal(wi.shape).astype(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    dx = pyconv.conv2d_backward(dy, x, w, output_mask=(True, False, False), **kw)[0]
    np.testing.assert_allclose(dx, ref.conv2d_backward(dy, x, w, **kw)[0], **tol)


@pytest.mark.skipif(not _HAS_AVX512, reason="this CPU has no AVX-512")
@pytest.mark.parametrize("case", AVX512_CASES)
def test_avx512_weight_grad_packer(case):
    """Grad weight under avx512 (its transposing unfold packer, float32) is exact on
    integer data and equals the avx2 result bit for bit where both sum the pixels in one
    K block (n*Ho*Wo <= 256)."""
    n, cin, cout, H, W, kH, kW, s, pads, d, g = case
    dtype = np.float32
    rng = np.random.default_rng(41)
    xi, wi = _ints(rng, (n, cin, H, W), dtype), _ints(rng, (cout, cin // g, kH, kW), dtype)
    y = _fwd_core(xi, wi, None, s, pads, d, g, "generic")
    dyi = _ints(rng, y.shape, dtype)
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    kw = dict(stride=s, padding=padding, dilation=d, groups=g)
    before = pyconv.kernel_info()["isa"]
    out = {}
    x, dy = rng.standard_normal(xi.shape).astype(dtype), rng.standard_normal(y.shape).astype(dtype)
    try:
        for name in ("avx2", "avx512"):
            _core._set_isa(name)
            out[name] = (_bwd_core(dyi, xi, wi, s, pads, d, g, "generic")[1],
                         _bwd_core(dy, x, wi, s, pads, d, g, "generic")[1])
    finally:
        _core._set_isa(before)
    np.testing.assert_array_equal(out["avx512"][0], ref.conv2d_backward(dyi, xi, wi, **kw)[1])
    np.testing.assert_allclose(out["avx512"][1], out["avx2"][1], rtol=1e-4, atol=1e-4)
    if y.shape[2] * y.shape[3] <= 256:
        np.testing.assert_array_equal(out["avx512"][1], out["avx2"][1])


# Tiny planes with a batch: the forward (and the stride-1 grad input run as a forward)
# puts several images side by side in one GEMM; with Wo below the register width the
# panels span output rows and are packed from a zero-padded copy of the batch.
TINY_PLANE_CASES = [
    # n, cin, cout, H, W, kH, kW, stride, pads (t, b, l, r), dilation, groups
    (32, 16, 32, 4, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),   # the digits net, layer 2
    (32, 1, 16, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),    # the digits net, layer 1
    (9, 8, 12, 5, 3, 3, 2, (1, 1), (2, 0, 1, 0), (1, 1), 1),     # asymmetric padding, odd plane
    (7, 6, 10, 7, 6, 3, 3, (2, 1), (1, 1, 1, 1), (1, 2), 2),     # stride, dilation, groups
    (40, 9, 8, 3, 3, 2, 2, (1, 1), (0, 1, 1, 0), (1, 1), 1),     # ragged last batch of images
    (5, 16, 16, 2, 2, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),    # 2x2 planes
    (32, 16, 16, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),   # 8-wide rows: two runs per panel
    (5, 4, 6, 3, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),      # Wo = 4, ragged last panel
    (37, 3, 5, 4, 4, 3, 3, (1, 1), (1, 1, 1, 1), (2, 2), 1),     # Wo = 4 with dilation, odd batch
]


@pytest.mark.parametrize("case", TINY_PLANE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_planes_batched(case, dtype, isa):
    n, cin, cout, H, W, kH, kW, s, pads, d, g = case
    rng = np.random.default_rng(53)
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    kw = dict(stride=s, padding=padding, dilation=d, groups=g)
    xi = _ints(rng, (n, cin, H, W), dtype)
    wi = _ints(rng, (cout, cin // g, kH, kW), dtype)
    bi = _ints(rng, (cout,), dtype)
    y = pyconv.conv2d(xi, wi, bi, **kw)
    np.testing.assert_array_equal(y, ref.conv2d(xi, wi, bi, **kw))
    dyi = _ints(rng, y.shape, dtype)
    for a, r in zip(pyconv.conv2d_backward(dyi, xi, wi, **kw), ref.conv2d_backward(dyi, xi, wi, **kw)):
        np.testing.assert_array_equal(a, r)
    x, w = rng.standard_normal(xi.shape).astype(dtype), rng.standard_normal(wi.shape).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    y = pyconv.conv2d(x, w, b, **kw)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, **kw), **tol)
    # Batching changes which columns share a GEMM, never a value's summation order (of the
    # generic lowering: the automatic choice may take Winograd for the batch and generic
    # for one image).
    yg = _fwd_core(x, w, b, s, pads, d, g, "generic")
    for i in (0, n - 1):
        np.testing.assert_array_equal(yg[i:i + 1], _fwd_core(x[i:i + 1], w, b, s, pads, d, g, "generic"))
    dy = rng.standard_normal(y.shape).astype(dtype)
    for a, r in zip(pyconv.conv2d_backward(dy, x, w, **kw), ref.conv2d_backward(dy, x, w, **kw)):
        np.testing.assert_allclose(a, r, **tol)


# ----------------------------------------------------------------------------- grad weight in image pieces


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,wshape,kw", [
    ((3, 6, 4100), (6, 6, 2), dict(padding="causal", dilation=8)),          # 1D WaveNet-style, 3 pieces
    ((9, 4, 64, 65), (6, 2, 3, 3), dict(padding=1, groups=2)),              # 9 images in 8 pieces, 2 groups
    ((2, 5, 64, 64), (7, 5, 1, 1), dict()),                                 # pointwise
])
def test_weight_grad_pieces_reproducible(dtype, shape, wshape, kw):
    """Large planes with few groups sum grad weight in fixed image pieces: bitwise
    identical for 1, 2 and 3 threads, close to the reference, exact on integer data."""
    rng = np.random.default_rng(17)
    nd = len(shape) - 2
    fwd = pyconv.conv1d if nd == 1 else pyconv.conv2d
    bwd = pyconv.conv1d_backward if nd == 1 else pyconv.conv2d_backward
    rbwd = ref.conv1d_backward if nd == 1 else ref.conv2d_backward
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    dy = rng.standard_normal(fwd(x, w, None, **kw).shape).astype(dtype)
    before = pyconv.get_num_threads()
    try:
        got = []
        for t in (1, 2, 3):
            pyconv.set_num_threads(t)
            got.append(bwd(dy, x, w, output_mask=(False, True, False), **kw)[1])
        pyconv.set_num_threads(2)
        xi, wi, dyi = _ints(rng, x.shape, dtype), _ints(rng, w.shape, dtype), _ints(rng, dy.shape, dtype)
        np.testing.assert_array_equal(bwd(dyi, xi, wi, output_mask=(False, True, False), **kw)[1],
                                      rbwd(dyi, xi, wi, **kw)[1])
    finally:
        pyconv.set_num_threads(before)
    for g in got[1:]:
        np.testing.assert_array_equal(got[0], g)
    want = rbwd(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **kw)[1]
    terms = int(np.prod(dy.shape[2:])) * shape[0]
    bound = rbwd(np.abs(dy).astype(np.float64), np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), **kw)[1]
    _assert_close(got[0], want.astype(dtype), bound, np.sqrt(terms))


# ---------------------------------------------------------------- public algorithm choice

def test_algorithm_keyword_selects_the_lowering():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 32, 12, 12)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 32, 12, 12)).astype(np.float32)
    kw = dict(padding=1)
    for alg in ("winograd", "generic"):
        y = pyconv.conv2d(x, w, algorithm=alg, **kw)
        np.testing.assert_array_equal(y, _core.conv2d_forward(x, w, None, 1, 1, 1, 1, 1, 1, 1, 1, 1, alg))
        g = pyconv.conv2d_backward(dy, x, w, algorithm=alg, **kw)
        c = _core.conv2d_backward(dy, x, w, 1, 1, 1, 1, 1, 1, 1, 1, 1, True, True, True, alg)
        for a, b in zip(g, c):
            np.testing.assert_array_equal(a, b)
    # the two lowerings sum in different orders: equal to tolerance, not bit for bit
    yr = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, **kw)
    bound = 32 * 9 * 2.0**-24 * ref.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, **kw)
    for alg in ("auto", "winograd", "generic"):
        err = np.abs(pyconv.conv2d(x, w, algorithm=alg, **kw) - yr)
        assert np.all(err <= 4 * bound + 1e-6), alg
    # integer-valued data: every lowering is exact
    xi, wi = np.round(x * 2), np.round(w * 2)
    want = ref.conv2d(xi, wi, None, **kw)
    for alg in ("auto", "winograd", "generic"):
        np.testing.assert_array_equal(pyconv.conv2d(xi, wi, algorithm=alg, **kw), want)
    # conv1d: a depthwise and a pointwise case through their named lowerings
    x1 = rng.standard_normal((2, 6, 20))
    np.testing.assert_array_equal(pyconv.conv1d(x1, np.ones((6, 1, 3)), groups=6, algorithm="depthwise"),
                                  pyconv.conv1d(x1, np.ones((6, 1, 3)), groups=6, algorithm="auto"))
    np.testing.assert_array_equal(pyconv.conv1d(x1, np.ones((4, 6, 1)), algorithm="pointwise"),
                                  pyconv.conv1d(x1, np.ones((4, 6, 1))))


def test_algorithm_keyword_errors():
    x = np.ones((1, 4, 6, 6))
    w = np.ones((4, 4, 5, 5))
    with pytest.raises(ValueError, match=r"algorithm='winograd' does not support.*3x3"):
        pyconv.conv2d(x, w, algorithm="winograd")
    with pytest.raises(ValueError, match=r"algorithm='pointwise' does not support"):
        pyconv.conv2d_backward(np.ones((1, 4, 2, 2)), x, w, algorithm="pointwise")
    with pytest.raises(ValueError, match=r"algorithm must be one of"):
        pyconv.conv2d(x, w, algorithm="fft")
    with pytest.raises(TypeError, match=r"algorithm must be a str"):
        pyconv.conv1d(np.ones((1, 4, 6)), np.ones((4, 4, 3)), algorithm=None)
    with pytest.raises(TypeError):
        pyconv.conv2d(x, w, None, 1, 0, 1, 1, "generic")  # keyword-only
