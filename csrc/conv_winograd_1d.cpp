// 1D Winograd along W for 1 x 2 and 1 x 3 kernels (stride 1 along W): the causal
// dilated conv1d of WaveNet (2 taps) and plain or dilated 3-tap conv1d layers. With x~
// the padded input row, d the dilation and r the taps, the outputs t and t + d of one
// output channel read the r + 1 inputs x~[t + q*d], q = 0..r, and come from r + 1
// channel products instead of 2r:
//   F(2,2): u = (d0 - d1, d1, d2 - d1), weights (W0, W0 + W1, W1),
//           y[t] = m0 + m1, y[t + d] = m2 + m1;
//   F(2,3): u = (d0 - d2, d1 + d2, d2 - d1, d1 - d3),
//           weights (W0, ((W0 + W1) + W2) / 2, ((W0 - W1) + W2) / 2, W2),
//           y[t] = (m0 + m1) + m2, y[t + d] = (m1 - m2) - m3,
// with m_q = W'_q u_q summed over the input channels (0.75x / 0.67x the multiply-adds).
//
// Pairs: the outputs t with t mod 2d < d, t < Wo, each taking t + d along (which may lie
// past the row's end: then it is computed and not stored). Pair column j (0 <= j < P)
// is output t = (j / d) * 2d + j mod d (w1d_detail::col).
//
// Lowering, per (image, group, output row, chunk of pair columns) task:
//   A (weights, transformed once per call): for each K block and each MR-row panel of
//     output channels (MR = 8 for 2 taps, 6 for 3), k-major [k][q][i];
//   B (per task, per K block): panels of L pair columns (L = 16 floats / 8 doubles),
//     [k][q][l], the transformed inputs;
//   tile: MR output channels x L pair columns, the r + 1 products summed over k in
//     increasing order from zero, one fused multiply-add per term; then the output
//     transform, added to what earlier K blocks left in y, and the bias added to the
//     finished sum (so conv(x, w, b) == conv(x, w) + b bitwise).
// Every output element is computed by one task in a fixed order: results do not depend
// on the thread count. The AVX-512 kernels (d = 1, 2, 4 or a multiple of 8) and the portable
// ones below perform the same operations in the same order, so they agree bit for bit.
// Accuracy: the transforms round a few more times than the direct sum, and an output's
// error involves its partner's inputs; integer-valued data of moderate size stay exact
// (the halves of F(2,3) are exact in binary).
//
// Weight gradient: with dm = the transposed output transform of (dy[t], dy[t + d])
// (F(2,2): (a, a + b, b); F(2,3): (a, a + b, a - b, 0 - b)) and u the input transform,
// dW'_q = sum over pairs of dm_q (x) u_q (output channels x input channels), and
// F(2,2): dW0 = dW'0 + dW'1, dW1 = dW'1 + dW'2;
// F(2,3): h = dW'1 + dW'2, dW0 = dW'0 + h/2, dW1 = (dW'1 - dW'2)/2, dW2 = h/2 + dW'3
// (h is even on integer data: exact). Units of work are (image, row, chunk of NCw
// pairs); each group's units are cut into a fixed number of pieces (independent of the
// thread count), each piece sums its units in order into its own dW', and the pieces
// are added in order: bitwise reproducible. Layouts per unit:
//   A (grad outputs): [q][co][k], rows of NCw pairs (k-contiguous, no transpose: the
//     tile broadcasts A(q, co, k) from a compile-time offset);
//   B (inputs): [k][q][ci in L lanes], the forward packer's panels transposed;
//   tile: MR output channels x L input channels, the r + 1 products over k, added to
//     the piece's dW'.
//
// Memory (pyconv::scratch(), reused across calls): the transformed weights,
// (r + 1) * round_up(C_out/groups, MR) * C_in/groups * groups elements, plus one B block
// (at most kMaxChunk pair columns x kKcMax channels x (r + 1)) per thread; grad weight:
// the pieces' dW' ((r + 1) x round_up(C_out/g, MR) x round_up(C_in/g, L) each, at most
// kWeightPieces per group) and per thread one unit's A and B.
#include <algorithm>
#include <cmath>

#include "conv.h"
#include "cpu.h"

