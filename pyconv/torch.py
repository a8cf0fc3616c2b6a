"""Optional PyTorch adapter: pyconv kernels behind torch.autograd.Functions and nn.Modules.

    import pyconv.torch as pt
    model = torch.nn.Sequential(pt.Conv2d(3, 16, 3, padding=1), pt.BatchNorm2d(16), ...)
    pt.convert(existing_model)   # swaps its Conv2d / MaxPool2d / BatchNorm2d in place

The modules subclass the torch ones (same constructor, parameters, state_dict and
initialisation) and only replace forward with pyconv's kernels, so a model can swap
them layer by layer. CPU float32/float64 tensors only. Importing this module imports
torch; ``import pyconv`` never does.
"""
from __future__ import annotations

import numpy as np
import torch

from . import functional as F

__all__ = [
    "Conv2dFunction", "Conv1dFunction", "MaxPool2dFunction", "BatchNormFunction",
    "Conv2d", "Conv1d", "MaxPool2d", "BatchNorm2d", "BatchNorm1d", "convert",
]

_DTYPES = (torch.float32, torch.float64)


def _np(t):
    """A NumPy view (or contiguous copy) of a CPU float tensor, detached."""
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError(f"pyconv kernels run on CPU tensors, got a tensor on {t.device}")
    if t.dtype not in _DTYPES and t.dtype != torch.int64:
        raise TypeError(f"pyconv kernels take float32 or float64 tensors, got {t.dtype}")
    return t.detach().numpy()


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


# ------------------------------------------------------------------ functions


def _conv_forward(fwd, ctx, x, weight, bias, stride, padding, dilation, groups):
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None
    return _t(fwd(_np(x), _np(weight), _np(bias), stride, padding, dilation, groups))


def _conv_backward(bwd, ctx, grad_output):
    x, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = (bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[2]))
    if not any(mask):
        return (None,) * 7
    gi, gw, gb = bwd(_np(grad_output.contiguous()), _np(x), _np(weight), *ctx.conf, output_mask=mask)
    return _t(gi), _t(gw), _t(gb), None, None, None, None


class Conv2dFunction(torch.autograd.Function):
    """conv2d(x, weight, bias, stride, padding, dilation, groups) on pyconv's kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        return _conv_forward(F.conv2d, ctx, x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        return _conv_backward(F.conv2d_backward, ctx, grad_output)


class Conv1dFunction(torch.autograd.Function):
    """conv1d on pyconv's kernels (padding may also be 'causal')."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        return _conv_forward(F.conv1d, ctx, x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        return _conv_backward(F.conv1d_backward, ctx, grad_output)


class MaxPool2dFunction(torch.autograd.Function):
    """max_pool2d -> (out, indices); the gradient scatters through the indices."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, idx = F.max_pool2d(_np(x), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        idx_t = _t(idx)
        ctx.save_for_backward(idx_t)
        ctx.in_shape = tuple(x.shape)
        ctx.mark_non_differentiable(idx_t)
        return _t(out), idx_t

    @staticmethod
    def backward(ctx, grad_output, grad_indices=None):
        (idx,) = ctx.saved_tensors
        gi = F.max_pool2d_backward(_np(grad_output.contiguous()), _np(idx), ctx.in_shape)
        return _t(gi), None, None, None, None, None


class BatchNormFunction(torch.autograd.Function):
    """batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps);
    running statistics (contiguous CPU tensors) are updated in place."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, training, momentum, eps):
        out = F.batch_norm(_np(x), _np(running_mean), _np(running_var), _np(weight), _np(bias),
                           training=training, momentum=momentum, eps=eps)
        ctx.save_for_backward(x, weight, running_mean if not training else None,
                              running_var if not training else None)
        ctx.training = training
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return _t(out)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, rm, rv = ctx.saved_tensors
        gi, gw, gb = F.batch_norm_backward(_np(grad_output.contiguous()), _np(x), _np(weight), _np(rm), _np(rv),
                                           training=ctx.training, eps=ctx.eps)
        return _t(gi), None, None, _t(gw), (_t(gb) if ctx.has_bias else None), None, None, None


# ------------------------------------------------------------------ modules


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d with pyconv's kernels (padding_mode 'zeros' only)."""

    def forward(self, input):
        if self.padding_mode != "zeros":
            raise ValueError(f"pyconv Conv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        return Conv2dFunction.apply(input, self.weight, self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)


class Conv1d(torch.nn.Conv1d):
    """torch.nn.Conv1d with pyconv's kernels (padding_mode 'zeros' only)."""

    def forward(self, input):
        if self.padding_mode != "zeros":
            raise ValueError(f"pyconv Conv1d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        pad = self.padding if isinstance(self.padding, str) else self.padding[0]
        return Conv1dFunction.apply(input, self.weight, self.bias, self.stride[0], pad,
                                    self.dilation[0], self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d with pyconv's kernels (return_indices as torch)."""

    def forward(self, input):
        stride = self.stride if self.stride is not None else self.kernel_size
        out, idx = MaxPool2dFunction.apply(input, self.kernel_size, stride, self.padding, self.dilation,
                                           self.ceil_mode)
        return (out, idx) if self.return_indices else out


class _BatchNormMixin:
    def forward(self, input):
        # torch's rules: which statistics normalise, which running stats are updated
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        rm = self.running_mean if keep else None
        rv = self.running_var if keep else None
        return BatchNormFunction.apply(input, rm, rv, self.weight, self.bias, use_batch, momentum, self.eps)


class BatchNorm2d(_BatchNormMixin, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d with pyconv's kernels; running statistics updated in place."""


class BatchNorm1d(_BatchNormMixin, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d with pyconv's kernels."""


_SWAP = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.Conv1d: Conv1d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm1d: BatchNorm1d,
}


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every plain torch Conv1d/Conv2d/MaxPool2d/BatchNorm1d/BatchNorm2d in `model`
    (recursively, in place) for the pyconv-backed subclass. Parameters, buffers and
    state_dict keys are untouched. Returns the model."""
    for m in model.modules():
        new = _SWAP.get(type(m))
        if new is not None:
            m.__class__ = new
    return model
