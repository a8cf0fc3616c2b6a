// AVX2 kernels for max-pool forward (compiled with -mavx2 -mfma; reached only through the
// run-time dispatcher in pool.cpp).
//
// A row kernel computes L consecutive outputs of one output row per step (L = 8 floats
// or 4 doubles), vectorised along W. Each window tap (tap row r, tap column kw) is one
// vector: with stride 1 a plain unaligned load, with stride 2 the even elements of 15
// (floats) or 7 (doubles) consecutive elements, so nothing past the last needed element
// is read. Stride-2 vectors hold their lanes in a fixed permuted order, undone once at
// the store. The running maximum starts at tap 0 and is replaced where
// `v > max (ordered) || isnan(v)`, exactly the scalar rule; the winning tap's offset is
// blended alongside (a lane-independent constant per tap) and turned into the int64
// index at the store: row base + output column * stride + tap offset.
#include <immintrin.h>
#include <type_traits>

#include <cstdint>
#include <cstring>

#include "params.h"
#include "pool.h"

namespace pyconv {
namespace pool_avx2 {
namespace {

using pool_detail::kMaxVectorTaps;

struct F32 {
  using T = float;
  using V = __m256;
  using Off = __m256i;  // int32 tap offsets (the dispatcher checks they fit)
  static constexpr int L = 8;

  template <int SW>
  static V load(const float* p) {
    if (SW == 1) return _mm256_loadu_ps(p);
    // p[0..7] and p[7..14]; evens -> lanes hold outputs [0 1 4 5 2 3 6 7].
    V a = _mm256_loadu_ps(p);
    V b = _mm256_loadu_ps(p + 7);
    return _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 2, 0));
  }
  static V update_mask(V v, V m) {
    return _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static V blend(V a, V b, V mask) { return _mm256_blendv_ps(a, b, mask); }
  static Off off_set(i64 o) { return _mm256_set1_epi32(static_cast<int>(o)); }
  static Off blend_off(Off a, Off b, V mask) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), mask));
  }
  template <int SW>
  static void store(float* y, V m) {
    if (SW == 2)
      m = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), _MM_SHUFFLE(3, 1, 2, 0)));
    _mm256_storeu_ps(y, m);
  }
  // idx[j] = base + j*SW + off[j]
  template <int SW>
  static void store_idx(i64* idx, Off off, i64 base) {
    if (SW == 2) off = _mm256_permute4x64_epi64(off, _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i step = _mm256_set_epi64x(3 * SW, 2 * SW, SW, 0);
    __m256i b0 = _mm256_add_epi64(_mm256_set1_epi64x(base), step);
    __m256i b1 = _mm256_add_epi64(_mm256_set1_epi64x(base + 4 * SW), step);
    __m256i lo = _mm256_add_epi64(b0, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(off)));
    __m256i hi = _mm256_add_epi64(b1, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(off, 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + 4), hi);
  }
};

struct F64 {
  using T = double;
  using V = __m256d;
  using Off = __m256i;  // int64 tap offsets
  static constexpr int L = 4;

  template <int SW>
  static V load(const double* p) {
    if (SW == 1) return _mm256_loadu_pd(p);
    // p[0..3] and p[3..6]; evens -> lanes hold outputs [0 2 1 3].
    V a = _mm256_loadu_pd(p);
    V b = _mm256_loadu_pd(p + 3);
    return _mm256_shuffle_pd(a, b, 0xA);
  }
  static V update_mask(V v, V m) {
    return _mm256_or_pd(_mm256_cmp_pd(v, m, _CMP_GT_OQ), _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
  }
  static V blend(V a, V b, V mask) { return _mm256_blendv_pd(a, b, mask); }
  static Off off_set(i64 o) { return _mm256_set1_epi64x(o); }
  static Off blend_off(Off a, Off b, V mask) {
    return _mm256_castpd_si256(
        _mm256_blendv_pd(_mm256_castsi256_pd(a), _mm256_castsi256_pd(b), mask));
  }
  template <int SW>
  static void store(double* y, V m) {
    if (SW == 2) m = _mm256_permute4x64_pd(m, _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_storeu_pd(y, m);
  }
  template <int SW>
  static void store_idx(i64* idx, Off off, i64 base) {
    if (SW == 2) off = _mm256_permute4x64_epi64(off, _MM_SHUFFLE(3, 1, 2, 0));
    const __m256i step = _mm256_set_epi64x(3 * SW, 2 * SW, SW, 0);
    __m256i b0 = _mm256_add_epi64(_mm256_set1_epi64x(base), step);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx), _mm256_add_epi64(b0, off));
  }
};

