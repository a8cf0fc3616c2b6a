"""Output-size formulas and padding resolution.

Every spatial dimension of a sliding-window op obeys

    out = floor((N + P_lo + P_hi - D*(F-1) - 1) / S) + 1

which is the familiar (N + 2P - F)/S + 1 with dilation D and asymmetric padding.
A non-positive result is a ValueError whose message shows the formula with the
numbers filled in.
"""
from __future__ import annotations

import numbers
from typing import List, Sequence, Tuple, Union

__all__ = [
    "conv_output_size",
    "pool_output_size",
    "resolve_conv_padding",
    "resolve_pool_padding",
    "ntuple",
    "formula_text",
]

IntOrTuple = Union[int, Sequence[int]]


def _is_int(v) -> bool:
    if type(v) is int:  # the common case, without the slower ABC check
        return True
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _as_int(v, name: str) -> int:
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    return int(v)


def ntuple(value, n: int, name: str, minimum: int | None = None) -> Tuple[int, ...]:
    """Normalise an int or a length-n sequence of ints to an n-tuple of ints.

    With `minimum`, every entry must be >= minimum (ValueError otherwise).
    """
    if _is_int(value):
        out = (int(value),) * n
    elif isinstance(value, (tuple, list)):
        if len(value) == 1 and n > 1:
            value = tuple(value) * n
        if len(value) != n:
            raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
        out = tuple(_as_int(v, name) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {type(value).__name__} {value!r}")
    if minimum is not None:
        for v in out:
            if v < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def formula_text(size, kernel, stride, pad_lo, pad_hi, dilation, result, ceil_mode=False) -> str:
    if ceil_mode:
        return (f"ceil(({size} + {pad_lo} + {pad_hi} - {dilation}*({kernel}-1) - 1)/{stride}) + 1"
                f" = {result}")
    return f"({size} + {pad_lo} + {pad_hi} - {dilation}*({kernel}-1) - 1)//{stride} + 1 = {result}"


def _pads(padding, name="padding") -> Tuple[int, int]:
    """One dimension's padding: int (symmetric) or (lo, hi)."""
    if _is_int(padding):
        lo = hi = int(padding)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        lo, hi = (_as_int(p, name) for p in padding)
    else:
        raise TypeError(f"{name} must be an int or a (lo, hi) pair, got {padding!r}")
    if lo < 0 or hi < 0:
        raise ValueError(f"{name} must be >= 0, got {padding!r}")
    return lo, hi


def _checked_size(size, kernel, stride, pad_lo, pad_hi, dilation, what="output size") -> int:
    size = _as_int(size, "size")
    kernel = _as_int(kernel, "kernel_size")
    stride = _as_int(stride, "stride")
    dilation = _as_int(dilation, "dilation")
    if size < 0:
        raise ValueError(f"input size must be >= 0, got {size}")
    if kernel < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    out = (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise ValueError(
            f"{what} would be {out}: "
            + formula_text(size, kernel, stride, pad_lo, pad_hi, dilation, out)
            + " (the kernel is larger than the padded input)"
        )
    return out


def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    """Convolution output size. `size` may be an int or a tuple (one entry per dim);
    padding per dim is an int or a (lo, hi) pair."""
    if isinstance(size, (tuple, list)):
        n = len(size)
        k = ntuple(kernel_size, n, "kernel_size")
        s = ntuple(stride, n, "stride")
        d = ntuple(dilation, n, "dilation")
        if _is_int(padding):
            p = [(int(padding), int(padding))] * n
        else:
            if not isinstance(padding, (tuple, list)) or len(padding) != n:
                raise ValueError(f"padding must be an int or one entry per dim ({n}), got {padding!r}")
            p = [_pads(pi) for pi in padding]
        return tuple(_checked_size(size[i], k[i], s[i], p[i][0], p[i][1], d[i]) for i in range(n))
    lo, hi = _pads(padding)
    return _checked_size(size, kernel_size, stride, lo, hi, dilation)


def pool_output_size(size, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max-pool output size, PyTorch's rule: with ceil_mode a last window that would
    start in the right padding is dropped."""
    if isinstance(size, (tuple, list)):
        n = len(size)
        k = ntuple(kernel_size, n, "kernel_size")
        s = k if stride is None else ntuple(stride, n, "stride")
        p = ntuple(padding, n, "padding")
        d = ntuple(dilation, n, "dilation")
        return tuple(pool_output_size(size[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(n))
    size = _as_int(size, "size")
    kernel = _as_int(kernel_size, "kernel_size")
    stride = kernel if stride is None else _as_int(stride, "stride")
    pad = _as_int(padding, "padding")
    dilation = _as_int(dilation, "dilation")
    if kernel < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if pad < 0:
        raise ValueError(f"padding must be >= 0, got {pad}")
    if pad > kernel // 2:
        raise ValueError(f"padding must be at most kernel_size // 2 = {kernel // 2}, got padding={pad}")
    if size < 0:
        raise ValueError(f"input size must be >= 0, got {size}")
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -((-span) // stride) + 1
        if out > 0 and (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    if out <= 0:
        raise ValueError(
            f"output size would be {out}: "
            + formula_text(size, kernel, stride, pad, pad, dilation, out, ceil_mode)
        )
    # Every window must cover at least one real input element (else its max is -inf).
    last_start = (out - 1) * stride - pad
    if last_start >= size:
        raise ValueError(
            f"the last pooling window starts at {last_start}, past the input size {size}; "
            "every window must cover at least one input element"
        )
    _check_left_windows(size, kernel, stride, pad, dilation, out)
    return out


def _check_left_windows(size, k, s, p, d, out):
    """Windows starting in the left padding may, with dilation, step over the whole
    input. Where a window lands depends only on its start modulo d, and its first
    in-bounds tap index is largest for the leftmost window, so min(count, d) windows
    decide it."""
    count = min(out, -(-p // s))
    for o in range(min(count, d)):
        start = o * s - p
        first = -(start // d)  # first tap at or right of 0: ceil(-start / d)
        if first >= k or start + first * d >= size:
            raise ValueError(
                f"pooling window {o} covers no input element (size {size}, kernel_size {k}, "
                f"padding {p}, dilation {d})")


def resolve_conv_padding(padding, sizes: Sequence[int], kernels: Sequence[int],
                         strides: Sequence[int], dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """Per-dim (lo, hi) pads for every padding form in the design.

    2D: int, (ph, pw), ((top, bottom), (left, right)), 'valid', 'same'.
    1D: int, (p,), (lo, hi), ((lo, hi),), 'valid', 'same', 'causal'.
    'same' at stride 1 pads D*(F-1) in total with the extra element on the hi side;
    at stride > 1 it follows the TF/Keras rule out = ceil(N/S).
    """
    n = len(sizes)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return [(0, 0)] * n
        if mode == "same":
            pads = []
            for N, F, S, D in zip(sizes, kernels, strides, dilations):
                span = D * (F - 1) + 1
                if S == 1:
                    total = span - 1
                else:
                    out = -(-N // S)
                    total = max((out - 1) * S + span - N, 0)
                pads.append((total // 2, total - total // 2))
            return pads
        if mode == "causal":
            if n != 1:
                raise ValueError("padding='causal' is defined for 1D convolution only")
            return [(dilations[0] * (kernels[0] - 1), 0)]
        raise ValueError(f"padding must be an int, a tuple, 'valid', 'same'"
                         f"{' or causal' if n == 1 else ''}, got {padding!r}")
    if _is_int(padding):
        p = int(padding)
        if p < 0:
            raise ValueError(f"padding must be >= 0, got {p}")
        return [(p, p)] * n
    if not isinstance(padding, (tuple, list)):
        raise TypeError(f"padding must be an int, a tuple or a string, got {type(padding).__name__}")
    padding = tuple(padding)
    if n == 1:
        if len(padding) == 1:
            entry = padding[0]
            return [_pads(entry)]
        if len(padding) == 2 and all(_is_int(v) for v in padding):
            return [_pads(padding)]
        raise ValueError(f"1D padding must be int, (p,), (lo, hi) or ((lo, hi),), got {padding!r}")
    if len(padding) != n:
        raise ValueError(f"padding must have one entry per spatial dim ({n}), got {padding!r}")
    return [_pads(entry) for entry in padding]


def resolve_pool_padding(padding, n: int) -> Tuple[int, ...]:
    return ntuple(padding, n, "padding", minimum=0)
