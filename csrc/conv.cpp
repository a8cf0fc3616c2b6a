// Convolution lowering: an ordered candidate list (pointwise, depthwise, winograd in
// conv_winograd.cpp, generic), the unfolding B-panel packers the generic path feeds to
// the GEMM, the col2im scatter of the backward input, and the threading. See conv.h for
// the overview.
//
// Threading and determinism: every parallel loop is a static partition of independent
// tasks, each owning a disjoint slice of the output, so no element is ever summed by two
// threads; reductions (over the batch for grad weight and grad bias, over pixels) run in
// a fixed order inside one task. Results therefore do not depend on timing.
//
// Memory beyond the outputs (the bound conv_workspace_bytes() reports), per thread, all
// from pyconv::scratch() and reused across calls:
//   forward (pointwise, generic)  one GEMM packing workspace for M x chunk x K; with images
//                                 batched (small planes) also an M x (nb*Ho*Wo) product;
//   grad input (generic)          one GEMM workspace plus one col2im tile of at most
//                                 max(kTileElems, kH*kW*kTileCols) elements;
//   grad weight                   one GEMM workspace;
//   depthwise (AVX2)              one zero-padded plane copy (about (H+pads) x (W+pads))
//                                 plus kH*kW double accumulators;
//   depthwise (AVX-512, stride 1) no plane copy (masked edge loads): kH*kW double sums
//                                 and the flipped kernel;
//   grad weight in pieces         groups x pieces partial dW (Plan::wred; a piece is some
//                                 images or a run of rows of one), not per thread;
//   AVX-512 float32 generic       per thread a zero-padded (phase-split) copy of the
//                                 input rows of one image's group, at most kPadMaxElems
//                                 elements (forward, direct grad weight; plus 2 Mg*K
//                                 sums), or the grad-input col2im's phase-split buffer
//                                 of a band's rows and the packed W^T rows of a tile;
//                                 the direct forward's packed weights once per call.
// Nothing is proportional to the unfolded (im2col) tensor.
#include "conv.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu.h"
#include "gemm.h"

namespace pyconv {

namespace {

// Threads for one call: a thread gets at least kConvGrainFlops of forward work, so small
// convolutions (tiny planes, few channels) skip the fork/join. Every path splits its work
// into pieces whose results do not depend on the thread count.
constexpr double kConvGrainFlops = 1 << 20;
int conv_threads(const ConvParams& p) {
  const double flops = 2.0 * static_cast<double>(p.n) * static_cast<double>(p.c_out) *
                       static_cast<double>(p.h.out) * static_cast<double>(p.w.out) *
                       static_cast<double>(p.cin_g()) * static_cast<double>(p.h.kernel) *
                       static_cast<double>(p.w.kernel);
  return threads_for_work(flops, kConvGrainFlops);
}

// Output positions o in [0, out) whose input index o*stride + off lies in [0, in).
inline void tap_range(i64 in, i64 out, i64 stride, i64 off, i64* lo, i64* hi) {
  i64 l = off >= 0 ? 0 : (-off) / stride + ((-off) % stride != 0);  // ceil, no overflow
  i64 h = (in - 1 - off) < 0 ? 0 : (in - 1 - off) / stride + 1;
  l = std::min(l, out);
  h = std::min(h, out);
  *lo = l;
  *hi = std::max(h, l);
}

// Valid output-column range of every kernel column kw (built before any parallel region).
struct TapRanges {
  std::vector<i64> lo, hi;
  explicit TapRanges(const ConvParams& p) : lo(p.w.kernel), hi(p.w.kernel) {
    for (i64 kw = 0; kw < p.w.kernel; ++kw)
      tap_range(p.w.in, p.w.out, p.w.stride, kw * p.w.dilation - p.w.pad_lo, &lo[kw], &hi[kw]);
  }
};

template <typename T>
inline void fill_zero(T* d, i64 n) {
  for (i64 i = 0; i < n; ++i) d[i] = T(0);
}

// One output row segment [ow, ow+len) of one unfolded row (ci, kh, kw) with the input
// plane xp: writes the values to d[0..len) at element stride ds (1 for the forward
// packer, NR for the transposed one). Out-of-range taps give zeros.
template <typename T>
inline void unfold_segment(const ConvParams& p, const T* xp, i64 oh, i64 ow, i64 len, i64 kh,
                           i64 iwk, i64 lo, i64 hi, T* d, i64 ds) {
  const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
  if (ih < 0 || ih >= p.h.in) {
    for (i64 i = 0; i < len; ++i) d[i * ds] = T(0);
    return;
  }
  i64 a = std::min(std::max(lo - ow, i64(0)), len);
  i64 b = std::min(std::max(hi - ow, a), len);
  const T* src = xp + ih * p.w.in + ow * p.w.stride + iwk;
  const i64 sw = p.w.stride;
  for (i64 i = 0; i < a; ++i) d[i * ds] = T(0);
  if (ds == 1) {
    if (sw == 1) {
      for (i64 i = a; i < b; ++i) d[i] = src[i];
    } else {
      for (i64 i = a; i < b; ++i) d[i] = src[i * sw];
    }
  } else {
    for (i64 i = a; i < b; ++i) d[i * ds] = src[i * sw];
  }
  for (i64 i = b; i < len; ++i) d[i * ds] = T(0);
}

// B(k, j) of the forward implicit GEMM for one (image, group): k = (ci, kh, kw) over the
// group's channels, j = oh*Wo + ow (plus the task's column offset). Stride, dilation and
// zero padding (asymmetric too) are applied while packing; no im2col buffer exists.
template <typename T>
struct UnfoldB final : BPanelSource<T> {
  const ConvParams& p;
  const TapRanges& tr;
  const T* x;   // first channel of the group in the first image
  i64 jbase;    // column offset of this task
  i64 img;      // element stride between images: columns past Ho*Wo continue in the next
  UnfoldB(const ConvParams& p_, const TapRanges& tr_, const T* x_, i64 jb, i64 img_stride)
      : p(p_), tr(tr_), x(x_), jbase(jb), img(img_stride) {}

  void pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const override {
    if ((p.w.stride == 1 || p.w.stride == 2) && nr * static_cast<int>(sizeof(T)) == 64 &&
        active_isa() == Isa::avx512) {
      avx512_pack(dst, k0, kc, j0, nc);
      return;
    }
    switch (nr) {  // the register widths in use get a compile-time panel width
      case 16: pack_panels<16>(dst, k0, kc, j0, nc, nr); break;
      case 8: pack_panels<8>(dst, k0, kc, j0, nc, nr); break;
      case 4: pack_panels<4>(dst, k0, kc, j0, nc, nr); break;
      default: pack_panels<0>(dst, k0, kc, j0, nc, nr); break;
    }
  }

  void avx512_pack(float* dst, i64 k0, i64 kc, i64 j0, i64 nc) const {
    avx512::unfold_pack_f32(p, tr.lo.data(), tr.hi.data(), x, jbase, img, dst, k0, kc, j0, nc);
  }
  void avx512_pack(double* dst, i64 k0, i64 kc, i64 j0, i64 nc) const {
    avx512::unfold_pack_f64(p, tr.lo.data(), tr.hi.data(), x, jbase, img, dst, k0, kc, j0, nc);
  }

  // NR > 0: the panel width known at compile time (== nr); 0: any nr. Panels are taken
  // in groups; within a group the loop runs over unfolded rows k outermost, so each
  // input row is read as one sequential stream across the group's columns.
  template <int NR>
  void pack_panels(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const {
    const i64 kH = p.h.kernel, kW = p.w.kernel, KK = kH * kW, Wo = p.w.out;
    const i64 W = p.w.in, H = p.h.in, plane = H * W, sw = p.w.stride;
    constexpr int kGroup = 64;
    i64 q_oh[kGroup], q_ow[kGroup], q_n[kGroup], q_img[kGroup];
    const i64 Np = p.h.out * Wo;
    bool q_one[kGroup];
    const i64 npanels = ceil_div(nc, nr);
    for (i64 pg = 0; pg < npanels; pg += kGroup) {
      const int ng = static_cast<int>(std::min<i64>(kGroup, npanels - pg));
      for (int q = 0; q < ng; ++q) {
        const i64 pb = (pg + q) * nr, jt = jbase + j0 + pb, j = jt % Np;
        q_img[q] = (jt / Np) * img;
        q_oh[q] = j / Wo;
        q_ow[q] = j % Wo;
        q_n[q] = std::min<i64>(nr, nc - pb);
        q_one[q] = NR > 0 && q_n[q] == NR && q_ow[q] + NR <= Wo;
      }
      i64 ci = k0 / KK, r = k0 % KK, kh = r / kW, kw = r % kW;
      // Unfolded rows in blocks of kRows: per panel the block's rows are written as one
      // contiguous run, and each input row is read sequentially across the group.
      constexpr int kRows = 8;
      const T* r_xp[kRows];
      i64 r_iwk[kRows], r_lo[kRows], r_hi[kRows], r_ihk[kRows], r_kh[kRows];
      for (i64 kb = 0; kb < kc; kb += kRows) {
        const int nk = static_cast<int>(std::min<i64>(kRows, kc - kb));
        for (int t = 0; t < nk; ++t) {
          r_xp[t] = x + ci * plane;
          r_iwk[t] = kw * p.w.dilation - p.w.pad_lo;
          r_lo[t] = tr.lo[kw];
          r_hi[t] = tr.hi[kw];
          r_ihk[t] = kh * p.h.dilation - p.h.pad_lo;
          r_kh[t] = kh;
          if (++kw == kW) {
            kw = 0;
            if (++kh == kH) { kh = 0; ++ci; }
          }
        }
        for (int q = 0; q < ng; ++q) {
          T* d = dst + (pg + q) * kc * nr + kb * nr;
          if (q_one[q]) {  // the common case: all NR columns in one output row
            const i64 ohs = q_oh[q] * p.h.stride, ow0 = q_ow[q];
            for (int t = 0; t < nk; ++t, d += nr) {
              const i64 ih = ohs + r_ihk[t];
              if (ih < 0 || ih >= H) {
                for (int c = 0; c < NR; ++c) d[c] = T(0);
              } else if (ow0 >= r_lo[t] && ow0 + NR <= r_hi[t]) {
                const T* src = r_xp[t] + q_img[q] + ih * W + ow0 * sw + r_iwk[t];
                if (sw == 1)
                  std::memcpy(d, src, sizeof(T) * (NR > 0 ? NR : 1));  // constant size: inlined vector moves
                else
                  for (int c = 0; c < NR; ++c) d[c] = src[c * sw];
              } else {
                unfold_segment(p, r_xp[t] + q_img[q], q_oh[q], ow0, i64(NR), r_kh[t], r_iwk[t], r_lo[t], r_hi[t], d, i64(1));
              }
            }
            continue;
          }
          // Columns spanning several output rows, or the ragged last panel.
          const i64 n = q_n[q];
          for (int t = 0; t < nk; ++t, d += nr) {
            i64 oh = q_oh[q], ow = q_ow[q], at = 0, im = q_img[q];
            while (at < n) {
              const i64 len = std::min(n - at, Wo - ow);
              unfold_segment(p, r_xp[t] + im, oh, ow, len, r_kh[t], r_iwk[t], r_lo[t], r_hi[t], d + at, i64(1));
              at += len;
              ow = 0;
              if (++oh == p.h.out) { oh = 0; im += img; }  // next image
            }
            fill_zero(d + n, nr - n);
          }
        }
      }
    }
  }
};

// B(k, j) = unfold(X)(j, k): rows are output pixels k = oh*Wo + ow, columns are the
// unfolded (ci, kh, kw) index (plus the task's column offset). Used by grad weight.
template <typename T>
struct UnfoldTB final : BPanelSource<T> {
  const ConvParams& p;
  const TapRanges& tr;
  const T* x;
  i64 cbase;
  i64 kbase;  // pixel offset: row k of B is output pixel kbase + k
  UnfoldTB(const ConvParams& p_, const TapRanges& tr_, const T* x_, i64 cb, i64 kb = 0)
      : p(p_), tr(tr_), x(x_), cbase(cb), kbase(kb) {}

