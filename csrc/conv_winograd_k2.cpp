// Winograd F(2,2) along W for 1 x 2 kernels (stride 1 along W), e.g. the causal dilated
// conv1d of WaveNet. With x~ the padded input row and d the dilation, the outputs t and
// t + d of one output channel are
//     y[t]     = W0 x~[t]     + W1 x~[t + d]
//     y[t + d] = W0 x~[t + d] + W1 x~[t + 2d]
// and with a = x~[t], b = x~[t + d], c = x~[t + 2d] (vectors over input channels):
//     m1 = W0 (a - b),  m2 = (W0 + W1) b,  m3 = W1 (c - b)
//     y[t] = m1 + m2,   y[t + d] = m3 + m2
// so each pair costs 3 channel products instead of 4 (0.75x the multiply-adds).
//
// Pairs: the outputs t with t mod 2d < d, t < Wo, each taking t + d along (which may lie
// past the row's end: then it is computed and not stored). Pair column j (0 <= j < P)
// is output t = (j / d) * 2d + j mod d.
//
// Lowering, per (image, group, output row, chunk of pair columns) task:
//   A (weights, transformed once per call): for each K block and each 8-row panel of
//     output channels, k-major [k][q][i] with q = 0, 1, 2 for W0, W0 + W1, W1;
//   B (per task, per K block): panels of L pair columns (L = 16 floats / 8 doubles),
//     [k][q][l] with q = 0, 1, 2 for a - b, b, c - b;
//   tile: 8 output channels x L pair columns, the three products summed over k in
//     increasing order from zero, one fused multiply-add per term; then y[t] = m1 + m2
//     and y[t + d] = m3 + m2, added to what earlier K blocks left in y, and the bias added
//     to the finished sum (so conv(x, w, b) == conv(x, w) + b bitwise).
// Every output element is computed by one task in a fixed order: results do not depend
// on the thread count. The AVX-512 kernels (d a multiple of 8) and the portable ones
// below perform the same operations in the same order, so they agree bit for bit.
// Accuracy: a - b and c - b round once more than the direct sum; integer-valued data
// of moderate size stay exact.
//
// Memory (pyconv::scratch(), reused across calls): the transformed weights,
// 3 * round_up(C_out/groups, 8) * C_in/groups * groups elements, plus one B block
// (at most kMaxChunk pair columns x kKcMax channels x 3) per thread.
#include <algorithm>
#include <cmath>

#include "conv.h"
#include "cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {
namespace {

using k2_detail::Geo;
using k2_detail::kMaxChunk;
using k2_detail::kMR;

i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }
i64 round_up(i64 a, i64 b) { return ceil_div(a, b) * b; }

template <typename T>
constexpr int lanes() { return sizeof(T) == 4 ? 16 : 8; }

// K block: the B micro-panel (kc x 3 x L) stays in L1 while the 8-row A panels stream.
constexpr i64 kKcMax = 128;
// Bytes of one task's B block (all its panels for one K block): kept in L2.
constexpr i64 kBBlockBytes = 192 * 1024;

struct Plan {
  Geo g{};
  i64 M = 0, K = 0, Mr = 0, kc = 0, nc = 0, chunks = 0, tasks = 0;
  i64 a_elems = 0, b_elems = 0;  // transformed weights; one thread's B block
  int threads = 1;
};

Geo make_geo(const ConvParams& p) {
  Geo g{p.w.in, p.w.out, p.w.dilation, p.w.pad_lo, 0};
  const i64 two_d = 2 * g.d;
  g.P = (g.Wo / two_d) * g.d + std::min(g.Wo % two_d, g.d);
  return g;
}

