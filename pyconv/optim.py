"""Optimisers over ``pyconv.nn.Parameter`` objects, with PyTorch's update rules.

Parameters whose ``grad`` is None are skipped, as in PyTorch. Updates are applied in
place to ``Parameter.data`` in the parameter's dtype.
"""
from __future__ import annotations

import math
from typing import Iterable, List

import numpy as np

from .nn import Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params: List[Parameter] = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be pyconv.nn.Parameter, got {type(p).__name__}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"invalid learning rate: {lr}")
        self.lr = float(lr)
        self.state = [dict() for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * d, d = g + weight_decay * p; with momentum, d = buf = momentum * buf +
    (1 - dampening) * d (the first step buf = d); nesterov uses d + momentum * buf."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, *, dampening=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0:
            raise ValueError(f"invalid momentum value: {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)

    def step(self) -> None:
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            dt = p.data.dtype.type
            d = p.grad
            if self.weight_decay:
                d = d + dt(self.weight_decay) * p.data
            if self.momentum:
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = np.array(d, copy=True)
                else:
                    buf *= dt(self.momentum)
                    buf += dt(1.0 - self.dampening) * d
                d = d + dt(self.momentum) * buf if self.nesterov else buf
            p.data -= dt(self.lr) * d


class Adam(Optimizer):
    """Adam (Kingma & Ba) as torch.optim.Adam: m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2,
    p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). weight_decay adds wd*p to g."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, weight_decay=0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
            raise ValueError(f"invalid betas: {betas}")
        if not eps >= 0:
            raise ValueError(f"invalid epsilon value: {eps}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay value: {weight_decay}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    def step(self) -> None:
        b1, b2 = self.betas
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            dt = p.data.dtype.type
            g = p.grad
            if self.weight_decay:
                g = g + dt(self.weight_decay) * p.data
            if not st:
                st["step"] = 0
                st["exp_avg"] = np.zeros_like(p.data)
                st["exp_avg_sq"] = np.zeros_like(p.data)
                st["tmp"] = np.empty_like(p.data)
            st["step"] += 1
            t = st["step"]
            m, v, tmp = st["exp_avg"], st["exp_avg_sq"], st["tmp"]
            # the same operations, in the same order, as torch.optim.Adam (single tensor)
            np.subtract(g, m, out=tmp)            # m.lerp_(g, 1 - b1) = m + (1 - b1) * (g - m)
            tmp *= dt(1.0 - b1)
            m += tmp
            v *= dt(b2)                           # v.mul_(b2).addcmul_(g, g, value=1 - b2)
            np.multiply(g, g, out=tmp)
            tmp *= dt(1.0 - b2)
            v += tmp
            bc1 = 1.0 - b1 ** t
            bc2 = 1.0 - b2 ** t
            np.sqrt(v, out=tmp)                   # denom = v.sqrt() / sqrt(bc2) + eps
            tmp /= dt(math.sqrt(bc2))
            tmp += dt(self.eps)
            np.divide(m, tmp, out=tmp)            # p.addcdiv_(m, denom, value=-lr / bc1)
            tmp *= dt(self.lr / bc1)
            p.data -= tmp