  void pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const override {
    k0 += kbase;
    if (sizeof(T) == 4 && nr == 16 && avx512::unfold_t_pack_supports(p) && active_isa() == Isa::avx512) {
      avx512::unfold_t_pack_f32(p, tr.lo.data(), tr.hi.data(), reinterpret_cast<const float*>(x), cbase,
                                reinterpret_cast<float*>(dst), k0, kc, j0, nc);
      return;
    }
    const i64 kH = p.h.kernel, kW = p.w.kernel, KK = kH * kW, Wo = p.w.out;
    const i64 plane = p.h.in * p.w.in;
    for (i64 pb = 0; pb < nc; pb += nr) {
      T* panel = dst + (pb / nr) * kc * nr;
      const i64 ncols = std::min<i64>(nr, nc - pb);
      for (i64 c = 0; c < ncols; ++c) {
        const i64 kf = cbase + j0 + pb + c;
        const i64 ci = kf / KK, r = kf % KK, kh = r / kW, kw = r % kW;
        const T* xp = x + ci * plane;
        const i64 iwk = kw * p.w.dilation - p.w.pad_lo, lo = tr.lo[kw], hi = tr.hi[kw];
        i64 oh = k0 / Wo, ow = k0 % Wo, at = 0;
        while (at < kc) {
          i64 len = std::min(kc - at, Wo - ow);
          unfold_segment(p, xp, oh, ow, len, kh, iwk, lo, hi, panel + at * nr + c, i64(nr));
          at += len;
          ow = 0;
          ++oh;
        }
      }
      if (ncols < nr)
        for (i64 k = 0; k < kc; ++k) fill_zero(panel + k * nr + ncols, nr - ncols);
    }
  }
};

constexpr i64 kPaddedMaxNr = 64;  // widest register tile PaddedB handles

// Offset step of a stride or dilation in a padded copy whose rows are `scale` apart. With
// a single position (count <= 1) the step never multiplies a nonzero index, and a
// caller-supplied stride or dilation may be as large as int64 allows: return 0 rather
// than form the product. With count > 1 the output-size formula bounds step*(count-1) by
// the padded extent, so the product fits.
inline i64 padded_step(i64 count, i64 step, i64 scale) { return count > 1 ? step * scale : 0; }

// What the tiny-plane packers share: the zero-padded copy of a batch's planes (Hp x Wp
// each, planes planeP apart, images imgP apart), its stride and dilation steps in
// elements (computed once per source), the gather of one packed row and the dispatch on
// the panel width.
template <typename T>
struct PaddedCopy {
  const ConvParams& p;
  const T* xp;
  i64 Wp, planeP, imgP;
  i64 sh, sw, dh, dw;  // element steps of one output row / column / kernel row / tap
  PaddedCopy(const ConvParams& p_, const T* xp_, i64 wp, i64 plane, i64 img)
      : p(p_), xp(xp_), Wp(wp), planeP(plane), imgP(img),
        sh(padded_step(p_.h.out, p_.h.stride, wp)), sw(padded_step(p_.w.out, p_.w.stride, 1)),
        dh(padded_step(p_.h.kernel, p_.h.dilation, wp)), dw(padded_step(p_.w.kernel, p_.w.dilation, 1)) {}

  // One packed row: d[c] = src[off[c]] for the n valid columns, zeros up to nr. NR > 0 is
  // the panel width known at compile time, so a full panel's loop unrolls.
  template <int NR>
  static void gather_row(T* d, const T* src, const i64* off, i64 n, int nr) {
    if (NR > 0 && n == NR) {
      for (int c = 0; c < NR; ++c) d[c] = src[off[c]];
      return;
    }
    for (i64 c = 0; c < n; ++c) d[c] = src[off[c]];
    for (i64 c = n; c < nr; ++c) d[c] = T(0);
  }

  // Calls s.pack_nr<NR> with the common register-tile widths as compile-time constants.
  template <class S>
  static void pack_by_width(const S& s, T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) {
    switch (nr) {
      case 16: s.template pack_nr<16>(dst, k0, kc, j0, nc, nr); break;
      case 8: s.template pack_nr<8>(dst, k0, kc, j0, nc, nr); break;
      default: s.template pack_nr<0>(dst, k0, kc, j0, nc, nr); break;
    }
  }
};

// Forward B on tiny planes, read from the zero-padded copy: B(k = (ci, kh, kw),
// j = (image, oh, ow)) = xp[image][ci][oh*sh + kh*dh][ow*sw + kw*dw], no bounds checks.
// Each panel precomputes its columns' offsets once, then every unfolded row is a gather
// of nr values. Used when a panel spans several output rows (Wo < nr), where the row-run
// packer falls back to short segments. Packs exactly the values UnfoldB packs.
template <typename T>
struct PaddedB final : BPanelSource<T>, PaddedCopy<T> {
  using PaddedCopy<T>::PaddedCopy;
  using PaddedCopy<T>::p;
  using PaddedCopy<T>::xp;
  using PaddedCopy<T>::planeP;
  using PaddedCopy<T>::imgP;
  using PaddedCopy<T>::sh;
  using PaddedCopy<T>::sw;
  using PaddedCopy<T>::dh;
  using PaddedCopy<T>::dw;

  void pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const override {
    const i64 Wo = p.w.out;
    if (p.w.stride == 1 && j0 % nr == 0 && nc % nr == 0) {  // whole panels of whole output rows
      if (nr == 16 && Wo == 8) return pack_runs<16, 8>(dst, k0, kc, j0, nc);
      if (nr == 16 && Wo == 4) return pack_runs<16, 4>(dst, k0, kc, j0, nc);
      if (nr == 8 && Wo == 4) return pack_runs<8, 4>(dst, k0, kc, j0, nc);
    }
    this->pack_by_width(*this, dst, k0, kc, j0, nc, nr);
  }

  // Stride 1, Wo dividing NR, panels aligned: a panel row is NR/WO runs of WO contiguous
  // values of the padded copy (one output row each; Np is a multiple of WO, so no run
  // crosses an image).
  template <int NR, int WO>
  void pack_runs(T* dst, i64 k0, i64 kc, i64 j0, i64 nc) const {
    constexpr int R = NR / WO;
    const i64 kW = p.w.kernel, KK = p.h.kernel * kW, Np = p.h.out * WO;
    for (i64 pb = 0; pb < nc; pb += NR) {
      i64 off[R];
      for (int s = 0; s < R; ++s) {
        const i64 j = j0 + pb + s * WO, im = j / Np, r = j % Np;
        off[s] = im * imgP + (r / WO) * sh;
      }
      T* d = dst + (pb / NR) * kc * NR;
      i64 ci = k0 / KK, rr = k0 % KK, kh = rr / kW, kw = rr % kW;
      for (i64 t = 0; t < kc; ++t, d += NR) {
        const T* row = xp + ci * planeP + kh * dh + kw * dw;
        for (int s = 0; s < R; ++s) std::memcpy(d + s * WO, row + off[s], WO * sizeof(T));
        if (++kw == kW) {
          kw = 0;
          if (++kh == p.h.kernel) { kh = 0; ++ci; }
        }
      }
    }
  }

  template <int NR>
  void pack_nr(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const {
    const i64 kW = p.w.kernel, KK = p.h.kernel * kW, Wo = p.w.out, Np = p.h.out * Wo;
    i64 off[kPaddedMaxNr];
    for (i64 pb = 0; pb < nc; pb += nr) {
      const i64 n = std::min<i64>(nr, nc - pb);
      for (i64 c = 0; c < n; ++c) {
        const i64 j = j0 + pb + c, im = j / Np, r = j % Np;
        off[c] = im * imgP + (r / Wo) * sh + (r % Wo) * sw;
      }
      T* d = dst + (pb / nr) * kc * nr;
      i64 ci = k0 / KK, rr = k0 % KK, kh = rr / kW, kw = rr % kW;
      for (i64 t = 0; t < kc; ++t, d += nr) {
        this->template gather_row<NR>(d, xp + ci * planeP + kh * dh + kw * dw, off, n, nr);
        if (++kw == kW) {
          kw = 0;
          if (++kh == p.h.kernel) { kh = 0; ++ci; }
        }
      }
    }
  }
};

// Grad weight B on tiny planes, from the same zero-padded batch copy as PaddedB, read
// transposed: B(k = (image, oh, ow), j = (ci, kh, kw)), the columns starting at channel
// offset cbase. Each panel precomputes its columns' tap offsets; every row (pixel) is
// then a gather of nr values.
template <typename T>
struct PaddedTB final : BPanelSource<T>, PaddedCopy<T> {
  using PaddedCopy<T>::p;
  using PaddedCopy<T>::xp;
  using PaddedCopy<T>::planeP;
  using PaddedCopy<T>::imgP;
  using PaddedCopy<T>::sh;
  using PaddedCopy<T>::sw;
  using PaddedCopy<T>::dh;
  using PaddedCopy<T>::dw;
  i64 cbase;
  PaddedTB(const ConvParams& p_, const T* xp_, i64 wp, i64 plane, i64 img, i64 cb)
      : PaddedCopy<T>(p_, xp_, wp, plane, img), cbase(cb) {}

  void pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const override {
    this->pack_by_width(*this, dst, k0, kc, j0, nc, nr);
  }

