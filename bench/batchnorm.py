"""Batch-norm workloads for bench/run.py (protocol in bench/common.py).

Metric 'bytes' is the compulsory traffic: forward reads x and writes out (2 * x bytes);
backward reads x and dy and writes dx (3 * x bytes). Running-stat and per-channel
vectors are negligible and not counted. The backward workloads time the backward pass
alone, with the statistics saved by the forward pass (pyconv: return_stats=True; torch:
native_batch_norm's save_mean / save_invstd), as autograd would run it.
"""
from __future__ import annotations

import numpy as np

try:
    from .common import Workload, try_torch
except ImportError:  # run as a plain module from bench/
    from common import Workload, try_torch

import pyconv
from pyconv import reference as ref


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = np.zeros(c, dtype)
    rv = np.ones(c, dtype)
    return x, dy, w, b, rm, rv


def _forward(shape, dtype, training):
    def setup():
        x, _, w, b, rm, rv = _inputs(shape, dtype)
        rm_r, rv_r = rm.copy(), rv.copy()
        fns = {
            "pyconv": lambda: pyconv.batch_norm(x, rm, rv, w, b, training=training),
            "reference": lambda: ref.batch_norm(x, rm_r, rv_r, w, b, training=training),
            "torch": None,
        }
        torch = try_torch()
        if torch is not None:
            F = torch.nn.functional
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())

            def run_torch():
                with torch.no_grad():
                    return F.batch_norm(tx, trm, trv, tw, tb, training=training)

            fns["torch"] = run_torch
        return fns

    return setup


def _backward(shape, dtype):
    def setup():
        x, dy, w, b, rm, rv = _inputs(shape, dtype)
        # Like autograd, the backward gets the statistics saved by the forward pass.
        _, save_mean, save_invstd = pyconv.batch_norm(x, None, None, w, b, training=True,
                                                      return_stats=True)
        fns = {
            "pyconv": lambda: pyconv.batch_norm_backward(dy, x, w, training=True, save_mean=save_mean,
                                                         save_invstd=save_invstd),
            "reference": lambda: ref.batch_norm_backward(dy, x, w, training=True),
            "torch": None,
        }
        torch = try_torch()
        if torch is not None:
            tx, tdy, tw, tb = (torch.from_numpy(a) for a in (x, dy, w, b))
            trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
            _, t_mean, t_invstd = torch.ops.aten.native_batch_norm(
                tx, tw, tb, trm, trv, True, 0.1, 1e-5)

            def run_torch():
                # only the backward pass: saved statistics come from the forward above
                return torch.ops.aten.native_batch_norm_backward(
                    tdy, tx, tw, trm, trv, t_mean, t_invstd, True, 1e-5, [True, True, True])

            fns["torch"] = run_torch
        return fns

    return setup


def workloads(quick: bool) -> list:
    shapes = [((32, 64, 56, 56), "wide"), ((256, 512, 7, 7), "deep")]
    if not quick:
        shapes += [((8, 256, 28, 28), "mid"), ((256, 1024), "2d")]
    out = []
    for shape, label in shapes:
        nbytes = float(np.prod(shape)) * 4
        dims = "x".join(str(d) for d in shape)
        out.append(Workload("batchnorm", f"bn train {label} {dims}", "fwd", "bytes", 2 * nbytes,
                            _forward(shape, np.float32, True),
                            notes="training forward, float32; x read + out written",
                            tags=("batchnorm", "train")))
        out.append(Workload("batchnorm", f"bn train {label} {dims}", "bwd", "bytes", 3 * nbytes,
                            _backward(shape, np.float32),
                            notes="training backward, float32; x, dy read + dx written",
                            tags=("batchnorm", "train")))
        if not quick:
            out.append(Workload("batchnorm", f"bn eval {label} {dims}", "fwd", "bytes", 2 * nbytes,
                                _forward(shape, np.float32, False),
                                notes="eval forward, float32", tags=("batchnorm", "eval")))
    return out
