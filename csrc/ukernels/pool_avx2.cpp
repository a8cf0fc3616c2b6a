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

#include <cstdint>

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

}  // namespace

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
