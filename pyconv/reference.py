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
# Max-pool semantics: a window scans its in-bounds taps in row-major order (implicit
# padding is -inf and never wins); the running maximum starts at the first in-bounds tap
# and is replaced by a tap v when `v > max or isnan(v)`: ties keep the first tap, a NaN
# window reports its last NaN, an all -inf window its first in-bounds element. Indices
# are flat h*W + w (1D: l) within each (n, c) plane of the unpadded input.


def _pool_args(nd, kernel_size, stride, padding, dilation):
    k = _shapes.ntuple(kernel_size, nd, "kernel_size")
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _shapes.ntuple(stride, nd, "stride")
    p = _shapes.resolve_pool_padding(padding, nd)
    d = _shapes.ntuple(dilation, nd, "dilation")
    return k, s, p, d


def _as_2d(x, nd, name):
    """(N, C, H, W) view of a batched or unbatched 1D/2D array, and whether it was unbatched."""
    x = np.asarray(x)
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"{name} must have {nd + 1} or {nd + 2} dimensions, got shape {x.shape}")
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None]
    if nd == 1:
        x = x[:, :, None, :]
    return x, unbatched


def _from_2d(y, nd, unbatched):
    if nd == 1:
        y = y[:, :, 0, :]
    return y[0] if unbatched else y


