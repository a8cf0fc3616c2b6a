"""The workload protocol shared by bench/run.py and the per-family files.

Each family file (bench/conv.py, bench/pool.py, bench/batchnorm.py, bench/gemm.py)
defines `workloads(quick: bool) -> list[Workload]`. run.py times every workload at 1
thread and at all threads, and reports median ms, GFLOP/s or GB/s, the % of the
measured roof, and the ratios against the NumPy reference and PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


@dataclass
class Workload:
    family: str                 # 'conv', 'pool', 'batchnorm', 'gemm'
    name: str                   # short, unique, e.g. 'resnet3x3 c64 56px b8'
    direction: str              # 'fwd' or 'bwd'
    metric: str                 # 'flops' (FMA-peak roof) or 'bytes' (bandwidth roof)
    amount: float               # FLOPs or bytes of compulsory traffic per call
    # setup() builds the inputs once and returns the callables to time, each taking no
    # arguments: {'pyconv': f, 'reference': g or None, 'torch': h or None}.
    setup: Callable[[], dict]
    notes: str = ""
    tags: tuple = field(default_factory=tuple)


def conv_flops(n, c_out, out_spatial, c_in_per_group, kernel_spatial) -> float:
    """2 * N * C_out * prod(out) * C_in/groups * prod(kernel): one forward pass."""
    return 2.0 * n * c_out * float(np.prod(out_spatial)) * c_in_per_group * float(np.prod(kernel_spatial))


def try_torch():
    """The torch module when it is importable, else None (it is a benchmark oracle only)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return None
    return torch
