import pytest
from hypothesis import given, strategies as st

from pyconv import conv_output_size, pool_output_size
from pyconv.shapes import resolve_conv_padding


def test_lecture_formula():
    # (N + 2P - F)/S + 1
    assert conv_output_size(32, 5, stride=1, padding=2) == 32
    assert conv_output_size(227, 11, stride=4, padding=0) == 55
    assert conv_output_size(7, 3, stride=2, padding=1) == 4
    assert conv_output_size(10, 3, dilation=2) == 6
    assert conv_output_size(10, 3, padding=(2, 0)) == 10
    assert conv_output_size((8, 9), (3, 2), stride=(1, 2), padding=((1, 1), (0, 1))) == (8, 5)


def test_nonpositive_size_message_shows_formula():
    with pytest.raises(ValueError, match=r"\(7 \+ 0 \+ 0 - 1\*\(8-1\) - 1\)//1 \+ 1 = 0"):
        conv_output_size(7, 8)


@pytest.mark.parametrize("bad", [dict(stride=0), dict(dilation=0), dict(kernel_size=0), dict(padding=-1)])
def test_bad_parameters(bad):
    args = dict(size=10, kernel_size=3)
    args.update(bad)
    with pytest.raises(ValueError):
        conv_output_size(**args)


def test_non_integer_parameter_is_type_error():
    with pytest.raises(TypeError):
        conv_output_size(10, 3, stride=1.5)


def test_pool_output_size_ceil_mode_drops_window_starting_in_padding():
    # PyTorch: size 6, kernel 2, stride 2, pad 1, ceil -> 4, the 5th would start in padding
    assert pool_output_size(6, 2, 2, 1, ceil_mode=True) == 4
    assert pool_output_size(5, 2, 2, 0, ceil_mode=True) == 3
    assert pool_output_size(5, 2, 2, 0, ceil_mode=False) == 2
    assert pool_output_size(112, 3, 2, 1) == 56


def test_pool_padding_above_half_kernel():
    with pytest.raises(ValueError, match="kernel_size // 2"):
        pool_output_size(10, 3, 1, 2)


def test_same_padding_rules():
    # stride 1: total D*(F-1), extra on the hi side
    assert resolve_conv_padding("same", [10], [4], [1], [1]) == [(1, 2)]
    assert resolve_conv_padding("same", [10], [3], [1], [2]) == [(2, 2)]
    # stride > 1: out = ceil(N/S)
    pads = resolve_conv_padding("same", [10, 7], [3, 3], [2, 3], [1, 1])
    for (lo, hi), n, s in zip(pads, [10, 7], [2, 3]):
        assert conv_output_size(n, 3, s, (lo, hi)) == -(-n // s)
    assert resolve_conv_padding("valid", [5, 5], [3, 3], [1, 1], [1, 1]) == [(0, 0), (0, 0)]
    assert resolve_conv_padding("causal", [10], [2], [1], [8]) == [(8, 0)]
    with pytest.raises(ValueError, match="causal"):
        resolve_conv_padding("causal", [10, 10], [2, 2], [1, 1], [1, 1])


def test_padding_forms():
    assert resolve_conv_padding(1, [5, 5], [3, 3], [1, 1], [1, 1]) == [(1, 1), (1, 1)]
    assert resolve_conv_padding((1, 2), [5, 5], [3, 3], [1, 1], [1, 1]) == [(1, 1), (2, 2)]
    assert resolve_conv_padding(((0, 1), (2, 3)), [5, 5], [3, 3], [1, 1], [1, 1]) == [(0, 1), (2, 3)]
    assert resolve_conv_padding((3,), [5], [3], [1], [1]) == [(3, 3)]
    assert resolve_conv_padding((1, 2), [5], [3], [1], [1]) == [(1, 2)]
    assert resolve_conv_padding(((1, 2),), [5], [3], [1], [1]) == [(1, 2)]
    with pytest.raises(ValueError):
        resolve_conv_padding(((1, -2),), [5], [3], [1], [1])


@given(n=st.integers(1, 300), f=st.integers(1, 9), s=st.integers(1, 5), d=st.integers(1, 4),
       lo=st.integers(0, 6), hi=st.integers(0, 6))
def test_size_counts_windows(n, f, s, d, lo, hi):
    """The formula equals a brute-force count of window positions inside the padded input."""
    span = d * (f - 1) + 1
    count = sum(1 for start in range(0, n + lo + hi, s) if start + span <= n + lo + hi)
    if count == 0:
        with pytest.raises(ValueError):
            conv_output_size(n, f, s, (lo, hi), d)
    else:
        assert conv_output_size(n, f, s, (lo, hi), d) == count


def test_pool_window_in_left_padding_that_skips_the_input():
    # taps at -1 and 2 around an input of size 2: the window covers no element
    with pytest.raises(ValueError, match="covers no input element"):
        pool_output_size(2, 2, 1, 1, dilation=3)
    assert pool_output_size(3, 2, 1, 1, dilation=3) == 2  # taps -1, 2 reach element 2


@given(n=st.integers(1, 40), k=st.integers(1, 6), s=st.integers(1, 4), d=st.integers(1, 4),
       ceil=st.booleans(), data=st.data())
def test_pool_size_matches_brute_force_windows(n, k, s, d, ceil, data):
    """pool_output_size either returns the number of windows, each covering an input
    element, or raises ValueError exactly when some window would cover none."""
    p = data.draw(st.integers(0, k // 2))
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and out > 0 and (out - 1) * s >= n + p:
        out -= 1
    ok = out > 0 and all(any(0 <= o * s - p + t * d < n for t in range(k)) for o in range(out))
    if ok:
        assert pool_output_size(n, k, s, p, d, ceil) == out
    else:
        with pytest.raises(ValueError):
            pool_output_size(n, k, s, p, d, ceil)
