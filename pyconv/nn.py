"""Drop-in layer modules on NumPy arrays, backed by pyconv's kernels.

Names, constructor arguments and defaults follow ``torch.nn``. Each module's
``forward(x)`` (also ``module(x)``) returns the output and caches what the backward
pass needs; ``backward(grad_output)`` returns the gradient of the input and ADDS the
parameter gradients into ``Parameter.grad``. There is no autograd tape: a
``Sequential`` runs its children's backward in reverse order.

Initialisation follows PyTorch: weights Kaiming-uniform with a = sqrt(5), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases U(-1/sqrt(fan_in), 1/sqrt(fan_in));
batch norm weight 1, bias 0, running_mean 0, running_var 1. Random numbers come from a
module-level generator that ``manual_seed(n)`` resets, or from an ``rng=`` keyword
(a ``numpy.random.Generator``) given to a constructor.

``summary(model, input_shape)`` prints a Keras-like table (output shape, parameters,
multiply-accumulates, receptive field and jump per layer) from the size formulas alone,
without running the model.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from . import functional as F
from . import shapes as _shapes

__all__ = [
    "Parameter",
    "Module",
    "Sequential",
    "Conv1d",
    "Conv2d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "ReLU",
    "Dropout",
    "Flatten",
    "Linear",
    "CrossEntropyLoss",
    "MSELoss",
    "manual_seed",
    "summary",
]

# ------------------------------------------------------------------ random numbers

_default_rng = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the generator that initialisation and dropout use by default."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)
    return _default_rng


def _rng(rng) -> np.random.Generator:
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _uniform(rng, bound: float, shape, dtype) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


# ------------------------------------------------------------------ parameters


class Parameter:
    """A trainable array: ``data`` (the values) and ``grad`` (None until a backward
    pass accumulates into it). ``requires_grad=False`` freezes it: backward passes
    then leave ``grad`` alone."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True):
        self.data = np.ascontiguousarray(data)
        self.grad: Optional[np.ndarray] = None
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def numel(self) -> int:
        return int(self.data.size)

    def accumulate(self, g: Optional[np.ndarray]) -> None:
        """grad += g (grad is created on first use)."""
        if g is None or not self.requires_grad:
            return
        if g.shape != self.data.shape:
            raise ValueError(f"gradient shape {g.shape} does not match parameter shape {self.data.shape}")
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self.grad += g

    def _accumulate_fresh(self, g: Optional[np.ndarray]) -> None:
        """accumulate() for a gradient array that nothing else references (a kernel's new
        output): the first one becomes ``grad`` itself instead of being copied."""
        if (g is not None and self.grad is None and self.requires_grad and type(g) is np.ndarray
                and g.dtype == self.data.dtype and g.shape == self.data.shape and g.flags.c_contiguous
                and g.flags.writeable):
            self.grad = g
        else:
            self.accumulate(g)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


# ------------------------------------------------------------------ module base

_STATE_NAMES = frozenset(("_x", "_x2", "_mask", "_indices", "_in_shape", "_out_shape", "_batch_stats",
                          "_saved", "_plan", "_plan_key", "_cached_out", "_shape_key", "_scale"))


