"""The public functional API (names and defaults mirror torch.nn.functional).

The Python layer normalises arguments (padding forms, unbatched inputs), computes the
expected output shape from the size formula, calls the C++ kernel and checks the
kernel's output shape against it. The C++ entry points validate again on their own.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core
from . import shapes as _shapes

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# ============================== common ==============================


def _check_array(x, name: str) -> np.ndarray:
    """x must be a float32/float64 ndarray (TypeError otherwise)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return x


def _check_same_dtype(ref: np.ndarray, **others) -> None:
    """Every non-None array in `others` must share ref's dtype (TypeError otherwise)."""
    for name, arr in others.items():
        if arr is None:
            continue
        _check_array(arr, name)
        if arr.dtype != ref.dtype:
            raise TypeError(
                f"all floating inputs must share one dtype: {name} is {arr.dtype}, expected {ref.dtype}"
            )


def _check_ndim(x: np.ndarray, name: str, *allowed: int) -> None:
    if x.ndim not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {x.shape}")


def _check_output(out: np.ndarray, expected: tuple, what: str) -> np.ndarray:
    if tuple(out.shape) != tuple(expected):
        raise RuntimeError(f"{what}: kernel returned shape {out.shape}, size formula says {expected}")
    return out


def kernel_info() -> dict:
    """ISA in use, thread count, whether OpenMP is compiled in, and the version."""
    return dict(_core.kernel_info())


def set_num_threads(n: int) -> None:
    """Threads each kernel may use (n >= 1)."""
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())


# ============================== conv ==============================


def _conv_args(input, weight, bias, stride, padding, dilation, groups, nd, name):
    """Checks and normalises a conv call. Returns (x4, w4, bias, params, out_shape4, batched)
    with x4/w4 the 4D NCHW views (1D: H = 1) and params the 9 normalised ints after the
    arrays in _core's signature (sh, sw, ph_lo, ph_hi, pw_lo, pw_hi, dh, dw, groups)."""
    _check_array(input, "input")
    _check_array(weight, "weight")
    _check_same_dtype(input, weight=weight, bias=bias)
    _check_ndim(input, "input", nd + 1, nd + 2)
    _check_ndim(weight, "weight", nd + 2)
    if bias is not None:
        _check_ndim(bias, "bias", 1)
    if not _shapes._is_int(groups):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    batched = input.ndim == nd + 2
    x = input if batched else input[None]
    cin, cout = x.shape[1], weight.shape[0]
    if cin % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({cin}) and the output channels ({cout})")
    if weight.shape[1] != cin // groups:
        raise ValueError(f"weight.shape[1] must be input channels / groups = {cin // groups}, "
                         f"got weight of shape {weight.shape}")
    if bias is not None and bias.shape[0] != cout:
        raise ValueError(f"bias must have shape ({cout},), got {bias.shape}")
    s = _shapes.ntuple(stride, nd, "stride", minimum=1)
    d = _shapes.ntuple(dilation, nd, "dilation", minimum=1)
    k = tuple(weight.shape[2:])
    for kk in k:
        if kk < 1:
            raise ValueError(f"kernel_size must be >= 1, got weight of shape {weight.shape}")
    sizes = tuple(x.shape[2:])
    pads = _shapes.resolve_conv_padding(padding, sizes, k, s, d)
    out = _shapes.conv_output_size(sizes, k, s, pads, d)
    if nd == 1:
        x = x[:, :, None, :]
        weight = weight[:, :, None, :]
        s, d, pads, out = (1,) + s, (1,) + d, [(0, 0)] + list(pads), (1,) + tuple(out)
    params = (s[0], s[1], pads[0][0], pads[0][1], pads[1][0], pads[1][1], d[0], d[1], groups)
    if max(params + tuple(out)) > 2**63 - 1:
        raise OverflowError(f"{name}: stride, padding, dilation or output size exceed int64 "
                            f"(stride={s}, padding={pads}, dilation={d}, output={out})")
    return x, weight, params, (x.shape[0], cout) + tuple(out), batched


_ALGORITHMS = ("auto", "pointwise", "depthwise", "winograd", "winograd_1d", "generic")


