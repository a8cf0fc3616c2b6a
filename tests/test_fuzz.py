"""Fuzzing the public API with arbitrary, also invalid, parameters and arrays.

Hypothesis draws a call (zero sizes, negative and huge values, wrong ranks, wrong
dtypes, odd layouts, out-of-range and negative indices) in this process; a child
process (tests/_subproc.py) builds the arrays and makes the call, so a crash or a hang
fails that one example and cannot take the test run down. Allowed outcomes: a result
equal to pyconv.reference (inputs untouched), or ValueError / TypeError / IndexError /
OverflowError. A crash, a hang, SystemError, RuntimeError, any other exception or a
wrong result fails.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyconv
from _ops import available, op_cases
from _subproc import Worker

pytestmark = pytest.mark.filterwarnings("ignore")

_AVAILABLE = {c.name for c in op_cases() if available(c)}


def needs(op):
    return pytest.mark.skipif(op not in _AVAILABLE, reason=f"{op} not implemented on this branch")


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout=15)
    yield w
    w.close()


FUZZ_SETTINGS = settings(suppress_health_check=list(HealthCheck), deadline=None)

# ----------------------------------------------------------------------- strategies

WEIRD = [0, -1, -3, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63), 2**64]


def weird_or(strategy, p_weird=0.12):
    """Mostly `strategy`, sometimes a hostile integer."""
    return st.one_of(strategy, strategy, strategy, strategy, strategy, strategy,
                     st.sampled_from(WEIRD)) if p_weird else strategy


small_dim = st.integers(0, 6)
pos = st.integers(1, 4)
float_dtype = st.sampled_from(["float32", "float64"])
odd_dtype = st.sampled_from(["float16", "int64", "int32", "complex64", "bool", "uint8"])
layouts = st.sampled_from(["c", "c", "c", "fortran", "reversed", "strided", "misaligned", "readonly"])
fills = st.sampled_from(["int", "int", "int", "normal", "nan", "inf"])


@st.composite
def dtype_for(draw, base):
    """The call's dtype for one array: usually `base`, sometimes another one."""
    return draw(st.one_of(st.just(base), st.just(base), st.just(base), st.just(base), st.just(base),
                          st.just(base), st.just(base), st.just(base), float_dtype, odd_dtype))


@st.composite
def array(draw, shape, base, fill=None):
    # sometimes the wrong rank
    shape = list(shape)
    r = draw(st.integers(0, 19))
    if r == 0 and shape:
        shape = shape[:-1]
    elif r == 1:
        shape = shape + [draw(st.integers(1, 3))]
    return {"arr": {"shape": shape, "dtype": draw(dtype_for(base)), "layout": draw(layouts),
                    "fill": fill or draw(fills)}}


def py(v, as_tuple=False):
    return {"py": v, "tuple": as_tuple}


def not_array(draw):
    return py(draw(st.sampled_from([None, 3, 2.5, "x", [[1.0, 2.0]]])))


def pair_or_int(draw, lo=0, hi=3):
    return draw(st.one_of(weird_or(st.integers(lo, hi)),
                          st.tuples(weird_or(st.integers(lo, hi)), weird_or(st.integers(lo, hi))).map(list)))


@st.composite
def conv_call(draw, dims):
    base = draw(float_dtype)
    n, cin_g, cout_g, groups = draw(small_dim), draw(pos), draw(pos), draw(st.integers(1, 3))
    ks = [draw(pos) for _ in range(dims)]
    sp = [draw(st.integers(0, 9)) for _ in range(dims)]
    cin, cout = cin_g * groups, cout_g * groups
    if draw(st.integers(0, 9)) == 0:       # channel mismatch
        cin += 1
    x = draw(array([n, cin] + sp, base))
    # NaN/Inf only in the input: a non-finite weight (or grad_output, for grad weight)
    # meets the implicit zero padding, where the reference computes 0 * NaN = NaN and
    # the kernels skip the padded taps (documented in the README, Reliability)
    w = draw(array([cout, cin_g] + ks, base, fill=draw(st.sampled_from(["int", "normal"]))))
    b = draw(st.one_of(st.just(py(None)), array([cout], base, fill="int"), array([cout + 1], base, fill="int")))
    if draw(st.integers(0, 24)) == 0:
        x = not_array(draw)
    pad_forms = [weird_or(st.integers(0, 3)), st.sampled_from(["valid", "same", "causal", "bogus"])]
    if dims == 2:
        pad_forms.append(st.tuples(weird_or(st.integers(0, 3)), weird_or(st.integers(0, 3))).map(list))
        pad_forms.append(st.tuples(st.tuples(st.integers(0, 3), weird_or(st.integers(0, 3))),
                                   st.tuples(st.integers(0, 3), st.integers(0, 3))).map(lambda t: [list(t[0]), list(t[1])]))
    else:
        pad_forms.append(st.tuples(weird_or(st.integers(0, 3)), weird_or(st.integers(0, 3))).map(list))
    padding = draw(st.one_of(*pad_forms))
    stride = draw(weird_or(st.integers(1, 3)))
    dilation = draw(weird_or(st.integers(1, 3)))
    g = draw(weird_or(st.just(groups), p_weird=0.2))
    return base, x, w, b, py(stride), py(padding, True), py(dilation), py(g), sp, ks


