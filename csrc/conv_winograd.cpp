// Winograd F(2x2,3x3) lowering of the convolution family: 3x3 kernel, stride 1,
// dilation 1, any padding, any groups.
//
// Each 2x2 block of outputs ("tile", tile (i, j) = outputs 2i..2i+1 x 2j..2j+1) comes from
// the 4x4 input patch d at rows 2i - pad_top.., columns 2j - pad_left.. (zero outside the
// input) as
//     Y = A^T [ sum_ci (G g G^T) (.) (B^T d B) ] A,
// i.e. 16 independent GEMMs over the channels, one per position p of the 4x4 transformed
// tile: M[p] (C_out x tiles) = U[p] (C_out x C_in) * V[p] (C_in x tiles). 16 multiplies per
// tile and channel pair instead of 36.
//
//   G = [1    0    0 ]   B^T = [1  0 -1  0]   A^T = [1  1  1  0]
//       [1/2  1/2  1/2]        [0  1  1  0]         [0  1 -1 -1]
//       [1/2 -1/2  1/2]        [0 -1  1  0]
//       [0    0    1 ]         [0  1  0 -1]
//
// Accuracy. Every transform entry is 0, +-1 or +-1/2, so on integer-valued data whose
// partial sums stay below 2^24 / 4 (float32) every intermediate is exact and the result
// is bit-exact, like the direct sum. On real data the result is not the direct summation
// order: the input transform adds up to 4 values, the weight transform up to 9 (times
// 1/4), the output transform up to 9 products' sums, so the error bound is the direct
// sum's K * eps * sum|x||w| times a small constant (about 4 to 8; the tests allow 16).
// path="generic" keeps the exact direct order.
//
// Forward, tile-block order (forward_blocked): U is packed into MR-row panels once per
// call; the threads take blocks of at most Tb tiles (ranges of NR-tile panels of one
// group, handed out largest first by a Dealer, so a thread slowed down by other load
// takes fewer); each block transforms its tiles' input into V (16 x C_in/g x Tb, written
// straight into the GEMM micro-kernel's NR-column panels), runs the 16 GEMMs on the
// micro-kernel directly into M (16 x C_out/g x Tb) and transforms M into its tiles'
// outputs. Each output element belongs to one tile, hence to one block; the GEMM sums
// over the channels in K blocks that depend only on C_in/g and the ISA, so the result
// does not depend on the blocks or on the thread count. Tb keeps V + M near kBlockBytes
// per thread (at least kBigUMinTiles tiles when U outgrows the L3, as U is streamed once
// per block; such a U is also written with non-temporal stores when one thread runs).
//
// Forward, weight-stationary order (forward_ws), when U outgrows the L3's share and is
// larger than V of all the tiles (512 -> 512 channels on 7x7 planes: U 16 MB, V 4 MB):
// the threads transform every tile's input into one shared V (a barrier), then take
// groups of kWsGroupPanels output-channel panels: each transforms its group's weights
// into its own U slice, which stays in its cache while all the tiles run against it,
// kWsChunkTiles at a time, each chunk's output transform right after its GEMMs. U is
// never written in full, never goes to memory and back, and no thread reads another's
// part of it. Same K blocks, same transforms: the same result as the tile-block order.
//
// Grad input: the forward Winograd convolution of dy with the flipped, channel-transposed
// weights and the padding mirrored (2 - pad; a pad > 2 falls back to generic). The
// weight transform reads w in place through a strided, tap-reversed view (WView).
//
// Grad weight: dW = G^T [ sum_tiles (A dY A^T) (.) (B^T d B) ] G. Tiles are taken in
// blocks of a fixed size Tw (a function of the channel counts and the ISA, never of the
// thread count); per block the threads write Y' = A dY A^T into MR-row panels and
// V^T = (B^T d B)^T into NR-column panels (shared buffers, two barriers per block), then
// run the GEMM tasks dM[p] += Y'[p] V[p]^T, one task per (output-channel panels,
// input-channel panels) over the 16 positions, block after block and within a block in
// K steps of increasing order: each dM element is summed in the same order whatever the
// thread count or the task partition. In the last block each task turns its own dM rows
// into dW = G^T dM G while they are still in cache. With a single block (the sum over
// all the tiles is one block's), a task sums its rows of dM in a per-thread buffer (one
// MR-row panel x its input channels x 16 positions, in the L2) instead of a full
// 16 x C_out x C_in/g array that would go to memory and back. All the work items (the
// transforms, the GEMM tasks) are taken dynamically: each writes its own outputs.
//
// AVX-512 float32 uses panel kernels (winograd_avx512.cpp): 16 tiles (or 16 channels)
// per vector. Where a panel's 16 tiles lie in at most kRuns (4) tile rows the
// forward reads their patches with masked row loads and even/odd permutes and writes
// their outputs with interleaving permutes and masked stores; otherwise masked gathers
// and scatters. Grad weight runs its input side (and its grad output, where 16 tiles lie
// in at most kRuns tile rows) through such tile-lane kernels, then transposes each 16 x 16
// (channel, tile) block into channel lanes. Other ISAs and float64 use the row kernels
// of winograd_kernels.h. All do the same additions in the same order.
//
// Memory (all pyconv::scratch(), reused across calls; winograd_workspace_bytes):
// forward: packed U (16 x C_out x C_in/g, padded to MR rows) plus per thread V, M and
// four zero-padded input rows; weight-stationary: V of all the tiles (no larger than U)
// plus per thread a U slice, an M chunk and the rows; grad weight: dM (16 x C_out x
// C_in/g; with one block, a panel's worth per thread) plus the shared per-block panels
// (about kWgtBlockBytes). Bounded by the channel counts and a row of the plane, never by
// the batch (V of all the tiles is no larger than U).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "conv.h"
#include "cpu.h"
#include "gemm.h"
#include "ukernels/gemm_ukernel.h"
#include "ukernels/winograd_kernels.h"

namespace pyconv {

namespace {

constexpr i64 kBlockBytes = 1 << 20;       // forward: target V + M bytes per thread
constexpr i64 kMinTiles = 32;              // forward: smallest tile block
constexpr i64 kMaxTiles = 1024;            // forward: largest tile block
constexpr i64 kBigU = 8 << 20;             // forward: U (one group) above this many bytes ...
constexpr i64 kBigUMinTiles = 128;         // ... gets blocks of at least this many tiles
// Weight-stationary forward: MR-row panels per output-channel group (its U slice: 2 x 16
// x 16 x 512 floats = 1 MB at C_in 512; 1 and 2 measured alike, 4 and 8 slower) and
// tiles per chunk (32 to 128 measured alike).
constexpr i64 kWsGroupPanels = 2;
constexpr i64 kWsChunkTiles = 128;
// Grad weight: target bytes of the shared per-block buffers. Each block costs the threads
// two barriers, so blocks are large (on a loaded machine a barrier can cost a time slice).
constexpr i64 kWgtBlockBytes = 8 << 20;
constexpr i64 kWgtMinTiles = 64;
constexpr i64 kWgtMaxTiles = 2048;

// Elements rounded up to whole cache lines.
inline i64 lines(i64 elems, std::size_t elem) {
  const i64 per = 64 / static_cast<i64>(elem);
  return round_up(std::max<i64>(elems, 1), per);
}
// Distance between the 16 positions' planes of a transformed array: whole cache lines
// plus one, so the 16 planes a transform reads or writes together never sit a multiple
// of 4 KiB apart (they would all fall into the same L1 sets and evict each other).
inline i64 pos_stride(i64 elems, std::size_t elem) { return lines(elems, elem) + 64 / static_cast<i64>(elem); }

// Hands out ranges of n units to the threads of a parallel region, largest first: about
// remaining / threads units, at most `most`, at least 1, never across a multiple of
// `seg` (a group's units). A thread slowed down by other load on its core takes fewer
// ranges instead of making the others wait, and the last ranges are small, so the
// threads finish together. Which thread takes which range never changes a result: every
// unit is computed the same way whatever range it falls in.
class Dealer {
 public:
  Dealer(i64 n, i64 seg, i64 most, int threads) : n_(n), seg_(seg), most_(most), div_(threads) {}
  bool take(i64* begin, i64* end) {
    i64 s = next_.load(std::memory_order_relaxed);
    while (true) {
      if (s >= n_) return false;
      const i64 k = std::min(std::max<i64>(1, std::min(most_, (n_ - s) / div_)), seg_ - s % seg_);
      if (next_.compare_exchange_weak(s, s + k, std::memory_order_relaxed)) {
        *begin = s;
        *end = s + k;
        return true;
      }
    }
  }

