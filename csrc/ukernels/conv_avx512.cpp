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

#include <cstring>

#include <cstdint>

#include "conv.h"
#include "transpose_avx512.h"

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

using avx512_util::transpose16;

// Grad-weight packer (UnfoldTB in conv.cpp): B(k, j) with k an output pixel and j an
// unfolded (ci, kh, kw) column. Per panel of 16 columns and chunk of 16 pixels, each
// column's 16 pixels are one vector (masked loads per output-row segment, as above),
// then the 16x16 block is transposed in registers into 16 panel rows. SW: the stride
// along W (1 or 2; at 2 each segment is two masked loads and an even-lane permute, as in
// pack()).
template <int SW>
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
          const i64 l0 = s.lane0 + a - s.ow;  // first valid lane
          const __mmask16 m = static_cast<__mmask16>(((1u << (b - a)) - 1u) << l0);
          // Lane L reads input column SW*(s.ow + L - s.lane0) + iwk (the base may point
          // before the row: formed without pointer arithmetic; only masked lanes, all
          // inside the row, are accessed).
          const std::uintptr_t base =
              reinterpret_cast<std::uintptr_t>(c_xp[c] + ih * W) +
              static_cast<std::uintptr_t>((SW * (s.ow - s.lane0) + c_iwk[c]) * static_cast<i64>(sizeof(float)));
          if (SW == 1) {
            v[c] = _mm512_mask_loadu_ps(v[c], m, reinterpret_cast<const float*>(base));
          } else {
            // elements 2*l0 .. 2*(l0 + b - a - 1) of the 32 from base
            const std::uint32_t em = ((std::uint32_t(1) << (2 * (b - a) - 1)) - 1u) << (2 * l0);
            const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(em & 0xFFFFu),
                                                    reinterpret_cast<const float*>(base));
            const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(em >> 16),
                                                    reinterpret_cast<const float*>(base + 16 * sizeof(float)));
            v[c] = _mm512_mask_blend_ps(m, v[c], P32::evens(lo, hi));
          }
        }
      }
      transpose16(v);
      float* d = panel + kb * NR;
      for (i64 i = 0; i < n; ++i) _mm512_storeu_ps(d + i * NR, v[i]);
    }
  }
}


// Grad-weight packer from tap runs (UnfoldTB in conv.cpp; dilation 1 along W, any
// stride). A panel's 16 columns (ci, kh, kw) fall into runs of consecutive kw within one
// kernel row (a 7-wide kernel: 2 or 3 runs per panel), and a run's values for one output
// pixel are consecutive elements of one input row. So each packed row (one pixel) is one
// masked load per run merged into a vector, then one store: no transpose, no permute.
// Pixels whose runs all lie inside their input rows (all but the few at the ends of an
// output row) use the run masks alone; the others also mask the lanes outside the row.
struct TapRun {
  i64 l0, len;   // first lane, lanes
  i64 base;      // element offset of the run's channel plane
  i64 ihk, iwk;  // input row = oh*sh + ihk; lane l0's input column = ow*sw + iwk
  __mmask16 m;   // lanes l0 .. l0+len-1
};

template <int NV>
inline void runs_rows(const std::uintptr_t* b, const __mmask16* m, int nv, std::uintptr_t step, i64 n, float* d) {
  const int cnt = NV >= 0 ? NV : nv;
  std::uintptr_t o = 0;
  for (i64 i = 0; i < n; ++i, o += step, d += 16) {
    __m512 v = _mm512_setzero_ps();
    for (int r = 0; r < cnt; ++r) v = _mm512_mask_loadu_ps(v, m[r], reinterpret_cast<const float*>(b[r] + o));
    _mm512_storeu_ps(d, v);
  }
}

void pack_t_runs_f32(const ConvParams& p, const float* x, i64 cbase, float* dst, i64 k0, i64 kc, i64 j0,
                     i64 nc) {
  constexpr int NR = 16;
  const i64 kW = p.w.kernel, KK = p.h.kernel * kW, Wo = p.w.out;
  const i64 W = p.w.in, H = p.h.in, plane = H * W, sh = p.h.stride, sw = p.w.stride;
  const std::uintptr_t xb = reinterpret_cast<std::uintptr_t>(x);
  constexpr std::uintptr_t kF = sizeof(float);
  for (i64 pb = 0; pb < nc; pb += NR) {
    float* panel = dst + (pb / NR) * kc * NR;
    const int ncols = static_cast<int>(lmin(NR, nc - pb));
    TapRun runs[NR];
    int nruns = 0;
    for (int c = 0; c < ncols;) {
      const i64 kf = cbase + j0 + pb + c, ci = kf / KK, r = kf % KK, kh = r / kW, kw = r % kW;
      const int len = static_cast<int>(lmin(kW - kw, ncols - c));
      runs[nruns++] = TapRun{c, len, ci * plane, kh * p.h.dilation - p.h.pad_lo, kw - p.w.pad_lo,
                             static_cast<__mmask16>(((1u << len) - 1u) << c)};
      c += len;
    }
    for (i64 k = 0; k < kc;) {
      const i64 pix = k0 + k, oh = pix / Wo, ow0 = pix % Wo, n = lmin(kc - k, Wo - ow0);
      // Runs whose input row exists; b[r] + ow*sw*4 addresses lane 0 for pixel column ow.
      std::uintptr_t b[NR];
      __mmask16 m[NR];
      const TapRun* live[NR];
      int nv = 0;
      i64 ilo = ow0, ihi = ow0 + n;  // pixels with every live run inside its row
      for (int r = 0; r < nruns; ++r) {
        const TapRun& t = runs[r];
        const i64 ih = oh * sh + t.ihk;
        if (ih < 0 || ih >= H) continue;
        b[nv] = xb + static_cast<std::uintptr_t>((t.base + ih * W + t.iwk - t.l0) * static_cast<i64>(kF));
        m[nv] = t.m;
        live[nv++] = &t;
        // ow*sw + iwk >= 0 and ow*sw + iwk + len <= W
        const i64 lo = t.iwk >= 0 ? 0 : (-t.iwk + sw - 1) / sw;
        const i64 hi = W - t.iwk - t.len < 0 ? 0 : (W - t.iwk - t.len) / sw + 1;
        ilo = lmax(ilo, lo);
        ihi = lmin(ihi, hi);
      }
      ilo = lmin(ilo, ow0 + n);
      ihi = lmax(ihi, ilo);
      float* d = panel + k * NR;
      // Edge pixels: each run's lanes also clipped to the input row.
      auto edge = [&](i64 ow) {
        __m512 v = _mm512_setzero_ps();
        for (int r = 0; r < nv; ++r) {
          const TapRun& t = *live[r];
          const i64 col = ow * sw + t.iwk;  // input column of lane l0
          const i64 a = lmax(0, -col), e = lmin(t.len, W - col);
          if (a >= e) continue;
          const __mmask16 mm = static_cast<__mmask16>(((1u << (e - a)) - 1u) << (t.l0 + a));
          v = _mm512_mask_loadu_ps(v, mm, reinterpret_cast<const float*>(b[r] + static_cast<std::uintptr_t>(ow * sw * static_cast<i64>(kF))));
        }
        _mm512_storeu_ps(d + (ow - ow0) * NR, v);
      };
      for (i64 ow = ow0; ow < ilo; ++ow) edge(ow);
      if (ihi > ilo) {
        std::uintptr_t bb[NR];
        for (int r = 0; r < nv; ++r) bb[r] = b[r] + static_cast<std::uintptr_t>(ilo * sw * static_cast<i64>(kF));
        const std::uintptr_t step = static_cast<std::uintptr_t>(sw * static_cast<i64>(kF));
        float* di = d + (ilo - ow0) * NR;
        switch (nv) {
          case 0: runs_rows<0>(bb, m, nv, step, ihi - ilo, di); break;
          case 1: runs_rows<1>(bb, m, nv, step, ihi - ilo, di); break;
          case 2: runs_rows<2>(bb, m, nv, step, ihi - ilo, di); break;
          case 3: runs_rows<3>(bb, m, nv, step, ihi - ilo, di); break;
          case 4: runs_rows<4>(bb, m, nv, step, ihi - ilo, di); break;
          default: runs_rows<-1>(bb, m, nv, step, ihi - ilo, di); break;
        }
      }
      for (i64 ow = ihi; ow < ow0 + n; ++ow) edge(ow);
      k += n;
    }
  }
}