@st.composite
def conv_fwd(draw, dims):
    _, x, w, b, stride, padding, dilation, groups, _, _ = draw(conv_call(dims))
    return dict(input=x, weight=w, bias=b, stride=stride, padding=padding, dilation=dilation, groups=groups)


@st.composite
def conv_bwd(draw, dims):
    base, x, w, _, stride, padding, dilation, groups, sp, ks = draw(conv_call(dims))
    # grad_output: usually the right shape (computed with the shape layer), else random
    n = x["arr"]["shape"][0] if "arr" in x and x["arr"]["shape"] else 1
    cout = w["arr"]["shape"][0] if "arr" in w and w["arr"]["shape"] else 1
    try:
        pads = pyconv.shapes.resolve_conv_padding(padding["py"], sp, ks, [1] * dims, [1] * dims)
        out = [pyconv.conv_output_size(sp[i], ks[i], stride["py"], tuple(pads[i]), dilation["py"])
               for i in range(dims)]
        if any(o > 64 for o in out):
            raise ValueError
    except Exception:
        out = [draw(st.integers(0, 9)) for _ in range(dims)]
    gy = draw(array([n, cout] + out, base, fill=draw(st.sampled_from(["int", "normal"]))))
    mask = draw(st.sampled_from([[True, True, True], [True, False, False], [False, True, True],
                                 [False, False, False]]))
    return dict(grad_output=gy, input=x, weight=w, stride=stride, padding=padding, dilation=dilation,
                groups=groups, output_mask=py(mask, True))


@st.composite
def pool_params(draw, dims):
    k = draw(weird_or(st.integers(1, 4)))
    s = draw(st.one_of(st.just(None), weird_or(st.integers(1, 3))))
    p = draw(weird_or(st.integers(0, 2)))
    d = draw(weird_or(st.integers(1, 2)))
    return k, s, p, d


@st.composite
def pool_fwd(draw, dims):
    base = draw(float_dtype)
    shape = [draw(small_dim), draw(small_dim)] + [draw(st.integers(0, 11)) for _ in range(dims)]
    x = draw(array(shape, base))
    k, s, p, d = draw(pool_params(dims))
    return dict(input=x, kernel_size=py(k), stride=py(s), padding=py(p), dilation=py(d),
                ceil_mode=py(draw(st.booleans())), return_indices=py(draw(st.booleans())))


def _pool_out(shape, k, s, p, dims):
    try:
        return list(pyconv.pool_output_size(tuple(shape[-dims:]), k, s, p))
    except Exception:
        return None


@st.composite
def indices_and_values(draw, dims, what):
    """(input_shape, values array spec, indices array spec, k, s, p) for backward/unpool."""
    base = draw(float_dtype)
    nc = [draw(st.integers(0, 3)), draw(st.integers(0, 4))]
    sp = [draw(st.integers(1, 10)) for _ in range(dims)]
    k = draw(weird_or(st.integers(1, 3)))
    s = draw(st.one_of(st.just(None), weird_or(st.integers(1, 3))))
    p = draw(weird_or(st.integers(0, 1)))
    out = _pool_out(nc + sp, k, s, p, dims) or [draw(st.integers(0, 5)) for _ in range(dims)]
    if any(o > 64 for o in out):
        out = [draw(st.integers(0, 5)) for _ in range(dims)]
    plane = int(np.prod(sp))
    if what == "unpool":
        ks = k if isinstance(k, int) and 0 < k < 64 else 2
        ss = ks if s is None else s
        ss = ss if isinstance(ss, int) and 0 < ss < 64 else ks
        pp = p if isinstance(p, int) and 0 <= p < 64 else 0
        default = [(o - 1) * ss - 2 * pp + ks for o in out]
        plane = max(1, int(np.prod([max(v, 0) for v in default])))
    lo, hi = draw(st.sampled_from([(0, plane), (0, plane), (0, plane), (-2, plane), (0, plane + 2),
                                   (2**62, 2**62 + 5), (-(2**63), -(2**63) + 3)]))
    idx_dtype = draw(st.sampled_from(["int64"] * 8 + ["int32", "float64", "uint64"]))
    idx_shape = nc + out
    if draw(st.integers(0, 12)) == 0:
        idx_shape = idx_shape[:-1] + [idx_shape[-1] + 1]
    idx = {"arr": {"shape": idx_shape, "dtype": idx_dtype, "fill": "index", "lo": lo, "hi": hi,
                   "layout": draw(layouts)}}
    vals = draw(array(nc + out, base, fill="normal"))
    return nc + sp, vals, idx, k, s, p, sp


