"""pyconv: hand-written C++ CPU kernels for convolutional networks on NumPy arrays."""
from . import reference, shapes
from .functional import (
    batch_norm,
    batch_norm_backward,
    conv1d,
    conv1d_backward,
    conv2d,
    conv2d_backward,
    get_num_threads,
    kernel_info,
    max_pool1d,
    max_pool1d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_unpool1d,
    max_unpool2d,
    set_num_threads,
)
from .shapes import conv_output_size, pool_output_size
from . import nn, optim
from .nn import summary

__version__ = kernel_info()["version"]

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv_output_size",
    "get_num_threads",
    "kernel_info",
    "max_pool1d",
    "max_pool1d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_unpool1d",
    "max_unpool2d",
    "nn",
    "optim",
    "pool_output_size",
    "reference",
    "set_num_threads",
    "shapes",
    "summary",
]
