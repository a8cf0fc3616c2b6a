// 2D convolution forward and backward (1D runs through the same code with H = 1).
//
// Layout NCHW, weight (C_out, C_in/groups, kH, kW), cross-correlation. The lowering is an
// ordered candidate list, most specialised first (see conv.cpp):
//   pointwise  1x1, stride 1, no padding: the input plane is the GEMM's B matrix as is;
//   depthwise  C_in/groups == 1 with groups > 1: direct kernels vectorised along W
//              (AVX-512, stride 1: no padded copy, backward fused per input channel);
//   winograd   3x3, stride 1, dilation 1: Winograd F(2x2,3x3) (conv_winograd.cpp), 2.25x
//              fewer multiplies; NOT the direct summation order: on real data its error is
//              a small constant factor above the direct sum's (see conv_winograd.cpp), on
//              integer data of moderate size it is bit-exact like every other path;
//   winograd_1d  kernel 1 x 2 or 1 x 3 (a 1D kernel of 2 or 3 taps, e.g. the causal
//              dilated WaveNet conv), stride 1 along W: Winograd F(2,2) / F(2,3) along W
//              (conv_winograd_1d.cpp), output pairs (t, t + dilation) from 3 channel
//              products instead of 4 / 4 instead of 6;
//   generic    implicit GEMM per (image, group) with the unfolding fused into B packing;
//              the exact direct summation order: force path="generic" to get it;
//              backward input = W^T dY in bounded column tiles + col2im scatter,
//              backward weight = dY x unfold(X)^T with a transposing unfold packer.
//              Float32 under AVX-512 (conv_avx512.cpp) it reads a zero-padded copy of
//              the input rows, split by phase at stride >= 2 along W, where every
//              unfolded row is a run of consecutive elements: the forward (K within one
//              GEMM K block) and grad input's W^T dY run as direct 16x16 tiles without
//              packing B (bitwise equal to the packed GEMM), the col2im adds into a
//              phase-split buffer, and grad weight in pieces is lane-parallel dot
//              products (its own fixed summation order, deterministic).
// Every entry point expects parameters already validated (bindings.cpp does it with
// conv_validate()); nothing here throws inside a parallel region.
#pragma once
#include <cstddef>

#include "params.h"

namespace pyconv {

enum class ConvPath : int {
  automatic = -1,
  pointwise = 0,
  depthwise = 1,
  generic = 2,
  winograd = 3,
  winograd_1d = 4
};

// "auto", "pointwise", "depthwise", "winograd", "winograd_1d", "generic"; throws std::invalid_argument otherwise.
ConvPath conv_path_from_name(const char* name);
const char* conv_path_name(ConvPath path);
// What the path's supports() asks of the parameters, in words (for error messages).
const char* conv_path_needs(ConvPath path);
bool conv_path_supports(ConvPath path, const ConvParams& p);
// First candidate of the ordered list whose preferred() accepts p (supports() says what a
// forced path can run; preferred() where the automatic choice takes it).
ConvPath conv_choose_path(const ConvParams& p);

// Checks every field of p (sizes >= 0 or >= 1 as required, groups divide the channels,
// output size > 0), sets p.h.out and p.w.out from the size formula, and checks that every
// element count and workspace size fits in int64. Throws std::invalid_argument /
// std::overflow_error.
void conv_validate(ConvParams& p);

// Extra memory (bytes) a forward or backward call may take beyond its outputs, for the
// given thread count: per-thread GEMM packing buffers plus, for grad input, one col2im
// tile per thread; all of it from pyconv::scratch(), reused across calls.
std::size_t conv_workspace_bytes(const ConvParams& p, std::size_t elem_size, bool backward,
                                 int threads);

// The grad-input col2im walk: a tile holds rows (ci, kh, kw), ci < nci, each with the
// output pixels j0 .. j0+jn-1; for every tile row, in that order, and every output row
// its pixels cross whose tap-kh input row ih lies in [h0, h1), add(ci, kw, ih, ow, src,
// len) adds the segment's len values src (output columns ow ..) into the input. The
// scalar and AVX-512 scatters share it, so they add in the same order.
template <typename T, typename Add>
inline void col2im_walk(const ConvParams& p, const T* tile, i64 nci, i64 j0, i64 jn, i64 h0, i64 h1, Add&& add) {
  const i64 kH = p.h.kernel, kW = p.w.kernel, Wo = p.w.out;
  for (i64 ci = 0; ci < nci; ++ci)
    for (i64 kh = 0; kh < kH; ++kh)
      for (i64 kw = 0; kw < kW; ++kw) {
        const T* row = tile + ((ci * kH + kh) * kW + kw) * jn;
        i64 oh = j0 / Wo, ow = j0 % Wo, at = 0;
        while (at < jn) {
          const i64 len = jn - at < Wo - ow ? jn - at : Wo - ow;
          const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
          if (ih >= h0 && ih < h1) add(ci, kw, ih, ow, row + at, len);
          at += len;
          ow = 0;
          ++oh;
        }
      }
}

// y (N, C_out, Ho, Wo) = conv(x, w) + bias; bias may be null.
template <typename T>
void conv2d_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y,
                    ConvPath path = ConvPath::automatic);