class Module:
    """Base class: registers Parameters, sub-modules and buffers set as attributes."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if name in _STATE_NAMES and not isinstance(value, (Parameter, Module)):
            # the per-call state the built-in layers keep for backward (set on every
            # forward): plain attributes, never parameters, buffers or sub-modules
            object.__setattr__(self, name, value)
            return
        if "_parameters" not in self.__dict__:
            raise AttributeError("Module.__init__() must be called before assigning attributes")
        if isinstance(value, (Parameter, Module)):
            for d in (self._parameters, self._modules, self._buffers):
                d.pop(name, None)
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        elif name in self._parameters or (value is None and name in ("weight", "bias")):
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                "(wrap it in Parameter)")
            self._parameters[name] = None
        elif name in self._buffers:
            self._buffers[name] = value
        elif name in self._modules:
            del self._modules[name]
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Optional[np.ndarray]) -> None:
        """A non-trainable array saved in state_dict (e.g. running statistics)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # -- traversal
    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_children(self):
        yield from self._modules.items()

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = ""):
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = ""):
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                if b is None:
                    continue
                yield (f"{mname}.{bname}" if mname else bname), b

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # -- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers under PyTorch's keys, as copies (NumPy arrays)."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            pre = f"{mname}." if mname else ""
            for pname, p in m._parameters.items():
                if p is not None:
                    out[pre + pname] = p.data.copy()
            for bname, b in m._buffers.items():
                if b is not None:
                    out[pre + bname] = np.array(b, copy=True)
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays from `state` (any mapping of name -> array-like, e.g. an
        ``np.load`` result or a torch state_dict converted with ``.numpy()``) into this
        module's parameters and buffers, in place. Returns (missing, unexpected) keys;
        with strict=True either being non-empty is a KeyError."""
        keys = set(state.keys())
        targets = OrderedDict()
        for mname, m in self.named_modules():
            pre = f"{mname}." if mname else ""
            for pname, p in m._parameters.items():
                if p is not None:
                    targets[pre + pname] = ("p", m, pname, p)
            for bname, b in m._buffers.items():
                if b is not None:
                    targets[pre + bname] = ("b", m, bname, b)
        missing = [k for k in targets if k not in keys]
        optional = {k for k in missing if k.endswith("num_batches_tracked")}
        missing = [k for k in missing if k not in optional]
        unexpected = [k for k in state.keys() if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for k, (kind, m, name, cur) in targets.items():
            if k not in keys:
                continue
            val = np.asarray(state[k])
            if val.shape != cur.shape:
                raise ValueError(f"load_state_dict: {k} has shape {val.shape}, expected {cur.shape}")
            if kind == "p":
                cur.data[...] = val.astype(cur.data.dtype, copy=False)
            else:
                cur[...] = val.astype(cur.dtype, copy=False)
        return missing, unexpected

    # -- running
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_output, need_input_grad: bool = True):  # pragma: no cover
        raise NotImplementedError

    # -- summary support: (output_shape, params, macs, rf, jump) from the input shape
    def _shape_info(self, in_shape, rf, jump):
        return tuple(in_shape), 0, 0, rf, jump

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, m in self._modules.items():
                sub = repr(m).replace("\n", "\n  ")
                lines.append(f"\n  ({name}): {sub}")
            lines.append("\n")
        return "".join(lines) + ")"


def _n_params(m: Module) -> int:
    return sum(p.numel() for p in m._parameters.values() if p is not None)


# ------------------------------------------------------------------ containers


class Sequential(Module):
    """Children run in order; backward runs their backward in reverse order."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (dict, OrderedDict)):
            for name, m in layers[0].items():
                setattr(self, str(name), m)
        else:
            for i, m in enumerate(layers):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential takes Modules, got {type(m).__name__} at position {i}")
                setattr(self, str(i), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def append(self, m: Module) -> "Sequential":
        setattr(self, str(len(self._modules)), m)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output, need_input_grad: bool = True):
        mods = list(self._modules.values())
        g = grad_output
        for i in range(len(mods) - 1, 0, -1):
            g = mods[i].backward(g, need_input_grad=True)
        if mods:
            g = mods[0].backward(g, need_input_grad=need_input_grad)
        return g


# ------------------------------------------------------------------ convolution


