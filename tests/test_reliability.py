"""Reliability: hostile arguments are rejected with the right exception (never a crash,
SystemError, RuntimeError or garbage), sizes that overflow int64 raise before anything
is allocated, and arrays in every layout users pass give bitwise the contiguous result.

The risky calls run in a child process (tests/_subproc.py), many per child; a crash
names the case that caused it and the remaining cases still run.
"""
from __future__ import annotations

import numpy as np
import pytest

import pyconv
from _ops import LAYOUTS, available, op_cases, relayout, same_bits
from _subproc import ALLOWED_ERRORS, Worker

CASES = op_cases()
AVAILABLE = {c.name for c in CASES if available(c)}


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout=60)
    yield w
    w.close()


# Common arrays for the case snippets (executed in the child).
PRELUDE = """
f32, f64 = np.float32, np.float64
x4 = np.arange(2*3*8*8, dtype=f32).reshape(2, 3, 8, 8) % 7 - 3
w4 = np.ones((4, 3, 3, 3), f32)
b4 = np.ones(4, f32)
x3 = np.arange(2*3*16, dtype=f32).reshape(2, 3, 16) % 5 - 2
w3 = np.ones((4, 3, 3), f32)
xp = np.arange(2*3*6*6, dtype=f32).reshape(2, 3, 6, 6) % 11
xp1 = np.arange(2*3*8, dtype=f32).reshape(2, 3, 8) % 5
if hasattr(ref, "max_pool2d"):
    yp, ip = ref.max_pool2d(xp, 2, return_indices=True)
    yp1, ip1 = ref.max_pool1d(xp1, 2, return_indices=True)
xb = np.arange(4*3*5*5, dtype=f32).reshape(4, 3, 5, 5) % 13
rm, rv = np.zeros(3, f32), np.ones(3, f32)
huge = np.broadcast_to(np.zeros(1, f32), (1, 1, 2**30, 2**30))
"""


def check_cases(worker, cases):
    """cases: (id, code, expected) where expected is a tuple of exception names, or
    'reject' (any allowed error), 'ok' (must succeed: the baseline call that proves the
    signature the other cases use), or 'ok|reject' (a correct result or an allowed
    error; the snippet checks correctness itself with asserts)."""
    pre = worker.run("prelude", code=PRELUDE)
    assert pre.status == "ok", pre.describe()
    outs = worker.run_many([(cid, PRELUDE + code) for cid, code, _ in cases])
    bad = []
    for (cid, code, expected), o in zip(cases, outs):
        if expected == "ok":
            good = o.status == "ok"
        elif expected == "ok|reject":
            good = o.status == "ok" or o.allowed_error()
        elif expected == "reject":
            good = o.allowed_error()
        else:
            good = o.allowed_error(expected)
        if not good:
            bad.append(f"{o.describe()}\n    code: {code.strip()}\n    expected: {expected}")
    assert not bad, f"{len(bad)} of {len(cases)} cases misbehaved:\n" + "\n".join(bad)


def needs(*ops):
    missing = [op for op in ops if op not in AVAILABLE]
    return pytest.mark.skipif(bool(missing), reason=f"not implemented yet: {missing}")


V, T, I, O = ("ValueError",), ("TypeError",), ("IndexError",), ("OverflowError",)
VO = ("ValueError", "OverflowError")

# ------------------------------------------------------------- public API, bad values