 private:
  const i64 n_, seg_, most_, div_;
  std::atomic<i64> next_{0};
};

template <typename T>
struct Kernels {
  void (*in)(const T* const*, i64, T*, i64);
  void (*out)(const T*, i64, i64, T, T*, T*);
  void (*wout)(const T*, i64, i64, T*);
};

namespace wino_portable {
PYCONV_WINO_ROW_KERNELS
}  // namespace wino_portable

Kernels<float> kernels(float*) {
  switch (active_isa()) {
    case Isa::avx512: return {wino_avx512::input_rows_f32, wino_avx512::output_rows_f32, wino_avx512::weight_out_rows_f32};
    case Isa::avx2: return {wino_avx2::input_rows_f32, wino_avx2::output_rows_f32, wino_avx2::weight_out_rows_f32};
    default: return {wino_portable::input_rows_f32, wino_portable::output_rows_f32, wino_portable::weight_out_rows_f32};
  }
}
Kernels<double> kernels(double*) {
  switch (active_isa()) {
    case Isa::avx512: return {wino_avx512::input_rows_f64, wino_avx512::output_rows_f64, wino_avx512::weight_out_rows_f64};
    case Isa::avx2: return {wino_avx2::input_rows_f64, wino_avx2::output_rows_f64, wino_avx2::weight_out_rows_f64};
    default: return {wino_portable::input_rows_f64, wino_portable::output_rows_f64, wino_portable::weight_out_rows_f64};
  }
}

// Tile geometry of a call.
struct Geo {
  i64 Cg, Mg, th, tw, tiles_img, total;
  i64 Hl, Wl;  // input rows / columns any valid output reads (the rest reads as zero)
  explicit Geo(const ConvParams& p) {
    Cg = p.cin_g();
    Mg = p.cout_g();
    th = ceil_div(p.h.out, 2);
    tw = ceil_div(p.w.out, 2);
    tiles_img = th * tw;
    total = p.n * tiles_img;
    Hl = std::min(p.h.in, p.h.out + 2 - p.h.pad_lo);
    Wl = std::min(p.w.in, p.w.out + 2 - p.w.pad_lo);
  }
  // Tile t of the batch (tiles counted image by image, row-major in each): its image n
  // and its tile row i and column j.
  struct Tile {
    i64 n, i, j;
  };
  Tile at(i64 t) const {
    const i64 r = t % tiles_img;
    return {t / tiles_img, r / tw, r % tw};
  }
};

template <typename T>
gemm_detail::GemmKernel<T> micro_kernel();
template <>
gemm_detail::GemmKernel<float> micro_kernel<float>() {
  switch (active_isa()) {
    case Isa::avx512: return gemm_detail::avx512_kernel_f32();
    case Isa::avx2: return gemm_detail::avx2_kernel_f32();
    default: return gemm_detail::scalar_kernel_f32();
  }
}
template <>
gemm_detail::GemmKernel<double> micro_kernel<double>() {
  switch (active_isa()) {
    case Isa::avx512: return gemm_detail::avx512_kernel_f64();
    case Isa::avx2: return gemm_detail::avx2_kernel_f64();
    default: return gemm_detail::scalar_kernel_f64();
  }
}
GemmBlocking micro_blocking(std::size_t elem) {
  return elem == 4 ? micro_kernel<float>().blk : micro_kernel<double>().blk;
}

// Forward plan. The 16 GEMMs call the GEMM micro-kernel directly: U is packed into its
// MR-row micro-panels (k-major), the input transform writes V straight into NR-column
// micro-panels, so nothing is repacked per tile block. Two orders (ws): tile blocks
// against a U transformed in full beforehand (forward_blocked), or output-channel groups
// against a V of all the tiles (forward_ws).
struct FwdPlan {
  int mr, nr;
  i64 kc, kblocks;        // channel (K) blocks: a function of C_in/g and the ISA only
  i64 panels;             // MR-row panels of C_out/g
  i64 ups, vps, mps;      // position strides of U, V, M (ws: of the shared V of all tiles)
  i64 tb, tpanels, units;  // tiles per block, NR-tile panels per block, panels in all
  bool ws;                // weight-stationary order
  i64 gp, cogroups, tc;   // ws: panels per output-channel group, groups per conv group, tiles per chunk
  i64 lups, lmps;         // ws: position strides of the per-thread U slice and M chunk
  int threads;
  i64 shared_elems;       // packed U (all groups); ws: V of all tiles (all groups)
  i64 v_elems, m_elems, row_elems, tmp_elems, per_thread;  // per thread
};

FwdPlan fwd_plan(const ConvParams& p, std::size_t elem, int threads_max) {
  const Geo g(p);
  const GemmBlocking blk = micro_blocking(elem);
  FwdPlan f{};
  f.mr = blk.mr;
  f.nr = blk.nr;
  f.kblocks = ceil_div(g.Cg, blk.kc);
  f.kc = ceil_div(g.Cg, f.kblocks);
  f.panels = ceil_div(g.Mg, f.mr);
  const i64 per_tile = checked_mul(16 * static_cast<i64>(elem), g.Cg + g.Mg, "winograd block");
  // U streams from memory once per block: when it is too large to stay in the L3, bigger
  // blocks (V and M then live in L3 too) measured faster (512->512 7px b8: 32 tiles
  // 15.7 ms, 128 tiles 13.5 ms; 256->256 14px b8 stays fastest at 32).
  const i64 u_bytes = checked_mul(checked_mul(16 * static_cast<i64>(elem), g.Mg, "winograd U"), g.Cg, "winograd U");
  const i64 min_tiles = u_bytes > kBigU ? kBigUMinTiles : kMinTiles;
  i64 tb = std::min(kMaxTiles, std::max(min_tiles, kBlockBytes / per_tile));
  tb = std::min(round_up(tb, f.nr), round_up(std::max<i64>(g.total, 1), f.nr));
  const i64 units = ceil_div(std::max<i64>(g.total, 1), f.nr);  // NR-tile column panels
  const double flops = 2.0 * static_cast<double>(p.n) * static_cast<double>(p.c_out) *
                       static_cast<double>(p.h.out) * static_cast<double>(p.w.out) *
                       static_cast<double>(g.Cg) * 9.0;
  // Blocks of tile panels, at most tb tiles each, are handed out to the threads by a
  // Dealer. The result does not depend on the partition (each output belongs to one
  // tile; the GEMM's K blocks follow C_in/g).
  f.units = units;
  f.tb = tb;
  f.tpanels = tb / f.nr;
  f.row_elems = lines(checked_mul(4, 2 * g.tw + 2, "winograd rows"), elem);
  f.tmp_elems = lines(4 * g.tw, elem);
  const i64 tpad = units * f.nr;
  // Weight-stationary when U outgrows the L3's share (it would be written to memory and
  // read back) and is larger than V of all the tiles (at least as many output channels
  // as padded tiles). 512->512 7px b8 forward: 11.6 against 13.1 ms at 1 thread, 6.2
  // against 7.8 at 2. 256->256 14px b8 (4 MB U, 392 tiles) measured even, so it stays.
  f.ws = u_bytes > kBigU && g.Mg >= tpad;
  i64 work_items = units;
  if (f.ws) {
    f.gp = std::min<i64>(f.panels, kWsGroupPanels);
    f.cogroups = ceil_div(f.panels, f.gp);
    f.gp = ceil_div(f.panels, f.cogroups);
    work_items = std::max(units, f.cogroups);
  }
  const int tmax = std::max(threads_max, 1);
  f.threads = static_cast<int>(
      std::min<i64>(threads_for_work(flops, 1 << 20), checked_mul(work_items, p.groups, "winograd")));
  f.threads = std::max(1, std::min(f.threads, tmax));
  if (f.ws) {
    f.tc = std::min(tpad, round_up(kWsChunkTiles, f.nr));
    f.vps = pos_stride(checked_mul(g.Cg, tpad, "winograd V"), elem);
    f.lups = pos_stride(checked_mul(f.gp * f.mr, g.Cg, "winograd U"), elem);
    f.lmps = pos_stride(checked_mul(f.gp * f.mr, f.tc, "winograd M"), elem);
    f.shared_elems = checked_mul(checked_mul(16, p.groups, "winograd V"), f.vps, "winograd V");
    f.per_thread = checked_add(checked_add(checked_mul(16, f.lups, "winograd U"), checked_mul(16, f.lmps, "winograd M"),
                                           "winograd workspace"),
                               f.row_elems + f.tmp_elems, "winograd workspace");
    return f;
  }
  f.ups = pos_stride(checked_mul(f.panels * f.mr, g.Cg, "winograd U"), elem);
  f.vps = pos_stride(checked_mul(g.Cg, tb, "winograd V"), elem);
  f.mps = pos_stride(checked_mul(g.Mg, tb, "winograd M"), elem);
  f.shared_elems = checked_mul(checked_mul(16, p.groups, "winograd U"), f.ups, "winograd U");
  f.v_elems = checked_mul(16, f.vps, "winograd V");
  f.m_elems = checked_mul(16, f.mps, "winograd M");
  f.per_thread = f.v_elems + f.m_elems + f.row_elems + f.tmp_elems;
  return f;
}


// Where the 3x3 kernel of (group g, output channel m, input channel c) of a problem
// lies: w + g*gs + m*ms + c*cs, taps in order or (flip) reversed. The forward reads the
// weights as they are; grad input reads the same array as its mirrored problem's
// weights (channels swapped, kernel rotated), with no copy.
template <typename T>
struct WView {
  const T* w;
  i64 gs, ms, cs;
  bool flip;
};

// U = G w G^T for every (output channel, input channel) pair, packed for the
// micro-kernel: U(g, pos, co, ci) at Up[((g*16 + pos)*panels + co/MR)*Cg*MR + ci*MR + co%MR],
// rows past C_out/g zero. weight_panel writes one (group, panel): 16 x C_in/g x MR values
// at base + pos*pstride + ci*MR + r. Channels in chunks of kWChunk transformed into a
// local [pos][ci][MR] buffer (each weight row read sequentially), then copied out as 16
// contiguous runs (the 16 destinations are a power-of-two distance apart, so writing
// them element by element would thrash the cache sets).
constexpr i64 kWChunk = 16;
template <typename T>
bool weights_vec(const WView<T>& wv, i64 MR) {
  return std::is_same<T, float>::value && active_isa() == Isa::avx512 && MR == 16 && wv.ms * 16 < (i64(1) << 31);
}

template <typename T>
void weight_panel(const ConvParams& p, i64 MR, const WView<T>& wv, i64 g, i64 ip, T* base, i64 pstride, bool vec,
                  bool stream) {
  const i64 Cg = p.cin_g(), Mg = p.cout_g();
  const T h = T(0.5);
  if (vec) {
    wino_avx512::weights_panel_f32(reinterpret_cast<const float*>(wv.w + g * wv.gs + ip * MR * wv.ms), wv.ms, wv.cs,
                                   wv.flip, static_cast<int>(std::min(MR, Mg - ip * MR)), Cg,
                                   reinterpret_cast<float*>(base), pstride, stream);
    return;
  }
  alignas(64) T loc[16 * kWChunk * 16];  // [pos][ci][r], MR <= 16
  for (i64 c0 = 0; c0 < Cg; c0 += kWChunk) {
    const i64 cn = std::min(kWChunk, Cg - c0);
    for (i64 r = 0; r < MR; ++r) {
      const i64 m = ip * MR + r;
      for (i64 cc = 0; cc < cn; ++cc) {
        T* o = loc + cc * MR + r;
        const i64 ps = kWChunk * MR;
        if (m >= Mg) {
          for (int q = 0; q < 16; ++q) o[q * ps] = T(0);
          continue;
        }
        const T* kp = wv.w + g * wv.gs + m * wv.ms + (c0 + cc) * wv.cs;
        T k[9];
        for (int q = 0; q < 9; ++q) k[q] = kp[wv.flip ? 8 - q : q];
        T t[4][3];  // G g
        for (int c = 0; c < 3; ++c) {
          t[0][c] = k[c];
          t[1][c] = ((k[c] + k[3 + c]) + k[6 + c]) * h;
          t[2][c] = ((k[c] - k[3 + c]) + k[6 + c]) * h;
          t[3][c] = k[6 + c];
        }
        for (int rr = 0; rr < 4; ++rr) {  // (G g) G^T
          o[(4 * rr + 0) * ps] = t[rr][0];
          o[(4 * rr + 1) * ps] = ((t[rr][0] + t[rr][1]) + t[rr][2]) * h;
          o[(4 * rr + 2) * ps] = ((t[rr][0] - t[rr][1]) + t[rr][2]) * h;
          o[(4 * rr + 3) * ps] = t[rr][2];
        }
      }
    }
    for (int q = 0; q < 16; ++q)
      std::memcpy(base + q * pstride + c0 * MR, loc + q * kWChunk * MR, static_cast<std::size_t>(cn * MR) * sizeof(T));
  }
}

// The four zero-padded input rows of tiles (i, j .. j+len-1) of one input plane.
template <typename T>
inline void load_rows(const ConvParams& p, const Geo& g, const T* xp, i64 i, i64 j, i64 len, T* buf,
                      const T** rows) {
  const i64 width = 2 * len + 2, iw0 = 2 * j - p.w.pad_lo;
  const i64 k_lo = std::min(width, std::max<i64>(0, -iw0));
  const i64 k_hi = std::max(k_lo, std::min(width, g.Wl - iw0));
  for (int r = 0; r < 4; ++r) {
    T* d = buf + r * width;
    rows[r] = d;
    const i64 ih = 2 * i - p.h.pad_lo + r;
    if (ih < 0 || ih >= g.Hl || k_hi <= k_lo) {
      std::fill(d, d + width, T(0));
      continue;
    }
    std::fill(d, d + k_lo, T(0));
    std::memcpy(d + k_lo, xp + ih * p.w.in + iw0 + k_lo, static_cast<std::size_t>(k_hi - k_lo) * sizeof(T));
    std::fill(d + k_hi, d + width, T(0));
  }
}

// Input transform of tiles t0 .. t0+nt-1 (global tile index over the batch) of input
// channels [c0, c1) of group g. Tile tt = t - t0 of channel ci, position pos goes to
// V[pos*vps + (tt/pw)*pws + ci*vcs + tt%pw]: pw = nt for a plain (pos, ci, tile) array
// (pws unused), pw = NR for micro-panels.
template <typename T>
void input_block(const ConvParams& p, const Geo& ge, const Kernels<T>& k, const T* x, i64 grp, i64 t0, i64 nt,
                 i64 c0, i64 c1, T* V, i64 vps, i64 vcs, i64 pw, i64 pws, T* buf) {
  const i64 in_plane = p.h.in * p.w.in;
  for (i64 t = t0; t < t0 + nt;) {
    const auto [n, i, j] = ge.at(t);
    const i64 len = std::min(ge.tw - j, t0 + nt - t);
    const T* rows[4];
    for (i64 ci = c0; ci < c1; ++ci) {
      const T* xp = x + (n * p.c_in + grp * ge.Cg + ci) * in_plane;
      load_rows(p, ge, xp, i, j, len, buf, rows);
      for (i64 a = 0; a < len;) {  // pieces that stay inside one micro-panel
        const i64 tt = t - t0 + a, q = tt % pw, piece = std::min(len - a, pw - q);
        const T* rr[4] = {rows[0] + 2 * a, rows[1] + 2 * a, rows[2] + 2 * a, rows[3] + 2 * a};
        k.in(rr, piece, V + (tt / pw) * pws + ci * vcs + q, vps);
        a += piece;
      }
    }
    t += len;
  }
}

// The 16 GEMMs of nt tiles against the output-channel panels [ip0, ip1): M[pos] (row
// (ip - ip0)*MR + r at M + pos*mps + row*ms) = U[pos] V[pos], U's panel ip at Ug + pos*ups
// + (ip - ip0)*Cg*MR, V's NR-tile panel jp at V + pos*vps + jp*Cg*NR. K in the plan's
// blocks, in increasing order.
template <typename T>
void block_gemms(const FwdPlan& f, const gemm_detail::GemmKernel<T>& mk, const T* Ug, i64 ups, i64 ip0, i64 ip1,
                 const T* V, i64 vps, T* M, i64 mps, i64 ms, i64 Cg, i64 Mg, i64 nt) {
  const i64 MR = f.mr, NR = f.nr, np = ceil_div(nt, NR);
  for (int pos = 0; pos < 16; ++pos) {
    const T* Up = Ug + pos * ups;
    const T* Vg = V + pos * vps;
    T* Mp = M + pos * mps;
    for (i64 kb = 0; kb < f.kblocks; ++kb) {
      const i64 k0 = kb * f.kc, kc = std::min(f.kc, Cg - k0);
      for (i64 ip = ip0; ip < ip1; ++ip) {
        const T* a = Up + (ip - ip0) * Cg * MR + k0 * MR;
        const int m = static_cast<int>(std::min(MR, Mg - ip * MR));
        T* c = Mp + (ip - ip0) * MR * ms;
        for (i64 jp = 0; jp < np; ++jp) {
          const int n = static_cast<int>(std::min(NR, nt - jp * NR));
          const auto run = (mk.run_narrow && n <= mk.narrow_n) ? mk.run_narrow : mk.run;
          run(kc, a, Vg + jp * Cg * NR + k0 * NR, c + jp * NR, ms, 1, m, n, kb > 0);
        }
      }
    }
  }
}

// Most runs (adjacent tiles of one tile row) of a 16-tile panel that the AVX-512 row-load
// and masked-store kernels take (four 4-tile rows of a 7x7 or 8x8 plane); more go
// through gathers and scatters.
constexpr int kRuns = 4;

// Tiles t .. t+cnt-1 (cnt <= 16) of a panel as runs of adjacent tiles of one tile row, for
// the output-side (2x2 patch per tile) row kernels: run s starts at lane l0[s], and its
// first tile's top-left output is at off[s] = n*C_out*plane + 2i*Wo + 2j of the planes;
// bits 2l, 2l+1 of top[s] (bot[s]) flag the outputs (0,0), (0,1) ((1,0), (1,1)) of lane l
// that exist. Returns the run count, or kRuns + 1 when there are more runs.
int output_runs(const ConvParams& p, const Geo& ge, i64 t, i64 cnt, i64* off, int* l0, unsigned* top,
                unsigned* bot) {
  const i64 Ho = p.h.out, Wo = p.w.out;
  int nruns = 0;
  i64 prev = -1;
  for (int l = 0; l < cnt; ++l) {
    const auto [n, i, j] = ge.at(t + l);
    const i64 key = n * ge.th + i;
    if (key != prev) {
      if (nruns == kRuns) return kRuns + 1;
      off[nruns] = n * p.c_out * Ho * Wo + 2 * i * Wo + 2 * j;
      l0[nruns] = l;
      top[nruns] = bot[nruns] = 0;
      ++nruns;
      prev = key;
    }
    const unsigned bits = 2 * j + 1 < Wo ? 3u : 1u;
    top[nruns - 1] |= bits << (2 * l);
    if (2 * i + 1 < Ho) bot[nruns - 1] |= bits << (2 * l);
  }
  return nruns;
}

// Input transform of tiles t0 .. t0+nt-1 of group grp through the AVX-512 float32 panel
// kernels: 16-tile panel jp (columns past nt zero) at V + jp*Cg*16, position stride vps.
template <typename T>
void panel_input(const ConvParams& p, const Geo& ge, i64 grp, i64 c0, i64 c1, i64 t0, i64 nt, const T* x, T* V,
                 i64 vps) {
  if constexpr (std::is_same<T, float>::value) {
    const i64 Cg = ge.Cg, cn = c1 - c0, H = p.h.in, W = p.w.in;
    const T* xg = x + (grp * Cg + c0) * H * W;
    const i64 in_plane = H * W, np = ceil_div(nt, i64(16));
    for (i64 jp = 0; jp < np; ++jp) {
      {  // tiles in at most kRuns runs of one tile row each: loads and permutes, no gathers
        i64 rbase[kRuns];
        unsigned ma[4 * kRuns] = {}, ma2[4 * kRuns] = {};
        int nruns = 0;
        i64 prev = -1, rl0 = 0, riw = 0, rih = 0;
        for (int l = 0; l < 16 && jp * 16 + l < nt; ++l) {
          const i64 t = t0 + jp * 16 + l;
          const auto [n, i, j] = ge.at(t);
          const i64 key = n * ge.th + i;
          if (key != prev) {
            if (nruns == kRuns) {
              nruns = kRuns + 1;
              break;
            }
            rl0 = l;
            rih = 2 * i - p.h.pad_lo;
            riw = 2 * j - p.w.pad_lo;
            rbase[nruns] = n * p.c_in * in_plane + rih * W + riw - 2 * rl0;
            ++nruns;
            prev = key;
          }
          // lane l's columns riw + 2(l - rl0) + c, c = 0..3: elements 2l + c of the run's rows
          for (int c = 0; c < 4; ++c) {
            const i64 col = riw + 2 * (l - rl0) + c;
            if (col < 0 || col >= W) continue;
            for (int rr = 0; rr < 4; ++rr) {
              if (rih + rr < 0 || rih + rr >= H) continue;
              unsigned* mm = c < 2 ? ma : ma2;
              mm[4 * (nruns - 1) + rr] |= 1u << (2 * l + (c & 1));
            }
          }
        }
        if (nruns <= kRuns) {
          wino_avx512::input_panel_runs_f32(xg, in_plane, W, 0, cn, nruns, rbase, ma, ma2, V + jp * cn * 16, 16, vps);
          continue;
        }
      }
      alignas(64) int off[16];
      unsigned short masks[16] = {};
      for (int l = 0; l < 16; ++l) {
        const i64 t = t0 + jp * 16 + l;
        off[l] = 0;
        if (t >= t0 + nt) continue;
        const auto [n, i, j] = ge.at(t);
        const i64 ih = 2 * i - p.h.pad_lo, iw = 2 * j - p.w.pad_lo;
        off[l] = static_cast<int>(n * p.c_in * in_plane + ih * W + iw);
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b)
            if (ih + a >= 0 && ih + a < H && iw + b >= 0 && iw + b < W) masks[4 * a + b] |= 1u << l;
      }
      wino_avx512::input_panels_f32(xg, in_plane, W, 0, cn, off, masks, V + jp * cn * 16, 16, vps);
    }
  } else {
    (void)p, (void)ge, (void)grp, (void)c0, (void)c1, (void)t0, (void)nt, (void)x, (void)V, (void)vps;
  }
}

// Output transform of tiles t0 .. t0+nt-1, output channels [co0, co1) of group grp,
// through the AVX-512 float32 panel kernels: M row co - co0 at M + (co - co0)*ms, tile
// t - t0 in its column, position stride mps.
template <typename T>
void panel_output(const ConvParams& p, const Geo& ge, i64 grp, i64 t0, i64 nt, const T* M, i64 mps, i64 ms, i64 co0,
                  i64 co1, const T* bias, T* y) {
  if constexpr (std::is_same<T, float>::value) {
    const i64 Mg = ge.Mg, Ho = p.h.out, Wo = p.w.out;
    const i64 out_plane = Ho * Wo, np = ceil_div(nt, i64(16));
    for (i64 jp = 0; jp < np; ++jp) {
      // the panel's tiles as runs of one tile row each: at most kRuns take masked stores
      i64 roff[kRuns];
      int rl0[kRuns];
      unsigned rtop[kRuns], rbot[kRuns];
      const int nruns = output_runs(p, ge, t0 + jp * 16, std::min<i64>(16, nt - jp * 16), roff, rl0, rtop, rbot);
      if (nruns <= kRuns) {
        for (i64 co = co0; co < co1; ++co) {
          const i64 c = grp * Mg + co;
          wino_avx512::output_panel_runs_f32(M + (co - co0) * ms + jp * 16, mps, bias ? bias[c] : 0.0f,
                                             y + c * out_plane, Wo, nruns, roff, rl0, rtop, rbot);
        }
        continue;
      }
      alignas(64) int yoff[16];
      unsigned short ym[4] = {};
      for (int l = 0; l < 16; ++l) {
        const i64 t = t0 + jp * 16 + l;
        yoff[l] = 0;
        if (t >= t0 + nt) continue;
        const auto [n, i, j] = ge.at(t);
        yoff[l] = static_cast<int>(n * p.c_out * out_plane + 2 * i * Wo + 2 * j);
        const bool r1 = 2 * i + 1 < Ho, c1 = 2 * j + 1 < Wo;
        ym[0] |= 1u << l;
        if (c1) ym[1] |= 1u << l;
        if (r1) ym[2] |= 1u << l;
        if (r1 && c1) ym[3] |= 1u << l;
      }
      for (i64 co = co0; co < co1; ++co) {
        const i64 c = grp * Mg + co;
        wino_avx512::output_panel_f32(M + (co - co0) * ms + jp * 16, mps, yoff, ym, Wo, bias ? bias[c] : 0.0f,
                                      y + c * out_plane);
      }
    }
  } else {
    (void)p, (void)ge, (void)grp, (void)t0, (void)nt, (void)M, (void)mps, (void)ms, (void)co0, (void)co1;
    (void)bias, (void)y;
  }
}

// Input transform of tiles t0 .. t0+nt-1 (t0 a multiple of NR) of group grp into V's
// NR-tile panels (panel jp at V + jp*Cg*NR, position stride vps; columns past nt zero).
template <typename T>
void fwd_input(const ConvParams& p, const Geo& ge, const Kernels<T>& k, bool panels, const T* x, i64 grp, i64 t0,
               i64 nt, T* V, i64 vps, i64 NR, T* buf) {
  if (panels) {
    panel_input(p, ge, grp, i64(0), ge.Cg, t0, nt, x, V, vps);
    return;
  }
  const i64 Cg = ge.Cg, np = ceil_div(nt, NR), last = nt - (np - 1) * NR;
  if (last < NR)  // columns past the block in the last micro-panel: zeros
    for (int pos = 0; pos < 16; ++pos)
      for (i64 ci = 0; ci < Cg; ++ci) {
        T* d = V + pos * vps + (np - 1) * Cg * NR + ci * NR;
        std::fill(d + last, d + NR, T(0));
      }
  input_block(p, ge, k, x, grp, t0, nt, 0, Cg, V, vps, NR, NR, Cg * NR, buf);
}

// Output transform of tiles t0 .. t0+nt-1, output channels [co0, co1) of group grp: M
// row co - co0 at M + (co - co0)*ms, tile t - t0 in its column, position stride mps.
template <typename T>
void fwd_output(const ConvParams& p, const Geo& ge, const Kernels<T>& k, bool panels, i64 grp, i64 t0, i64 nt,
                const T* M, i64 mps, i64 ms, i64 co0, i64 co1, const T* bias, T* y, T* tmp) {
  if (panels) {
    panel_output(p, ge, grp, t0, nt, M, mps, ms, co0, co1, bias, y);
    return;
  }
  const i64 Mg = ge.Mg, Ho = p.h.out, Wo = p.w.out;
  for (i64 t = t0; t < t0 + nt;) {
    const auto [n, i, j] = ge.at(t);
    const i64 len = std::min(ge.tw - j, t0 + nt - t);
    const i64 oh = 2 * i, ow = 2 * j;
    const bool two_rows = oh + 1 < Ho, full = ow + 2 * len <= Wo;
    const i64 cols = std::min(2 * len, Wo - ow);
    for (i64 co = co0; co < co1; ++co) {
      const i64 c = grp * Mg + co;
      T* y0 = y + ((n * p.c_out + c) * Ho + oh) * Wo + ow;
      const T bv = bias ? bias[c] : T(0);
      const T* m = M + (co - co0) * ms + (t - t0);
      if (two_rows && full) {
        k.out(m, mps, len, bv, y0, y0 + Wo);
      } else {
        k.out(m, mps, len, bv, tmp, tmp + 2 * len);
        std::memcpy(y0, tmp, static_cast<std::size_t>(cols) * sizeof(T));
        if (two_rows) std::memcpy(y0 + Wo, tmp + 2 * len, static_cast<std::size_t>(cols) * sizeof(T));
      }
    }
    t += len;
  }
}

// AVX-512 float32 transforms 16 tiles at a time through masked loads / gathers and
// stores / scatters with int32 offsets (whole input and output below 2^31 elements).
template <typename T>
bool use_panels(const ConvParams& p, const FwdPlan& f) {
  return std::is_same<T, float>::value && active_isa() == Isa::avx512 && f.nr == 16 &&
         p.n * p.c_in * p.h.in * p.w.in + 4 * p.w.in < (i64(1) << 31) &&
         p.n * p.c_out * p.h.out * p.w.out + 2 * p.w.out < (i64(1) << 31);
}

// Tile-block order: U transformed in full first (one barrier); the threads take blocks of tile
// panels (at most tpanels, from a Dealer) and run each: input transform, 16 GEMMs,
// output transform.
template <typename T>
void forward_blocked(const ConvParams& p, const FwdPlan& f, const T* x, const WView<T>& wv, const T* bias, T* y) {
  const Geo ge(p);
  const Kernels<T> k = kernels(static_cast<T*>(nullptr));
  const gemm_detail::GemmKernel<T> mk = micro_kernel<T>();
  T* Up = static_cast<T*>(scratch(kScratchGemmA, static_cast<std::size_t>(f.shared_elems) * sizeof(T)));
  T* ws = static_cast<T*>(scratch(kScratchOp0, static_cast<std::size_t>(f.per_thread * f.threads) * sizeof(T)));
  const i64 Cg = ge.Cg, NR = f.nr, MR = f.mr;
  const bool panels = use_panels<T>(p, f);
  const bool vec = weights_vec(wv, MR);
  // U too large to stay in the L3 until the GEMMs read it: non-temporal stores (no read
  // for ownership). Only when one thread runs the GEMMs: with more, every thread reads
  // all of U, which must then come from the cache (on a 16-core Xeon with a large L3,
  // streaming U made c512 7px b8 3-4x slower at 4 and 16 threads).
  const bool stream = vec && f.threads == 1 && f.shared_elems * static_cast<i64>(sizeof(T)) > kBigU &&
                      reinterpret_cast<std::uintptr_t>(Up) % 64 == 0 && f.ups % 16 == 0 && (Cg * MR) % 16 == 0;
  const i64 w_tasks = p.groups * f.panels;
  Dealer deal(p.groups * f.units, f.units, f.tpanels, f.threads);
#pragma omp parallel num_threads(f.threads)
  {
#pragma omp for schedule(dynamic, 1)  // U, one (group, panel) each; then a barrier
    for (i64 task = 0; task < w_tasks; ++task) {
      const i64 g = task / f.panels, ip = task % f.panels;
      weight_panel(p, MR, wv, g, ip, Up + g * 16 * f.ups + ip * Cg * MR, f.ups, vec, stream);
    }
    T* V = ws + f.per_thread * thread_index();
    T* M = V + f.v_elems;
    T* buf = M + f.m_elems;
    T* tmp = buf + f.row_elems;
    i64 b, e;
    while (deal.take(&b, &e)) {  // tile panels [b, e) of group grp, one block
      const i64 grp = b / f.units, t0 = (b % f.units) * NR;
      const i64 nt = std::min((e - grp * f.units) * NR, ge.total) - t0;
      fwd_input(p, ge, k, panels, x, grp, t0, nt, V, f.vps, NR, buf);
      block_gemms(f, mk, Up + grp * 16 * f.ups, f.ups, 0, f.panels, V, f.vps, M, f.mps, f.tb, ge.Cg, ge.Mg, nt);
      fwd_output(p, ge, k, panels, grp, t0, nt, M, f.mps, f.tb, 0, ge.Mg, bias, y, tmp);
    }
  }
}

// Weight-stationary order (FwdPlan::ws: U larger than the transformed input of all the
// tiles, e.g. 512 -> 512 channels on 7x7 planes, where U is 16 MB). The threads first
// transform every tile's input into a shared V (all tiles; one barrier), then take
// output-channel groups of gp panels: each transforms its group's weights into its own
// U slice, which stays in its cache while all the tiles run against it, tc tiles at a
// time, each chunk's output transform right after its GEMMs. U never exists in full and
// goes to memory neither written nor read back; no thread reads another's part of it.
template <typename T>
void forward_ws(const ConvParams& p, const FwdPlan& f, const T* x, const WView<T>& wv, const T* bias, T* y) {
  const Geo ge(p);
  const Kernels<T> k = kernels(static_cast<T*>(nullptr));
  const gemm_detail::GemmKernel<T> mk = micro_kernel<T>();
  T* Vall = static_cast<T*>(scratch(kScratchGemmA, static_cast<std::size_t>(f.shared_elems) * sizeof(T)));
  T* ws = static_cast<T*>(scratch(kScratchOp0, static_cast<std::size_t>(f.per_thread * f.threads) * sizeof(T)));
  const i64 Cg = ge.Cg, Mg = ge.Mg, NR = f.nr, MR = f.mr;
  const bool panels = use_panels<T>(p, f);
  const bool vec = weights_vec(wv, MR);
  const i64 in_tasks = p.groups * f.units, w_tasks = p.groups * f.cogroups;
#pragma omp parallel num_threads(f.threads)
  {
    T* Ul = ws + f.per_thread * thread_index();
    T* Ml = Ul + 16 * f.lups;
    T* buf = Ml + 16 * f.lmps;
    T* tmp = buf + f.row_elems;
#pragma omp for schedule(dynamic, 1)  // one tile panel each
    for (i64 task = 0; task < in_tasks; ++task) {
      const i64 grp = task / f.units, u0 = task % f.units;
      const i64 t0 = u0 * NR, nt = std::min(t0 + NR, ge.total) - t0;
      fwd_input(p, ge, k, panels, x, grp, t0, nt, Vall + grp * 16 * f.vps + u0 * Cg * NR, f.vps, NR, buf);
    }
#pragma omp for schedule(dynamic, 1)
    for (i64 task = 0; task < w_tasks; ++task) {
      const i64 grp = task / f.cogroups, ip0 = task % f.cogroups * f.gp, ip1 = std::min(f.panels, ip0 + f.gp);
      for (i64 ip = ip0; ip < ip1; ++ip)
        weight_panel(p, MR, wv, grp, ip, Ul + (ip - ip0) * Cg * MR, f.lups, vec, false);
      for (i64 t0 = 0; t0 < ge.total; t0 += f.tc) {
        const i64 nt = std::min(f.tc, ge.total - t0);
        block_gemms(f, mk, Ul, f.lups, ip0, ip1, Vall + grp * 16 * f.vps + t0 / NR * Cg * NR, f.vps, Ml, f.lmps, f.tc,
                    Cg, Mg, nt);
        fwd_output(p, ge, k, panels, grp, t0, nt, Ml, f.lmps, f.tc, ip0 * MR, std::min(Mg, ip1 * MR), bias, y, tmp);
      }
    }
  }
}

// ---------------------------------------------------------------- grad weight

// Grad weight plan: tiles in blocks of tw (a function of the channel counts and the ISA,
// never of the thread count: the reduction order over tiles follows the blocks). Per
// block, shared by the threads: V (16 x C_in/g x tw, plain), its transpose packed into
// the micro-kernel's NR-column panels, and Y' written straight into MR-row panels.
struct WgtPlan {
  int mr, nr;
  i64 tw, kc, blocks, co_panels, ci_panels, tasks;  // kc: GEMM depth per kernel call
  i64 gco, gci, n_cog, n_cig;  // GEMM tasks: gco output-channel x gci input-channel panels
  bool chan;                   // AVX-512 float32 channel-panel transforms (no plain V)
  bool local;                  // one tile block: each task sums its dM rows in a per-thread buffer
  i64 lps;                     // local: position stride of that buffer (MR x gci*NR)
  int threads;
  i64 vps, aps, bps, dps;                 // position strides of V, Y' panels, V^T panels, dM
  i64 v_elems, b_elems, a_elems, shared;  // shared buffers (elements)
  i64 dm_elems;                           // dM (all groups)
  i64 row_elems, per_thread;              // per thread
};

constexpr i64 kWgtGroup = 4;  // most MR-row panels of output channels per GEMM task
constexpr i64 kWgtBBytes = 512 << 10;  // V^T panels (16 positions) one GEMM task reuses
constexpr i64 kChanTiles = 32;  // grad weight, AVX-512 input transform: tiles per task

WgtPlan wgt_plan(const ConvParams& p, std::size_t elem, int threads_max) {
  const Geo g(p);
  const GemmBlocking blk = micro_blocking(elem);
  WgtPlan w{};
  w.mr = blk.mr;
  w.nr = blk.nr;
  // (the input side goes through the forward's tile-lane kernels, whose gather fallback
  // takes int32 offsets over the whole input, as in the forward)
  w.chan = elem == 4 && active_isa() == Isa::avx512 && w.nr == 16 && w.mr == 16 &&
           p.n * p.c_in * p.h.in * p.w.in + 4 * p.w.in < (i64(1) << 31) && p.h.out * p.w.out < (i64(1) << 27);
  const i64 per_tile = checked_mul(16 * static_cast<i64>(elem), (w.chan ? 1 : 2) * g.Cg + g.Mg, "winograd block");
  w.kc = blk.kc;
  i64 tw = std::min(kWgtMaxTiles, std::max(kWgtMinTiles, kWgtBlockBytes / per_tile));
  tw = std::max<i64>(8, tw / 8 * 8);
  tw = std::min(tw, round_up(std::max<i64>(g.total, 1), 8));
  w.tw = tw;
  w.blocks = ceil_div(std::max<i64>(g.total, 1), tw);
  w.co_panels = ceil_div(g.Mg, w.mr);
  w.ci_panels = ceil_div(g.Cg, w.nr);
  const double flops = 2.0 * static_cast<double>(p.n) * static_cast<double>(p.c_out) *
                       static_cast<double>(p.h.out) * static_cast<double>(p.w.out) *
                       static_cast<double>(g.Cg) * 9.0;
  w.threads = std::max(1, std::min(threads_for_work(flops, 1 << 20), std::max(threads_max, 1)));
  // GEMM tasks: (gco output-channel panels) x (gci input-channel panels), all 16
  // positions, so the last block can turn its own dM rows into dW while they are in
  // cache. gci: the task's V^T panels of the 16 positions fit about kWgtBBytes; gco
  // shrinks until there are at least 4 tasks per thread. Any partition gives the same
  // sums (each dM element is summed over the blocks, then K steps, in order).
  w.gci = std::max<i64>(1, std::min(w.ci_panels, kWgtBBytes / (16 * tw * w.nr * static_cast<i64>(elem))));
  w.n_cig = ceil_div(w.ci_panels, w.gci);
  w.gci = ceil_div(w.ci_panels, w.n_cig);
  w.gco = std::min(kWgtGroup, w.co_panels);
  while (true) {
    w.n_cog = ceil_div(w.co_panels, w.gco);
    w.gco = ceil_div(w.co_panels, w.n_cog);
    if (w.n_cog * w.n_cig >= 4 * w.threads || w.gco == 1) break;
    w.gco = ceil_div(w.gco, 2);
  }
  w.tasks = w.n_cog * w.n_cig;
  w.vps = pos_stride(checked_mul(g.Cg, tw, "winograd V"), elem);
  w.bps = pos_stride(checked_mul(w.ci_panels * w.nr, tw, "winograd V"), elem);
  w.aps = pos_stride(checked_mul(w.co_panels * w.mr, tw, "winograd Y"), elem);
  w.dps = pos_stride(checked_mul(g.Cg, g.Mg, "winograd dM"), elem);
  w.v_elems = w.chan ? 0 : checked_mul(16, w.vps, "winograd V");
  w.b_elems = checked_mul(16, w.bps, "winograd V");
  w.a_elems = checked_mul(16, w.aps, "winograd Y");
  // With one tile block, dM of one output-channel panel is complete (summed over every
  // tile) when its GEMMs finish: summed in a per-thread buffer that stays in the L2
  // instead of a full 16 x C_out x C_in array, which would go to memory and back
  // (512 -> 512 on 7x7 planes: 16 MB each way per call).
  w.local = w.blocks == 1;
  w.lps = pos_stride(checked_mul(w.mr, w.gci * w.nr, "winograd dM"), elem);
  w.dm_elems = w.local ? 0 : checked_mul(checked_mul(16, p.groups, "winograd dM"), w.dps, "winograd dM");
  w.shared = w.v_elems + w.b_elems + w.a_elems;
  w.row_elems = lines(checked_mul(4, 2 * g.tw + 2, "winograd rows"), elem);
  w.per_thread = w.row_elems + (w.local ? 16 * w.lps : 0);
  return w;
}

// Y'(pos, co, t - t0) = (A dY A^T)[pos] of tiles t0 .. t0+nt-1 for output channel row co
// of the group (rows past C_out/g give zeros), into MR-row panels: Ap[pos*aps +
// (co/MR)*nt*MR + (t - t0)*MR + co%MR].
template <typename T>
void grad_output_block(const ConvParams& p, const Geo& ge, const T* dy, i64 grp, i64 co, i64 t0, i64 nt, T* Ap,
                       i64 aps, i64 MR) {
  const i64 Ho = p.h.out, Wo = p.w.out;
  T* base = Ap + (co / MR) * nt * MR + co % MR;
  if (co >= ge.Mg) {
    for (i64 t = 0; t < nt; ++t)
      for (int q = 0; q < 16; ++q) base[q * aps + t * MR] = T(0);
    return;
  }
  const i64 c = grp * ge.Mg + co;
  for (i64 t = t0; t < t0 + nt; ++t) {
    const auto [n, i, j] = ge.at(t);
    const T* s = dy + ((n * p.c_out + c) * Ho + 2 * i) * Wo + 2 * j;
    const bool r1 = 2 * i + 1 < Ho, c1 = 2 * j + 1 < Wo;
    const T d00 = s[0], d01 = c1 ? s[1] : T(0);
    const T d10 = r1 ? s[Wo] : T(0), d11 = (r1 && c1) ? s[Wo + 1] : T(0);
    // z = dY A^T (2 x 4), then A z (4 x 4)
    const T z0[4] = {d00, d00 + d01, d00 - d01, -d01};
    const T z1[4] = {d10, d10 + d11, d10 - d11, -d11};
    T* o = base + (t - t0) * MR;
    for (int q = 0; q < 4; ++q) {
      o[(0 + q) * aps] = z0[q];
      o[(4 + q) * aps] = z0[q] + z1[q];
      o[(8 + q) * aps] = z0[q] - z1[q];
      o[(12 + q) * aps] = -z1[q];
    }
  }
}

// B(k = t, j = ci) = v[ci*vs + t] for t < kc, channels j0 .. j0+NR-1 (past nc: zeros),
// into one NR-column panel (kc x NR, k-major).
template <typename T>
void pack_transposed(T* dst, const T* v, i64 vs, i64 kc, i64 j0, i64 nc, int nr) {
  const i64 w = std::min<i64>(nr, nc - j0);
  constexpr i64 kB = 16;  // k in blocks: nr rows read, the block written as nr-wide rows
  for (i64 k0 = 0; k0 < kc; k0 += kB) {
    const i64 kn = std::min(kB, kc - k0);
    for (i64 r = 0; r < w; ++r) {
      const T* s = v + (j0 + r) * vs + k0;
      for (i64 k = 0; k < kn; ++k) dst[(k0 + k) * nr + r] = s[k];
    }
    for (i64 r = w; r < nr; ++r)
      for (i64 k = 0; k < kn; ++k) dst[(k0 + k) * nr + r] = T(0);
  }
}

template <typename T>
void backward_weight_impl(const ConvParams& p, const T* dy, const T* x, T* dw, int threads_max) {
  const Geo ge(p);
  const WgtPlan wp = wgt_plan(p, sizeof(T), threads_max);
  const Kernels<T> k = kernels(static_cast<T*>(nullptr));
  const gemm_detail::GemmKernel<T> mk = micro_kernel<T>();
  const i64 Cg = ge.Cg, Mg = ge.Mg, tw = wp.tw, MR = wp.mr, NR = wp.nr;
  const i64 rows_co = wp.co_panels * MR;
  T* dM = static_cast<T*>(scratch(kScratchGemmA, static_cast<std::size_t>(wp.dm_elems) * sizeof(T)));
  T* ws = static_cast<T*>(scratch(kScratchOp0, static_cast<std::size_t>(wp.shared + wp.per_thread * wp.threads) *
                                                   sizeof(T)));
  T* V = ws;
  T* Bp = V + wp.v_elems;
  T* Ap = Bp + wp.b_elems;
  T* priv = ws + wp.shared;
  const int threads = wp.threads;
  const i64 out_plane = p.h.out * p.w.out;
  const bool chan_panels = std::is_same<T, float>::value && wp.chan;
  // dM[g][pos][co][ci], summed over the tile blocks in increasing order.
#pragma omp parallel num_threads(threads)
  {
    T* buf = priv + wp.per_thread * thread_index();
    for (i64 grp = 0; grp < p.groups; ++grp) {
      T* dMg = wp.local ? dM : dM + grp * 16 * wp.dps;  // local: unused
      for (i64 b = 0; b < wp.blocks; ++b) {
        const i64 t0 = b * tw, nt = std::min(tw, ge.total - t0);
        const i64 aps = wp.aps, bps = wp.bps;
        if (chan_panels) {
          // AVX-512 float32: B panels from the forward's 16-tile kernels and a transpose, A
          // panels straight from the grad output, 16 channels per vector.
          const i64 chunks = ceil_div(std::max<i64>(nt, 1), kChanTiles), ci_items = wp.ci_panels * chunks;
          const i64 co_items = wp.co_panels * chunks;
#pragma omp for schedule(dynamic, 1)  // the input and grad-output items interleave
          for (i64 item = 0; item < ci_items + co_items; ++item) {
            if (nt <= 0) continue;
            if (item >= ci_items) {  // Y' of 16 output channels (one MR = 16 panel)
              const i64 ip = (item - ci_items) / chunks, l0 = ((item - ci_items) % chunks) * kChanTiles;
              const i64 cnt = std::min(kChanTiles, nt - l0);
              if (cnt <= 0) continue;
              const i64 Ho = p.h.out, Wo = p.w.out, nch = std::min(MR, Mg - ip * MR);
              const T* dyc = dy + (grp * Mg + ip * MR) * out_plane;  // channel 0 of the panel
              alignas(64) float loc[16 * 16 * 16];  // [pos][channel][tile]
              if (nch < 16)
                for (int pos = 0; pos < 16; ++pos) std::fill(loc + pos * 256 + nch * 16, loc + pos * 256 + 256, 0.0f);
              for (i64 s0 = 0; s0 < cnt; s0 += 16) {  // 16-tile sub-panels
                const i64 sn = std::min<i64>(16, cnt - s0);
                float* dst = reinterpret_cast<float*>(Ap + ip * nt * MR + (l0 + s0) * MR);
                // tiles in at most kRuns runs of one tile row each: tile lanes (row loads),
                // then transposed to channel lanes; otherwise channel-lane gathers
                i64 rbase[kRuns];
                int rl0[kRuns];
                unsigned rtop[kRuns], rbot[kRuns], rm[2 * kRuns];
                const int nruns = output_runs(p, ge, t0 + l0 + s0, sn, rbase, rl0, rtop, rbot);
                for (int s = 0; s < nruns && s < kRuns; ++s) {  // the layout grad_output_panel_runs_f32 takes
                  rbase[s] -= 2 * rl0[s];
                  rm[2 * s] = rtop[s];
                  rm[2 * s + 1] = rbot[s];
                }
                if (nruns <= kRuns) {
                  if constexpr (std::is_same<T, float>::value) {
                    wino_avx512::grad_output_panel_runs_f32(dyc, out_plane, Wo, nch, nruns, rbase, rm, loc, 16, 256);
                    wino_avx512::transpose_panels_f32(loc, 256, sn, dst, aps);
                  }
                  continue;
                }
                i64 off[16];
                unsigned char valid[16];
                for (i64 l = 0; l < sn; ++l) {
                  const auto [n, i, j] = ge.at(t0 + l0 + s0 + l);
                  off[l] = (n * p.c_out + grp * Mg + ip * MR) * out_plane + 2 * i * Wo + 2 * j;
                  const bool r1 = 2 * i + 1 < Ho, c1 = 2 * j + 1 < Wo;
                  valid[l] = static_cast<unsigned char>(1u | (c1 ? 2u : 0u) | (r1 ? 4u : 0u) | (r1 && c1 ? 8u : 0u));
                }
                wino_avx512::grad_output_channels_f32(reinterpret_cast<const float*>(dy), out_plane, Wo,
                                                      static_cast<int>(nch), sn, off, valid, dst, aps);
              }
              continue;
            }
            const i64 q = item / chunks, l0 = (item % chunks) * kChanTiles, cnt = std::min(kChanTiles, nt - l0);
            if (cnt <= 0) continue;
            // 16 tiles per vector through the forward's kernels (row loads), then transposed
            // to channel lanes (gathers across 16 channel planes measured slower: c64 56px
            // b8 grad weight 14.4 -> 12.8 ms at 1 thread)
            if constexpr (std::is_same<T, float>::value) {
              alignas(64) float loc[16 * 16 * 16];  // [pos][channel][tile]
              const i64 nch = std::min(NR, Cg - q * NR);
              for (int pos = 0; pos < 16; ++pos) std::fill(loc + pos * 256 + nch * 16, loc + pos * 256 + 256, 0.0f);
              for (i64 s0 = 0; s0 < cnt; s0 += 16) {
                const i64 sn = std::min<i64>(16, cnt - s0);
                panel_input(p, ge, grp, q * NR, q * NR + nch, t0 + l0 + s0, sn, x, loc, i64(256));
                float* dst = reinterpret_cast<float*>(Bp + q * nt * NR + (l0 + s0) * NR);
                wino_avx512::transpose_panels_f32(loc, 256, sn, dst, bps);
              }
            }
          }
        } else {
#pragma omp for schedule(dynamic, 1)
          for (i64 item = 0; item < Cg + rows_co; ++item) {
            if (nt <= 0) continue;
            if (item < Cg)
              input_block(p, ge, k, x, grp, t0, nt, item, item + 1, V, wp.vps, tw, tw, 0, buf);
            else
              grad_output_block(p, ge, dy, grp, item - Cg, t0, nt, Ap, aps, MR);
          }
#pragma omp for schedule(dynamic, 1)
          for (i64 item = 0; item < 16 * wp.ci_panels; ++item) {
            if (nt <= 0) continue;
            const i64 pos = item / wp.ci_panels, q = item % wp.ci_panels;
            pack_transposed(Bp + pos * bps + q * nt * NR, V + pos * wp.vps, tw, nt, q * NR, Cg, static_cast<int>(NR));
          }
        }
#pragma omp for schedule(dynamic, 1)
        for (i64 task = 0; task < wp.tasks; ++task) {
          const i64 ip0 = task / wp.n_cig * wp.gco, ip1 = std::min(wp.co_panels, ip0 + wp.gco);
          const i64 q0 = task % wp.n_cig * wp.gci, q1 = std::min(wp.ci_panels, q0 + wp.gci);
          const i64 c0 = q0 * NR, c1 = std::min(Cg, q1 * NR);
          // dM rows of panel ip: C + pos*cps + r*ldc + column - c0 (the full dM, or local)
          T* const dml = buf + wp.row_elems;
          const i64 ldc = wp.local ? wp.gci * NR : Cg, cps = wp.local ? wp.lps : wp.dps;
          for (i64 ip = ip0; ip < ip1; ++ip) {
            const int m = static_cast<int>(std::min(MR, Mg - ip * MR));
            T* const C0 = wp.local ? dml : dMg + ip * MR * Cg + c0;
            for (int pos = 0; pos < 16; ++pos) {
              T* C = C0 + pos * cps;
              if (nt <= 0) {  // empty batch: dW = 0
                for (int r = 0; r < m; ++r) std::fill(C + r * ldc, C + r * ldc + (c1 - c0), T(0));
                continue;
              }
              const T* a = Ap + pos * aps + ip * nt * MR;
              // the block's tiles in K steps of at most kc, in increasing order
              for (i64 k0 = 0; k0 < nt; k0 += wp.kc) {
                const i64 kc = std::min(wp.kc, nt - k0);
                for (i64 q = q0; q < q1; ++q) {
                  const int n = static_cast<int>(std::min(NR, Cg - q * NR));
                  const auto run = (mk.run_narrow && n <= mk.narrow_n) ? mk.run_narrow : mk.run;
                  run(kc, a + k0 * MR, Bp + pos * bps + q * nt * NR + k0 * NR, C + (q - q0) * NR, ldc, 1, m, n,
                      b > 0 || k0 > 0);
                }
              }
            }
            if (b == wp.blocks - 1)  // dW = G^T dM G of these rows, while they are in cache
              for (int r = 0; r < m; ++r) {
                const i64 co = ip * MR + r;
                k.wout(C0 + r * ldc, cps, c1 - c0, dw + ((grp * Mg + co) * Cg + c0) * 9);
              }
          }
        }
      }
    }
  }
}

// The grad-input problem as a forward one: input dy, output dx, padding mirrored.
bool mirrored(const ConvParams& p, ConvParams* q) {
  if (p.h.pad_lo > 2 || p.h.pad_hi > 2 || p.w.pad_lo > 2 || p.w.pad_hi > 2) return false;
  ConvParams r = p;
  r.c_in = p.c_out;
  r.c_out = p.c_in;
  r.h.in = p.h.out;
  r.w.in = p.w.out;
  r.h.pad_lo = 2 - p.h.pad_lo;
  r.h.pad_hi = 2 - p.h.pad_hi;
  r.w.pad_lo = 2 - p.w.pad_lo;
  r.w.pad_hi = 2 - p.w.pad_hi;
  r.h.out = p.h.in;
  r.w.out = p.w.in;
  *q = r;
  return true;
}

}  // namespace