  template <int NR>
  void pack_nr(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const {
    const i64 kW = p.w.kernel, KK = p.h.kernel * kW, Wo = p.w.out, Ho = p.h.out, Np = Ho * Wo;
    i64 off[kPaddedMaxNr];
    for (i64 pb = 0; pb < nc; pb += nr) {
      const i64 n = std::min<i64>(nr, nc - pb);
      for (i64 c = 0; c < n; ++c) {
        const i64 kf = cbase + j0 + pb + c, ci = kf / KK, r = kf % KK;
        off[c] = ci * planeP + (r / kW) * dh + (r % kW) * dw;
      }
      T* d = dst + (pb / nr) * kc * nr;
      i64 im = k0 / Np, oh = (k0 % Np) / Wo, ow = k0 % Wo;
      for (i64 t = 0; t < kc; ++t, d += nr) {
        this->template gather_row<NR>(d, xp + im * imgP + oh * sh + ow * sw, off, n, nr);
        if (++ow == Wo) {
          ow = 0;
          if (++oh == Ho) { oh = 0; ++im; }
        }
      }
    }
  }
};

// Zero-padded copy of images n0 .. n0+cnt-1, channels of group g, into xp
// (cnt x Cg x Hp x Wp).
template <typename T>
void pad_batch(const ConvParams& p, i64 Cg, i64 Hp, i64 Wp, const T* x, i64 n0, i64 cnt, i64 g, T* xp) {
  const i64 planeP = Hp * Wp, imgP = Cg * planeP, in_plane = p.h.in * p.w.in;
  fill_zero(xp, cnt * imgP);
  for (i64 im = 0; im < cnt; ++im)
    for (i64 ci = 0; ci < Cg; ++ci) {
      const T* s = x + ((n0 + im) * p.c_in + g * Cg + ci) * in_plane;
      T* d = xp + im * imgP + ci * planeP + p.h.pad_lo * Wp + p.w.pad_lo;
      for (i64 ih = 0; ih < p.h.in; ++ih)
        std::memcpy(d + ih * Wp, s + ih * p.w.in, static_cast<std::size_t>(p.w.in) * sizeof(T));
    }
}

// B(k, j) = src[k*rs + jbase + j]: a dense row-major matrix with a task column offset.
template <typename T>
inline StridedB<T> dense_b(const T* src, i64 rs, i64 jbase) {
  return StridedB<T>(src + jbase, rs, 1);
}

// ---------------------------------------------------------------- task partitions

// Splits `cols` columns into chunks (multiples of `align`, at least `min_cols` wide where
// possible) so that items * chunks spreads evenly over `threads`.
struct Split {
  i64 chunk, count;
};
Split column_split(i64 items, i64 cols, int threads, i64 align, i64 min_cols) {
  i64 want = 1;
  if (threads > 1 && items % threads != 0 && items < 8 * threads) want = threads;
  want = std::min(want, std::max<i64>(1, cols / std::max<i64>(min_cols, 1)));
  i64 chunk = round_up(ceil_div(std::max<i64>(cols, 1), want), align);
  return Split{chunk, ceil_div(std::max<i64>(cols, 1), chunk)};
}

int gemm_nr(std::size_t elem) {
  return elem == sizeof(float) ? gemm_blocking<float>().nr : gemm_blocking<double>().nr;
}

std::size_t gemm_ws(std::size_t elem, i64 M, i64 N, i64 K) {
  return elem == sizeof(float) ? gemm_workspace_elems<float>(M, N, K, 1)
                               : gemm_workspace_elems<double>(M, N, K, 1);
}

// Per-thread workspace, rounded to whole cache lines.
std::size_t per_thread(std::size_t elems, std::size_t elem) {
  std::size_t per_line = 64 / elem;
  return (elems + per_line - 1) / per_line * per_line;
}

constexpr i64 kTileElems = 131072;  // col2im tile target (512 KiB of float)
constexpr i64 kTileCols = 256;      // widest col2im tile before channels are split
constexpr i64 kMinCols = 64;       // narrowest GEMM column chunk worth a task
constexpr i64 kSmallPlane = 256;   // output planes below this batch images in the forward GEMM
constexpr i64 kBatchCols = 512;    // target GEMM width when batching images
constexpr i64 kPadMaxElems = 1 << 20; // largest padded batch copy (4 MiB of float) per thread
constexpr i64 kRedPieces = 8;        // grad weight image pieces (fixed: results must not
constexpr i64 kRedMaxGroups = 4;     //   depend on the thread count), for fewer groups than
constexpr i64 kRedMinPlane = 4096;   //   this, output planes at least this large and
constexpr i64 kRedMaxElems = 1 << 16; //  weights of at most this many elements
constexpr i64 kDxBands = 2;          // grad input of a single image with few channels: row bands
constexpr i64 kDxBandMaxChannels = 8; //   for fewer input channels (per group) than this
constexpr i64 kDxBandMinRows = 16;    //   and at least this many output rows
constexpr i64 kRedNarrowK = 32;      // grad weight: unfolded widths below this also take pieces
constexpr i64 kBiasTileBytes = 256 * 1024; // forward with bias: output block per GEMM call,
                                           //   still in L2 when its bias is added

// Geometry shared by the forward and the backward GEMM drivers.
struct Plan {
  i64 Mg, Cg, K, Np;
  Split fwd;       // forward / pointwise grad input: (image, group) x column chunks
  Split wcols;     // grad weight: group x unfolded-column chunks
  i64 ci_chunk;    // generic grad input: (image, group) x input-channel chunks
  i64 ci_count;
  i64 fwd_nb;      // generic forward on small planes: images per GEMM (1 = per image)
  i64 pad_elems;   // batched forward through PaddedB: padded planes per task (0 = not used)
  i64 Hp, Wp;
  i64 wgt_nb;      // grad weight on tiny planes: images per GEMM depth via PaddedTB (1 = per image)
  i64 wgt_pad;     // its padded batch copy, elements
  i64 wred;        // grad weight: image pieces, each a partial sum, added at the end (1 = none)
  i64 wslices;     //   with fewer images than pieces: pieces per image (1 = whole images)
  i64 wrows;       //   and output rows per piece (the last piece of an image takes the rest)
  i64 tile;        // generic grad input: columns per col2im tile
  i64 ci_sub;      // generic grad input: input channels per col2im tile
  i64 dx_bands;    // generic grad input: bands of input rows per (image, group, channel chunk)
  int threads;
};

Plan make_plan(const ConvParams& p, std::size_t elem, int threads) {
  Plan pl{};
  const i64 nr = gemm_nr(elem);
  pl.threads = std::max(threads, 1);
  pl.Mg = p.cout_g();
  pl.Cg = p.cin_g();
  pl.K = checked_mul(checked_mul(pl.Cg, p.h.kernel, "kernel"), p.w.kernel, "kernel");
  pl.Np = checked_mul(p.h.out, p.w.out, "output plane");
  const i64 items = checked_mul(p.n, p.groups, "tasks");
  pl.fwd = column_split(items, pl.Np, pl.threads, nr, kMinCols);
  // Small planes: several images side by side in one GEMM (wider N, weights packed once
  // per batch of images), as long as every thread still gets a batch.
  pl.fwd_nb = 1;
  if (pl.Np < kSmallPlane && p.n > 1)
    pl.fwd_nb = std::max<i64>(1, std::min(ceil_div(kBatchCols, pl.Np), ceil_div(p.n, pl.threads)));
  // Panels spanning several output rows: pack from a zero-padded copy of the batch.
  pl.pad_elems = 0;
  // (The AVX-512 packer handles such panels itself and measured faster than PaddedB.)
  if (pl.fwd_nb > 1 && p.w.out < nr && nr <= kPaddedMaxNr) {
    pl.Hp = checked_add(checked_add(p.h.in, p.h.pad_lo, "padded plane"), p.h.pad_hi, "padded plane");
    pl.Wp = checked_add(checked_add(p.w.in, p.w.pad_lo, "padded plane"), p.w.pad_hi, "padded plane");
    pl.pad_elems = checked_mul(checked_mul(checked_mul(pl.fwd_nb, pl.Cg, "padded batch"), pl.Hp, "padded batch"),
                               pl.Wp, "padded batch");
    if (pl.pad_elems > kPadMaxElems) pl.pad_elems = 0;
  }
  i64 wtasks_want = pl.threads > 1 && p.groups % pl.threads != 0 && p.groups < 8 * pl.threads
                        ? pl.threads : 1;
  i64 wchunk = round_up(ceil_div(pl.K, std::min(wtasks_want, std::max<i64>(1, pl.K / nr))), nr);
  pl.wcols = Split{wchunk, ceil_div(pl.K, wchunk)};
  // Grad weight with few groups, several images and large planes (the WaveNet layers): a
  // fixed number of image pieces, each one task summing its images into a partial dW,
  // the partials added in piece order at the end. Each thread then packs only its own
  // images' dY and X, where the column split had every thread pack all of dY (2 threads
  // scaled 1.34x). The pieces do not depend on the thread count, so neither does dW.
  // With fewer images than pieces (the 7x7/2 stem, b1), each image is cut into wslices
  // runs of wrows output rows (the last one shorter), one piece each, so a single large
  // image splits too. Also taken for a narrow unfolded matrix (K < kRedNarrowK, e.g. 5x5
  // with C_in = 1: K = 25) on planes too large for the tiny-plane batching, where the
  // column split cannot make a second task at all.
  pl.wred = 1;
  pl.wslices = 1;
  pl.wrows = p.h.out;
  const bool red_shape = pl.Np >= kRedMinPlane || (pl.K < kRedNarrowK && pl.Np >= kSmallPlane);
  if (p.groups < kRedMaxGroups && red_shape && (p.n >= 2 || (p.n == 1 && p.h.out >= 2)) &&
      checked_mul(checked_mul(p.groups, pl.Mg, "weight"), pl.K, "weight") <= kRedMaxElems) {
    if (p.n >= kRedPieces || p.h.out == 1) {
      pl.wred = std::min(p.n, kRedPieces);
    } else {
      pl.wrows = ceil_div(p.h.out, std::min(p.h.out, ceil_div(kRedPieces, p.n)));
      pl.wslices = ceil_div(p.h.out, pl.wrows);
      pl.wred = p.n * pl.wslices;
    }
    pl.wcols = Split{pl.K, 1};
  }
  // Grad weight on tiny planes: nb images' pixels form one GEMM depth (K = nb*Np) and B is
  // gathered from a zero-padded batch copy, instead of one K = Np GEMM per image
  // (measured faster under AVX2 and AVX-512 alike: 4x4 planes c16->32 b32 ~1.5x).
  pl.wgt_nb = 1;
  pl.wgt_pad = 0;
  if (pl.Np < kSmallPlane && p.n > 1 && nr <= kPaddedMaxNr) {
    const i64 nb = std::min(ceil_div(kBatchCols, pl.Np), p.n);
    const i64 hp = checked_add(checked_add(p.h.in, p.h.pad_lo, "padded plane"), p.h.pad_hi, "padded plane");
    const i64 wp = checked_add(checked_add(p.w.in, p.w.pad_lo, "padded plane"), p.w.pad_hi, "padded plane");
    const i64 elems = checked_mul(checked_mul(checked_mul(nb, pl.Cg, "padded batch"), hp, "padded batch"), wp, "padded batch");
    if (elems <= kPadMaxElems) {
      pl.wgt_nb = nb;
      pl.wgt_pad = elems;
      pl.Hp = hp;
      pl.Wp = wp;
    }
  }
  i64 ci_want = (pl.threads > 1 && items % pl.threads != 0 && items < 8 * pl.threads) ? pl.threads : 1;
  ci_want = std::min(ci_want, pl.Cg);
  // Grad input of one image with few input channels (the 7x7/2 stem: 3 channels split 2:1
  // over 2 threads): instead, kDxBands bands of input rows, all channels each; a band
  // recomputes the (kH-1)*dH/sH output rows its neighbour also needs. The bands change
  // where the column tiles start, hence the sum order, so their number depends on the
  // shape only, never on the thread count.
  pl.dx_bands = 1;
  if (items == 1 && pl.Cg < kDxBandMaxChannels && p.h.out >= kDxBandMinRows && p.h.in >= kDxBands) {
    pl.dx_bands = kDxBands;
    ci_want = 1;
  }
  pl.ci_chunk = ceil_div(pl.Cg, ci_want);
  pl.ci_count = ceil_div(pl.Cg, pl.ci_chunk);
  // col2im tile: up to kTileCols columns, then as many of the task's channels as fit
  // in kTileElems; where all the group's channels fit, the columns widen to fill the
  // budget. The width comes from the shape alone, not from the thread count (which splits
  // the channels): the tile boundaries set the order of each dx element's additions.
  const i64 KK = checked_mul(p.h.kernel, p.w.kernel, "kernel");
  const i64 np_r = round_up(pl.Np, nr);
  pl.tile = std::min(np_r, kTileCols);
  if (kTileElems / checked_mul(KK, pl.tile, "col2im tile") >= pl.Cg)
    pl.tile = std::min(np_r, std::max(pl.tile, kTileElems / checked_mul(KK, pl.Cg, "col2im tile") / nr * nr));
  pl.ci_sub = std::min(pl.ci_chunk, std::max<i64>(1, kTileElems / checked_mul(KK, pl.tile, "col2im tile")));
  return pl;
}

// GEMM workspace of grad weight (elements, one thread): the GEMM depth is the plane, or
// with image slices a run of wrows rows or an image's last, shorter run (the GEMM's
// workspace is not monotonic in its depth, so each depth that occurs is asked).
std::size_t weight_gemm_ws(const ConvParams& p, const Plan& pl, std::size_t elem) {
  std::size_t ws = gemm_ws(elem, pl.Mg, pl.wcols.chunk, pl.Np);
  if (pl.wslices > 1) {
    const i64 last = p.h.out - (pl.wslices - 1) * pl.wrows;
    ws = std::max({ws, gemm_ws(elem, pl.Mg, pl.wcols.chunk, pl.wrows * p.w.out),
                   gemm_ws(elem, pl.Mg, pl.wcols.chunk, last * p.w.out)});
  }
  return ws;
}

// Generic grad input at stride >= 2 along W, float32 under AVX-512: the col2im adds into a
// phase-split buffer of the band's rows (avx512::col2im_phase_f32), then unpacks it into
// dx. Its width per phase (wq) and elements per thread; 0 elements where not taken (other
// types or ISAs, stride 1, or a buffer above kPadMaxElems).
struct PhaseBuf {
  i64 wq, elems;
};
// Elements of a phase-split copy of `count` planes of `rows` padded rows each (width wp,
// stride S along W): count * rows * S*ceil(wp/S), and its phase width; elems = 0 when it
// exceeds kPadMaxElems. Never throws: a copy that does not fit is simply not made.
PhaseBuf phase_geometry(i64 count, i64 rows, i64 wp, i64 S) {
  if (count <= 0 || rows <= 0 || wp <= 0 || S > kPadMaxElems || wp > kPadMaxElems || rows > kPadMaxElems)
    return PhaseBuf{0, 0};
  const i64 wq = wp / S + (wp % S != 0), rowlen = wq * S;  // both <= 2 * kPadMaxElems
  if (count > kPadMaxElems / rows || count * rows > kPadMaxElems / rowlen) return PhaseBuf{0, 0};
  return PhaseBuf{wq, count * rows * rowlen};
}
PhaseBuf dx_phase_buf(const ConvParams& p, const Plan& pl, std::size_t elem) {
  PhaseBuf b{0, 0};
  if (elem != sizeof(float) || active_isa() != Isa::avx512 || p.w.stride < 2) return b;
  // (padded sizes are at most 2^60: conv_validate)
  return phase_geometry(pl.ci_sub, ceil_div(p.h.in, pl.dx_bands), p.w.in + p.w.pad_lo + p.w.pad_hi, p.w.stride);
}

// Generic grad input, float32 under AVX-512, with C_out/groups within one GEMM K block:
// each col2im tile's W^T dY runs as direct tiles reading dY in place
// (avx512::direct_gemm_f32, bitwise equal to the packed GEMM), the tile's rows of W^T
// packed once per channel block. Elements of that panel per thread; 0 where not taken.
i64 dx_direct_apack(const ConvParams& p, const Plan& pl, std::size_t elem) {
  if (elem != sizeof(float) || active_isa() != Isa::avx512 || pl.Mg > avx512::kDirectMaxK ||
      pl.Mg > gemm_blocking<float>().kc)
    return 0;
  return checked_mul(round_up(checked_mul(pl.ci_sub, checked_mul(p.h.kernel, p.w.kernel, "kernel"), "rows"), 16),
                     pl.Mg, "packed weights");
}

// Generic forward, float32 under AVX-512, one image per GEMM, from a (phase-split at
// stride >= 2 along W) zero-padded copy of the task's input rows (avx512::phase_copy_f32):
//  * direct: K within one GEMM K block (kDirectMaxK), output rows at least kDirectMinWo
//    wide and at most kDirectMaxM channels per group: no B packing at all, a 16 x 16 tile
//    reads its unfolded rows straight from the copy (avx512::direct_forward_f32), bitwise
//    equal to the packed GEMM (stem 7x7/2 forward 2.45 -> see bench; 5x5 1->32 28px);
//  * otherwise at stride >= 2 along W: the B packer over the copy (PhaseB: one load per
//    packed row, where the direct packer needs two, a permute and the padding checks).
// wq: elements per phase row; elems: the copy's elements per thread (all padded rows of
// the group's channels at most); 0 where neither is taken (other types or ISAs, batched
// images, stride 1 without the direct shape, a copy above kPadMaxElems).
constexpr i64 kDirectMinWo = 16;
constexpr i64 kDirectMaxM = 128;
struct FwdPhase {
  i64 wq, elems;
  bool direct;
};
FwdPhase fwd_phase_buf(const ConvParams& p, const Plan& pl, std::size_t elem) {
  FwdPhase b{0, 0, false};
  if (elem != sizeof(float) || active_isa() != Isa::avx512 || pl.fwd_nb > 1) return b;
  const bool direct = pl.K <= avx512::kDirectMaxK && pl.K <= gemm_blocking<float>().kc &&
                      p.w.out >= kDirectMinWo && pl.Mg <= kDirectMaxM;
  if (p.w.stride < 2 && !direct) return b;
  const PhaseBuf g = phase_geometry(pl.Cg, p.h.in + p.h.pad_lo + p.h.pad_hi, p.w.in + p.w.pad_lo + p.w.pad_hi,
                                    p.w.stride);
  if (g.elems == 0) return b;
  return FwdPhase{g.wq, g.elems, direct};
}
// The direct forward's weights: every group's Mg x K block as ceil(Mg/16) K x 16 panels.
i64 direct_apack_elems(const ConvParams& p, const Plan& pl) { return p.groups * round_up(pl.Mg, 16) * pl.K; }

// The 16-row micro-panels the direct tiles read, of a rows x K matrix A with A(i, k) =
// a[i*rs + k*cs]: dst[panel][k][i % 16] = A(16*panel + i, k), zero past `rows`.
template <typename T>
void pack_panels16(const T* a, i64 rows, i64 K, i64 rs, i64 cs, T* dst) {
  for (i64 i = 0; i < round_up(rows, 16); ++i)
    for (i64 k = 0; k < K; ++k) dst[(i / 16) * K * 16 + k * 16 + i % 16] = i < rows ? a[i * rs + k * cs] : T(0);
}

// Generic grad weight in pieces (Plan::wred), float32 under AVX-512, output rows at least
// kDirectMinWo wide and planes above kSmallPlane pixels (smaller ones keep the GEMM, whose
// sums equal the AVX2 path's bitwise over one K block): per image of a piece, a
// phase-split zero-padded copy of the rows it reads, then avx512::direct_wgrad_f32 (lane-
// parallel dot products, no packing: the 7x7/2 stem's grad weight spent about a quarter
// of its time packing dY and the unfolded input, and an eighth on the GEMM's padded 147
// -> 160 columns). Per thread: the copy (elems, rounded to lines) plus twice Mg*K sums.
FwdPhase wgrad_direct_buf(const ConvParams& p, const Plan& pl, std::size_t elem) {
  FwdPhase b{0, 0, false};
  if (elem != sizeof(float) || active_isa() != Isa::avx512 || pl.wred <= 1 || p.w.out < kDirectMinWo ||
      pl.Np <= kSmallPlane || pl.K > avx512::kDirectWgradMaxK)
    return b;
  const PhaseBuf g = phase_geometry(pl.Cg, p.h.in + p.h.pad_lo + p.h.pad_hi, p.w.in + p.w.pad_lo + p.w.pad_hi,
                                    p.w.stride);
  if (g.elems == 0) return b;
  return FwdPhase{g.wq, g.elems, true};
}
std::size_t wgrad_direct_ws(const ConvParams& p, const Plan& pl, std::size_t elem) {
  const FwdPhase b = wgrad_direct_buf(p, pl, elem);
  if (b.elems == 0) return 0;
  return per_thread(static_cast<std::size_t>(b.elems), elem) + 2 * per_thread(static_cast<std::size_t>(pl.Mg * pl.K), elem);
}

// The forward B packer over that copy (padded rows ra .. ra+nrows-1).
struct PhaseB final : BPanelSource<float> {
  const ConvParams& p;
  const float* buf;
  i64 ra, nrows, wq, jbase;
  PhaseB(const ConvParams& p_, const float* b, i64 ra_, i64 nrows_, i64 wq_, i64 jb)
      : p(p_), buf(b), ra(ra_), nrows(nrows_), wq(wq_), jbase(jb) {}
  void pack(float* dst, i64 k0, i64 kc, i64 j0, i64 nc, int) const override {
    avx512::phase_pack_f32(p, buf, ra, nrows, wq, jbase, dst, k0, kc, j0, nc);
  }
};

// ---------------------------------------------------------------- candidates

bool supports_pointwise(const ConvParams& p) {
  return p.h.kernel == 1 && p.w.kernel == 1 && p.h.stride == 1 && p.w.stride == 1 &&
         p.h.pad_lo == 0 && p.h.pad_hi == 0 && p.w.pad_lo == 0 && p.w.pad_hi == 0;
}
// groups > 1: with a single group and one input channel (e.g. an MNIST first layer) the
// implicit GEMM measured faster (5x5 1->32 28px b64: 56 vs 39 GF/s forward, 38 vs 9
// backward), since all output channels then share one input plane.
bool supports_depthwise(const ConvParams& p) { return p.groups > 1 && p.cin_g() == 1; }
bool supports_generic(const ConvParams&) { return true; }

struct Candidate {
  ConvPath id;
  const char* name;
  bool (*supports)(const ConvParams&);   // what the path can run (a forced path)
  bool (*preferred)(const ConvParams&);  // where the automatic choice takes it
  const char* needs;                     // what supports() asks for, in words (error messages)
};
// Ordered: most specialised first, generic last. The order was set by measurement
// (bench/conv.py): each specialised path beats the generic one on its shapes.
constexpr Candidate kCandidates[] = {
    {ConvPath::pointwise, "pointwise", supports_pointwise, supports_pointwise,
     "a 1x1 kernel, stride 1 and no padding"},
    {ConvPath::depthwise, "depthwise", supports_depthwise, supports_depthwise,
     "C_in/groups == 1 with groups > 1"},
    {ConvPath::winograd, "winograd", winograd_supports, winograd_preferred,
     "a 3x3 kernel, stride 1 and dilation 1"},
    {ConvPath::winograd_1d, "winograd_1d", winograd_1d_supports, winograd_1d_preferred,
     "a 1x2 or 1x3 kernel (height 1, width 2 or 3) and stride 1 along the width"},
    {ConvPath::generic, "generic", supports_generic, supports_generic, "nothing: it runs every convolution"},
};

// ---------------------------------------------------------------- forward

// The bias is added to the finished sum (y = sum + bias, one rounding), the same order
// in the per-image and the batched forward drivers.
template <typename T>
inline void add_bias(T* y, i64 n, T b) {
  for (i64 j = 0; j < n; ++j) y[j] += b;
}
template <>
inline void add_bias<float>(float* y, i64 n, float b) {
  if (active_isa() == Isa::avx512) {
    avx512::add_bias_f32(y, n, b);
    return;
  }
  for (i64 j = 0; j < n; ++j) y[j] += b;
}

// Shared driver of the pointwise and generic forward: tasks = (image, group, column
// chunk); each runs one single-threaded GEMM into its own slice of y.
// Generic forward with fwd_nb images per GEMM: tasks = (batch of images, group); the
// product goes to a per-thread M x (nb*Np) buffer, then is copied into each image.
template <typename T>
void forward_gemm_batched(const ConvParams& p, const Plan& pl, const T* x, const T* w, const T* bias, T* y) {
  const i64 nb = pl.fwd_nb, nbatch = ceil_div(p.n, nb), tasks = nbatch * p.groups;
  const int threads = static_cast<int>(std::min<i64>(pl.threads, tasks));
  const i64 Nb = nb * pl.Np;
  const std::size_t gemm_part = per_thread(gemm_ws(sizeof(T), pl.Mg, Nb, pl.K), sizeof(T));
  const std::size_t tmp_part = per_thread(static_cast<std::size_t>(pl.Mg * Nb), sizeof(T));
  const std::size_t ws_per = gemm_part + tmp_part + per_thread(static_cast<std::size_t>(pl.pad_elems), sizeof(T));
  T* ws = static_cast<T*>(scratch(kScratchOp0, ws_per * threads * sizeof(T)));
  const i64 planeP = pl.Hp * pl.Wp, imgP = pl.Cg * planeP;
  const TapRanges tr(p);
  const i64 in_plane = p.h.in * p.w.in;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 b = t / p.groups, g = t % p.groups;
    const i64 n0 = b * nb, cnt = std::min(nb, p.n - n0), N = cnt * pl.Np;
    T* wsp = ws + ws_per * thread_index();
    T* tmp = wsp + gemm_part;
    if (pl.pad_elems > 0) {
      T* xp = tmp + tmp_part;
      pad_batch(p, pl.Cg, pl.Hp, pl.Wp, x, n0, cnt, g, xp);
      PaddedB<T> src(p, xp, pl.Wp, planeP, imgP);
      gemm<T>(pl.Mg, N, pl.K, w + g * pl.Mg * pl.K, pl.K, 1, src, tmp, N, 1, false, 1, wsp);
    } else {
      UnfoldB<T> src(p, tr, x + (n0 * p.c_in + g * pl.Cg) * in_plane, 0, p.c_in * in_plane);
      gemm<T>(pl.Mg, N, pl.K, w + g * pl.Mg * pl.K, pl.K, 1, src, tmp, N, 1, false, 1, wsp);
    }
    for (i64 im = 0; im < cnt; ++im)
      for (i64 i = 0; i < pl.Mg; ++i) {
        T* yr = y + ((n0 + im) * p.c_out + g * pl.Mg + i) * pl.Np;
        const T* tr_ = tmp + i * N + im * pl.Np;
        if (bias) {
          const T bv = bias[g * pl.Mg + i];
          for (i64 j = 0; j < pl.Np; ++j) yr[j] = tr_[j] + bv;
        } else {
          std::memcpy(yr, tr_, static_cast<std::size_t>(pl.Np) * sizeof(T));
        }
      }
  }
}

template <typename T, bool kPointwise>
void forward_gemm(const ConvParams& p, const T* x, const T* w, const T* bias, T* y) {
  const Plan pl = make_plan(p, sizeof(T), conv_threads(p));
  if (!kPointwise && pl.fwd_nb > 1) {
    forward_gemm_batched<T>(p, pl, x, w, bias, y);
    return;
  }
  const i64 tasks = p.n * p.groups * pl.fwd.count;
  if (tasks == 0) return;
  const int threads = static_cast<int>(std::min<i64>(pl.threads, tasks));
  const std::size_t gemm_part = per_thread(gemm_ws(sizeof(T), pl.Mg, pl.fwd.chunk, pl.K), sizeof(T));
  const FwdPhase pb = kPointwise ? FwdPhase{0, 0, false} : fwd_phase_buf(p, pl, sizeof(T));
  const std::size_t ws_per = gemm_part + per_thread(static_cast<std::size_t>(pb.elems), sizeof(T));
  const std::size_t apack_part = pb.direct ? per_thread(static_cast<std::size_t>(direct_apack_elems(p, pl)), sizeof(T)) : 0;
  T* ws = static_cast<T*>(scratch(kScratchOp0, (apack_part + ws_per * threads) * sizeof(T)));
  T* apack = ws;
  ws += apack_part;
  if (pb.direct)  // per group: the panels of its weights (rows = output channels)
    for (i64 g = 0; g < p.groups; ++g)
      pack_panels16(w + g * pl.Mg * pl.K, pl.Mg, pl.K, pl.K, 1, apack + g * round_up(pl.Mg, 16) * pl.K);
  const TapRanges tr(p);
  const i64 in_plane = p.h.in * p.w.in;
  const i64 nr = gemm_nr(sizeof(T));
  const i64 sub = bias ? std::max<i64>(4 * kMinCols, kBiasTileBytes / (pl.Mg * static_cast<i64>(sizeof(T))) / nr * nr)
                       : std::max<i64>(pl.fwd.chunk, 1);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 item = t / pl.fwd.count, s = t % pl.fwd.count;
    const i64 n = item / p.groups, g = item % p.groups;
    const i64 j0 = s * pl.fwd.chunk, jn = std::min(pl.fwd.chunk, pl.Np - j0);
    const T* xg = x + (n * p.c_in + g * pl.Cg) * in_plane;
    T* wsp = ws + ws_per * thread_index();
    // The phase-split copy of the input rows the task's columns read.
    i64 ra = 0, nrows = 0;
    if (pb.elems > 0) {
      const i64 oha = j0 / p.w.out, ohb = (j0 + jn - 1) / p.w.out;
      ra = oha * p.h.stride;
      nrows = ohb * p.h.stride + (p.h.kernel - 1) * p.h.dilation + 1 - ra;
      avx512::phase_copy_f32(p, reinterpret_cast<const float*>(xg), pl.Cg, ra, nrows, pb.wq,
                             reinterpret_cast<float*>(wsp + gemm_part));
      if (pb.direct) {
        avx512::direct_forward_f32(p, reinterpret_cast<const float*>(wsp + gemm_part), ra, nrows, pb.wq,
                                   reinterpret_cast<const float*>(apack + g * round_up(pl.Mg, 16) * pl.K), pl.Mg,
                                   pl.K, reinterpret_cast<const float*>(bias ? bias + g * pl.Mg : nullptr),
                                   reinterpret_cast<float*>(y + (n * p.c_out + g * pl.Mg) * pl.Np), j0, j0 + jn);
        continue;
      }
    }
    // With a bias, the columns go in sub-blocks of `sub`, and the bias is added to each
    // block right after its GEMM, while the block is still in L2 (one pass over y in
    // memory, where a bias fill before the GEMM made two). y = sum + bias: see add_bias.
    for (i64 c0 = 0; c0 < jn; c0 += sub) {
      const i64 cn = std::min(sub, jn - c0);
      T* yc = y + (n * p.c_out + g * pl.Mg) * pl.Np + j0 + c0;
      if (kPointwise) {
        StridedB<T> src = dense_b(xg, in_plane, j0 + c0);
        gemm<T>(pl.Mg, cn, pl.K, w + g * pl.Mg * pl.K, pl.K, 1, src, yc, pl.Np, 1, false, 1, wsp);
      } else if (pb.elems > 0) {
        PhaseB src(p, reinterpret_cast<const float*>(wsp + gemm_part), ra, nrows, pb.wq, j0 + c0);
        gemm<float>(pl.Mg, cn, pl.K, reinterpret_cast<const float*>(w + g * pl.Mg * pl.K), pl.K, 1, src,
                    reinterpret_cast<float*>(yc), pl.Np, 1, false, 1, reinterpret_cast<float*>(wsp));
      } else {
        UnfoldB<T> src(p, tr, xg, j0 + c0, in_plane);
        gemm<T>(pl.Mg, cn, pl.K, w + g * pl.Mg * pl.K, pl.K, 1, src, yc, pl.Np, 1, false, 1, wsp);
      }
      if (bias)
        for (i64 i = 0; i < pl.Mg; ++i) add_bias(yc + i * pl.Np, cn, bias[g * pl.Mg + i]);
    }
  }
}

template <typename T>
void dw_forward_plane_scalar(const ConvParams& p, const T* x, const T* wk, T bias, T* y,
                             const i64* lo, const i64* hi) {
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride;
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    T* yr = y + oh * Wo;
    for (i64 ow = 0; ow < Wo; ++ow) yr[ow] = bias;
    for (i64 kh = 0; kh < p.h.kernel; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      const T* xr = x + ih * W;
      for (i64 kw = 0; kw < p.w.kernel; ++kw) {
        const T wv = wk[kh * p.w.kernel + kw];
        const T* xs = xr + kw * p.w.dilation - p.w.pad_lo;
        for (i64 ow = lo[kw]; ow < hi[kw]; ++ow) yr[ow] += wv * xs[ow * sw];
      }
    }
  }
}

template <typename T>
void dw_backward_input_plane_scalar(const ConvParams& p, const T* dy, const T* wk, T* dx,
                                    const i64* lo, const i64* hi) {
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride;
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    const T* dyr = dy + oh * Wo;
    for (i64 kh = 0; kh < p.h.kernel; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      T* dxr = dx + ih * W;
      for (i64 kw = 0; kw < p.w.kernel; ++kw) {
        const T wv = wk[kh * p.w.kernel + kw];
        T* ds = dxr + kw * p.w.dilation - p.w.pad_lo;
        for (i64 ow = lo[kw]; ow < hi[kw]; ++ow) ds[ow * sw] += wv * dyr[ow];
      }
    }
  }
}

template <typename T>
void dw_backward_weight_plane_scalar(const ConvParams& p, const T* dy, const T* x, double* acc,
                                     const i64* lo, const i64* hi) {
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride;
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    const T* dyr = dy + oh * Wo;
    for (i64 kh = 0; kh < p.h.kernel; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      const T* xr = x + ih * W;
      for (i64 kw = 0; kw < p.w.kernel; ++kw) {
        const T* xs = xr + kw * p.w.dilation - p.w.pad_lo;
        double s = 0;
        for (i64 ow = lo[kw]; ow < hi[kw]; ++ow) s += double(dyr[ow]) * double(xs[ow * sw]);
        acc[kh * p.w.kernel + kw] += s;
      }
    }
  }
}

