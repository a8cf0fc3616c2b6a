"""NumPy reference implementation of every op, forward and backward.

This is the oracle the tests compare the C++ kernels against. It is public: users may
call it to check results. It accumulates in float64 and returns arrays of the input
dtype. It mirrors the functional API's names and arguments (padding in every form,
unbatched inputs) and the conventions in the design: NCHW, cross-correlation, flat
h*W + w pooling indices, biased variance to normalise and unbiased into running_var.
"""
from __future__ import annotations

import numpy as np

from . import shapes as _shapes

# ============================== conv ==============================
# Convolution by explicit unfolding: for each kernel tap (kh, kw) the strided slice of
# the zero-padded input that the tap sees, then a per-group tensor contraction in
# float64. Weights (C_out, C_in/groups, kH, kW), cross-correlation.


def _conv_setup(input, weight, stride, padding, dilation, groups, nd):
    x = np.asarray(input)
    w = np.asarray(weight)
    batched = x.ndim == nd + 2
    if not batched and x.ndim != nd + 1:
        raise ValueError(f"input must have {nd + 1} or {nd + 2} dimensions, got shape {x.shape}")
    if w.ndim != nd + 2:
        raise ValueError(f"weight must have {nd + 2} dimensions, got shape {w.shape}")
    if not batched:
        x = x[None]
    if nd == 1:
        x = x[:, :, None, :]
        w = w[:, :, None, :]
    s = _shapes.ntuple(stride, nd, "stride", minimum=1)
    d = _shapes.ntuple(dilation, nd, "dilation", minimum=1)
    k = w.shape[2:] if nd == 2 else w.shape[3:]
    sizes = x.shape[2:] if nd == 2 else x.shape[3:]
    pads = _shapes.resolve_conv_padding(padding, sizes, k, s, d)
    _shapes.conv_output_size(tuple(sizes), tuple(k), s, pads, d)
    if nd == 1:
        s, d, pads = (1,) + s, (1,) + d, [(0, 0)] + list(pads)
    groups = int(groups)
    if groups < 1 or x.shape[1] % groups or w.shape[0] % groups or w.shape[1] != x.shape[1] // groups:
        raise ValueError(f"inconsistent channels/groups: input {x.shape}, weight {w.shape}, groups={groups}")
    return x, w, s, d, pads, groups, batched


def _tap_slices(xp_shape, kh, kw, s, d, out):
    """Index of the padded-input slice that kernel tap (kh, kw) sees for every output."""
    return (slice(None), slice(None),
            slice(kh * d[0], kh * d[0] + s[0] * (out[0] - 1) + 1, s[0]),
            slice(kw * d[1], kw * d[1] + s[1] * (out[1] - 1) + 1, s[1]))


def _out_size(x, w, s, d, pads):
    return tuple((x.shape[2 + i] + pads[i][0] + pads[i][1] - d[i] * (w.shape[2 + i] - 1) - 1) // s[i] + 1
                 for i in range(2))


def _conv_forward(input, weight, bias, stride, padding, dilation, groups, nd):
    x, w, s, d, pads, groups, batched = _conv_setup(input, weight, stride, padding, dilation, groups, nd)
    dtype = np.result_type(x.dtype, w.dtype)
    out = _out_size(x, w, s, d, pads)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pads[0], pads[1]))
    w64 = w.astype(np.float64)
    n, cin = x.shape[:2]
    cout = w.shape[0]
    cg, mg = cin // groups, cout // groups
    y = np.zeros((n, cout) + out, dtype=np.float64)
    for kh in range(w.shape[2]):
        for kw in range(w.shape[3]):
            tap = xp[_tap_slices(xp.shape, kh, kw, s, d, out)]
            for g in range(groups):
                y[:, g * mg:(g + 1) * mg] += np.einsum(
                    "ncij,oc->noij", tap[:, g * cg:(g + 1) * cg], w64[g * mg:(g + 1) * mg, :, kh, kw])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    if nd == 1:
        y = y[:, :, 0, :]
    if not batched:
        y = y[0]
    return y.astype(dtype)