def _max_pool(input, nd, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    x, unbatched = _as_2d(input, nd, "input")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"input must have dtype float32 or float64, got {x.dtype}")
    k, s, p, d = _pool_args(nd, kernel_size, stride, padding, dilation)
    if nd == 1:
        k, s, p, d = (1,) + k, (1,) + s, (0,) + p, (1,) + d
    N, C, H, W = x.shape
    Ho = _shapes.pool_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    Wo = _shapes.pool_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    idx = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for oh in range(Ho):
        for ow in range(Wo):
            best = None
            best_i = None
            for i in range(k[0]):
                ih = oh * s[0] - p[0] + i * d[0]
                if not 0 <= ih < H:
                    continue
                for j in range(k[1]):
                    iw = ow * s[1] - p[1] + j * d[1]
                    if not 0 <= iw < W:
                        continue
                    v = x[:, :, ih, iw]
                    flat = ih * W + iw
                    if best is None:
                        best = v.copy()
                        best_i = np.full((N, C), flat, dtype=np.int64)
                    else:
                        take = (v > best) | np.isnan(v)
                        best = np.where(take, v, best)
                        best_i = np.where(take, flat, best_i)
            if best is None:
                raise ValueError(f"pooling window ({oh}, {ow}) covers no input element")
            out[:, :, oh, ow] = best
            idx[:, :, oh, ow] = best_i
    out = _from_2d(out, nd, unbatched)
    idx = _from_2d(idx, nd, unbatched)
    return (out, idx) if return_indices else out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(input, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(input, 1, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _scatter(values, indices, nd, plane_shape, accumulate, what):
    v, unbatched = _as_2d(values, nd, "values")
    i, _ = _as_2d(indices, nd, "indices")
    if i.dtype != np.int64:
        raise TypeError(f"indices must have dtype int64, got {i.dtype}")
    if i.shape != v.shape:
        raise ValueError(f"indices must have the shape of the values {v.shape}, got {i.shape}")
    N, C = v.shape[:2]
    plane = int(np.prod(plane_shape))
    vf = v.reshape(N * C, v.shape[2] * v.shape[3])
    jf = i.reshape(N * C, v.shape[2] * v.shape[3])
    if jf.size and (jf.min() < 0 or jf.max() >= plane):
        raise IndexError(f"indices out of range [0, {plane}) for {what}")
    out = np.zeros((N * C, plane), dtype=np.float64 if accumulate else v.dtype)
    for r in range(N * C):
        if accumulate:
            for j in range(vf.shape[1]):           # in scan order, as the kernels do
                out[r, jf[r, j]] += vf[r, j]
        else:
            # the last write in scan order wins: keep each index's last occurrence
            rev = jf[r, ::-1]
            uniq, first_in_rev = np.unique(rev, return_index=True)
            out[r, uniq] = vf[r, ::-1][first_in_rev]
    out = out.astype(v.dtype).reshape((N, C) + tuple(plane_shape))
    if nd == 1:
        out = out.reshape(N, C, 1, plane_shape[-1])
    return _from_2d(out, nd, unbatched)


def _backward(grad_output, indices, input_shape, nd):
    input_shape = tuple(int(v) for v in input_shape)
    g = np.asarray(grad_output)
    if len(input_shape) != g.ndim or input_shape[:-nd] != g.shape[:-nd]:
        raise ValueError(f"input_shape {input_shape} does not match grad_output {g.shape}")
    return _scatter(g, indices, nd, input_shape[-nd:], True, "the input plane")


def max_pool2d_backward(grad_output, indices, input_shape):
    return _backward(grad_output, indices, input_shape, 2)


def max_pool1d_backward(grad_output, indices, input_shape):
    return _backward(grad_output, indices, input_shape, 1)


def _unpool(input, indices, nd, kernel_size, stride, padding, output_size):
    x = np.asarray(input)
    k, s, p, _ = _pool_args(nd, kernel_size, stride, padding, 1)
    default = [(x.shape[x.ndim - nd + i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(nd)]
    if output_size is None:
        size = default
    else:
        size = [output_size] if isinstance(output_size, int) else list(output_size)
        if len(size) == x.ndim:
            if tuple(size[:-nd]) != x.shape[:-nd]:
                raise ValueError(f"output_size {output_size} does not match input {x.shape}")
            size = size[-nd:]
        if len(size) != nd:
            raise ValueError(f"output_size must have {nd} or {x.ndim} entries, got {output_size}")
        for i in range(nd):
            if not (default[i] - s[i] < size[i] < default[i] + s[i]):
                raise ValueError(f"output_size {output_size} is not within a stride of {default}")
    if any(v < 1 for v in size):
        raise ValueError(f"unpool output size {size} must be positive")
    return _scatter(x, indices, nd, tuple(size), False, "the output plane")


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    return _unpool(input, indices, 2, kernel_size, stride, padding, output_size)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    return _unpool(input, indices, 1, kernel_size, stride, padding, output_size)


# ============================ end pool ============================

# ============================ batchnorm ===========================


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _bn_stats(x, axes, bshape, training, running_mean, running_var):
    """Mean and biased variance (float64) the normalisation uses: the batch's when
    training (two-pass), else the running statistics, which are then required."""
    if training:
        mean = x.mean(axis=axes)
        return mean, ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required when training=False")
    return np.asarray(running_mean, dtype=np.float64), np.asarray(running_var, dtype=np.float64)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch norm over every axis but 1, in float64; updates running stats in place when
    training (unbiased variance into running_var). Returns the input dtype."""
    x = np.asarray(input, dtype=np.float64)
    c = x.shape[1]
    axes, bshape = _bn_axes(x)
    n = x.size // c if c else 0
    if training and c and n < 2:  # with no channels there is no statistic to compute
        raise ValueError("expected more than 1 value per channel when training")
    mean, var = _bn_stats(x, axes, bshape, training, running_mean, running_var)
    if training:
        if running_mean is not None:
            running_mean[...] = (1.0 - momentum) * running_mean.astype(np.float64) + momentum * mean
        if running_var is not None:
            running_var[...] = (1.0 - momentum) * running_var.astype(np.float64) + momentum * var * n / (n - 1)
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
    mean, var = _bn_stats(x, axes, bshape, training, running_mean, running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    gb = dy.sum(axis=axes)
    gw = (dy * xhat).sum(axis=axes)
    a = (w * invstd).reshape(bshape)
    if training:
        n = max(x.size // c, 1) if c else 1  # C == 0: dx is empty either way
        dx = a * (dy - (gb / n).reshape(bshape) - xhat * (gw / n).reshape(bshape))
    else:
        dx = a * dy
    dt = input.dtype
    if weight is None:
        return dx.astype(dt), None, None
    return dx.astype(dt), gw.astype(dt), gb.astype(dt)


# ========================== end batchnorm =========================
