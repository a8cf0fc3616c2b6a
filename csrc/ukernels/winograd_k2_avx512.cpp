// AVX-512 pack and tile kernels of the kernel-width-2 Winograd path (layouts and
// arithmetic in csrc/conv_winograd_k2.cpp, whose portable copies they equal bit for bit:
// the same subtractions, one fused multiply-add per term in increasing k from zero, the
// same final additions). Reached only for a dilation that is a multiple of 8, so every
// run of 8 pair columns maps to 8 consecutive output columns.
#include <immintrin.h>

#include <algorithm>

#include "../conv.h"

namespace pyconv {
namespace wino_k2_avx512 {
namespace {

constexpr int kMR = k2_detail::kMR;

// Eight consecutive elements of one row: masked-off lanes read nothing and give zeros.
struct F32 {
  using T = float;
  using V = __m512;  // one panel (16 lanes) = two runs
  using R = __m256;  // one run
  static constexpr int L = 16;
  static V load(const T* p) { return _mm512_load_ps(p); }
  static V zero() { return _mm512_setzero_ps(); }
  static V bcast(const T* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(T* p, V v) { _mm512_store_ps(p, v); }
  static R rload(const T* p, __mmask8 m) { return _mm256_maskz_loadu_ps(m, p); }
  static R rzero() { return _mm256_setzero_ps(); }
  static R rsub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R radd(R a, R b) { return _mm256_add_ps(a, b); }
  static R rset1(T v) { return _mm256_set1_ps(v); }
  static void rstore(T* p, R v) { _mm256_store_ps(p, v); }
  static void rstore(T* p, R v, __mmask8 m) { _mm256_mask_storeu_ps(p, m, v); }
};
struct F64 {
  using T = double;
  using V = __m512d;  // one panel (8 lanes) = one run
  using R = __m512d;
  static constexpr int L = 8;
  static V load(const T* p) { return _mm512_load_pd(p); }
  static V zero() { return _mm512_setzero_pd(); }
  static V bcast(const T* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static void store(T* p, V v) { _mm512_store_pd(p, v); }
  static R rload(const T* p, __mmask8 m) { return _mm512_maskz_loadu_pd(m, p); }
  static R rzero() { return _mm512_setzero_pd(); }
  static R rsub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R radd(R a, R b) { return _mm512_add_pd(a, b); }
  static R rset1(T v) { return _mm512_set1_pd(v); }
  static void rstore(T* p, R v) { _mm512_store_pd(p, v); }
  static void rstore(T* p, R v, __mmask8 m) { _mm512_mask_storeu_pd(p, m, v); }
};

// Lanes l of a run starting at index i that fall inside [0, n).
inline __mmask8 range_mask(i64 i, i64 n) {
  if (i >= 0 && i + 8 <= n) return 0xFF;
  unsigned m = 0;
  for (int l = 0; l < 8; ++l)
    if (i + l >= 0 && i + l < n) m |= 1u << l;
  return static_cast<__mmask8>(m);
}

template <class S>
void pack(const typename S::T* x, i64 cs, const k2_detail::Geo& g, i64 kc, i64 j0, i64 nc, typename S::T* dst) {
  using T = typename S::T;
  using R = typename S::R;
  constexpr int L = S::L;
  const i64 panels = (nc + L - 1) / L, runs = panels * (L / 8);
  i64 ts[k2_detail::kMaxChunk / 8];  // first output column of each run (-1: no run)
  for (i64 r = 0; r < runs; ++r) {
    const i64 j = j0 + 8 * r;
    ts[r] = (8 * r < nc && j < g.P) ? (j / g.d) * 2 * g.d + j % g.d : -1;
  }
  for (i64 k = 0; k < kc; ++k) {
    const T* row = x + k * cs;
    for (i64 r = 0; r < runs; ++r) {
      T* o = dst + ((r / (L / 8)) * kc + k) * 3 * L + (r % (L / 8)) * 8;
      if (ts[r] < 0) {
        S::rstore(o, S::rzero());
        S::rstore(o + L, S::rzero());
        S::rstore(o + 2 * L, S::rzero());
        continue;
      }
      const i64 i = ts[r] - g.pad_lo;
      const R a = S::rload(row + i, range_mask(i, g.W));
      const R b = S::rload(row + i + g.d, range_mask(i + g.d, g.W));
      const R c = S::rload(row + i + 2 * g.d, range_mask(i + 2 * g.d, g.W));
      S::rstore(o, S::rsub(a, b));
      S::rstore(o + L, b);
      S::rstore(o + 2 * L, S::rsub(c, b));
    }
  }
}

template <class S>
void tile(i64 kc, const typename S::T* __restrict a, const typename S::T* __restrict b, typename S::T* y,
          i64 y_rs, int m, i64 j0, const k2_detail::Geo& g, bool accumulate, const typename S::T* bias) {
  using T = typename S::T;
  using V = typename S::V;
  using R = typename S::R;
  constexpr int L = S::L;
  {  // the output lines this tile writes: their ownership requests overlap the products
    const i64 jl = std::min(j0 + L, g.P) - 1;
    const i64 ta = (j0 / g.d) * 2 * g.d + j0 % g.d, te = (jl / g.d) * 2 * g.d + jl % g.d + 7;
    const i64 tb = std::max(ta + g.d, te + 1), tbe = te + g.d;  // the partners' columns, not yet covered
    for (int i = 0; i < m; ++i) {
      const T* yr = y + i * y_rs;
      for (i64 c = ta; c <= te; c += 64 / sizeof(T)) _mm_prefetch(reinterpret_cast<const char*>(yr + c), _MM_HINT_ET0);
      _mm_prefetch(reinterpret_cast<const char*>(yr + te), _MM_HINT_ET0);
      for (i64 c = tb; c <= tbe; c += 64 / sizeof(T)) _mm_prefetch(reinterpret_cast<const char*>(yr + c), _MM_HINT_ET0);
      _mm_prefetch(reinterpret_cast<const char*>(yr + tbe), _MM_HINT_ET0);
    }
  }
  V m1[kMR], m2[kMR], m3[kMR];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) m1[i] = m2[i] = m3[i] = S::zero();
#pragma GCC unroll 1
  for (i64 k = 0; k < kc; ++k) {
    const V u1 = S::load(b), u2 = S::load(b + L), u3 = S::load(b + 2 * L);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      m1[i] = S::fma(S::bcast(a + i), u1, m1[i]);
      m2[i] = S::fma(S::bcast(a + kMR + i), u2, m2[i]);
      m3[i] = S::fma(S::bcast(a + 2 * kMR + i), u3, m3[i]);
    }
    a += 3 * kMR;
    b += 3 * L;
  }
  alignas(64) T ya[kMR][L], yb[kMR][L];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) {
    S::store(ya[i], S::add(m1[i], m2[i]));
    S::store(yb[i], S::add(m3[i], m2[i]));
  }
  for (int r = 0; r < L / 8; ++r) {
    const i64 j = j0 + 8 * r;
    if (j >= g.P) break;
    const i64 t = (j / g.d) * 2 * g.d + j % g.d;
    const __mmask8 ma = range_mask(t, g.Wo), mb = range_mask(t + g.d, g.Wo);
    for (int i = 0; i < m; ++i) {
      T* yr = y + i * y_rs + t;
      R va, vb;
      if constexpr (L == 16) {
        va = _mm256_load_ps(ya[i] + 8 * r);
        vb = _mm256_load_ps(yb[i] + 8 * r);
      } else {
        va = _mm512_load_pd(ya[i]);
        vb = _mm512_load_pd(yb[i]);
      }
      if (accumulate) {
        va = S::radd(S::rload(yr, ma), va);
        vb = S::radd(S::rload(yr + g.d, mb), vb);
      }
      if (bias) {
        va = S::radd(va, S::rset1(bias[i]));
        vb = S::radd(vb, S::rset1(bias[i]));
      }
      S::rstore(yr, va, ma);
      S::rstore(yr + g.d, vb, mb);
    }
  }
}

}  // namespace

void pack_f32(const float* x, i64 cs, const k2_detail::Geo& g, i64 kc, i64 j0, i64 nc, float* dst) {
  pack<F32>(x, cs, g, kc, j0, nc, dst);
}
void pack_f64(const double* x, i64 cs, const k2_detail::Geo& g, i64 kc, i64 j0, i64 nc, double* dst) {
  pack<F64>(x, cs, g, kc, j0, nc, dst);
}
void tile_f32(i64 kc, const float* a, const float* b, float* y, i64 y_rs, int m, i64 j0, const k2_detail::Geo& g,
              bool accumulate, const float* bias) {
  tile<F32>(kc, a, b, y, y_rs, m, j0, g, accumulate, bias);
}
void tile_f64(i64 kc, const double* a, const double* b, double* y, i64 y_rs, int m, i64 j0,
              const k2_detail::Geo& g, bool accumulate, const double* bias) {
  tile<F64>(kc, a, b, y, y_rs, m, j0, g, accumulate, bias);
}

}  // namespace wino_k2_avx512
}  // namespace pyconv
