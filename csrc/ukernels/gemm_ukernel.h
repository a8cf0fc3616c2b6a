// Internal interface between the GEMM driver (gemm.cpp) and its per-ISA micro-kernels.
//
// Micro-kernel contract (every ISA implements exactly this):
//   void kernel(i64 kc, const T* a, const T* b, T* c, i64 c_rs, i64 c_cs,
//               int m, int n, bool accumulate);
//   * a: packed A micro-panel, MR x kc stored k-major: A(i, k) = a[k*MR + i]. Rows past
//     the matrix edge are zero in the pack. 64-byte aligned when the pack buffer is.
//   * b: packed B micro-panel, kc x NR stored k-major: B(k, j) = b[k*NR + j]. Columns
//     past the edge are zero. 64-byte aligned (panels are kc*NR elements apart from an
//     aligned buffer and NR*sizeof(T) is a multiple of 32).
//   * The tile product P(i, j) = sum over k = 0..kc-1, in increasing k, of A(i,k)*B(k,j),
//     starting from zero (the AVX2 kernels use one fused multiply-add per term, the
//     portable kernel a multiply then an add).
//   * Only the valid m x n corner (m <= MR, n <= NR) of C is touched:
//     C(i, j) = c[i*c_rs + j*c_cs] becomes P(i, j) (accumulate == false: C is never
//     read, so it may hold garbage) or C(i, j) + P(i, j) (accumulate == true).
//     Edge tiles go through the same arithmetic (a register tile stored to a local
//     buffer, then the valid part copied), so a result never depends on where a tile
//     falls, and nothing outside the m x n region is read or written.
//   * kc >= 1. Must not throw or allocate (called inside parallel regions).
#pragma once
#include "gemm.h"

namespace pyconv {
namespace gemm_detail {

template <typename T>
using MicroKernel = void (*)(i64 kc, const T* a, const T* b, T* c, i64 c_rs, i64 c_cs, int m,
                             int n, bool accumulate);

template <typename T>
struct GemmKernel {
  MicroKernel<T> run;
  GemmBlocking blk;
  // Optional narrow variant for ragged last panels: same contract and same panels (NR
  // wide), but only valid for n <= narrow_n; it computes just those columns, with the
  // same per-element arithmetic as `run`, so results do not depend on which one ran.
  MicroKernel<T> run_narrow = nullptr;
  int narrow_n = 0;
};

// Portable kernels (gemm_scalar.cpp, baseline flags).
GemmKernel<float> scalar_kernel_f32();
GemmKernel<double> scalar_kernel_f64();
// Peak of a portable multiply-add loop (12 independent chains per thread), GFLOP/s.
double scalar_peak_gflops(int threads, double seconds);

// AVX2 + FMA kernels (gemm_avx2.cpp, -mavx2 -mfma). Call only when the CPU has them.
GemmKernel<float> avx2_kernel_f32();
GemmKernel<double> avx2_kernel_f64();
// AVX2 packers (pure copies: the packed data are identical to the portable packers').
// B(k, j) = p[k + j*cs] (a transposed B, rows strided) into NR = 16 (f32) / 8 (f64) panels.
void avx2_pack_b_t_f32(float* dst, const float* p, i64 cs, i64 k0, i64 kc, i64 j0, i64 nc);
void avx2_pack_b_t_f64(double* dst, const double* p, i64 cs, i64 k0, i64 kc, i64 j0, i64 nc);
// Row-major A (a_cs == 1) rows i0 .. i0+mc-1, columns k0 .. k0+kc-1 into MR = 6 panels.
void avx2_pack_a_f32(float* dst, const float* a, i64 a_rs, i64 i0, i64 mc, i64 k0, i64 kc);
void avx2_pack_a_f64(double* dst, const double* a, i64 a_rs, i64 i0, i64 mc, i64 k0, i64 kc);
// FP32 FMA peak: 12 independent 256-bit FMA chains per thread, GFLOP/s over all threads.
double avx2_fma_peak_gflops(int threads, double seconds);

// AVX-512 kernels (gemm_avx512.cpp, AVX-512 F/VL/BW/DQ flags). Call only when the CPU
// and OS have them. Same NR as the AVX2 kernels, MR = 16.
GemmKernel<float> avx512_kernel_f32();
GemmKernel<double> avx512_kernel_f64();
// FP32 FMA peak with 512-bit FMAs (on cores with two 512-bit FMA pipes, twice the AVX2
// figure; on Zen 4, whose 512-bit FMAs are double-pumped, the same).
double avx512_fma_peak_gflops(int threads, double seconds);

}  // namespace gemm_detail
}  // namespace pyconv
