"""Shared pieces of the reliability tests: arrays in every layout users pass, one
canonical valid call per public op, and the fuzz-case runner that child processes
execute (see _subproc.py).
"""
from __future__ import annotations

import math

import numpy as np

import pyconv
import pyconv.reference as ref

ALLOWED = (ValueError, TypeError, IndexError, OverflowError)

# ----------------------------------------------------------------------------- layouts

LAYOUTS = ("fortran", "reversed", "strided", "misaligned", "readonly")


def relayout(a: np.ndarray, layout: str) -> np.ndarray:
    """An array with a's values and dtype in another memory layout."""
    a = np.asarray(a)
    if layout == "c":
        return np.ascontiguousarray(a).copy()
    if layout == "fortran":
        return np.asfortranarray(a).copy(order="F")
    if layout == "reversed":
        rev = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[rev])[rev]
    if layout == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "misaligned":
        buf = bytearray(a.nbytes + a.itemsize + 1)
        v = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
        v[...] = a
        assert a.itemsize == 1 or not v.flags.aligned or a.size == 0
        return v
    if layout == "readonly":
        b = np.array(a, copy=True)
        b.setflags(write=False)
        return b
    if layout == "broadcast":
        # zero stride along axis 0: values constant along it (callers compare against
        # np.ascontiguousarray of the same broadcast view)
        return np.broadcast_to(a[:1], a.shape)
    raise ValueError(layout)


# ------------------------------------------------------- drawn convolution cases


