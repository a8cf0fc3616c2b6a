// AVX-512 unfolding B packer of the generic forward convolution (this file alone is
// compiled with the AVX-512 flags; reached only when active_isa() is avx512).
//
// Same output as UnfoldB::pack_panels in conv.cpp (a pure copy: the packed values are
// identical), for stride 1 or 2 along W and a panel width of one vector (16 floats / 8
// doubles). Each panel's lanes are split once into segments, one per output row they
// cover; then every unfolded row (ci, kh, kw) of the panel is one vector built from one
// masked load per segment (two and a permute at stride 2): the mask keeps the lanes whose
// input column is inside the image, so padding lanes become zeros and nothing outside the
// valid run is read (AVX-512 masked loads suppress faults on masked-off lanes). This
// replaces the scalar edge and row-spanning copies, which cost about a quarter of a 3x3
// forward (and at stride 2 a scalar strided gather: the 7x7/2 stem forward 3.0 -> 2.8 ms).
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
  static V zload(M m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static V loadu(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  // Lanes 0, 2, 4, ... of the 32 elements lo:hi.
  static V evens(V lo, V hi) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, idx, hi);
  }
  static V blend(M m, V a, V b) { return _mm512_mask_blend_ps(m, a, b); }
};
struct P64 {
  using T = double;
  using V = __m512d;
  using M = __mmask8;
  static constexpr int W = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V mload(V src, M m, const T* p) { return _mm512_mask_loadu_pd(src, m, p); }
  static V zload(M m, const T* p) { return _mm512_maskz_loadu_pd(m, p); }
  static V loadu(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V evens(V lo, V hi) {
    const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm512_permutex2var_pd(lo, idx, hi);
  }
  static V blend(M m, V a, V b) { return _mm512_mask_blend_pd(m, a, b); }
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

// SW: the stride along W (1 or 2). With stride 2, lane L of a segment reads input column
// 2*(ow + L - lane0) + iwk: two masked loads cover the 2*NR elements from the segment's
// first valid input column to its last one (every element between two valid columns is
// inside the row too), and a two-source permute keeps the even ones.
template <class S, int SW>
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
        // A whole panel inside one output row (the common case; every panel but the ragged
        // ones of a 1D convolution): rows whose taps are all inside the input row are one
        // plain load (two and a permute at stride 2) and no mask arithmetic.
        const bool whole = s1 - s0 == 1 && s0->len == NR;
        for (int t = 0; t < nk; ++t, d += NR) {
          if (whole) {
            const i64 ih = s0->ohs + r_ihk[t];
            if (ih >= 0 && ih < H && s0->ow >= r_lo[t] && s0->ow + NR <= r_hi[t]) {
              const T* src = r_xp[t] + s0->img + ih * W + SW * s0->ow + r_iwk[t];
              if (SW == 1)
                S::store(d, S::loadu(src));
              else  // the last lane reads element 2*NR - 2: the final element is not loaded
                S::store(d, S::evens(S::loadu(src), S::zload(static_cast<M>((1u << (NR - 1)) - 1u), src + NR)));
              continue;
            }
          }
          V v = S::zero();
          for (const Seg* s = s0; s != s1; ++s) {
            const i64 ih = s->ohs + r_ihk[t];
            if (ih < 0 || ih >= H) continue;
            const i64 a = lmax(r_lo[t], s->ow), b = lmin(r_hi[t], s->ow + s->len);
            if (a >= b) continue;
            const i64 l0 = s->lane0 + a - s->ow;  // first valid lane
            const M m = static_cast<M>(((1u << (b - a)) - 1u) << l0);
            // Lane L reads input column SW*(s->ow + L - s->lane0) + iwk; only the masked
            // lanes' addresses (all inside the row) are accessed. The base may point
            // before the row, so it is formed without pointer arithmetic.
            const std::uintptr_t base =
                reinterpret_cast<std::uintptr_t>(r_xp[t] + s->img + ih * W) +
                static_cast<std::uintptr_t>((SW * (s->ow - s->lane0) + r_iwk[t]) * static_cast<i64>(sizeof(T)));
            if (SW == 1) {
              v = S::mload(v, m, reinterpret_cast<const T*>(base));
            } else {
              // elements 2*l0 .. 2*(l0 + b - a - 1) of the 2*NR from base (at most 2*NR - 1)
              const std::uint32_t em = ((std::uint32_t(1) << (2 * (b - a) - 1)) - 1u) << (2 * l0);
              const V lo = S::zload(static_cast<M>(em & ((1u << NR) - 1u)), reinterpret_cast<const T*>(base));
              const V hi = S::zload(static_cast<M>(em >> NR),
                                    reinterpret_cast<const T*>(base + NR * sizeof(T)));
              v = S::blend(m, v, S::evens(lo, hi));
            }
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


// ---------------------------------------------------------------- depthwise planes
//
// Stride 1 in both dimensions, no padded copy: every vector of output columns reads its
// taps with masked loads whose masks keep the lanes inside the source row (padding lanes
// load as zeros, nothing outside the row is touched) and inside the output row. The
// masks depend only on the column position, so they are computed once per call for a
// strip of columns and reused down the plane.

using avx512::DwGeom;
using avx512::kDwMaxKw;

struct DwF {
  using T = float;
  using V = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static V set1(T a) { return _mm512_set1_ps(a); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(M m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(T* p, M m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mfma(V a, V b, V c, M m) { return _mm512_mask3_fmadd_ps(a, b, c, m); }  // c where m is off
  // Adds the 16 float lanes of a into two 8-lane double sums.
  static void flush(V a, __m512d* d) {
    d[0] = _mm512_add_pd(d[0], _mm512_cvtps_pd(_mm512_castps512_ps256(a)));
    d[1] = _mm512_add_pd(d[1], _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1)));
  }
};
struct DwD {
  using T = double;
  using V = __m512d;
  using M = __mmask8;
  static constexpr int L = 8;
  static V set1(T a) { return _mm512_set1_pd(a); }
  static V zero() { return _mm512_setzero_pd(); }
  static V load(M m, const T* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(T* p, M m, V v) { _mm512_mask_storeu_pd(p, m, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V mfma(V a, V b, V c, M m) { return _mm512_mask3_fmadd_pd(a, b, c, m); }
  static void flush(V a, __m512d* d) { d[0] = _mm512_add_pd(d[0], a); }
};
// Float, 8 lanes (AVX-512VL on ymm): the ragged end of a row when at most 8 columns are
// left, which a 512-bit vector would do half empty at full cost.
struct DwF8 {
  using T = float;
  using V = __m256;
  using M = __mmask8;
  static constexpr int L = 8;
  static V set1(T a) { return _mm256_set1_ps(a); }
  static V load(M m, const T* p) { return _mm256_maskz_loadu_ps(m, p); }
  static void store(T* p, M m, V v) { _mm256_mask_storeu_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
template <typename T> struct DwTraits;
template <> struct DwTraits<float> { using type = DwF; };
template <> struct DwTraits<double> { using type = DwD; };

// Lanes [lo, hi) of an L-lane mask (clamped to [0, L]).
template <class S>
inline typename S::M lane_bits(i64 lo, i64 hi) {
  lo = lmax(lo, 0);
  hi = lmin(hi, S::L);
  if (lo >= hi) return 0;
  return static_cast<typename S::M>(((1u << (hi - lo)) - 1u) << lo);
}
// base + off elements, formed without pointer arithmetic (off may leave the row; only
// the lanes a mask keeps, which are inside it, are accessed).
template <typename T>
inline const T* at(const T* base, i64 off) {
  return reinterpret_cast<const T*>(reinterpret_cast<std::uintptr_t>(base) +
                                    static_cast<std::uintptr_t>(off * static_cast<i64>(sizeof(T))));
}
// Mask of output vector starting at column c (lanes with c + i < Wo) for tap column
// offset off (= kw*dw - ow_off): lanes with 0 <= c + i + off < Ws.
template <class S>
inline typename S::M tap_mask(i64 c, i64 off, i64 Wo, i64 Ws) {
  return lane_bits<S>(lmax(0, -off - c), lmin(Wo - c, Ws - off - c));
}

constexpr int kDwR = 8;          // output rows per register block (8 x 2 measured best
                                 // for 3x3 56px: 0.22 ms against 0.27 for 4 x 4)
constexpr int kDwNC = 2;         // vectors per row per register block
constexpr i64 kDwStripVecs = 64; // output vectors per column strip (masks precomputed)

// R x NC register block of outputs, 3x3 taps, dilation 1: each source row is loaded once
// per tap column and feeds every output row of the block it belongs to.
template <class S, int R, int NC>
inline void corr_block_k3(const DwGeom& g, const typename S::T* src, const typename S::V* wv,
                          const typename S::M* msk, const typename S::M* om, i64 oh0, i64 c0,
                          typename S::V init, bool accumulate, typename S::T* out) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, KH = 3, KW = 3;
  const i64 Wo = g.Wo, Ws = g.Ws, Hs = g.Hs, ih0 = oh0 - g.oh_off, cs = c0 - g.ow_off;
  T* o = out + oh0 * Wo + c0;
  V w[KH * KW];
#pragma GCC unroll 9
  for (int t = 0; t < KH * KW; ++t) w[t] = wv[t];
  M mk[NC * KW], mo[NC];
#pragma GCC unroll 12
  for (int i = 0; i < NC * KW; ++i) mk[i] = msk[i];
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) mo[c] = om[c];
  V acc[R][NC];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = accumulate ? S::load(mo[c], o + r * Wo + c * L) : init;
#pragma GCC unroll 16
  for (int ii = 0; ii < R + KH - 1; ++ii) {
    const i64 ih = ih0 + ii;
    if (ih < 0 || ih >= Hs) continue;
    const T* row = src + ih * Ws;
#pragma GCC unroll 3
    for (int kw = 0; kw < KW; ++kw) {
      V v[NC];
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) v[c] = S::load(mk[c * KW + kw], at(row, cs + c * L + kw));
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int kh = ii - r;
        if (kh < 0 || kh >= KH) continue;
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) acc[r][c] = S::fma(w[kh * KW + kw], v[c], acc[r][c]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) S::store(o + r * Wo + c * L, mo[c], acc[r][c]);
}

// The same block for a 3x3 dilation-1 kernel centred on its output column (ow_off == 1,
// e.g. padding 1): each source row is loaded once as NC+2 vectors aligned with the
// output vectors, and the taps left and right of centre are lane shifts of them
// (valignd) instead of more (mostly cache-line-splitting) loads.
template <class S>
inline typename S::V shift_in_left(typename S::V cur, typename S::V prev);  // [prev[L-1], cur[0..L-2]]
template <class S>
inline typename S::V shift_in_right(typename S::V cur, typename S::V next);  // [cur[1..L-1], next[0]]
template <>
inline __m512 shift_in_left<DwF>(__m512 cur, __m512 prev) {
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(cur), _mm512_castps_si512(prev), 15));
}
template <>
inline __m512 shift_in_right<DwF>(__m512 cur, __m512 next) {
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(next), _mm512_castps_si512(cur), 1));
}
template <>
inline __m512d shift_in_left<DwD>(__m512d cur, __m512d prev) {
  return _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(cur), _mm512_castpd_si512(prev), 7));
}
template <>
inline __m512d shift_in_right<DwD>(__m512d cur, __m512d next) {
  return _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(next), _mm512_castpd_si512(cur), 1));
}