CONV_CASES = [
    ("conv_x_rank5", "pyconv.conv2d(x4[None], w4)", V),
    ("conv_x_rank2", "pyconv.conv2d(x4[0, 0], w4)", V),
    ("conv_x_rank0", "pyconv.conv2d(np.float32(1.0), w4)", ("ValueError", "TypeError")),
    ("conv_w_rank3", "pyconv.conv2d(x4, w4[0])", V),
    ("conv_w_rank5", "pyconv.conv2d(x4, w4[None])", V),
    ("conv_cin_mismatch", "pyconv.conv2d(x4, np.ones((4, 2, 3, 3), f32))", V),
    ("conv_groups_0", "pyconv.conv2d(x4, w4, groups=0)", V),
    ("conv_groups_neg", "pyconv.conv2d(x4, w4, groups=-1)", V),
    ("conv_groups_nodiv", "pyconv.conv2d(x4, np.ones((4, 1, 3, 3), f32), groups=2)", V),
    ("conv_groups_cout_nodiv", "pyconv.conv2d(x4, np.ones((4, 1, 3, 3), f32), groups=3)", V),
    ("conv_groups_huge", "pyconv.conv2d(x4, w4, groups=2**63-1)", "reject"),
    ("conv_groups_bigint", "pyconv.conv2d(x4, w4, groups=2**64)", "reject"),
    ("conv_stride_0", "pyconv.conv2d(x4, w4, stride=0)", V),
    ("conv_stride_neg", "pyconv.conv2d(x4, w4, stride=(1, -1))", V),
    ("conv_stride_bigint", "pyconv.conv2d(x4, w4, stride=2**64)", "reject"),
    ("conv_dilation_0", "pyconv.conv2d(x4, w4, dilation=0)", V),
    ("conv_dilation_neg", "pyconv.conv2d(x4, w4, dilation=-2)", V),
    ("conv_dilation_2e62", "pyconv.conv2d(x4, w4, dilation=2**62)", VO),
    ("conv_dilation_max", "pyconv.conv2d(x4, w4, dilation=2**63-1)", VO),
    ("conv_pad_neg", "pyconv.conv2d(x4, w4, padding=-1)", V),
    ("conv_pad_2e62", "pyconv.conv2d(x4, w4, padding=2**62)", VO),
    ("conv_pad_max", "pyconv.conv2d(x4, w4, padding=2**63-1)", VO),
    ("conv_pad_asym_2e62", "pyconv.conv2d(x4, w4, padding=((0, 2**62), (0, 0)))", VO),
    ("conv_pad_bogus", "pyconv.conv2d(x4, w4, padding='bogus')", V),
    ("conv_pad_causal_2d", "pyconv.conv2d(x4, w4, padding='causal')", V),
    ("conv_pad_3tuple", "pyconv.conv2d(x4, w4, padding=(1, 2, 3))", ("ValueError", "TypeError")),
    ("conv_kernel_too_big", "pyconv.conv2d(x4, np.ones((4, 3, 9, 9), f32))", V),
    ("conv_kernel_0", "pyconv.conv2d(x4, np.ones((4, 3, 0, 3), f32))", V),
    ("conv_bias_len", "pyconv.conv2d(x4, w4, np.ones(5, f32))", V),
    ("conv_bias_rank", "pyconv.conv2d(x4, w4, np.ones((4, 1), f32))", V),
    ("conv_bias_dtype", "pyconv.conv2d(x4, w4, np.ones(4, f64))", T),
    ("conv_w_dtype", "pyconv.conv2d(x4, w4.astype(f64))", T),
    ("conv_x_int", "pyconv.conv2d(x4.astype(np.int64), w4)", T),
    ("conv_x_f16", "pyconv.conv2d(x4.astype(np.float16), w4)", T),
    ("conv_x_complex", "pyconv.conv2d(x4.astype(np.complex64), w4)", T),
    ("conv_x_none", "pyconv.conv2d(None, w4)", T),
    ("conv_x_list", "pyconv.conv2d(x4.tolist(), w4)", T),
    ("conv_w_str", "pyconv.conv2d(x4, 'w')", T),
    ("conv_x_object", "pyconv.conv2d(x4.astype(object), w4)", T),
    ("conv1d_rank4", "pyconv.conv1d(x4, w3)", V),
    ("conv1d_pad_2e62", "pyconv.conv1d(x3, w3, padding=2**62)", VO),
    ("conv1d_pad_causal_2e62_dil", "pyconv.conv1d(x3, w3, padding='causal', dilation=2**62)", VO),
    ("conv1d_stride_max", """
y = pyconv.conv1d(x3, w3, stride=2**63-1)
assert np.array_equal(y, ref.conv1d(x3, w3, stride=2**63-1))""", "ok|reject"),
    # found by the fuzzer under UBSan: the tap range with stride 2**63-1 and padding
    # overflowed (stride + pad - 1) in the C++ kernel
    ("conv1d_stride_max_pad", """
x = np.ones((1, 2), f32); w = np.ones((1, 1, 1), f32)
y = pyconv.conv1d(x, w, None, 2**63-1, (1,))
assert np.array_equal(y, ref.conv1d(x, w, None, 2**63-1, (1,)))""", "ok|reject"),
    ("conv2d_stride_max", """
y = pyconv.conv2d(x4, w4, stride=2**63-1, padding=1)
assert np.array_equal(y, ref.conv2d(x4, w4, stride=2**63-1, padding=1))""", "ok|reject"),
    ("conv_batch0", """
y = pyconv.conv2d(x4[:0], w4, b4)
assert y.shape == (0, 4, 6, 6) and y.dtype == f32""", "ok|reject"),
    ("conv_cout0", """
y = pyconv.conv2d(x4, w4[:0])
assert y.shape == (2, 0, 6, 6)""", "ok|reject"),
    ("conv_cin0", """
y = pyconv.conv2d(x4[:, :0], w4[:, :0], b4)
assert np.array_equal(y, np.broadcast_to(b4[None, :, None, None], (2, 4, 6, 6)))""", "ok|reject"),
    ("conv_spatial0", "pyconv.conv2d(x4[:, :, :0], w4)", V),
    ("conv_huge_broadcast_out", "pyconv.conv2d(huge, np.broadcast_to(np.ones(1, f32), (2**31, 1, 1, 1)))",
     ("ValueError", "OverflowError", "MemoryError")),
    ("conv_bwd_gy_shape", "pyconv.conv2d_backward(np.ones((2, 4, 5, 6), f32), x4, w4)", V),
    ("conv_bwd_gy_dtype", "pyconv.conv2d_backward(np.ones((2, 4, 6, 6), f64), x4, w4)", T),
    ("conv_bwd_gy_rank", "pyconv.conv2d_backward(np.ones((2, 4, 6), f32), x4, w4)", V),
    ("conv_bwd_pad_2e62", "pyconv.conv2d_backward(np.ones((2, 4, 6, 6), f32), x4, w4, padding=2**62)", VO),
    ("conv_bwd_mask_bad", "pyconv.conv2d_backward(np.ones((2, 4, 6, 6), f32), x4, w4, output_mask=(True,))",
     ("ValueError", "TypeError")),
    ("conv_bwd_groups_0", "pyconv.conv2d_backward(np.ones((2, 4, 6, 6), f32), x4, w4, groups=0)", V),
    ("conv1d_bwd_dil_0", "pyconv.conv1d_backward(np.ones((2, 4, 14), f32), x3, w3, dilation=0)", V),
]

