"""Coverage-guided fuzzing of pyconv's public API and its C++ entry points (atheris).

Each input is decoded into one call: which op, the parameters (small, zero, negative or
huge integers, odd padding forms), the arrays (shapes with zero and odd sizes, float32 /
float64 / a wrong dtype, contiguous or reversed / strided / Fortran / misaligned /
read-only layouts) and, for the index-taking ops, indices that may be out of range or
negative. Allowed outcomes: a result, or ValueError / TypeError / IndexError /
OverflowError (MemoryError only for a request with a huge parameter). Anything else -
a crash, a sanitizer report, SystemError, RuntimeError, another exception - is a
finding: atheris stops and writes the input to crash-<hash>.

Run (see fuzz/README.md):
    pip install atheris
    PYTHONPATH=. python fuzz/atheris_harness.py -max_total_time=3600 fuzz/corpus
"""
from __future__ import annotations

import sys

import numpy as np

try:
    import atheris
except ImportError:  # pragma: no cover - documented dependency of the campaign only
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        import pyconv
        from pyconv import _core
else:
    import pyconv
    from pyconv import _core

ALLOWED = (ValueError, TypeError, IndexError, OverflowError)
HUGE = [0, -1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63), 2**64]
DTYPES = [np.float32, np.float64, np.float32, np.float64, np.float16, np.int64]
LAYOUTS = ["c", "c", "c", "reversed", "strided", "fortran", "misaligned", "readonly"]


class Source:
    """Draws typed values from the fuzzer's bytes (atheris.FuzzedDataProvider, or a
    plain byte reader so the harness also runs without atheris, e.g. to replay)."""

    def __init__(self, data: bytes):
        self.fdp = atheris.FuzzedDataProvider(data) if atheris is not None else None
        self.data = data
        self.pos = 0

    def int(self, lo, hi):
        if self.fdp is not None:
            return self.fdp.ConsumeIntInRange(lo, hi)
        if self.pos >= len(self.data):
            return lo
        b = self.data[self.pos]
        self.pos += 1
        return lo + b % (hi - lo + 1)

    def pick(self, seq):
        return seq[self.int(0, len(seq) - 1)]

    def param(self, lo, hi):
        """Usually in [lo, hi], sometimes hostile."""
        return self.pick(HUGE) if self.int(0, 7) == 0 else self.int(lo, hi)


def make_array(src: Source, shape, dtype=None, index_hi=None):
    if src.int(0, 15) == 0 and shape:                 # wrong rank
        shape = shape[:-1] if src.int(0, 1) else shape + [2]
    if index_hi is not None:
        dt = np.int64 if src.int(0, 7) else src.pick([np.int32, np.float64])
        lo = -2 if src.int(0, 9) == 0 else 0
        hi = index_hi + (3 if src.int(0, 9) == 0 else 0)
        a = np.random.default_rng(src.int(0, 255)).integers(lo, max(hi, lo + 1), size=shape).astype(dt)
    else:
        dt = dtype if src.int(0, 9) else src.pick(DTYPES)
        rng = np.random.default_rng(src.int(0, 255))
        a = rng.integers(-4, 5, size=shape).astype(np.float64)
        if a.size and src.int(0, 9) == 0:
            a.flat[src.int(0, a.size - 1)] = src.pick([np.nan, np.inf, -np.inf])
        a = a.astype(dt)
    layout = src.pick(LAYOUTS)
    if layout == "reversed":
        rev = (slice(None, None, -1),) * a.ndim
        a = np.ascontiguousarray(a[rev])[rev]
    elif layout == "strided" and a.ndim:
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        a = big[tuple(slice(None, None, 2) for _ in a.shape)]
    elif layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "misaligned":
        buf = bytearray(a.nbytes + 1)
        v = np.frombuffer(buf, a.dtype, a.size, 1).reshape(a.shape)
        v[...] = a
        a = v
    elif layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
    return a