// The AVX-512 depthwise kernels: stride 1 in both dimensions, kernels up to kDwMaxKw
// columns; no padded copy, no scratch beyond kH*kW double sums.
bool dw_avx512(const ConvParams& p) {
  return active_isa() == Isa::avx512 && p.h.stride == 1 && p.w.stride == 1 && p.w.kernel <= avx512::kDwMaxKw;
}
// Forward geometry (src = x, out = y); also the weight-gradient one (x against dy).
avx512::DwGeom dw_geom_forward(const ConvParams& p) {
  return avx512::DwGeom{p.h.in, p.w.in, p.h.out, p.w.out, p.h.kernel, p.w.kernel,
                        p.h.dilation, p.w.dilation, p.h.pad_lo, p.w.pad_lo};
}
// Input gradient, stride 1: dx = dy correlated with the flipped kernel, the source
// shifted by (k-1)*d - pad_lo (negative when the padding exceeds the dilated kernel).
avx512::DwGeom dw_geom_input(const ConvParams& p) {
  return avx512::DwGeom{p.h.out, p.w.out, p.h.in, p.w.in, p.h.kernel, p.w.kernel,
                        p.h.dilation, p.w.dilation, (p.h.kernel - 1) * p.h.dilation - p.h.pad_lo,
                        (p.w.kernel - 1) * p.w.dilation - p.w.pad_lo};
}