class _ConvNd(Module):
    _nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        nd = self._nd
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _shapes.ntuple(kernel_size, nd, "kernel_size", minimum=1)
        self.stride = _shapes.ntuple(stride, nd, "stride", minimum=1)
        self.dilation = _shapes.ntuple(dilation, nd, "dilation", minimum=1)
        self.groups = int(groups)
        if isinstance(padding, str):
            if padding.lower() not in ("valid", "same") + (("causal",) if nd == 1 else ()):
                raise ValueError(f"unknown padding {padding!r}")
            self.padding = padding.lower()
        else:
            # validated once here (negative values, bad forms), resolved per call
            _shapes.resolve_conv_padding(padding, (1,) * nd, self.kernel_size, self.stride, self.dilation)
            self.padding = padding
        dt = _dtype(dtype)
        g = _rng(rng)
        fan_in = (self.in_channels // self.groups) * int(np.prod(self.kernel_size))
        bound = 1.0 / math.sqrt(fan_in)
        wshape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(_uniform(g, bound, wshape, dt))
        self.bias = Parameter(_uniform(g, bound, (self.out_channels,), dt)) if bias else None
        self._x = None
        self._plan_key = None
        self._plan = None

    def _get_plan(self, x, w, b):
        """(kernel parameters, output shape) for a batched 2D call, or None (other calls
        take the functional path). The functional layer validates a configuration the
        first time it is seen (raising its usual errors); the result is kept, keyed by
        everything it depends on, so repeated calls skip the argument normalisation."""
        if self._nd != 2 or type(x) is not np.ndarray or x.ndim != 4 or type(w) is not np.ndarray:
            return None
        try:
            key = (x.shape, x.dtype, w.shape, w.dtype, None if b is None else (type(b), b.shape, b.dtype),
                   self.stride, self.padding, self.dilation, self.groups)
            hash(key)
        except TypeError:  # an unhashable padding form: no caching
            return None
        if key != self._plan_key:
            _, _, params, out_shape, _ = F._conv_args(x, w, b, self.stride, self.padding, self.dilation,
                                                      self.groups, 2, "conv2d")
            self._plan_key, self._plan = key, (params, out_shape)
        return self._plan

    def _pads(self, spatial):
        return _shapes.resolve_conv_padding(self.padding, tuple(spatial), self.kernel_size,
                                            self.stride, self.dilation)

    def _fwd(self, x, w, b):
        raise NotImplementedError

    def _bwd(self, g, x, w, mask):
        raise NotImplementedError

    def forward(self, x):
        self._x = x
        w = self.weight.data
        b = None if self.bias is None else self.bias.data
        plan = self._get_plan(x, w, b)
        if plan is None:
            return self._fwd(x, w, b)
        params, out_shape = plan
        return F._check_output(_core.conv2d_forward(x, w, b, *params), out_shape, "conv2d")

    def backward(self, grad_output, need_input_grad: bool = True):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        mask = (bool(need_input_grad), self.weight.requires_grad,
                self.bias is not None and self.bias.requires_grad)
        if not any(mask):
            return None
        x, w = self._x, self.weight.data
        plan = self._get_plan(x, w, None if self.bias is None else self.bias.data)
        if (plan is not None and type(grad_output) is np.ndarray and grad_output.dtype == x.dtype
                and grad_output.shape == plan[1]):
            params, _ = plan
            gi, gw, gb = _core.conv2d_backward(grad_output, x, w, *params, *mask)
            if gi is not None:
                F._check_output(gi, x.shape, "conv2d_backward grad_input")
            if gw is not None:
                F._check_output(gw, w.shape, "conv2d_backward grad_weight")
            if gb is not None:
                F._check_output(gb, (w.shape[0],), "conv2d_backward grad_bias")
        else:
            gi, gw, gb = self._bwd(grad_output, x, w, mask)
        self.weight._accumulate_fresh(gw)
        if self.bias is not None:
            self.bias._accumulate_fresh(gb)
        return gi

    def _shape_info(self, in_shape, rf, jump):
        nd = self._nd
        if len(in_shape) != nd + 2:
            raise ValueError(f"{type(self).__name__} expects input of {nd + 2} dims (batch included), got {in_shape}")
        n, c = in_shape[0], in_shape[1]
        if c != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {c} channels, layer expects {self.in_channels}")
        spatial = tuple(in_shape[2:])
        pads = self._pads(spatial)
        out_sp = _shapes.conv_output_size(spatial, self.kernel_size, self.stride, pads, self.dilation)
        macs = (n * self.out_channels * int(np.prod(out_sp)) * (self.in_channels // self.groups)
                * int(np.prod(self.kernel_size)))
        new_rf = tuple(r + self.dilation[i] * (self.kernel_size[i] - 1) * jump[i] for i, r in enumerate(rf))
        new_jump = tuple(j * self.stride[i] for i, j in enumerate(jump))
        return (n, self.out_channels) + out_sp, _n_params(self), macs, new_rf, new_jump

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != 0:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2D convolution (cross-correlation), NCHW, weight (C_out, C_in/groups, kH, kW).
    padding: int, (ph, pw), ((top, bottom), (left, right)), 'valid' or 'same'."""

    _nd = 2

    def _fwd(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def _bwd(self, g, x, w, mask):
        return F.conv2d_backward(g, x, w, self.stride, self.padding, self.dilation, self.groups,
                                 output_mask=mask)


class Conv1d(_ConvNd):
    """1D convolution, NCL, weight (C_out, C_in/groups, k). padding: int, (p,), (lo, hi),
    'valid', 'same' or 'causal' (lo = dilation*(k-1), hi = 0)."""

    _nd = 1

    def _fwd(self, x, w, b):
        return F.conv1d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def _bwd(self, g, x, w, mask):
        return F.conv1d_backward(g, x, w, self.stride, self.padding, self.dilation, self.groups,
                                 output_mask=mask)


# ------------------------------------------------------------------ pooling


class _MaxPoolNd(Module):
    _nd = 2

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        nd = self._nd
        self.kernel_size = _shapes.ntuple(kernel_size, nd, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else _shapes.ntuple(stride, nd, "stride", minimum=1)
        self.padding = _shapes.ntuple(padding, nd, "padding", minimum=0)
        self.dilation = _shapes.ntuple(dilation, nd, "dilation", minimum=1)
        for p, k in zip(self.padding, self.kernel_size):
            if p > k // 2:
                raise ValueError(f"padding must be at most kernel_size // 2 = {k // 2}, got padding={p}")
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)
        self._indices = None
        self._in_shape = None
        self._plan_key = None  # (input shape, dtype, window): a 2D configuration already validated

    def _key(self, x):
        if self._nd != 2 or type(x) is not np.ndarray or x.ndim != 4:
            return None
        return (x.shape, x.dtype, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def _args(self):
        if self._nd == 1:
            return self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        return self.kernel_size, self.stride, self.padding, self.dilation

    def forward(self, x):
        key = self._key(x)
        if key is not None and key == self._plan_key:
            # this configuration went through the functional checks before: call the kernel
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
            out, idx = _core.max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, self.ceil_mode, True)
            F._check_output(out, self._out_shape, "max_pool")
            F._check_output(idx, self._out_shape, "max_pool indices")
            self._in_shape = x.shape
        else:
            pool = F.max_pool1d if self._nd == 1 else F.max_pool2d
            k, s, p, d = self._args()
            out, idx = pool(x, k, s, p, d, ceil_mode=self.ceil_mode, return_indices=True)
            self._in_shape = tuple(np.shape(x))
            if key is not None:
                self._plan_key, self._out_shape = key, out.shape
        self._indices = idx
        return (out, idx) if self.return_indices else out

    def backward(self, grad_output, need_input_grad: bool = True):
        if self._indices is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if isinstance(grad_output, tuple):  # (grad of out, nothing for the indices)
            grad_output = grad_output[0]
        if not need_input_grad:
            return None
        idx = self._indices
        if (self._nd == 2 and type(grad_output) is np.ndarray and grad_output.dtype in F._FLOATS
                and grad_output.shape == idx.shape and idx.ndim == 4 and len(self._in_shape) == 4):
            H, W = self._in_shape[2], self._in_shape[3]
            gi = _core.max_pool2d_backward(grad_output, idx, H, W)
            return F._check_output(gi, idx.shape[:2] + (H, W), "max_pool backward")
        bwd = F.max_pool1d_backward if self._nd == 1 else F.max_pool2d_backward
        return bwd(grad_output, idx, self._in_shape)

    def _shape_info(self, in_shape, rf, jump):
        nd = self._nd
        if len(in_shape) != nd + 2:
            raise ValueError(f"{type(self).__name__} expects input of {nd + 2} dims (batch included), got {in_shape}")
        out_sp = _shapes.pool_output_size(tuple(in_shape[2:]), self.kernel_size, self.stride,
                                          self.padding, self.dilation, self.ceil_mode)
        new_rf = tuple(r + self.dilation[i] * (self.kernel_size[i] - 1) * jump[i] for i, r in enumerate(rf))
        new_jump = tuple(j * self.stride[i] for i, j in enumerate(jump))
        return tuple(in_shape[:2]) + out_sp, 0, 0, new_rf, new_jump

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool2d(_MaxPoolNd):
    """2D max-pool. With return_indices=True, forward returns (out, indices) as torch;
    either way the indices are kept for backward."""

    _nd = 2


class MaxPool1d(_MaxPoolNd):
    _nd = 1


class _MaxUnpoolNd(Module):
    _nd = 2

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        nd = self._nd
        self.kernel_size = _shapes.ntuple(kernel_size, nd, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else _shapes.ntuple(stride, nd, "stride", minimum=1)
        self.padding = _shapes.ntuple(padding, nd, "padding", minimum=0)
        self._indices = None

    def forward(self, input, indices=None, output_size=None):
        """input, indices as torch; `input` may also be the (out, indices) pair a
        MaxPool with return_indices=True returns, so the two chain in a Sequential."""
        if indices is None:
            if not isinstance(input, tuple) or len(input) != 2:
                raise TypeError(f"{type(self).__name__} needs indices: pass forward(input, indices) "
                                "or the (out, indices) pair of a MaxPool with return_indices=True")
            input, indices = input
        unpool = F.max_unpool1d if self._nd == 1 else F.max_unpool2d
        if self._nd == 1:
            k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        else:
            k, s, p = self.kernel_size, self.stride, self.padding
        out = unpool(input, indices, k, s, p, output_size)
        self._indices = indices
        return out

    def backward(self, grad_output, need_input_grad: bool = True):
        """Unpool scatters each value to one output position, so its gradient gathers
        grad_output at the same indices."""
        if self._indices is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if not need_input_grad:
            return None
        idx = self._indices
        g = np.asarray(grad_output)
        lead = g.shape[:-self._nd]
        gf = g.reshape(lead + (-1,))
        flat_idx = idx.reshape(idx.shape[:-self._nd] + (-1,))
        out = np.take_along_axis(gf, flat_idx, axis=-1)
        return np.ascontiguousarray(out.reshape(idx.shape))

    def _shape_info(self, in_shape, rf, jump):
        nd = self._nd
        out_sp = tuple((in_shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i] + self.kernel_size[i]
                       for i in range(nd))
        new_jump = tuple(_ratio(j, self.stride[i]) for i, j in enumerate(jump))
        return tuple(in_shape[:2]) + out_sp, 0, 0, rf, new_jump


def _ratio(a, b):
    return a // b if a % b == 0 else a / b


class MaxUnpool2d(_MaxUnpoolNd):
    _nd = 2


class MaxUnpool1d(_MaxUnpoolNd):
    _nd = 1


# ------------------------------------------------------------------ batch norm


class _BatchNorm(Module):
    _ndims: Tuple[int, ...] = (4,)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 *, dtype=np.float32):
        super().__init__()
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        if momentum is not None and not math.isfinite(momentum):
            raise ValueError(f"momentum must be finite or None, got {momentum}")
        dt = _dtype(dtype)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if affine:
            self.weight = Parameter(np.ones(num_features, dt))
            self.bias = Parameter(np.zeros(num_features, dt))
        else:
            self.weight = None
            self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dt))
            self.register_buffer("running_var", np.ones(num_features, dt))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._x = None
        self._batch_stats = True
        self._saved = None  # (save_mean, save_invstd, eps) of the last training-mode forward

    def _vectors_ok(self, x, vecs) -> bool:
        """True when every non-None vector is a writable (C,) array of x's dtype and x has a
        float dtype: the arguments the functional layer would accept without a word, so
        the kernel can be called directly."""
        dt = x.dtype
        if dt not in F._FLOATS:
            return False
        c = (x.shape[1],)
        for v in vecs:
            if v is not None and (type(v) is not np.ndarray or v.dtype != dt or v.shape != c
                                  or not v.flags.writeable):
                return False
        eps = self.eps
        return type(eps) is float and 0.0 <= eps < math.inf

    def _check(self, x):
        if not isinstance(x, np.ndarray) or x.ndim not in self._ndims:
            want = " or ".join(f"{d}D" for d in self._ndims)
            raise ValueError(f"{type(self).__name__} expects {want} input, got shape {np.shape(x)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[1]} channels, "
                             f"expected num_features={self.num_features}")

    def forward(self, x):
        self._check(x)
        use_batch = self.training or not self.track_running_stats
        rm, rv = self.running_mean, self.running_var
        momentum = 0.0
        if self.training and self.track_running_stats:
            np.add(self.num_batches_tracked, 1, out=self.num_batches_tracked)
            if self.momentum is None:  # cumulative moving average, as torch
                momentum = 1.0 / float(self.num_batches_tracked)
            else:
                momentum = float(self.momentum)
        elif use_batch:
            rm = rv = None  # eval without running stats, or training without tracking
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        self._saved = None
        if (use_batch and self._vectors_ok(x, (rm, rv, w, b)) and math.isfinite(momentum)
                and x.size >= 2 * x.shape[1]):
            # the checks F.batch_norm makes, done above: call the kernel, keeping the batch
            # statistics for backward
            out, mean, invstd = _core.batch_norm_forward(x, rm, rv, w, b, True, momentum, self.eps, True)
            F._check_output(out, x.shape, "batch_norm")
            F._check_output(mean, (x.shape[1],), "batch_norm")
            F._check_output(invstd, (x.shape[1],), "batch_norm")
            self._saved = (mean, invstd, self.eps)
        else:
            out = F.batch_norm(x, rm, rv, w, b, training=use_batch, momentum=momentum, eps=self.eps)
        self._x = x
        self._batch_stats = use_batch
        return out

    def backward(self, grad_output, need_input_grad: bool = True):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        w = None if self.weight is None else self.weight.data
        x = self._x
        saved = self._saved if (self._saved is not None and self._saved[2] == self.eps) else None
        if self._batch_stats:
            if (saved is not None and type(grad_output) is np.ndarray and grad_output.dtype == x.dtype
                    and grad_output.shape == x.shape and self._vectors_ok(x, (w,))):
                gi, gw, gb = _core.batch_norm_backward(grad_output, x, w, None, None, True, self.eps,
                                                       saved[0], saved[1])
                F._check_output(gi, x.shape, "batch_norm_backward")
                if w is not None:
                    F._check_output(gw, w.shape, "batch_norm_backward")
                    F._check_output(gb, w.shape, "batch_norm_backward")
            else:
                gi, gw, gb = F.batch_norm_backward(grad_output, x, w, None, None, training=True, eps=self.eps)
        else:
            gi, gw, gb = F.batch_norm_backward(grad_output, x, w, self.running_mean, self.running_var,
                                               training=False, eps=self.eps)
        if self.weight is not None:
            self.weight._accumulate_fresh(gw)
            self.bias._accumulate_fresh(gb)
        return gi if need_input_grad else None

    def _shape_info(self, in_shape, rf, jump):
        if len(in_shape) not in self._ndims:
            raise ValueError(f"{type(self).__name__} cannot take input shape {in_shape}")
        return tuple(in_shape), _n_params(self), int(np.prod(in_shape)), rf, jump

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W)."""

    _ndims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L)."""

    _ndims = (2, 3)


# ------------------------------------------------------------------ elementwise and shape


_ZEROS = {}  # dtype -> a read-only zero array, grown on demand (see _zeros_like)


def _zeros_like(x: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous zero array of x's shape and dtype, a view of a buffer kept
    per dtype. np.maximum(x, zeros) gives the same values as np.maximum(x, 0) (NaN and
    signed zeros included) but runs NumPy's vectorised array-array loop, about 3x faster
    than the scalar-broadcast one."""
    buf = _ZEROS.get(x.dtype)
    if buf is None or buf.size < x.size:
        buf = np.zeros(max(x.size, 4096), x.dtype)
        buf.flags.writeable = False
        _ZEROS[x.dtype] = buf
    return buf[:x.size].reshape(x.shape)


class ReLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)  # accepted for compatibility; outputs are new arrays
        self._mask = None

    def forward(self, x):
        if type(x) is np.ndarray and x.dtype in F._FLOATS and x.flags.c_contiguous:
            zero = _zeros_like(x)
            out = np.maximum(x, zero)  # NaN propagates, as torch.relu
            self._mask = np.greater(out, zero)
            return out
        out = np.maximum(x, x.dtype.type(0))
        self._mask = out > 0
        return out

    def backward(self, grad_output, need_input_grad: bool = True):
        if self._mask is None:
            raise RuntimeError("ReLU.backward called before forward")
        if not need_input_grad:
            return None
        if type(grad_output) is np.ndarray and grad_output.dtype in F._FLOATS:
            # the same products as grad_output * mask (False -> 0.0, True -> 1.0); NumPy's
            # bool-to-float conversion inside a multiply is slower than a separate astype
            return np.multiply(grad_output, self._mask.astype(grad_output.dtype))
        return grad_output * self._mask