// dst[i*SW] += src[i] for i in [0, n): the scalar col2im's additions, 16 at a time. At
// stride 2 the 16 values are spread over the even lanes of two vectors (a permute each)
// and only those lanes are loaded, added and stored: the odd elements in between belong
// to other taps and are never touched.
template <int SW>
inline void col2im_row(float* dst, const float* src, i64 n) {
  i64 i = 0;
  if (SW == 1) {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_add_ps(_mm512_loadu_ps(dst + i), _mm512_loadu_ps(src + i)));
    if (i < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
      _mm512_mask_storeu_ps(dst + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst + i), _mm512_maskz_loadu_ps(m, src + i)));
    }
    return;
  }
  const __m512i ilo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i ihi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  constexpr __mmask16 kEven = 0x5555;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    float* d = dst + 2 * i;
    _mm512_mask_storeu_ps(d, kEven, _mm512_add_ps(_mm512_maskz_loadu_ps(kEven, d), _mm512_permutexvar_ps(ilo, v)));
    _mm512_mask_storeu_ps(d + 16, kEven,
                          _mm512_add_ps(_mm512_maskz_loadu_ps(kEven, d + 16), _mm512_permutexvar_ps(ihi, v)));
  }
  if (i < n) {
    const i64 r = n - i;  // 1 .. 15 values: even lanes below 2r, over the two vectors
    const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << r) - 1u), src + i);
    const std::uint32_t em = 0x55555555u & ((std::uint32_t(1) << (2 * r)) - 1u);
    const __mmask16 mlo = static_cast<__mmask16>(em & 0xFFFFu), mhi = static_cast<__mmask16>(em >> 16);
    float* d = dst + 2 * i;
    _mm512_mask_storeu_ps(d, mlo, _mm512_add_ps(_mm512_maskz_loadu_ps(mlo, d), _mm512_permutexvar_ps(ilo, v)));
    if (mhi)
      _mm512_mask_storeu_ps(d + 16, mhi,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(mhi, d + 16), _mm512_permutexvar_ps(ihi, v)));
  }
}

// col2im_tile of conv.cpp: the tile's rows (ci, kh, kw), each a run of output pixels
// j0 .. j0+jn-1, added into input rows h0 .. h1-1 of the planes dxp, in the same order.
template <int SW>
void col2im_tile(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* tile, i64 nci,
                 i64 j0, i64 jn, float* dxp, i64 h0, i64 h1) {
  const i64 W = p.w.in, plane = p.h.in * W;
  col2im_walk(p, tile, nci, j0, jn, h0, h1, [&](i64 ci, i64 kw, i64 ih, i64 ow, const float* src, i64 len) {
    const i64 a = lmin(lmax(tr_lo[kw] - ow, 0), len);
    const i64 b = lmin(lmax(tr_hi[kw] - ow, a), len);
    if (b > a)
      col2im_row<SW>(dxp + ci * plane + ih * W + (ow + a) * SW + kw * p.w.dilation - p.w.pad_lo, src + a, b - a);
  });
}

// Grad-input col2im into a phase-split buffer (stride S >= 2 along W): the input rows
// h0 .. h1-1 of each channel, each row in padded column coordinates iw + pad_lo split by
// phase, element (q, m) = padded column S*m + q at q*wq + m (rows S*wq apart, planes
// (h1-h0)*S*wq apart). Tap (kh, kw) of output column ow lands on phase (kw*dw) % S, index
// ow + (kw*dw) / S, so a tile row's run of output pixels is a contiguous vector add (no
// permute, no range clipping: the padding columns take the contributions the scalar
// col2im drops). Same additions in the same order as col2im_tile for every real element.
void col2im_phase(const ConvParams& p, const float* tile, i64 nci, i64 j0, i64 jn, float* buf, i64 h0, i64 h1,
                  i64 wq) {
  const i64 S = p.w.stride, rowlen = S * wq, bplane = (h1 - h0) * rowlen;
  col2im_walk(p, tile, nci, j0, jn, h0, h1, [&](i64 ci, i64 kw, i64 ih, i64 ow, const float* src, i64 len) {
    const i64 t = kw * p.w.dilation;
    col2im_row<1>(buf + ci * bplane + (t % S) * wq + t / S + (ih - h0) * rowlen + ow, src, len);
  });
}

// dx rows h0 .. h1-1 of nci planes from the phase-split buffer: dx[ih][iw] = element
// (q, m) with iw + pad_lo = S*m + q. At S = 2 each 16 columns interleave 8 values of one
// phase with 8 of the other.
void phase_unpack(const ConvParams& p, const float* buf, i64 nci, float* dxp, i64 h0, i64 h1, i64 wq) {
  const i64 W = p.w.in, S = p.w.stride, pl = p.w.pad_lo, plane = p.h.in * W;
  const i64 rowlen = S * wq, bplane = (h1 - h0) * rowlen;
  const __m512i inter = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  for (i64 ci = 0; ci < nci; ++ci)
    for (i64 ih = h0; ih < h1; ++ih) {
      const float* src = buf + ci * bplane + (ih - h0) * rowlen;
      float* dst = dxp + ci * plane + ih * W;
      if (S != 2) {
        for (i64 iw = 0; iw < W; ++iw) dst[iw] = src[((iw + pl) % S) * wq + (iw + pl) / S];
        continue;
      }
      // column iw + pl = 2m + q: lanes alternate between phase pl&1 (first) and the other
      const float* a = src + (pl & 1) * wq + pl / 2;                  // lanes 0, 2, 4, ...
      const float* b = src + ((pl + 1) & 1) * wq + (pl + 1) / 2;      // lanes 1, 3, 5, ...
      i64 iw = 0;
      for (; iw + 16 <= W; iw += 16) {
        const __m512 va = _mm512_castps256_ps512(_mm256_loadu_ps(a + iw / 2));
        const __m512 vb = _mm512_castps256_ps512(_mm256_loadu_ps(b + iw / 2));
        _mm512_storeu_ps(dst + iw, _mm512_permutex2var_ps(va, inter, vb));
      }
      if (iw < W) {
        const i64 r = W - iw, na = (r + 1) / 2, nb = r / 2;
        const __m512 va = _mm512_castps256_ps512(_mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << na) - 1u), a + iw / 2));
        const __m512 vb = _mm512_castps256_ps512(_mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << nb) - 1u), b + iw / 2));
        _mm512_mask_storeu_ps(dst + iw, static_cast<__mmask16>((1u << r) - 1u), _mm512_permutex2var_ps(va, inter, vb));
      }
    }
}

