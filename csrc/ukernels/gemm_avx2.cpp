// AVX2 + FMA GEMM micro-kernels (this file alone is compiled with -mavx2 -mfma).
// Contract: see gemm_ukernel.h.
//   float32: 6 x 16 tile = 12 ymm accumulators, 2 ymm B loads and 1 broadcast of A per
//            row and k step.
//   float64: 6 x 8 tile, the same register arrangement with 4 doubles per ymm.
#include <immintrin.h>

#include <algorithm>
#include <chrono>

#include "fma_peak.h"
#include "gemm_ukernel.h"

namespace pyconv {
namespace gemm_detail {
namespace {  // internal linkage: never merged with the portable translation unit's code

struct PeakYmm {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
};

constexpr int kMR = 6;
constexpr int kNR32 = 16;
constexpr int kNR64 = 8;

// Vector traits so one kernel body serves both element types.
struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static V loadu(const T* p) { return _mm256_loadu_ps(p); }
  static void storeu(T* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(T* p, V v) { _mm256_store_ps(p, v); }
  static V bcast(const T* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
};
struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static V loadu(const T* p) { return _mm256_loadu_pd(p); }
  static void storeu(T* p, V v) { _mm256_storeu_pd(p, v); }
  static void store(T* p, V v) { _mm256_store_pd(p, v); }
  static V bcast(const T* p) { return _mm256_broadcast_sd(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
};

// 6 rows x (2 vectors) tile. NR = 2 * W.
template <class S>
void kernel_6x2v(i64 kc, const typename S::T* __restrict a, const typename S::T* __restrict b,
                 typename S::T* c, i64 c_rs, i64 c_cs, int m, int n, bool accumulate) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int NR = 2 * W;
  const bool full = (m == kMR && n == NR && c_cs == 1);
  if (full)
    for (int i = 0; i < kMR; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * c_rs), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * c_rs + NR - 1), _MM_HINT_T0);
    }
  V c00 = S::zero(), c01 = S::zero(), c10 = S::zero(), c11 = S::zero();
  V c20 = S::zero(), c21 = S::zero(), c30 = S::zero(), c31 = S::zero();
  V c40 = S::zero(), c41 = S::zero(), c50 = S::zero(), c51 = S::zero();
#define PYCONV_GEMM_STEP(A, B)                                         \
  {                                                                    \
    V b0 = S::load(B), b1 = S::load((B) + W), av;                      \
    av = S::bcast((A) + 0); c00 = S::fma(av, b0, c00); c01 = S::fma(av, b1, c01); \
    av = S::bcast((A) + 1); c10 = S::fma(av, b0, c10); c11 = S::fma(av, b1, c11); \
    av = S::bcast((A) + 2); c20 = S::fma(av, b0, c20); c21 = S::fma(av, b1, c21); \
    av = S::bcast((A) + 3); c30 = S::fma(av, b0, c30); c31 = S::fma(av, b1, c31); \
    av = S::bcast((A) + 4); c40 = S::fma(av, b0, c40); c41 = S::fma(av, b1, c41); \
    av = S::bcast((A) + 5); c50 = S::fma(av, b0, c50); c51 = S::fma(av, b1, c51); \
  }
  // One k step per iteration: GCC keeps all 12 accumulators, both B vectors and the
  // broadcast in registers this way (manual unrolling made it spill); the out-of-order
  // core overlaps consecutive iterations.
#pragma GCC unroll 1
  for (i64 k = 0; k < kc; ++k) {
    PYCONV_GEMM_STEP(a, b)
    a += kMR;
    b += NR;
  }
#undef PYCONV_GEMM_STEP
  if (full) {
    T* r = c;
    if (accumulate) {
      S::storeu(r, S::add(S::loadu(r), c00)); S::storeu(r + W, S::add(S::loadu(r + W), c01)); r += c_rs;
      S::storeu(r, S::add(S::loadu(r), c10)); S::storeu(r + W, S::add(S::loadu(r + W), c11)); r += c_rs;
      S::storeu(r, S::add(S::loadu(r), c20)); S::storeu(r + W, S::add(S::loadu(r + W), c21)); r += c_rs;
      S::storeu(r, S::add(S::loadu(r), c30)); S::storeu(r + W, S::add(S::loadu(r + W), c31)); r += c_rs;
      S::storeu(r, S::add(S::loadu(r), c40)); S::storeu(r + W, S::add(S::loadu(r + W), c41)); r += c_rs;
      S::storeu(r, S::add(S::loadu(r), c50)); S::storeu(r + W, S::add(S::loadu(r + W), c51));
    } else {
      S::storeu(r, c00); S::storeu(r + W, c01); r += c_rs;
      S::storeu(r, c10); S::storeu(r + W, c11); r += c_rs;
      S::storeu(r, c20); S::storeu(r + W, c21); r += c_rs;
      S::storeu(r, c30); S::storeu(r + W, c31); r += c_rs;
      S::storeu(r, c40); S::storeu(r + W, c41); r += c_rs;
      S::storeu(r, c50); S::storeu(r + W, c51);
    }
    return;
  }
  // Edge tile or strided C: spill the register tile, copy the valid corner.
  alignas(32) T t[kMR * NR];
  S::store(t + 0 * NR, c00); S::store(t + 0 * NR + W, c01);
  S::store(t + 1 * NR, c10); S::store(t + 1 * NR + W, c11);
  S::store(t + 2 * NR, c20); S::store(t + 2 * NR + W, c21);
  S::store(t + 3 * NR, c30); S::store(t + 3 * NR + W, c31);
  S::store(t + 4 * NR, c40); S::store(t + 4 * NR + W, c41);
  S::store(t + 5 * NR, c50); S::store(t + 5 * NR + W, c51);
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * c_rs;
    const T* ti = t + i * NR;
    if (accumulate)
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ci[j * c_cs] + ti[j];
    else
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ti[j];
  }
}