// NT > 0: the tap count is the compile-time constant NT (the caller checked it).
template <class Tr, int SW, int NT, bool IDX>
void row_impl(const pool_detail::RowTask<typename Tr::T>& t) {
  using T = typename Tr::T;
  using V = typename Tr::V;
  using Off = typename Tr::Off;
  constexpr int L = Tr::L;
  const int nt = NT > 0 ? NT : static_cast<int>(t.nrows * t.kW);
  i64 toff[NT > 0 ? NT : kMaxVectorTaps];
  {
    int i = 0;
    for (i64 r = 0; r < t.nrows; ++r)
      for (i64 kw = 0; kw < t.kW; ++kw) toff[i++] = r * t.row_step + kw * t.dW;
  }
  const i64 base0 = t.row0 * t.W - t.pW;  // flat index of tap 0 for output column 0
  // Running (max, tap offset) of the taps combined so far, updated by a later tap or
  // group of taps: the later side wins where it is greater or NaN. This combine is
  // associative (the winner of a group is its last NaN if any, else its first maximum),
  // so taps may be grouped freely as long as earlier groups stay on the left.
  auto combine = [](V& m, Off& off, V v, Off o) {
    V upd = Tr::update_mask(v, m);
    m = Tr::blend(m, v, upd);
    if (IDX) off = Tr::blend_off(off, o, upd);
  };
  auto step = [&](i64 ow) {
    const T* p = t.x + (base0 + ow * SW);
    V m = Tr::template load<SW>(p);
    Off off = Tr::off_set(0);
    if (NT == 4 || NT == 9) {
      // Fixed square windows (2x2, 3x3): reduce each tap row on its own, then the rows,
      // which shortens the dependency chain from NT-1 combines to 2*(R-1).
      constexpr int R = NT == 4 ? 2 : 3;
      V mr[R];
      Off orow[R];
      mr[0] = m;
      orow[0] = off;
      for (int r = 1; r < R; ++r) {
        mr[r] = Tr::template load<SW>(p + toff[r * R]);
        orow[r] = Tr::off_set(toff[r * R]);
      }
      for (int c = 1; c < R; ++c)
        for (int r = 0; r < R; ++r)
          combine(mr[r], orow[r], Tr::template load<SW>(p + toff[r * R + c]),
                  Tr::off_set(toff[r * R + c]));
      m = mr[0];
      off = orow[0];
      for (int r = 1; r < R; ++r) combine(m, off, mr[r], orow[r]);
    } else {
      for (int i = 1; i < nt; ++i) combine(m, off, Tr::template load<SW>(p + toff[i]), Tr::off_set(toff[i]));
    }
    Tr::template store<SW>(t.y + ow, m);
    if (IDX) Tr::template store_idx<SW>(t.idx + ow, off, base0 + ow * SW);
  };
  i64 ow = t.ow_a;
  for (; ow + L <= t.ow_b; ow += L) step(ow);
  // Last partial step: recompute an overlapping full step (same values, same writes).
  if (ow < t.ow_b) step(t.ow_b - L);
}

template <class Tr, int SW, int NT>
void row_dispatch(const pool_detail::RowTask<typename Tr::T>& t, bool want_idx) {
  if (NT > 0 && t.nrows * t.kW == NT) {
    if (want_idx)
      row_impl<Tr, SW, NT, true>(t);
    else
      row_impl<Tr, SW, NT, false>(t);
  } else {
    if (want_idx)
      row_impl<Tr, SW, 0, true>(t);
    else
      row_impl<Tr, SW, 0, false>(t);
  }
}

// ---- backward of 2x2 stride-2 windows: each output row pair built in registers.

// Zeroes out[a, b).
template <typename T>
inline void zero_range(T* out, i64 a, i64 b) {
  for (i64 i = a; i < b; ++i) out[i] = T(0);
}