// Forward B from a phase-split zero-padded copy (stride S >= 2 along W). The copy holds
// padded rows ra .. ra+nrows-1 of each channel, each split by phase like the grad-input
// buffer above: padded column S*m + q at q*wq + m. Unfolded row (ci, kh, kw) of output
// pixel (oh, ow) is then element ow + (kw*dw)/S of phase (kw*dw) % S in padded row
// oh*sh + kh*dh: a panel's lanes within one output row are consecutive elements, so a
// packed row is one load (one masked load per output-row segment of a panel that spans
// rows). No bounds checks: the padding is in the copy.
void phase_copy(const ConvParams& p, const float* x, i64 nch, i64 ra, i64 nrows, i64 wq, float* buf) {
  const i64 W = p.w.in, H = p.h.in, S = p.w.stride, pl = p.w.pad_lo, rowlen = S * wq;
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (i64 ci = 0; ci < nch; ++ci)
    for (i64 r = 0; r < nrows; ++r) {
      float* d = buf + (ci * nrows + r) * rowlen;
      const i64 ih = ra + r - p.h.pad_lo;
      for (i64 i = 0; i < rowlen; ++i) d[i] = 0.0f;
      if (ih < 0 || ih >= H) continue;
      const float* src = x + (ci * H + ih) * W;
      if (S == 1) {
        std::memcpy(d + pl, src, static_cast<std::size_t>(W) * sizeof(float));
        continue;
      }
      if (S != 2) {
        for (i64 iw = 0; iw < W; ++iw) d[((iw + pl) % S) * wq + (iw + pl) / S] = src[iw];
        continue;
      }
      // x[iw] for even iw go to phase pl&1 from index pl/2, odd iw to the other phase
      float* de = d + (pl & 1) * wq + pl / 2;
      float* dd = d + ((pl + 1) & 1) * wq + (pl + 1) / 2;
      i64 iw = 0;
      for (; iw + 32 <= W; iw += 32) {
        const __m512 lo = _mm512_loadu_ps(src + iw), hi = _mm512_loadu_ps(src + iw + 16);
        _mm512_storeu_ps(de + iw / 2, _mm512_permutex2var_ps(lo, ev, hi));
        _mm512_storeu_ps(dd + iw / 2, _mm512_permutex2var_ps(lo, od, hi));
      }
      for (; iw < W; ++iw) (iw % 2 == 0 ? de : dd)[iw / 2] = src[iw];
    }
}

// Offsets in the phase-split padded copy (nrows rows of S phases of wq columns per
// channel) of the unfolded rows k = (ci, kh, kw), k = k0 .. k0+n-1, into roff[0 .. n):
// where row k's first element lies relative to the copy's origin for an output at the
// origin.
void copy_row_offsets(const ConvParams& p, i64 nrows, i64 wq, i64 k0, i64 n, i64* roff) {
  const i64 kH = p.h.kernel, kW = p.w.kernel, KK = kH * kW;
  const i64 S = p.w.stride, rowlen = S * wq, planeB = nrows * rowlen;
  for (i64 t = 0; t < n; ++t) {
    const i64 k = k0 + t, ci = k / KK, r = k % KK, kh = r / kW, tw = (r % kW) * p.w.dilation;
    roff[t] = ci * planeB + kh * p.h.dilation * rowlen + (tw % S) * wq + tw / S;
  }
}

void phase_pack(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, i64 jbase, float* dst, i64 k0,
                i64 kc, i64 j0, i64 nc) {
  constexpr int NR = 16;
  const i64 Wo = p.w.out;
  const i64 S = p.w.stride, rowlen = S * wq;
  constexpr int kMaxRows = 512;
  i64 roff[kMaxRows];
  for (i64 kb = 0; kb < kc; kb += kMaxRows) {
    const i64 nk = lmin(kMaxRows, kc - kb);
    copy_row_offsets(p, nrows, wq, k0 + kb, nk, roff);
    for (i64 pb = 0; pb < nc; pb += NR) {
      float* d = dst + (pb / NR) * kc * NR + kb * NR;
      const i64 n = lmin(NR, nc - pb);
      i64 jt = jbase + j0 + pb;
      i64 oh = jt / Wo, ow = jt % Wo;
      if (n == NR && ow + NR <= Wo) {
        const float* b = buf + (oh * p.h.stride - ra) * rowlen + ow;
        for (i64 t = 0; t < nk; ++t) _mm512_storeu_ps(d + t * NR, _mm512_loadu_ps(b + roff[t]));
        continue;
      }
      // Segments: lanes l0 .. l0+len-1 in output row oh from column ow.
      std::uintptr_t sb[NR];
      __mmask16 sm[NR];
      int ns = 0;
      for (i64 at = 0; at < n;) {
        const i64 len = lmin(n - at, Wo - ow);
        sb[ns] = reinterpret_cast<std::uintptr_t>(buf) +
                 static_cast<std::uintptr_t>(((oh * p.h.stride - ra) * rowlen + ow - at) * static_cast<i64>(sizeof(float)));
        sm[ns++] = static_cast<__mmask16>(((1u << len) - 1u) << at);
        at += len;
        ow = 0;
        ++oh;  // one image per copy: the columns never pass Np
      }
      for (i64 t = 0; t < nk; ++t) {
        __m512 v = _mm512_setzero_ps();
        const std::uintptr_t o = static_cast<std::uintptr_t>(roff[t] * static_cast<i64>(sizeof(float)));
        for (int q = 0; q < ns; ++q) v = _mm512_mask_loadu_ps(v, sm[q], reinterpret_cast<const float*>(sb[q] + o));
        _mm512_storeu_ps(d + t * NR, v);
      }
    }
  }
}