@st.composite
def pool_bwd(draw, dims):
    in_shape, vals, idx, _, _, _, _ = draw(indices_and_values(dims, "bwd"))
    r = draw(st.integers(0, 9))
    if r == 0:
        in_shape = in_shape[:-1]
    elif r == 1:
        in_shape = in_shape[:-1] + [draw(st.sampled_from([0, -1, 2**62, 2**63 - 1]))]
    return dict(grad_output=vals, indices=idx, input_shape=py(in_shape, True))


@st.composite
def unpool(draw, dims):
    _, vals, idx, k, s, p, sp = draw(indices_and_values(dims, "unpool"))
    output_size = draw(st.one_of(st.just(None), st.just(sp),
                                 st.lists(weird_or(st.integers(0, 12)), min_size=dims, max_size=dims)))
    return dict(input=vals, indices=idx, kernel_size=py(k), stride=py(s), padding=py(p),
                output_size=py(output_size, True))


@st.composite
def bn_fwd(draw):
    base = draw(float_dtype)
    rank = draw(st.sampled_from([2, 3, 4, 4, 1, 5]))
    shape = [draw(st.integers(0, 5)) for _ in range(rank)]
    c = shape[1] if rank >= 2 else 1
    x = draw(array(shape, base, fill=draw(st.sampled_from(["normal", "normal", "int", "nan"]))))

    def vec(fill="normal"):
        return draw(st.one_of(st.just(py(None)), array([c], base, fill=fill), array([c + 1], base, fill=fill)))

    rv = vec()
    if "arr" in rv:
        rv["arr"]["fill"] = "index"   # non-negative variances
        rv["arr"]["lo"], rv["arr"]["hi"] = 0, 4
    training = draw(st.booleans())
    momentum = draw(st.sampled_from([0.1, 0.0, 1.0, -0.5, float("nan"), float("inf")]))
    eps = draw(st.sampled_from([1e-5, 0.0, 1e-3, -1e-5, float("nan"), float("inf")]))
    return dict(input=x, running_mean=vec(), running_var=rv, weight=vec(), bias=vec(),
                training=py(training), momentum=py(momentum), eps=py(eps))


@st.composite
def bn_bwd(draw):
    f = draw(bn_fwd())
    shape = f["input"]["arr"]["shape"] if "arr" in f["input"] else [2, 2]
    gy = draw(array(shape, draw(float_dtype), fill="normal"))
    return dict(grad_output=gy, input=f["input"], weight=f["weight"], running_mean=f["running_mean"],
                running_var=f["running_var"], training=f["training"], eps=f["eps"])


@st.composite
def matmul_call(draw):
    base = draw(float_dtype)
    m, k, n = draw(st.integers(0, 20)), draw(st.integers(0, 20)), draw(st.integers(0, 20))
    k2 = k if draw(st.integers(0, 7)) else k + 1
    return dict(a=draw(array([m, k], base)), b=draw(array([k2, n], base)))


# --------------------------------------------------------------------------- runner

_counter = [0]


def fuzz_once(worker, op, args, seed):
    _counter[0] += 1
    o = worker.run(f"{op}#{_counter[0]}", call="_ops:run_fuzz",
                   args={"op": op, "args": args, "seed": seed})
    if o.status == "ok" or o.allowed_error():
        return o
    raise AssertionError(f"pyconv.{op}({args}) -> {o.describe()}")


seeds = st.integers(0, 2**31 - 1)