// One output (scalar): false if its index is not in its window.
template <typename T>
inline bool bwd_2x2_one(T gv, i64 j, i64 base, i64 W, T* r0, T* r1, i64 c) {
  if (j < base || j > base + W + 1) return false;  // also keeps j - base from overflowing
  const i64 rel = j - base;
  const bool e0 = rel == 0, e1 = rel == 1, eW = rel == W, eW1 = rel == W + 1;
  if (!(e0 | e1 | eW | eW1)) return false;
  // v where the index points, +0 elsewhere, by masks (which of the four is random on
  // real data: branches here mispredict about every other output)
  using U = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
  const T v = gv + T(0);
  U b;
  std::memcpy(&b, &v, sizeof(T));
  auto put = [&](T* dst, bool e) {
    const U m = b & (U(0) - static_cast<U>(e));
    std::memcpy(dst, &m, sizeof(T));
  };
  put(r0 + c, e0);
  put(r0 + c + 1, e1);
  put(r1 + c, eW);
  put(r1 + c + 1, eW1);
  return true;
}

template <typename T, typename Step>
inline bool bwd_2x2_rows(const T* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W, T* out,
                         int lanes, Step&& step) {
  for (i64 oh = oh0; oh < oh1; ++oh) {
    T* r0 = out + 2 * oh * W;
    T* r1 = r0 + W;
    const T* gr = g + oh * wo;
    const i64* ir = idx + oh * wo;
    const i64 rbase = 2 * oh * W;
    // the index and grad streams, a few rows ahead (prefetches never fault)
    {
      constexpr i64 kAhead = 1024;
      const char* pi = reinterpret_cast<const char*>(ir + kAhead);
      const char* pg = reinterpret_cast<const char*>(gr + kAhead);
      const i64 ib = wo * 8, gb = wo * static_cast<i64>(sizeof(T));
      for (i64 o = 0; o < ib; o += 64) _mm_prefetch(pi + o, _MM_HINT_T0);
      for (i64 o = 0; o < gb; o += 64) _mm_prefetch(pg + o, _MM_HINT_T0);
    }
    i64 ow = 0;
    for (; ow + lanes <= wo; ow += lanes)
      if (!step(gr + ow, ir + ow, rbase + 2 * ow, r0 + 2 * ow, r1 + 2 * ow)) return false;
    for (; ow < wo; ++ow)
      if (!bwd_2x2_one<T>(gr[ow], ir[ow], rbase + 2 * ow, W, r0, r1, 2 * ow)) return false;
    zero_range(r0, 2 * wo, W);
    zero_range(r1, 2 * wo, W);
  }
  return true;
}

}  // namespace

bool bwd_2x2_rows_f32(const float* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W, float* out) {
  const __m256i step64 = _mm256_set_epi64x(6, 4, 2, 0);
  const __m256i lim = _mm256_set1_epi64x(W + 1);
  const __m256i zero64 = _mm256_setzero_si256();
  const __m256i lows = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i c1 = _mm256_set1_epi32(1), cW = _mm256_set1_epi32(static_cast<int>(W)),
                cW1 = _mm256_set1_epi32(static_cast<int>(W + 1));
  const __m256 zf = _mm256_setzero_ps();
  return bwd_2x2_rows<float>(g, idx, oh0, oh1, wo, W, out, 8,
                              [&](const float* gp, const i64* ip, i64 base, float* r0, float* r1) {
    const __m256i b0 = _mm256_add_epi64(_mm256_set1_epi64x(base), step64);
    const __m256i b1 = _mm256_add_epi64(_mm256_set1_epi64x(base + 8), step64);
    const __m256i rel0 = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ip)), b0);
    const __m256i rel1 = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ip + 4)), b1);
    const __m256i out_of_range =
        _mm256_or_si256(_mm256_or_si256(_mm256_cmpgt_epi64(rel0, lim), _mm256_cmpgt_epi64(zero64, rel0)),
                        _mm256_or_si256(_mm256_cmpgt_epi64(rel1, lim), _mm256_cmpgt_epi64(zero64, rel1)));
    if (!_mm256_testz_si256(out_of_range, out_of_range)) return false;
    // every rel is in [0, W+1]: its low 32 bits are the value
    const __m256i rel = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(rel0, lows),
                                                  _mm256_permutevar8x32_epi32(rel1, lows), 0x20);
    const __m256 e0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(rel, zero64));
    const __m256 e1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(rel, c1));
    const __m256 eW = _mm256_castsi256_ps(_mm256_cmpeq_epi32(rel, cW));
    const __m256 eW1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(rel, cW1));
    const __m256 any = _mm256_or_ps(_mm256_or_ps(e0, e1), _mm256_or_ps(eW, eW1));
    if (_mm256_movemask_ps(any) != 0xFF) return false;
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(gp), zf);  // 0 + g, as the scatter-add
    auto put = [&](float* r, __m256 ev, __m256 od) {
      const __m256 a = _mm256_and_ps(ev, v), b = _mm256_and_ps(od, v);
      const __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
      _mm256_storeu_ps(r, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(r + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    };
    put(r0, e0, e1);
    put(r1, eW, eW1);
    return true;
  });
}