POOL_CASES = [
    ("pool_k0", "pyconv.max_pool2d(xp, 0)", V),
    ("pool_kneg", "pyconv.max_pool2d(xp, -2)", V),
    ("pool_k_2e62", "pyconv.max_pool2d(xp, 2**62)", VO),
    ("pool_k_max", "pyconv.max_pool2d(xp, 2**63-1)", VO),
    ("pool_k_max_pad", "pyconv.max_pool2d(xp, 2**63-1, padding=2**62-1)", VO),
    # a 2**62 window with padding 2**61 covers the whole 6x6 plane from 7 positions: valid
    ("pool_k_2e62_pad", """
y, i = pyconv.max_pool2d(xp, 2**62, padding=2**61, stride=1, return_indices=True)
# (the reference would walk all 2**124 taps): every window holds the whole plane
flat = xp.reshape(2, 3, 36)
ry = np.broadcast_to(flat.max(axis=2)[:, :, None, None], (2, 3, 7, 7))
ri = np.broadcast_to(flat.argmax(axis=2)[:, :, None, None], (2, 3, 7, 7))
assert y.shape == (2, 3, 7, 7) and np.array_equal(y, ry) and np.array_equal(i, ri)""", "ok|reject"),
    ("pool_stride0", "pyconv.max_pool2d(xp, 2, stride=0)", V),
    ("pool_stride_neg", "pyconv.max_pool2d(xp, 2, stride=-1)", V),
    ("pool_stride_max", """
y, i = pyconv.max_pool2d(xp, 2, stride=2**63-1, return_indices=True)
ry, ri = ref.max_pool2d(xp, 2, stride=2**63-1, return_indices=True)
assert np.array_equal(y, ry) and np.array_equal(i, ri)""", "ok|reject"),
    ("pool_pad_gt_half", "pyconv.max_pool2d(xp, 2, padding=2)", V),
    ("pool_pad_neg", "pyconv.max_pool2d(xp, 2, padding=-1)", V),
    ("pool_dil0", "pyconv.max_pool2d(xp, 2, dilation=0)", V),
    ("pool_dil_2e62", "pyconv.max_pool2d(xp, 2, dilation=2**62)", VO),
    ("pool_dil_max", "pyconv.max_pool2d(xp, 3, dilation=2**63-1, padding=1)", VO),
    ("pool_too_big", "pyconv.max_pool2d(xp, 7)", V),
    ("pool_rank2", "pyconv.max_pool2d(xp[0, 0], 2)", V),
    ("pool_rank5", "pyconv.max_pool2d(xp[None], 2)", V),
    ("pool_int", "pyconv.max_pool2d(xp.astype(np.int32), 2)", T),
    ("pool_none", "pyconv.max_pool2d(None, 2)", T),
    ("pool_spatial0", "pyconv.max_pool2d(xp[:, :, :0], 2)", V),
    ("pool_batch0", """
y = pyconv.max_pool2d(xp[:0], 2)
assert y.shape == (0, 3, 3, 3)""", "ok|reject"),
    ("pool1d_rank4", "pyconv.max_pool1d(xp, 2)", V),
    ("pool1d_k_max", "pyconv.max_pool1d(xp1, 2**63-1)", VO),
    ("pool_bwd_idx_f64", "pyconv.max_pool2d_backward(yp, ip.astype(f64), xp.shape)", T),
    ("pool_bwd_idx_i32", "pyconv.max_pool2d_backward(yp, ip.astype(np.int32), xp.shape)", T),
    ("pool_bwd_idx_shape", "pyconv.max_pool2d_backward(yp, ip[:, :, :2], xp.shape)", V),
    ("pool_bwd_idx_neg", "i = ip.copy(); i[1, 2, 0, 1] = -1; pyconv.max_pool2d_backward(yp, i, xp.shape)", I),
    ("pool_bwd_idx_big", "i = ip.copy(); i[1, 2, 2, 2] = 36; pyconv.max_pool2d_backward(yp, i, xp.shape)", I),
    ("pool_bwd_idx_2e62", "i = ip.copy(); i[0, 0, 0, 0] = 2**62; pyconv.max_pool2d_backward(yp, i, xp.shape)", I),
    ("pool_bwd_idx_min", "i = ip.copy(); i[0, 0, 0, 0] = -2**63; pyconv.max_pool2d_backward(yp, i, xp.shape)", I),
    ("pool_bwd_shape_rank", "pyconv.max_pool2d_backward(yp, ip, (2, 3, 36))", V),
    ("pool_bwd_shape_neg", "pyconv.max_pool2d_backward(yp, ip, (2, 3, -6, 6))", V),
    ("pool_bwd_shape_nc", "pyconv.max_pool2d_backward(yp, ip, (2, 4, 6, 6))", V),
    ("pool_bwd_shape_huge", "pyconv.max_pool2d_backward(yp, ip, (2, 3, 2**62, 2**62))", VO),
    ("pool_bwd_shape_huge2", "pyconv.max_pool2d_backward(yp, ip, (2**40, 3, 2**20, 6))", VO),
    ("pool_bwd_gy_dtype_int", "pyconv.max_pool2d_backward(yp.astype(np.int64), ip, xp.shape)", T),
    ("pool_bwd_none", "pyconv.max_pool2d_backward(yp, None, xp.shape)", T),
    ("pool1d_bwd_idx_big", "i = ip1.copy(); i[0, 0, 0] = 8; pyconv.max_pool1d_backward(yp1, i, xp1.shape)", I),
    ("unpool_idx_big", "i = ip.copy(); i[0, 1, 1, 1] = 36; pyconv.max_unpool2d(yp, i, 2)", I),
    ("unpool_idx_neg", "i = ip.copy(); i[0, 1, 1, 1] = -5; pyconv.max_unpool2d(yp, i, 2)", I),
    ("unpool_out_small", "pyconv.max_unpool2d(yp, ip, 2, output_size=(2, 2))", ("IndexError", "ValueError")),
    ("unpool_out_huge", "pyconv.max_unpool2d(yp, ip, 2, output_size=(2**62, 2**62))", VO),
    ("unpool_out_huge_full", "pyconv.max_unpool2d(yp, ip, 2, output_size=(2, 3, 2**40, 2**30))", VO),
    ("unpool_out_neg", "pyconv.max_unpool2d(yp, ip, 2, output_size=(-6, 6))", V),
    ("unpool_k0", "pyconv.max_unpool2d(yp, ip, 0)", V),
    ("unpool_stride_max", "pyconv.max_unpool2d(yp, ip, 2, stride=2**63-1)", "reject"),
    ("unpool_k_max", "pyconv.max_unpool2d(yp, ip, 2**63-1)", VO),
    ("unpool_idx_f32", "pyconv.max_unpool2d(yp, ip.astype(f32), 2)", T),
    ("unpool_idx_shape", "pyconv.max_unpool2d(yp, ip[:1], 2)", V),
    ("unpool_x_int", "pyconv.max_unpool2d(yp.astype(np.int64), ip, 2)", T),
    ("unpool1d_idx_big", "i = ip1.copy(); i[1, 2, 3] = 99; pyconv.max_unpool1d(yp1, i, 2)", I),
    ("unpool1d_out_huge", "pyconv.max_unpool1d(yp1, ip1, 2, output_size=(2**63-1,))", VO),
]