def conv_case_arrays(c, kernel, ints):
    """x, w, bias (or None) and the generator of a drawn convolution case c (keys n, cin,
    cout, H, W, groups, dtype, bias, seed): integer values in [-3, 3] or standard normal."""
    rng = np.random.default_rng(c["seed"])
    xs, ws = (c["n"], c["cin"], c["H"], c["W"]), (c["cout"], c["cin"] // c["groups"]) + tuple(kernel)
    if ints:
        draw = lambda s: rng.integers(-3, 4, size=s).astype(c["dtype"])
    else:
        draw = lambda s: rng.standard_normal(s).astype(c["dtype"])
    return draw(xs), draw(ws), (draw((c["cout"],)) if c["bias"] else None), rng


# ------------------------------------------------------------------ canonical op calls


def _ints(rng, shape, dtype, lo=-4, hi=5):
    """Integer-valued floats: conv, pool and unpool results are then exact."""
    return rng.integers(lo, hi, size=shape).astype(dtype)


class OpCase:
    """One valid call of a public op. make(dtype) builds fresh keyword arguments (the
    same values each time); call(**kw) returns a tuple of arrays that must be bitwise
    reproducible (outputs, plus running statistics that the call updates)."""

    def __init__(self, name, make, call, mutates=()):
        self.name = name
        self.make = make
        self.call = call
        self.mutates = mutates   # argument names the op may write to

    def __repr__(self):
        return self.name


def _flat(out):
    if isinstance(out, tuple):
        return tuple(o for o in out)
    return (out,)


def op_cases():
    cases = []

    # conv2d: grouped, strided, dilated, asymmetric padding, bias
    c2 = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)

    def make_conv2d(dtype):
        r = np.random.default_rng(1)
        return dict(input=_ints(r, (2, 4, 9, 11), dtype), weight=_ints(r, (6, 2, 3, 3), dtype),
                    bias=_ints(r, (6,), dtype))

    cases.append(OpCase("conv2d", make_conv2d, lambda **kw: _flat(pyconv.conv2d(**kw, **c2))))

    def make_conv2d_bwd(dtype):
        kw = make_conv2d(dtype)
        y = ref.conv2d(kw["input"], kw["weight"], None, **c2)
        r = np.random.default_rng(2)
        return dict(grad_output=_ints(r, y.shape, dtype), input=kw["input"], weight=kw["weight"])

    cases.append(OpCase("conv2d_backward", make_conv2d_bwd,
                        lambda **kw: _flat(pyconv.conv2d_backward(**kw, **c2))))

    c1 = dict(stride=1, padding="causal", dilation=2, groups=1)

    def make_conv1d(dtype):
        r = np.random.default_rng(3)
        return dict(input=_ints(r, (2, 3, 17), dtype), weight=_ints(r, (5, 3, 3), dtype),
                    bias=_ints(r, (5,), dtype))

    cases.append(OpCase("conv1d", make_conv1d, lambda **kw: _flat(pyconv.conv1d(**kw, **c1))))

    def make_conv1d_bwd(dtype):
        kw = make_conv1d(dtype)
        r = np.random.default_rng(4)
        return dict(grad_output=_ints(r, (2, 5, 17), dtype), input=kw["input"], weight=kw["weight"])

    cases.append(OpCase("conv1d_backward", make_conv1d_bwd,
                        lambda **kw: _flat(pyconv.conv1d_backward(**kw, **c1))))

    # depthwise conv (its own kernel path)
    def make_dw(dtype):
        r = np.random.default_rng(5)
        return dict(input=_ints(r, (2, 6, 10, 13), dtype), weight=_ints(r, (6, 1, 3, 3), dtype),
                    bias=_ints(r, (6,), dtype))

    cases.append(OpCase("conv2d_depthwise", make_dw,
                        lambda **kw: _flat(pyconv.conv2d(**kw, padding=1, groups=6))))

    # pooling
    p2 = dict(kernel_size=3, stride=2, padding=1)

    def make_pool2d(dtype):
        r = np.random.default_rng(6)
        return dict(input=r.standard_normal((2, 3, 10, 13)).astype(dtype))

    cases.append(OpCase("max_pool2d", make_pool2d,
                        lambda **kw: _flat(pyconv.max_pool2d(**kw, **p2, return_indices=True))))

    def make_pool1d(dtype):
        r = np.random.default_rng(7)
        return dict(input=r.standard_normal((2, 3, 17)).astype(dtype))

    cases.append(OpCase("max_pool1d", make_pool1d,
                        lambda **kw: _flat(pyconv.max_pool1d(**kw, kernel_size=2, ceil_mode=True,
                                                             return_indices=True))))

    def make_pool2d_bwd(dtype):
        x = make_pool2d(dtype)["input"]
        _, idx = ref.max_pool2d(x, **p2, return_indices=True)
        r = np.random.default_rng(8)
        return dict(grad_output=r.standard_normal(idx.shape).astype(dtype), indices=idx)

    cases.append(OpCase("max_pool2d_backward", make_pool2d_bwd,
                        lambda **kw: _flat(pyconv.max_pool2d_backward(**kw, input_shape=(2, 3, 10, 13)))))

    def make_pool1d_bwd(dtype):
        x = make_pool1d(dtype)["input"]
        _, idx = ref.max_pool1d(x, kernel_size=2, ceil_mode=True, return_indices=True)
        r = np.random.default_rng(9)
        return dict(grad_output=r.standard_normal(idx.shape).astype(dtype), indices=idx)

    cases.append(OpCase("max_pool1d_backward", make_pool1d_bwd,
                        lambda **kw: _flat(pyconv.max_pool1d_backward(**kw, input_shape=(2, 3, 17)))))

    def make_unpool2d(dtype):
        x = make_pool2d(dtype)["input"]
        y, idx = ref.max_pool2d(x, **p2, return_indices=True)
        return dict(input=y, indices=idx)

    cases.append(OpCase("max_unpool2d", make_unpool2d,
                        lambda **kw: _flat(pyconv.max_unpool2d(**kw, **p2, output_size=(10, 13)))))

    def make_unpool1d(dtype):
        x = make_pool1d(dtype)["input"]
        y, idx = ref.max_pool1d(x, kernel_size=2, return_indices=True)
        return dict(input=y, indices=idx)

    cases.append(OpCase("max_unpool1d", make_unpool1d,
                        lambda **kw: _flat(pyconv.max_unpool1d(**kw, kernel_size=2, output_size=(17,)))))

    # batch norm
    def make_bn(dtype):
        r = np.random.default_rng(10)
        c = 5
        return dict(input=(r.standard_normal((4, c, 6, 7)) * 3 + 1).astype(dtype),
                    running_mean=r.standard_normal(c).astype(dtype),
                    running_var=(r.random(c) + 0.5).astype(dtype),
                    weight=r.standard_normal(c).astype(dtype), bias=r.standard_normal(c).astype(dtype))

    def bn_call(training):
        def call(**kw):
            out = pyconv.batch_norm(**kw, training=training, momentum=0.2, eps=1e-3)
            return (out, np.array(kw["running_mean"]), np.array(kw["running_var"]))
        return call

    cases.append(OpCase("batch_norm_eval", make_bn, bn_call(False)))
    cases.append(OpCase("batch_norm_train", make_bn, bn_call(True),
                        mutates=("running_mean", "running_var")))

    def make_bn_bwd(dtype):
        kw = make_bn(dtype)
        r = np.random.default_rng(11)
        return dict(grad_output=r.standard_normal(kw["input"].shape).astype(dtype), input=kw["input"],
                    weight=kw["weight"], running_mean=kw["running_mean"], running_var=kw["running_var"])

    cases.append(OpCase("batch_norm_backward_train", make_bn_bwd,
                        lambda **kw: _flat(pyconv.batch_norm_backward(**kw, training=True, eps=1e-3))))
    cases.append(OpCase("batch_norm_backward_eval", make_bn_bwd,
                        lambda **kw: _flat(pyconv.batch_norm_backward(**kw, training=False, eps=1e-3))))

    def make_bn2(dtype):
        r = np.random.default_rng(12)
        return dict(input=r.standard_normal((6, 7)).astype(dtype), running_mean=None, running_var=None)

    cases.append(OpCase("batch_norm_2d_train", make_bn2,
                        lambda **kw: _flat(pyconv.batch_norm(**kw, training=True))))

    if hasattr(pyconv._core, "matmul"):
        def make_mm(dtype):
            r = np.random.default_rng(13)
            return dict(a=_ints(r, (7, 13), dtype), b=_ints(r, (13, 9), dtype))

        cases.append(OpCase("matmul", make_mm, lambda **kw: _flat(pyconv._core.matmul(kw["a"], kw["b"]))))
    return cases


