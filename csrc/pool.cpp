// Max-pool forward with switches, backward (scatter-add) and unpool: validation, the
// portable scalar kernels, the ordered candidate list of row kernels, and the drivers.
//
// Forward work is split into output rows (plane, oh), statically across threads. Each
// row is cut into a left edge, an interior (every column tap of every output in bounds)
// and a right edge. Edges always take the scalar window routine; the interior takes the
// first candidate whose supports() accepts the parameters. All variants implement the
// same scan rule (see pool.h), so their results are bitwise identical.
#include "pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace pyconv {

namespace {

using pool_detail::RowTask;

// floor(a / b) for b > 0, a > INT64_MIN; no intermediate overflows, even for b near
// INT64_MAX (a stride of 2**63-1 is valid). ceil_div is params.h's.
inline i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((-a) / b + ((-a) % b != 0)); }

// Taps k in [*a, *b) of a window starting at `start` (step d, k taps) that fall in [0, n).
// (dense windows, d == 1, skip the divisions: small planes call this for every output)
inline void tap_range(i64 start, i64 n, i64 k, i64 d, i64* a, i64* b) {
  i64 lo = start >= 0 ? 0 : (d == 1 ? -start : ceil_div(-start, d));
  const i64 room = n - 1 - start;
  i64 hi = room >= 0 ? std::min(k, (d == 1 ? room : floor_div(room, d)) + 1) : 0;
  if (lo > k) lo = k;
  if (hi < lo) hi = lo;
  *a = lo;
  *b = hi;
}

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

void resolve_window(Window& w, bool ceil_mode, const char* dim) {
  const std::string d(dim);
  if (w.kernel < 1) bad("kernel_size must be >= 1, got " + std::to_string(w.kernel) + " (" + d + ")");
  if (w.stride < 1) bad("stride must be >= 1, got " + std::to_string(w.stride) + " (" + d + ")");
  if (w.dilation < 1) bad("dilation must be >= 1, got " + std::to_string(w.dilation) + " (" + d + ")");
  if (w.pad_lo < 0 || w.pad_hi < 0)
    bad("padding must be >= 0, got " + std::to_string(std::min(w.pad_lo, w.pad_hi)) + " (" + d + ")");
  if (w.pad_lo != w.pad_hi) bad("max-pool padding must be symmetric (" + d + ")");
  if (w.pad_lo > w.kernel / 2)
    bad("padding must be at most kernel_size // 2 = " + std::to_string(w.kernel / 2) +
        ", got padding=" + std::to_string(w.pad_lo) + " (" + d + ")");
  if (w.in < 1) bad("input size must be >= 1, got " + std::to_string(w.in) + " (" + d + ")");
  const i64 P = w.pad_lo, S = w.stride;
  // span = in + 2P - D*(F-1) - 1 (overflow-checked)
  i64 reach = checked_mul(w.dilation, w.kernel - 1, "dilation*(kernel_size-1)");
  i64 padded = checked_add(w.in, checked_mul(P, 2, "2*padding"), "input size + 2*padding");
  i64 span = padded - reach - 1;
  i64 out;
  if (ceil_mode) {
    // PyTorch: ceil, then drop a last window that would start in the right padding.
    out = floor_div(checked_add(span, S - 1, "pool span + stride"), S) + 1;
    if (out > 0 && (out - 1) * S >= w.in + P) --out;
  } else {
    out = floor_div(span, S) + 1;
  }
  if (out <= 0)
    bad("output size would be " + std::to_string(out) + ": (" + std::to_string(w.in) + " + 2*" +
        std::to_string(P) + " - " + std::to_string(w.dilation) + "*(" + std::to_string(w.kernel) +
        "-1) - 1)/" + std::to_string(S) + " + 1 (" + d + ")");
  // Every window must cover an input element. Windows starting inside the input do
  // (tap 0); a window starting at or past the end covers nothing; windows starting in
  // the left padding are checked one by one (there are at most ceil(P/S) of them).
  i64 last_start = (out - 1) * S - P;
  if (last_start >= w.in)
    bad("the last pooling window starts at " + std::to_string(last_start) +
        ", past the input size " + std::to_string(w.in) + " (" + d + ")");
  for (i64 o = 0; o < out && o * S - P < 0; ++o) {
    i64 a, b;
    tap_range(o * S - P, w.in, w.kernel, w.dilation, &a, &b);
    if (a >= b)
      bad("pooling window " + std::to_string(o) + " covers no input element (size " +
          std::to_string(w.in) + ", kernel " + std::to_string(w.kernel) + ", padding " +
          std::to_string(P) + ", dilation " + std::to_string(w.dilation) + ") (" + d + ")");
  }
  w.out = out;
  // A single tap never steps: normalise its dilation so no offset arithmetic can
  // overflow on an arbitrary (valid) dilation value.
  if (w.kernel == 1) w.dilation = 1;
}

