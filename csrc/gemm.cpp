// Packed GEMM driver in the BLIS arrangement (contract in gemm.h):
//
//   parts   C is split into a tm x tn grid of independent blocks, one per thread
//           (rows in MR units, columns in NR units); each part runs the loops below
//           on its own packing buffers, so no barrier is needed.
//   jc      columns in NC blocks
//   pc      K in KC blocks, increasing; B block (KC x NC) packed once per (jc, pc)
//           through the BPanelSource
//   ic      rows in MC blocks; A block packed into MR-row, k-major micro-panels
//   jr, ir  NR x MR tiles, each one micro-kernel call (gemm_ukernel.h)
//
// Every C element is summed in the same order (k blocks of KC, in increasing order, each
// one summed by the micro-kernel from zero and then added to C) whatever the partition,
// so results are bitwise identical for any thread count.
#include "gemm.h"

#include <algorithm>
#include <cstring>

#include "cpu.h"
#include "ukernels/gemm_ukernel.h"

namespace pyconv {
namespace {

using gemm_detail::GemmKernel;

template <typename T>
GemmKernel<T> kernel_for(Isa isa);
template <>
GemmKernel<float> kernel_for<float>(Isa isa) {
  if (isa == Isa::avx512) return gemm_detail::avx512_kernel_f32();
  return isa == Isa::scalar ? gemm_detail::scalar_kernel_f32() : gemm_detail::avx2_kernel_f32();
}
template <>
GemmKernel<double> kernel_for<double>(Isa isa) {
  if (isa == Isa::avx512) return gemm_detail::avx512_kernel_f64();
  return isa == Isa::scalar ? gemm_detail::scalar_kernel_f64() : gemm_detail::avx2_kernel_f64();
}


// Per-call blocking derived from the kernel's GemmBlocking and the problem size (a pure
// function of M and K, so the sum order never depends on N or on the thread count).
struct Blocks {
  i64 kc;        // K block: K split into equal blocks of at most GemmBlocking::kc
  i64 nc;        // N block
  bool a_whole;  // A is packed once per part for all of K, then reused for every jc
};

// Packed A for all of K is kept when it fits comfortably in L2 next to the B block.
constexpr i64 kWholeABytes = 256 * 1024;
// N block when A is packed whole: the B block is swept by a single row block, so it is
// kept small enough to stay in L2 (512 KiB on Zen 3, 1 MiB on Zen 4) next to the packed
// A between its packing and its use. 128 KiB to 1 MiB measured alike on Zen 4.
constexpr i64 kSmallMNcBytes = 256 * 1024;

template <typename T>
Blocks make_blocks(const GemmBlocking& g, i64 M, i64 K) {
  Blocks bl;
  const i64 kblocks = K > 0 ? ceil_div(K, g.kc) : 1;
  bl.kc = K > 0 ? ceil_div(K, kblocks) : 1;
  const i64 m_round = round_up(M, g.mr);
  bl.a_whole = m_round > 0 && m_round <= g.mc &&
               std::max<i64>(K, 1) <= kWholeABytes / (m_round * static_cast<i64>(sizeof(T)));
  bl.nc = g.nc;
  if (bl.a_whole) {
    i64 nc = kSmallMNcBytes / (bl.kc * static_cast<i64>(sizeof(T)));
    nc = std::max<i64>(g.nr, nc / g.nr * g.nr);
    bl.nc = std::min(g.nc, nc);
  }
  return bl;
}

struct Plan {
  int tm = 1, tn = 1;
  int parts() const { return tm * tn; }
};

// Thread grid minimising the critical path: padded multiply-adds of the largest part
// plus a packing charge (one packed element costs about as much as 32 multiply-adds).
Plan make_plan(i64 M, i64 N, i64 K, int threads, const GemmBlocking& g, i64 nc) {
  Plan best;
  if (threads <= 1) return best;
  const i64 tiles_m = ceil_div(M, g.mr), tiles_n = ceil_div(N, g.nr);
  double best_cost = -1;
  for (int tm = 1; tm <= threads && tm <= tiles_m; ++tm)
    for (int tn = 1; tm * tn <= threads && tn <= tiles_n; ++tn) {
      const double rows = static_cast<double>(ceil_div(tiles_m, tm) * g.mr);
      const double cols = static_cast<double>(ceil_div(tiles_n, tn) * g.nr);
      const double jc_blocks = static_cast<double>(ceil_div(static_cast<i64>(cols), nc));
      const double cost = rows * cols * static_cast<double>(K) +
                          32.0 * static_cast<double>(K) * (cols + rows * jc_blocks);
      // Strictly better only: ties keep fewer parts, then the column split (tn grows
      // in the inner loop, so an equal-cost later candidate never replaces).
      if (best_cost < 0 || cost < best_cost * (1.0 - 1e-9)) {
        best_cost = cost;
        best.tm = tm;
        best.tn = tn;
      }
    }
  return best;
}

// Per-thread packing buffer sizes (elements, multiples of 64 bytes).
template <typename T>
void buffer_elems(const GemmBlocking& g, const Blocks& bl, i64 M, i64 N, i64 K, i64* a_elems,
                  i64* b_elems) {
  const i64 align = 64 / static_cast<i64>(sizeof(T));
  const i64 kc = std::min(K, bl.kc);
  const i64 a = bl.a_whole ? round_up(M, g.mr) * K : std::min(g.mc, round_up(M, g.mr)) * kc;
  const i64 ncc = std::min(bl.nc, round_up(N, g.nr));
  *a_elems = round_up(std::max<i64>(a, 1), align);
  *b_elems = round_up(std::max<i64>(kc * ncc, 1), align);
}

// A(i0 .. i0+mc-1, k0 .. k0+kc-1) into MR-row micro-panels, k-major, ragged rows zero.
template <typename T, int MR>
void pack_a_mr(T* dst, const T* a, i64 a_rs, i64 a_cs, i64 i0, i64 mc, i64 k0, i64 kc) {
  for (i64 ir = 0; ir < mc; ir += MR) {
    const int m = static_cast<int>(std::min<i64>(MR, mc - ir));
    T* d = dst + ir * kc;
    const T* src = a + (i0 + ir) * a_rs + k0 * a_cs;
    if (m == MR && a_cs == 1) {
      const T* rows[MR];
      for (int i = 0; i < MR; ++i) rows[i] = src + i * a_rs;
      // One cache line of each row per step, the line two steps ahead prefetched.
      constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
      i64 k = 0;
      for (; k + kLine <= kc; k += kLine) {
        for (int i = 0; i < MR; ++i) __builtin_prefetch(rows[i] + k + 2 * kLine, 0, 3);
        for (i64 kk = k; kk < k + kLine; ++kk)
          for (int i = 0; i < MR; ++i) d[kk * MR + i] = rows[i][kk];
      }
      for (; k < kc; ++k)
        for (int i = 0; i < MR; ++i) d[k * MR + i] = rows[i][k];
    } else if (m == MR && a_rs == 1) {
      for (i64 k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) d[k * MR + i] = src[k * a_cs + i];
    } else {
      for (i64 k = 0; k < kc; ++k) {
        for (int i = 0; i < m; ++i) d[k * MR + i] = src[i * a_rs + k * a_cs];
        for (int i = m; i < MR; ++i) d[k * MR + i] = T(0);
      }
    }
  }
}

// AVX2 transposing packers where they apply (same packed values as the portable ones).
inline void avx2_pack_a(float* dst, const float* a, i64 a_rs, i64 i0, i64 mc, i64 k0, i64 kc) {
  gemm_detail::avx2_pack_a_f32(dst, a, a_rs, i0, mc, k0, kc);
}
inline void avx2_pack_a(double* dst, const double* a, i64 a_rs, i64 i0, i64 mc, i64 k0, i64 kc) {
  gemm_detail::avx2_pack_a_f64(dst, a, a_rs, i0, mc, k0, kc);
}
inline void avx2_pack_b_t(float* dst, const float* p, i64 cs, i64 k0, i64 kc, i64 j0, i64 nc) {
  gemm_detail::avx2_pack_b_t_f32(dst, p, cs, k0, kc, j0, nc);
}
inline void avx2_pack_b_t(double* dst, const double* p, i64 cs, i64 k0, i64 kc, i64 j0, i64 nc) {
  gemm_detail::avx2_pack_b_t_f64(dst, p, cs, k0, kc, j0, nc);
}
template <typename T>
constexpr int avx2_nr() { return sizeof(T) == 4 ? 16 : 8; }

template <typename T>
void pack_a(T* dst, int mr, const T* a, i64 a_rs, i64 a_cs, i64 i0, i64 mc, i64 k0, i64 kc) {
  if (mr == 6 && a_cs == 1 && active_isa() != Isa::scalar) {
    avx2_pack_a(dst, a, a_rs, i0, mc, k0, kc);
    return;
  }
  switch (mr) {
    case 6: pack_a_mr<T, 6>(dst, a, a_rs, a_cs, i0, mc, k0, kc); break;
    case 4: pack_a_mr<T, 4>(dst, a, a_rs, a_cs, i0, mc, k0, kc); break;
    case 8: pack_a_mr<T, 8>(dst, a, a_rs, a_cs, i0, mc, k0, kc); break;
    case 16: pack_a_mr<T, 16>(dst, a, a_rs, a_cs, i0, mc, k0, kc); break;
    default: {
      for (i64 ir = 0; ir < mc; ir += mr) {
        const i64 m = std::min<i64>(mr, mc - ir);
        T* d = dst + ir * kc;
        for (i64 k = 0; k < kc; ++k)
          for (i64 i = 0; i < mr; ++i)
            d[k * mr + i] = i < m ? a[(i0 + ir + i) * a_rs + (k0 + k) * a_cs] : T(0);
      }
    }
  }
}

// One part: rows [m0, m1), columns [n0, n1) of C, all of K.
template <typename T>
void gemm_part(const GemmKernel<T>& kern, const Blocks& bl, i64 m0, i64 m1, i64 n0, i64 n1,
               i64 K, const T* a, i64 a_rs, i64 a_cs, const BPanelSource<T>& b, T* c, i64 c_rs,
               i64 c_cs, bool accumulate, T* abuf, T* bbuf) {
  const GemmBlocking& g = kern.blk;
  const int mr = g.mr, nr = g.nr;
  const i64 mc_blk = bl.a_whole ? m1 - m0 : g.mc;
  if (bl.a_whole)  // k block p of A at abuf + p*kc*round_up(m1-m0, mr)
    for (i64 pc = 0; pc < K; pc += bl.kc)
      pack_a(abuf + pc * round_up(m1 - m0, mr), mr, a, a_rs, a_cs, m0, m1 - m0, pc,
             std::min(bl.kc, K - pc));
  for (i64 jc = n0; jc < n1; jc += bl.nc) {
    const i64 nc = std::min(bl.nc, n1 - jc);
    for (i64 pc = 0; pc < K; pc += bl.kc) {
      const i64 kc = std::min(bl.kc, K - pc);
      const bool acc = accumulate || pc > 0;
      b.pack(bbuf, pc, kc, jc, nc, nr);
      for (i64 ic = m0; ic < m1; ic += mc_blk) {
        const i64 mc = std::min(mc_blk, m1 - ic);
        const T* ablk = abuf;
        if (bl.a_whole)
          ablk = abuf + pc * round_up(m1 - m0, mr);
        else
          pack_a(abuf, mr, a, a_rs, a_cs, ic, mc, pc, kc);
        for (i64 jr = 0; jr < nc; jr += nr) {
          const int n = static_cast<int>(std::min<i64>(nr, nc - jr));
          const T* bp = bbuf + jr * kc;
          const gemm_detail::MicroKernel<T> run =
              n <= kern.narrow_n && kern.run_narrow ? kern.run_narrow : kern.run;
          T* cj = c + ic * c_rs + (jc + jr) * c_cs;
          for (i64 ir = 0; ir < mc; ir += mr) {
            const int m = static_cast<int>(std::min<i64>(mr, mc - ir));
            run(kc, ablk + ir * kc, bp, cj + ir * c_rs, c_rs, c_cs, m, n, acc);
          }
        }
      }
    }
  }
}

// Rows ahead that the B packer prefetches: one band (below), so each piece read pulls in
// the same piece of the next band. 0 to 16 measured within noise on Zen 4.
constexpr i64 kPackPrefetchRows = 8;
// Rows of B are contiguous (cs == 1). The block is walked in bands of kPackRowBand rows:
// for each panel, the band's NR-wide pieces are copied down the panel, so the reads are
// kPackRowBand sequential streams moving right (prefetcher friendly, plus an explicit
// prefetch kPackPrefetchRows rows ahead) and the writes fill whole runs of consecutive
// cache lines of the packed panel. Measured on Zen 4 against one row at a time across
// all panels (1 line written per panel): up to 30% faster when M is small (M = 6).
constexpr i64 kPackRowBand = 8;
template <typename T, int NR>
void pack_b_rows(T* dst, const T* p, i64 rs, i64 k0, i64 kc, i64 j0, i64 nc) {
  const i64 full = nc / NR;
  const i64 w = nc - full * NR;  // width of the ragged last panel
  const i64 panel_stride = kc * NR;
  const i64 pf = kPackPrefetchRows * rs;
  for (i64 kb = 0; kb < kc; kb += kPackRowBand) {
    const i64 ke = std::min(kc, kb + kPackRowBand);
    const bool prefetch = ke + kPackPrefetchRows <= kc;
    for (i64 q = 0; q < full; ++q) {
      const T* s = p + (k0 + kb) * rs + j0 + q * NR;
      T* d = dst + q * panel_stride + kb * NR;
      for (i64 k = kb; k < ke; ++k) {
        if (prefetch) __builtin_prefetch(s + pf, 0, 3);
        std::memcpy(d, s, NR * sizeof(T));
        s += rs;
        d += NR;
      }
    }
    if (w)
      for (i64 k = kb; k < ke; ++k) {
        const T* s = p + (k0 + k) * rs + j0 + full * NR;
        T* d = dst + full * panel_stride + k * NR;
        for (i64 r = 0; r < w; ++r) d[r] = s[r];
        for (i64 r = w; r < NR; ++r) d[r] = T(0);
      }
  }
}

}  // namespace

template <typename T>
void StridedB<T>::pack(T* dst, i64 k0, i64 kc, i64 j0, i64 nc, int nr) const {
  if (cs == 1) {
    switch (nr) {
      case 16: pack_b_rows<T, 16>(dst, p, rs, k0, kc, j0, nc); return;
      case 8: pack_b_rows<T, 8>(dst, p, rs, k0, kc, j0, nc); return;
      case 4: pack_b_rows<T, 4>(dst, p, rs, k0, kc, j0, nc); return;
      default: break;
    }
  }
  if (rs == 1 && nr == avx2_nr<T>() && active_isa() != Isa::scalar) {
    avx2_pack_b_t(dst, p, cs, k0, kc, j0, nc);
    return;
  }
  for (i64 p0 = 0; p0 < nc; p0 += nr) {
    T* panel = dst + (p0 / nr) * kc * nr;
    const i64 w = std::min<i64>(nr, nc - p0);
    const T* src = p + k0 * rs + (j0 + p0) * cs;
    // Column by column: reads run along k (contiguous when B is a transpose).
    for (i64 r = 0; r < w; ++r) {
      const T* col = src + r * cs;
      for (i64 k = 0; k < kc; ++k) panel[k * nr + r] = col[k * rs];
    }
    for (i64 r = w; r < nr; ++r)
      for (i64 k = 0; k < kc; ++k) panel[k * nr + r] = T(0);
  }
}

template <typename T>
GemmBlocking gemm_blocking() {
  return kernel_for<T>(active_isa()).blk;
}

template <typename T>
std::size_t gemm_workspace_elems(i64 M, i64 N, i64 K, int threads) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  if (threads < 1) threads = 1;
  // Large enough for whichever kernel is active when gemm() runs.
  i64 per_thread = 0;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (static_cast<int>(isa) > static_cast<int>(detected_isa())) continue;
    GemmBlocking g = kernel_for<T>(isa).blk;
    i64 ae, be;
    buffer_elems<T>(g, make_blocks<T>(g, M, K), M, N, K, &ae, &be);
    per_thread = std::max(per_thread, ae + be);
  }
  return static_cast<std::size_t>(per_thread) * static_cast<std::size_t>(threads);
}