namespace pyconv {
namespace {

using w1d_detail::col;
using w1d_detail::Geo;
using w1d_detail::Store;
using w1d_detail::kMaxChunk;
using w1d_detail::mr;


template <typename T>
constexpr int lanes() { return sizeof(T) == 4 ? 16 : 8; }

// K block: the B micro-panel (kc x (r + 1) x L) stays in L1 while the A panels stream
// (k3 c128 L1024 b32 forward, min of 4 alternating runs: 22.7 ms with 64, 23.5 with 128).
constexpr i64 kKcMax = 64;
// Bytes of one task's B block (all its panels for one K block): kept in L2.
constexpr i64 kBBlockBytes = 192 * 1024;
// Forward outputs of kStreamOutputBytes and more, written in one K block, are streamed
// past the caches: WaveNet-style c64 L16000 b8 (33 MB), min of 5 alternating runs:
// 17.3 ms streamed, 18.4 ms stored.

struct Plan {
  Geo g{};
  int Q = 0, MR = 0;  // products per pair (taps + 1); output channels per tile
  i64 M = 0, K = 0, Mr = 0, kc = 0, nc = 0, chunks = 0, tasks = 0;
  i64 a_elems = 0, b_elems = 0;  // transformed weights; one thread's B block
  int threads = 1;
};

Geo make_geo(const ConvParams& p) {
  Geo g{p.w.in, p.w.out, p.w.dilation, p.w.pad_lo, 0, static_cast<int>(p.w.kernel)};
  const i64 two_d = 2 * g.d;
  g.P = (g.Wo / two_d) * g.d + std::min(g.Wo % two_d, g.d);
  return g;
}

Plan make_plan(const ConvParams& p, std::size_t elem, int threads) {
  Plan pl;
  pl.g = make_geo(p);
  const i64 L = elem == 4 ? 16 : 8;
  pl.Q = pl.g.r + 1;
  pl.MR = mr(pl.g.r);
  pl.M = p.cout_g();
  pl.K = p.cin_g();
  pl.Mr = round_up(pl.M, pl.MR);
  pl.kc = ceil_div(pl.K, ceil_div(pl.K, kKcMax));
  i64 nc = kBBlockBytes / (pl.kc * pl.Q * static_cast<i64>(elem));
  nc = std::clamp<i64>(nc / L * L, L, kMaxChunk);
  pl.nc = std::min(nc, round_up(pl.g.P, L));
  pl.chunks = ceil_div(pl.g.P, pl.nc);
  pl.tasks = checked_mul(checked_mul(checked_mul(p.n, p.groups, "tasks"), p.h.out, "tasks"), pl.chunks, "tasks");
  pl.threads = static_cast<int>(std::max<i64>(1, std::min<i64>(threads, pl.tasks)));
  pl.a_elems = checked_mul(checked_mul(checked_mul(pl.Mr, pl.K, "weights"), pl.Q, "weights"), p.groups, "weights");
  pl.b_elems = round_up(checked_mul(checked_mul(round_up(pl.nc, L), pl.kc, "panel"), pl.Q, "panel"),
                        64 / static_cast<i64>(elem));
  return pl;
}

// Portable kernels: the layouts and arithmetic the AVX-512 ones reproduce.
template <typename T>
void input_transform(int r, const T* d, T* u) {
  if (r == 2) {
    u[0] = d[0] - d[1];
    u[1] = d[1];
    u[2] = d[2] - d[1];
  } else {
    u[0] = d[0] - d[2];
    u[1] = d[1] + d[2];
    u[2] = d[2] - d[1];
    u[3] = d[1] - d[3];
  }
}

template <typename T>
void pack_portable(const T* x, i64 cs, const Geo& g, i64 kc, i64 j0, i64 nc, T* dst) {
  constexpr int L = lanes<T>();
  const int Q = g.r + 1;
  const i64 panels = ceil_div(nc, L);
  for (i64 pn = 0; pn < panels; ++pn)
    for (int l = 0; l < L; ++l) {
      const i64 j = j0 + pn * L + l;
      const bool live = pn * L + l < nc && j < g.P;
      const i64 i = live ? col(g, j) - g.pad_lo : 0;
      for (i64 k = 0; k < kc; ++k) {
        T* o = dst + (pn * kc + k) * Q * L + l;
        T d[4] = {0, 0, 0, 0}, u[4] = {0, 0, 0, 0};
        if (live) {
          const T* row = x + k * cs;
          for (int q = 0; q <= g.r; ++q) {
            const i64 c = i + q * g.d;
            d[q] = c >= 0 && c < g.W ? row[c] : T(0);
          }
          input_transform(g.r, d, u);
        }
        for (int q = 0; q < Q; ++q) o[q * L] = u[q];
      }
    }
}

template <typename T>
void tile_portable(i64 kc, const T* a, const T* b, T* y, i64 y_rs, int m, i64 j0, const Geo& g, Store st,
                   const T* bias) {  // streaming is a plain write here
  constexpr int L = lanes<T>();
  const bool accumulate = st == Store::accumulate;
  const int Q = g.r + 1, MR = mr(g.r);
  for (int l = 0; l < L; ++l) {
    const i64 j = j0 + l;
    if (j >= g.P) break;
    const i64 t = col(g, j);
    for (int i = 0; i < m; ++i) {
      T s[4] = {0, 0, 0, 0};
      for (i64 k = 0; k < kc; ++k)
        for (int q = 0; q < Q; ++q) s[q] = std::fma(a[(k * Q + q) * MR + i], b[(k * Q + q) * L + l], s[q]);
      T va, vb;
      if (g.r == 2) {
        va = s[0] + s[1];
        vb = s[2] + s[1];
      } else {
        va = (s[0] + s[1]) + s[2];
        vb = (s[1] - s[2]) - s[3];
      }
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

// Weight gradient, portable (the AVX-512 float32 kernels reproduce these bit for bit).
template <typename T>
void dw_pack_a_portable(const T* dy, i64 rs, int m, const Geo& g, i64 j0, i64 kp, T* dst) {
  const int r = g.r, Q = r + 1, MR = mr(r), NC = w1d_detail::nc_weight(r);
  for (int i = 0; i < MR; ++i)
    for (i64 k = 0; k < kp; ++k) {
      const i64 j = j0 + k;
      T a = 0, b = 0;
      if (i < m && j < g.P) {
        const i64 t = col(g, j);
        a = dy[i * rs + t];
        if (t + g.d < g.Wo) b = dy[i * rs + t + g.d];
      }
      T dm[4] = {a, a + b, b, 0};
      if (r == 3) {
        dm[2] = a - b;
        dm[3] = T(0) - b;
      }
      for (int q = 0; q < Q; ++q) dst[(q * MR + i) * NC + k] = dm[q];
    }
}

template <typename T>
void dw_pack_b_portable(const T* x, i64 cs, int c, const Geo& g, i64 j0, i64 kp, T* dst, T*) {
  constexpr int L = lanes<T>();
  const int Q = g.r + 1;
  for (i64 k = 0; k < kp; ++k) {
    const i64 j = j0 + k;
    const i64 i = col(g, j) - g.pad_lo;
    for (int l = 0; l < L; ++l) {
      T d[4] = {0, 0, 0, 0}, u[4] = {0, 0, 0, 0};
      if (l < c && j < g.P) {
        for (int q = 0; q <= g.r; ++q) {
          const i64 col = i + q * g.d;
          d[q] = col >= 0 && col < g.W ? x[l * cs + col] : T(0);
        }
        input_transform(g.r, d, u);
      }
      for (int q = 0; q < Q; ++q) dst[(k * Q + q) * L + l] = u[q];
    }
  }
}

template <typename T>
void dw_tile_portable(i64 kp, const T* a, const T* b, T* wp, i64 wp_rs, i64 q_stride, int r) {
  constexpr int L = lanes<T>();
  const int Q = r + 1, MR = mr(r), NC = w1d_detail::nc_weight(r);
  for (int q = 0; q < Q; ++q)
    for (int i = 0; i < MR; ++i)
      for (int l = 0; l < L; ++l) {
        T s = 0;
        for (i64 k = 0; k < kp; ++k) s = std::fma(a[(q * MR + i) * NC + k], b[(k * Q + q) * L + l], s);
        T* o = wp + q * q_stride + i * wp_rs + l;
        *o = *o + s;
      }
}

template <typename T>
struct Kernels {
  void (*pack)(const T*, i64, const Geo&, i64, i64, i64, T*);
  void (*tile)(i64, const T*, const T*, T*, i64, int, i64, const Geo&, Store, const T*);
  void (*fence)();  // after streamed tiles
  void (*dw_pack_a)(const T*, i64, int, const Geo&, i64, i64, T*);
  void (*dw_pack_b)(const T*, i64, int, const Geo&, i64, i64, T*, T*);
  void (*dw_tile)(i64, const T*, const T*, T*, i64, i64, int);
};
void no_fence() {}
bool vector_geometry(const Geo& g) {
  return active_isa() == Isa::avx512 && (g.d % 8 == 0 || g.d == 1 || g.d == 2 || g.d == 4);
}
Kernels<float> kernels_for(const Geo& g, float*) {
  if (vector_geometry(g))
    return {wino1d_avx512::pack_f32, wino1d_avx512::tile_f32, wino1d_avx512::stream_fence,
            wino1d_avx512::dw_pack_a_f32, wino1d_avx512::dw_pack_b_f32, wino1d_avx512::dw_tile_f32};
  return {pack_portable<float>, tile_portable<float>, no_fence, dw_pack_a_portable<float>,
          dw_pack_b_portable<float>, dw_tile_portable<float>};
}
Kernels<double> kernels_for(const Geo& g, double*) {  // grad weight: portable only
  if (vector_geometry(g))
    return {wino1d_avx512::pack_f64, wino1d_avx512::tile_f64, wino1d_avx512::stream_fence,
            dw_pack_a_portable<double>, dw_pack_b_portable<double>, dw_tile_portable<double>};
  return {pack_portable<double>, tile_portable<double>, no_fence, dw_pack_a_portable<double>,
          dw_pack_b_portable<double>, dw_tile_portable<double>};
}

// A for every group and K block: panel (g, k block at k0, rows mp*MR ..) at
// a + g*Mr*K*Q + k0*Mr*Q + mp*MR*kc*Q, element [k][q][i].
template <typename T>
void transform_weights(const ConvParams& p, const Plan& pl, const T* w, T* a) {
  const int r = pl.g.r, Q = pl.Q, MR = pl.MR;
  for (i64 g = 0; g < p.groups; ++g)
    for (i64 k0 = 0; k0 < pl.K; k0 += pl.kc) {
      const i64 kc = std::min(pl.kc, pl.K - k0);
      T* blk = a + g * pl.Mr * pl.K * Q + k0 * pl.Mr * Q;
      for (i64 mp = 0; mp < pl.Mr / MR; ++mp)
        for (i64 k = 0; k < kc; ++k)
          for (int i = 0; i < MR; ++i) {
            const i64 co = mp * MR + i;
            T* o = blk + (mp * kc + k) * Q * MR + i;
            T v[3] = {0, 0, 0};
            if (co < pl.M)
              for (int q = 0; q < r; ++q) v[q] = w[((g * pl.M + co) * pl.K + k0 + k) * r + q];
            if (r == 2) {
              o[0] = v[0];
              o[MR] = v[0] + v[1];
              o[2 * MR] = v[1];
            } else {
              o[0] = v[0];
              o[MR] = ((v[0] + v[1]) + v[2]) * T(0.5);
              o[2 * MR] = ((v[0] - v[1]) + v[2]) * T(0.5);
              o[3 * MR] = v[2];
            }
          }
    }
}

}  // namespace

bool winograd_1d_supports(const ConvParams& p) {
  return p.h.kernel == 1 && (p.w.kernel == 2 || p.w.kernel == 3) && p.w.stride == 1;
}

// Taken where the vector kernels run and the channel products are large enough to beat
// the direct sum's unfolding GEMM (bench/conv.py: WaveNet-style c64 L16000, k3 c128 L1024).
bool winograd_1d_preferred(const ConvParams& p) {
  if (!winograd_1d_supports(p) || p.cin_g() < 16 || p.cout_g() < 16) return false;
  const Geo g = make_geo(p);
  return vector_geometry(g) && g.P >= 64;
}

std::size_t winograd_1d_workspace_bytes(const ConvParams& p, std::size_t elem, int threads) {
  if (!winograd_1d_supports(p)) return 0;
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
  k.col_lo = std::max<i64>(0, col(g, k.j0) - g.pad_lo);
  k.col_hi = std::min<i64>(g.W, col(g, jl) + g.r * g.d - g.pad_lo + 1);
  return k;
}

template <typename T>
void winograd_1d_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y) {
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
  const bool stream = pl.K <= pl.kc && p.n * p.c_out * y_rs * static_cast<i64>(sizeof(T)) >= kStreamOutputBytes;
  const Store first = stream ? Store::stream : Store::write;
  auto input_row = [&](const Task& k) { return x + ((k.img * p.c_in + k.grp * pl.K) * H + k.row) * W; };
#pragma omp parallel num_threads(pl.threads)
  {
    const i64 tid = thread_index(), team = team_size();
    T* bbuf = bbase + tid * pl.b_elems;
    const i64 t0 = pl.tasks * tid / team, t1 = pl.tasks * (tid + 1) / team;
    Task nx = t0 < t1 ? decode(p, pl, t0) : Task{};
    for (i64 t = t0; t < t1; ++t) {
      const Task k = nx;  // decoded once: as the next task of the previous iteration
      if (t + 1 < t1) nx = decode(p, pl, t + 1);
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
      const bool prefetch = t + 1 < t1 && nx.row >= 0;
      const T* xrow = input_row(k);
      const T* nxrow = prefetch ? input_row(nx) : nullptr;
      for (i64 k0 = 0; k0 < pl.K; k0 += pl.kc) {
        const i64 kc = std::min(pl.kc, pl.K - k0);
        const bool last = k0 + kc >= pl.K;
        kern.pack(xrow + k0 * cs, cs, g, kc, k.j0, k.nc, bbuf);
        const T* ablk = a + k.grp * pl.Mr * pl.K * pl.Q + k0 * pl.Mr * pl.Q;
        const i64 npan = (k.nc + L - 1) / L;
        const i64 piece = prefetch ? round_up(ceil_div(nx.col_hi - nx.col_lo, npan), kLine) : 0;
        for (i64 pn = 0; pn < npan; ++pn) {
          if (prefetch) {
            const i64 c0 = nx.col_lo + pn * piece, c1 = std::min(nx.col_hi, c0 + piece);
            for (i64 kk = 0; kk < kc; ++kk)
              for (i64 c = c0; c < c1; c += kLine) __builtin_prefetch(nxrow + (k0 + kk) * cs + c, 0, 2);
          }
          const T* bp = bbuf + pn * kc * pl.Q * L;
          for (i64 mp = 0; mp < pl.Mr / pl.MR; ++mp) {
            const int m = static_cast<int>(std::min<i64>(pl.MR, pl.M - mp * pl.MR));
            kern.tile(kc, ablk + mp * pl.MR * kc * pl.Q, bp, yrow + mp * pl.MR * y_rs, y_rs, m, k.j0 + pn * L, g,
                      k0 > 0 ? Store::accumulate : first, last && brow ? brow + mp * pl.MR : nullptr);
          }
        }
      }
    }
    if (stream) kern.fence();
  }
}

namespace {

// Pieces each group's weight-gradient units are cut into (a fixed count: the sum order
// does not depend on the thread count; enough for the threads of a 2- to 8-core run).
constexpr i64 kWeightPieces = 8;

struct WPlan {
  Geo g{};
  int Q = 0, MR = 0, NC = 0, L = 0, threads = 1;
  i64 M = 0, K = 0, Mr = 0, Kp = 0, chunks = 0, units = 0, pieces = 0, tasks = 0;
  i64 wp_elems = 0, a_elems = 0, b_elems = 0, tmp_elems = 0;  // per piece; per thread
};

WPlan make_wplan(const ConvParams& p, std::size_t elem, int threads) {
  WPlan w;
  w.g = make_geo(p);
  w.Q = w.g.r + 1;
  w.MR = mr(w.g.r);
  w.NC = w1d_detail::nc_weight(w.g.r);
  w.L = elem == 4 ? 16 : 8;
  w.M = p.cout_g();
  w.K = p.cin_g();
  w.Mr = round_up(w.M, w.MR);
  w.Kp = round_up(w.K, w.L);
  w.chunks = ceil_div(w.g.P, w.NC);
  w.units = checked_mul(checked_mul(p.n, p.h.out, "units"), w.chunks, "units");
  w.pieces = std::max<i64>(1, std::min(w.units, kWeightPieces));
  w.tasks = checked_mul(p.groups, w.pieces, "tasks");
  w.threads = static_cast<int>(std::max<i64>(1, std::min<i64>(threads, w.tasks)));
  w.wp_elems = checked_mul(checked_mul(w.Q, w.Mr, "weights"), w.Kp, "weights");
  w.a_elems = static_cast<i64>(w.Q) * w.Mr * w.NC;
  w.b_elems = w.Kp * w.NC * w.Q;
  w.tmp_elems = static_cast<i64>(w.L) * w.Q * w.L;
  return w;
}

i64 wplan_thread_elems(const WPlan& w) { return w.a_elems + w.b_elems + w.tmp_elems; }

}  // namespace

// Float32 where the forward is preferred, while one piece's dW' stays within L2 next to a
// unit's packed A and B (c128 k3: 270 KB, 26 vs 43 ms; c256 k3: 1 MB per piece measured
// slower than the generic reduction, 23.3 vs 21.1 ms) and there are pairs enough to
// amortise the pieces.
constexpr i64 kWeightPieceMaxBytes = 512 * 1024;
constexpr i64 kWeightMinPairs = 256;
bool winograd_1d_weight_grad_preferred(const ConvParams& p, std::size_t elem) {
  if (elem != 4 || !winograd_1d_preferred(p)) return false;
  const WPlan w = make_wplan(p, elem, 1);
  return w.wp_elems * static_cast<i64>(elem) <= kWeightPieceMaxBytes && p.n * p.h.out * w.g.P >= kWeightMinPairs;
}

std::size_t winograd_1d_weight_workspace_bytes(const ConvParams& p, std::size_t elem, int threads) {
  if (!winograd_1d_supports(p)) return 0;
  const WPlan w = make_wplan(p, elem, std::max(threads, 1));
  const i64 total = checked_add(checked_mul(w.wp_elems, w.tasks, "workspace"),
                                checked_mul(wplan_thread_elems(w), w.threads, "workspace"), "workspace");
  return static_cast<std::size_t>(checked_mul(total, static_cast<i64>(elem), "workspace bytes"));
}

template <typename T>
void winograd_1d_backward_weight(const ConvParams& p, const T* dy, const T* x, T* dw) {
  const WPlan w = make_wplan(p, sizeof(T), num_threads());
  const Geo g = w.g;
  const Kernels<T> kern = kernels_for(g, static_cast<T*>(nullptr));
  T* wp = static_cast<T*>(scratch(kScratchGemmA, static_cast<std::size_t>(w.wp_elems * w.tasks) * sizeof(T)));
  const i64 per_thread = wplan_thread_elems(w);
  T* ws = static_cast<T*>(scratch(kScratchOp0, static_cast<std::size_t>(per_thread * w.threads) * sizeof(T)));
  const i64 Ho = p.h.out, H = p.h.in, W = p.w.in, Wo = p.w.out;
  const i64 rs = Ho * Wo, cs = H * W;
  constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
  // A unit's rows: dy (output channels of the group) and x (input channels), the output
  // columns [t_lo, t_hi) and input columns [c_lo, c_hi) its packing reads; row < 0: none.
  struct Unit {
    const T* dy = nullptr;
    const T* x = nullptr;
    i64 j0 = 0, row = -1, t_lo = 0, t_hi = 0, c_lo = 0, c_hi = 0;
  };
  auto unit = [&](i64 u, i64 grp) {
    Unit k;
    const i64 chunk = u % w.chunks, ho = (u / w.chunks) % Ho, img = u / w.chunks / Ho;
    k.row = ho * p.h.stride - p.h.pad_lo;
    if (k.row < 0 || k.row >= H) {
      k.row = -1;
      return k;
    }
    k.j0 = chunk * w.NC;
    const i64 jl = std::min(g.P, k.j0 + w.NC) - 1;
    k.t_lo = col(g, k.j0);
    k.t_hi = std::min(Wo, col(g, jl) + g.d + 1);
    k.c_lo = std::max<i64>(0, k.t_lo - g.pad_lo);
    k.c_hi = std::min(W, k.t_hi - g.d + g.r * g.d - g.pad_lo);
    k.dy = dy + ((img * p.c_out + grp * w.M) * Ho + ho) * Wo;
    k.x = x + ((img * p.c_in + grp * w.K) * H + k.row) * W;
    return k;
  };
#pragma omp parallel num_threads(w.threads)
  {
    const i64 tid = thread_index(), team = team_size();
    T* abuf = ws + tid * per_thread;
    T* bbuf = abuf + w.a_elems;
    T* tmp = bbuf + w.b_elems;
    for (i64 task = w.tasks * tid / team; task < w.tasks * (tid + 1) / team; ++task) {
      const i64 grp = task / w.pieces, piece = task % w.pieces;
      T* acc = wp + task * w.wp_elems;
      std::fill(acc, acc + w.wp_elems, T(0));
      const i64 u_end = w.units * (piece + 1) / w.pieces;
      for (i64 u = w.units * piece / w.pieces; u < u_end; ++u) {
        const Unit un = unit(u, grp), nx = u + 2 < u_end ? unit(u + 2, grp) : Unit{};
        if (un.row < 0) continue;  // a padding row contributes zeros
        const i64 j0 = un.j0, kp = round_up(std::min<i64>(w.NC, g.P - j0), w.L);
        const T* dyb = un.dy;
        const T* xb = un.x;
        // The grad outputs and inputs of the unit after next are prefetched (to L2) a
        // slice of rows per tile while this one computes (WaveNet dW: 24.5-27.6 ms with
        // the next unit, 21.4-24.9 with the one after, alternating runs).
        const i64 calls = (w.Kp / w.L) * (w.Mr / w.MR), nrows = nx.row < 0 ? 0 : w.M + w.K;
        i64 call = 0;
        auto prefetch_slice = [&]() {
          for (i64 rr = nrows * call / calls; rr < nrows * (call + 1) / calls; ++rr) {
            const T* base = rr < w.M ? nx.dy + rr * rs : nx.x + (rr - w.M) * cs;
            const i64 lo = rr < w.M ? nx.t_lo : nx.c_lo, hi = rr < w.M ? nx.t_hi : nx.c_hi;
            for (i64 c = lo; c < hi; c += kLine) __builtin_prefetch(base + c, 0, 2);
          }
          ++call;
        };
        for (i64 mp = 0; mp < w.Mr / w.MR; ++mp)
          kern.dw_pack_a(dyb + mp * w.MR * rs, rs, static_cast<int>(std::min<i64>(w.MR, w.M - mp * w.MR)), g, j0,
                         kp, abuf + mp * w.Q * w.MR * w.NC);
        for (i64 lp = 0; lp < w.Kp / w.L; ++lp)
          kern.dw_pack_b(xb + lp * w.L * cs, cs, static_cast<int>(std::min<i64>(w.L, w.K - lp * w.L)), g, j0, kp,
                         bbuf + lp * w.NC * w.Q * w.L, tmp);
        for (i64 lp = 0; lp < w.Kp / w.L; ++lp)
          for (i64 mp = 0; mp < w.Mr / w.MR; ++mp) {
            prefetch_slice();
            kern.dw_tile(kp, abuf + mp * w.Q * w.MR * w.NC, bbuf + lp * w.NC * w.Q * w.L,
                         acc + mp * w.MR * w.Kp + lp * w.L, w.Kp, w.Mr * w.Kp, g.r);
          }
      }
    }
  }
  // dW' summed over the pieces in order, then G^T back to the taps (rows split over the
  // threads; each element's sum order is fixed).
  const int r = g.r;
  const i64 rows = p.groups * w.M;
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(std::min<i64>(w.threads, rows)))
  for (i64 gr = 0; gr < rows; ++gr) {
    const i64 grp = gr / w.M, co = gr % w.M;
    for (i64 ci = 0; ci < w.K; ++ci) {
      T S[4] = {0, 0, 0, 0};
      for (int q = 0; q < w.Q; ++q) {
        const T* src = wp + grp * w.pieces * w.wp_elems + (q * w.Mr + co) * w.Kp + ci;
        T v = src[0];
        for (i64 pc = 1; pc < w.pieces; ++pc) v = v + src[pc * w.wp_elems];
        S[q] = v;
      }
      T* o = dw + ((grp * w.M + co) * w.K + ci) * r;
      if (r == 2) {
        o[0] = S[0] + S[1];
        o[1] = S[1] + S[2];
      } else {
        const T h = S[1] + S[2];
        o[0] = S[0] + h * T(0.5);
        o[1] = (S[1] - S[2]) * T(0.5);
        o[2] = h * T(0.5) + S[3];
      }
    }
  }
}

template void winograd_1d_forward<float>(const ConvParams&, const float*, const float*, const float*, float*);
template void winograd_1d_forward<double>(const ConvParams&, const double*, const double*, const double*, double*);

template void winograd_1d_backward_weight<float>(const ConvParams&, const float*, const float*, float*);
template void winograd_1d_backward_weight<double>(const ConvParams&, const double*, const double*, double*);

}  // namespace pyconv