// ------------------------------------------------------------------ scalar kernels

// best, best_i = v, i when take: by masks on the bits, so that the compiler cannot turn
// it back into a (mispredicted) branch.
template <typename T>
inline void select_if(bool take, T v, i64 i, T& best, i64& best_i) {
  using U = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
  U b, c;
  std::memcpy(&b, &best, sizeof(T));
  std::memcpy(&c, &v, sizeof(T));
  const U mu = U(0) - static_cast<U>(take);
  b ^= (b ^ c) & mu;
  std::memcpy(&best, &b, sizeof(T));
  const std::uint64_t mi = std::uint64_t(0) - static_cast<std::uint64_t>(take);
  best_i = static_cast<i64>(static_cast<std::uint64_t>(best_i) ^
                            ((static_cast<std::uint64_t>(best_i) ^ static_cast<std::uint64_t>(i)) & mi));
}

// One window: tap rows [kh_a, kh_b) (input rows ih0 + kh*dH), tap columns [kw_a, kw_b)
// (input columns iw0 + kw*dW); both ranges non-empty and in bounds.
template <typename T, bool IDX>
inline void window_scalar(const T* x, i64 W, i64 ih0, i64 kh_a, i64 kh_b, i64 dH, i64 iw0,
                          i64 kw_a, i64 kw_b, i64 dW, T* y, i64* idx) {
  i64 ih = ih0 + kh_a * dH;
  i64 best_i = ih * W + iw0 + kw_a * dW;
  T best = x[best_i];
  // Branch-free selection (on random data a compare-and-branch mispredicts about every
  // other tap; small planes run entirely here). The first tap compares with itself:
  // taken only when it is NaN, which selects the same value and index.
  for (i64 kh = kh_a; kh < kh_b; ++kh, ih += dH) {
    const i64 row = ih * W;
    for (i64 kw = kw_a; kw < kw_b; ++kw) {
      const i64 i = row + iw0 + kw * dW;
      const T v = x[i];
      const bool take = (v > best) | (v != v);
      select_if(take, v, i, best, best_i);
    }
  }
  *y = best;
  if (IDX) *idx = best_i;
}

template <typename T, bool IDX>
void columns_scalar(const T* x, const PoolParams& p, i64 ih0, i64 kh_a, i64 kh_b, i64 ow_a,
                    i64 ow_b, T* y, i64* idx) {
  const i64 W = p.w.in;
  for (i64 ow = ow_a; ow < ow_b; ++ow) {
    const i64 iw0 = ow * p.w.stride - p.w.pad_lo;
    i64 kw_a, kw_b;
    tap_range(iw0, W, p.w.kernel, p.w.dilation, &kw_a, &kw_b);
    window_scalar<T, IDX>(x, W, ih0, kh_a, kh_b, p.h.dilation, iw0, kw_a, kw_b, p.w.dilation,
                          y + ow, IDX ? idx + ow : nullptr);
  }
}