// Direct forward over the (phase-split) padded copy, without packing B: a 16 x 16 tile is
// 16 output channels (ap: the weights as a K x 16 k-major micro-panel, zero rows past the
// group's channels) by 16 consecutive output pixels of one row, whose unfolded row k is
// the 16 consecutive elements at b + roff[k]. Each sum is one FMA per term in increasing
// k from zero, then + bias: the arithmetic of the GEMM micro-kernel over one K block and
// of the bias added after it, so the results equal the packed GEMM's bit for bit.
constexpr i64 kDirectChunkBytes = 128 * 1024;
template <bool kTail>
inline void direct_tile(i64 K, const float* __restrict ap, const float* b, const i64* roff, float* y, i64 ys,
                        int m, __mmask16 mask, const float* bias) {
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  __m512 c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
#pragma GCC unroll 1
  for (i64 k = 0; k < K; ++k, ap += 16) {
    const __m512 bv = kTail ? _mm512_maskz_loadu_ps(mask, b + roff[k]) : _mm512_loadu_ps(b + roff[k]);
    c0 = _mm512_fmadd_ps(_mm512_set1_ps(ap[0]), bv, c0);
    c1 = _mm512_fmadd_ps(_mm512_set1_ps(ap[1]), bv, c1);
    c2 = _mm512_fmadd_ps(_mm512_set1_ps(ap[2]), bv, c2);
    c3 = _mm512_fmadd_ps(_mm512_set1_ps(ap[3]), bv, c3);
    c4 = _mm512_fmadd_ps(_mm512_set1_ps(ap[4]), bv, c4);
    c5 = _mm512_fmadd_ps(_mm512_set1_ps(ap[5]), bv, c5);
    c6 = _mm512_fmadd_ps(_mm512_set1_ps(ap[6]), bv, c6);
    c7 = _mm512_fmadd_ps(_mm512_set1_ps(ap[7]), bv, c7);
    c8 = _mm512_fmadd_ps(_mm512_set1_ps(ap[8]), bv, c8);
    c9 = _mm512_fmadd_ps(_mm512_set1_ps(ap[9]), bv, c9);
    c10 = _mm512_fmadd_ps(_mm512_set1_ps(ap[10]), bv, c10);
    c11 = _mm512_fmadd_ps(_mm512_set1_ps(ap[11]), bv, c11);
    c12 = _mm512_fmadd_ps(_mm512_set1_ps(ap[12]), bv, c12);
    c13 = _mm512_fmadd_ps(_mm512_set1_ps(ap[13]), bv, c13);
    c14 = _mm512_fmadd_ps(_mm512_set1_ps(ap[14]), bv, c14);
    c15 = _mm512_fmadd_ps(_mm512_set1_ps(ap[15]), bv, c15);
  }
  const __m512 acc[16] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15};
  for (int i = 0; i < m; ++i) {
    const __m512 v = bias ? _mm512_add_ps(acc[i], _mm512_set1_ps(bias[i])) : acc[i];
    if (kTail)
      _mm512_mask_storeu_ps(y + i * ys, mask, v);
    else
      _mm512_storeu_ps(y + i * ys, v);
  }
}

void direct_forward(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, const float* apack, i64 Mg,
                    i64 K, const float* bias, float* y, i64 p0, i64 p1) {
  const i64 Wo = p.w.out, Np = p.h.out * Wo;
  const i64 S = p.w.stride, rowlen = S * wq;
  i64 roff[avx512::kDirectMaxK];
  copy_row_offsets(p, nrows, wq, 0, K, roff);
  const i64 ng = (Mg + 15) / 16;
  // Columns of a row in chunks whose unfolded rows (K x chunk) stay in L2 while every
  // channel tile reads them (a long 1D row would otherwise stream from memory once per
  // 16 channels).
  const i64 chunk = lmax(16, kDirectChunkBytes / static_cast<i64>(sizeof(float)) / lmax(K, 1) / 16 * 16);
  for (i64 oh = p0 / Wo; oh * Wo < p1; ++oh) {
    const i64 ow0 = lmax(p0 - oh * Wo, 0), ow1 = lmin(p1 - oh * Wo, Wo);
    const float* brow = buf + (oh * p.h.stride - ra) * rowlen;
    for (i64 c0 = ow0; c0 < ow1; c0 += chunk) {
      const i64 c1 = lmin(ow1, c0 + chunk);
      for (i64 g = 0; g < ng; ++g) {
        const int m = static_cast<int>(lmin(16, Mg - 16 * g));
        const float* ag = apack + g * K * 16;
        float* yg = y + 16 * g * Np + oh * Wo;
        const float* bg = bias ? bias + 16 * g : nullptr;
        i64 ow = c0;
        for (; ow + 16 <= c1; ow += 16) direct_tile<false>(K, ag, brow + ow, roff, yg + ow, Np, m, 0xFFFF, bg);
        if (ow < c1)
          direct_tile<true>(K, ag, brow + ow, roff, yg + ow, Np, m,
                            static_cast<__mmask16>((1u << (c1 - ow)) - 1u), bg);
      }
    }
  }
}