template <>
inline __m256 shift_in_left<DwF8>(__m256 cur, __m256 prev) {
  return _mm256_castsi256_ps(_mm256_alignr_epi32(_mm256_castps_si256(cur), _mm256_castps_si256(prev), 7));
}
template <>
inline __m256 shift_in_right<DwF8>(__m256 cur, __m256 next) {
  return _mm256_castsi256_ps(_mm256_alignr_epi32(_mm256_castps_si256(next), _mm256_castps_si256(cur), 1));
}

template <class S, int R, int NC>
inline void corr_block_k3c(const DwGeom& g, const typename S::T* src, const typename S::V* wv,
                           const typename S::M* om, i64 oh0, i64 c0, typename S::V init, bool accumulate,
                           typename S::T* out) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, KH = 3, KW = 3;
  const i64 Wo = g.Wo, Ws = g.Ws, Hs = g.Hs, ih0 = oh0 - g.oh_off;
  T* o = out + oh0 * Wo + c0;
  V w[KH * KW];
#pragma GCC unroll 9
  for (int t = 0; t < KH * KW; ++t) w[t] = wv[t];
  // source vectors -1 .. NC, aligned with the output vectors: lanes inside the row
  M mb[NC + 2], mo[NC];
#pragma GCC unroll 10
  for (int c = 0; c < NC + 2; ++c) {
    const i64 col = c0 + (c - 1) * L;
    mb[c] = lane_bits<S>(-col, Ws - col);
  }
  mb[0] = static_cast<M>(mb[0] & (M(1) << (L - 1)));  // only the last lane of vector -1 is used
  mb[NC + 1] = static_cast<M>(mb[NC + 1] & M(1));      // only the first lane of vector NC
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) mo[c] = om[c];
  V acc[R][NC];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[r][c] = accumulate ? S::load(mo[c], o + r * Wo + c * L) : init;
