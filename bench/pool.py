"""Max-pool benchmark workloads (protocol in bench/common.py).

Forward with indices and its backward, for the two pooling layers of common CNNs
(2x2 stride 2, and 3x3 stride 2 padding 1 as in the ResNet stem), float32 NCHW.
Metric 'bytes' is the compulsory traffic: forward reads the input and writes the output
and the int64 indices; backward reads grad_output and the indices and writes grad_input.
"""
from __future__ import annotations

import numpy as np

try:
    from .common import Workload, try_torch
except ImportError:  # run as a plain module from bench/
    from common import Workload, try_torch

import pyconv
from pyconv import reference as ref

CONFIGS = [  # name, kernel, stride, padding
    ("2x2/s2", 2, 2, 0),
    ("3x3/s2/p1", 3, 2, 1),
]


def _shape(quick: bool):
    return (8, 64, 112, 112)


def _forward(name, k, s, p, quick):
    shape = _shape(quick)
    n, c, h, w = shape
    ho = pyconv.pool_output_size(h, k, s, p)
    wo = pyconv.pool_output_size(w, k, s, p)
    amount = 4.0 * n * c * h * w + (4.0 + 8.0) * n * c * ho * wo

    def setup():
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        fns = {
            "pyconv": lambda: pyconv.max_pool2d(x, k, s, p, return_indices=True),
            # the reference loops over output pixels and taps in Python (~0.3 s a call)
            "reference": lambda: ref.max_pool2d(x, k, s, p, return_indices=True),
        }
        torch = try_torch()
        if torch is not None:
            F = torch.nn.functional
            xt = torch.from_numpy(x)

            def run_torch():
                with torch.no_grad():
                    return F.max_pool2d(xt, k, s, p, return_indices=True)

            fns["torch"] = run_torch
        else:
            fns["torch"] = None
        return fns

    return Workload("pool", f"maxpool {name} {n}x{c}x{h}x{w}", "fwd", "bytes", amount, setup,
                    notes="float32, with int64 indices", tags=("pool", name))


def _backward(name, k, s, p, quick):
    shape = _shape(quick)
    n, c, h, w = shape
    ho = pyconv.pool_output_size(h, k, s, p)
    wo = pyconv.pool_output_size(w, k, s, p)
    amount = (4.0 + 8.0) * n * c * ho * wo + 4.0 * n * c * h * w

    def setup():
        rng = np.random.default_rng(1)
        x = rng.standard_normal(shape).astype(np.float32)
        out, idx = pyconv.max_pool2d(x, k, s, p, return_indices=True)
        g = rng.standard_normal(out.shape).astype(np.float32)
        fns = {"pyconv": lambda: pyconv.max_pool2d_backward(g, idx, shape)}
        # the reference scatters element by element in Python (seconds a call): not timed
        fns["reference"] = None
        torch = try_torch()
        if torch is not None:
            xt, gt, it = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(idx)

            def run_torch():
                # the backward kernel alone (what autograd calls), no forward pass
                return torch.ops.aten.max_pool2d_with_indices_backward(
                    gt, xt, [k, k], [s, s], [p, p], [1, 1], False, it)

            fns["torch"] = run_torch
        else:
            fns["torch"] = None
        return fns

    return Workload("pool", f"maxpool {name} {n}x{c}x{h}x{w}", "bwd", "bytes", amount, setup,
                    notes="float32, scatter-add through int64 indices", tags=("pool", name))


def workloads(quick: bool):
    out = []
    for name, k, s, p in CONFIGS:
        out.append(_forward(name, k, s, p, quick))
        out.append(_backward(name, k, s, p, quick))
    return out