// Interior columns [ow_a, ow_b) (every tap column in bounds) narrower than a vector: up
// to 8 windows in lockstep, tap by tap in scan order, so that their select chains run
// side by side instead of one window's chain at a time (the chain of one window is
// latency-bound). Per window the same comparisons in the same order: the same result.
template <typename T, bool IDX>
void interior_lockstep(const T* x, i64 W, i64 ih0, i64 kh_a, i64 kh_b, i64 dH, i64 sW, i64 pW,
                       i64 kW, i64 dW, i64 ow_a, i64 ow_b, T* y, i64* idx) {
  constexpr int B = 8;
  const i64 ih_a = ih0 + kh_a * dH;
  for (i64 o0 = ow_a; o0 < ow_b; o0 += B) {
    const int nb = static_cast<int>(std::min<i64>(B, ow_b - o0));
    const i64 col0 = o0 * sW - pW;
    T best[B];
    i64 bi[B];
    for (int j = 0; j < nb; ++j) {
      bi[j] = ih_a * W + col0 + j * sW;
      best[j] = x[bi[j]];
    }
    i64 ih = ih_a;
    for (i64 kh = kh_a; kh < kh_b; ++kh, ih += dH) {
      for (i64 kw = 0; kw < kW; ++kw) {
        const i64 base = ih * W + col0 + kw * dW;
        for (int j = 0; j < nb; ++j) {
          const i64 i = base + j * sW;
          const T v = x[i];
          select_if((v > best[j]) | (v != v), v, i, best[j], bi[j]);
        }
      }
    }
    for (int j = 0; j < nb; ++j) {
      y[o0 + j] = best[j];
      if (IDX) idx[o0 + j] = bi[j];
    }
  }
}

// The portable interior kernel: the scalar window routine over [ow_a, ow_b).
template <typename T>
void row_scalar(const RowTask<T>& t, bool want_idx) {
  for (i64 ow = t.ow_a; ow < t.ow_b; ++ow) {
    const i64 iw0 = ow * t.sW - t.pW;
    if (want_idx)
      window_scalar<T, true>(t.x, t.W, t.row0, 0, t.nrows, t.dH, iw0, 0, t.kW, t.dW, t.y + ow,
                             t.idx + ow);
    else
      window_scalar<T, false>(t.x, t.W, t.row0, 0, t.nrows, t.dH, iw0, 0, t.kW, t.dW, t.y + ow,
                              nullptr);
  }
}

// ------------------------------------------------------------------ candidate list

template <typename T>
using RowFn = void (*)(const RowTask<T>&, bool);

template <typename T>
struct Candidate {
  const char* name;
  bool (*supports)(const PoolParams&);
  RowFn<T> fn;
  i64 lanes;  // the interior must be at least this wide to use fn
};

bool has_avx2() { return static_cast<int>(active_isa()) >= static_cast<int>(Isa::avx2); }

// Tap offsets (kH-1)*dH*W + (kW-1)*dW fit the kernels' int32 offsets; the window fits
// the vector kernels' tap table.
bool vector_ok(const PoolParams& p, bool int32_offsets) {
  if (!has_avx2()) return false;
  if (p.h.kernel > pool_detail::kMaxVectorTaps || p.w.kernel > pool_detail::kMaxVectorTaps ||
      p.h.kernel * p.w.kernel > pool_detail::kMaxVectorTaps)
    return false;
  __int128 span = static_cast<__int128>(p.h.kernel - 1) * p.h.dilation * p.w.in +
                  static_cast<__int128>(p.w.kernel - 1) * p.w.dilation;
  __int128 lim = int32_offsets ? std::numeric_limits<std::int32_t>::max()
                               : std::numeric_limits<i64>::max() / 4;
  return span <= lim;
}

template <bool I32>
bool sup_s2_2x2(const PoolParams& p) {
  return vector_ok(p, I32) && p.w.stride == 2 && p.w.kernel == 2 && p.w.dilation == 1 &&
         p.h.kernel == 2;
}
template <bool I32>
bool sup_s2_3x3(const PoolParams& p) {
  return vector_ok(p, I32) && p.w.stride == 2 && p.w.kernel == 3 && p.w.dilation == 1 &&
         p.h.kernel == 3;
}
template <bool I32>
bool sup_s2(const PoolParams& p) { return vector_ok(p, I32) && p.w.stride == 2; }
template <bool I32>
bool sup_s1(const PoolParams& p) { return vector_ok(p, I32) && p.w.stride == 1; }
bool sup_all(const PoolParams&) { return true; }