#pragma GCC unroll 16
  for (int ii = 0; ii < R + KH - 1; ++ii) {
    const i64 ih = ih0 + ii;
    if (ih < 0 || ih >= Hs) continue;
    const T* row = src + ih * Ws;
    V b[NC + 2];
#pragma GCC unroll 10
    for (int c = 0; c < NC + 2; ++c) b[c] = S::load(mb[c], at(row, c0 + (c - 1) * L));
#pragma GCC unroll 3
    for (int kw = 0; kw < KW; ++kw) {
      V v[NC];
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
        v[c] = kw == 1 ? b[c + 1] : kw == 0 ? shift_in_left<S>(b[c + 1], b[c]) : shift_in_right<S>(b[c + 1], b[c + 2]);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const int kh = ii - r;
        if (kh < 0 || kh >= KH) continue;
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) acc[r][c] = S::fma(w[kh * KW + kw], v[c], acc[r][c]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) S::store(o + r * Wo + c * L, mo[c], acc[r][c]);
}

// Any kernel size and dilation: taps in (kh, kw) order, one masked load per tap.
template <class S, int R, int NC>
inline void corr_block_any(const DwGeom& g, const typename S::T* src, const typename S::T* wk,
                           const typename S::M* msk, const typename S::M* om, i64 oh0, i64 c0,
                           typename S::V init, bool accumulate, typename S::T* out) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int L = S::L;
  const i64 kW = g.kW;
  V acc[R][NC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c)
      acc[r][c] = accumulate ? S::load(om[c], out + (oh0 + r) * g.Wo + c0 + c * L) : init;
  for (int r = 0; r < R; ++r)
    for (i64 kh = 0; kh < g.kH; ++kh) {
      const i64 ih = oh0 + r + kh * g.dh - g.oh_off;
      if (ih < 0 || ih >= g.Hs) continue;
      const T* row = src + ih * g.Ws;
      for (i64 kw = 0; kw < kW; ++kw) {
        const V w = S::set1(wk[kh * kW + kw]);
        const i64 off = c0 + kw * g.dw - g.ow_off;
        for (int c = 0; c < NC; ++c) acc[r][c] = S::fma(w, S::load(msk[c * kW + kw], at(row, off + c * L)), acc[r][c]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) S::store(out + (oh0 + r) * g.Wo + c0 + c * L, om[c], acc[r][c]);
}

template <class S, int R, int NC>
inline void corr_block(bool k3, const DwGeom& g, const typename S::T* src, const typename S::T* wk,
                       const typename S::V* wv, const typename S::M* msk, const typename S::M* om, i64 oh0,
                       i64 c0, typename S::V init, bool accumulate, typename S::T* out) {
  if (k3 && g.ow_off == 1)
    corr_block_k3c<S, R, NC>(g, src, wv, om, oh0, c0, init, accumulate, out);
  else if (k3)
    corr_block_k3<S, R, NC>(g, src, wv, msk, om, oh0, c0, init, accumulate, out);
  else
    corr_block_any<S, R, NC>(g, src, wk, msk, om, oh0, c0, init, accumulate, out);
}

template <class S, int R>
inline void corr_block_nc(int nc, bool k3, const DwGeom& g, const typename S::T* src, const typename S::T* wk,
                          const typename S::V* wv, const typename S::M* msk, const typename S::M* om, i64 oh0,
                          i64 c0, typename S::V init, bool accumulate, typename S::T* out) {
  switch (nc) {
    case 4: corr_block<S, R, 4>(k3, g, src, wk, wv, msk, om, oh0, c0, init, accumulate, out); break;
    case 3: corr_block<S, R, 3>(k3, g, src, wk, wv, msk, om, oh0, c0, init, accumulate, out); break;
    case 2: corr_block<S, R, 2>(k3, g, src, wk, wv, msk, om, oh0, c0, init, accumulate, out); break;
    default: corr_block<S, R, 1>(k3, g, src, wk, wv, msk, om, oh0, c0, init, accumulate, out); break;
  }
}

// Rows r <= R of a block: the instantiation for exactly r rows.
template <class S, int R>
inline void corr_block_r(int r, int nc, bool k3, const DwGeom& g, const typename S::T* src, const typename S::T* wk,
                         const typename S::V* wv, const typename S::M* msk, const typename S::M* om, i64 oh0,
                         i64 c0, typename S::V init, bool accumulate, typename S::T* out) {
  if constexpr (R > 1) {
    if (r < R) {
      corr_block_r<S, R - 1>(r, nc, k3, g, src, wk, wv, msk, om, oh0, c0, init, accumulate, out);
      return;
    }
  }
  corr_block_nc<S, R>(nc, k3, g, src, wk, wv, msk, om, oh0, c0, init, accumulate, out);
}

// The centred 3x3 block on the 8-lane tail of a float row, r <= R rows.
template <int R>
inline void tail_block_r(int r, const DwGeom& g, const float* src, const __m256* wv, const __mmask8* om,
                         i64 oh0, i64 c0, __m256 init, bool accumulate, float* out) {
  if constexpr (R > 1) {
    if (r < R) {
      tail_block_r<R - 1>(r, g, src, wv, om, oh0, c0, init, accumulate, out);
      return;
    }
  }
  corr_block_k3c<DwF8, R, 1>(g, src, wv, om, oh0, c0, init, accumulate, out);
}

template <class S>
void corr_plane(const DwGeom& g, const typename S::T* src, const typename S::T* wk, typename S::T init,
                bool accumulate, typename S::T* out) {
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L;
  const bool k3 = g.kH == 3 && g.kW == 3 && g.dh == 1 && g.dw == 1;
  V wv[9];
  if (k3)
    for (int t = 0; t < 9; ++t) wv[t] = S::set1(wk[t]);
  const V vi = S::set1(init);
  // float, centred 3x3, at most 8 columns past the last whole vector: those go through
  // the 8-lane block (56 px: 3 whole vectors and 8 columns, an eighth of the work)
  const bool half = S::L == 16 && k3 && g.ow_off == 1 && g.Wo % L > 0 && g.Wo % L <= L / 2;
  __m256 wh[9], vh = _mm256_setzero_ps();
  __mmask8 omh = 0;
  if constexpr (S::L == 16) {
    if (half) {
      for (int t = 0; t < 9; ++t) wh[t] = _mm256_set1_ps(static_cast<float>(wk[t]));
      vh = _mm256_set1_ps(static_cast<float>(init));
      omh = lane_bits<DwF8>(0, g.Wo % L);
    }
  }
  const i64 kW = g.kW, nvec = half ? g.Wo / L : (g.Wo + L - 1) / L;
  if (nvec == 0 && half) {
    for (i64 oh0 = 0; oh0 < g.Ho; oh0 += kDwR)
      if constexpr (S::L == 16)
        tail_block_r<kDwR>(static_cast<int>(lmin(kDwR, g.Ho - oh0)), g, src, wh, &omh, oh0, 0, vh, accumulate, out);
    return;
  }
  M om[kDwStripVecs];
  M msk[kDwStripVecs * kDwMaxKw];
  for (i64 v0 = 0; v0 < nvec; v0 += kDwStripVecs) {  // column strips
    const i64 nv = lmin(kDwStripVecs, nvec - v0);
    for (i64 v = 0; v < nv; ++v) {
      const i64 c = (v0 + v) * L;
      om[v] = lane_bits<S>(0, g.Wo - c);
      for (i64 kw = 0; kw < kW; ++kw) msk[v * kW + kw] = tap_mask<S>(c, kw * g.dw - g.ow_off, g.Wo, g.Ws);
    }
    for (i64 oh0 = 0; oh0 < g.Ho; oh0 += kDwR) {
      const int r = static_cast<int>(lmin(kDwR, g.Ho - oh0));
      for (i64 v = 0; v < nv; v += kDwNC) {
        const int nc = static_cast<int>(lmin(kDwNC, nv - v));
        const M* mk = msk + v * kW;
        const M* o = om + v;
        const i64 c0 = (v0 + v) * L;
        corr_block_r<S, kDwR>(r, nc, k3, g, src, wk, wv, mk, o, oh0, c0, vi, accumulate, out);
      }
      if constexpr (S::L == 16)
        if (half && v0 + nv == nvec) tail_block_r<kDwR>(r, g, src, wh, &omh, oh0, nvec * L, vh, accumulate, out);
    }
  }
}

// Weight gradient of one plane for NT consecutive taps t0 .. t0+nt-1 (nt <= NT; the
// unused slots repeat tap t0 and are discarded). KH/KW > 0: the whole 3x3 kernel at once,
// each x row loaded once per tap column and used by every dy row it meets.
// Float products are summed per lane in float over at most kDwFlush of them, then added
// into double sums; the order depends only on the geometry.
constexpr i64 kDwFlush = 64;

template <class S>
inline void reduce_into(const __m512d* d, double* out) {
  __m512d s = d[0];
  if (S::L == 16) s = _mm512_add_pd(s, d[1]);
  *out += _mm512_reduce_add_pd(s);
}

template <class S>
void weight_plane_k3(const DwGeom& g, const typename S::T* dy, const typename S::T* x, double* acc) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, KH = 3, KW = 3, KK = 9;
  const i64 nvec = (g.Wo + L - 1) / L;
  __m512d dacc[KK][2];
  for (int t = 0; t < KK; ++t) dacc[t][0] = dacc[t][1] = _mm512_setzero_pd();
  M om[kDwStripVecs], xm[kDwStripVecs * KW], xb[kDwStripVecs + 2];
  // Centred taps (ow_off 1, dilation 1): interior rows load each x row once as vectors
  // aligned with the output ones (xb: lanes inside the row; vector -1 keeps only its
  // last lane, vector nv its first) and shift in the side taps; the multiply-adds are
  // masked to the output lanes, so x beyond the output row never enters a sum.
  const bool centred = g.ow_off == 1 && g.dw == 1;
  for (i64 v0 = 0; v0 < nvec; v0 += kDwStripVecs) {
    const i64 nv = lmin(kDwStripVecs, nvec - v0);
    for (i64 v = 0; v < nv; ++v) {
      const i64 c = (v0 + v) * L;
      om[v] = lane_bits<S>(0, g.Wo - c);
      for (int kw = 0; kw < KW; ++kw) xm[v * KW + kw] = tap_mask<S>(c, kw * g.dw - g.ow_off, g.Wo, g.Ws);
    }
    for (i64 v = -1; v <= nv; ++v) {
      const i64 c = (v0 + v) * L;
      xb[v + 1] = lane_bits<S>(-c, g.Ws - c);
    }
    xb[0] = static_cast<M>(xb[0] & (M(1) << (L - 1)));
    xb[nv + 1] = static_cast<M>(xb[nv + 1] & M(1));
    const i64 flush_rows = lmax(1, kDwFlush / nv);
    V a[KK];
    for (int t = 0; t < KK; ++t) a[t] = S::zero();
    i64 rows = 0;
    const i64 Hs = g.Hs, Ho = g.Ho, Wo = g.Wo, Ws = g.Ws, dh = g.dh, oh_off = g.oh_off;
    i64 xo[KW];
#pragma GCC unroll 3
    for (int kw = 0; kw < KW; ++kw) xo[kw] = v0 * L + kw * g.dw - g.ow_off;
    for (i64 ih = 0; ih < Hs; ++ih) {
      bool ok[KH];
      const T* dr[KH];
      bool any = false;
#pragma GCC unroll 3
      for (int kh = 0; kh < KH; ++kh) {
        const i64 oh = ih + oh_off - kh * dh;
        ok[kh] = oh >= 0 && oh < Ho;
        dr[kh] = (ok[kh] ? dy + oh * Wo : dy) + v0 * L;
        any = any || ok[kh];
      }
      if (!any) continue;
      const T* xr = x + ih * Ws;
      if (centred && ok[0] && ok[1] && ok[2]) {
        const T* xc = xr + v0 * L;
        V bp = S::load(xb[0], at(xc, -L)), bc = S::load(xb[1], xc);
        for (i64 v = 0; v < nv; ++v) {
          const i64 c = v * L;
          const V bn = S::load(xb[v + 2], at(xc, c + L));
          const V xv[KW] = {shift_in_left<S>(bc, bp), bc, shift_in_right<S>(bc, bn)};
          const M m = om[v];
#pragma GCC unroll 3
          for (int kh = 0; kh < KH; ++kh) {
            const V gv = S::load(m, dr[kh] + c);
#pragma GCC unroll 3
            for (int kw = 0; kw < KW; ++kw) a[kh * KW + kw] = S::mfma(gv, xv[kw], a[kh * KW + kw], m);
          }
          bp = bc;
          bc = bn;
        }
      } else if (ok[0] && ok[1] && ok[2]) {  // interior rows: no row tests in the loop
        for (i64 v = 0; v < nv; ++v) {
          const i64 c = v * L;
          V xv[KW];
#pragma GCC unroll 3
          for (int kw = 0; kw < KW; ++kw) xv[kw] = S::load(xm[v * KW + kw], at(xr, xo[kw] + c));
          const M m = om[v];
#pragma GCC unroll 3
          for (int kh = 0; kh < KH; ++kh) {
            const V gv = S::load(m, dr[kh] + c);
#pragma GCC unroll 3
            for (int kw = 0; kw < KW; ++kw) a[kh * KW + kw] = S::fma(gv, xv[kw], a[kh * KW + kw]);
          }
        }
      } else {
        for (i64 v = 0; v < nv; ++v) {
          const i64 c = v * L;
          V xv[KW];
#pragma GCC unroll 3
          for (int kw = 0; kw < KW; ++kw) xv[kw] = S::load(xm[v * KW + kw], at(xr, xo[kw] + c));
#pragma GCC unroll 3
          for (int kh = 0; kh < KH; ++kh) {
            if (!ok[kh]) continue;
            const V gv = S::load(om[v], dr[kh] + c);
#pragma GCC unroll 3
            for (int kw = 0; kw < KW; ++kw) a[kh * KW + kw] = S::fma(gv, xv[kw], a[kh * KW + kw]);
          }
        }
      }
      if (++rows % flush_rows == 0) {
        for (int t = 0; t < KK; ++t) {
          S::flush(a[t], dacc[t]);
          a[t] = S::zero();
        }
      }
    }
    for (int t = 0; t < KK; ++t) S::flush(a[t], dacc[t]);
  }
  for (int t = 0; t < KK; ++t) reduce_into<S>(dacc[t], acc + t);
}