bool bwd_2x2_rows_f64(const double* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W,
                      double* out) {
  const __m256i step64 = _mm256_set_epi64x(6, 4, 2, 0);
  const __m256i c0 = _mm256_setzero_si256(), c1 = _mm256_set1_epi64x(1),
                cW = _mm256_set1_epi64x(W), cW1 = _mm256_set1_epi64x(W + 1);
  const __m256d zd = _mm256_setzero_pd();
  return bwd_2x2_rows<double>(g, idx, oh0, oh1, wo, W, out, 4,
                               [&](const double* gp, const i64* ip, i64 base, double* r0, double* r1) {
    const __m256i rel = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ip)),
                                         _mm256_add_epi64(_mm256_set1_epi64x(base), step64));
    const __m256d e0 = _mm256_castsi256_pd(_mm256_cmpeq_epi64(rel, c0));
    const __m256d e1 = _mm256_castsi256_pd(_mm256_cmpeq_epi64(rel, c1));
    const __m256d eW = _mm256_castsi256_pd(_mm256_cmpeq_epi64(rel, cW));
    const __m256d eW1 = _mm256_castsi256_pd(_mm256_cmpeq_epi64(rel, cW1));
    const __m256d any = _mm256_or_pd(_mm256_or_pd(e0, e1), _mm256_or_pd(eW, eW1));
    if (_mm256_movemask_pd(any) != 0xF) return false;
    const __m256d v = _mm256_add_pd(_mm256_loadu_pd(gp), zd);
    auto put = [&](double* r, __m256d ev, __m256d od) {
      const __m256d a = _mm256_and_pd(ev, v), b = _mm256_and_pd(od, v);
      const __m256d lo = _mm256_unpacklo_pd(a, b), hi = _mm256_unpackhi_pd(a, b);
      _mm256_storeu_pd(r, _mm256_permute2f128_pd(lo, hi, 0x20));
      _mm256_storeu_pd(r + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
    };
    put(r0, e0, e1);
    put(r1, eW, eW1);
    return true;
  });
}

namespace {
// dst[idx[i]] += src[i] for i in [0, n) in order, after checking the whole block of
// indices against [0, limit) with vector compares (nothing is written if one is bad).
template <typename T>
inline bool scatter_add_block(const T* src, const i64* idx, i64 n, i64 limit, T* dst) {
  constexpr i64 kAhead = 1024;
  const __m256i lim = _mm256_set1_epi64x(limit - 1);
  const __m256i zero = _mm256_setzero_si256();
  __m256i bad = _mm256_setzero_si256();
  i64 i = 0;
  for (; i + 4 <= n; i += 4) {
    // the streams run ahead of the hardware prefetcher's reach: ask for the lines a few
    // blocks ahead (prefetches never fault, so running past the arrays is harmless)
    if ((i & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(idx + i + kAhead), _MM_HINT_T0);
    if ((i & 15) == 0)
      _mm_prefetch(reinterpret_cast<const char*>(src + i + kAhead), _MM_HINT_T0);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + i));
    bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi64(v, lim), _mm256_cmpgt_epi64(zero, v)));
  }
  std::uint64_t tail_bad = 0;
  for (; i < n; ++i)
    tail_bad |= static_cast<std::uint64_t>(idx[i]) >= static_cast<std::uint64_t>(limit);
  if (!_mm256_testz_si256(bad, bad) || tail_bad) return false;
  i = 0;
  for (; i + 4 <= n; i += 4) {
    const i64 j0 = idx[i], j1 = idx[i + 1], j2 = idx[i + 2], j3 = idx[i + 3];
    dst[j0] += src[i];
    dst[j1] += src[i + 1];
    dst[j2] += src[i + 2];
    dst[j3] += src[i + 3];
  }
  for (; i < n; ++i) dst[idx[i]] += src[i];
  return true;
}
}  // namespace

