"""Optimisers over ``pyconv.nn.Parameter`` objects, with PyTorch's update rules.

Parameters whose ``grad`` is None are skipped, as in PyTorch. Updates are applied in
place to ``Parameter.data`` in the parameter's dtype.

A network has many small parameters, so the optimiser keeps its state (momentum
buffers, Adam moments) in one flat array per optimiser and, when every parameter has a
gradient, updates them all with one sequence of NumPy operations on the concatenated
gradients. The arithmetic is elementwise and identical either way, so the results are
bitwise the same as a parameter-by-parameter loop (which is what runs when some grads
are None or the dtypes differ).
"""
from __future__ import annotations

import math
from typing import Iterable, List

import numpy as np

from .nn import Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


class _Unit:
    """One update: the whole flat group or one parameter. `g` is the gradient (flat),
    `sl` the slice of the flat state arrays it owns, `params` the parameters it writes."""

    __slots__ = ("g", "sl", "params", "offsets")

    def __init__(self, g, sl, params, offsets):
        self.g, self.sl, self.params, self.offsets = g, sl, params, offsets


class Optimizer:
    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params: List[Parameter] = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be pyconv.nn.Parameter, got {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got the same parameter twice")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"invalid learning rate: {lr}")
        self.lr = float(lr)
        sizes = [p.data.size for p in self.params]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        dtypes = {p.data.dtype for p in self.params}
        # flat state in the parameters' dtype (float64 if they are mixed)
        self._dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
        self._one_dtype = len({p.data.dtype for p in self.params}) == 1
        self._steps = [0] * len(self.params)

    def _flat(self) -> np.ndarray:
        return np.zeros(self._offsets[-1], self._dtype)

    def _units(self):
        """The updates of this step: one unit for the whole group when every parameter
        has a gradient, the same dtype and the same step count; else one per parameter
        that has a gradient."""
        ps = self.params
        off = self._offsets
        if self._one_dtype and all(p.grad is not None for p in ps) and len(set(self._steps)) == 1:
            g = np.concatenate([p.grad for p in ps], axis=None)  # axis=None: flattened, in order
            return [_Unit(g, slice(0, off[-1]), list(range(len(ps))), off)]
        units = []
        for i, p in enumerate(ps):
            if p.grad is None:
                continue
            g = np.asarray(p.grad, dtype=self._dtype).reshape(-1)
            units.append(_Unit(g, slice(off[i], off[i + 1]), [i], [off[i], off[i + 1]]))
        return units

    def _data(self, u: _Unit) -> np.ndarray:
        if len(u.params) == 1:
            return np.asarray(self.params[u.params[0]].data, dtype=self._dtype).reshape(-1)
        return np.concatenate([self.params[i].data.reshape(-1) for i in u.params])

    def _apply(self, u: _Unit, delta: np.ndarray) -> None:
        """p.data -= delta (flat, in the unit's layout), in place."""
        params, steps, off = self.params, self._steps, u.offsets
        start = off[0]
        for k, i in enumerate(u.params):
            d = params[i].data
            seg = delta[off[k] - start:off[k + 1] - start].reshape(d.shape)
            if seg.dtype != d.dtype:
                seg = seg.astype(d.dtype)
            np.subtract(d, seg, out=d)
            steps[i] += 1

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
        self._buf = self._flat() if self.momentum else None

    def step(self) -> None:
        dt = self._dtype.type
        for u in self._units():
            d = u.g
            if self.weight_decay:
                d = d + dt(self.weight_decay) * self._data(u)
            if self.momentum:
                buf = self._buf[u.sl]
                first = self._steps[u.params[0]] == 0
                if first:  # torch: buf = clone(d)
                    buf[...] = d
                else:
                    buf *= dt(self.momentum)
                    buf += dt(1.0 - self.dampening) * d
                d = d + dt(self.momentum) * buf if self.nesterov else buf
            self._apply(u, dt(self.lr) * d)


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
        self._m = self._flat()
        self._v = self._flat()
        self._tmp = self._flat()

    def step(self) -> None:
        b1, b2 = self.betas
        dt = self._dtype.type
        for u in self._units():
            g = u.g
            if self.weight_decay:
                g = g + dt(self.weight_decay) * self._data(u)
            m, v, tmp = self._m[u.sl], self._v[u.sl], self._tmp[u.sl]
            t = self._steps[u.params[0]] + 1
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
            self._apply(u, tmp)

    @property
    def state(self):
        """Per parameter: step, exp_avg and exp_avg_sq (views of the flat state)."""
        off = self._offsets
        return [{"step": self._steps[i], "exp_avg": self._m[off[i]:off[i + 1]].reshape(p.data.shape),
                 "exp_avg_sq": self._v[off[i]:off[i + 1]].reshape(p.data.shape)}
                for i, p in enumerate(self.params)]