// Most specialised first; the scalar kernel accepts everything.
const Candidate<float> kCandidatesF32[] = {
    {"avx2_s2_2x2", sup_s2_2x2<true>, pool_avx2::row_s2_f32_taps4, 8},
    {"avx2_s2_3x3", sup_s2_3x3<true>, pool_avx2::row_s2_f32_taps9, 8},
    {"avx2_s2", sup_s2<true>, pool_avx2::row_s2_f32, 8},
    {"avx2_s1", sup_s1<true>, pool_avx2::row_s1_f32, 8},
    {"scalar", sup_all, row_scalar<float>, 1},
};
const Candidate<double> kCandidatesF64[] = {
    {"avx2_s2_2x2", sup_s2_2x2<false>, pool_avx2::row_s2_f64_taps4, 4},
    {"avx2_s2_3x3", sup_s2_3x3<false>, pool_avx2::row_s2_f64_taps9, 4},
    {"avx2_s2", sup_s2<false>, pool_avx2::row_s2_f64, 4},
    {"avx2_s1", sup_s1<false>, pool_avx2::row_s1_f64, 4},
    {"scalar", sup_all, row_scalar<double>, 1},
};

template <typename T, std::size_t N>
const Candidate<T>& pick(const Candidate<T> (&list)[N], const PoolParams& p) {
  for (std::size_t i = 0; i < N; ++i)
    if (list[i].supports(p)) return list[i];
  return list[N - 1];
}

const Candidate<float>& pick_for(const PoolParams& p, const float*) { return pick(kCandidatesF32, p); }
const Candidate<double>& pick_for(const PoolParams& p, const double*) { return pick(kCandidatesF64, p); }

// ------------------------------------------------------------------ forward driver

// Small planes (digits-sized: 8x8 -> 4x4): 2x2 stride 2, no padding or dilation, rows
// narrower than a vector, at least 8 outputs per plane; float32 with AVX2. Offsets are
// int32 (a plane of fewer than 2^24 elements here).
bool small_2x2_applies(const PoolParams& p, const float*) {
  return has_avx2() && p.h.kernel == 2 && p.w.kernel == 2 && p.h.stride == 2 &&
         p.w.stride == 2 && p.h.pad_lo == 0 && p.w.pad_lo == 0 && p.h.pad_hi == 0 &&
         p.w.pad_hi == 0 && p.h.dilation == 1 && p.w.dilation == 1 && p.w.out < 8 &&
         p.w.in == 2 * p.w.out && p.h.in >= 2 * p.h.out && p.h.out * p.w.out >= 8 &&
         p.h.in * p.w.in < (i64(1) << 24);
}
bool small_2x2_applies(const PoolParams&, const double*) { return false; }
// Planes of fewer than 8 outputs (4x4 -> 2x2): the same windows with H == 2 * Ho.
bool tiny_2x2_applies(const PoolParams& p, const float*) {
  return has_avx2() && p.h.kernel == 2 && p.w.kernel == 2 && p.h.stride == 2 &&
         p.w.stride == 2 && p.h.pad_lo == 0 && p.w.pad_lo == 0 && p.h.pad_hi == 0 &&
         p.w.pad_hi == 0 && p.h.dilation == 1 && p.w.dilation == 1 && p.w.out < 8 &&
         p.w.in == 2 * p.w.out && p.h.in == 2 * p.h.out && p.h.out * p.w.out < 8;
}
bool tiny_2x2_applies(const PoolParams&, const double*) { return false; }
void tiny_2x2(const float* x, i64 o0, i64 o1, i64 W, i64 Wo, i64 ohw, float* y, i64* idx) {
  pool_avx2::tiny_2x2_f32(x, o0, o1, W, Wo, ohw, y, idx);
}
void tiny_2x2(const double*, i64, i64, i64, i64, i64, double*, i64*) {}
void small_2x2(const float* x, i64 planes, i64 H, i64 W, i64 Ho, i64 Wo, float* y, i64* idx) {
  pool_avx2::small_2x2_f32(x, planes, H, W, Ho, Wo, y, idx);
}
void small_2x2(const double*, i64, i64, i64, i64, i64, double*, i64*) {}