def _conv_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask, nd):
    x, w, s, d, pads, groups, batched = _conv_setup(input, weight, stride, padding, dilation, groups, nd)
    dtype = np.result_type(x.dtype, w.dtype)
    out = _out_size(x, w, s, d, pads)
    dy = np.asarray(grad_output, dtype=np.float64)
    if not batched:
        dy = dy[None]
    if nd == 1:
        dy = dy[:, :, None, :]
    n, cin, H, W = x.shape
    cout = w.shape[0]
    cg, mg = cin // groups, cout // groups
    if dy.shape != (n, cout) + out:
        raise ValueError(f"grad_output must have shape {(n, cout) + out}, got {dy.shape}")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pads[0], pads[1]))
    w64 = w.astype(np.float64)
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape, dtype=np.float64)
    for kh in range(w.shape[2]):
        for kw in range(w.shape[3]):
            idx = _tap_slices(xp.shape, kh, kw, s, d, out)
            tap = xp[idx]
            for g in range(groups):
                dyg = dy[:, g * mg:(g + 1) * mg]
                view = dxp[idx]  # basic slicing: a view, so += writes into dxp
                view[:, g * cg:(g + 1) * cg] += np.einsum("noij,oc->ncij", dyg, w64[g * mg:(g + 1) * mg, :, kh, kw])
                dw[g * mg:(g + 1) * mg, :, kh, kw] = np.einsum("noij,ncij->oc", dyg, tap[:, g * cg:(g + 1) * cg])
    dx = dxp[:, :, pads[0][0]:pads[0][0] + H, pads[1][0]:pads[1][0] + W]
    db = dy.sum(axis=(0, 2, 3))
    if nd == 1:
        dx = dx[:, :, 0, :]
        dw = dw[:, :, 0, :]
    if not batched:
        dx = dx[0]
    gi = dx.astype(dtype) if output_mask[0] else None
    gw = dw.astype(dtype) if output_mask[1] else None
    gb = db.astype(dtype) if output_mask[2] else None
    return gi, gw, gb


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 2D convolution (cross-correlation), float64 accumulation."""
    return _conv_forward(input, weight, bias, stride, padding, dilation, groups, 2)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 1D convolution; padding may also be 'causal'."""
    return _conv_forward(input, weight, bias, stride, padding, dilation, groups, 1)


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True)):
    """Reference gradients (grad_input, grad_weight, grad_bias); False mask slots are None."""
    return _conv_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask, 2)


def conv1d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True)):
    return _conv_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask, 1)


# ============================ end conv ============================

# ============================== pool ==============================

# ============================ end pool ============================

# ============================ batchnorm ===========================


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch norm over every axis but 1, in float64; updates running stats in place when
    training (unbiased variance into running_var). Returns the input dtype."""
    x = np.asarray(input, dtype=np.float64)
    c = x.shape[1]
    axes, bshape = _bn_axes(x)
    if training:
        n = x.size // c if c else 0
        if n < 2:
            raise ValueError("expected more than 1 value per channel when training")
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
        if running_mean is not None:
            running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean
        if running_var is not None:
            running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * var * n / (n - 1)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, dtype=np.float64)
    out = (x - mean.reshape(bshape)) * (invstd * w).reshape(bshape) + b.reshape(bshape)
    return out.astype(input.dtype)


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=1e-5):
    """(grad_input, grad_weight, grad_bias) of batch_norm, in float64; grad_weight and
    grad_bias are None when weight is None (taken as 1)."""
    x = np.asarray(input, dtype=np.float64)
    dy = np.asarray(grad_output, dtype=np.float64)
    c = x.shape[1]
    axes, bshape = _bn_axes(x)
    if training:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    gb = dy.sum(axis=axes)
    gw = (dy * xhat).sum(axis=axes)
    a = (w * invstd).reshape(bshape)
    if training:
        n = x.size // c
        dx = a * (dy - (gb / n).reshape(bshape) - xhat * (gw / n).reshape(bshape))
    else:
        dx = a * dy
    dt = input.dtype
    if weight is None:
        return dx.astype(dt), None, None
    return dx.astype(dt), gw.astype(dt), gb.astype(dt)


# ========================== end batchnorm =========================