BN_CASES = [
    ("bn_rank1", "pyconv.batch_norm(np.ones(5, f32), None, None, training=True)", V),
    ("bn_rank0", "pyconv.batch_norm(np.float32(1), None, None)", ("ValueError", "TypeError")),
    ("bn_rm_len", "pyconv.batch_norm(xb, np.zeros(4, f32), rv)", V),
    ("bn_rv_len", "pyconv.batch_norm(xb, rm, np.ones(2, f32))", V),
    ("bn_rm_rank", "pyconv.batch_norm(xb, np.zeros((3, 1), f32), rv)", V),
    ("bn_w_len", "pyconv.batch_norm(xb, rm, rv, np.ones(4, f32))", V),
    ("bn_b_len", "pyconv.batch_norm(xb, rm, rv, None, np.ones(2, f32))", V),
    ("bn_rm_dtype", "pyconv.batch_norm(xb, rm.astype(f64), rv)", T),
    ("bn_rv_int", "pyconv.batch_norm(xb, rm, rv.astype(np.int64))", T),
    ("bn_x_int", "pyconv.batch_norm(xb.astype(np.int16), rm, rv)", T),
    ("bn_rm_list", "pyconv.batch_norm(xb, [0.0, 0.0, 0.0], rv)", T),
    ("bn_eval_none_stats", "pyconv.batch_norm(xb, None, None, training=False)", ("ValueError", "TypeError")),
    ("bn_eps_nan", "pyconv.batch_norm(xb, rm.copy(), rv.copy(), training=True, eps=float('nan'))", V),
    ("bn_eps_inf", "pyconv.batch_norm(xb, rm, rv, eps=float('inf'))", V),
    ("bn_eps_neg", "pyconv.batch_norm(xb, rm, rv, eps=-1e-5)", V),
    ("bn_mom_nan", "pyconv.batch_norm(xb, rm.copy(), rv.copy(), training=True, momentum=float('nan'))", V),
    ("bn_mom_inf", "pyconv.batch_norm(xb, rm.copy(), rv.copy(), training=True, momentum=float('-inf'))", V),
    ("bn_eps_str", "pyconv.batch_norm(xb, rm, rv, eps='1e-5')", ("TypeError", "ValueError")),
    ("bn_one_value", "pyconv.batch_norm(xb[:1, :, :1, :1], rm.copy(), rv.copy(), training=True)", V),
    ("bn_one_value_2d", "pyconv.batch_norm(np.ones((1, 3), f32), None, None, training=True)", V),
    ("bn_readonly_rm", """
m = rm.copy(); m.setflags(write=False)
pyconv.batch_norm(xb, m, rv.copy(), training=True)""", V),
    ("bn_readonly_rv", """
v = rv.copy(); v.setflags(write=False)
pyconv.batch_norm(xb, rm.copy(), v, training=True)""", V),
    ("bn_broadcast_rm", "pyconv.batch_norm(xb, np.broadcast_to(np.zeros(1, f32), (3,)), rv.copy(), training=True)", V),
    ("bn_aliased_stats", "s = np.ones(3, f32); pyconv.batch_norm(xb, s, s, training=True)", V),
    ("bn_overlap_stats", "s = np.ones(4, f32); pyconv.batch_norm(xb, s[:3], s[1:], training=True)", V),
    ("bn_readonly_ok_eval", """
m = rm.copy(); m.setflags(write=False); v = rv.copy(); v.setflags(write=False)
y = pyconv.batch_norm(xb, m, v, training=False)
assert np.array_equal(y, pyconv.batch_norm(xb, rm, rv, training=False))""", "ok|reject"),
    ("bn_readonly_unchanged", """
m = rm.copy(); m.setflags(write=False); v = rv.copy()
try:
    pyconv.batch_norm(xb, m, v, training=True)
except ValueError:
    pass
assert np.array_equal(v, rv), 'running_var written although the call was rejected'
result = 'ok'""", "ok|reject"),
    ("bn_batch0_train", "pyconv.batch_norm(xb[:0], rm.copy(), rv.copy(), training=True)", V),
    ("bn_batch0_eval", """
y = pyconv.batch_norm(xb[:0], rm, rv)
assert y.shape == (0, 3, 5, 5)""", "ok|reject"),
    ("bn_bwd_gy_shape", "pyconv.batch_norm_backward(xb[:, :, :4], xb, None)", V),
    ("bn_bwd_gy_dtype", "pyconv.batch_norm_backward(xb.astype(f64), xb, None)", T),
    ("bn_bwd_w_len", "pyconv.batch_norm_backward(xb, xb, np.ones(5, f32))", V),
    ("bn_bwd_eval_nostats", "pyconv.batch_norm_backward(xb, xb, None, training=False)", ("ValueError", "TypeError")),
    ("bn_bwd_eps_nan", "pyconv.batch_norm_backward(xb, xb, None, eps=float('nan'))", V),
    ("bn_bwd_one_value", "pyconv.batch_norm_backward(xb[:1, :, :1, :1], xb[:1, :, :1, :1])", V),
    ("bn_bwd_rank1", "pyconv.batch_norm_backward(np.ones(4, f32), np.ones(4, f32))", V),
]

MISC_CASES = [
    ("threads_0", "pyconv.set_num_threads(0)", V),
    ("threads_neg", "pyconv.set_num_threads(-3)", V),
    ("threads_huge", "pyconv.set_num_threads(2**63-1)", ("ValueError", "OverflowError")),
    ("threads_bigint", "pyconv.set_num_threads(2**70)", ("ValueError", "OverflowError", "TypeError")),
    ("threads_float", "pyconv.set_num_threads(2.0)", T),
    ("threads_none", "pyconv.set_num_threads(None)", T),
    ("isa_bogus", "_core._set_isa('bogus')", V),
    ("peak_threads_bigint", "_core._fma_peak_gflops(2**70, 0.01)", V),
    ("peak_seconds_nan", "_core._fma_peak_gflops(1, float('nan'))", V),
    ("peak_seconds_str", "_core._fma_peak_gflops(1, '1')", T),
    ("shape_pad_2e62", "pyconv.conv_output_size(8, 3, padding=2**62)", "ok|reject"),
]