Plan make_plan(const ConvParams& p, std::size_t elem, int threads) {
  Plan pl;
  pl.g = make_geo(p);
  const i64 L = elem == 4 ? 16 : 8;
  pl.M = p.cout_g();
  pl.K = p.cin_g();
  pl.Mr = round_up(pl.M, kMR);
  pl.kc = ceil_div(pl.K, ceil_div(pl.K, kKcMax));
  i64 nc = kBBlockBytes / (pl.kc * 3 * static_cast<i64>(elem));
  nc = std::clamp<i64>(nc / L * L, L, kMaxChunk);
  pl.nc = std::min(nc, round_up(pl.g.P, L));
  pl.chunks = ceil_div(pl.g.P, pl.nc);
  pl.tasks = checked_mul(checked_mul(checked_mul(p.n, p.groups, "tasks"), p.h.out, "tasks"), pl.chunks, "tasks");
  pl.threads = static_cast<int>(std::max<i64>(1, std::min<i64>(threads, pl.tasks)));
  pl.a_elems = checked_mul(checked_mul(checked_mul(pl.Mr, pl.K, "weights"), 3, "weights"), p.groups, "weights");
  pl.b_elems = round_up(checked_mul(checked_mul(round_up(pl.nc, L), pl.kc, "panel"), 3, "panel"),
                        64 / static_cast<i64>(elem));
  return pl;
}

// Portable kernels: the layouts and arithmetic the AVX-512 ones reproduce.
template <typename T>
void pack_portable(const T* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, T* dst) {
  constexpr int L = lanes<T>();
  const i64 panels = ceil_div(nc, L);
  for (i64 pn = 0; pn < panels; ++pn)
    for (int l = 0; l < L; ++l) {
      const i64 j = j0 + pn * L + l;
      const bool live = pn * L + l < nc && j < g.P;
      const i64 i = live ? (j / g.d) * 2 * g.d + j % g.d - g.pad_lo : 0;
      for (i64 k = 0; k < kc; ++k) {
        T* o = dst + (pn * kc + k) * 3 * L + l;
        if (!live) {
          o[0] = o[L] = o[2 * L] = T(0);
          continue;
        }
        const T* row = x + k * cs;
        auto at = [&](i64 q) { return q >= 0 && q < g.W ? row[q] : T(0); };
        const T b = at(i + g.d);
        o[0] = at(i) - b;
        o[L] = b;
        o[2 * L] = at(i + 2 * g.d) - b;
      }
    }
}

template <typename T>
void tile_portable(i64 kc, const T* a, const T* b, T* y, i64 y_rs, int m, i64 j0, const Geo& g, bool accumulate,
                   const T* bias) {
  constexpr int L = lanes<T>();
  for (int l = 0; l < L; ++l) {
    const i64 j = j0 + l;
    if (j >= g.P) break;
    const i64 t = (j / g.d) * 2 * g.d + j % g.d;
    for (int i = 0; i < m; ++i) {
      T s1 = 0, s2 = 0, s3 = 0;
      for (i64 k = 0; k < kc; ++k) {
        const T* ak = a + k * 3 * kMR;
        const T* bk = b + k * 3 * L;
        s1 = std::fma(ak[i], bk[l], s1);
        s2 = std::fma(ak[kMR + i], bk[L + l], s2);
        s3 = std::fma(ak[2 * kMR + i], bk[2 * L + l], s3);
      }
      T va = s1 + s2, vb = s3 + s2;
      T* yr = y + i * y_rs;
      if (accumulate) {
        va = yr[t] + va;
        if (t + g.d < g.Wo) vb = yr[t + g.d] + vb;
      }
      if (bias) {
        va = va + bias[i];
        vb = vb + bias[i];
      }
      if (t < g.Wo) yr[t] = va;
      if (t + g.d < g.Wo) yr[t + g.d] = vb;
    }
  }
}

template <typename T>
struct Kernels {
  void (*pack)(const T*, i64, const Geo&, i64, i64, i64, T*);
  void (*tile)(i64, const T*, const T*, T*, i64, int, i64, const Geo&, bool, const T*);
};
Kernels<float> kernels_for(const Geo& g, float*) {
  if (active_isa() == Isa::avx512 && g.d % 8 == 0) return {wino_k2_avx512::pack_f32, wino_k2_avx512::tile_f32};
  return {pack_portable<float>, tile_portable<float>};
}
Kernels<double> kernels_for(const Geo& g, double*) {
  if (active_isa() == Isa::avx512 && g.d % 8 == 0) return {wino_k2_avx512::pack_f64, wino_k2_avx512::tile_f64};
  return {pack_portable<double>, tile_portable<double>};
}

