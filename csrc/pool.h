// Max-pooling with switches (argmax indices), its backward (scatter-add through the
// indices) and max-unpooling, over NCHW planes. 1D ops run through these with H = 1.
//
// Semantics (shared by every kernel variant, so all variants are bitwise identical):
//   * windows scan their in-bounds taps in row-major order; implicit padding is -inf;
//   * a tap replaces the running maximum when `v > max || isnan(v)`, so ties keep the
//     first tap and a NaN window reports its last NaN; the running maximum starts at the
//     first in-bounds tap, so an all -inf window reports its first in-bounds element;
//   * indices are int64, flat h*W + w within each (n, c) plane of the unpadded input.
#pragma once
#include <cstdint>

#include "cpu.h"
#include "params.h"

namespace pyconv {

// Fills p.h.out / p.w.out from the sizes, kernel, stride, padding, dilation and ceil_mode
// (PyTorch's rule) after checking every value; std::invalid_argument on any bad value,
// including a configuration in which some window covers no input element.
void pool_resolve(PoolParams& p);

// Forward. x: n*c planes of h.in*w.in; y: n*c planes of h.out*w.out; idx may be null
// (no indices wanted). p must have been through pool_resolve.
void max_pool2d_forward(const PoolParams& p, const float* x, float* y, i64* idx);
void max_pool2d_forward(const PoolParams& p, const double* x, double* y, i64* idx);

// Scatter kernels over `planes` planes: src planes of src_h*src_w elements, dst planes of
// dst_h*dst_w elements (the caller checked both products fit int64). dst is fully
// overwritten (zeroed, then scattered).
// backward: dst[idx] += src (sequential order within a plane);
// unpool:   dst[idx]  = src (the last write in scan order wins).
// Every index is checked against [0, dst_plane) before its element is written. Returns
// -1 on success, else the flat position (into idx) of the first out-of-range index; dst
// is then unspecified (the callers discard it: dst is always a fresh array, so nothing
// the caller can see has been written).
i64 max_pool_backward(i64 planes, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, const float* src,
                      const i64* idx, float* dst);
i64 max_pool_backward(i64 planes, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, const double* src,
                      const i64* idx, double* dst);
i64 max_unpool(i64 planes, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, const float* src,
               const i64* idx, float* dst);
i64 max_unpool(i64 planes, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, const double* src,
               const i64* idx, double* dst);

// Name of the forward variant the candidate list picks for these params and dtype
// (tests and benchmarks report it).
const char* max_pool2d_variant(const PoolParams& p, bool is_double, bool want_indices);

namespace pool_detail {

// One output row's interior: outputs [ow_a, ow_b) whose every column tap is in bounds,
// over the in-bounds tap rows. Offsets are in elements of the input plane.
template <typename T>
struct RowTask {
  const T* x;       // input plane
  i64 W;            // input width
  i64 row0;         // first in-bounds tap row (input row index)
  i64 nrows;        // in-bounds tap rows
  i64 row_step;     // elements between consecutive tap rows (dilation_h * W)
  i64 dH;           // dilation_h
  i64 kW, sW, dW, pW;
  i64 ow_a, ow_b;   // interior output columns
  T* y;             // output row
  i64* idx;         // output index row, or null
};

// Max taps the vector kernels take (kH*kW); larger windows use the scalar path.
constexpr i64 kMaxVectorTaps = 256;

}  // namespace pool_detail

// AVX2 row kernels (csrc/ukernels/pool_avx2.cpp). Each handles [ow_a, ow_b) of one row;
// the caller guarantees ow_b - ow_a >= the vector width (8 floats / 4 doubles).
namespace pool_avx2 {
using pool_detail::RowTask;
// sW == 2, any kW/dW; NT > 0: specialised for a fixed number of taps (rows*kW).
void row_s2_f32_taps4(const RowTask<float>& t, bool want_idx);
void row_s2_f32_taps9(const RowTask<float>& t, bool want_idx);
void row_s2_f32(const RowTask<float>& t, bool want_idx);
void row_s1_f32(const RowTask<float>& t, bool want_idx);
void row_s2_f64_taps4(const RowTask<double>& t, bool want_idx);
void row_s2_f64_taps9(const RowTask<double>& t, bool want_idx);
void row_s2_f64(const RowTask<double>& t, bool want_idx);
void row_s1_f64(const RowTask<double>& t, bool want_idx);

// Forward 2x2 stride-2 (no padding, no dilation) over whole planes narrower than a
// vector: W == 2 * Wo, Wo < 8, H >= 2 * Ho. Planes [0, planes) of x (H*W apart) into y
// (and idx when non-null; Ho*Wo apart); 8 outputs of a plane at a time, flat over its
// rows (gathered taps, the select chain in scan order as every path: the same results),
// the last Ho*Wo % 8 by the scalar rule.
void small_2x2_f32(const float* x, i64 planes, i64 H, i64 W, i64 Ho, i64 Wo, float* y, i64* idx);
// The same for planes of fewer than 8 outputs with H == 2 * Ho (the input planes then
// follow each other as the output planes do): outputs [o0, o1) of the whole tensor, flat,
// 8 at a time across plane boundaries (o0 a multiple of 8; ohw = Ho * Wo).
void tiny_2x2_f32(const float* x, i64 o0, i64 o1, i64 W, i64 Wo, i64 ohw, float* y, i64* idx);

// Backward rows of a plane whose indices all lie in their own 2x2 stride-2 window
// (output (oh, ow) covers input rows 2oh, 2oh+1 and columns 2ow, 2ow+1; the caller
// checked 2*ho <= H, 2*wo <= W, W < 2**30): writes input rows [2*oh0, 2*oh1) of the plane
// out (row length W), each element 0 + g where an index points at it and 0 elsewhere,
// exactly what zero-fill + scatter-add gives (no input element lies in two windows).
// g and idx are the plane's (ho, wo) arrays. Returns false, having written an unspecified
// part of out, as soon as an index lies outside its window (the caller then scatters).
bool bwd_2x2_rows_f32(const float* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W, float* out);
bool bwd_2x2_rows_f64(const double* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W,
                      double* out);
// dst[idx[i]] += src[i] for i in [0, n), in order, once every index of the block is known
// to lie in [0, limit); false (nothing written) if one does not.
bool scatter_add_block_f32(const float* src, const i64* idx, i64 n, i64 limit, float* dst);
bool scatter_add_block_f64(const double* src, const i64* idx, i64 n, i64 limit, double* dst);
// Copies `lines` 64-byte lines from src to the 64-byte aligned dst with non-temporal
// stores (no read for ownership), zeroing each src line after it if zero_src;
// store_fence() orders them before later stores.
void stream_lines(void* dst, void* src, i64 lines, bool zero_src);
void store_fence();
}  // namespace pool_avx2

}  // namespace pyconv