// Any of dx (N, C_in, H, W), dw (C_out, C_in/g, kH, kW), db (C_out) may be null (not
// wanted). x is needed only for dw, w only for dx.
template <typename T>
void conv2d_backward(const ConvParams& p, const T* dy, const T* x, const T* w, T* dx, T* dw,
                     T* db, ConvPath path = ConvPath::automatic);

// AVX2+FMA depthwise plane kernels (csrc/ukernels/conv_avx2.cpp); reached only when
// active_isa() says AVX2 is usable. `kw_lo/kw_hi[kw]` is the valid output-column range
// of tap kw: ow with 0 <= ow*sw + kw*dw - pw < W.
// Elements of the zero-padded plane copy the AVX2 depthwise kernels use (stride 1 along
// W): max((Ho-1)*sH + (kH-1)*dH + 1, H + kH*dH) rows of round_up(max(W, Wo), lanes) +
// (kW-1)*dW columns.
i64 dw_forward_buffer_elems(const ConvParams& p, int lanes);

// ---- Winograd F(2x2,3x3) (csrc/conv_winograd.cpp)
// Supported: 3x3 kernel, stride 1, dilation 1, any padding and groups.
bool winograd_supports(const ConvParams& p);
// Where the automatic choice takes it (measured faster than generic; bench/conv.py), and,
// when it does, which gradients of an automatic backward go through it (the others take
// the generic lowering).
bool winograd_preferred(const ConvParams& p);
bool winograd_input_grad_preferred(const ConvParams& p);
bool winograd_weight_grad_preferred(const ConvParams& p);
// Bytes of scratch a Winograd forward (backward: grad input and grad weight) call takes
// with `threads` threads; 0 where it is not supported.
std::size_t winograd_workspace_bytes(const ConvParams& p, std::size_t elem, bool backward, int threads);
// y = conv(x, w) + bias (bias may be null); p.n > 0.
template <typename T>
void winograd_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y);
// dx as the forward Winograd convolution of dy with the flipped, channel-transposed
// weights; false (nothing written) when the mirrored padding would be negative (a pad > 2).
template <typename T>
bool winograd_backward_input(const ConvParams& p, const T* dy, const T* w, T* dx);
// dw through the Winograd domain, reduced over tile blocks in a fixed order.
template <typename T>
void winograd_backward_weight(const ConvParams& p, const T* dy, const T* x, T* dw);
// Tile transforms per ISA (winograd_kernels.h compiled with each file's flags).
#define PYCONV_WINO_DECL(ns)                                                                \
  namespace ns {                                                                            \
  void input_rows_f32(const float* const* rows, i64 len, float* out, i64 ps);               \
  void input_rows_f64(const double* const* rows, i64 len, double* out, i64 ps);             \
  void output_rows_f32(const float* m, i64 ps, i64 len, float bias, float* y0, float* y1);  \
  void output_rows_f64(const double* m, i64 ps, i64 len, double bias, double* y0, double* y1); \
  void weight_out_rows_f32(const float* x, i64 ps, i64 len, float* out);                    \
  void weight_out_rows_f64(const double* x, i64 ps, i64 len, double* out);                  \
  }