def one_call(src: Source):
    dt = src.pick([np.float32, np.float64])
    op = src.int(0, 9)
    n, c, h, w = src.int(0, 3), src.int(0, 5), src.int(0, 9), src.int(0, 9)
    if op in (0, 1, 2):                                   # convolution
        groups = src.int(1, 3)
        cin, cout = src.int(1, 3) * groups, src.int(1, 3) * groups
        kh, kw = src.int(1, 4), src.int(1, 4)
        x = make_array(src, [n, cin, h, w], dt)
        wt = make_array(src, [cout, cin // groups, kh, kw], dt)
        stride, dil = src.param(1, 3), src.param(1, 2)
        pad = src.pick([src.param(0, 2), "same", "valid", ((src.param(0, 2), 1), (0, src.param(0, 2)))])
        g = groups if src.int(0, 7) else src.param(0, 4)
        if op == 0:
            return pyconv.conv2d(x, wt, None, stride, pad, dil, g)
        if op == 1:
            x1 = make_array(src, [n, cin, w], dt)
            return pyconv.conv1d(x1, wt[..., 0], None, stride, src.pick([pad if isinstance(pad, (int, str)) else 1, "causal"]), dil, g)
        gy = make_array(src, [n, cout, src.int(0, 9), src.int(0, 9)], dt)
        return pyconv.conv2d_backward(gy, x, wt, stride, pad, dil, g)
    if op in (3, 4):                                      # max-pool forward
        x = make_array(src, [n, c, h, w], dt)
        k = src.param(1, 4)
        return pyconv.max_pool2d(x, k, src.pick([None, src.param(1, 3)]), src.param(0, 2),
                                 src.param(1, 2), bool(src.int(0, 1)), bool(src.int(0, 1)))
    if op in (5, 6):                                      # backward / unpool through indices
        oh, ow = src.int(1, 5), src.int(1, 5)
        gy = make_array(src, [n, c, oh, ow], dt)
        idx = make_array(src, [n, c, oh, ow], index_hi=max(1, h * w))
        if op == 5:
            return pyconv.max_pool2d_backward(gy, idx, (n, c, src.param(1, 9), src.param(1, 9)))
        return pyconv.max_unpool2d(gy, idx, src.param(1, 3), src.pick([None, src.param(1, 3)]),
                                   src.param(0, 1), src.pick([None, (h, w), (src.param(1, 9), w)]))
    if op in (7, 8):                                      # batch norm
        rank = src.int(1, 5)
        shape = [src.int(0, 4) for _ in range(rank)]
        ch = shape[1] if rank > 1 else 1
        x = make_array(src, shape, dt)
        rm = None if src.int(0, 3) == 0 else make_array(src, [ch + (src.int(0, 7) == 0)], dt)
        rv = None if rm is None else np.abs(make_array(src, [ch], dt)) if src.int(0, 5) else rm
        if op == 7:
            return pyconv.batch_norm(x, rm, rv, None, None, bool(src.int(0, 1)),
                                     src.pick([0.1, float("nan"), 2.0]), src.pick([1e-5, 0.0, -1.0, float("inf")]))
        gy = make_array(src, shape, dt)
        return pyconv.batch_norm_backward(gy, x, None, rm, rv, bool(src.int(0, 1)), src.pick([1e-5, float("nan")]))
    a = make_array(src, [src.int(0, 20), src.int(0, 20)], dt)
    b = make_array(src, [a.shape[-1] if a.ndim else 1, src.int(0, 20)], dt)
    return _core.matmul(a, b)


def TestOneInput(data: bytes) -> None:
    src = Source(data)
    try:
        one_call(src)
    except ALLOWED:
        pass
    except MemoryError:
        pass  # only reachable through a huge parameter: the arrays here are tiny
    except NotImplementedError:
        pass  # an op not built on this branch
    except (RuntimeError, SystemError):
        raise  # a finding: validation missed something


def _cap_memory(gib: float = 3.0) -> None:
    """A valid call can still ask for gigabytes (padding 2**32 on a 1D input): cap the
    address space below libFuzzer's -rss_limit_mb so such a request fails fast as a
    MemoryError (allowed) instead of filling memory. Not under ASan, whose shadow
    memory needs a huge virtual reservation."""
    import os
    import resource

    if "asan" in os.environ.get("LD_PRELOAD", ""):
        return
    cap = int(gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def main():
    _cap_memory()
    if atheris is None:
        # Replay mode: run the given files (crash reproducers, corpus entries).
        for path in sys.argv[1:]:
            with open(path, "rb") as f:
                TestOneInput(f.read())
        print(f"replayed {len(sys.argv) - 1} inputs without atheris")
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
