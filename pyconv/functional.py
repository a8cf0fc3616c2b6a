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


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    raise NotImplementedError("batch_norm")


def batch_norm_backward(grad_output, input, weight=None, running_mean=None, running_var=None,
                        training=True, eps=1e-5):
    raise NotImplementedError("batch_norm_backward")


# ========================== end batchnorm =========================