PYCONV_WINO_DECL(wino_avx2)
PYCONV_WINO_DECL(wino_avx512)
#undef PYCONV_WINO_DECL
// AVX-512 float32 panel kernels (16 tiles per vector, masked gathers / scatters; int32
// offsets: callers check that the arrays' element counts fit). See winograd_avx512.cpp.
namespace wino_avx512 {
void input_panels_f32(const float* x, i64 plane, i64 row, i64 c0, i64 c1, const int* off,
                      const unsigned short* masks, float* out, i64 ccs, i64 ps);
void output_panel_f32(const float* m, i64 ps, const int* yoff, const unsigned short* ymask, i64 row, float bias,
                      float* y);
void input_panel_runs_f32(const float* x, i64 plane, i64 row, i64 c0, i64 c1, int nruns, const i64* base,
                          const unsigned* ma, const unsigned* ma2, float* out, i64 ccs, i64 ps);
void output_panel_runs_f32(const float* m, i64 ps, float bias, float* y, i64 row, int nseg, const i64* off,
                           const int* l0, const unsigned* top, const unsigned* bot);
void weights_panel_f32(const float* w, i64 rs, i64 cs, bool flip, int m, i64 cg, float* out, i64 ps, bool stream);
void transpose_panels_f32(const float* in, i64 in_ps, i64 nt, float* out, i64 out_ps);
void grad_output_panel_runs_f32(const float* dy, i64 plane, i64 row, i64 nch, int nruns, const i64* base,
                                const unsigned* m, float* out, i64 ccs, i64 ps);
void grad_output_channels_f32(const float* dy, i64 plane, i64 row, int nch, i64 nt, const i64* off,
                              const unsigned char* valid, float* out, i64 ps);
}  // namespace wino_avx512

// ---- 1D Winograd along W for 1 x 2 and 1 x 3 kernels (csrc/conv_winograd_1d.cpp)
// Supported: kH == 1, kW == 2 or 3, stride 1 along W; any dilation, padding, groups, H stride.
bool winograd_1d_supports(const ConvParams& p);
// Where the automatic choice takes it (measured faster than generic; bench/conv.py).
bool winograd_1d_preferred(const ConvParams& p);
// Bytes of scratch a forward call takes with `threads` threads (0 where not supported).
std::size_t winograd_1d_workspace_bytes(const ConvParams& p, std::size_t elem, int threads);
// y = conv(x, w) + bias (bias may be null); p.n > 0.
template <typename T>
void winograd_1d_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y);
// dw = the weight gradient through the Winograd domain, reduced over fixed pieces of
// (image, row, pair chunk) units in a fixed order; p.n > 0.
template <typename T>
void winograd_1d_backward_weight(const ConvParams& p, const T* dy, const T* x, T* dw);
// Where the automatic backward takes it for grad weight (float32 on AVX-512).
bool winograd_1d_weight_grad_preferred(const ConvParams& p, std::size_t elem);
std::size_t winograd_1d_weight_workspace_bytes(const ConvParams& p, std::size_t elem, int threads);
namespace w1d_detail {
// Output channels per tile: 3 (2 taps) or 4 (3 taps) products of this many rows each
// keep 24 vector accumulators.
constexpr int mr(int taps) { return taps == 2 ? 8 : 6; }
constexpr i64 kMaxChunk = 512;  // pair columns one task packs at most
// Pairs per weight-gradient unit (a compile-time row length of its packed grad outputs).
constexpr int nc_weight(int taps) { return taps == 2 ? 128 : 96; }
// One output row's geometry: input width W, output width Wo, dilation d, left padding
// pad_lo, kernel taps r (2 or 3), and P, the number of pair columns (outputs t that start
// a pair (t, t + d): t mod 2d < d, t < Wo).
struct Geo {
  i64 W, Wo, d, pad_lo, P;
  int r;
};
// Output column t of pair column j (the first output of the pair).
inline i64 col(const Geo& g, i64 j) { return (j / g.d) * 2 * g.d + j % g.d; }
// How a tile writes its outputs: over them, added to them (a later K block), or over
// them with non-temporal stores where whole aligned 64-byte lines allow it (regular
// stores elsewhere; the caller fences before the outputs are read).
enum class Store { write, accumulate, stream };
}  // namespace w1d_detail
// AVX-512 pack and tile kernels (csrc/ukernels/winograd_1d_avx512.cpp), for d = 1, 2, 4
// or a multiple of 8.
namespace wino1d_avx512 {
void pack_f32(const float* x, i64 cs, const w1d_detail::Geo& g, i64 kc, i64 j0, i64 nc, float* dst);
void pack_f64(const double* x, i64 cs, const w1d_detail::Geo& g, i64 kc, i64 j0, i64 nc, double* dst);
void tile_f32(i64 kc, const float* a, const float* b, float* y, i64 y_rs, int m, i64 j0, const w1d_detail::Geo& g,
              w1d_detail::Store st, const float* bias);
void tile_f64(i64 kc, const double* a, const double* b, double* y, i64 y_rs, int m, i64 j0,
              const w1d_detail::Geo& g, w1d_detail::Store st, const double* bias);
// Orders this thread's non-temporal stores before its later stores (an sfence).
void stream_fence();
// Weight gradient, float32 (conv_winograd_1d.cpp describes the layouts).
void dw_pack_a_f32(const float* dy, i64 rs, int m, const w1d_detail::Geo& g, i64 j0, i64 kp, float* dst);
void dw_pack_b_f32(const float* x, i64 cs, int c, const w1d_detail::Geo& g, i64 j0, i64 kp, float* dst, float* tmp);
void dw_tile_f32(i64 kp, const float* a, const float* b, float* wp, i64 wp_rs, i64 q_stride, int taps);
}  // namespace wino1d_avx512

