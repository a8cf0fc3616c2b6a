// Portable GEMM micro-kernels (baseline compiler flags): the reference path every fast
// kernel is tested against, and the fallback on CPUs without AVX2. Contract: see
// gemm_ukernel.h.
#include <chrono>

#include "gemm_ukernel.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {
namespace gemm_detail {
namespace {  // internal linkage: never merged with the AVX2 translation unit's code

constexpr int kScalarMR = 4;
constexpr int kScalarNR = 8;

template <typename T>
void scalar_kernel(i64 kc, const T* a, const T* b, T* c, i64 c_rs, i64 c_cs, int m, int n,
                   bool accumulate) {
  T acc[kScalarMR][kScalarNR];
  for (int i = 0; i < kScalarMR; ++i)
    for (int j = 0; j < kScalarNR; ++j) acc[i][j] = T(0);
  for (i64 k = 0; k < kc; ++k) {
    const T* ak = a + k * kScalarMR;
    const T* bk = b + k * kScalarNR;
    for (int i = 0; i < kScalarMR; ++i) {
      T ai = ak[i];
      for (int j = 0; j < kScalarNR; ++j) {
        T prod = ai * bk[j];
        acc[i][j] = acc[i][j] + prod;
      }
    }
  }
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * c_rs;
    if (accumulate)
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ci[j * c_cs] + acc[i][j];
    else
      for (int j = 0; j < n; ++j) ci[j * c_cs] = acc[i][j];
  }
}

}  // namespace

GemmKernel<float> scalar_kernel_f32() {
  return {&scalar_kernel<float>, GemmBlocking{kScalarMR, kScalarNR, 128, 256, 2048}};
}
GemmKernel<double> scalar_kernel_f64() {
  return {&scalar_kernel<double>, GemmBlocking{kScalarMR, kScalarNR, 64, 256, 2048}};
}

double scalar_peak_gflops(int threads, double seconds) {
  using clock = std::chrono::steady_clock;
  double total_flops = 0;
  auto t0 = clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total_flops)
  {
    float x[12];
    for (int i = 0; i < 12; ++i) x[i] = 1.0f + 0.01f * static_cast<float>(i);
    const float mul = 0.999999f, add = 1e-6f;
    long long iters = 0;
    auto start = clock::now();
    for (;;) {
      for (int r = 0; r < 4096; ++r)
      {
        for (int i = 0; i < 12; ++i) x[i] = x[i] * mul + add;
        // Opaque to the optimiser: the chains must really run every iteration.
        __asm__ volatile("" : : "r"(x) : "memory");
      }
      iters += 4096;
      if (std::chrono::duration<double>(clock::now() - start).count() >= seconds) break;
    }
    float s = 0;
    for (int i = 0; i < 12; ++i) s += x[i];
    volatile float sink = s;
    (void)sink;
    total_flops += 2.0 * 12.0 * static_cast<double>(iters);
  }
  double dt = std::chrono::duration<double>(clock::now() - t0).count();
  return dt > 0 ? total_flops / dt * 1e-9 : 0.0;
}

}  // namespace gemm_detail
}  // namespace pyconv