def _check_algorithm(algorithm, name):
    if not isinstance(algorithm, str):
        raise TypeError(f"{name}: algorithm must be a str, got {type(algorithm).__name__}")
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"{name}: algorithm must be one of {', '.join(map(repr, _ALGORITHMS))}, "
                         f"got {algorithm!r}")
    return algorithm


def _run_forced(fn, algorithm, name, *args):
    """Calls a _core convolution entry point with `algorithm` as its path; _core's error for
    a path that cannot run the parameters (which says what the path needs) is reworded for
    the public argument."""
    try:
        return fn(*args, algorithm)
    except ValueError as e:
        prefix = f"path '{algorithm}' does not support"
        msg = str(e)
        if msg.startswith(prefix):
            raise ValueError(f"{name}: algorithm={algorithm!r} does not support{msg[len(prefix):]}; "
                             "use algorithm='auto'") from None
        raise


def _conv_forward(input, weight, bias, stride, padding, dilation, groups, nd, name, algorithm="auto"):
    _check_algorithm(algorithm, name)
    x, w, params, out_shape, batched = _conv_args(input, weight, bias, stride, padding, dilation,
                                                  groups, nd, name)
    y = _check_output(_run_forced(_core.conv2d_forward, algorithm, name, x, w, bias, *params),
                      out_shape, name)
    if nd == 1:
        y = y[:, :, 0, :]
    return y if batched else y[0]


def _conv_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask, nd, name,
                   algorithm="auto"):
    _check_algorithm(algorithm, name)
    x, w, params, out_shape, batched = _conv_args(input, weight, None, stride, padding, dilation,
                                                  groups, nd, name)
    _check_array(grad_output, "grad_output")
    _check_same_dtype(input, grad_output=grad_output)
    mask = tuple(bool(m) for m in output_mask)
    if len(mask) != 3:
        raise ValueError(f"output_mask must have 3 entries, got {output_mask!r}")
    want = out_shape if batched else out_shape[1:]
    if nd == 1:
        want = want[:-2] + want[-1:]
    if tuple(grad_output.shape) != tuple(want):
        raise ValueError(f"grad_output must have shape {tuple(want)}, got {grad_output.shape}")
    dy = grad_output if batched else grad_output[None]
    if nd == 1:
        dy = dy[:, :, None, :]
    gi, gw, gb = _run_forced(_core.conv2d_backward, algorithm, name, dy, x, w, *params, *mask)
    if gi is not None:
        gi = _check_output(gi, x.shape, name + " grad_input")
        if nd == 1:
            gi = gi[:, :, 0, :]
        if not batched:
            gi = gi[0]
    if gw is not None:
        gw = _check_output(gw, w.shape, name + " grad_weight")
        if nd == 1:
            gw = gw[:, :, 0, :]
    if gb is not None:
        gb = _check_output(gb, (w.shape[0],), name + " grad_bias")
    return gi, gw, gb


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto"):
    """2D convolution (cross-correlation) of NCHW or CHW input with weight
    (C_out, C_in/groups, kH, kW). padding: int, (ph, pw), ((top, bottom), (left, right)),
    'valid' or 'same'. algorithm: 'auto' (the measured candidate list) or a forced lowering,
    see _ALGORITHMS; 'generic' sums every output in the direct order, 'winograd' (which
    'auto' takes for 3x3 stride-1 convolutions with enough channels) and 'winograd_1d'
    (kernels 1x2 and 1x3, stride 1 along the width; 'auto' takes it on AVX-512 for a
    dilation of 1, 2, 4 or a multiple of 8 with enough channels) do not."""
    return _conv_forward(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d", algorithm)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto"):
    """1D convolution of NCL or CL input with weight (C_out, C_in/groups, k). padding: int,
    (p,), (lo, hi), ((lo, hi),), 'valid', 'same' or 'causal'. algorithm: as for conv2d
    ('winograd_1d' runs 2- and 3-tap kernels at stride 1)."""
    return _conv_forward(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d", algorithm)


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True), *, algorithm="auto"):
    """(grad_input, grad_weight, grad_bias) of conv2d; slots whose mask is False are None."""
    return _conv_backward(grad_output, input, weight, stride, padding, dilation, groups,
                          output_mask, 2, "conv2d_backward", algorithm)