// Narrow variant for ragged last panels (n <= W): the same packed panels (row stride
// 2*W), only their first vector of columns computed, with the same per-element FMA
// sequence as kernel_6x2v, so results do not depend on which of the two ran.
template <class S>
void kernel_6x1v(i64 kc, const typename S::T* __restrict a, const typename S::T* __restrict b,
                 typename S::T* c, i64 c_rs, i64 c_cs, int m, int n, bool accumulate) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int NR = 2 * W;
  V c0 = S::zero(), c1 = S::zero(), c2 = S::zero(), c3 = S::zero(), c4 = S::zero(),
    c5 = S::zero();
#pragma GCC unroll 1
  for (i64 k = 0; k < kc; ++k) {
    V b0 = S::load(b);
    c0 = S::fma(S::bcast(a + 0), b0, c0);
    c1 = S::fma(S::bcast(a + 1), b0, c1);
    c2 = S::fma(S::bcast(a + 2), b0, c2);
    c3 = S::fma(S::bcast(a + 3), b0, c3);
    c4 = S::fma(S::bcast(a + 4), b0, c4);
    c5 = S::fma(S::bcast(a + 5), b0, c5);
    a += kMR;
    b += NR;
  }
  alignas(32) T t[kMR * W];
  S::store(t + 0 * W, c0); S::store(t + 1 * W, c1); S::store(t + 2 * W, c2);
  S::store(t + 3 * W, c3); S::store(t + 4 * W, c4); S::store(t + 5 * W, c5);
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * c_rs;
    const T* ti = t + i * W;
    if (accumulate)
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ci[j * c_cs] + ti[j];
    else
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ti[j];
  }
}

// In-register 8x8 transpose: r[i] lane j  ->  r[j] lane i.
inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// In-register 4x4 transpose of doubles.
inline void transpose4(__m256d r[4]) {
  __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20); r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31); r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

}  // namespace

void avx2_pack_b_t_f32(float* dst, const float* p, i64 cs, i64 k0, i64 kc, i64 j0, i64 nc) {
  constexpr int NR = kNR32;
  for (i64 p0 = 0; p0 < nc; p0 += NR) {
    float* panel = dst + (p0 / NR) * kc * NR;
    const float* src = p + k0 + (j0 + p0) * cs;
    const i64 w = std::min<i64>(NR, nc - p0);
    if (w < NR) {  // ragged last panel: plain copies, zero fill
      for (i64 k = 0; k < kc; ++k) {
        for (i64 r = 0; r < w; ++r) panel[k * NR + r] = src[r * cs + k];
        for (i64 r = w; r < NR; ++r) panel[k * NR + r] = 0.0f;
      }
      continue;
    }
    for (int h = 0; h < NR; h += 8) {
      const float* s = src + h * cs;
      i64 k = 0;
      for (; k + 8 <= kc; k += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * cs + k);
        transpose8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (k + i) * NR + h, r[i]);
      }
      for (; k < kc; ++k)
        for (int i = 0; i < 8; ++i) panel[k * NR + h + i] = s[i * cs + k];
    }
  }
}