bool winograd_supports(const ConvParams& p) {
  return p.h.kernel == 3 && p.w.kernel == 3 && p.h.stride == 1 && p.w.stride == 1 && p.h.dilation == 1 &&
         p.w.dilation == 1;
}

// Measured at 1 thread (AVX-512, float32) against the generic implicit GEMM. Forward
// wins from 16 channels on (16->16 32px 1.1x, 32->32 16px 1.4x, 64->64 56px 1.7x) once
// there are enough tiles to pay for the weight transform (16 x C_out x C_in values per
// call): 128->128 on 4 tiles 0.6x, 512->512 on 8 tiles 0.3x, 64->64 on 16 tiles 1.2x.
// Grouped convolutions stay on generic (not measured).
bool winograd_preferred(const ConvParams& p) {
  if (!winograd_supports(p) || p.groups != 1) return false;
  if (p.cin_g() < 16 || p.cout_g() < 16) return false;
  const i64 tiles = p.n * ceil_div(p.h.out, 2) * ceil_div(p.w.out, 2);
  return tiles >= 16 && tiles * 8 >= std::max(p.c_in, p.c_out);
}

bool winograd_input_grad_preferred(const ConvParams& p) {
  ConvParams q;
  return mirrored(p, &q) && winograd_preferred(q);
}