namespace avx2 {
// buf: dw_forward_buffer_elems(p, lanes) elements of per-thread scratch (stride-1 path).
template <typename T>
void dw_forward_plane(const ConvParams& p, const T* x, const T* wk, T bias, T* y,
                      const i64* kw_lo, const i64* kw_hi, T* buf);
// dx accumulates (the caller zeroes it); buf as for dw_forward_plane.
template <typename T>
void dw_backward_input_plane(const ConvParams& p, const T* dy, const T* wk, T* dx,
                             const i64* kw_lo, const i64* kw_hi, T* buf);
// acc[kh*kW + kw] += the plane's contribution to the weight gradient.
template <typename T>
void dw_backward_weight_plane(const ConvParams& p, const T* dy, const T* x, double* acc,
                              const i64* kw_lo, const i64* kw_hi, T* buf);
}  // namespace avx2

// AVX-512 forward unfolding packer (csrc/ukernels/conv_avx512.cpp), reached only when
// active_isa() is avx512: the same panels as the generic path's B packer (UnfoldB in
// conv.cpp) for stride 1 or 2 along W and a panel width of 16 floats / 8 doubles.
namespace avx512 {
void unfold_pack_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                     i64 jbase, i64 img, float* dst, i64 k0, i64 kc, i64 j0, i64 nc);
void unfold_pack_f64(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const double* x,
                     i64 jbase, i64 img, double* dst, i64 k0, i64 kc, i64 j0, i64 nc);
// y[0..n) += b (the forward's bias, added to the finished sum), masked tail.
void add_bias_f32(float* y, i64 n, float b);
// The grad-weight packer (UnfoldTB in conv.cpp), float32, 16-wide panels: stride 1 or 2
// along W, or any stride with dilation 1 along W and at least kUnfoldTRunsMinKw kernel
// columns (then packed from runs of consecutive taps, no transpose).
constexpr i64 kUnfoldTRunsMinKw = 4;
inline bool unfold_t_pack_supports(const ConvParams& p) {
  return p.w.stride <= 2 || (p.w.dilation == 1 && p.w.kernel >= kUnfoldTRunsMinKw);
}
void unfold_t_pack_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                       i64 cbase, float* dst, i64 k0, i64 kc, i64 j0, i64 nc);
// The grad-input col2im (col2im_tile in conv.cpp), float32, stride 1 or 2 along W: the
// same additions in the same order, vectorised along each output-row segment.
void col2im_tile_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* tile, i64 nci,
                     i64 j0, i64 jn, float* dxp, i64 h0, i64 h1);
// The same col2im (stride S >= 2 along W) into a phase-split buffer of input rows
// h0 .. h1-1 (row of padded column iw + pad_lo = S*m + q at q*wq + m, rows S*wq apart,
// planes (h1-h0)*S*wq apart; zeroed by the caller), then the rows unpacked into dx.
void col2im_phase_f32(const ConvParams& p, const float* tile, i64 nci, i64 j0, i64 jn, float* buf, i64 h0,
                      i64 h1, i64 wq);
