// Placeholder GEMM honouring the contract in gemm.h with plain loops; the packed,
// register-blocked implementation replaces it.
#include "gemm.h"

#include <vector>

#include "cpu.h"

namespace pyconv {

template <typename T>
void StridedB<T>::pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const {
  for (i64 p0 = 0; p0 < nc; p0 += nr) {
    T* panel = dst + (p0 / nr) * kc * nr;
    for (i64 k = 0; k < kc; ++k)
      for (int r = 0; r < nr; ++r) {
        i64 j = p0 + r;
        panel[k * nr + r] = j < nc ? p[(k0 + k) * rs + (j0 + j) * cs] : T(0);
      }
  }
}

template <typename T>
GemmBlocking gemm_blocking() { return GemmBlocking{4, 8, 64, 256, 512}; }

template <typename T>
std::size_t gemm_workspace_elems(i64, i64, i64, int threads) {
  GemmBlocking g = gemm_blocking<T>();
  return static_cast<std::size_t>(threads) * static_cast<std::size_t>(g.kc * (g.nc + g.nr));
}

template <typename T>
void gemm(i64 M, i64 N, i64 K, const T* a, i64 a_rs, i64 a_cs, const BPanelSource<T>& b,
          T* c, i64 c_rs, i64 c_cs, bool accumulate, int threads, T* workspace) {
  (void)threads;
  if (M <= 0 || N <= 0) return;
  if (!accumulate)
    for (i64 i = 0; i < M; ++i)
      for (i64 j = 0; j < N; ++j) c[i * c_rs + j * c_cs] = T(0);
  GemmBlocking g = gemm_blocking<T>();
  if (!workspace) workspace = static_cast<T*>(scratch(kScratchGemmB, gemm_workspace_elems<T>(M, N, K, 1) * sizeof(T)));
  for (i64 k0 = 0; k0 < K; k0 += g.kc) {
    i64 kc = K - k0 < g.kc ? K - k0 : g.kc;
    for (i64 j0 = 0; j0 < N; j0 += g.nc) {
      i64 nc = N - j0 < g.nc ? N - j0 : g.nc;
      b.pack(workspace, k0, kc, j0, nc, g.nr);
      for (i64 i = 0; i < M; ++i)
        for (i64 j = 0; j < nc; ++j) {
          const T* panel = workspace + (j / g.nr) * kc * g.nr + (j % g.nr);
          T s = 0;
          for (i64 k = 0; k < kc; ++k) s += a[i * a_rs + (k0 + k) * a_cs] * panel[k * g.nr];
          c[i * c_rs + (j0 + j) * c_cs] += s;
        }
    }
  }
}

#define PYCONV_INSTANTIATE_GEMM(T)                                                         \
  template struct StridedB<T>;                                                             \
  template GemmBlocking gemm_blocking<T>();                                                \
  template std::size_t gemm_workspace_elems<T>(i64, i64, i64, int);                        \
  template void gemm<T>(i64, i64, i64, const T*, i64, i64, const BPanelSource<T>&, T*, i64, \
                        i64, bool, int, T*);
PYCONV_INSTANTIATE_GEMM(float)
PYCONV_INSTANTIATE_GEMM(double)

}  // namespace pyconv