// Grad weight with 16 input channels measured slower (16->16 32px 0.85x, 16->64 56px
// 0.9x); from 32 on it wins (32->32 16px 1.1x, 64->64 56px 1.3x, 256->256 14px 1.4x).
bool winograd_weight_grad_preferred(const ConvParams& p) { return winograd_preferred(p) && p.cin_g() >= 32; }

std::size_t winograd_workspace_bytes(const ConvParams& p, std::size_t elem, bool backward, int threads) {
  if (!winograd_supports(p)) return 0;
  const FwdPlan f = fwd_plan(p, elem, threads);
  const i64 u = f.shared_elems;
  i64 total = checked_add(u, checked_mul(f.per_thread, f.threads, "winograd workspace"), "winograd workspace");
  if (backward) {
    // grad input (the mirrored forward, reading the weights in place) and grad weight use
    // different scratch slots: their sum bounds what a backward call holds
    i64 dx_part = 0;
    ConvParams q;
    if (mirrored(p, &q)) {
      const FwdPlan fq = fwd_plan(q, elem, threads);
      dx_part = checked_add(fq.shared_elems, checked_mul(fq.per_thread, fq.threads, "winograd workspace"),
                            "winograd workspace");
    }
    const WgtPlan wp = wgt_plan(p, elem, threads);
    const i64 dw_part = checked_add(checked_add(wp.dm_elems, wp.shared, "winograd workspace"),
                                    checked_mul(wp.per_thread, wp.threads, "winograd workspace"), "winograd workspace");
    total = std::max(total, checked_add(dx_part, dw_part, "winograd workspace"));
  }
  return static_cast<std::size_t>(checked_mul(total, static_cast<i64>(elem), "winograd workspace bytes"));
}