constexpr int kDwTaps = 8;

template <class S>
void weight_plane_any(const DwGeom& g, const typename S::T* dy, const typename S::T* x, double* acc) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, NT = kDwTaps;
  const i64 KK = g.kH * g.kW, nvec = (g.Wo + L - 1) / L;
  M om[kDwStripVecs], xm[kDwStripVecs * NT];
  for (i64 t0 = 0; t0 < KK; t0 += NT) {
    const int nt = static_cast<int>(lmin(NT, KK - t0));
    i64 th[NT], toff[NT];
    for (int j = 0; j < NT; ++j) {
      const i64 t = t0 + (j < nt ? j : 0);
      th[j] = (t / g.kW) * g.dh - g.oh_off;
      toff[j] = (t % g.kW) * g.dw - g.ow_off;
    }
    __m512d dacc[NT][2];
    for (int j = 0; j < NT; ++j) dacc[j][0] = dacc[j][1] = _mm512_setzero_pd();
    for (i64 v0 = 0; v0 < nvec; v0 += kDwStripVecs) {
      const i64 nv = lmin(kDwStripVecs, nvec - v0);
      for (i64 v = 0; v < nv; ++v) {
        const i64 c = (v0 + v) * L;
        om[v] = lane_bits<S>(0, g.Wo - c);
        for (int j = 0; j < NT; ++j) xm[v * NT + j] = tap_mask<S>(c, toff[j], g.Wo, g.Ws);
      }
      const i64 flush_rows = lmax(1, kDwFlush / nv);
      V a[NT];
      for (int j = 0; j < NT; ++j) a[j] = S::zero();
      for (i64 oh = 0; oh < g.Ho; ++oh) {
        const T* dr = dy + oh * g.Wo;
        const T* xr[NT];
        M rm[NT];  // all-off for taps whose x row is outside the plane
        for (int j = 0; j < NT; ++j) {
          const i64 ih = oh + th[j];
          const bool in = ih >= 0 && ih < g.Hs;
          xr[j] = in ? x + ih * g.Ws : x;
          rm[j] = in ? static_cast<M>(~M(0)) : M(0);
        }
        for (i64 v = 0; v < nv; ++v) {
          const i64 c = (v0 + v) * L;
          const V gv = S::load(om[v], dr + c);
          for (int j = 0; j < NT; ++j)
            a[j] = S::fma(gv, S::load(static_cast<M>(xm[v * NT + j] & rm[j]), at(xr[j], c + toff[j])), a[j]);
        }
        if ((oh + 1) % flush_rows == 0) {
          for (int j = 0; j < NT; ++j) {
            S::flush(a[j], dacc[j]);
            a[j] = S::zero();
          }
        }
      }
      for (int j = 0; j < NT; ++j) S::flush(a[j], dacc[j]);
    }
    for (int j = 0; j < nt; ++j) reduce_into<S>(dacc[j], acc + t0 + j);
  }
}

}  // namespace