MATMUL_CASES = [
    ("mm_rank1", "_core.matmul(np.ones(3, f32), np.ones((3, 2), f32))", V),
    ("mm_rank3", "_core.matmul(np.ones((1, 2, 3), f32), np.ones((3, 2), f32))", V),
    ("mm_inner", "_core.matmul(np.ones((2, 3), f32), np.ones((4, 2), f32))", V),
    ("mm_dtype_mix", "_core.matmul(np.ones((2, 3), f32), np.ones((3, 2), f64))", T),
    ("mm_int", "_core.matmul(np.ones((2, 3), np.int64), np.ones((3, 2), np.int64))", T),
    ("mm_none", "_core.matmul(None, np.ones((3, 2), f32))", T),
    ("mm_list", "_core.matmul([[1.0]], [[1.0]])", T),
    ("mm_f16", "_core.matmul(np.ones((2, 3), np.float16), np.ones((3, 2), np.float16))", T),
    ("mm_overflow", """
a = np.broadcast_to(np.ones(1, f32), (2**31, 2**31))
_core.matmul(a, np.broadcast_to(np.ones(1, f32), (2**31, 2**31)))""", ("OverflowError", "ValueError", "MemoryError")),
    ("mm_empty", """
y = _core.matmul(np.ones((3, 0), f32), np.ones((0, 4), f32))
assert y.shape == (3, 4) and not y.any()""", "ok|reject"),
    ("mm_misaligned", """
buf = bytearray(4 * 12 + 1)
a = np.frombuffer(buf, f32, 12, 1).reshape(3, 4); a[...] = np.arange(12).reshape(3, 4)
b = np.arange(8, dtype=f32).reshape(4, 2)
assert np.array_equal(_core.matmul(a, b), _core.matmul(np.ascontiguousarray(a), b))""", "ok|reject"),
]


@needs("matmul")
def test_matmul_rejects_bad_arguments(worker):
    check_cases(worker, MATMUL_CASES)


@needs("conv2d", "conv1d", "conv2d_backward", "conv1d_backward")
def test_conv_rejects_bad_arguments(worker):
    check_cases(worker, CONV_CASES)


@needs("max_pool2d", "max_pool1d", "max_pool2d_backward", "max_unpool2d", "max_unpool1d")
def test_pool_rejects_bad_arguments(worker):
    check_cases(worker, POOL_CASES)


@needs("batch_norm_eval", "batch_norm_train", "batch_norm_backward_train")
def test_batch_norm_rejects_bad_arguments(worker):
    check_cases(worker, BN_CASES)


def test_misc_rejects_bad_arguments(worker):
    check_cases(worker, MISC_CASES)


# ------------------------------------------------------- _core entry points, directly
# The C++ entry points validate on their own: these cases bypass pyconv.functional.
# Each group starts with a valid baseline call ('ok'), so a changed signature shows up
# as a failure rather than as a TypeError that would pass for a rejection.

CORE_CONV = """
def cf(x=x4, w=w4, b=None, s=(1, 1), ph=(0, 0), pw=(0, 0), d=(1, 1), g=1, path='auto'):
    return _core.conv2d_forward(x, w, b, s[0], s[1], ph[0], ph[1], pw[0], pw[1], d[0], d[1], g, path)
def cb(dy, x=x4, w=w4, s=(1, 1), ph=(0, 0), pw=(0, 0), d=(1, 1), g=1, need=(True, True, True), path='auto'):
    return _core.conv2d_backward(dy, x, w, s[0], s[1], ph[0], ph[1], pw[0], pw[1], d[0], d[1], g,
                                 need[0], need[1], need[2], path)
dy6 = np.ones((2, 4, 6, 6), f32)
"""