template <typename T>
void depthwise_forward_avx512(const ConvParams& p, const T* x, const T* w, const T* bias, T* y) {
  const i64 mult = p.cout_g(), KK = p.h.kernel * p.w.kernel;
  const i64 in_plane = p.h.in * p.w.in, out_plane = p.h.out * p.w.out;
  const i64 tasks = p.n * p.c_out;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(conv_threads(p), tasks)));
  const avx512::DwGeom g = dw_geom_forward(p);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 n = t / p.c_out, co = t % p.c_out;
    avx512::dw_corr_plane<T>(g, x + (n * p.c_in + co / mult) * in_plane, w + co * KK, bias ? bias[co] : T(0),
                             false, y + t * out_plane);
  }
}

template <typename T>
void depthwise_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y) {
  if (dw_avx512(p)) {
    depthwise_forward_avx512<T>(p, x, w, bias, y);
    return;
  }
  const TapRanges tr(p);
  const i64 mult = p.cout_g(), KK = p.h.kernel * p.w.kernel;
  const i64 in_plane = p.h.in * p.w.in, out_plane = p.h.out * p.w.out;
  const i64 tasks = p.n * p.c_out;
  const bool vec = active_isa() != Isa::scalar;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(conv_threads(p), tasks)));
  T* bufs = nullptr;
  std::size_t buf_per = 0;
  if (vec && p.w.stride == 1) {
    buf_per = per_thread(static_cast<std::size_t>(dw_forward_buffer_elems(p, 32 / sizeof(T))), sizeof(T));
    bufs = static_cast<T*>(scratch(kScratchOp1, buf_per * threads * sizeof(T)));
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 n = t / p.c_out, co = t % p.c_out, g = co / mult;
    const T* xp = x + (n * p.c_in + g) * in_plane;
    T* yp = y + t * out_plane;
    const T b = bias ? bias[co] : T(0);
    if (vec)
      avx2::dw_forward_plane<T>(p, xp, w + co * KK, b, yp, tr.lo.data(), tr.hi.data(),
                                bufs ? bufs + buf_per * thread_index() : nullptr);
    else
      dw_forward_plane_scalar<T>(p, xp, w + co * KK, b, yp, tr.lo.data(), tr.hi.data());
  }
}

// ---------------------------------------------------------------- backward

// grad bias: per channel, a double sum over images then pixels, in that fixed order.
template <typename T>
void bias_grad(const ConvParams& p, const T* dy, T* db) {
  const i64 Np = p.h.out * p.w.out;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(conv_threads(p), p.c_out)));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 co = 0; co < p.c_out; ++co) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 interleaved partial sums, fixed order
    for (i64 n = 0; n < p.n; ++n) {
      const T* d = dy + (n * p.c_out + co) * Np;
      i64 j = 0;
      for (; j + 8 <= Np; j += 8)
        for (int u = 0; u < 8; ++u) s[u] += d[j + u];
      for (; j < Np; ++j) s[j % 8] += d[j];
    }
    db[co] = static_cast<T>(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
  }
}

// grad weight in image pieces (Plan::wred): tasks = (group, piece), each summing its
// images in order into its own partial dW (group slice); then dW = the partials added in
// piece order.
template <typename T, bool kPointwise>
void weight_grad_pieces(const ConvParams& p, const Plan& pl, const T* dy, const T* x, T* dw, T* ws,
                        std::size_t ws_per, const TapRanges& tr) {
  const i64 P = pl.wred, MK = pl.Mg * pl.K, tasks = p.groups * P;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(pl.threads, tasks)));
  const i64 in_plane = p.h.in * p.w.in, Wo = p.w.out, S = pl.wslices;
  T* part = static_cast<T*>(scratch(kScratchOp1, static_cast<std::size_t>(tasks * MK) * sizeof(T)));
  const FwdPhase wd = kPointwise ? FwdPhase{0, 0, false} : wgrad_direct_buf(p, pl, sizeof(T));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 g = t / P, piece = t % P;
    // Whole images n0 .. n1-1, or (S > 1) output rows r0 .. r1-1 of image n0.
    i64 n0, n1, r0 = 0, r1 = p.h.out;
    if (S == 1) {
      n0 = piece * p.n / P;
      n1 = (piece + 1) * p.n / P;
    } else {
      n0 = piece / S;
      n1 = n0 + 1;
      r0 = (piece % S) * pl.wrows;
      r1 = std::min(p.h.out, r0 + pl.wrows);
    }
    const i64 depth = (r1 - r0) * Wo;
    T* c = part + t * MK;
    T* wsp = ws + ws_per * thread_index();
    if (n0 == n1) fill_zero(c, MK);
    for (i64 n = n0; n < n1; ++n) {
      const T* dyg = dy + (n * p.c_out + g * pl.Mg) * pl.Np + r0 * Wo;
      const T* xg = x + (n * p.c_in + g * pl.Cg) * in_plane;
      if (wd.elems > 0) {  // direct: the rows' phase-split copy, then the dot products
        float* buf = reinterpret_cast<float*>(wsp);
        float* sums = buf + per_thread(static_cast<std::size_t>(wd.elems), sizeof(T));
        const i64 ra = r0 * p.h.stride, nrows = (r1 - 1) * p.h.stride + (p.h.kernel - 1) * p.h.dilation + 1 - ra;
        avx512::phase_copy_f32(p, reinterpret_cast<const float*>(xg), pl.Cg, ra, nrows, wd.wq, buf);
        avx512::direct_wgrad_f32(p, buf, ra, nrows, wd.wq,
                                 reinterpret_cast<const float*>(dy + (n * p.c_out + g * pl.Mg) * pl.Np), pl.Mg,
                                 pl.K, r0, r1, n > n0 ? sums : reinterpret_cast<float*>(c),
                                 sums + per_thread(static_cast<std::size_t>(MK), sizeof(T)));
        if (n > n0)
          for (i64 i = 0; i < MK; ++i) c[i] += static_cast<T>(sums[i]);
        continue;
      }
      if (kPointwise) {  // 1x1, stride 1, no padding: output pixel j reads input pixel j
        StridedB<T> src(xg + r0 * Wo, 1, in_plane);
        gemm<T>(pl.Mg, pl.K, depth, dyg, pl.Np, 1, src, c, pl.K, 1, n > n0, 1, wsp);
      } else {
        UnfoldTB<T> src(p, tr, xg, 0, r0 * Wo);
        gemm<T>(pl.Mg, pl.K, depth, dyg, pl.Np, 1, src, c, pl.K, 1, n > n0, 1, wsp);
      }
    }
  }
  for (i64 g = 0; g < p.groups; ++g)
    for (i64 i = 0; i < MK; ++i) {
      const T* src = part + g * P * MK + i;
      T s = src[0];
      for (i64 q = 1; q < P; ++q) s += src[q * MK];
      dw[g * MK + i] = s;
    }
}