class Dropout(Module):
    """Inverted dropout: in training each element is zeroed with probability p and the
    survivors are scaled by 1/(1-p); in eval mode it is the identity."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, rng=None):
        super().__init__()
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = float(p)
        self.inplace = bool(inplace)
        self._rng = rng
        self._scale = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        if self.p == 1.0:
            self._scale = np.zeros(x.shape, x.dtype)
        else:
            keep = _rng(self._rng).random(x.shape) >= self.p
            self._scale = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._scale

    def backward(self, grad_output, need_input_grad: bool = True):
        if not need_input_grad:
            return None
        if self._scale is None:
            return grad_output
        return grad_output * self._scale

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._in_shape = None
        self._cached_out = None
        self._shape_key = None

    def _out_shape(self, shape):
        nd = len(shape)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < max(nd, 1) and 0 <= e < max(nd, 1)) or s > e:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) "
                             f"does not fit an input of shape {tuple(shape)}")
        return tuple(shape[:s]) + (int(np.prod(shape[s:e + 1])),) + tuple(shape[e + 1:])

    def forward(self, x):
        shape = x.shape
        if shape != self._in_shape or self._shape_key != (self.start_dim, self.end_dim):
            self._cached_out = self._out_shape(shape)
            self._shape_key = (self.start_dim, self.end_dim)
        self._in_shape = shape
        return x.reshape(self._cached_out)

    def backward(self, grad_output, need_input_grad: bool = True):
        if not need_input_grad:
            return None
        return grad_output.reshape(self._in_shape)

    def _shape_info(self, in_shape, rf, jump):
        return self._out_shape(in_shape), 0, 0, (), ()


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through pyconv's own GEMM (NumPy's only if the extension lacks it)."""
    mm = getattr(_core, "matmul", None)
    if mm is None:
        return np.matmul(a, b)
    return mm(a, b)