namespace {

template <typename T>
void forward_with(const ConvParams& p, const T* x, const WView<T>& wv, const T* bias, T* y) {
  const int threads = num_threads();
  const FwdPlan f = fwd_plan(p, sizeof(T), threads);
  if (f.ws) {
    forward_ws(p, f, x, wv, bias, y);
    return;
  }
  forward_blocked(p, f, x, wv, bias, y);
}

}  // namespace

template <typename T>
void winograd_forward(const ConvParams& p, const T* x, const T* w, const T* bias, T* y) {
  if (p.n <= 0) return;
  const i64 Cg = p.cin_g();
  forward_with(p, x, WView<T>{w, p.cout_g() * Cg * 9, Cg * 9, 9, false}, bias, y);
}

template <typename T>
bool winograd_backward_input(const ConvParams& p, const T* dy, const T* w, T* dx) {
  ConvParams q;
  if (!mirrored(p, &q)) return false;
  if (p.n <= 0) return true;
  // w'[g*Cg + ci][co][kh][kw] = w[g*Mg + co][ci][2-kh][2-kw], read in place
  const i64 Mg = p.cout_g(), Cg = p.cin_g();
  forward_with(q, dy, WView<T>{w, Mg * Cg * 9, 9, Cg * 9, true}, static_cast<const T*>(nullptr), dx);
  return true;
}

template <typename T>
void winograd_backward_weight(const ConvParams& p, const T* dy, const T* x, T* dw) {
  backward_weight_impl(p, dy, x, dw, num_threads());
}

template void winograd_forward<float>(const ConvParams&, const float*, const float*, const float*, float*);
template void winograd_forward<double>(const ConvParams&, const double*, const double*, const double*, double*);
template bool winograd_backward_input<float>(const ConvParams&, const float*, const float*, float*);
template bool winograd_backward_input<double>(const ConvParams&, const double*, const double*, double*);
template void winograd_backward_weight<float>(const ConvParams&, const float*, const float*, float*);
template void winograd_backward_weight<double>(const ConvParams&, const double*, const double*, double*);

}  // namespace pyconv