void phase_unpack_f32(const ConvParams& p, const float* buf, i64 nci, float* dxp, i64 h0, i64 h1, i64 wq);
// Forward at stride S >= 2 along W: a phase-split zero-padded copy of padded rows
// ra .. ra+nrows-1 of nch planes of x (planes nrows*S*wq apart), and the forward B packer
// (UnfoldB's panels, 16 wide) reading it; columns jbase + j0 .. of one image.
void phase_copy_f32(const ConvParams& p, const float* x, i64 nch, i64 ra, i64 nrows, i64 wq, float* buf);
void phase_pack_f32(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, i64 jbase, float* dst,
                    i64 k0, i64 kc, i64 j0, i64 nc);
// Forward without packing B, from the same copy (any stride; S = 1 is a plain padded
// copy): output pixels p0 .. p1-1 of one image for the Mg channels of a group (y: its
// first channel), bias (Mg values) or null. apack: the group's weights as ceil(Mg/16)
// K x 16 k-major panels, zero rows past Mg. K <= kDirectMaxK. Bitwise equal to the packed
// GEMM with K in one block plus the bias added after.
constexpr i64 kDirectMaxK = 384;
void direct_forward_f32(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, const float* apack,
                        i64 Mg, i64 K, const float* bias, float* y, i64 p0, i64 p1);
// C (rows x n, rows c_rs apart) = A B with A as ceil(rows/16) K x 16 k-major panels (zero
// rows past `rows`) and B(k, j) = b[k*b_rs + j] read in place (never packed); K <=
// kDirectMaxK. Bitwise equal to the packed GEMM over one K block (grad input's W^T dY).
void direct_gemm_f32(i64 rows, i64 n, i64 K, const float* apack, const float* b, i64 b_rs, float* c, i64 c_rs);
// Grad weight of output rows r0 .. r1-1 of one image (dy: the group's first channel of the
// image, planes Ho*Wo apart) from the phase-split copy of its input rows: out (Mg x K,
// row-major) = the sums, per element a lane-parallel dot product over the pixels reduced
// in a fixed order (runs of 256 pixel vectors, each run's sums added in order through
// part, Mg*K floats of scratch). K <= kDirectWgradMaxK.
constexpr i64 kDirectWgradMaxK = 2048;
void direct_wgrad_f32(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, const float* dy, i64 Mg,
                      i64 K, i64 r0, i64 r1, float* out, float* part);

// Depthwise planes, stride 1 in both dimensions, without any padded copy: the ragged
// edges (padding, the right end of a row) are masked loads and stores.
// Geometry of one plane correlation: out (Ho x Wo) from src (Hs x Ws), tap (kh, kw)
// reads src(oh + kh*dh - oh_off, ow + kw*dw - ow_off), zero outside src. The offsets may
// be negative (the input gradient runs dy through it with the kernel flipped).
// Kernels wider than this (kW > kDwMaxKw) keep the AVX2 path.
constexpr i64 kDwMaxKw = 64;
struct DwGeom {
  i64 Hs, Ws, Ho, Wo, kH, kW, dh, dw, oh_off, ow_off;
};
// out = (accumulate ? out : init) + sum over taps of wk[kh*kW + kw] * src(...).
template <typename T>
void dw_corr_plane(const DwGeom& g, const T* src, const T* wk, T init, bool accumulate, T* out);
// Weight gradient of one plane, g as for the forward (src = x, out = dy):
// acc[kh*kW + kw] += sum over (oh, ow) of dy(oh, ow) * x(oh + kh*dh - oh_off, ow + kw*dw - ow_off).
template <typename T>
void dw_weight_plane(const DwGeom& g, const T* dy, const T* x, double* acc);
// Fused backward of one 3x3 plane with stride 1, dilation 1 and padding 1 on every side
// (dy, dx and x all H x W; wk the unflipped kernel): dx = (accumulate ? dx : 0) + the
// input gradient, and acc[kh*3 + kw] += the weight-gradient sums, from one pass that
// loads each dy and x vector once.
template <typename T>
void dw_backward_same3_plane(i64 H, i64 W, const T* dy, const T* x, const T* wk, bool accumulate, T* dx,
                             double* acc);
}  // namespace avx512

}  // namespace pyconv