def available(case: OpCase) -> bool:
    """False while the op is still a stub on this branch."""
    try:
        case.call(**case.make(np.float64))
        return True
    except NotImplementedError:
        return False
    except AttributeError:
        return False


def same_bits(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------- fuzz runner


def build_value(v, rng):
    """Decode one fuzz argument: {'py': value} or {'arr': spec}."""
    if "py" in v:
        val = v["py"]
        if v.get("tuple") and isinstance(val, list):
            val = tuple(tuple(x) if isinstance(x, list) else x for x in val)
        return val
    s = v["arr"]
    shape = tuple(s["shape"])
    dt = np.dtype(s["dtype"])
    fill = s.get("fill", "int")
    size = int(np.prod(shape)) if shape else 1
    if fill == "index":
        data = rng.integers(s.get("lo", 0), max(s.get("hi", 1), s.get("lo", 0) + 1), size=size)
    elif fill == "normal":
        data = rng.standard_normal(size) * s.get("scale", 1.0)
    else:
        data = rng.integers(-4, 5, size=size).astype(np.float64)
        if fill in ("nan", "inf") and size:
            k = rng.integers(0, size, size=max(1, size // 7))
            data[k] = np.nan if fill == "nan" else np.inf * rng.choice([-1, 1], size=k.size)
    if dt.kind in "iub":
        data = np.nan_to_num(np.asarray(data, dtype=np.float64), nan=0, posinf=0, neginf=0)
    arr = np.asarray(data).astype(dt).reshape(shape)
    return relayout(arr, s.get("layout", "c"))


def _tolerance(dtype):
    return (1e-4, 1e-4) if dtype == np.float32 else (1e-9, 1e-9)


def _compare(name, got, want):
    if want is None or got is None:
        assert got is None and want is None, f"{name}: got {type(got)}, reference {type(want)}"
        return
    assert isinstance(got, np.ndarray), f"{name}: result is {type(got).__name__}"
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, reference {want.dtype}"
    assert got.flags.c_contiguous, f"{name}: result is not C-contiguous"
    if got.dtype.kind in "iu":
        assert np.array_equal(got, want), f"{name}: indices differ from the reference"
        return
    rtol, atol = _tolerance(got.dtype)
    scale = float(np.nanmax(np.abs(want[np.isfinite(want)]))) if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, scale), equal_nan=True,
                               err_msg=f"{name}: differs from the reference")


def _is_huge(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return abs(v) >= 2**20
    if isinstance(v, (list, tuple)):
        return any(_is_huge(x) for x in v)
    return False


def run_fuzz(op, args, seed=0, check=True):
    """Child side of a fuzz case: build the arguments, call pyconv.<op>, and when it
    succeeds compare with pyconv.reference.<op>. Returns a short status string.
    A MemoryError counts as a rejection only when a parameter was huge (a valid but
    enormous request); an allowed exception is re-raised for the parent to classify."""
    rng = np.random.default_rng(seed)
    kwargs = {k: build_value(v, rng) for k, v in args.items()}
    huge = any(_is_huge(v.get("py")) for v in args.values() if "py" in v)
    saved = {k: np.array(v, copy=True) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    target = pyconv._core.matmul if op == "matmul" else getattr(pyconv, op)
    try:
        got = target(**kwargs)
    except MemoryError as e:
        if huge:
            raise OverflowError(f"(MemoryError on a huge request: {e})")
        raise
    training = bool(kwargs.get("training", False)) and op == "batch_norm"
    mutable = ("running_mean", "running_var") if training else ()
    for k, before in saved.items():
        if k in mutable:
            continue
        assert same_bits(kwargs[k], before), f"pyconv.{op} modified its argument {k}"
    gots = got if isinstance(got, tuple) else (got,)
    for g in gots:
        assert g is None or (isinstance(g, np.ndarray) and g.flags.c_contiguous), \
            f"pyconv.{op} returned {type(g).__name__} (not a C-contiguous array)"
    if not check or huge:
        # the reference walks every tap of a 2**31-wide window: compare only sane sizes
        return "ok"
    # The reference on fresh contiguous copies of the original arguments.
    rkw = {k: (np.array(saved[k]) if k in saved else v) for k, v in kwargs.items()}
    if op == "matmul":
        want = np.matmul(rkw["a"].astype(np.float64), rkw["b"].astype(np.float64)).astype(rkw["a"].dtype)
    else:
        empty = any(isinstance(v, np.ndarray) and v.size == 0 for v in rkw.values())
        try:
            want = getattr(ref, op)(**rkw)
        except Exception as e:  # noqa: BLE001
            if empty:
                # the NumPy reference is not hardened for zero-size arrays (e.g. C = 0)
                return f"ok (reference cannot handle empty arrays: {type(e).__name__})"
            if not isinstance(e, ALLOWED):
                raise
            raise AssertionError(f"pyconv.{op} accepted arguments the reference rejects: "
                                 f"{type(e).__name__}: {e}")
    wants = want if isinstance(want, tuple) else (want,)
    assert len(gots) == len(wants), f"{op}: {len(gots)} results, reference {len(wants)}"
    for i, (g, w) in enumerate(zip(gots, wants)):
        _compare(f"{op}[{i}]", g, w)
    for k in mutable:
        if kwargs.get(k) is not None:
            _compare(f"{op} updated {k}", np.ascontiguousarray(kwargs[k]), rkw[k])
    return "ok"


def finite_max(a):
    a = np.asarray(a, dtype=np.float64)
    f = a[np.isfinite(a)]
    return float(np.max(np.abs(f))) if f.size else 0.0


def isclose_bound(got, want, bound):
    return bool(np.all(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) <= bound))


__all__ = ["LAYOUTS", "relayout", "op_cases", "available", "same_bits", "run_fuzz", "math"]


# ------------------------------------------------- child-side resource checks


def _bad_calls():
    """Calls that raise after their arguments were converted (the paths where a
    reference could leak): (callable, args) pairs on small arrays."""
    f32 = np.float32
    x4 = np.ones((2, 3, 8, 8), f32)
    w4 = np.ones((4, 3, 3, 3), f32)
    xp = np.arange(2 * 3 * 6 * 6, dtype=f32).reshape(2, 3, 6, 6)
    calls = []
    names = {c.name for c in op_cases() if available(c)}
    if "conv2d" in names:
        calls += [(pyconv.conv2d, (x4, np.ones((4, 2, 3, 3), f32))),
                  (pyconv.conv2d, (x4, w4, np.ones(5, f32))),
                  (pyconv.conv2d, (x4, w4.astype(np.float64))),
                  (pyconv.conv2d_backward, (np.ones((2, 4, 5, 5), f32), x4, w4))]
    if "max_pool2d" in names:
        y, idx = pyconv.max_pool2d(xp, 2, return_indices=True)
        bad = idx.copy()
        bad[0, 0, 0, 0] = 10**6
        calls += [(pyconv.max_pool2d, (xp, 7)),
                  (pyconv.max_pool2d_backward, (y, bad, xp.shape)),
                  (pyconv.max_unpool2d, (y, bad, 2)),
                  (pyconv.max_pool2d_backward, (y, idx.astype(np.int32), xp.shape))]
    if "batch_norm_train" in names:
        ro = np.zeros(3, f32)
        ro.setflags(write=False)
        calls += [(pyconv.batch_norm, (xp, np.zeros(4, f32), np.ones(3, f32))),
                  (lambda *a: pyconv.batch_norm(*a, training=True), (xp, ro, np.ones(3, f32))),
                  (pyconv.batch_norm_backward, (xp[:, :, :2], xp))]
    if hasattr(pyconv._core, "matmul"):
        calls += [(pyconv._core.matmul, (np.ones((2, 3), f32), np.ones((4, 2), f32))),
                  (pyconv._core.matmul, (np.ones((2, 3), f32), np.ones((3, 2), np.float64)))]
    return calls


def refcount_check(repeats=50):
    """sys.getrefcount of every argument before and after calls that raise; returns the
    list of (call number, argument number, before, after) that changed."""
    import sys

    changed = []
    for n, (fn, args) in enumerate(_bad_calls()):
        before = [sys.getrefcount(a) for a in args]
        for _ in range(repeats):
            try:
                fn(*args)
            except ALLOWED:
                pass
            else:
                changed.append((n, -1, "did not raise", ""))
        after = [sys.getrefcount(a) for a in args]
        for i, (b, a) in enumerate(zip(before, after)):
            if a != b:
                changed.append((n, i, b, a))
    # and after successful calls (results dropped)
    good = 0
    for c in op_cases():
        if not available(c):
            continue
        kw = c.make(np.float32)
        keys = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
        before = [sys.getrefcount(kw[k]) for k in keys]
        for _ in range(repeats):
            c.call(**kw)
        after = [sys.getrefcount(kw[k]) for k in keys]
        good += 1
        for k, b, a in zip(keys, before, after):
            if a != b:
                changed.append((c.name, k, b, a))
    return {"calls": len(_bad_calls()) + good, "changed": changed}


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def rss_growth(calls=10000):
    """RSS after a warm-up and after `calls` more calls of every op (good and bad
    arguments mixed); returns both in bytes."""
    cases = [c for c in op_cases() if available(c)]
    kwargs = [(c, c.make(np.float32)) for c in cases if not c.mutates]
    bad = _bad_calls()

    def one(i):
        c, kw = kwargs[i % len(kwargs)]
        c.call(**kw)
        if bad and i % 3 == 0:
            fn, args = bad[i % len(bad)]
            try:
                fn(*args)
            except ALLOWED:
                pass

    if not kwargs:
        return {"before": 0, "after": 0, "calls": 0}
    # one thread: the point is memory, and tiny calls pay OpenMP wake-ups on a busy machine
    pyconv.set_num_threads(1)
    for i in range(1000):
        one(i)
    before = _rss_bytes()
    for i in range(calls):
        one(i)
    after = _rss_bytes()
    return {"before": before, "after": after, "calls": calls}