template <typename T, bool IDX>
void forward_impl(const PoolParams& p, const T* x, T* y, i64* idx) {
  const i64 planes = p.n * p.c;
  const i64 H = p.h.in, W = p.w.in, Ho = p.h.out, Wo = p.w.out;
  if (planes == 0 || Ho == 0 || Wo == 0) return;
  const Candidate<T>& cand = pick_for(p, x);
  const i64 sW = p.w.stride, pW = p.w.pad_lo, dW = p.w.dilation, kW = p.w.kernel;
  // Interior columns: ow*sW - pW >= 0 and ow*sW - pW + (kW-1)*dW <= W-1.
  i64 ow_a = std::min(ceil_div(pW, sW), Wo);
  i64 num = W - 1 + pW - (kW - 1) * dW;
  i64 ow_b = num >= 0 ? floor_div(num, sW) + 1 : 0;
  ow_b = std::max(ow_a, std::min(ow_b, Wo));
  const bool vec_interior = (ow_b - ow_a) >= cand.lanes;
  const i64 rows = planes * Ho;
  const double work = static_cast<double>(rows) * Wo * p.h.kernel * kW;
  const int nthreads = threads_for_work(work, 32768.0);
  if (tiny_2x2_applies(p, x)) {
    // planes of fewer than 8 outputs: the whole tensor flat, 8 outputs at a time
    const i64 total = planes * Ho * Wo;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int t = 0; t < nthreads; ++t) {
      const i64 o0 = total / 8 * t / nthreads * 8;
      const i64 o1 = t + 1 == nthreads ? total : total / 8 * (t + 1) / nthreads * 8;
      if (o1 > o0) tiny_2x2(x, o0, o1, W, Wo, Ho * Wo, y, IDX ? idx : nullptr);
    }
    return;
  }
  if (small_2x2_applies(p, x)) {
    // whole small planes, 8 outputs at a time (see pool_avx2::small_2x2_f32)
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int t = 0; t < nthreads; ++t) {
      const i64 p0 = planes * t / nthreads, p1 = planes * (t + 1) / nthreads;
      if (p1 > p0)
        small_2x2(x + p0 * H * W, p1 - p0, H, W, Ho, Wo, y + p0 * Ho * Wo,
                  IDX ? idx + p0 * Ho * Wo : nullptr);
    }
    return;
  }
  const i64 HW = H * W, OHW = Ho * Wo;

#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (i64 r = 0; r < rows; ++r) {
    const i64 plane = r / Ho, oh = r % Ho;
    const T* xp = x + plane * HW;
    T* yr = y + plane * OHW + oh * Wo;
    i64* ir = IDX ? idx + plane * OHW + oh * Wo : nullptr;
    const i64 ih0 = oh * p.h.stride - p.h.pad_lo;
    i64 kh_a, kh_b;
    tap_range(ih0, H, p.h.kernel, p.h.dilation, &kh_a, &kh_b);
    columns_scalar<T, IDX>(xp, p, ih0, kh_a, kh_b, 0, ow_a, yr, ir);
    if (ow_b > ow_a) {
      if (vec_interior) {
        RowTask<T> t;
        t.x = xp;
        t.W = W;
        t.row0 = ih0 + kh_a * p.h.dilation;
        t.nrows = kh_b - kh_a;
        t.row_step = p.h.dilation * W;
        t.dH = p.h.dilation;
        t.kW = kW;
        t.sW = sW;
        t.dW = dW;
        t.pW = pW;
        t.ow_a = ow_a;
        t.ow_b = ow_b;
        t.y = yr;
        t.idx = ir;
        cand.fn(t, IDX);
      } else if (kh_b > kh_a) {
        interior_lockstep<T, IDX>(xp, W, ih0, kh_a, kh_b, p.h.dilation, sW, pW, kW, dW, ow_a, ow_b,
                                  yr, ir);
      } else {
        columns_scalar<T, IDX>(xp, p, ih0, kh_a, kh_b, ow_a, ow_b, yr, ir);
      }
    }
    columns_scalar<T, IDX>(xp, p, ih0, kh_a, kh_b, ow_b, Wo, yr, ir);
  }
}