def conv1d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True), *, algorithm="auto"):
    """(grad_input, grad_weight, grad_bias) of conv1d; slots whose mask is False are None."""
    return _conv_backward(grad_output, input, weight, stride, padding, dilation, groups,
                          output_mask, 1, "conv1d_backward", algorithm)


# ============================ end conv ============================

# ============================== pool ==============================
# 1D pooling runs through the 2D kernels with H = 1; unbatched inputs get a batch of 1.


def _pool_params(nd, kernel_size, stride, padding, dilation):
    k = _shapes.ntuple(kernel_size, nd, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        s = k
    else:
        s = _shapes.ntuple(stride, nd, "stride")
    p = _shapes.resolve_pool_padding(padding, nd)
    d = _shapes.ntuple(dilation, nd, "dilation")
    for name, vals in (("kernel_size", k), ("stride", s), ("dilation", d)):
        for v in vals:
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
    return k, s, p, d


def _to_nchw(x, nd, name):
    """(N, C, H, W) view of a batched or unbatched input, and whether it was unbatched."""
    _check_ndim(x, name, nd + 1, nd + 2)
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None]
    if nd == 1:
        x = x[:, :, None, :]
    return x, unbatched


def _from_nchw(y, nd, unbatched):
    if nd == 1:
        y = y[:, :, 0, :]
    return y[0] if unbatched else y


def _check_indices(indices, values, name="indices"):
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of int64, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"{name} must have dtype int64, got {indices.dtype}")
    if indices.shape != values.shape:
        raise ValueError(f"{name} must have the shape of the values {values.shape}, got {indices.shape}")