// grad weight for pointwise and generic: tasks = (group, unfolded-column chunk), each
// summing over all images in order into its own slice of dw (deterministic for any
// thread count).
template <typename T, bool kPointwise>
void weight_grad_gemm(const ConvParams& p, const Plan& pl, const T* dy, const T* x, T* dw, T* ws,
                      std::size_t ws_per, const TapRanges& tr) {
  if (pl.wred > 1) {
    weight_grad_pieces<T, kPointwise>(p, pl, dy, x, dw, ws, ws_per, tr);
    return;
  }
  const i64 tasks = p.groups * pl.wcols.count;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(pl.threads, tasks)));
  const i64 in_plane = p.h.in * p.w.in;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 g = t / pl.wcols.count, s = t % pl.wcols.count;
    const i64 c0 = s * pl.wcols.chunk, cn = std::min(pl.wcols.chunk, pl.K - c0);
    T* dwc = dw + g * pl.Mg * pl.K + c0;
    T* wsp = ws + ws_per * thread_index();
    if (p.n == 0)
      for (i64 i = 0; i < pl.Mg; ++i) fill_zero(dwc + i * pl.K, cn);
    if (!kPointwise && pl.wgt_nb > 1) {
      // A = dY of nb images side by side (Mg x nb*Np), then the padded batch copy.
      const i64 nb = pl.wgt_nb, Kb = nb * pl.Np, planeP = pl.Hp * pl.Wp, imgP = pl.Cg * planeP;
      T* abuf = wsp + per_thread(gemm_ws(sizeof(T), pl.Mg, pl.wcols.chunk, Kb), sizeof(T));
      T* xp = abuf + per_thread(static_cast<std::size_t>(pl.Mg * Kb), sizeof(T));
      for (i64 n0 = 0; n0 < p.n; n0 += nb) {
        const i64 cnt = std::min(nb, p.n - n0);
        for (i64 im = 0; im < cnt; ++im)
          for (i64 i = 0; i < pl.Mg; ++i)
            std::memcpy(abuf + i * Kb + im * pl.Np, dy + ((n0 + im) * p.c_out + g * pl.Mg + i) * pl.Np,
                        static_cast<std::size_t>(pl.Np) * sizeof(T));
        pad_batch(p, pl.Cg, pl.Hp, pl.Wp, x, n0, cnt, g, xp);
        PaddedTB<T> src(p, xp, pl.Wp, planeP, imgP, c0);
        gemm<T>(pl.Mg, cn, cnt * pl.Np, abuf, Kb, 1, src, dwc, pl.K, 1, n0 > 0, 1, wsp);
      }
      continue;
    }
    for (i64 n = 0; n < p.n; ++n) {
      const T* dyg = dy + (n * p.c_out + g * pl.Mg) * pl.Np;
      const T* xg = x + (n * p.c_in + g * pl.Cg) * in_plane;
      if (kPointwise) {
        StridedB<T> src(xg + c0 * in_plane, 1, in_plane);  // B(pixel, ci) = x[ci][pixel]
        gemm<T>(pl.Mg, cn, pl.Np, dyg, pl.Np, 1, src, dwc, pl.K, 1, n > 0, 1, wsp);
      } else {
        UnfoldTB<T> src(p, tr, xg, c0);
        gemm<T>(pl.Mg, cn, pl.Np, dyg, pl.Np, 1, src, dwc, pl.K, 1, n > 0, 1, wsp);
      }
    }
  }
}

// Pointwise grad input: dx plane = W_g^T dY_g, straight into dx.
template <typename T>
void input_grad_pointwise(const ConvParams& p, const Plan& pl, const T* dy, const T* w, T* dx,
                          T* ws, std::size_t ws_per) {
  const i64 tasks = p.n * p.groups * pl.fwd.count;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(pl.threads, tasks)));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 item = t / pl.fwd.count, s = t % pl.fwd.count;
    const i64 n = item / p.groups, g = item % p.groups;
    const i64 j0 = s * pl.fwd.chunk, jn = std::min(pl.fwd.chunk, pl.Np - j0);
    StridedB<T> src = dense_b(dy + (n * p.c_out + g * pl.Mg) * pl.Np, pl.Np, j0);
    T* dxc = dx + (n * p.c_in + g * pl.Cg) * pl.Np + j0;
    gemm<T>(pl.Cg, jn, pl.Mg, w + g * pl.Mg * pl.Cg, 1, pl.Cg, src, dxc, pl.Np, 1, false, 1,
            ws + ws_per * thread_index());
  }
}

// Adds a col2im tile (rows (ci, kh, kw) for ci in [0, nci), columns = output pixels
// j0 .. j0+jn) into the input rows h0 .. h1-1 of the input-gradient planes dxp (channel
// 0 = the tile's first); contributions to other rows are dropped.
template <typename T>
void col2im_tile(const ConvParams& p, const TapRanges& tr, const T* tile, i64 nci, i64 j0,
                 i64 jn, T* dxp, i64 h0, i64 h1) {
  if (sizeof(T) == 4 && (p.w.stride == 1 || p.w.stride == 2) && active_isa() == Isa::avx512) {
    avx512::col2im_tile_f32(p, tr.lo.data(), tr.hi.data(), reinterpret_cast<const float*>(tile), nci, j0, jn,
                            reinterpret_cast<float*>(dxp), h0, h1);
    return;
  }
  const i64 W = p.w.in, sw = p.w.stride, plane = p.h.in * W;
  col2im_walk(p, tile, nci, j0, jn, h0, h1, [&](i64 ci, i64 kw, i64 ih, i64 ow, const T* src, i64 len) {
    const i64 a = std::min(std::max(tr.lo[kw] - ow, i64(0)), len);
    const i64 b = std::min(std::max(tr.hi[kw] - ow, a), len);
    T* dst = dxp + ci * plane + ih * W + ow * sw + kw * p.w.dilation - p.w.pad_lo;
    if (sw == 1)
      for (i64 i = a; i < b; ++i) dst[i] += src[i];
    else
      for (i64 i = a; i < b; ++i) dst[i * sw] += src[i];
  });
}

// Generic grad input: tasks = (image, group, input-channel chunk); each computes
// W^T dY for its channels in column tiles and scatters them into its own dx planes.
template <typename T>
void input_grad_generic(const ConvParams& p, const Plan& pl, const T* dy, const T* w, T* dx,
                        T* ws, std::size_t ws_per, const TapRanges& tr) {
  const i64 KK = p.h.kernel * p.w.kernel, B = pl.dx_bands, H = p.h.in, W = p.w.in;
  const i64 tasks = p.n * p.groups * pl.ci_count * B;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(pl.threads, tasks)));
  const i64 in_plane = H * W;
  const std::size_t gemm_part = per_thread(gemm_ws(sizeof(T), pl.ci_sub * KK, pl.tile, pl.Mg), sizeof(T));
  const std::size_t tile_part = per_thread(static_cast<std::size_t>(pl.ci_sub * KK * pl.tile), sizeof(T));
  const PhaseBuf pb = dx_phase_buf(p, pl, sizeof(T));
  const i64 ap_elems = dx_direct_apack(p, pl, sizeof(T));
  const std::size_t phase_part = per_thread(static_cast<std::size_t>(pb.elems), sizeof(T));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 t = 0; t < tasks; ++t) {
    const i64 item = t / (pl.ci_count * B), s = (t / B) % pl.ci_count, band = t % B;
    const i64 n = item / p.groups, g = item % p.groups;
    const i64 ca = s * pl.ci_chunk, nci = std::min(pl.ci_chunk, pl.Cg - ca);
    // Input rows h0 .. h1-1 of the task's planes, from the output rows whose windows reach
    // them: oh*stride + kh*dilation - pad in [h0, h1) for some kh.
    const i64 h0 = band * H / B, h1 = (band + 1) * H / B;
    const i64 lo_num = h0 + p.h.pad_lo - (p.h.kernel - 1) * p.h.dilation;
    const i64 oh0 = lo_num <= 0 ? 0 : std::min(p.h.out, ceil_div(lo_num, p.h.stride));
    const i64 hi_num = h1 - 1 + p.h.pad_lo;
    const i64 oh1 = hi_num < 0 ? oh0 : std::max(oh0, std::min(p.h.out, hi_num / p.h.stride + 1));
    T* dxp = dx + (n * p.c_in + g * pl.Cg + ca) * in_plane;
    if (pb.elems == 0)
      for (i64 ci = 0; ci < nci; ++ci) fill_zero(dxp + ci * in_plane + h0 * W, (h1 - h0) * W);
    T* wsp = ws + ws_per * thread_index();
    T* tile = wsp + gemm_part;
    T* pbuf = tile + tile_part;
    T* apack = pbuf + phase_part;
    const T* dyg = dy + (n * p.c_out + g * pl.Mg) * pl.Np;
    for (i64 cs = 0; cs < nci; cs += pl.ci_sub) {
      const i64 ncs = std::min(pl.ci_sub, nci - cs), rows = ncs * KK;
      const T* a = w + g * pl.Mg * pl.K + (ca + cs) * KK;  // A(r, co) = w[g*Mg + co][(ca+cs)*KK + r]
      if (pb.elems > 0) fill_zero(pbuf, ncs * (h1 - h0) * p.w.stride * pb.wq);
      if (ap_elems > 0) pack_panels16(a, rows, pl.Mg, 1, pl.K, apack);  // A(r, co) = a[r + co*K]
      for (i64 j0 = oh0 * p.w.out; j0 < oh1 * p.w.out; j0 += pl.tile) {
        const i64 jn = std::min(pl.tile, oh1 * p.w.out - j0);
        if (ap_elems > 0) {
          avx512::direct_gemm_f32(rows, jn, pl.Mg, reinterpret_cast<const float*>(apack),
                                  reinterpret_cast<const float*>(dyg + j0), pl.Np, reinterpret_cast<float*>(tile), jn);
        } else {
          StridedB<T> src = dense_b(dyg, pl.Np, j0);
          gemm<T>(rows, jn, pl.Mg, a, 1, pl.K, src, tile, jn, 1, false, 1, wsp);
        }
        if (pb.elems > 0)
          avx512::col2im_phase_f32(p, reinterpret_cast<const float*>(tile), ncs, j0, jn,
                                   reinterpret_cast<float*>(pbuf), h0, h1, pb.wq);
        else
          col2im_tile(p, tr, tile, ncs, j0, jn, dxp + cs * in_plane, h0, h1);
      }
      if (pb.elems > 0)
        avx512::phase_unpack_f32(p, reinterpret_cast<const float*>(pbuf), ncs,
                                 reinterpret_cast<float*>(dxp + cs * in_plane), h0, h1, pb.wq);
    }
  }
}