template <typename T>
void forward(const PoolParams& p, const T* x, T* y, i64* idx) {
  if (idx)
    forward_impl<T, true>(p, x, y, idx);
  else
    forward_impl<T, false>(p, x, y, nullptr);
}

// ------------------------------------------------------------------ scatter kernels

// First position in [0, n) whose index lies outside [0, limit), or -1.
i64 first_bad(const i64* idx, i64 n, i64 limit) {
  for (i64 i = 0; i < n; ++i)
    if (static_cast<std::uint64_t>(idx[i]) >= static_cast<std::uint64_t>(limit)) return i;
  return -1;
}

// Zero a plane of dst_plane elements (unless it is known to be zero), then scatter src through idx in scan order,
// checking every index before its element is written; pump() is called after every
// block of kScatterBlock elements. False at the first bad index.
constexpr i64 kScatterBlock = 64;

inline bool scatter_add_block(const float* s, const i64* i, i64 n, i64 lim, float* d) {
  return pool_avx2::scatter_add_block_f32(s, i, n, lim, d);
}
inline bool scatter_add_block(const double* s, const i64* i, i64 n, i64 lim, double* d) {
  return pool_avx2::scatter_add_block_f64(s, i, n, lim, d);
}

template <typename T, bool ACCUMULATE, typename Pump>
bool scatter_plane(i64 src_plane, i64 dst_plane, const T* sp, const i64* ip, T* dp, bool zeroed,
                   Pump&& pump) {
  if (!zeroed) std::memset(dp, 0, sizeof(T) * static_cast<std::size_t>(dst_plane));
  const std::uint64_t lim = static_cast<std::uint64_t>(dst_plane);
  const bool vec = ACCUMULATE && has_avx2();
  for (i64 i0 = 0; i0 < src_plane; i0 += kScatterBlock) {
    const i64 i1 = std::min(src_plane, i0 + kScatterBlock);
    if (vec) {
      if (!scatter_add_block(sp + i0, ip + i0, i1 - i0, dst_plane, dp)) return false;
      pump();
      continue;
    }
    for (i64 i = i0; i < i1; ++i) {
      const i64 j = ip[i];
      if (static_cast<std::uint64_t>(j) >= lim) return false;
      if (ACCUMULATE)
        dp[j] += sp[i];
      else
        dp[j] = sp[i];
    }
    pump();
  }
  return true;
}

inline bool bwd_2x2_rows(const float* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W,
                         float* out) {
  return pool_avx2::bwd_2x2_rows_f32(g, idx, oh0, oh1, wo, W, out);
}
inline bool bwd_2x2_rows(const double* g, const i64* idx, i64 oh0, i64 oh1, i64 wo, i64 W,
                         double* out) {
  return pool_avx2::bwd_2x2_rows_f64(g, idx, oh0, oh1, wo, W, out);
}

// Destinations larger than this go out with non-temporal stores (they cannot stay in the
// caches anyway; streaming saves the read for ownership of every line).
constexpr i64 kPoolStreamBytes = 8ll << 20;
// Largest plane assembled in a per-thread staging buffer before streaming (stays in L2).
constexpr i64 kPoolStageBytes = 256 * 1024;

// A finished plane in a staging buffer, streamed out to dst a slice at a time while the
// next plane is built, so reads and writes of memory overlap. The whole 64-byte lines of
// dst go out with non-temporal stores, the partial lines at both ends with ordinary ones.
struct Pending {
  char* dst = nullptr;
  char* src = nullptr;
  i64 pos = 0, body_end = 0, bytes = 0;
  bool zero = false;  // zero the staging bytes once they are out (the buffer's next plane
                      // then needs no zero-fill)