// C (rows x n, rows c_rs apart) = A B, A as ceil(rows/16) K x 16 k-major panels (zero rows
// past `rows`), B(k, j) = b[k*b_rs + j] read in place: the direct tiles with unfolded-row
// offsets k*b_rs, so B is never packed. Bitwise equal to the packed GEMM over one K block.
// Columns go in runs of kDirectGemmVecs vectors, each run's B lines (K of them per
// vector) reused from L1 by every row panel.
constexpr i64 kDirectGemmVecs = 4;
// The last row panel with R <= 6 rows: R rows x kDirectGemmVecs vectors of columns (n <=
// 64), so the padding rows of a 16-row tile are not computed (the 7x7 stem's 147 rows:
// 13 of 160). The same FMA chain per element.
template <int R>
void direct_rows(i64 K, const float* ap, const float* b, const i64* roff, float* c, i64 c_rs, i64 n) {
  constexpr int V = static_cast<int>(kDirectGemmVecs);
  __mmask16 m[V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    const i64 l = lmin(16, lmax(0, n - 16 * v));
    m[v] = static_cast<__mmask16>(l == 16 ? 0xFFFFu : (1u << l) - 1u);
  }
  __m512 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (i64 k = 0; k < K; ++k, ap += 16) {
    __m512 bv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) bv[v] = _mm512_maskz_loadu_ps(m[v], b + roff[k] + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(ap[r]);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(a, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(c + r * c_rs + 16 * v, m[v], acc[r][v]);
}

void direct_gemm(i64 rows, i64 n, i64 K, const float* apack, const float* b, i64 b_rs, float* c, i64 c_rs) {
  i64 roff[avx512::kDirectMaxK];
  for (i64 k = 0; k < K; ++k) roff[k] = k * b_rs;
  const i64 ng = (rows + 15) / 16;
  for (i64 j0 = 0; j0 < n; j0 += 16 * kDirectGemmVecs) {
    const i64 j1 = lmin(n, j0 + 16 * kDirectGemmVecs);
    // The next run's B lines into L2 (K rows far apart: too many streams for the
    // hardware prefetcher). Prefetches never fault, so past the end of B is harmless.
    if (j1 < n)
      for (i64 k = 0; k < K; ++k)
        for (i64 l = 0; l < kDirectGemmVecs; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(b + k * b_rs + j1 + 16 * l), _MM_HINT_T1);
    for (i64 g = 0; g < ng; ++g) {
      const int m = static_cast<int>(lmin(16, rows - 16 * g));
      const float* ag = apack + g * K * 16;
      float* cg = c + 16 * g * c_rs;
      if (m <= 6) {
        switch (m) {
          case 1: direct_rows<1>(K, ag, b + j0, roff, cg + j0, c_rs, j1 - j0); break;
          case 2: direct_rows<2>(K, ag, b + j0, roff, cg + j0, c_rs, j1 - j0); break;
          case 3: direct_rows<3>(K, ag, b + j0, roff, cg + j0, c_rs, j1 - j0); break;
          case 4: direct_rows<4>(K, ag, b + j0, roff, cg + j0, c_rs, j1 - j0); break;
          case 5: direct_rows<5>(K, ag, b + j0, roff, cg + j0, c_rs, j1 - j0); break;
          default: direct_rows<6>(K, ag, b + j0, roff, cg + j0, c_rs, j1 - j0); break;
        }
        continue;
      }
      i64 j = j0;
      for (; j + 16 <= j1; j += 16) direct_tile<false>(K, ag, b + j, roff, cg + j, c_rs, m, 0xFFFF, nullptr);
      if (j < j1)
        direct_tile<true>(K, ag, b + j, roff, cg + j, c_rs, m, static_cast<__mmask16>((1u << (j1 - j)) - 1u),
                          nullptr);
    }
  }
}

// Direct grad weight of one image's output rows r0 .. r1-1, no packing: dW(co, j) for the
// unfolded column j = (ci, kh, kw) is the dot product over pixels of dY's row co with the
// unfolded row j, which the (phase-split) padded copy holds as consecutive elements per
// output row. A register tile of NC output channels x NJ columns keeps NC*NJ vectors of
// per-lane partial sums over the pixels (in pixel order, one FMA each), reduced across
// the lanes in a fixed tree at the end: every row of dY and of the copy is loaded once
// per tile and no operand is transposed. (Not the GEMM's summation order: a path of its
// own, deterministic, exact on integer data.)
// One pass: every vector step i (a run of up to 16 pixels of one output row) reads dY at
// dyr[c] + st[i].dy and the unfolded rows at buf + jo[j] + st[i].u, lanes under st[i].m.
// A single flat loop, so the NC*NJ partial sums stay in registers for the whole pass.
struct WStep {
  i64 dy, u;
  __mmask16 m;
};
// Lane i of the result = the sum of the 16 lanes of v[i], i < 8, in a fixed tree: the
// halves of each vector added, then horizontal pair sums across vectors.
inline __m256 reduce8(const __m512* v) {
  __m256 h[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
    h[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]), _mm512_extractf32x8_ps(v[i], 1));
  const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  // u0 = [s0a s1a s2a s3a s0b s1b s2b s3b] (a, b: the two 128-bit halves), u1 likewise for 4..7
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

template <int NC, int NJ>
void wgrad_tile(const float* const* dyr, const i64* jo, const float* buf, const WStep* st, i64 nst, float* out,
                i64 out_rs) {
  __m512 acc[NC][NJ];
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) acc[c][j] = _mm512_setzero_ps();
  const float* ub[NJ];
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j) ub[j] = buf + jo[j];
  const float* db[NC];
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) db[c] = dyr[c];
  for (i64 i = 0; i < nst; ++i) {
    const WStep s = st[i];
    __m512 d[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) d[c] = _mm512_maskz_loadu_ps(s.m, db[c] + s.dy);
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      const __m512 u = _mm512_maskz_loadu_ps(s.m, ub[j] + s.u);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[c][j] = _mm512_fmadd_ps(d[c], u, acc[c][j]);
    }
  }
  // Lane sums, eight vectors at a time (reduce8), into (c, j) order.
  constexpr int kN = NC * NJ, kG = (kN + 7) / 8;
  alignas(32) float sums[kG * 8];
  __m512 flat[kG * 8];
#pragma GCC unroll 32
  for (int i = 0; i < kG * 8; ++i) flat[i] = i < kN ? acc[i / NJ][i % NJ] : _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int q = 0; q < kG; ++q) _mm256_store_ps(sums + 8 * q, reduce8(flat + 8 * q));
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) out[c * out_rs + j] = sums[c * NJ + j];
}

template <int NC>
void wgrad_cols(int nj, const float* const* dyr, const i64* jo, const float* buf, const WStep* st, i64 nst,
                float* out, i64 out_rs) {
  switch (nj) {
    case 6: wgrad_tile<NC, 6>(dyr, jo, buf, st, nst, out, out_rs); break;
    case 5: wgrad_tile<NC, 5>(dyr, jo, buf, st, nst, out, out_rs); break;
    case 4: wgrad_tile<NC, 4>(dyr, jo, buf, st, nst, out, out_rs); break;
    case 3: wgrad_tile<NC, 3>(dyr, jo, buf, st, nst, out, out_rs); break;
    case 2: wgrad_tile<NC, 2>(dyr, jo, buf, st, nst, out, out_rs); break;
    default: wgrad_tile<NC, 1>(dyr, jo, buf, st, nst, out, out_rs); break;
  }
}

constexpr int kWgradNC = 4, kWgradNJ = 6;
void direct_wgrad(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, const float* dy, i64 Mg, i64 K,
                  i64 r0, i64 r1, float* out, float* part) {
  const i64 Wo = p.w.out, Np = p.h.out * Wo;
  const i64 S = p.w.stride, rowlen = S * wq;
  i64 roff[avx512::kDirectWgradMaxK];
  copy_row_offsets(p, nrows, wq, 0, K, roff);
  // The vector steps of rows r0 .. r1-1, in pixel order, in chunks of kWgradSteps (the
  // partial sums of a chunk are added to out in chunk order).
  constexpr i64 kWgradSteps = 256;
  WStep st[kWgradSteps];
  const i64 vpr = (Wo + 15) / 16, total = (r1 - r0) * vpr;
  for (i64 s0 = 0; s0 < total; s0 += kWgradSteps) {
    const i64 nst = lmin(kWgradSteps, total - s0);
    for (i64 i = 0; i < nst; ++i) {
      const i64 oh = r0 + (s0 + i) / vpr, ow = ((s0 + i) % vpr) * 16, n = lmin(16, Wo - ow);
      st[i] = WStep{(oh - r0) * Wo + ow, (oh * p.h.stride - ra) * rowlen + ow,
                    static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u)};
    }
    float* o0 = s0 == 0 ? out : part;
    for (i64 c0 = 0; c0 < Mg; c0 += kWgradNC) {
      const int nc = static_cast<int>(lmin(kWgradNC, Mg - c0));
      const float* dyr[kWgradNC];
      for (int c = 0; c < nc; ++c) dyr[c] = dy + (c0 + c) * Np + r0 * Wo;
      for (i64 j0 = 0; j0 < K; j0 += kWgradNJ) {
        const int nj = static_cast<int>(lmin(kWgradNJ, K - j0));
        float* o = o0 + c0 * K + j0;
        switch (nc) {
          case 4: wgrad_cols<4>(nj, dyr, roff + j0, buf, st, nst, o, K); break;
          case 3: wgrad_cols<3>(nj, dyr, roff + j0, buf, st, nst, o, K); break;
          case 2: wgrad_cols<2>(nj, dyr, roff + j0, buf, st, nst, o, K); break;
          default: wgrad_cols<1>(nj, dyr, roff + j0, buf, st, nst, o, K); break;
        }
      }
    }
    if (s0 > 0)
      for (i64 i = 0; i < Mg * K; ++i) out[i] += part[i];
  }
}