CORE_CONV_CASES = [
    ("core_conv_ok", "y = cf(b=b4); assert np.array_equal(y, ref.conv2d(x4, w4, b4))", "ok"),
    ("core_conv_bwd_ok", "gx, gw, gb = cb(dy6); assert gx.shape == x4.shape and gw.shape == w4.shape", "ok"),
    ("core_conv_x3", "cf(x=x4[0])", V),
    ("core_conv_w3", "cf(w=w4[0])", V),
    ("core_conv_cin", "cf(w=np.ones((4, 2, 3, 3), f32))", V),
    ("core_conv_groups0", "cf(g=0)", V),
    ("core_conv_groups_neg", "cf(g=-3)", V),
    ("core_conv_groups_nodiv", "cf(w=np.ones((4, 1, 3, 3), f32), g=3)", V),
    ("core_conv_groups_max", "cf(g=2**63-1)", V),
    ("core_conv_stride0", "cf(s=(0, 1))", V),
    ("core_conv_stride_neg", "cf(s=(1, -1))", V),
    ("core_conv_stride_max", "y = cf(s=(2**63-1, 2**63-1)); assert np.array_equal(y, ref.conv2d(x4, w4, stride=2**63-1))",
     "ok|reject"),
    ("core_conv_stride_max_pad", """
y = cf(s=(2**63-1, 2**63-1), ph=(1, 1), pw=(2, 2))
assert np.array_equal(y, ref.conv2d(x4, w4, stride=2**63-1, padding=((1, 1), (2, 2))))""", "ok|reject"),
    ("core_conv_pad_neg", "cf(ph=(-1, 0))", V),
    ("core_conv_pad_neg_hi", "cf(pw=(1, -2))", V),
    ("core_conv_pad_2e62", "cf(ph=(2**62, 2**62))", VO),
    ("core_conv_pad_max", "cf(pw=(2**63-1, 0))", VO),
    ("core_conv_pad_max_both", "cf(ph=(2**63-1, 2**63-1), pw=(2**63-1, 2**63-1))", VO),
    ("core_conv_pad_2e31", "cf(ph=(2**31, 2**31), pw=(2**31, 2**31))", VO + ("MemoryError",)),
    ("core_conv_dil0", "cf(d=(0, 1))", V),
    ("core_conv_dil_2e62", "cf(d=(2**62, 1))", VO),
    ("core_conv_dil_max", "cf(d=(1, 2**63-1))", VO),
    ("core_conv_dil_pad", "cf(d=(2**62, 1), ph=(2**62, 2**62))", VO),
    ("core_conv_path_bogus", "cf(path='bogus')", V),
    ("core_conv_path_pointwise_3x3", "cf(path='pointwise')", V),
    ("core_conv_path_depthwise_dense", "cf(path='depthwise')", V),
    ("core_conv_bias_len", "cf(b=np.ones(5, f32))", V),
    ("core_conv_bias_rank", "cf(b=np.ones((4, 1), f32))", V),
    ("core_conv_bias_dtype", "cf(b=np.ones(4, f64))", T),
    ("core_conv_bias_list", "cf(b=[1.0, 1.0, 1.0, 1.0])", T),
    ("core_conv_x_none", "cf(x=None)", T),
    ("core_conv_x_int", "cf(x=x4.astype(np.int32))", T),
    ("core_conv_w_dtype", "cf(w=w4.astype(f64))", T),
    ("core_conv_kernel_big", "cf(w=np.ones((4, 3, 9, 9), f32))", V),
    ("core_conv_kernel0", "cf(w=np.ones((4, 3, 0, 3), f32))", V),
    ("core_conv_huge_out", "cf(x=huge, w=np.broadcast_to(np.ones(1, f32), (2**31, 1, 1, 1)))",
     VO + ("MemoryError",)),
    ("core_conv_bwd_dy_small", "cb(np.ones((2, 4, 5, 5), f32))", V),
    ("core_conv_bwd_dy_big", "cb(np.ones((2, 4, 7, 7), f32))", V),
    ("core_conv_bwd_dy_channels", "cb(np.ones((2, 5, 6, 6), f32))", V),
    ("core_conv_bwd_dy_batch", "cb(np.ones((3, 4, 6, 6), f32))", V),
    ("core_conv_bwd_dy_rank", "cb(np.ones((2, 4, 36), f32))", V),
    ("core_conv_bwd_dy_dtype", "cb(np.ones((2, 4, 6, 6), f64))", T),
    ("core_conv_bwd_groups0", "cb(dy6, g=0)", V),
    ("core_conv_bwd_pad_2e62", "cb(dy6, ph=(2**62, 2**62))", VO),
    ("core_conv_bwd_path_bogus", "cb(dy6, path='x')", V),
    ("core_conv_bwd_none_needed", "r = cb(dy6, need=(False, False, False)); assert all(v is None for v in r)",
     "ok|reject"),
]

CORE_POOL = """
def mp(x=xp, k=(2, 2), s=(2, 2), p=(0, 0), d=(1, 1), ceil=False, idx=True):
    return _core.max_pool2d(x, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], ceil, idx)
yq, iq = mp()
"""

CORE_POOL_CASES = [
    ("core_pool_ok", """
y, i = mp()
ry, ri = ref.max_pool2d(xp, 2, return_indices=True)
assert np.array_equal(y, ry) and np.array_equal(i, ri)""", "ok"),
    ("core_pool_bwd_ok", "g = _core.max_pool2d_backward(yq, iq, 6, 6); assert g.shape == xp.shape", "ok"),
    ("core_unpool_ok", "u = _core.max_unpool2d(yq, iq, 6, 6); assert u.shape == xp.shape", "ok"),
    ("core_pool_rank3", "mp(x=xp[0])", V),
    ("core_pool_k0", "mp(k=(0, 2))", V),
    ("core_pool_kneg", "mp(k=(2, -2))", V),
    ("core_pool_k_max", "mp(k=(2**63-1, 2))", VO),
    ("core_pool_k_bigint", "mp(k=(2**64, 2))", ("ValueError", "OverflowError", "TypeError")),
    ("core_pool_s0", "mp(s=(0, 2))", V),
    ("core_pool_s_max", "y, i = mp(s=(2**63-1, 2**63-1)); assert y.shape == (2, 3, 1, 1)", "ok|reject"),
    ("core_pool_p_gt_half", "mp(p=(2, 0))", V),
    ("core_pool_p_neg", "mp(p=(0, -1))", V),
    ("core_pool_p_max", "mp(k=(2**63-1, 2), p=(2**62, 0))", VO),
    ("core_pool_d0", "mp(d=(1, 0))", V),
    ("core_pool_d_max", "mp(k=(3, 3), d=(2**63-1, 1), p=(1, 1))", VO),
    ("core_pool_too_big", "mp(k=(7, 7))", V),
    ("core_pool_int", "mp(x=xp.astype(np.int64))", T),
    ("core_pool_none", "mp(x=None)", T),
    ("core_pool_bwd_idx_i32", "_core.max_pool2d_backward(yq, iq.astype(np.int32), 6, 6)", T),
    ("core_pool_bwd_idx_f64", "_core.max_pool2d_backward(yq, iq.astype(f64), 6, 6)", T),
    ("core_pool_bwd_idx_list", "_core.max_pool2d_backward(yq, iq.tolist(), 6, 6)", T),
    ("core_pool_bwd_idx_shape", "_core.max_pool2d_backward(yq, iq[:, :, :1], 6, 6)", V),
    ("core_pool_bwd_idx_rank", "_core.max_pool2d_backward(yq, iq[0], 6, 6)", V),
    ("core_pool_bwd_idx_oob", "i = iq.copy(); i[1, 1, 1, 1] = 36; _core.max_pool2d_backward(yq, i, 6, 6)", I),
    ("core_pool_bwd_idx_neg", "i = iq.copy(); i[1, 2, 2, 2] = -1; _core.max_pool2d_backward(yq, i, 6, 6)", I),
    ("core_pool_bwd_idx_min", "i = iq.copy(); i[0, 0, 0, 0] = -2**63; _core.max_pool2d_backward(yq, i, 6, 6)", I),
    ("core_pool_bwd_small_plane", "_core.max_pool2d_backward(yq, iq, 2, 2)", I + V),
    ("core_pool_bwd_h0", "_core.max_pool2d_backward(yq, iq, 0, 6)", V + I),
    ("core_pool_bwd_hneg", "_core.max_pool2d_backward(yq, iq, -6, -6)", V),
    ("core_pool_bwd_plane_overflow", "_core.max_pool2d_backward(yq, iq, 2**40, 2**40)", VO),
    ("core_pool_bwd_out_overflow", "_core.max_pool2d_backward(yq, iq, 2**31, 2**31)", VO + ("MemoryError",)),
    ("core_pool_bwd_h_bigint", "_core.max_pool2d_backward(yq, iq, 2**64, 1)", ("ValueError", "OverflowError", "TypeError")),
    ("core_pool_bwd_gy_int", "_core.max_pool2d_backward(yq.astype(np.int64), iq, 6, 6)", T),
    ("core_unpool_idx_oob", "i = iq.copy(); i[0, 0, 2, 2] = 99; _core.max_unpool2d(yq, i, 6, 6)", I),
    ("core_unpool_idx_neg", "i = iq.copy(); i[0, 0, 2, 2] = -7; _core.max_unpool2d(yq, i, 6, 6)", I),
    ("core_unpool_idx_f32", "_core.max_unpool2d(yq, iq.astype(f32), 6, 6)", T),
    ("core_unpool_idx_shape", "_core.max_unpool2d(yq, iq[:1], 6, 6)", V),
    ("core_unpool_out0", "_core.max_unpool2d(yq, iq, 0, 0)", V + I),
    ("core_unpool_out_neg", "_core.max_unpool2d(yq, iq, -1, 6)", V),
    ("core_unpool_overflow", "_core.max_unpool2d(yq, iq, 2**40, 2**40)", VO),
    ("core_unpool_out_bigint", "_core.max_unpool2d(yq, iq, 2**63, 1)", ("ValueError", "OverflowError", "TypeError")),
    ("core_unpool_x_none", "_core.max_unpool2d(None, iq, 6, 6)", T),
]