def _max_pool(input, nd, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    _check_array(input, "input")
    x, unbatched = _to_nchw(input, nd, "input")
    k, s, p, d = _pool_params(nd, kernel_size, stride, padding, dilation)
    sizes = x.shape[4 - nd:]
    out_sp = tuple(_shapes.pool_output_size(sizes[i], k[i], s[i], p[i], d[i], bool(ceil_mode))
                   for i in range(nd))
    if nd == 1:
        k, s, p, d, out_sp = (1,) + k, (1,) + s, (0,) + p, (1,) + d, (1,) + out_sp
    out, idx = _core.max_pool2d(x, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                                bool(ceil_mode), bool(return_indices))
    expected = x.shape[:2] + out_sp
    out = _from_nchw(_check_output(out, expected, "max_pool"), nd, unbatched)
    if not return_indices:
        return out
    idx = _from_nchw(_check_output(idx, expected, "max_pool indices"), nd, unbatched)
    return out, idx


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max-pool over (N, C, H, W) or (C, H, W). With return_indices, also the int64
    argmax switches, flat h*W + w within each plane (ties: first; NaN: last NaN)."""
    return _max_pool(input, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max-pool over (N, C, L) or (C, L); indices are positions l within each row."""
    return _max_pool(input, 1, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _as_shape(shape, name):
    if isinstance(shape, np.ndarray):
        shape = shape.tolist()
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints, got {type(shape).__name__}")
    return tuple(_shapes._as_int(v, name) for v in shape)


def _max_pool_backward(grad_output, indices, input_shape, nd):
    _check_array(grad_output, "grad_output")
    _check_ndim(grad_output, "grad_output", nd + 1, nd + 2)
    _check_indices(indices, grad_output)
    shape = _as_shape(input_shape, "input_shape")
    if len(shape) != grad_output.ndim or shape[:-nd] != grad_output.shape[:-nd]:
        raise ValueError(f"input_shape {shape} must be the full input shape matching grad_output "
                         f"{grad_output.shape} in every non-spatial dimension")
    if any(v < 1 for v in shape[-nd:]):
        raise ValueError(f"input_shape {shape} must have spatial sizes >= 1")
    g, unbatched = _to_nchw(grad_output, nd, "grad_output")
    i, _ = _to_nchw(indices, nd, "indices")
    H, W = (1, shape[-1]) if nd == 1 else shape[-2:]
    gi = _core.max_pool2d_backward(g, i, H, W)
    return _from_nchw(_check_output(gi, g.shape[:2] + (H, W), "max_pool backward"), nd, unbatched)


def max_pool2d_backward(grad_output, indices, input_shape):
    """Gradient of max_pool2d: grad_output scatter-added through the indices into a zero
    array of input_shape (the full input shape, batched or not)."""
    return _max_pool_backward(grad_output, indices, input_shape, 2)


def max_pool1d_backward(grad_output, indices, input_shape):
    """Gradient of max_pool1d (see max_pool2d_backward)."""
    return _max_pool_backward(grad_output, indices, input_shape, 1)


def _unpool_size(x_shape, nd, k, s, p, output_size):
    """Default (L-1)*S - 2*P + F per dim; an explicit output_size (spatial, or the full
    shape) must lie strictly within one stride of the default, as in PyTorch."""
    spatial = x_shape[-nd:]
    default = tuple((spatial[i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(nd))
    if output_size is None:
        size = default
    else:
        size = (_shapes._as_int(output_size, "output_size"),) if _shapes._is_int(output_size) \
            else _as_shape(output_size, "output_size")
        if len(size) == len(x_shape) and len(size) != nd:
            if size[:-nd] != tuple(x_shape[:-nd]):
                raise ValueError(f"output_size {tuple(size)} must match the input {tuple(x_shape)} "
                                 "in every non-spatial dimension")
            size = size[-nd:]
        if len(size) != nd:
            raise ValueError(f"output_size must have {nd} (spatial) or {len(x_shape)} (full shape) "
                             f"entries, got {output_size!r}")
        for i in range(nd):
            if not default[i] - s[i] < size[i] < default[i] + s[i]:
                raise ValueError(
                    f"output_size {tuple(size)}: entry {i} must be strictly between "
                    f"{default[i] - s[i]} and {default[i] + s[i]} (default {default[i]} "
                    f"= ({spatial[i]}-1)*{s[i]} - 2*{p[i]} + {k[i]}, +- stride)")
    if any(v < 1 for v in size):
        raise ValueError(f"unpool output size would be {tuple(size)}: every entry must be >= 1 "
                         f"(default (L-1)*S - 2*P + F = {default})")
    return tuple(size)


def _max_unpool(input, indices, nd, kernel_size, stride, padding, output_size):
    _check_array(input, "input")
    _check_ndim(input, "input", nd + 1, nd + 2)
    _check_indices(indices, input)
    k, s, p, _ = _pool_params(nd, kernel_size, stride, padding, 1)
    size = _unpool_size(input.shape, nd, k, s, p, output_size)
    x, unbatched = _to_nchw(input, nd, "input")
    i, _ = _to_nchw(indices, nd, "indices")
    H, W = (1, size[0]) if nd == 1 else size
    out = _core.max_unpool2d(x, i, H, W)
    return _from_nchw(_check_output(out, x.shape[:2] + (H, W), "max_unpool"), nd, unbatched)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool2d: a zero array with out[plane][indices] = input
    (duplicate indices: the last in scan order wins). output_size is the spatial size
    or the full shape, within one stride of the default (H-1)*S - 2*P + F."""
    return _max_unpool(input, indices, 2, kernel_size, stride, padding, output_size)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """1D max_unpool2d over (N, C, L) or (C, L)."""
    return _max_unpool(input, indices, 1, kernel_size, stride, padding, output_size)


# ============================ end pool ============================

# ============================ batchnorm ===========================


_F64 = np.dtype(np.float64)


def _bn_check_vector(v, name: str, c: int, ref: np.ndarray) -> None:
    if v is None:
        return
    # common case first (a few attribute reads; ref's dtype is already known to be a
    # float dtype): anything else takes the full checks below, with their messages
    if isinstance(v, np.ndarray) and v.dtype is ref.dtype and v.ndim == 1 and v.shape[0] == c:
        return
    _check_array(v, name)
    _check_same_dtype(ref, **{name: v})
    if v.ndim != 1 or v.shape[0] != c:
        raise ValueError(
            f"{name} must have shape ({c},) to match the input's channel count C = {c}, got shape {v.shape}"
        )


def _bn_check_eps(eps) -> float:
    if type(eps) is float and math.isfinite(eps) and eps >= 0:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return eps


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, return_stats=False):
    """Batch normalisation over every axis but 1 of `input` (rank >= 2).

    training=True normalises with the biased batch variance and, when running stats are
    given, updates them in place: running = (1 - momentum) * running + momentum * batch,
    with the unbiased variance into running_var. training=False uses the running stats
    (required). out = (x - mean) * (invstd * weight) + bias, so a constant channel gives
    exactly bias.

    return_stats=True (not in torch's signature) returns (out, save_mean, save_invstd):
    the per-channel mean and 1/sqrt(var + eps) used, as float64 arrays, which
    batch_norm_backward accepts to skip recomputing them.
    """
    _check_array(input, "input")
    if input.ndim < 2:
        raise ValueError(f"input must have at least 2 dimensions (N, C, ...), got shape {input.shape}")
    c = input.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _bn_check_vector(v, name, c, input)
    training = bool(training)
    eps = _bn_check_eps(eps)
    if type(momentum) is not float or not math.isfinite(momentum):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.integer, np.floating)):
            raise TypeError(f"momentum must be a real number, got {type(momentum).__name__}")
        momentum = float(momentum)
        if not math.isfinite(momentum):
            raise ValueError(f"momentum must be finite, got {momentum}")
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise ValueError(f"running_mean and running_var are required when training=False ({missing} is None)")
    # values per channel N * S: size / C, or the product itself when C == 0
    if training and (input.size < 2 * c if c else input.shape[0] * math.prod(input.shape[2:]) < 2):
        raise ValueError(
            f"batch_norm: expected more than 1 value per channel when training, got input of shape {input.shape}"
        )
    res = _core.batch_norm_forward(input, running_mean, running_var, weight, bias, training,
                                   momentum, eps, bool(return_stats))
    if return_stats:
        out, save_mean, save_invstd = res
        _check_output(save_mean, (c,), "batch_norm")
        _check_output(save_invstd, (c,), "batch_norm")
        return _check_output(out, input.shape, "batch_norm"), save_mean, save_invstd
    return _check_output(res, input.shape, "batch_norm")


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=1e-5, save_mean=None, save_invstd=None):
    """Gradients of batch_norm -> (grad_input, grad_weight, grad_bias).

    With weight=None the weight is taken as 1 and grad_weight, grad_bias are None.
    training=True recomputes the batch statistics from `input`, or takes them from
    save_mean / save_invstd (float64, from batch_norm(..., return_stats=True));
    training=False uses the running stats (required).
    """
    _check_array(input, "input")
    if not (isinstance(grad_output, np.ndarray) and grad_output.dtype is input.dtype):
        _check_array(grad_output, "grad_output")
        _check_same_dtype(input, grad_output=grad_output)
    if input.ndim < 2:
        raise ValueError(f"input must have at least 2 dimensions (N, C, ...), got shape {input.shape}")
    if grad_output.shape != input.shape:
        raise ValueError(f"grad_output shape {grad_output.shape} must equal the input shape {input.shape}")
    c = input.shape[1]
    for name, v in (("weight", weight), ("running_mean", running_mean), ("running_var", running_var)):
        _bn_check_vector(v, name, c, input)
    training = bool(training)
    eps = _bn_check_eps(eps)
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise ValueError(f"running_mean and running_var are required when training=False ({missing} is None)")
    if (save_mean is None) != (save_invstd is None):
        raise ValueError("save_mean and save_invstd must be given together (one is None)")
    if save_mean is not None:
        if not training:
            raise ValueError("save_mean and save_invstd apply to training=True only")
        for name, v in (("save_mean", save_mean), ("save_invstd", save_invstd)):
            if isinstance(v, np.ndarray) and v.dtype is _F64 and v.ndim == 1 and v.shape[0] == c:
                continue  # the common case; anything else gets the checks and messages below
            _check_array(v, name)
            if v.dtype != np.float64:
                raise TypeError(f"{name} must have dtype float64 (as returned by "
                                f"batch_norm(..., return_stats=True)), got {v.dtype}")
            if v.ndim != 1 or v.shape[0] != c:
                raise ValueError(f"{name} must have shape ({c},), got shape {v.shape}")
    dx, gw, gb = _core.batch_norm_backward(grad_output, input, weight, running_mean, running_var,
                                           training, eps, save_mean, save_invstd)
    _check_output(dx, input.shape, "batch_norm_backward")
    if weight is not None:
        _check_output(gw, (c,), "batch_norm_backward")
        _check_output(gb, (c,), "batch_norm_backward")
    return dx, gw, gb


# ========================== end batchnorm =========================