// ---------------------------------------------------------------- depthwise planes
//
// Stride 1 in both dimensions, no padded copy: every vector of output columns reads its
// taps with masked loads whose masks keep the lanes inside the source row (padding lanes
// load as zeros, nothing outside the row is touched) and inside the output row. The
// masks depend only on the column position, so they are computed once per call for a
// strip of columns and reused down the plane.
//
// Forms: a 3x3 dilation-1 plane (MobileNet's layers and their input gradients) streams
// each strip of up to 4 vectors down the plane row by row (RollK3; centred ones, with
// one column of left padding, make the side taps by lane shifts); the backward of a 3x3
// 'same' plane computes dx and dw in one pass (fused_same3_plane); any other kernel
// takes R x NC register blocks (corr_block_any) and, for dw, tap groups.

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
  static V zero() { return _mm256_setzero_ps(); }
  static void flush(V a, __m512d* d) { d[0] = _mm512_add_pd(d[0], _mm512_cvtps_pd(a)); }
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

constexpr int kDwR = 8;          // output rows per register block of the any-kernel form
constexpr int kDwNC = 2;         // vectors per row per register block
constexpr i64 kDwStripVecs = 64; // output vectors per column strip (masks precomputed)

// Lane shifts: the side taps of a centred 3x3 from source vectors aligned with the output.
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

template <class S, int R>
inline void corr_block_nc(int nc, const DwGeom& g, const typename S::T* src, const typename S::T* wk,
                          const typename S::M* msk, const typename S::M* om, i64 oh0, i64 c0, typename S::V init,
                          bool accumulate, typename S::T* out) {
  switch (nc) {
    case 4: corr_block_any<S, R, 4>(g, src, wk, msk, om, oh0, c0, init, accumulate, out); break;
    case 3: corr_block_any<S, R, 3>(g, src, wk, msk, om, oh0, c0, init, accumulate, out); break;
    case 2: corr_block_any<S, R, 2>(g, src, wk, msk, om, oh0, c0, init, accumulate, out); break;
    default: corr_block_any<S, R, 1>(g, src, wk, msk, om, oh0, c0, init, accumulate, out); break;
  }
}

// Rows r <= R of a block: the instantiation for exactly r rows.
template <class S, int R>
inline void corr_block_r(int r, int nc, const DwGeom& g, const typename S::T* src, const typename S::T* wk,
                         const typename S::M* msk, const typename S::M* om, i64 oh0, i64 c0, typename S::V init,
                         bool accumulate, typename S::T* out) {
  if constexpr (R > 1) {
    if (r < R) {
      corr_block_r<S, R - 1>(r, nc, g, src, wk, msk, om, oh0, c0, init, accumulate, out);
      return;
    }
  }
  corr_block_nc<S, R>(nc, g, src, wk, msk, om, oh0, c0, init, accumulate, out);
}

// Lanes 0-7 of a float weight vector (the 8-lane tail; never reached for double).
inline __m256 low8(__m512 w) { return _mm512_castps512_ps256(w); }
inline __m256 low8(__m512d) { return _mm256_setzero_ps(); }

template <class S, int NC, bool HALF, bool C>
struct RollK3 {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  static constexpr int L = S::L;
  static constexpr int NM = C ? NC + 2 : 3 * (NC > 0 ? NC : 1);
  struct Masks {
    M m[NM];           // C: source vectors -1 .. NC; else tap kw of vector c at 3c + kw
    M om[NC > 0 ? NC : 1];
    __mmask8 mh[3];    // !C, HALF: the tail's tap masks
    __mmask8 omh;
  };
  V acc[3][NC > 0 ? NC : 1];
  __m256 acch[3];

