"""The public functional API (names and defaults mirror torch.nn.functional).

The Python layer normalises arguments (padding forms, unbatched inputs), computes the
expected output shape from the size formula, calls the C++ kernel and checks the
kernel's output shape against it. The C++ entry points validate again on their own.
"""
from __future__ import annotations

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


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    raise NotImplementedError("conv2d")


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    raise NotImplementedError("conv1d")


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True)):
    raise NotImplementedError("conv2d_backward")


def conv1d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True)):
    raise NotImplementedError("conv1d_backward")


# ============================ end conv ============================

# ============================== pool ==============================


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    raise NotImplementedError("max_pool2d")


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    raise NotImplementedError("max_pool1d")


def max_pool2d_backward(grad_output, indices, input_shape):
    raise NotImplementedError("max_pool2d_backward")


def max_pool1d_backward(grad_output, indices, input_shape):
    raise NotImplementedError("max_pool1d_backward")


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    raise NotImplementedError("max_unpool2d")


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    raise NotImplementedError("max_unpool1d")


# ============================ end pool ============================

# ============================ batchnorm ===========================


def _bn_check_vector(v, name: str, c: int, ref: np.ndarray) -> None:
    if v is None:
        return
    _check_array(v, name)
    _check_same_dtype(ref, **{name: v})
    if v.ndim != 1 or v.shape[0] != c:
        raise ValueError(
            f"{name} must have shape ({c},) to match the input's channel count C = {c}, got shape {v.shape}"
        )


def _bn_check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
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
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.integer, np.floating)):
        raise TypeError(f"momentum must be a real number, got {type(momentum).__name__}")
    momentum = float(momentum)
    if not np.isfinite(momentum):
        raise ValueError(f"momentum must be finite, got {momentum}")
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise ValueError(f"running_mean and running_var are required when training=False ({missing} is None)")
    if training and input.shape[0] * int(np.prod(input.shape[2:], dtype=np.int64)) < 2:
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
