// AVX2 + FMA GEMM micro-kernels (this file alone is compiled with -mavx2 -mfma).
// Contract: see gemm_ukernel.h.
//   float32: 6 x 16 tile = 12 ymm accumulators, 2 ymm B loads and 1 broadcast of A per
//            row and k step.
//   float64: 6 x 8 tile, the same register arrangement with 4 doubles per ymm.
#include <immintrin.h>

#include <chrono>

#include "gemm_ukernel.h"

namespace pyconv {
namespace gemm_detail {
namespace {  // internal linkage: never merged with the portable translation unit's code

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

}  // namespace

GemmKernel<float> avx2_kernel_f32() {
  return {&kernel_6x2v<F32>, GemmBlocking{kMR, kNR32, 144, 256, 4080}};
}
GemmKernel<double> avx2_kernel_f64() {
  return {&kernel_6x2v<F64>, GemmBlocking{kMR, kNR64, 72, 256, 4080}};
}

double avx2_fma_peak_gflops(int threads, double seconds) {
  using clock = std::chrono::steady_clock;
  double total_flops = 0;
  auto t0 = clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total_flops)
  {
    __m256 x0 = _mm256_set1_ps(1.00f), x1 = _mm256_set1_ps(1.01f), x2 = _mm256_set1_ps(1.02f);
    __m256 x3 = _mm256_set1_ps(1.03f), x4 = _mm256_set1_ps(1.04f), x5 = _mm256_set1_ps(1.05f);
    __m256 x6 = _mm256_set1_ps(1.06f), x7 = _mm256_set1_ps(1.07f), x8 = _mm256_set1_ps(1.08f);
    __m256 x9 = _mm256_set1_ps(1.09f), x10 = _mm256_set1_ps(1.10f), x11 = _mm256_set1_ps(1.11f);
    const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-6f);
    long long iters = 0;
    auto start = clock::now();
    for (;;) {
      for (int r = 0; r < 16384; ++r) {
        x0 = _mm256_fmadd_ps(x0, mul, add); x1 = _mm256_fmadd_ps(x1, mul, add);
        x2 = _mm256_fmadd_ps(x2, mul, add); x3 = _mm256_fmadd_ps(x3, mul, add);
        x4 = _mm256_fmadd_ps(x4, mul, add); x5 = _mm256_fmadd_ps(x5, mul, add);
        x6 = _mm256_fmadd_ps(x6, mul, add); x7 = _mm256_fmadd_ps(x7, mul, add);
        x8 = _mm256_fmadd_ps(x8, mul, add); x9 = _mm256_fmadd_ps(x9, mul, add);
        x10 = _mm256_fmadd_ps(x10, mul, add); x11 = _mm256_fmadd_ps(x11, mul, add);
        // Opaque to the optimiser: the chains must really run every iteration.
        __asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5));
        __asm__ volatile("" : "+x"(x6), "+x"(x7), "+x"(x8), "+x"(x9), "+x"(x10), "+x"(x11));
      }
      iters += 16384;
      if (std::chrono::duration<double>(clock::now() - start).count() >= seconds) break;
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
                             _mm256_add_ps(_mm256_add_ps(x4, x5), _mm256_add_ps(x6, x7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(x8, x9), _mm256_add_ps(x10, x11)));
    alignas(32) float out[8];
    _mm256_store_ps(out, s);
    volatile float sink = out[0];
    (void)sink;
    total_flops += 12.0 * 8.0 * 2.0 * static_cast<double>(iters);
  }
  double dt = std::chrono::duration<double>(clock::now() - t0).count();
  return dt > 0 ? total_flops / dt * 1e-9 : 0.0;
}

}  // namespace gemm_detail
}  // namespace pyconv