namespace avx512 {
void unfold_t_pack_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                       i64 cbase, float* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  pack_t_f32(p, tr_lo, tr_hi, x, cbase, dst, k0, kc, j0, nc);
}
void add_bias_f32(float* y, i64 n, float b) {
  const __m512 bv = _mm512_set1_ps(b);
  i64 j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(y + j, _mm512_add_ps(_mm512_loadu_ps(y + j), bv));
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1u);
    _mm512_mask_storeu_ps(y + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + j), bv));
  }
}
void unfold_pack_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* x,
                     i64 jbase, i64 img, float* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  if (p.w.stride == 2)
    pack<P32, 2>(p, tr_lo, tr_hi, x, jbase, img, dst, k0, kc, j0, nc);
  else
    pack<P32, 1>(p, tr_lo, tr_hi, x, jbase, img, dst, k0, kc, j0, nc);
}
void unfold_pack_f64(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const double* x,
                     i64 jbase, i64 img, double* dst, i64 k0, i64 kc, i64 j0, i64 nc) {
  if (p.w.stride == 2)
    pack<P64, 2>(p, tr_lo, tr_hi, x, jbase, img, dst, k0, kc, j0, nc);
  else
    pack<P64, 1>(p, tr_lo, tr_hi, x, jbase, img, dst, k0, kc, j0, nc);
}

template <typename T>
void dw_corr_plane(const DwGeom& g, const T* src, const T* wk, T init, bool accumulate, T* out) {
  corr_plane<typename DwTraits<T>::type>(g, src, wk, init, accumulate, out);
}
template <typename T>
void dw_weight_plane(const DwGeom& g, const T* dy, const T* x, double* acc) {
  using S = typename DwTraits<T>::type;
  if (g.kH == 3 && g.kW == 3)
    weight_plane_k3<S>(g, dy, x, acc);
  else
    weight_plane_any<S>(g, dy, x, acc);
}
template void dw_corr_plane<float>(const DwGeom&, const float*, const float*, float, bool, float*);
template void dw_corr_plane<double>(const DwGeom&, const double*, const double*, double, bool, double*);
template void dw_weight_plane<float>(const DwGeom&, const float*, const float*, double*);
template void dw_weight_plane<double>(const DwGeom&, const double*, const double*, double*);
}  // namespace avx512

}  // namespace pyconv