// A for every group and K block: panel (g, k block at k0, rows mp*8 ..) at
// a + g*Mr*K*3 + k0*Mr*3 + mp*8*kc*3, element [k][q][i].
template <typename T>
void transform_weights(const ConvParams& p, const Plan& pl, const T* w, T* a) {
  for (i64 g = 0; g < p.groups; ++g)
    for (i64 k0 = 0; k0 < pl.K; k0 += pl.kc) {
      const i64 kc = std::min(pl.kc, pl.K - k0);
      T* blk = a + g * pl.Mr * pl.K * 3 + k0 * pl.Mr * 3;
      for (i64 mp = 0; mp < pl.Mr / kMR; ++mp)
        for (i64 k = 0; k < kc; ++k)
          for (int i = 0; i < kMR; ++i) {
            const i64 co = mp * kMR + i;
            T* o = blk + mp * kMR * kc * 3 + k * 3 * kMR + i;
            T w0 = 0, w1 = 0;
            if (co < pl.M) {
              const T* src = w + ((g * pl.M + co) * pl.K + k0 + k) * 2;
              w0 = src[0];
              w1 = src[1];
            }
            o[0] = w0;
            o[kMR] = w0 + w1;
            o[2 * kMR] = w1;
          }
    }
}

}  // namespace

bool winograd_k2_supports(const ConvParams& p) {
  return p.h.kernel == 1 && p.w.kernel == 2 && p.w.stride == 1;
}

// Taken where the vector kernels run and the channel products are large enough to beat
// the direct sum's unfolding GEMM (bench/conv.py: WaveNet-style c64 L16000).
bool winograd_k2_preferred(const ConvParams& p) {
  return winograd_k2_supports(p) && active_isa() == Isa::avx512 && p.w.dilation % 8 == 0 && p.cin_g() >= 16 &&
         p.cout_g() >= 16 && make_geo(p).P >= 64;
}

std::size_t winograd_k2_workspace_bytes(const ConvParams& p, std::size_t elem, int threads) {
  if (!winograd_k2_supports(p)) return 0;
  const Plan pl = make_plan(p, elem, std::max(threads, 1));
  const i64 total = checked_add(pl.a_elems, checked_mul(pl.b_elems, pl.threads, "workspace"), "workspace");
  return static_cast<std::size_t>(checked_mul(total, static_cast<i64>(elem), "workspace bytes"));
}

// One task's place: image, group, output row, chunk of pair columns, and the input
// columns its packing reads (all K channels of one input row; row < 0: a padding row).
struct Task {
  i64 img, grp, ho, chunk, j0, nc, row, col_lo, col_hi;
};
Task decode(const ConvParams& p, const Plan& pl, i64 t) {
  Task k;
  k.chunk = t % pl.chunks;
  i64 rest = t / pl.chunks;
  k.ho = rest % p.h.out;
  rest /= p.h.out;
  k.grp = rest % p.groups;
  k.img = rest / p.groups;
  k.j0 = k.chunk * pl.nc;
  k.nc = std::min(pl.nc, pl.g.P - k.j0);
  k.row = k.ho * p.h.stride - p.h.pad_lo;
  if (k.row >= p.h.in) k.row = -1;
  const Geo& g = pl.g;
  const i64 jl = k.j0 + k.nc - 1;
  k.col_lo = std::max<i64>(0, (k.j0 / g.d) * 2 * g.d + k.j0 % g.d - g.pad_lo);
  k.col_hi = std::min<i64>(g.W, (jl / g.d) * 2 * g.d + jl % g.d + 2 * g.d - g.pad_lo + 1);
  return k;
}