@needs("conv2d")
@FUZZ_SETTINGS
@given(args=conv_fwd(2), seed=seeds)
def test_fuzz_conv2d(worker, args, seed):
    fuzz_once(worker, "conv2d", args, seed)


@needs("conv1d")
@FUZZ_SETTINGS
@given(args=conv_fwd(1), seed=seeds)
def test_fuzz_conv1d(worker, args, seed):
    fuzz_once(worker, "conv1d", args, seed)


@needs("conv2d_backward")
@FUZZ_SETTINGS
@given(args=conv_bwd(2), seed=seeds)
def test_fuzz_conv2d_backward(worker, args, seed):
    fuzz_once(worker, "conv2d_backward", args, seed)


@needs("conv1d_backward")
@FUZZ_SETTINGS
@given(args=conv_bwd(1), seed=seeds)
def test_fuzz_conv1d_backward(worker, args, seed):
    fuzz_once(worker, "conv1d_backward", args, seed)


@needs("max_pool2d")
@FUZZ_SETTINGS
@given(args=pool_fwd(2), seed=seeds)
def test_fuzz_max_pool2d(worker, args, seed):
    fuzz_once(worker, "max_pool2d", args, seed)


@needs("max_pool1d")
@FUZZ_SETTINGS
@given(args=pool_fwd(1), seed=seeds)
def test_fuzz_max_pool1d(worker, args, seed):
    fuzz_once(worker, "max_pool1d", args, seed)


@needs("max_pool2d_backward")
@FUZZ_SETTINGS
@given(args=pool_bwd(2), seed=seeds)
def test_fuzz_max_pool2d_backward(worker, args, seed):
    fuzz_once(worker, "max_pool2d_backward", args, seed)


@needs("max_pool1d_backward")
@FUZZ_SETTINGS
@given(args=pool_bwd(1), seed=seeds)
def test_fuzz_max_pool1d_backward(worker, args, seed):
    fuzz_once(worker, "max_pool1d_backward", args, seed)


@needs("max_unpool2d")
@FUZZ_SETTINGS
@given(args=unpool(2), seed=seeds)
def test_fuzz_max_unpool2d(worker, args, seed):
    fuzz_once(worker, "max_unpool2d", args, seed)


@needs("max_unpool1d")
@FUZZ_SETTINGS
@given(args=unpool(1), seed=seeds)
def test_fuzz_max_unpool1d(worker, args, seed):
    fuzz_once(worker, "max_unpool1d", args, seed)


@needs("batch_norm_eval")
@FUZZ_SETTINGS
@given(args=bn_fwd(), seed=seeds)
def test_fuzz_batch_norm(worker, args, seed):
    fuzz_once(worker, "batch_norm", args, seed)


@needs("batch_norm_backward_train")
@FUZZ_SETTINGS
@given(args=bn_bwd(), seed=seeds)
def test_fuzz_batch_norm_backward(worker, args, seed):
    fuzz_once(worker, "batch_norm_backward", args, seed)


@needs("matmul")
@FUZZ_SETTINGS
@given(args=matmul_call(), seed=seeds)
def test_fuzz_matmul(worker, args, seed):
    fuzz_once(worker, "matmul", args, seed)


def test_fuzz_runner_detects_crash_and_hang():
    """The runner itself: a segfault and a hang are reported as such (and do not stop
    the next case), a wrong-type error is not mistaken for an allowed one."""
    import os

    env = {}
    if os.environ.get("PYCONV_SANITIZED"):
        # the deliberate segfault must not count as a sanitizer report of pyconv
        env["ASAN_OPTIONS"] = "detect_leaks=0:handle_segv=0"
    w = Worker(timeout=3, env=env)
    try:
        outs = w.run_many([("seg", "import ctypes; ctypes.string_at(0)"),
                           ("hang", "import time; time.sleep(60)"),
                           ("rt", "raise RuntimeError('x')"),
                           ("sys", "raise SystemError('x')"),
                           ("ve", "raise ValueError('x')"),
                           ("ok", "result = 41 + 1")])
    finally:
        w.close()
    st_ = {o.id: o for o in outs}
    assert st_["seg"].status == "crash" and "signal 11" in st_["seg"].detail
    assert st_["hang"].status == "hang"
    assert not st_["rt"].allowed_error() and not st_["sys"].allowed_error()
    assert st_["ve"].allowed_error()
    assert st_["ok"].status == "ok" and st_["ok"].value == 42