class Linear(Module):
    """y = x W^T + b on (..., in_features) inputs, using pyconv's GEMM."""

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        dt = _dtype(dtype)
        g = _rng(rng)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(g, bound, (out_features, in_features), dt))
        self.bias = Parameter(_uniform(g, bound, (out_features,), dt)) if bias else None
        self._x2 = None
        self._in_shape = None

    def forward(self, x):
        w = self.weight.data
        if not (type(x) is np.ndarray and x.dtype == w.dtype and x.dtype in F._FLOATS):
            F._check_array(x, "input")
            F._check_same_dtype(x, weight=w)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input of shape {x.shape} does not end in in_features={self.in_features}")
        self._in_shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        self._x2 = x2
        y = _matmul(x2, w.T)
        if self.bias is not None:
            y += self.bias.data
        return y if x.ndim == 2 else y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad_output, need_input_grad: bool = True):
        if self._x2 is None:
            raise RuntimeError("Linear.backward called before forward")
        g2 = np.asarray(grad_output)
        if g2.ndim != 2 or g2.shape[1] != self.out_features:
            g2 = g2.reshape(-1, self.out_features)
        if self.weight.requires_grad:
            self.weight._accumulate_fresh(_matmul(g2.T, self._x2))
        if self.bias is not None and self.bias.requires_grad:
            self.bias._accumulate_fresh(g2.sum(axis=0, dtype=np.float64).astype(g2.dtype))
        if not need_input_grad:
            return None
        return _matmul(g2, self.weight.data).reshape(self._in_shape)

    def _shape_info(self, in_shape, rf, jump):
        if in_shape[-1] != self.in_features:
            raise ValueError(f"Linear: input of shape {in_shape} does not end in in_features={self.in_features}")
        out = tuple(in_shape[:-1]) + (self.out_features,)
        macs = int(np.prod(in_shape[:-1])) * self.in_features * self.out_features
        keep = len(in_shape) > 2  # Linear on (N, C, ..., F) keeps the middle dims' fields
        return out, _n_params(self), macs, (rf if keep else ()), (jump if keep else ())

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ------------------------------------------------------------------ losses