template <typename T>
void gemm(i64 M, i64 N, i64 K, const T* a, i64 a_rs, i64 a_cs, const BPanelSource<T>& b,
          T* c, i64 c_rs, i64 c_cs, bool accumulate, int threads, T* workspace) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (i64 i = 0; i < M; ++i)
        for (i64 j = 0; j < N; ++j) c[i * c_rs + j * c_cs] = T(0);
    return;
  }
  if (threads < 1) threads = 1;
  const GemmKernel<T> kern = kernel_for<T>(active_isa());
  const GemmBlocking& g = kern.blk;
  const Blocks bl = make_blocks<T>(g, M, K);
  const Plan plan = make_plan(M, N, K, threads, g, bl.nc);
  const int parts = plan.parts();
  i64 ae, be;
  buffer_elems<T>(g, bl, M, N, K, &ae, &be);
  T* abase;
  T* bbase;
  i64 stride;  // between consecutive threads' buffers
  if (workspace) {
    abase = workspace;
    bbase = workspace + ae;
    stride = ae + be;
  } else {
    abase = static_cast<T*>(scratch(kScratchGemmA, static_cast<std::size_t>(parts * ae) * sizeof(T)));
    bbase = static_cast<T*>(scratch(kScratchGemmB, static_cast<std::size_t>(parts * be) * sizeof(T)));
    stride = -1;
  }
  const i64 tiles_m = ceil_div(M, g.mr), tiles_n = ceil_div(N, g.nr);
  auto run_part = [&](int part, int slot) {
    const int pm = part / plan.tn, pn = part % plan.tn;
    const i64 m0 = std::min(M, tiles_m * pm / plan.tm * g.mr);
    const i64 m1 = std::min(M, tiles_m * (pm + 1) / plan.tm * g.mr);
    const i64 n0 = std::min(N, tiles_n * pn / plan.tn * g.nr);
    const i64 n1 = std::min(N, tiles_n * (pn + 1) / plan.tn * g.nr);
    if (m0 >= m1 || n0 >= n1) return;
    T* abuf = stride > 0 ? abase + slot * stride : abase + slot * ae;
    T* bbuf = stride > 0 ? bbase + slot * stride : bbase + slot * be;
    gemm_part(kern, bl, m0, m1, n0, n1, K, a, a_rs, a_cs, b, c, c_rs, c_cs, accumulate,
              abuf, bbuf);
  };
  if (parts == 1) {
    run_part(0, 0);
    return;
  }
#pragma omp parallel num_threads(parts)
  {
    const int tid = thread_index(), team = team_size();
    for (int part = tid; part < parts; part += team) run_part(part, tid);
  }
}

double fma_peak_gflops(int threads, double seconds) {
  if (threads < 1) threads = 1;
  switch (detected_isa()) {  // the machine's peak, whatever PYCONV_ISA forces
    case Isa::scalar: return gemm_detail::scalar_peak_gflops(threads, seconds);
    case Isa::avx2: return gemm_detail::avx2_fma_peak_gflops(threads, seconds);
    case Isa::avx512: return gemm_detail::avx512_fma_peak_gflops(threads, seconds);
  }
  return 0.0;
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