  void start(void* d, void* s, i64 n, bool zero_src) {
    dst = static_cast<char*>(d);
    src = static_cast<char*>(s);
    bytes = n;
    zero = zero_src;
    const i64 head = static_cast<i64>((64 - (reinterpret_cast<std::uintptr_t>(dst) & 63)) & 63);
    if (head >= n) {
      copy_out(0, n);
      pos = body_end = n;
      return;
    }
    copy_out(0, head);
    pos = head;
    body_end = head + (n - head) / 64 * 64;
  }
  void copy_out(i64 a, i64 b) {
    std::memcpy(dst + a, src + a, static_cast<std::size_t>(b - a));
    if (zero) std::memset(src + a, 0, static_cast<std::size_t>(b - a));
  }
  void pump(i64 lines) {
    const i64 n = std::min(lines, (body_end - pos) / 64);
    if (n > 0) pool_avx2::stream_lines(dst + pos, src + pos, n, zero);
    pos += n * 64;
  }
  void finish() {
    if (!dst) return;
    pump((body_end - pos) / 64);
    copy_out(body_end, bytes);
    dst = nullptr;
  }
};

// ACCUMULATE: dst[idx] += src, else dst[idx] = src. Planes are independent and split into
// one contiguous range per thread, so the result does not depend on the thread count.
// Each plane is built in one of two ways with identical results: (a) with AVX2, backward,
// when every index of the plane lies in its own 2x2 stride-2 window (no input element in
// two windows), the rows are written straight from the indices and grads (0 + g or 0),
// one pass; (b) otherwise zero-fill + scatter in scan order. A large destination is built
// plane by plane in two per-thread staging buffers (L2): while one plane is built, the
// previous one streams out with non-temporal stores.
template <typename T, bool ACCUMULATE>
i64 scatter(i64 planes, i64 src_h, i64 src_w, i64 dst_h, i64 dst_w, const T* src, const i64* idx,
            T* dst) {
  if (planes == 0) return -1;
  const i64 src_plane = src_h * src_w, dst_plane = dst_h * dst_w;
  const double work = static_cast<double>(planes) * (src_plane + dst_plane);
  const int nthreads = threads_for_work(work, 65536.0);
  const bool avx2 = has_avx2();
  const bool try_2x2 = ACCUMULATE && avx2 && src_h <= dst_h / 2 && src_w <= dst_w / 2 &&
                       dst_w < (i64(1) << 30);
  const i64 plane_bytes = dst_plane * static_cast<i64>(sizeof(T));
  const bool stream = avx2 && plane_bytes <= kPoolStageBytes &&
                      static_cast<double>(plane_bytes) * static_cast<double>(planes) >
                          static_cast<double>(kPoolStreamBytes);
  const std::size_t stage_stride = static_cast<std::size_t>((plane_bytes + 63) / 64 * 64);
  char* stage =
      stream ? static_cast<char*>(scratch(kScratchOp0, 2 * stage_stride * nthreads)) : nullptr;
  const i64 lines = plane_bytes / 64 + 1;
  const i64 per_row = src_h > 0 ? (lines + src_h - 1) / src_h : lines;
  const i64 per_block =
      src_plane > 0 ? (lines * kScatterBlock + src_plane - 1) / src_plane : lines;
  i64 bad_plane = planes;  // smallest plane with a bad index
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int t = 0; t < nthreads; ++t) {
    const i64 p0 = planes * t / nthreads, p1 = planes * (t + 1) / nthreads;
    char* mine = stream ? stage + 2 * stage_stride * thread_index() : nullptr;
    // A staging buffer is zero when its plane has been streamed out (Pending zeroes it);
    // both start zeroed. A plane stopped by a bad index leaves its buffer dirty.
    bool clean[2] = {true, true};
    if (stream) std::memset(mine, 0, 2 * stage_stride);
    Pending prev;
    for (i64 pl = p0; pl < p1; ++pl) {
      const i64* ip = idx + pl * src_plane;
      const T* sp = src + pl * src_plane;
      T* dp = dst + pl * dst_plane;
      T* buf = stream ? reinterpret_cast<T*>(mine + (pl & 1) * stage_stride) : dp;
      bool ok = false;
      const int b = static_cast<int>(pl & 1);
      if (try_2x2) {
        ok = true;
        i64 oh = 0;
        for (; ok && oh < src_h; ++oh) {
          ok = bwd_2x2_rows(sp, ip, oh, oh + 1, src_w, dst_w, buf);
          if (stream) prev.pump(per_row);
        }
        if (ok) {
          std::fill(buf + 2 * src_h * dst_w, buf + dst_plane, T(0));
        } else if (stream && clean[b]) {
          // rows [0, 2*oh) may have been written (oh is one past the failed row)
          std::fill(buf, buf + 2 * oh * dst_w, T(0));
        }
      }
      const bool scattered = !ok;
      if (!ok)
        ok = scatter_plane<T, ACCUMULATE>(src_plane, dst_plane, sp, ip, buf, stream && clean[b], [&] {
          if (stream) prev.pump(per_block);
        });
      clean[b] = false;
      if (stream) prev.finish();
      if (!ok) {
        // a bad index stops the plane (the caller raises and discards dst)
#pragma omp critical(pyconv_pool_scatter)
        bad_plane = std::min(bad_plane, pl);
        continue;
      }
      if (stream) {
        // A scattered plane's buffer is zeroed as it streams out (the next plane in it
        // most likely scatters too); a plane built from 2x2 windows needs no zeroes.
        prev.start(dp, buf, plane_bytes, scattered);
        clean[b] = scattered;  // once finished (before this buffer's next use)
      }
    }
    if (stream) {
      prev.finish();
      pool_avx2::store_fence();
    }
  }
  if (bad_plane < planes)
    return bad_plane * src_plane + first_bad(idx + bad_plane * src_plane, src_plane, dst_plane);
  return -1;
}

}  // namespace

