// AVX-512 GEMM micro-kernels (this file alone is compiled with the AVX-512 flags).
// Contract: see gemm_ukernel.h.
//   float32: 16 x 16 tile = 16 zmm accumulators (one row each), per k step one zmm B load
//            and 16 FMAs whose A operand is an embedded broadcast from the packed panel.
//   float64: 16 x 8 tile, the same arrangement with 8 doubles per zmm.
// NR equals the AVX2 kernels' (16 / 8), so the B packers (GEMM and conv) are shared and
// the per-element arithmetic is the AVX2 one (one FMA per term in increasing k, from
// zero): where K fits in one KC block both ISAs give bitwise identical results. The tall tile reads
// each packed B vector once per 16 rows of A (6 for AVX2), and on Zen 4, where a zmm FMA
// is double-pumped, it halves the instructions per flop rather than raising the peak.
#include <immintrin.h>

#include "fma_peak.h"
#include "gemm_ukernel.h"

namespace pyconv {
namespace gemm_detail {
namespace {  // internal linkage: never merged with other translation units' code

constexpr int kMR = 16;

struct Z32 {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V bcast(const T* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
};
struct Z64 {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V bcast(const T* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
};

template <class S>
void kernel_16x1v(i64 kc, const typename S::T* __restrict a, const typename S::T* __restrict b,
                  typename S::T* c, i64 c_rs, i64 c_cs, int m, int n, bool accumulate) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int NR = S::W;
  const bool full = (m == kMR && n == NR && c_cs == 1);
  if (full)
    for (int i = 0; i < kMR; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * c_rs), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * c_rs + NR - 1), _MM_HINT_T0);
    }
  V c0 = S::zero(), c1 = S::zero(), c2 = S::zero(), c3 = S::zero();
  V c4 = S::zero(), c5 = S::zero(), c6 = S::zero(), c7 = S::zero();
  V c8 = S::zero(), c9 = S::zero(), c10 = S::zero(), c11 = S::zero();
  V c12 = S::zero(), c13 = S::zero(), c14 = S::zero(), c15 = S::zero();
#pragma GCC unroll 1
  for (i64 k = 0; k < kc; ++k) {
    const V bv = S::load(b);
    c0 = S::fma(S::bcast(a + 0), bv, c0);
    c1 = S::fma(S::bcast(a + 1), bv, c1);
    c2 = S::fma(S::bcast(a + 2), bv, c2);
    c3 = S::fma(S::bcast(a + 3), bv, c3);
    c4 = S::fma(S::bcast(a + 4), bv, c4);
    c5 = S::fma(S::bcast(a + 5), bv, c5);
    c6 = S::fma(S::bcast(a + 6), bv, c6);
    c7 = S::fma(S::bcast(a + 7), bv, c7);
    c8 = S::fma(S::bcast(a + 8), bv, c8);
    c9 = S::fma(S::bcast(a + 9), bv, c9);
    c10 = S::fma(S::bcast(a + 10), bv, c10);
    c11 = S::fma(S::bcast(a + 11), bv, c11);
    c12 = S::fma(S::bcast(a + 12), bv, c12);
    c13 = S::fma(S::bcast(a + 13), bv, c13);
    c14 = S::fma(S::bcast(a + 14), bv, c14);
    c15 = S::fma(S::bcast(a + 15), bv, c15);
    a += kMR;
    b += NR;
  }
  const V acc[kMR] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15};
  if (full) {
    if (accumulate)
      for (int i = 0; i < kMR; ++i) S::store(c + i * c_rs, S::add(S::load(c + i * c_rs), acc[i]));
    else
      for (int i = 0; i < kMR; ++i) S::store(c + i * c_rs, acc[i]);
    return;
  }
  // Edge tile or strided C: spill the register tile, copy the valid corner.
  alignas(64) T t[kMR * NR];
  for (int i = 0; i < kMR; ++i) S::store(t + i * NR, acc[i]);
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * c_rs;
    const T* ti = t + i * NR;
    if (accumulate)
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ci[j * c_cs] + ti[j];
    else
      for (int j = 0; j < n; ++j) ci[j * c_cs] = ti[j];
  }
}

struct PeakZmm {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_store_ps(p, v); }
};

}  // namespace

// KC: 384 measured best for f32 on Zen 4 (conv 3x3 c64 56px forward 72 -> 82 GF/s against
// 256; 512 and 576 no better). The B micro-panel (24 KiB) still fits L1 and is reused by
// fewer, taller A micro-panels than with MR = 6.
GemmKernel<float> avx512_kernel_f32() {
  return {&kernel_16x1v<Z32>, GemmBlocking{kMR, Z32::W, 144, 384, 4080}, nullptr, 0};
}
GemmKernel<double> avx512_kernel_f64() {
  return {&kernel_16x1v<Z64>, GemmBlocking{kMR, Z64::W, 144, 256, 4080}, nullptr, 0};
}

double avx512_fma_peak_gflops(int threads, double seconds) {
  return fma_peak_loop<PeakZmm>(threads, seconds);
}

}  // namespace gemm_detail
}  // namespace pyconv
