// Packed GEMM in the BLIS arrangement: C (+)= A * B with B delivered panel by panel by a
// packer, so a convolution can unfold its input straight into the packed B panels.
//
// Contract (pinned: the convolution code is written against it):
//  * A(i, k) = a[i*a_rs + k*a_cs] for 0 <= i < M, 0 <= k < K (any strides, e.g. a transpose).
//  * B is produced by a BPanelSource<T>; see its comment for the panel layout.
//  * C(i, j) = c[i*c_rs + j*c_cs]; with accumulate the product is added to C, else C is
//    overwritten. Nothing outside the M x N region is read or written.
//  * M, N or K == 0 is valid (K == 0 writes zeros unless accumulate).
//  * `threads` bounds the OpenMP threads used; 1 runs on the calling thread only, so the
//    call may be made from inside an outer parallel region.
//  * `workspace`: nullptr makes the GEMM take packing buffers from pyconv::scratch()
//    (allowed only outside parallel regions: it may allocate). Inside a parallel region
//    pass a buffer of gemm_workspace_elems<T>(M, N, K, threads) elements, 64-byte aligned.
//  * For a given `threads` the result is bitwise reproducible (fixed reduction order:
//    k is summed in KC blocks in increasing order, never split across threads).
#pragma once
#include <cstddef>
#include <cstdint>

#include "params.h"

namespace pyconv {

template <typename T>
struct BPanelSource {
  virtual ~BPanelSource() = default;
  // Write rows k0 .. k0+kc-1 and columns j0 .. j0+nc-1 of B into dst as ceil(nc/nr)
  // panels: panel p starts at dst + p*kc*nr and holds, for each k in [0, kc), the nr
  // values B(k0+k, j0 + p*nr + r), r = 0..nr-1, contiguously. Columns at or past nc (the
  // ragged last panel) are written as zeros. Called from inside parallel regions: it
  // must not throw or allocate.
  virtual void pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const = 0;
};

// A dense B: B(k, j) = p[k*rs + j*cs].
template <typename T>
struct StridedB final : BPanelSource<T> {
  const T* p;
  i64 rs, cs;
  StridedB(const T* p_, i64 rs_, i64 cs_) : p(p_), rs(rs_), cs(cs_) {}
  void pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const override;
};

// Register tile and cache blocking of the micro-kernel the active ISA uses for T.
struct GemmBlocking {
  int mr, nr;
  i64 mc, kc, nc;
};
template <typename T>
GemmBlocking gemm_blocking();

// Elements of workspace one call needs (packed A and B for every thread).
template <typename T>
std::size_t gemm_workspace_elems(i64 M, i64 N, i64 K, int threads);

template <typename T>
void gemm(i64 M, i64 N, i64 K, const T* a, i64 a_rs, i64 a_cs, const BPanelSource<T>& b,
          T* c, i64 c_rs, i64 c_cs, bool accumulate, int threads, T* workspace = nullptr);

// Measured FP32 FMA peak of this machine in GFLOP/s over `threads` threads (12
// independent 256-bit FMA chains per thread for `seconds`; a portable multiply-add loop
// on CPUs without AVX2). Opens a parallel region: call it outside one.
double fma_peak_gflops(int threads, double seconds);

}  // namespace pyconv