class CrossEntropyLoss:
    """Softmax cross entropy over class indices: ``loss = crit(logits, targets)`` with
    logits (N, C) and integer targets (N,) returns a float (the mean over the batch with
    reduction='mean', else the sum); ``crit.backward()`` returns d loss / d logits."""

    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._cache = None
        self._rows = None  # np.arange(N), kept between calls

    def __call__(self, logits, targets):
        return self.forward(logits, targets)

    def forward(self, logits, targets) -> float:
        F._check_array(logits, "logits")
        if logits.ndim != 2:
            raise ValueError(f"logits must be (N, C), got shape {logits.shape}")
        t = np.asarray(targets)
        if t.dtype.kind not in "iu":
            raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
        n, c = logits.shape
        if t.shape != (n,):
            raise ValueError(f"targets must have shape ({n},), got {t.shape}")
        if n and (t.min() < 0 or t.max() >= c):
            raise IndexError(f"targets must lie in [0, {c}), got values in [{t.min()}, {t.max()}]")
        # in place on one float64 copy: the same operations (and bits) as
        # z = x - max(x); logp = z - log(sum(exp(z)))
        logp = logits.astype(np.float64)
        logp -= logp.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        rows = self._rows
        if rows is None or rows.shape[0] != n:
            rows = self._rows = np.arange(n)
        total = -logp[rows, t].sum()
        self._cache = (logp, t, logits.dtype)
        if self.reduction == "mean":
            return float(total / n) if n else float("nan")
        return float(total)

    def backward(self) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before the loss was computed")
        logp, t, dt = self._cache
        n = logp.shape[0]
        g = np.exp(logp)
        g[self._rows, t] -= 1.0
        if self.reduction == "mean" and n:
            # divided in float64, rounded once to the logits' dtype (as g /= n; g.astype(dt))
            return np.divide(g, n, out=np.empty(g.shape, dt), casting="same_kind")
        return g.astype(dt)