// ------------------------------------------------------------------ public

void pool_resolve(PoolParams& p) {
  if (p.n < 0 || p.c < 0) bad("batch and channel counts must be >= 0");
  resolve_window(p.h, p.ceil_mode, "height");
  resolve_window(p.w, p.ceil_mode, "width");
  i64 planes = checked_mul(p.n, p.c, "batch*channels");
  checked_mul(checked_mul(planes, p.h.out, "output"), p.w.out, "output");
  checked_mul(checked_mul(planes, p.h.in, "input"), p.w.in, "input");
}

void max_pool2d_forward(const PoolParams& p, const float* x, float* y, i64* idx) { forward(p, x, y, idx); }
void max_pool2d_forward(const PoolParams& p, const double* x, double* y, i64* idx) { forward(p, x, y, idx); }

i64 max_pool_backward(i64 planes, i64 sh, i64 sw, i64 dh, i64 dw, const float* s, const i64* i,
                      float* d) {
  return scatter<float, true>(planes, sh, sw, dh, dw, s, i, d);
}
i64 max_pool_backward(i64 planes, i64 sh, i64 sw, i64 dh, i64 dw, const double* s, const i64* i,
                      double* d) {
  return scatter<double, true>(planes, sh, sw, dh, dw, s, i, d);
}
i64 max_unpool(i64 planes, i64 sh, i64 sw, i64 dh, i64 dw, const float* s, const i64* i, float* d) {
  return scatter<float, false>(planes, sh, sw, dh, dw, s, i, d);
}
i64 max_unpool(i64 planes, i64 sh, i64 sw, i64 dh, i64 dw, const double* s, const i64* i,
               double* d) {
  return scatter<double, false>(planes, sh, sw, dh, dw, s, i, d);
}

const char* max_pool2d_variant(const PoolParams& p, bool is_double, bool want_indices) {
  (void)want_indices;
  if (!is_double && tiny_2x2_applies(p, static_cast<const float*>(nullptr))) return "avx2_tiny_2x2";
  if (!is_double && small_2x2_applies(p, static_cast<const float*>(nullptr))) return "avx2_small_2x2";
  return is_double ? pick(kCandidatesF64, p).name : pick(kCandidatesF32, p).name;
}

}  // namespace pyconv