CORE_BN = """
def bf(x=xb, m=None, v=None, w=None, b=None, training=True, momentum=0.1, eps=1e-5):
    return _core.batch_norm_forward(x, m, v, w, b, training, momentum, eps)
def bb(dy=xb, x=xb, w=None, m=None, v=None, training=True, eps=1e-5):
    return _core.batch_norm_backward(dy, x, w, m, v, training, eps)
"""

CORE_BN_CASES = [
    ("core_bn_ok", """
m, v = rm.copy(), rv.copy()
y = bf(m=m, v=v)
if isinstance(y, tuple):
    y = y[0]
m2, v2 = rm.copy(), rv.copy()
assert np.allclose(y, ref.batch_norm(xb, m2, v2, training=True), atol=1e-4)
assert np.allclose(m, m2) and np.allclose(v, v2)""", "ok"),
    ("core_bn_bwd_ok", "r = bb(); assert r[0].shape == xb.shape", "ok"),
    ("core_bn_rank1", "bf(x=np.ones(4, f32))", V),
    ("core_bn_rank0", "bf(x=np.float32(1.0))", V + T),
    ("core_bn_one_value", "bf(x=xb[:1, :, :1, :1])", V),
    ("core_bn_batch0", "bf(x=xb[:0])", V),
    ("core_bn_rm_len", "bf(m=np.zeros(4, f32), v=rv.copy())", V),
    ("core_bn_rv_rank", "bf(m=rm.copy(), v=np.ones((3, 1), f32))", V),
    ("core_bn_w_len", "bf(w=np.ones(2, f32))", V),
    ("core_bn_b_dtype", "bf(b=np.ones(3, f64))", T),
    ("core_bn_rm_int", "bf(m=np.zeros(3, np.int64), v=rv.copy())", T),
    ("core_bn_rm_list", "bf(m=[0.0, 0.0, 0.0], v=rv.copy())", T),
    ("core_bn_x_none", "bf(x=None)", T),
    ("core_bn_training_str", "bf(training='yes')", T + V),
    ("core_bn_training_none", "bf(training=None)", T + V),
    ("core_bn_momentum_nan", "bf(m=rm.copy(), v=rv.copy(), momentum=float('nan'))", V),
    ("core_bn_momentum_str", "bf(momentum='0.1')", T + V),
    ("core_bn_eps_neg", "bf(eps=-1.0)", V),
    ("core_bn_eps_inf", "bf(eps=float('inf'))", V),
    ("core_bn_eps_nan", "bf(eps=float('nan'))", V),
    ("core_bn_readonly_rm", "m = rm.copy(); m.setflags(write=False); bf(m=m, v=rv.copy())", V),
    ("core_bn_readonly_rv", "v = rv.copy(); v.setflags(write=False); bf(m=rm.copy(), v=v)", V),
    ("core_bn_broadcast_rv", "bf(m=rm.copy(), v=np.broadcast_to(np.ones(1, f32), (3,)))", V),
    ("core_bn_aliased", "s = np.ones(3, f32); bf(m=s, v=s)", V),
    ("core_bn_overlap", "s = np.ones(4, f32); bf(m=s[:3], v=s[1:])", V),
    ("core_bn_half_stats", "bf(m=rm.copy(), v=None)", "ok|reject"),
    ("core_bn_eval_no_stats", "bf(training=False)", V + T),
    ("core_bn_bwd_dy_shape", "bb(dy=xb[:, :, :3])", V),
    ("core_bn_bwd_dy_dtype", "bb(dy=xb.astype(f64))", T),
    ("core_bn_bwd_w_len", "bb(w=np.ones(5, f32))", V),
    ("core_bn_bwd_eval_no_stats", "bb(training=False)", V + T),
    ("core_bn_bwd_eps_nan", "bb(eps=float('nan'))", V),
    ("core_bn_bwd_one_value", "bb(dy=xb[:1, :, :1, :1], x=xb[:1, :, :1, :1])", V),
]