class MSELoss:
    """Mean squared error: ``loss = crit(pred, target)`` returns a float; ``backward()``
    returns d loss / d pred."""

    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._cache = None

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def forward(self, pred, target) -> float:
        F._check_array(pred, "pred")
        target = np.asarray(target)
        if target.shape != pred.shape:
            raise ValueError(f"target shape {target.shape} differs from pred shape {pred.shape}")
        d = pred.astype(np.float64) - target
        self._cache = (d, pred.dtype)
        s = float((d * d).sum())
        return s / d.size if self.reduction == "mean" and d.size else s

    def backward(self) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("MSELoss.backward called before the loss was computed")
        d, dt = self._cache
        g = 2.0 * d
        if self.reduction == "mean" and d.size:
            g /= d.size
        return g.astype(dt)


# ------------------------------------------------------------------ summary


def _leaves(model: Module, prefix=""):
    """The modules that do the work, in execution order (Sequentials flattened)."""
    if isinstance(model, Sequential):
        for name, m in model._modules.items():
            yield from _leaves(m, f"{prefix}.{name}" if prefix else name)
    else:
        yield (prefix or type(model).__name__), model


def _fmt_tuple(t):
    if not t:
        return "-"
    return "x".join(str(v) for v in t)


def summary(model: Module, input_shape, print_fn=print) -> List[dict]:
    """Per-layer output shape, parameter count, multiply-accumulates, receptive field
    and jump for an input of `input_shape` (batch dimension included), from the size
    formulas alone (the model is not run).

    Receptive field r and jump j per spatial dim start at 1 and follow
    j_out = j_in * s and r_out = r_in + D*(k-1) * j_in for convs and pools; other
    layers keep them. After Flatten (or a Linear on (N, F)) there is no spatial dim
    left and both are empty tuples. MACs count the whole batch of `input_shape`: conv
    N*C_out*prod(out)*C_in/groups*prod(k), linear rows*in*out, batch norm one per
    element (the folded scale and shift); ReLU, pooling and the rest count 0.
    Prints the table through `print_fn` (None: silent) and returns one dict per layer
    with keys name, type, output_shape, params, macs, receptive_field, jump.
    """
    shape = tuple(int(v) for v in input_shape)
    nsp = max(len(shape) - 2, 0)
    rf: tuple = (1,) * nsp
    jump: tuple = (1,) * nsp
    rows = []
    for name, m in _leaves(model):
        out, params, macs, rf, jump = m._shape_info(shape, rf, jump)
        rows.append({
            "name": name,
            "type": type(m).__name__,
            "output_shape": tuple(int(v) for v in out),
            "params": int(params),
            "macs": int(macs),
            "receptive_field": tuple(rf),
            "jump": tuple(jump),
        })
        shape = tuple(out)
    if print_fn is not None:
        print_fn(_table(rows, model))
    return rows


def _table(rows, model) -> str:
    head = ("Layer (type)", "Output Shape", "Param #", "MACs", "Receptive field", "Jump")
    body = [(f"{r['name']} ({r['type']})", str(r["output_shape"]), f"{r['params']:,}", f"{r['macs']:,}",
             _fmt_tuple(r["receptive_field"]), _fmt_tuple(r["jump"])) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    total_w = sum(widths) + 2 * (len(widths) - 1)
    out = [f'Model: "{type(model).__name__}"', "_" * total_w, line(head), "=" * total_w]
    for b in body:
        out.append(line(b))
    out.append("=" * total_w)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(int(np.size(b)) for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    out.append(f"Total params: {total:,}")
    out.append(f"Trainable params: {trainable:,}")
    out.append(f"Non-trainable params: {total - trainable:,} (+ {buffers:,} running-statistic values)")
    out.append(f"Total MACs (forward, this batch): {sum(r['macs'] for r in rows):,}")
    out.append("_" * total_w)
    return "\n".join(out)
