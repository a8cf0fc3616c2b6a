// AVX-512 pack and tile kernels of the 1D Winograd path (layouts, transforms and
// arithmetic in csrc/conv_winograd_1d.cpp, whose portable copies they equal bit for bit:
// the same input transforms, one fused multiply-add per term in increasing k from zero,
// the same output transforms in the same order). Two geometries are vectorised:
//   runs  the dilation is a multiple of 8: every run of 8 pair columns is 8 consecutive
//         output columns (and their partners 8 consecutive columns d further on);
//   perm  dilation 1, 2 or 4: a panel of L pair columns is 2L consecutive output columns
//         (its outputs and their partners interleaved in runs of d), so each input of a
//         panel is one permute of two vectors and the outputs two permutes of (ya, yb).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../conv.h"
#include "transpose_avx512.h"

namespace pyconv {
namespace wino1d_avx512 {
namespace {

using w1d_detail::Geo;
using w1d_detail::Store;

struct F32 {
  using T = float;
  using V = __m512;  // one panel (16 lanes) = two runs
  using R = __m256;  // one run
  using M = __mmask16;
  static constexpr int L = 16;
  static V load(const T* p) { return _mm512_load_ps(p); }
  static V loadu(const T* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void storeu(T* p, V v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static V zero() { return _mm512_setzero_ps(); }
  static V bcast(const T* p) { return _mm512_set1_ps(*p); }
  static V set1(T v) { return _mm512_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static void store(T* p, V v) { _mm512_store_ps(p, v); }
  static void stream(T* p, V v) { _mm512_stream_ps(p, v); }
  static V perm2(V lo, __m512i idx, V hi) { return _mm512_permutex2var_ps(lo, idx, hi); }
  static R rload(const T* p, __mmask8 m) { return _mm256_maskz_loadu_ps(m, p); }
  static R rzero() { return _mm256_setzero_ps(); }
  static R rsub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R radd(R a, R b) { return _mm256_add_ps(a, b); }
  static R rset1(T v) { return _mm256_set1_ps(v); }
  static void rstore(T* p, R v) { _mm256_store_ps(p, v); }
  static void rstore(T* p, R v, __mmask8 m) { _mm256_mask_storeu_ps(p, m, v); }
  static R half(V v, int r) { return r == 0 ? _mm512_castps512_ps256(v) : _mm512_extractf32x8_ps(v, 1); }
};
struct F64 {
  using T = double;
  using V = __m512d;  // one panel (8 lanes) = one run
  using R = __m512d;
  using M = __mmask8;
  static constexpr int L = 8;
  static V load(const T* p) { return _mm512_load_pd(p); }
  static V loadu(const T* p, M m) { return _mm512_maskz_loadu_pd(m, p); }
  static void storeu(T* p, V v, M m) { _mm512_mask_storeu_pd(p, m, v); }
  static V zero() { return _mm512_setzero_pd(); }
  static V bcast(const T* p) { return _mm512_set1_pd(*p); }
  static V set1(T v) { return _mm512_set1_pd(v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static void store(T* p, V v) { _mm512_store_pd(p, v); }
  static void stream(T* p, V v) { _mm512_stream_pd(p, v); }
  static V perm2(V lo, __m512i idx, V hi) { return _mm512_permutex2var_pd(lo, idx, hi); }
  static R rload(const T* p, __mmask8 m) { return _mm512_maskz_loadu_pd(m, p); }
  static R rzero() { return _mm512_setzero_pd(); }
  static R rsub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R radd(R a, R b) { return _mm512_add_pd(a, b); }
  static R rset1(T v) { return _mm512_set1_pd(v); }
  static void rstore(T* p, R v) { _mm512_store_pd(p, v); }
  static void rstore(T* p, R v, __mmask8 m) { _mm512_mask_storeu_pd(p, m, v); }
  static R half(V v, int) { return v; }
};

// Lanes l (l < n_lanes) of a vector starting at index i that fall inside [0, n).
inline unsigned range_bits(i64 i, i64 n, int n_lanes) {
  const unsigned all = n_lanes >= 32 ? ~0u : (1u << n_lanes) - 1;
  if (i >= 0 && i + n_lanes <= n) return all;
  unsigned m = 0;
  for (int l = 0; l < n_lanes; ++l)
    if (i + l >= 0 && i + l < n) m |= 1u << l;
  return m;
}

// Permute indices of the perm geometry (dilation d = 1, 2, 4; L lanes): pair lane l is
// column (l / d) * 2d + l % d of the panel's 2L columns; output column p comes from
// ya lane (p / 2d) * d + p % 2d if p % 2d < d, else from yb lane (p / 2d) * d + p % 2d - d.
template <typename I, int L>
struct PermTables {
  alignas(64) I a[3][L];
  alignas(64) I z[3][2 * L];
  PermTables() {
    for (int s = 0; s < 3; ++s) {
      const int d = 1 << s;
      for (int l = 0; l < L; ++l) a[s][l] = static_cast<I>((l / d) * 2 * d + l % d);
      for (int p = 0; p < 2 * L; ++p) {
        const int lane = (p / (2 * d)) * d + p % (2 * d);
        z[s][p] = static_cast<I>(p % (2 * d) < d ? lane : L + lane - d);
      }
    }
  }
};
template <class S>
struct Perm;
template <>
struct Perm<F32> {
  static const PermTables<int, 16>& t() {
    static const PermTables<int, 16> tab;
    return tab;
  }
};
template <>
struct Perm<F64> {
  static const PermTables<long long, 8>& t() {
    static const PermTables<long long, 8> tab;
    return tab;
  }
};
inline int perm_slot(i64 d) { return d == 1 ? 0 : d == 2 ? 1 : 2; }
template <class S>
inline __m512i perm_in(i64 d) {
  return _mm512_load_si512(Perm<S>::t().a[perm_slot(d)]);
}
template <class S>
inline __m512i perm_out(i64 d, int half) {
  return _mm512_load_si512(Perm<S>::t().z[perm_slot(d)] + half * S::L);
}

// The input transform of one pair column's R + 1 inputs d[0..R], in the order of the
// portable transform; Ops supplies sub/add for the vector type (a run or a panel).
template <class S>
struct RunOps {
  using Vec = typename S::R;
  static Vec sub(Vec a, Vec b) { return S::rsub(a, b); }
  static Vec add(Vec a, Vec b) { return S::radd(a, b); }
};
template <class S>
struct PanelOps {
  using Vec = typename S::V;
  static Vec sub(Vec a, Vec b) { return S::sub(a, b); }
  static Vec add(Vec a, Vec b) { return S::add(a, b); }
};
template <int Rt, class Ops>
inline void input_transform(const typename Ops::Vec* d, typename Ops::Vec* u) {
  if constexpr (Rt == 2) {
    u[0] = Ops::sub(d[0], d[1]);
    u[1] = d[1];
    u[2] = Ops::sub(d[2], d[1]);
  } else {
    u[0] = Ops::sub(d[0], d[2]);
    u[1] = Ops::add(d[1], d[2]);
    u[2] = Ops::sub(d[2], d[1]);
    u[3] = Ops::sub(d[1], d[3]);
  }
}

// Runs of 8 (dilation a multiple of 8).
template <class S, int Rt>
void pack_runs(const typename S::T* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, typename S::T* dst) {
  using T = typename S::T;
  using R = typename S::R;
  constexpr int L = S::L, Q = Rt + 1;
  const i64 panels = (nc + L - 1) / L, runs = panels * (L / 8);
  i64 ts[w1d_detail::kMaxChunk / 8];  // first output column of each run (-1: no run)
  for (i64 r = 0; r < runs; ++r) {
    const i64 j = j0 + 8 * r;
    ts[r] = (8 * r < nc && j < g.P) ? w1d_detail::col(g, j) : -1;
  }
  // Panel by panel, channels inside: the panel's kc x Q x L block is written in order
  // (channel-outer writes land kc*Q*L elements apart, 12 KB for 64 channels, all in one
  // L1 set; WaveNet forward, min of 4 alternating runs: 19.8 ms that way, 18.5 this way).
  for (i64 pn = 0; pn < panels; ++pn)
    for (i64 k = 0; k < kc; ++k) {
      const T* row = x + k * cs;
      for (int h = 0; h < L / 8; ++h) {
        const i64 r = pn * (L / 8) + h;
        T* o = dst + (pn * kc + k) * Q * L + h * 8;
        if (ts[r] < 0) {
          for (int q = 0; q < Q; ++q) S::rstore(o + q * L, S::rzero());
          continue;
        }
        const i64 i = ts[r] - g.pad_lo;
        R d[Rt + 1], u[Q];
        for (int q = 0; q <= Rt; ++q)
          d[q] = S::rload(row + i + q * g.d, static_cast<__mmask8>(range_bits(i + q * g.d, g.W, 8)));
        input_transform<Rt, RunOps<S>>(d, u);
        for (int q = 0; q < Q; ++q) S::rstore(o + q * L, u[q]);
      }
    }
}

// Dilation 1, 2 or 4: the panel of pairs j0 .. j0+L-1 covers columns 2*j0 .. 2*j0+2L-1.
template <class S, int Rt>
void pack_perm(const typename S::T* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, typename S::T* dst) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, Q = Rt + 1;
  const __m512i idx = perm_in<S>(g.d);
  const i64 panels = (nc + L - 1) / L;
  for (i64 pn = 0; pn < panels; ++pn) {
    const i64 i = 2 * (j0 + pn * L) - g.pad_lo;  // input of lane 0, q = 0
    M mk[Rt + 1][2];
    for (int q = 0; q <= Rt; ++q)
      for (int h = 0; h < 2; ++h) mk[q][h] = static_cast<M>(range_bits(i + q * g.d + h * L, g.W, L));
    for (i64 k = 0; k < kc; ++k) {
      const T* row = x + k * cs + i;
      T* o = dst + (pn * kc + k) * Q * L;
      V d[Rt + 1], u[Q];
      for (int q = 0; q <= Rt; ++q)
        d[q] = S::perm2(S::loadu(row + q * g.d, mk[q][0]), idx, S::loadu(row + q * g.d + L, mk[q][1]));
      input_transform<Rt, PanelOps<S>>(d, u);
      for (int q = 0; q < Q; ++q) S::store(o + q * L, u[q]);
    }
  }
}

// The products of one tile: acc[q][i] = sum over k of a[k][q][i] * b[k][q][:], then the
// output transform into ya (output t) and yb (its partner).
template <class S, int Rt>
inline void tile_products(i64 kc, const typename S::T* __restrict a, const typename S::T* __restrict b,
                          typename S::V* ya, typename S::V* yb) {
  using V = typename S::V;
  constexpr int L = S::L, Q = Rt + 1, MR = w1d_detail::mr(Rt);
  V acc[Q][MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[q][i] = S::zero();
#pragma GCC unroll 1
  for (i64 k = 0; k < kc; ++k) {
    V u[Q];
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) u[q] = S::load(b + q * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) acc[q][i] = S::fma(S::bcast(a + q * MR + i), u[q], acc[q][i]);
    a += Q * MR;
    b += Q * L;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if constexpr (Rt == 2) {
      ya[i] = S::add(acc[0][i], acc[1][i]);
      yb[i] = S::add(acc[2][i], acc[1][i]);
    } else {
      ya[i] = S::add(S::add(acc[0][i], acc[1][i]), acc[2][i]);
      yb[i] = S::sub(S::sub(acc[1][i], acc[2][i]), acc[3][i]);
    }
  }
}

// Columns [c0, c1] of m rows: their ownership requested while the products run.
template <typename T>
inline void prefetch_cols(const T* y, i64 y_rs, int m, i64 c0, i64 c1) {
  for (int i = 0; i < m; ++i) {
    const T* yr = y + i * y_rs;
    for (i64 c = c0; c <= c1; c += 64 / static_cast<i64>(sizeof(T)))
      _mm_prefetch(reinterpret_cast<const char*>(yr + c), _MM_HINT_ET0);
    _mm_prefetch(reinterpret_cast<const char*>(yr + c1), _MM_HINT_ET0);
  }
}

// Whether lines starting at output column t of y's rows are 64-byte aligned (the rows
// a whole number of lines apart), so a tile may stream them.
template <typename T>
inline bool lines_aligned(const T* y, i64 y_rs, i64 t) {
  return (y_rs * static_cast<i64>(sizeof(T))) % 64 == 0 && (reinterpret_cast<std::uintptr_t>(y + t) & 63) == 0;
}

template <class S, int Rt>
void tile_runs(i64 kc, const typename S::T* a, const typename S::T* b, typename S::T* y, i64 y_rs, int m, i64 j0,
               const Geo& g, Store st, const typename S::T* bias) {
  using T = typename S::T;
  using V = typename S::V;
  using R = typename S::R;
  constexpr int L = S::L, MR = w1d_detail::mr(Rt);
  constexpr bool f32 = std::is_same_v<T, float>;
  // Streamed, a tile is two lines per row: float32 with d = 8, [t, t + 16) = the low runs
  // of (ya, yb) and [t + 16, t + 32) their high runs; float32 with d a multiple of 16 and
  // float64, ya at t and yb at t + d. Other dilations store runs.
  const i64 t0 = w1d_detail::col(g, j0);
  const i64 second = f32 && g.d == 8 ? 16 : g.d;
  const bool stream = st == Store::stream && (!f32 || g.d == 8 || g.d % 16 == 0) && j0 + L <= g.P &&
                      t0 + second + L <= g.Wo && lines_aligned(y, y_rs, t0);
  if (!stream) {
    const i64 jl = std::min(j0 + L, g.P) - 1;
    const i64 te = w1d_detail::col(g, jl) + 7;
    prefetch_cols(y, y_rs, m, t0, te);
    prefetch_cols(y, y_rs, m, std::max(t0 + g.d, te + 1), te + g.d);  // partners not yet covered
  }
  V va[MR], vb[MR];
  tile_products<S, Rt>(kc, a, b, va, vb);
  if (stream) {
    for (int i = 0; i < m; ++i) {
      V lo = va[i], hi = vb[i];
      if constexpr (f32) {
        if (g.d == 8) {
          lo = _mm512_shuffle_f32x4(va[i], vb[i], 0x44);
          hi = _mm512_shuffle_f32x4(va[i], vb[i], 0xEE);
        }
      }
      if (bias) {
        lo = S::add(lo, S::set1(bias[i]));
        hi = S::add(hi, S::set1(bias[i]));
      }
      T* yr = y + i * y_rs + t0;
      S::stream(yr, lo);
      S::stream(yr + second, hi);
    }
    return;
  }
  const bool accumulate = st == Store::accumulate;
  // Runs taken from the registers (a spill and reload of the upper halves measured
  // slower: the reload does not forward from the 64-byte store).
#pragma GCC unroll 2
  for (int r = 0; r < L / 8; ++r) {
    const i64 j = j0 + 8 * r;
    if (j >= g.P) break;
    const i64 t = w1d_detail::col(g, j);
    const __mmask8 ma = static_cast<__mmask8>(range_bits(t, g.Wo, 8));
    const __mmask8 mb = static_cast<__mmask8>(range_bits(t + g.d, g.Wo, 8));
    for (int i = 0; i < m; ++i) {
      T* yr = y + i * y_rs + t;
      R ra = S::half(va[i], r), rb = S::half(vb[i], r);
      if (accumulate) {
        ra = S::radd(S::rload(yr, ma), ra);
        rb = S::radd(S::rload(yr + g.d, mb), rb);
      }
      if (bias) {
        ra = S::radd(ra, S::rset1(bias[i]));
        rb = S::radd(rb, S::rset1(bias[i]));
      }
      S::rstore(yr, ra, ma);
      S::rstore(yr + g.d, rb, mb);
    }
  }
}

template <class S, int Rt>
void tile_perm(i64 kc, const typename S::T* a, const typename S::T* b, typename S::T* y, i64 y_rs, int m, i64 j0,
               const Geo& g, Store st, const typename S::T* bias) {
  using V = typename S::V;
  using M = typename S::M;
  constexpr int L = S::L, MR = w1d_detail::mr(Rt);
  const i64 t = 2 * j0;  // outputs t .. t + 2L - 1: two lines when streamed
  const bool stream = st == Store::stream && t + 2 * L <= g.Wo && lines_aligned(y, y_rs, t);
  const bool accumulate = st == Store::accumulate;
  if (!stream) prefetch_cols(y, y_rs, m, t, t + 2 * L - 1);
  V va[MR], vb[MR];
  tile_products<S, Rt>(kc, a, b, va, vb);
  const __m512i z0 = perm_out<S>(g.d, 0), z1 = perm_out<S>(g.d, 1);
  const M m0 = static_cast<M>(range_bits(t, g.Wo, L)), m1 = static_cast<M>(range_bits(t + L, g.Wo, L));
  for (int i = 0; i < m; ++i) {
    auto* yr = y + i * y_rs + t;
    V lo = S::perm2(va[i], z0, vb[i]), hi = S::perm2(va[i], z1, vb[i]);
    if (accumulate) {
      lo = S::add(S::loadu(yr, m0), lo);
      hi = S::add(S::loadu(yr + L, m1), hi);
    }
    if (bias) {
      lo = S::add(lo, S::set1(bias[i]));
      hi = S::add(hi, S::set1(bias[i]));
    }
    if (stream) {
      S::stream(yr, lo);
      S::stream(yr + L, hi);
    } else {
      S::storeu(yr, lo, m0);
      S::storeu(yr + L, hi, m1);
    }
  }
}

template <class S>
void pack_any(const typename S::T* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, typename S::T* dst) {
  if (g.d % 8 != 0) {
    if (g.r == 2) return pack_perm<S, 2>(x, cs, g, kc, j0, nc, dst);
    return pack_perm<S, 3>(x, cs, g, kc, j0, nc, dst);
  }
  if (g.r == 2) return pack_runs<S, 2>(x, cs, g, kc, j0, nc, dst);
  pack_runs<S, 3>(x, cs, g, kc, j0, nc, dst);
}

template <class S>
void tile_any(i64 kc, const typename S::T* a, const typename S::T* b, typename S::T* y, i64 y_rs, int m, i64 j0,
              const Geo& g, Store st, const typename S::T* bias) {
  if (g.d % 8 != 0) {
    if (g.r == 2) return tile_perm<S, 2>(kc, a, b, y, y_rs, m, j0, g, st, bias);
    return tile_perm<S, 3>(kc, a, b, y, y_rs, m, j0, g, st, bias);
  }
  if (g.r == 2) return tile_runs<S, 2>(kc, a, b, y, y_rs, m, j0, g, st, bias);
  tile_runs<S, 3>(kc, a, b, y, y_rs, m, j0, g, st, bias);
}

// ---- weight gradient (float32): see conv_winograd_1d.cpp for the layouts.

// dy at pairs k .. k+15 (of the unit's first pair j0) of one row: the outputs (a) and
// their partners (b), zero where an output does not exist. ts: each run's first output
// column (-1: past the last pair), for dilations that are multiples of 8.
inline void grad_pair(const float* row, const Geo& g, i64 j0, i64 k, const i64* ts, __m512* a, __m512* b) {
  if (g.d % 8 != 0) {
    const i64 t = 2 * (j0 + k);
    const __m512i idx = perm_in<F32>(g.d);
    auto half = [&](i64 c) { return F32::loadu(row + c, static_cast<__mmask16>(range_bits(c, g.Wo, 16))); };
    *a = F32::perm2(half(t), idx, half(t + 16));
    *b = F32::perm2(half(t + g.d), idx, half(t + g.d + 16));
    return;
  }
  __m256 ra[2], rb[2];
  for (int r = 0; r < 2; ++r) {
    const i64 t = ts[k / 8 + r];
    if (t < 0) {
      ra[r] = rb[r] = _mm256_setzero_ps();
      continue;
    }
    ra[r] = _mm256_maskz_loadu_ps(static_cast<__mmask8>(range_bits(t, g.Wo, 8)), row + t);
    rb[r] = _mm256_maskz_loadu_ps(static_cast<__mmask8>(range_bits(t + g.d, g.Wo, 8)), row + t + g.d);
  }
  *a = _mm512_insertf32x8(_mm512_castps256_ps512(ra[0]), ra[1], 1);
  *b = _mm512_insertf32x8(_mm512_castps256_ps512(rb[0]), rb[1], 1);
}

template <int Rt>
void dw_pack_a(const float* dy, i64 rs, int m, const Geo& g, i64 j0, i64 kp, float* dst) {
  constexpr int Q = Rt + 1, MR = w1d_detail::mr(Rt), NC = w1d_detail::nc_weight(Rt);
  i64 ts[NC / 8];
  if (g.d % 8 == 0)
    for (i64 r = 0; r < kp / 8; ++r) {
      const i64 j = j0 + 8 * r;
      ts[r] = j < g.P ? w1d_detail::col(g, j) : -1;
    }
  for (int i = 0; i < MR; ++i)
    for (i64 k = 0; k < kp; k += 16) {
      __m512 dm[Q];
      if (i < m) {
        __m512 a, b;
        grad_pair(dy + i * rs, g, j0, k, ts, &a, &b);
        dm[0] = a;
        dm[1] = _mm512_add_ps(a, b);
        if constexpr (Rt == 2) {
          dm[2] = b;
        } else {
          dm[2] = _mm512_sub_ps(a, b);
          dm[3] = _mm512_sub_ps(_mm512_setzero_ps(), b);
        }
      } else {
        for (int q = 0; q < Q; ++q) dm[q] = _mm512_setzero_ps();
      }
      for (int q = 0; q < Q; ++q) _mm512_store_ps(dst + (q * MR + i) * NC + k, dm[q]);
    }
}

template <int Rt>
void dw_pack_b(const float* x, i64 cs, int c, const Geo& g, i64 j0, i64 kp, float* dst, float* tmp) {
  constexpr int Q = Rt + 1, L = 16;
  for (i64 k = 0; k < kp; k += L) {
    // The forward packer's panel for these 16 pairs: [channel][q][pair].
    if (g.d % 8 != 0)
      pack_perm<F32, Rt>(x, cs, g, c, j0 + k, L, tmp);
    else
      pack_runs<F32, Rt>(x, cs, g, c, j0 + k, L, tmp);
    for (int ch = c; ch < L; ++ch)
      for (int q = 0; q < Q; ++q) _mm512_store_ps(tmp + (ch * Q + q) * L, _mm512_setzero_ps());
    const i64 live = std::clamp<i64>(g.P - (j0 + k), 0, L);  // pairs that exist
    for (int q = 0; q < Q; ++q) {
      __m512 r[16];
      for (int ch = 0; ch < L; ++ch) r[ch] = _mm512_load_ps(tmp + (ch * Q + q) * L);
      avx512_util::transpose16(r);
      for (int l = 0; l < L; ++l)
        _mm512_store_ps(dst + ((k + l) * Q + q) * L, l < live ? r[l] : _mm512_setzero_ps());
    }
  }
}

template <int Rt>
void dw_tile(i64 kp, const float* __restrict a, const float* __restrict b, float* wp, i64 wp_rs, i64 q_stride) {
  constexpr int Q = Rt + 1, MR = w1d_detail::mr(Rt), NC = w1d_detail::nc_weight(Rt), L = 16;
  __m512 acc[Q][MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[q][i] = _mm512_setzero_ps();
#pragma GCC unroll 1
  for (i64 k = 0; k < kp; ++k) {
    __m512 u[Q];
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) u[q] = _mm512_load_ps(b + q * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q) acc[q][i] = _mm512_fmadd_ps(_mm512_set1_ps(a[(q * MR + i) * NC]), u[q], acc[q][i]);
    a += 1;
    b += Q * L;
  }
  for (int q = 0; q < Q; ++q)
    for (int i = 0; i < MR; ++i) {
      float* o = wp + q * q_stride + i * wp_rs;
      _mm512_store_ps(o, _mm512_add_ps(_mm512_load_ps(o), acc[q][i]));
    }
}

}  // namespace

void pack_f32(const float* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, float* dst) {
  pack_any<F32>(x, cs, g, kc, j0, nc, dst);
}
void pack_f64(const double* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, double* dst) {
  pack_any<F64>(x, cs, g, kc, j0, nc, dst);
}
void tile_f32(i64 kc, const float* a, const float* b, float* y, i64 y_rs, int m, i64 j0, const Geo& g, Store st,
              const float* bias) {
  tile_any<F32>(kc, a, b, y, y_rs, m, j0, g, st, bias);
}
void tile_f64(i64 kc, const double* a, const double* b, double* y, i64 y_rs, int m, i64 j0, const Geo& g,
              Store st, const double* bias) {
  tile_any<F64>(kc, a, b, y, y_rs, m, j0, g, st, bias);
}
void stream_fence() { _mm_sfence(); }

void dw_pack_a_f32(const float* dy, i64 rs, int m, const Geo& g, i64 j0, i64 kp, float* dst) {
  if (g.r == 2) return dw_pack_a<2>(dy, rs, m, g, j0, kp, dst);
  dw_pack_a<3>(dy, rs, m, g, j0, kp, dst);
}
void dw_pack_b_f32(const float* x, i64 cs, int c, const Geo& g, i64 j0, i64 kp, float* dst, float* tmp) {
  if (g.r == 2) return dw_pack_b<2>(x, cs, c, g, j0, kp, dst, tmp);
  dw_pack_b<3>(x, cs, c, g, j0, kp, dst, tmp);
}
void dw_tile_f32(i64 kp, const float* a, const float* b, float* wp, i64 wp_rs, i64 q_stride, int taps) {
  if (taps == 2) return dw_tile<2>(kp, a, b, wp, wp_rs, q_stride);
  dw_tile<3>(kp, a, b, wp, wp_rs, q_stride);
}

}  // namespace wino1d_avx512
}  // namespace pyconv
