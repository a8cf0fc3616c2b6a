# Typing for the C++ extension pyconv._core. Every entry point validates its own
# arguments (ValueError, TypeError, IndexError, OverflowError) before releasing the GIL.
# Spatial ops take NCHW arrays; 1D and unbatched forms are reshaped by pyconv.functional.
from typing import Any, Optional, Sequence, Tuple

import numpy as np

def kernel_info() -> dict[str, Any]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def _set_isa(name: str) -> None: ...

# gemm
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray: ...
def _fma_peak_gflops(threads: int, seconds: float) -> float: ...
def _gemm_checked(a: np.ndarray, b: np.ndarray, c0: Optional[np.ndarray] = None,
                  threads: int = 1) -> np.ndarray: ...

# conv
# path: "auto" (the ordered candidate list), or force one of "pointwise", "depthwise",
# "winograd" (3x3, stride 1, dilation 1; not the direct summation order) or "generic"
# (the exact direct order); a forced path that does not support the parameters is a
# ValueError.
def conv2d_forward(input: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray],
                   stride_h: int, stride_w: int, pad_h_lo: int, pad_h_hi: int, pad_w_lo: int,
                   pad_w_hi: int, dilation_h: int, dilation_w: int, groups: int,
                   path: str = "auto") -> np.ndarray: ...
def conv2d_backward(grad_output: np.ndarray, input: np.ndarray, weight: np.ndarray,
                    stride_h: int, stride_w: int, pad_h_lo: int, pad_h_hi: int, pad_w_lo: int,
                    pad_w_hi: int, dilation_h: int, dilation_w: int, groups: int,
                    need_input: bool = True, need_weight: bool = True, need_bias: bool = True,
                    path: str = "auto",
                    ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
def conv_path(x_shape: Sequence[int], w_shape: Sequence[int], stride_h: int, stride_w: int,
              pad_h_lo: int, pad_h_hi: int, pad_w_lo: int, pad_w_hi: int, dilation_h: int,
              dilation_w: int, groups: int) -> str: ...

# pool
def max_pool2d(input: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int,
               dw: int, ceil_mode: bool, want_indices: bool,
               ) -> Tuple[np.ndarray, Optional[np.ndarray]]: ...
def max_pool2d_backward(grad_output: np.ndarray, indices: np.ndarray, in_h: int,
                        in_w: int) -> np.ndarray: ...
def max_unpool2d(input: np.ndarray, indices: np.ndarray, out_h: int, out_w: int) -> np.ndarray: ...
def _max_pool2d_variant(h: int, w: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
                        dh: int, dw: int, ceil_mode: bool, is_double: bool) -> str: ...

# batch norm
def batch_norm_forward(input: np.ndarray, running_mean: Optional[np.ndarray],
                       running_var: Optional[np.ndarray], weight: Optional[np.ndarray],
                       bias: Optional[np.ndarray], training: bool, momentum: float, eps: float,
                       return_stats: bool = False) -> Any: ...
def batch_norm_backward(grad_output: np.ndarray, input: np.ndarray, weight: Optional[np.ndarray],
                        running_mean: Optional[np.ndarray], running_var: Optional[np.ndarray],
                        training: bool, eps: float, save_mean: Optional[np.ndarray] = None,
                        save_invstd: Optional[np.ndarray] = None,
                        ) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]: ...
