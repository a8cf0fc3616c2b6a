// AVX-512 unfolding B packer of the generic forward convolution (this file alone is
// compiled with the AVX-512 flags; reached only when active_isa() is avx512).
//
// Same output as UnfoldB::pack_panels in conv.cpp (a pure copy: the packed values are
// identical), for stride 1 along W and a panel width of one vector (16 floats / 8
// doubles). Each panel's lanes are split once into segments, one per output row they
// cover; then every unfolded row (ci, kh, kw) of the panel is one vector built from one
// masked load per segment: the mask keeps the lanes whose input column is inside the
// image, so padding lanes become zeros and nothing outside the valid run is read
// (AVX-512 masked loads suppress faults on masked-off lanes). This replaces the scalar
// edge and row-spanning copies, which cost about a quarter of a 3x3 forward.
#include <immintrin.h>

#include <cstdint>

#include "conv.h"

namespace pyconv {
namespace {  // internal linkage: never merged with other translation units' code

struct P32 {
  using T = float;
  using V = __m512;
  using M = __mmask16;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V mload(V src, M m, const T* p) { return _mm512_mask_loadu_ps(src, m, p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
};
struct P64 {
  using T = double;
  using V = __m512d;
  using M = __mmask8;
  static constexpr int W = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V mload(V src, M m, const T* p) { return _mm512_mask_loadu_pd(src, m, p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
};

inline i64 lmin(i64 a, i64 b) { return a < b ? a : b; }
inline i64 lmax(i64 a, i64 b) { return a < b ? b : a; }

// One run of a panel's lanes inside a single output row.
struct Seg {
  i64 lane0;  // first lane
  i64 len;    // lanes
  i64 ow;     // output column of lane0
  i64 ohs;    // oh * stride_h
  i64 img;    // element offset of the image
};

constexpr int kGroup = 32;  // panels whose segments are prepared together
constexpr int kRows = 8;    // unfolded rows written per panel visit

template <class S>
void pack(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const typename S::T* x,
          i64 jbase, i64 img, typename S::T* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int NR = S::W;
  const i64 kH = p.h.kernel, kW = p.w.kernel, KK = kH * kW, Wo = p.w.out, Np = p.h.out * Wo;
  const i64 W = p.w.in, H = p.h.in, plane = H * W;
  const i64 npanels = (nc + NR - 1) / NR;
  Seg segs[kGroup * NR];
  int sbeg[kGroup + 1];
  for (i64 pg = 0; pg < npanels; pg += kGroup) {
    const int ng = static_cast<int>(lmin(kGroup, npanels - pg));
    int ns = 0;
    for (int q = 0; q < ng; ++q) {
      sbeg[q] = ns;
      const i64 pb = (pg + q) * NR, n = lmin(NR, nc - pb);
      i64 jt = jbase + j0 + pb, at = 0;
      while (at < n) {
        const i64 j = jt % Np, oh = j / Wo, ow = j % Wo, len = lmin(n - at, Wo - ow);
        segs[ns++] = Seg{at, len, ow, oh * p.h.stride, (jt / Np) * img};
        at += len;
        jt += len;
      }
    }
    sbeg[ng] = ns;
    i64 ci = k0 / KK, r = k0 % KK, kh = r / kW, kw = r % kW;
    for (i64 kb = 0; kb < kc; kb += kRows) {
      const int nk = static_cast<int>(lmin(kRows, kc - kb));
      const T* r_xp[kRows];
      i64 r_ihk[kRows], r_iwk[kRows], r_lo[kRows], r_hi[kRows];
      for (int t = 0; t < nk; ++t) {
        r_xp[t] = x + ci * plane;
        r_ihk[t] = kh * p.h.dilation - p.h.pad_lo;
        r_iwk[t] = kw * p.w.dilation - p.w.pad_lo;
        r_lo[t] = tr_lo[kw];
        r_hi[t] = tr_hi[kw];
        if (++kw == kW) {
          kw = 0;
          if (++kh == kH) { kh = 0; ++ci; }
        }
      }
      for (int q = 0; q < ng; ++q) {
        T* d = dst + (pg + q) * kc * NR + kb * NR;
        const Seg* s0 = segs + sbeg[q];
        const Seg* s1 = segs + sbeg[q + 1];
        for (int t = 0; t < nk; ++t, d += NR) {
          V v = S::zero();
          for (const Seg* s = s0; s != s1; ++s) {
            const i64 ih = s->ohs + r_ihk[t];
            if (ih < 0 || ih >= H) continue;
            const i64 a = lmax(r_lo[t], s->ow), b = lmin(r_hi[t], s->ow + s->len);
            if (a >= b) continue;
            const M m = static_cast<M>(((1u << (b - a)) - 1u) << (s->lane0 + a - s->ow));
            // Lane L reads input column (s->ow + L - s->lane0) + iwk; only the masked
            // lanes' addresses (all inside the row) are accessed. The base may point
            // before the row, so it is formed without pointer arithmetic.
            const std::uintptr_t base =
                reinterpret_cast<std::uintptr_t>(r_xp[t] + s->img + ih * W) +
                static_cast<std::uintptr_t>((s->ow - s->lane0 + r_iwk[t]) * static_cast<i64>(sizeof(T)));
            v = S::mload(v, m, reinterpret_cast<const T*>(base));
          }
          S::store(d, v);
        }
      }
    }
  }
}

// In-register 16x16 transpose: r[i] lane j -> r[j] lane i.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i+3
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[12 + j] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

// Grad-weight packer (UnfoldTB in conv.cpp): B(k, j) with k an output pixel and j an
// unfolded (ci, kh, kw) column. Per panel of 16 columns and chunk of 16 pixels, each
// column's 16 pixels are one vector (masked loads per output-row segment, as above),
// then the 16x16 block is transposed in registers into 16 panel rows.
void pack_t_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                i64 cbase, float* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  constexpr int NR = 16;
  const i64 kW = p.w.kernel, KK = p.h.kernel * kW, Wo = p.w.out;
  const i64 W = p.w.in, H = p.h.in, plane = H * W;
  for (i64 pb = 0; pb < nc; pb += NR) {
    float* panel = dst + (pb / NR) * kc * NR;
    const int ncols = static_cast<int>(lmin(NR, nc - pb));
    const float* c_xp[NR];
    i64 c_ihk[NR], c_iwk[NR], c_lo[NR], c_hi[NR];
    for (int c = 0; c < ncols; ++c) {
      const i64 kf = cbase + j0 + pb + c, ci = kf / KK, r = kf % KK, kh = r / kW, kw = r % kW;
      c_xp[c] = x + ci * plane;
      c_ihk[c] = kh * p.h.dilation - p.h.pad_lo;
      c_iwk[c] = kw * p.w.dilation - p.w.pad_lo;
      c_lo[c] = tr_lo[kw];
      c_hi[c] = tr_hi[kw];
    }
    for (i64 kb = 0; kb < kc; kb += NR) {
      const i64 n = lmin(NR, kc - kb);
      Seg segs[NR];
      int ns = 0;
      i64 k = k0 + kb, at = 0;
      while (at < n) {
        const i64 oh = k / Wo, ow = k % Wo, len = lmin(n - at, Wo - ow);
        segs[ns++] = Seg{at, len, ow, oh * p.h.stride, 0};
        at += len;
        k += len;
      }
      __m512 v[NR];
      for (int c = 0; c < NR; ++c) {
        v[c] = _mm512_setzero_ps();
        if (c >= ncols) continue;
        for (int si = 0; si < ns; ++si) {
          const Seg& s = segs[si];
          const i64 ih = s.ohs + c_ihk[c];
          if (ih < 0 || ih >= H) continue;
          const i64 a = lmax(c_lo[c], s.ow), b = lmin(c_hi[c], s.ow + s.len);
          if (a >= b) continue;
          const __mmask16 m = static_cast<__mmask16>(((1u << (b - a)) - 1u) << (s.lane0 + a - s.ow));
          const std::uintptr_t base =
              reinterpret_cast<std::uintptr_t>(c_xp[c] + ih * W) +
              static_cast<std::uintptr_t>((s.ow - s.lane0 + c_iwk[c]) * static_cast<i64>(sizeof(float)));
          v[c] = _mm512_mask_loadu_ps(v[c], m, reinterpret_cast<const float*>(base));
        }
      }
      transpose16(v);
      float* d = panel + kb * NR;
      for (i64 i = 0; i < n; ++i) _mm512_storeu_ps(d + i * NR, v[i]);
    }
  }
}

}  // namespace

namespace avx512 {
void unfold_t_pack_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                       i64 cbase, float* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  pack_t_f32(p, tr_lo, tr_hi, x, cbase, dst, k0, kc, j0, nc);
}
void unfold_pack_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                     i64 jbase, i64 img, float* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  pack<P32>(p, tr_lo, tr_hi, x, jbase, img, dst, k0, kc, j0, nc);
}
void unfold_pack_f64(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const double* x,
                     i64 jbase, i64 img, double* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  pack<P64>(p, tr_lo, tr_hi, x, jbase, img, dst, k0, kc, j0, nc);
}
}  // namespace avx512

}  // namespace pyconv
