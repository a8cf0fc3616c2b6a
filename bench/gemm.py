"""GEMM workloads: pyconv's packed GEMM (_core.matmul) against NumPy (OpenBLAS) and torch.mm.

The conv-shaped cases are the GEMMs a convolution forward runs per image and group:
M = C_out/groups, N = output pixels, K = C_in/groups * kH * kW.
"""
from __future__ import annotations

import numpy as np

try:
    from .common import Workload, try_torch
except ImportError:  # run as a plain script directory
    from common import Workload, try_torch

# (name, M, N, K, tags)
_SHAPES = [
    ("sgemm 1024^3", 1024, 1024, 1024, ("square",)),
    ("conv3x3 c64 56px (M64 N3136 K576)", 64, 3136, 576, ("conv",)),
    ("conv3x3 c256 14px (M256 N196 K2304)", 256, 196, 2304, ("conv",)),
    ("stem7x7 c3 112px (M64 N12544 K147)", 64, 12544, 147, ("conv",)),
]
_QUICK = {"sgemm 1024^3", "conv3x3 c64 56px (M64 N3136 K576)"}


def _make(m, n, k, dtype):
    def setup():
        from pyconv import _core

        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        fns = {
            "pyconv": lambda: _core.matmul(a, b),
            "reference": lambda: np.matmul(a, b),
            "torch": None,
        }
        torch = try_torch()
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fns["torch"] = lambda: torch.mm(ta, tb)
        return fns

    return setup


def _make_linear(batch, n_in, n_out):
    def setup():
        from pyconv import _core

        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, n_in)).astype(np.float32)
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        fns = {
            "pyconv": lambda: _core.matmul(x, w.T),
            "reference": lambda: np.matmul(x, w.T),
            "torch": None,
        }
        torch = try_torch()
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            fns["torch"] = lambda: torch.mm(tx, tw.t())
        return fns

    return setup


def workloads(quick: bool) -> list:
    out = []
    for name, m, n, k, tags in _SHAPES:
        if quick and name not in _QUICK:
            continue
        out.append(
            Workload(
                family="gemm",
                name=name,
                direction="fwd",
                metric="flops",
                amount=2.0 * m * n * k,
                setup=_make(m, n, k, np.float32),
                notes="float32; reference = np.matmul (OpenBLAS), torch = torch.mm",
                tags=tags,
            )
        )
    if not quick:
        out.append(
            Workload(
                family="gemm",
                name="linear b256 1024->1024 (x @ W.T)",
                direction="fwd",
                metric="flops",
                amount=2.0 * 256 * 1024 * 1024,
                setup=_make_linear(256, 1024, 1024),
                notes="float32; b is a transposed view (the strided B packer), as in nn.Linear",
                tags=("linear",),
            )
        )
        out.append(
            Workload(
                family="gemm",
                name="dgemm 512^3",
                direction="fwd",
                metric="flops",
                amount=2.0 * 512**3,
                setup=_make(512, 512, 512, np.float64),
                notes="float64 (the FP32 FMA roof overstates the float64 peak by 2x)",
                tags=("square", "float64"),
            )
        )
    return out