// Fused backward: a task owns one input channel g (for every image): its dx planes and
// the weight gradients of its output channels g*mult .. g*mult+mult-1, so each dy plane
// is read from memory once for both, and every sum has one owner and a fixed order
// (images in order), whatever the thread count.
template <typename T>
void depthwise_backward_avx512(const ConvParams& p, const T* dy, const T* x, const T* w, T* dx, T* dw) {
  const i64 mult = p.cout_g(), KK = p.h.kernel * p.w.kernel;
  const i64 in_plane = p.h.in * p.w.in, out_plane = p.h.out * p.w.out;
  const i64 tasks = p.c_in;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(conv_threads(p), tasks)));
  const avx512::DwGeom gf = dw_geom_forward(p), gi = dw_geom_input(p);
  // 3x3 'same' planes (stride 1, dilation 1, padding 1 all round): the fused plane kernel
  const bool same3 = p.h.kernel == 3 && p.w.kernel == 3 && p.h.dilation == 1 && p.w.dilation == 1 &&
                     p.h.pad_lo == 1 && p.h.pad_hi == 1 && p.w.pad_lo == 1 && p.w.pad_hi == 1;
  // Per thread: the flipped kernel (KK values) and KK double sums.
  const std::size_t acc_per = per_thread(static_cast<std::size_t>(KK) * sizeof(double), 1);
  const std::size_t wf_per = per_thread(static_cast<std::size_t>(KK) * sizeof(T), 1);
  const std::size_t per = acc_per + wf_per;
  char* ws = static_cast<char*>(scratch(kScratchOp1, per * threads));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (i64 g = 0; g < tasks; ++g) {
    char* mine = ws + per * thread_index();
    double* acc = reinterpret_cast<double*>(mine);
    T* wf = reinterpret_cast<T*>(mine + acc_per);
    if (same3 && dx && dw && mult == 1) {  // one pass per plane for dx and dw
      for (i64 r = 0; r < KK; ++r) acc[r] = 0;
      for (i64 n = 0; n < p.n; ++n) {
        const i64 t = n * p.c_in + g;
        avx512::dw_backward_same3_plane<T>(p.h.in, p.w.in, dy + t * out_plane, x + t * in_plane, w + g * KK, false,
                                           dx + t * in_plane, acc);
      }
      for (i64 r = 0; r < KK; ++r) dw[g * KK + r] = static_cast<T>(acc[r]);
      continue;
    }
    for (i64 n = 0; n < p.n; ++n) {
      const T* xp = x + (n * p.c_in + g) * in_plane;
      for (i64 m = 0; m < mult; ++m) {
        const i64 co = g * mult + m;
        const T* dyp = dy + (n * p.c_out + co) * out_plane;
        if (dx) {
          for (i64 r = 0; r < KK; ++r) wf[r] = w[co * KK + KK - 1 - r];
          avx512::dw_corr_plane<T>(gi, dyp, wf, T(0), m > 0, dx + (n * p.c_in + g) * in_plane);
        }
        if (dw && mult == 1) {  // one output channel: its sums stay in acc across images
          if (n == 0)
            for (i64 r = 0; r < KK; ++r) acc[r] = 0;
          avx512::dw_weight_plane<T>(gf, dyp, xp, acc);
        }
      }
    }
    if (dw && mult == 1) {
      for (i64 r = 0; r < KK; ++r) dw[g * KK + r] = static_cast<T>(p.n > 0 ? acc[r] : 0.0);
    } else if (dw) {  // a channel multiplier: one output channel at a time, images in order
      for (i64 m = 0; m < mult; ++m) {
        const i64 co = g * mult + m;
        for (i64 r = 0; r < KK; ++r) acc[r] = 0;
        for (i64 n = 0; n < p.n; ++n)
          avx512::dw_weight_plane<T>(gf, dy + (n * p.c_out + co) * out_plane, x + (n * p.c_in + g) * in_plane, acc);
        for (i64 r = 0; r < KK; ++r) dw[co * KK + r] = static_cast<T>(acc[r]);
      }
    }
  }
}

template <typename T>
void depthwise_backward(const ConvParams& p, const T* dy, const T* x, const T* w, T* dx, T* dw) {
  if (dw_avx512(p)) {
    depthwise_backward_avx512<T>(p, dy, x, w, dx, dw);
    return;
  }
  const TapRanges tr(p);
  const i64 mult = p.cout_g(), KK = p.h.kernel * p.w.kernel;
  const i64 in_plane = p.h.in * p.w.in, out_plane = p.h.out * p.w.out;
  const bool vec = active_isa() != Isa::scalar;
  const int threads = static_cast<int>(std::max<i64>(1, std::min<i64>(conv_threads(p), std::max(p.n * p.c_in, p.c_out))));
  // Per thread: the zero-padded plane copy of the AVX2 kernels, then KK double sums.
  const std::size_t buf_per = vec ? per_thread(static_cast<std::size_t>(dw_forward_buffer_elems(p, 32 / sizeof(T))), sizeof(T)) : 0;
  const std::size_t acc_per = per_thread(static_cast<std::size_t>(KK) * sizeof(double), 1);
  const std::size_t per = buf_per * sizeof(T) + acc_per;
  char* ws = static_cast<char*>(scratch(kScratchOp1, per * threads));
  if (dx) {
    const i64 tasks = p.n * p.c_in;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 t = 0; t < tasks; ++t) {
      const i64 n = t / p.c_in, g = t % p.c_in;
      T* dxp = dx + t * in_plane;
      T* buf = vec ? reinterpret_cast<T*>(ws + per * thread_index()) : nullptr;
      fill_zero(dxp, in_plane);
      for (i64 m = 0; m < mult; ++m) {
        const i64 co = g * mult + m;
        const T* dyp = dy + (n * p.c_out + co) * out_plane;
        if (vec)
          avx2::dw_backward_input_plane<T>(p, dyp, w + co * KK, dxp, tr.lo.data(), tr.hi.data(), buf);
        else
          dw_backward_input_plane_scalar<T>(p, dyp, w + co * KK, dxp, tr.lo.data(), tr.hi.data());
      }
    }
  }
  if (dw) {
    const i64 tasks = p.c_out;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 co = 0; co < tasks; ++co) {
      char* mine = ws + per * thread_index();
      T* buf = vec ? reinterpret_cast<T*>(mine) : nullptr;
      double* acc = reinterpret_cast<double*>(mine + buf_per * sizeof(T));
      for (i64 i = 0; i < KK; ++i) acc[i] = 0;
      const i64 g = co / mult;
      for (i64 n = 0; n < p.n; ++n) {
        const T* dyp = dy + (n * p.c_out + co) * out_plane;
        const T* xp = x + (n * p.c_in + g) * in_plane;
        if (vec)
          avx2::dw_backward_weight_plane<T>(p, dyp, xp, acc, tr.lo.data(), tr.hi.data(), buf);
        else
          dw_backward_weight_plane_scalar<T>(p, dyp, xp, acc, tr.lo.data(), tr.hi.data());
      }
      for (i64 i = 0; i < KK; ++i) dw[co * KK + i] = static_cast<T>(acc[i]);
    }
  }
}

template <typename T>
void backward_gemm(const ConvParams& p, bool pointwise, const T* dy, const T* x, const T* w,
                   T* dx, T* dw) {
  const Plan pl = make_plan(p, sizeof(T), conv_threads(p));
  const TapRanges tr(p);
  const i64 KK = p.h.kernel * p.w.kernel;
  // One workspace sized for the largest of the GEMM calls below.
  std::size_t ws_per = std::max(per_thread(weight_gemm_ws(p, pl, sizeof(T)), sizeof(T)),
                                wgrad_direct_ws(p, pl, sizeof(T)));
  if (dw && !pointwise && pl.wgt_nb > 1) {
    const i64 Kb = pl.wgt_nb * pl.Np;
    ws_per = std::max(ws_per, per_thread(gemm_ws(sizeof(T), pl.Mg, pl.wcols.chunk, Kb), sizeof(T)) +
                                  per_thread(static_cast<std::size_t>(pl.Mg * Kb), sizeof(T)) +
                                  per_thread(static_cast<std::size_t>(pl.wgt_pad), sizeof(T)));
  }
  if (dx) {
    if (pointwise)
      ws_per = std::max(ws_per, per_thread(gemm_ws(sizeof(T), pl.Cg, pl.fwd.chunk, pl.Mg), sizeof(T)));
    else
      ws_per = std::max(ws_per, per_thread(gemm_ws(sizeof(T), pl.ci_sub * KK, pl.tile, pl.Mg), sizeof(T)) +
                                    per_thread(static_cast<std::size_t>(pl.ci_sub * KK * pl.tile), sizeof(T)) +
                                    per_thread(static_cast<std::size_t>(dx_phase_buf(p, pl, sizeof(T)).elems), sizeof(T)) +
                                    per_thread(static_cast<std::size_t>(dx_direct_apack(p, pl, sizeof(T))), sizeof(T)));
  }
  T* ws = static_cast<T*>(scratch(kScratchOp0, ws_per * pl.threads * sizeof(T)));
  if (dx && p.n > 0) {
    if (pointwise)
      input_grad_pointwise<T>(p, pl, dy, w, dx, ws, ws_per);
    else
      input_grad_generic<T>(p, pl, dy, w, dx, ws, ws_per, tr);
  }
  if (dw) {
    if (pointwise)
      weight_grad_gemm<T, true>(p, pl, dy, x, dw, ws, ws_per, tr);
    else
      weight_grad_gemm<T, false>(p, pl, dy, x, dw, ws, ws_per, tr);
  }
}

}  // namespace

// ---------------------------------------------------------------- public entry points

i64 dw_forward_buffer_elems(const ConvParams& p, int lanes) {
  const i64 wp = checked_add(round_up(std::max(p.w.out, p.w.in), lanes),
                             checked_mul(p.w.kernel - 1, p.w.dilation, "dilated kernel"), "padded row");
  const i64 hp = checked_add(checked_mul(p.h.out - 1, p.h.stride, "padded rows"),
                             checked_mul(p.h.kernel - 1, p.h.dilation, "padded rows") + 1, "padded rows");
  return checked_mul(std::max<i64>(hp, p.h.in + p.h.kernel * p.h.dilation), wp, "depthwise buffer");
}

ConvPath conv_path_from_name(const char* name) {
  std::string s(name);
  if (s == "auto") return ConvPath::automatic;
  for (const Candidate& c : kCandidates)
    if (s == c.name) return c.id;
  std::string names = "'auto'";
  for (std::size_t i = 0; i < std::size(kCandidates); ++i)
    names += std::string(i + 1 < std::size(kCandidates) ? ", '" : " or '") + kCandidates[i].name + "'";
  throw std::invalid_argument("path must be " + names + ", got '" + s + "'");
}

const char* conv_path_needs(ConvPath path) {
  for (const Candidate& c : kCandidates)
    if (c.id == path) return c.needs;
  return "nothing";
}

const char* conv_path_name(ConvPath path) {
  for (const Candidate& c : kCandidates)
    if (c.id == path) return c.name;
  return "auto";
}

bool conv_path_supports(ConvPath path, const ConvParams& p) {
  if (path == ConvPath::automatic) return true;
  for (const Candidate& c : kCandidates)
    if (c.id == path) return c.supports(p);
  return false;
}

ConvPath conv_choose_path(const ConvParams& p) {
  for (const Candidate& c : kCandidates)
    if (c.preferred(p)) return c.id;
  return ConvPath::generic;
}

static void check_window(Window& d, const char* dim) {
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument(std::string(dim) + ": " + what);
  };
  if (d.in < 0) bad("input size must be >= 0, got " + std::to_string(d.in));
  if (d.kernel < 1) bad("kernel size must be >= 1, got " + std::to_string(d.kernel));
  if (d.stride < 1) bad("stride must be >= 1, got " + std::to_string(d.stride));
  if (d.dilation < 1) bad("dilation must be >= 1, got " + std::to_string(d.dilation));
  if (d.pad_lo < 0 || d.pad_hi < 0)
    bad("padding must be >= 0, got (" + std::to_string(d.pad_lo) + ", " + std::to_string(d.pad_hi) + ")");
  // Keep every index computation far from int64 overflow.
  const i64 limit = i64(1) << 60;
  i64 padded = checked_add(checked_add(d.in, d.pad_lo, "padded size"), d.pad_hi, "padded size");
  i64 span = checked_add(checked_mul(d.dilation, d.kernel - 1, "dilated kernel"), 1, "dilated kernel");
  if (padded > limit || span > limit) throw std::overflow_error(std::string(dim) + ": sizes too large");
  const i64 diff = padded - span;
  const i64 out = (diff >= 0 ? diff / d.stride : -((-diff) / d.stride + ((-diff) % d.stride != 0))) + 1;
  if (out <= 0)
    bad("output size would be " + std::to_string(out) +
        ": (" + std::to_string(d.in) + " + " + std::to_string(d.pad_lo) + " + " +
        std::to_string(d.pad_hi) + " - " + std::to_string(d.dilation) + "*(" +
        std::to_string(d.kernel) + "-1) - 1)//" + std::to_string(d.stride) +
        " + 1 (the kernel is larger than the padded input)");
  d.out = out;
}