bool scatter_add_block_f32(const float* src, const i64* idx, i64 n, i64 limit, float* dst) {
  return scatter_add_block<float>(src, idx, n, limit, dst);
}
bool scatter_add_block_f64(const double* src, const i64* idx, i64 n, i64 limit, double* dst) {
  return scatter_add_block<double>(src, idx, n, limit, dst);
}

void stream_lines(void* dst, void* src, i64 lines, bool zero_src) {
  char* d = static_cast<char*>(dst);
  char* s = static_cast<char*>(src);
  const __m256i z = _mm256_setzero_si256();
  for (i64 i = 0; i < lines * 64; i += 64) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32), b);
    if (zero_src) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + i), z);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + i + 32), z);
    }
  }
}

void store_fence() { _mm_sfence(); }

void tiny_2x2_f32(const float* x, i64 o0, i64 o1, i64 W, i64 Wo, i64 ohw, float* y, i64* idx) {
  // global output o (plane o / ohw, local q = o % ohw, column j = q % Wo) has its top-left
  // tap at 4 * o - 2 * j in x and at 4 * q - 2 * j within its plane; for a batch at o
  // (a multiple of 8) of phase o % ohw, lane l: x offset 4 * o + g[l], local l[l]
  alignas(32) int gpat[8][8], lpat[8][8];
  for (i64 ph = 0; ph < ohw; ++ph)
    for (int l = 0; l < 8; ++l) {
      const int q = static_cast<int>((ph + l) % ohw), j = static_cast<int>((ph + l) % Wo);
      gpat[ph][l] = 4 * l - 2 * j;
      lpat[ph][l] = 4 * q - 2 * j;
    }
  const __m256i c1 = _mm256_set1_epi32(1), cW = _mm256_set1_epi32(static_cast<int>(W)),
                cW1 = _mm256_set1_epi32(static_cast<int>(W + 1));
  const i64 full = o0 + (o1 - o0) / 8 * 8;
  i64 o = o0;
  for (; o < full; o += 8) {
    const i64 ph = o % ohw;
    const float* xb = x + 4 * o;
    const __m256i g = _mm256_load_si256(reinterpret_cast<const __m256i*>(gpat[ph]));
    __m256 best = _mm256_i32gather_ps(xb, g, 4);
    __m256i sel = _mm256_setzero_si256();
    auto tap = [&](__m256i t) {
      const __m256 v = _mm256_i32gather_ps(xb, _mm256_add_epi32(g, t), 4);
      const __m256 take =
          _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      best = _mm256_blendv_ps(best, v, take);
      sel = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(sel), _mm256_castsi256_ps(t), take));
    };
    tap(c1);
    tap(cW);
    tap(cW1);
    _mm256_storeu_ps(y + o, best);
    if (idx) {
      const __m256i bi =
          _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(lpat[ph])), sel);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + o),
                          _mm256_cvtepi32_epi64(_mm256_castsi256_si128(bi)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + o + 4),
                          _mm256_cvtepi32_epi64(_mm256_extracti128_si256(bi, 1)));
    }
  }
  for (; o < o1; ++o) {
    const i64 q = o % ohw, j = q % Wo;
    const float* xb = x + 4 * o - 2 * j;  // top-left tap
    const i64 offs[4] = {0, 1, W, W + 1};
    float best = xb[0];
    i64 bi = 0;
    for (int t = 1; t < 4; ++t) {
      const float v = xb[offs[t]];
      if (v > best || v != v) {
        best = v;
        bi = offs[t];
      }
    }
    y[o] = best;
    if (idx) idx[o] = 4 * q - 2 * j + bi;
  }
}

