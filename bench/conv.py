"""Convolution workloads (the rows of /work/shared/ANCHORS.md), forward and backward.

Backward = grad input + grad weight (grad bias is not timed), twice the forward FLOPs.
"""
from __future__ import annotations

import numpy as np

try:
    from bench.common import Workload, conv_flops, try_torch
except ImportError:  # run as a plain script from bench/
    from common import Workload, conv_flops, try_torch

import pyconv
from pyconv import reference as ref

# Reference callables are skipped above this many FLOPs (they would take seconds).
_REF_LIMIT = 3e9


def _spec(name, n, cin, cout, size, k, stride=1, padding=0, dilation=1, groups=1, tags=()):
    return dict(name=name, n=n, cin=cin, cout=cout, size=size, k=k, stride=stride,
                padding=padding, dilation=dilation, groups=groups, tags=tags)


def _specs(quick: bool):
    b = (lambda full, small: small if quick else full)
    out = []
    for c, px in ((64, 56), (128, 28), (256, 14)):
        for n in ((1,) if quick else (1, 8)):
            out.append(_spec(f"3x3 c{c} {px}px b{n}", n, c, c, (px, px), (3, 3), padding=1, tags=("3x3",)))
    out.append(_spec(f"3x3 c512 7px b{b(8, 2)}", b(8, 2), 512, 512, (7, 7), (3, 3), padding=1, tags=("3x3",)))
    out.append(_spec("7x7/2 stem 3->64 224px b1", 1, 3, 64, (224, 224), (7, 7), stride=2, padding=3,
                     tags=("stem",)))
    out.append(_spec("1x1 256->64 56px b1", 1, 256, 64, (56, 56), (1, 1), tags=("1x1",)))
    out.append(_spec("depthwise 3x3 c256 56px b1", 1, 256, 256, (56, 56), (3, 3), padding=1, groups=256,
                     tags=("depthwise",)))
    out.append(_spec(f"5x5 1->32 28px b{b(64, 16)}", b(64, 16), 1, 32, (28, 28), (5, 5), tags=("mnist",)))
    out.append(_spec(f"1D causal k2 d8 c64 L16000 b{b(8, 2)}", b(8, 2), 64, 64, (16000,), (2,),
                     padding="causal", dilation=8, tags=("1d", "wavenet")))
    out.append(_spec(f"1D k3 c128 L1024 b{b(32, 8)}", b(32, 8), 128, 128, (1024,), (3,), padding=1,
                     tags=("1d",)))
    return out


def _out_sizes(s):
    nd = len(s["size"])
    st = pyconv.shapes.ntuple(s["stride"], nd, "stride")
    dl = pyconv.shapes.ntuple(s["dilation"], nd, "dilation")
    pads = pyconv.shapes.resolve_conv_padding(s["padding"], s["size"], s["k"], st, dl)
    return pyconv.conv_output_size(s["size"], s["k"], st, pads, dl), pads, st, dl


def _make(s, direction):
    nd = len(s["size"])
    out, pads, st, dl = _out_sizes(s)
    flops = conv_flops(s["n"], s["cout"], out, s["cin"] // s["groups"], s["k"])
    if direction == "bwd":
        flops *= 2
    kw = dict(stride=s["stride"], padding=s["padding"], dilation=s["dilation"], groups=s["groups"])

    def setup():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((s["n"], s["cin"]) + s["size"]).astype(np.float32)
        w = rng.standard_normal((s["cout"], s["cin"] // s["groups"]) + s["k"]).astype(np.float32)
        w *= 1.0 / np.sqrt(w[0].size)
        bias = rng.standard_normal(s["cout"]).astype(np.float32)
        dy = rng.standard_normal((s["n"], s["cout"]) + tuple(out)).astype(np.float32)
        fwd = pyconv.conv2d if nd == 2 else pyconv.conv1d
        bwd = pyconv.conv2d_backward if nd == 2 else pyconv.conv1d_backward
        rfwd = ref.conv2d if nd == 2 else ref.conv1d
        rbwd = ref.conv2d_backward if nd == 2 else ref.conv1d_backward
        mask = (True, True, False)
        calls = {}
        if direction == "fwd":
            calls["pyconv"] = lambda: fwd(x, w, bias, **kw)
            calls["reference"] = (lambda: rfwd(x, w, bias, **kw)) if flops <= _REF_LIMIT else None
        else:
            calls["pyconv"] = lambda: bwd(dy, x, w, output_mask=mask, **kw)
            calls["reference"] = (lambda: rbwd(dy, x, w, output_mask=mask, **kw)) if flops <= _REF_LIMIT else None
        torch = try_torch()
        calls["torch"] = None
        if torch is not None:
            F = torch.nn.functional
            tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, bias, dy))
            # explicit (possibly asymmetric) padding: pad the input once, outside the timing
            sym = all(lo == hi for lo, hi in pads)
            tpad = [p[0] for p in pads] if sym else [0] * nd
            if not sym:
                flat = [v for lo_hi in reversed(pads) for v in lo_hi]
                tx = F.pad(tx, flat)
            tconv = F.conv2d if nd == 2 else F.conv1d
            if direction == "fwd":
                calls["torch"] = lambda: tconv(tx, tw, tb, stride=st, padding=tpad, dilation=dl,
                                               groups=s["groups"])
            else:
                calls["torch"] = lambda: torch.ops.aten.convolution_backward(
                    tdy, tx, tw, [s["cout"]], list(st), list(tpad), list(dl), False, [0] * nd,
                    s["groups"], [True, True, False])
        return calls

    return Workload(family="conv", name=s["name"], direction=direction, metric="flops", amount=flops,
                    setup=setup, notes=f"groups={s['groups']} stride={s['stride']} padding={s['padding']}",
                    tags=tuple(s["tags"]))


def workloads(quick: bool) -> list:
    return [_make(s, d) for s in _specs(quick) for d in ("fwd", "bwd")]