void conv_validate(ConvParams& p) {
  if (p.n < 0) throw std::invalid_argument("batch size must be >= 0");
  if (p.groups < 1) throw std::invalid_argument("groups must be >= 1, got " + std::to_string(p.groups));
  if (p.c_in < 1) throw std::invalid_argument("input must have at least one channel");
  if (p.c_out < 1) throw std::invalid_argument("weight must have at least one output channel");
  if (p.c_in % p.groups != 0)
    throw std::invalid_argument("groups=" + std::to_string(p.groups) + " must divide the input channels " +
                                std::to_string(p.c_in));
  if (p.c_out % p.groups != 0)
    throw std::invalid_argument("groups=" + std::to_string(p.groups) +
                                " must divide the output channels " + std::to_string(p.c_out));
  check_window(p.h, "height");
  check_window(p.w, "width");
  i64 in = checked_mul(checked_mul(checked_mul(p.n, p.c_in, "input"), p.h.in, "input"), p.w.in, "input");
  i64 out = checked_mul(checked_mul(checked_mul(p.n, p.c_out, "output"), p.h.out, "output"), p.w.out, "output");
  i64 wt = checked_mul(checked_mul(checked_mul(p.c_out, p.cin_g(), "weight"), p.h.kernel, "weight"), p.w.kernel, "weight");
  checked_mul(std::max({in, out, wt}), 8, "bytes");
  conv_workspace_bytes(p, sizeof(double), true, num_threads());
}

// Grad input of a stride-1 convolution as a forward one: dx = conv(dy, w') with
// w'[g*Cg + ci, co, kh, kw] = w[g*Mg + co, ci, kH-1-kh, kW-1-kw] and the padding
// mirrored to (k-1)*d - pad on each side, so it runs on the forward implicit GEMM (its
// fast packers, image batching) instead of W^T dY plus the col2im scatter. Taken when the
// mirrored padding is valid, the plane is large enough that the weight copy is cheap
// against the GEMM (n*H*W >= kDxForwardMinCols: c64 56px 77 -> 87 GF/s, c512 7px b8
// 52 -> 87, while c256 14px b1 and c512 7px b1 measured slower this way) and the
// forward GEMM has rows enough for the register tile (Cg >= kDxForwardMinRows).
constexpr i64 kDxForwardMinCols = 256;
constexpr i64 kDxForwardMinRows = 8;
// The mirrored problem alone (any size): false where it does not exist.
bool mirrored_problem(const ConvParams& p, ConvParams* q) {
  if (p.h.stride != 1 || p.w.stride != 1 || p.n <= 0) return false;
  const i64 sh = (p.h.kernel - 1) * p.h.dilation, sw = (p.w.kernel - 1) * p.w.dilation;
  if (p.h.pad_lo > sh || p.h.pad_hi > sh || p.w.pad_lo > sw || p.w.pad_hi > sw) return false;
  if (p.h.pad_lo < 0 || p.h.pad_hi < 0 || p.w.pad_lo < 0 || p.w.pad_hi < 0) return false;
  ConvParams r = p;
  r.c_in = p.c_out;
  r.c_out = p.c_in;
  r.h.in = p.h.out;
  r.w.in = p.w.out;
  r.h.pad_lo = sh - p.h.pad_lo;
  r.h.pad_hi = sh - p.h.pad_hi;
  r.w.pad_lo = sw - p.w.pad_lo;
  r.w.pad_hi = sw - p.w.pad_hi;
  r.h.out = p.h.in;
  r.w.out = p.w.in;
  *q = r;
  return true;
}
bool input_grad_as_forward(const ConvParams& p, ConvParams* q) {
  if (p.cin_g() < kDxForwardMinRows) return false;
  // n*H*W cannot overflow: n*C_in*H*W was checked to fit
  if (p.h.in * p.w.in < kDxForwardMinCols && p.n * p.h.in * p.w.in < kDxForwardMinCols) return false;
  return mirrored_problem(p, q);
}

// w'[g*Cg + ci, co, kh, kw] = w[g*Mg + co, ci, kH-1-kh, kW-1-kw], the weights of the
// mirrored problem input_grad_as_forward() describes, in per-thread scratch.
template <typename T>
const T* mirrored_weights(const ConvParams& p, const T* w) {
  const i64 KK = p.h.kernel * p.w.kernel, Mg = p.cout_g(), Cg = p.cin_g();
  T* wq = static_cast<T*>(scratch(kScratchOp1, static_cast<std::size_t>(p.c_out * Cg * KK) * sizeof(T)));
  for (i64 co = 0; co < p.c_out; ++co) {
    const i64 g = co / Mg, col = co % Mg;
    for (i64 ci = 0; ci < Cg; ++ci) {
      const T* src = w + (co * Cg + ci) * KK;
      T* dst = wq + ((g * Cg + ci) * Mg + col) * KK;
      for (i64 r = 0; r < KK; ++r) dst[r] = src[KK - 1 - r];
    }
  }
  return wq;
}

std::size_t conv_workspace_bytes(const ConvParams& p, std::size_t elem, bool backward, int threads) {
  const Plan pl = make_plan(p, elem, threads);
  const i64 KK = checked_mul(p.h.kernel, p.w.kernel, "kernel");
  const FwdPhase fph = fwd_phase_buf(p, pl, elem);
  i64 per = checked_add(static_cast<i64>(gemm_ws(elem, pl.Mg, pl.fwd.chunk, pl.K)) + 32, fph.elems, "workspace");
  if (pl.fwd_nb > 1) {
    const i64 nb_cols = checked_mul(pl.fwd_nb, pl.Np, "batched columns");
    per = std::max(per, checked_add(checked_add(static_cast<i64>(gemm_ws(elem, pl.Mg, nb_cols, pl.K)) + 32,
                                                checked_mul(pl.Mg, nb_cols, "batched output"), "workspace"),
                                    pl.pad_elems, "workspace"));
  }
  if (backward) {
    per = std::max({per, static_cast<i64>(weight_gemm_ws(p, pl, elem)), static_cast<i64>(wgrad_direct_ws(p, pl, elem))});
    if (pl.wgt_nb > 1) {
      const i64 kb = checked_mul(pl.wgt_nb, pl.Np, "batched pixels");
      per = std::max(per, checked_add(checked_add(static_cast<i64>(gemm_ws(elem, pl.Mg, pl.wcols.chunk, kb)) + 32,
                                                  checked_mul(pl.Mg, kb, "batched grad output"), "workspace"),
                                      pl.wgt_pad, "workspace"));
    }
    per = std::max(per, static_cast<i64>(gemm_ws(elem, pl.Cg, pl.fwd.chunk, pl.Mg)));
    i64 rows = checked_mul(pl.ci_sub, KK, "col2im rows");
    per = std::max(per, checked_add(checked_add(static_cast<i64>(gemm_ws(elem, rows, pl.tile, pl.Mg)) + 32,
                                                checked_mul(rows, pl.tile, "col2im tile"), "workspace"),
                                    dx_phase_buf(p, pl, elem).elems + dx_direct_apack(p, pl, elem) + 32, "workspace"));
  }
  i64 red = 0;  // grad weight in image pieces: the partial sums (not per thread)
  if (fph.direct)  // direct forward: the packed weights (not per thread)
    red = checked_add(checked_mul(checked_mul(p.groups, round_up(pl.Mg, 16), "packed weights"), pl.K, "packed weights"),
                      16, "packed weights");
  if (backward && pl.wred > 1)
    red += checked_mul(checked_mul(checked_mul(p.groups, pl.wred, "partial sums"), pl.Mg, "partial sums"),
                      pl.K, "partial sums");
  // depthwise: padded plane copy plus (backward) KK double accumulators
  per = std::max(per, checked_add(dw_forward_buffer_elems(p, 4), backward ? KK + 8 : 0, "workspace"));
  per = checked_add(per, 64, "workspace");
  i64 total = checked_mul(checked_mul(per, std::max(threads, 1), "workspace"), 8, "workspace bytes");
  total = checked_add(total, checked_mul(red, 8, "workspace bytes"), "workspace bytes");
  ConvParams q;
  if (backward && mirrored_problem(p, &q)) {  // forward workspace plus the mirrored weights
    const i64 wq = checked_mul(checked_mul(p.c_out, p.cin_g(), "weight"), KK, "weight");
    total = std::max(total, checked_add(static_cast<i64>(conv_workspace_bytes(q, elem, false, threads)),
                                        checked_mul(wq + 64, 8, "weight bytes"), "workspace"));
  }
  total = std::max(total, static_cast<i64>(winograd_workspace_bytes(p, elem, backward, threads)));
  total = std::max(total, static_cast<i64>(winograd_1d_workspace_bytes(p, elem, threads)));
  if (backward) total = std::max(total, static_cast<i64>(winograd_1d_weight_workspace_bytes(p, elem, threads)));
  return static_cast<std::size_t>(total);
}

template <typename T>
void conv2d_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y, ConvPath path) {
  if (path == ConvPath::automatic) path = conv_choose_path(p);
  if (p.n == 0) return;
  switch (path) {
    case ConvPath::pointwise: forward_gemm<T, true>(p, x, w, bias, y); break;
    case ConvPath::depthwise: depthwise_forward<T>(p, x, w, bias, y); break;
    case ConvPath::winograd: winograd_forward<T>(p, x, w, bias, y); break;
    case ConvPath::winograd_1d: winograd_1d_forward<T>(p, x, w, bias, y); break;
    default: forward_gemm<T, false>(p, x, w, bias, y); break;
  }
}

template <typename T>
void conv2d_backward(const ConvParams& p, const T* dy, const T* x, const T* w, T* dx, T* dw,
                     T* db, ConvPath path) {
  const bool forced = path != ConvPath::automatic;
  if (path == ConvPath::automatic) path = conv_choose_path(p);
  if (db) bias_grad<T>(p, dy, db);
  if (!dx && !dw) return;
  ConvParams q;
  if (path == ConvPath::depthwise) {
    depthwise_backward<T>(p, dy, x, w, dx, dw);
  } else if (path == ConvPath::winograd) {
    // Forced: every gradient through Winograd (grad input through generic only where a
    // pad > 2 rules the mirrored problem out). Automatic: each gradient where Winograd
    // measured faster, the generic lowering otherwise.
    const bool wdx = forced || winograd_input_grad_preferred(p);
    const bool wdw = forced || winograd_weight_grad_preferred(p);
    if (dx && p.n > 0 && !(wdx && winograd_backward_input<T>(p, dy, w, dx)))
      conv2d_backward<T>(p, dy, x, w, dx, nullptr, nullptr, ConvPath::generic);
    if (dw) {
      if (wdw)
        winograd_backward_weight<T>(p, dy, x, dw);
      else
        backward_gemm<T>(p, false, dy, x, w, nullptr, dw);
    }
  } else if (path == ConvPath::winograd_1d) {
    // Grad input: the mirrored problem has the same kernel size and stride 1, so it runs
    // through the same Winograd forward (generic where the mirrored padding would be
    // negative). Grad weight through the Winograd domain where preferred (forced: always).
    const bool wdx = dx && mirrored_problem(p, &q);
    if (wdx) winograd_1d_forward<T>(q, dy, mirrored_weights(p, w), nullptr, dx);
    const bool wdw = dw && p.n > 0 && (forced || winograd_1d_weight_grad_preferred(p, sizeof(T)));
    if (wdw) winograd_1d_backward_weight<T>(p, dy, x, dw);
    if ((dx && !wdx) || (dw && !wdw))
      backward_gemm<T>(p, false, dy, x, w, wdx ? nullptr : dx, wdw ? nullptr : dw);
  } else if (dx && path == ConvPath::generic && input_grad_as_forward(p, &q)) {
    forward_gemm<T, false>(q, dy, mirrored_weights(p, w), nullptr, dx);
    if (dw) backward_gemm<T>(p, false, dy, x, w, nullptr, dw);
  } else {
    backward_gemm<T>(p, path == ConvPath::pointwise, dy, x, w, dx, dw);
  }
}

template void conv2d_forward<float>(const ConvParams&, const float*, const float*, const float*, float*, ConvPath);
template void conv2d_forward<double>(const ConvParams&, const double*, const double*, const double*, double*, ConvPath);
template void conv2d_backward<float>(const ConvParams&, const float*, const float*, const float*, float*, float*, float*, ConvPath);
template void conv2d_backward<double>(const ConvParams&, const double*, const double*, const double*, double*, double*, double*, ConvPath);

}  // namespace pyconv