void avx2_pack_b_t_f64(double* dst, const double* p, i64 cs, i64 k0, i64 kc, i64 j0, i64 nc) {
  constexpr int NR = kNR64;
  for (i64 p0 = 0; p0 < nc; p0 += NR) {
    double* panel = dst + (p0 / NR) * kc * NR;
    const double* src = p + k0 + (j0 + p0) * cs;
    const i64 w = std::min<i64>(NR, nc - p0);
    if (w < NR) {
      for (i64 k = 0; k < kc; ++k) {
        for (i64 r = 0; r < w; ++r) panel[k * NR + r] = src[r * cs + k];
        for (i64 r = w; r < NR; ++r) panel[k * NR + r] = 0.0;
      }
      continue;
    }
    for (int h = 0; h < NR; h += 4) {
      const double* s = src + h * cs;
      i64 k = 0;
      for (; k + 4 <= kc; k += 4) {
        __m256d r[4];
        for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(s + i * cs + k);
        transpose4(r);
        for (int i = 0; i < 4; ++i) _mm256_storeu_pd(panel + (k + i) * NR + h, r[i]);
      }
      for (; k < kc; ++k)
        for (int i = 0; i < 4; ++i) panel[k * NR + h + i] = s[i * cs + k];
    }
  }
}

void avx2_pack_a_f32(float* dst, const float* a, i64 a_rs, i64 i0, i64 mc, i64 k0, i64 kc) {
  for (i64 ir = 0; ir < mc; ir += kMR) {
    const i64 m = std::min<i64>(kMR, mc - ir);
    float* d = dst + ir * kc;
    const float* src = a + (i0 + ir) * a_rs + k0;
    if (m < kMR) {  // ragged last micro-panel: plain copies, zero rows
      for (i64 k = 0; k < kc; ++k)
        for (i64 i = 0; i < kMR; ++i) d[k * kMR + i] = i < m ? src[i * a_rs + k] : 0.0f;
      continue;
    }
    i64 k = 0;
    for (; k + 8 <= kc; k += 8) {
      __m256 r[8];
      for (int i = 0; i < kMR; ++i) r[i] = _mm256_loadu_ps(src + i * a_rs + k);
      r[6] = r[7] = _mm256_setzero_ps();
      transpose8(r);  // r[kk] lanes 0..5 = A(0..5, k+kk)
      // 8-wide stores in increasing k: lanes 6 and 7 land where the next store writes.
      for (int kk = 0; kk < 7; ++kk) _mm256_storeu_ps(d + (k + kk) * kMR, r[kk]);
      float* last = d + (k + 7) * kMR;
      _mm_storeu_ps(last, _mm256_castps256_ps128(r[7]));
      _mm_storel_pi(reinterpret_cast<__m64*>(last + 4), _mm256_extractf128_ps(r[7], 1));
    }
    for (; k < kc; ++k)
      for (int i = 0; i < kMR; ++i) d[k * kMR + i] = src[i * a_rs + k];
  }
}

void avx2_pack_a_f64(double* dst, const double* a, i64 a_rs, i64 i0, i64 mc, i64 k0, i64 kc) {
  for (i64 ir = 0; ir < mc; ir += kMR) {
    const i64 m = std::min<i64>(kMR, mc - ir);
    double* d = dst + ir * kc;
    const double* src = a + (i0 + ir) * a_rs + k0;
    if (m < kMR) {
      for (i64 k = 0; k < kc; ++k)
        for (i64 i = 0; i < kMR; ++i) d[k * kMR + i] = i < m ? src[i * a_rs + k] : 0.0;
      continue;
    }
    i64 k = 0;
    for (; k + 4 <= kc; k += 4) {
      __m256d lo[4], hi[4];
      for (int i = 0; i < 4; ++i) lo[i] = _mm256_loadu_pd(src + i * a_rs + k);
      hi[0] = _mm256_loadu_pd(src + 4 * a_rs + k);
      hi[1] = _mm256_loadu_pd(src + 5 * a_rs + k);
      hi[2] = hi[3] = _mm256_setzero_pd();
      transpose4(lo);  // lo[kk] = A(0..3, k+kk)
      transpose4(hi);  // hi[kk] lanes 0..1 = A(4..5, k+kk)
      for (int kk = 0; kk < 4; ++kk) {
        _mm256_storeu_pd(d + (k + kk) * kMR, lo[kk]);
        _mm_storeu_pd(d + (k + kk) * kMR + 4, _mm256_castpd256_pd128(hi[kk]));
      }
    }
    for (; k < kc; ++k)
      for (int i = 0; i < kMR; ++i) d[k * kMR + i] = src[i * a_rs + k];
  }
}

GemmKernel<float> avx2_kernel_f32() {
  return {&kernel_6x2v<F32>, GemmBlocking{kMR, kNR32, 144, 256, 4080}, &kernel_6x1v<F32>,
          kNR32 / 2};
}
GemmKernel<double> avx2_kernel_f64() {
  return {&kernel_6x2v<F64>, GemmBlocking{kMR, kNR64, 72, 256, 4080}, &kernel_6x1v<F64>,
          kNR64 / 2};
}

double avx2_fma_peak_gflops(int threads, double seconds) {
  return fma_peak_loop<PeakYmm>(threads, seconds);
}

}  // namespace gemm_detail
}  // namespace pyconv