def _core_has(*names):
    missing = [n for n in names if not hasattr(pyconv._core, n)]
    return pytest.mark.skipif(bool(missing), reason=f"_core lacks {missing}")


@_core_has("conv2d_forward", "conv2d_backward")
def test_core_conv_validates(worker):
    check_cases(worker, [(i, CORE_CONV + c, e) for i, c, e in CORE_CONV_CASES])


@_core_has("max_pool2d", "max_pool2d_backward", "max_unpool2d")
def test_core_pool_validates(worker):
    check_cases(worker, [(i, CORE_POOL + c, e) for i, c, e in CORE_POOL_CASES])


@_core_has("batch_norm_forward", "batch_norm_backward")
def test_core_batch_norm_validates(worker):
    check_cases(worker, [(i, CORE_BN + c, e) for i, c, e in CORE_BN_CASES])


# ------------------------------------------------------------------ layouts, bitwise


def _layout_variants(case, dtype):
    """(label, kwargs, baseline kwargs) for every array argument in every layout."""
    base = case.make(dtype)
    for arg, value in base.items():
        if not isinstance(value, np.ndarray):
            continue
        for layout in LAYOUTS + ("broadcast",):
            if layout == "broadcast" and value.ndim < 2 and arg not in ("running_mean", "running_var"):
                continue
            kw = case.make(dtype)
            if layout == "broadcast":
                kw[arg] = relayout(kw[arg], "broadcast")
                basekw = case.make(dtype)
                basekw[arg] = np.ascontiguousarray(kw[arg])
            else:
                kw[arg] = relayout(kw[arg], layout)
                basekw = case.make(dtype)
            yield f"{arg}:{layout}", arg, layout, kw, basekw


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layouts_bitwise(case, dtype):
    """Non-contiguous, reversed (negative strides), broadcast (zero strides), Fortran,
    misaligned and read-only inputs give bitwise the contiguous result."""
    if case.name not in AVAILABLE:
        pytest.skip(f"{case.name} not implemented yet")
    failures = []
    checked = 0
    for label, arg, layout, kw, basekw in _layout_variants(case, dtype):
        before = np.array(kw[arg], copy=True)
        if arg in case.mutates and layout in ("readonly", "broadcast"):
            # a running statistic that training must write: a clear ValueError
            with pytest.raises(ValueError):
                case.call(**kw)
            assert same_bits(np.asarray(kw[arg]), before), f"{label}: written although rejected"
            checked += 1
            continue
        want = case.call(**basekw)
        got = case.call(**kw)
        checked += 1
        if len(got) != len(want) or not all(same_bits(g, w) for g, w in zip(got, want)):
            failures.append(label)
        if arg not in case.mutates:
            assert same_bits(np.asarray(kw[arg]), before), f"{label}: the op modified its input"
    assert checked > 0
    assert not failures, f"{case.name}: results differ from the contiguous call for {failures}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_outputs_are_new_c_contiguous_arrays(case):
    if case.name not in AVAILABLE:
        pytest.skip(f"{case.name} not implemented yet")
    for dtype in (np.float32, np.float64):
        kw = case.make(dtype)
        outs = case.call(**kw)
        for o in outs[: len(outs) - len(case.mutates)]:
            if o is None:
                continue
            assert isinstance(o, np.ndarray) and o.flags.c_contiguous
            assert o.dtype == dtype or o.dtype == np.int64
            for v in kw.values():
                if isinstance(v, np.ndarray):
                    assert not np.shares_memory(o, v), f"{case.name}: output aliases an input"


def test_large_outputs_are_64_byte_aligned():
    """Outputs of 1 MiB and more start on a 64-byte boundary: a view of a byte buffer 64
    bytes longer, C-contiguous, writeable, alive after the call; smaller ones are plain
    arrays that own their data."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 130, 130)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    for dtype in (np.float32, np.float64):
        xd, wd = x.astype(dtype), w.astype(dtype)
        outs = [pyconv.conv2d(xd, wd, padding=1), pyconv.max_pool2d(xd, 1, return_indices=True)[1],
                *pyconv.conv2d_backward(pyconv.conv2d(xd, wd, padding=1), xd, wd, padding=1)[:1]]
        for o in outs:
            assert o.nbytes >= 1 << 20 and o.ctypes.data % 64 == 0
            assert o.flags.c_contiguous and o.flags.writeable and not o.flags.owndata
            assert o.base.dtype == np.uint8 and o.base.nbytes == o.nbytes + 64
        y = outs[0]
        del outs
        y[...] = 1  # the buffer lives with the view
        assert y.sum() == y.size
        small = pyconv.conv2d(xd[:1, :, :8, :8], wd)
        assert small.nbytes < 1 << 20 and small.flags.owndata


@needs("batch_norm_train")
def test_running_stats_updated_through_views():
    """Non-contiguous running statistics are updated in place through the view."""
    case = next(c for c in CASES if c.name == "batch_norm_train")
    kw = case.make(np.float64)
    want = case.call(**kw)
    kw = case.make(np.float64)
    big_m = np.zeros(15)
    big_v = np.zeros(10)
    vm = big_m[::3]
    vm[...] = kw["running_mean"]
    vv = big_v[::-2]
    vv[...] = kw["running_var"]
    kw["running_mean"], kw["running_var"] = vm, vv
    case.call(**kw)
    assert same_bits(np.ascontiguousarray(vm), want[1])
    assert same_bits(np.ascontiguousarray(vv), want[2])
    # the gaps of the views are untouched
    assert np.all(np.delete(big_m, np.arange(0, 15, 3)) == 0)
    assert np.all(np.delete(big_v, np.arange(9, -1, -2)) == 0)


# ------------------------------------------------------------------------ _core level

def test_core_functions_are_listed():
    """The _core entry points the direct-call tests know about (a renamed entry point
    should update them)."""
    names = [n for n in dir(pyconv._core) if not n.startswith("__")]
    assert "kernel_info" in names and "set_num_threads" in names