  // Step k: output rows k (kh 0, starts), k-1 (kh 1), k-2 (kh 2, then stored); the
  // accumulator slot of row o is o mod 3, which is J for row k (k = J mod 3).
  template <int J>
  inline void step(i64 k, const DwGeom& g, const T* src, const V* w, const Masks& mm, i64 c0, V init,
                   __m256 inith, bool accumulate, T* out) {
    constexpr int s0 = J, s1 = (J + 2) % 3, s2 = (J + 1) % 3;
    const i64 Ho = g.Ho, Wo = g.Wo, ih = k - g.oh_off;
    const bool r0 = k < Ho, r1 = k >= 1 && k - 1 < Ho, r2 = k >= 2;
    if (r0) {
      T* o = out + k * Wo + c0;
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) acc[s0][c] = accumulate ? S::load(mm.om[c], o + c * L) : init;
      if constexpr (HALF) acch[s0] = accumulate ? _mm256_maskz_loadu_ps(mm.omh, o + NC * L) : inith;
    }
    if (ih >= 0 && ih < g.Hs) {
      const T* row = src + ih * g.Ws;
      auto body = [&](int c, V vl, V vc, V vr) {
        if (r0) acc[s0][c] = S::fma(w[2], vr, S::fma(w[1], vc, S::fma(w[0], vl, acc[s0][c])));
        if (r1) acc[s1][c] = S::fma(w[5], vr, S::fma(w[4], vc, S::fma(w[3], vl, acc[s1][c])));
        if (r2) acc[s2][c] = S::fma(w[8], vr, S::fma(w[7], vc, S::fma(w[6], vl, acc[s2][c])));
      };
      auto tail = [&](__m256 vl, __m256 hc, __m256 vr) {
        auto f = [&](int t, __m256 a) {
          a = _mm256_fmadd_ps(low8(w[t]), vl, a);
          a = _mm256_fmadd_ps(low8(w[t + 1]), hc, a);
          return _mm256_fmadd_ps(low8(w[t + 2]), vr, a);
        };
        if (r0) acch[s0] = f(0, acch[s0]);
        if (r1) acch[s1] = f(3, acch[s1]);
        if (r2) acch[s2] = f(6, acch[s2]);
      };
      if constexpr (C) {
        V b[NC + 2];
#pragma GCC unroll 6
        for (int c = 0; c < NC + 2; ++c) b[c] = S::load(mm.m[c], at(row, c0 + (c - 1) * L));
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c)
          body(c, shift_in_left<S>(b[c + 1], b[c]), b[c + 1], shift_in_right<S>(b[c + 1], b[c + 2]));
        if constexpr (HALF) {
          // the tail's lanes are lanes 0-7 of b[NC+1]; its neighbours lane 15 of b[NC] and
          // lane 8 of b[NC+1]
          const __m512 last = b[NC + 1];
          const __m256 hc = _mm512_castps512_ps256(last);
          const __m256 hp = _mm512_extractf32x8_ps(b[NC], 1), hn = _mm512_extractf32x8_ps(last, 1);
          tail(shift_in_left<DwF8>(hc, hp), hc, shift_in_right<DwF8>(hc, hn));
        }
      } else {
        const T* r = at(row, c0 - g.ow_off);
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c)
          body(c, S::load(mm.m[3 * c], at(r, c * L)), S::load(mm.m[3 * c + 1], at(r, c * L + 1)),
               S::load(mm.m[3 * c + 2], at(r, c * L + 2)));
        if constexpr (HALF)
          tail(_mm256_maskz_loadu_ps(mm.mh[0], at(r, NC * L)), _mm256_maskz_loadu_ps(mm.mh[1], at(r, NC * L + 1)),
               _mm256_maskz_loadu_ps(mm.mh[2], at(r, NC * L + 2)));
      }
    }
    if (r2) {
      T* o = out + (k - 2) * Wo + c0;
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) S::store(o + c * L, mm.om[c], acc[s2][c]);
      if constexpr (HALF) _mm256_mask_storeu_ps(o + NC * L, mm.omh, acch[s2]);
    }
  }

  static void run(const DwGeom& g, const T* src, const T* wk, i64 c0, T init, bool accumulate, T* out) {
    RollK3 st;
    V w[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) w[t] = S::set1(wk[t]);
    Masks mm{};
    if constexpr (C) {
#pragma GCC unroll 6
      for (int c = 0; c < NC + 2; ++c) {
        const i64 col = c0 + (c - 1) * L;
        mm.m[c] = lane_bits<S>(-col, g.Ws - col);
      }
      mm.m[0] = static_cast<M>(mm.m[0] & (M(1) << (L - 1)));  // only the last lane of vector -1 is used
      // vector NC: its first lane only, or with HALF the tail (8 lanes) and its neighbour
      mm.m[NC + 1] = static_cast<M>(mm.m[NC + 1] & (HALF ? M(0x1ff) : M(1)));
    } else {
      for (int c = 0; c < NC; ++c)
        for (int kw = 0; kw < 3; ++kw) mm.m[3 * c + kw] = tap_mask<S>(c0 + c * L, kw - g.ow_off, g.Wo, g.Ws);
      for (int kw = 0; kw < 3; ++kw) mm.mh[kw] = tap_mask<DwF8>(c0 + NC * L, kw - g.ow_off, g.Wo, g.Ws);
    }
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) mm.om[c] = lane_bits<S>(0, g.Wo - (c0 + c * L));
    mm.omh = HALF ? lane_bits<DwF8>(0, g.Wo - (c0 + NC * L)) : 0;
    const V vi = S::set1(init);
    const __m256 vih = _mm256_set1_ps(static_cast<float>(init));
    const i64 steps = g.Ho + 2;
    i64 k = 0;
    for (; k + 3 <= steps; k += 3) {
      st.template step<0>(k, g, src, w, mm, c0, vi, vih, accumulate, out);
      st.template step<1>(k + 1, g, src, w, mm, c0, vi, vih, accumulate, out);
      st.template step<2>(k + 2, g, src, w, mm, c0, vi, vih, accumulate, out);
    }
    if (k < steps) st.template step<0>(k, g, src, w, mm, c0, vi, vih, accumulate, out);
    if (k + 1 < steps) st.template step<1>(k + 1, g, src, w, mm, c0, vi, vih, accumulate, out);
  }
};

// The whole plane in strips of at most 4 vectors (3 when the float tail rides along).
template <class S, bool C>
void roll_plane_k3(const DwGeom& g, const typename S::T* src, const typename S::T* wk, typename S::T init,
                   bool accumulate, typename S::T* out) {
  constexpr int L = S::L;
  const bool half = S::L == 16 && g.Wo % L > 0 && g.Wo % L <= L / 2;
  const i64 nvec = half ? g.Wo / L : (g.Wo + L - 1) / L;
  i64 v = 0;
  if (half) {
    for (; nvec - v > 3; v += 4) RollK3<S, 4, false, C>::run(g, src, wk, v * L, init, accumulate, out);
    if constexpr (S::L == 16) {
      switch (nvec - v) {
        case 3: RollK3<S, 3, true, C>::run(g, src, wk, v * L, init, accumulate, out); break;
        case 2: RollK3<S, 2, true, C>::run(g, src, wk, v * L, init, accumulate, out); break;
        case 1: RollK3<S, 1, true, C>::run(g, src, wk, v * L, init, accumulate, out); break;
        default: RollK3<S, 0, true, C>::run(g, src, wk, v * L, init, accumulate, out); break;
      }
    }
    return;
  }
  for (; nvec - v > 4; v += 4) RollK3<S, 4, false, C>::run(g, src, wk, v * L, init, accumulate, out);
  switch (nvec - v) {
    case 4: RollK3<S, 4, false, C>::run(g, src, wk, v * L, init, accumulate, out); break;
    case 3: RollK3<S, 3, false, C>::run(g, src, wk, v * L, init, accumulate, out); break;
    case 2: RollK3<S, 2, false, C>::run(g, src, wk, v * L, init, accumulate, out); break;
    default: RollK3<S, 1, false, C>::run(g, src, wk, v * L, init, accumulate, out); break;
  }
}

template <class S>
void corr_plane(const DwGeom& g, const typename S::T* src, const typename S::T* wk, typename S::T init,
                bool accumulate, typename S::T* out) {
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L;
  const bool k3 = g.kH == 3 && g.kW == 3 && g.dh == 1 && g.dw == 1;
  // 3x3 c256 56px: 0.151 ms (padding 1) and 0.171 (none, 58px input) against 0.210 and
  // 0.212 for 8 x 2 register blocks
  if (k3 && g.ow_off == 1) {
    roll_plane_k3<S, true>(g, src, wk, init, accumulate, out);
    return;
  }
  if (k3) {
    roll_plane_k3<S, false>(g, src, wk, init, accumulate, out);
    return;
  }
  const V vi = S::set1(init);
  const i64 kW = g.kW, nvec = (g.Wo + L - 1) / L;
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
        corr_block_r<S, kDwR>(r, nc, g, src, wk, mk, o, oh0, c0, vi, accumulate, out);
      }
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