template <typename T>
void winograd_k2_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y) {
  const Plan pl = make_plan(p, sizeof(T), num_threads());
  const Geo g = pl.g;
  const Kernels<T> kern = kernels_for(g, static_cast<T*>(nullptr));
  constexpr int L = lanes<T>();
  constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
  T* a = static_cast<T*>(scratch(kScratchGemmA, static_cast<std::size_t>(pl.a_elems) * sizeof(T)));
  T* bbase =
      static_cast<T*>(scratch(kScratchOp0, static_cast<std::size_t>(pl.b_elems * pl.threads) * sizeof(T)));
  transform_weights(p, pl, w, a);
  const i64 Ho = p.h.out, H = p.h.in, W = p.w.in, Wo = p.w.out;
  const i64 y_rs = Ho * Wo, cs = H * W;
  auto input_row = [&](const Task& k) { return x + ((k.img * p.c_in + k.grp * pl.K) * H + k.row) * W; };
#pragma omp parallel num_threads(pl.threads)
  {
#ifdef _OPENMP
    const i64 tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const i64 tid = 0, team = 1;
#endif
    T* bbuf = bbase + tid * pl.b_elems;
    const i64 t0 = pl.tasks * tid / team, t1 = pl.tasks * (tid + 1) / team;
    for (i64 t = t0; t < t1; ++t) {
      const Task k = decode(p, pl, t);
      T* yrow = y + ((k.img * p.c_out + k.grp * pl.M) * Ho + k.ho) * Wo;
      const T* brow = bias ? bias + k.grp * pl.M : nullptr;
      if (k.row < 0) {  // a padding row: every tap reads zeros
        if (k.chunk == 0)
          for (i64 co = 0; co < pl.M; ++co)
            for (i64 c = 0; c < Wo; ++c) yrow[co * y_rs + c] = brow ? T(0) + brow[co] : T(0);
        continue;
      }
      // The next task's input is prefetched (to L2) a slice per panel while this one
      // computes: measured faster than leaving it to the hardware prefetcher, whose
      // streams the packing's jumps between channel rows break.
      Task nx{};
      bool prefetch = t + 1 < t1;
      if (prefetch) {
        nx = decode(p, pl, t + 1);
        prefetch = nx.row >= 0;
      }
      const T* xrow = input_row(k);
      const T* nxrow = prefetch ? input_row(nx) : nullptr;
      for (i64 k0 = 0; k0 < pl.K; k0 += pl.kc) {
        const i64 kc = std::min(pl.kc, pl.K - k0);
        const bool last = k0 + kc >= pl.K;
        kern.pack(xrow + k0 * cs, cs, g, kc, k.j0, k.nc, bbuf);
        const T* ablk = a + k.grp * pl.Mr * pl.K * 3 + k0 * pl.Mr * 3;
        const i64 npan = (k.nc + L - 1) / L;
        const i64 piece = prefetch ? round_up(ceil_div(nx.col_hi - nx.col_lo, npan), kLine) : 0;
        for (i64 pn = 0; pn < npan; ++pn) {
          if (prefetch) {
            const i64 c0 = nx.col_lo + pn * piece, c1 = std::min(nx.col_hi, c0 + piece);
            for (i64 kk = 0; kk < kc; ++kk)
              for (i64 c = c0; c < c1; c += kLine) __builtin_prefetch(nxrow + (k0 + kk) * cs + c, 0, 2);
          }
          const T* bp = bbuf + pn * kc * 3 * L;
          for (i64 mp = 0; mp < pl.Mr / kMR; ++mp) {
            const int m = static_cast<int>(std::min<i64>(kMR, pl.M - mp * kMR));
            kern.tile(kc, ablk + mp * kMR * kc * 3, bp, yrow + mp * kMR * y_rs, y_rs, m, k.j0 + pn * L, g, k0 > 0,
                      last && brow ? brow + mp * kMR : nullptr);
          }
        }
      }
    }
  }
}

template void winograd_k2_forward<float>(const ConvParams&, const float*, const float*, const float*, float*);
template void winograd_k2_forward<double>(const ConvParams&, const double*, const double*, const double*, double*);

}  // namespace pyconv