void small_2x2_f32(const float* x, i64 planes, i64 H, i64 W, i64 Ho, i64 Wo, float* y, i64* idx) {
  const i64 ohw = Ho * Wo;
  // output o of a plane (row o / Wo, column j = o % Wo) has its top-left tap at
  // 2 * (o / Wo) * W + 2 * j = 4 * o - 2 * j (W == 2 * Wo); the batch starting at o0
  // (a multiple of 8) has the lane offsets 4 * lane - 2 * ((o0 + lane) % Wo), one
  // pattern per phase o0 % Wo
  alignas(32) int pat[8][8];
  for (i64 ph = 0; ph < Wo; ++ph)
    for (int l = 0; l < 8; ++l) pat[ph][l] = 4 * l - 2 * static_cast<int>((ph + l) % Wo);
  const __m256i c1 = _mm256_set1_epi32(1), cW = _mm256_set1_epi32(static_cast<int>(W)),
                cW1 = _mm256_set1_epi32(static_cast<int>(W + 1));
  const i64 full = ohw / 8 * 8;
  for (i64 pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * H * W;
    float* yp = y + pl * ohw;
    i64* ip = idx ? idx + pl * ohw : nullptr;
    for (i64 o0 = 0; o0 < full; o0 += 8) {
      const __m256i off = _mm256_add_epi32(
          _mm256_set1_epi32(static_cast<int>(4 * o0)),
          _mm256_load_si256(reinterpret_cast<const __m256i*>(pat[o0 % Wo])));
      __m256 best = _mm256_i32gather_ps(xp, off, 4);
      __m256i bi = off;
      auto tap = [&](__m256i o) {
        const __m256 v = _mm256_i32gather_ps(xp, o, 4);
        const __m256 take =
            _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        best = _mm256_blendv_ps(best, v, take);
        bi = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(o), take));
      };
      tap(_mm256_add_epi32(off, c1));
      tap(_mm256_add_epi32(off, cW));
      tap(_mm256_add_epi32(off, cW1));
      _mm256_storeu_ps(yp + o0, best);
      if (ip) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ip + o0),
                            _mm256_cvtepi32_epi64(_mm256_castsi256_si128(bi)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ip + o0 + 4),
                            _mm256_cvtepi32_epi64(_mm256_extracti128_si256(bi, 1)));
      }
    }
    for (i64 o = full; o < ohw; ++o) {
      const i64 j = o % Wo;
      const i64 t0 = 4 * o - 2 * j;
      const i64 taps[4] = {t0, t0 + 1, t0 + W, t0 + W + 1};
      float best = xp[t0];
      i64 bi = t0;
      for (int t = 1; t < 4; ++t) {
        const float v = xp[taps[t]];
        if (v > best || v != v) {
          best = v;
          bi = taps[t];
        }
      }
      yp[o] = best;
      if (ip) ip[o] = bi;
    }
  }
}

void row_s2_f32_taps4(const RowTask<float>& t, bool w) { row_dispatch<F32, 2, 4>(t, w); }
void row_s2_f32_taps9(const RowTask<float>& t, bool w) { row_dispatch<F32, 2, 9>(t, w); }
void row_s2_f32(const RowTask<float>& t, bool w) { row_dispatch<F32, 2, 0>(t, w); }
void row_s1_f32(const RowTask<float>& t, bool w) { row_dispatch<F32, 1, 0>(t, w); }
void row_s2_f64_taps4(const RowTask<double>& t, bool w) { row_dispatch<F64, 2, 4>(t, w); }
void row_s2_f64_taps9(const RowTask<double>& t, bool w) { row_dispatch<F64, 2, 9>(t, w); }
void row_s2_f64(const RowTask<double>& t, bool w) { row_dispatch<F64, 2, 0>(t, w); }
void row_s1_f64(const RowTask<double>& t, bool w) { row_dispatch<F64, 1, 0>(t, w); }

}  // namespace pool_avx2
}  // namespace pyconv