// Fused backward of a 3x3 'same' plane (stride 1, dilation 1, padding 1 on every side:
// dy, dx and x are all H x W), one column of vectors at a time, streaming down the
// rows: the three dy rows around row j stay in registers as their three column shifts
// (masked loads, zeros outside the plane), so each dy and x vector is loaded once for
// dx row j (dy correlated with the flipped kernel, taps in its (kh, kw) order) and for
// the weight-gradient taps of x row j. Rows outside the plane are skipped, never
// multiplied as zeros, and lanes past the row are zero in both dy and x, as in the
// scalar loops. Float weight sums run per lane over at most kDwFlush rows, then go into
// the double sums d.
template <class S>
inline void fused_same3_column(i64 H, i64 W, const typename S::T* dy, const typename S::T* x,
                               const typename S::T* wk, bool accumulate, typename S::T* dx, i64 c,
                               __m512d (*d)[2]) {
  using V = typename S::V;
  using M = typename S::M;
  V w[9];
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) w[t] = S::set1(wk[t]);
  M mk[3];
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw) mk[kw] = tap_mask<S>(c, kw - 1, W, W);
  const M om = mk[1];
  V a[9];
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) a[t] = S::zero();
  V p[3], q[3], n[3];
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw) {
    p[kw] = S::zero();
    n[kw] = S::zero();
    q[kw] = S::load(mk[kw], at(dy, c + kw - 1));
  }
  i64 rows = 0;
  for (i64 j = 0; j < H; ++j) {
    const bool prev = j > 0, next = j + 1 < H;
    if (next) {
      const typename S::T* r = dy + (j + 1) * W;
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) n[kw] = S::load(mk[kw], at(r, c + kw - 1));
    }
    typename S::T* o = dx + j * W + c;
    V s = accumulate ? S::load(om, o) : S::zero();
    if (prev) s = S::fma(w[6], p[2], S::fma(w[7], p[1], S::fma(w[8], p[0], s)));
    s = S::fma(w[3], q[2], S::fma(w[4], q[1], S::fma(w[5], q[0], s)));
    if (next) s = S::fma(w[0], n[2], S::fma(w[1], n[1], S::fma(w[2], n[0], s)));
    S::store(o, om, s);
    const typename S::T* xr = x + j * W;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const V xv = S::load(mk[kw], at(xr, c + kw - 1));
      if (next) a[kw] = S::fma(n[1], xv, a[kw]);
      a[3 + kw] = S::fma(q[1], xv, a[3 + kw]);
      if (prev) a[6 + kw] = S::fma(p[1], xv, a[6 + kw]);
    }
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      p[kw] = q[kw];
      q[kw] = n[kw];
    }
    if (++rows == kDwFlush) {
      rows = 0;
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) {
        S::flush(a[t], d[t]);
        a[t] = S::zero();
      }
    }
  }
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) S::flush(a[t], d[t]);
}

template <class S>
void fused_same3_plane(i64 H, i64 W, const typename S::T* dy, const typename S::T* x, const typename S::T* wk,
                       bool accumulate, typename S::T* dx, double* acc) {
  constexpr int L = S::L;
  const bool half = S::L == 16 && W % L > 0 && W % L <= L / 2;
  const i64 nvec = half ? W / L : (W + L - 1) / L;
  __m512d d[9][2];
  for (int t = 0; t < 9; ++t) d[t][0] = d[t][1] = _mm512_setzero_pd();
  for (i64 v = 0; v < nvec; ++v) fused_same3_column<S>(H, W, dy, x, wk, accumulate, dx, v * L, d);
  if constexpr (S::L == 16)
    if (half) fused_same3_column<DwF8>(H, W, dy, x, wk, accumulate, dx, nvec * L, d);
  for (int t = 0; t < 9; ++t) reduce_into<S>(d[t], acc + t);
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
  if (p.w.dilation == 1 && p.w.kernel >= kUnfoldTRunsMinKw)
    pack_t_runs_f32(p, x, cbase, dst, k0, kc, j0, nc);
  else if (p.w.stride == 2)
    pack_t_f32<2>(p, tr_lo, tr_hi, x, cbase, dst, k0, kc, j0, nc);
  else
    pack_t_f32<1>(p, tr_lo, tr_hi, x, cbase, dst, k0, kc, j0, nc);
}
void col2im_tile_f32(const ConvParams& p, const i64* tr_lo, const i64* tr_hi, const float* tile, i64 nci,
                     i64 j0, i64 jn, float* dxp, i64 h0, i64 h1) {
  if (p.w.stride == 2)
    col2im_tile<2>(p, tr_lo, tr_hi, tile, nci, j0, jn, dxp, h0, h1);
  else
    col2im_tile<1>(p, tr_lo, tr_hi, tile, nci, j0, jn, dxp, h0, h1);
}
void col2im_phase_f32(const ConvParams& p, const float* tile, i64 nci, i64 j0, i64 jn, float* buf, i64 h0,
                      i64 h1, i64 wq) {
  col2im_phase(p, tile, nci, j0, jn, buf, h0, h1, wq);
}
void phase_unpack_f32(const ConvParams& p, const float* buf, i64 nci, float* dxp, i64 h0, i64 h1, i64 wq) {
  phase_unpack(p, buf, nci, dxp, h0, h1, wq);
}
void phase_copy_f32(const ConvParams& p, const float* x, i64 nch, i64 ra, i64 nrows, i64 wq, float* buf) {
  phase_copy(p, x, nch, ra, nrows, wq, buf);
}
void phase_pack_f32(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, i64 jbase, float* dst,
                    i64 k0, i64 kc, i64 j0, i64 nc) {
  phase_pack(p, buf, ra, nrows, wq, jbase, dst, k0, kc, j0, nc);
}
void direct_forward_f32(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, const float* apack,
                        i64 Mg, i64 K, const float* bias, float* y, i64 p0, i64 p1) {
  direct_forward(p, buf, ra, nrows, wq, apack, Mg, K, bias, y, p0, p1);
}
void direct_gemm_f32(i64 rows, i64 n, i64 K, const float* apack, const float* b, i64 b_rs, float* c, i64 c_rs) {
  direct_gemm(rows, n, K, apack, b, b_rs, c, c_rs);
}
void direct_wgrad_f32(const ConvParams& p, const float* buf, i64 ra, i64 nrows, i64 wq, const float* dy, i64 Mg,
                      i64 K, i64 r0, i64 r1, float* out, float* part) {
  direct_wgrad(p, buf, ra, nrows, wq, dy, Mg, K, r0, r1, out, part);
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
template <typename T>
void dw_backward_same3_plane(i64 H, i64 W, const T* dy, const T* x, const T* wk, bool accumulate, T* dx,
                             double* acc) {
  fused_same3_plane<typename DwTraits<T>::type>(H, W, dy, x, wk, accumulate, dx, acc);
}
template void dw_backward_same3_plane<float>(i64, i64, const float*, const float*, const float*, bool, float*,
                                             double*);
template void dw_backward_same3_plane<double>(i64, i64, const double*, const double*, const double*, bool,
                                              double*, double*);
template void dw_corr_plane<float>(const DwGeom&, const float*, const float*, float, bool, float*);
template void dw_corr_plane<double>(const DwGeom&, const double*, const double*, double, bool, double*);
template void dw_weight_plane<float>(const DwGeom&, const float*, const float*, double*);
template void dw_weight_plane<double>(const DwGeom&, const double*, const double*, double*);
}  // namespace avx512

}  // namespace pyconv
