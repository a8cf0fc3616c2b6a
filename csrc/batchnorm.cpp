// Batch normalisation: the portable run primitives and the channel-level algorithms
// (blocking for cache reuse, threading, statistics merging). See batchnorm.h for the
// numerical contract every ISA follows.
#include "batchnorm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <cstdlib>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {
namespace {

// Keeps the compiler from fusing a product into the following addition, so every ISA
// rounds the same way (a no-op at run time).
template <typename V>
inline V keep(V v) {
#if defined(__GNUC__) && defined(__x86_64__)
  __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
  return v;
}

// ------------------------------------------------------------------ scalar primitives

inline double combine16(const double* a) {
  double t[4];
  for (int l = 0; l < 4; ++l) t[l] = (a[l] + a[4 + l]) + (a[8 + l] + a[12 + l]);
  return (t[0] + t[2]) + (t[1] + t[3]);
}

template <typename T>
double s_sum(const T* x, i64 len) {
  double a[16] = {};
  i64 i = 0;
  for (; i + 16 <= len; i += 16)
    for (int j = 0; j < 16; ++j) a[j] += static_cast<double>(x[i + j]);
  for (int j = 0; i + j < len; ++j) a[j] += static_cast<double>(x[i + j]);
  return combine16(a);
}

template <typename T>
void s_m2(const T* x, i64 len, double mean, double* out) {
  double a[16] = {}, b[16] = {};
  i64 i = 0;
  for (; i + 16 <= len; i += 16)
    for (int j = 0; j < 16; ++j) {
      double d = static_cast<double>(x[i + j]) - mean;
      a[j] += keep(d * d);
      b[j] += d;
    }
  for (int j = 0; i + j < len; ++j) {
    double d = static_cast<double>(x[i + j]) - mean;
    a[j] += keep(d * d);
    b[j] += d;
  }
  out[0] = combine16(a);
  out[1] = combine16(b);
}

template <typename T>
void s_m2dy(const T* x, const T* dy, i64 len, double mean, double* out) {
  double q[16] = {}, g[16] = {}, c[16] = {};
  i64 i = 0;
  auto step = [&](i64 k, int j) {
    double d = static_cast<double>(x[k]) - mean;
    double e = static_cast<double>(dy[k]);
    q[j] += keep(d * d);
    g[j] += e;
    c[j] += keep(e * d);
  };
  for (; i + 16 <= len; i += 16)
    for (int j = 0; j < 16; ++j) step(i + j, j);
  for (int j = 0; i + j < len; ++j) step(i + j, j);
  out[0] = combine16(q);
  out[1] = combine16(g);
  out[2] = combine16(c);
}

template <typename T>
void s_dy(const T* x, const T* dy, i64 len, double mean, double* out) {
  double g[16] = {}, c[16] = {};
  i64 i = 0;
  auto step = [&](i64 k, int j) {
    double d = static_cast<double>(x[k]) - mean;
    double e = static_cast<double>(dy[k]);
    g[j] += e;
    c[j] += keep(e * d);
  };
  for (; i + 16 <= len; i += 16)
    for (int j = 0; j < 16; ++j) step(i + j, j);
  for (int j = 0; i + j < len; ++j) step(i + j, j);
  out[0] = combine16(g);
  out[1] = combine16(c);
}

template <typename T>
void s_norm(const T* x, T* y, i64 len, const bn::Coef<T>& k, bool) {
  for (i64 i = 0; i < len; ++i) {
    T d = (x[i] - k.mean_hi) - k.mean_lo;
    y[i] = keep(d * k.a) + k.b;
  }
}

template <typename T>
void s_dx(const T* x, const T* dy, T* dx, i64 len, const bn::Coef<T>& k, bool) {
  for (i64 i = 0; i < len; ++i) {
    T g = dy[i] - k.mdy;
    T d = (x[i] - k.mean_hi) - k.mean_lo;
    dx[i] = keep(g * k.a) - keep(d * k.b);
  }
}

template <typename T>
void s_scale(const T* dy, T* dx, i64 len, T a, bool) {
  for (i64 i = 0; i < len; ++i) dx[i] = dy[i] * a;
}

void s_fence() {}

template <typename T>
bn::Ops<T> make_scalar_ops() {
  bn::Ops<T> o;
  o.sum = &s_sum<T>;
  o.m2 = &s_m2<T>;
  o.m2dy = &s_m2dy<T>;
  o.dy = &s_dy<T>;
  o.norm = &s_norm<T>;
  o.dx = &s_dx<T>;
  o.scale = &s_scale<T>;
  o.fence = &s_fence;
  return o;
}

// ------------------------------------------------------------------ algorithms

// Runs of a channel shorter than this use the two-pass scheme over the (cache-sized)
// unit; longer ones are cut into L1-sized chunks whose moments merge by Chan's formula.
constexpr i64 kChunkedMinS = 512;
constexpr i64 kChunkBytes = 8192;           // one chunk of x (and of dy) stays in L1
constexpr i64 kBlockBytes = 320 * 1024;     // a channel block is re-read from L2
constexpr i64 kMinPartElems = 16384;        // smallest piece of a split channel
constexpr i64 kStreamBytes = 8ll << 20;     // outputs larger than this bypass the caches
constexpr i64 kPrefetchBytes = 8192;        // how far ahead the memory passes prefetch

// Moments of a set of values x (with gradients dy): count, mean, sum of squared
// deviations, sum of dy, sum of dy * (x - mean).
struct Mom {
  double n, mean, m2, sdy, cxy;
};

// A <- A (+) B, Chan's pairwise update (with the co-moment of dy and x).
inline void merge(Mom& A, const Mom& B) {
  if (B.n == 0) return;
  if (A.n == 0) {
    A = B;
    return;
  }
  double n = A.n + B.n;
  double delta = B.mean - A.mean;
  double rb = B.n / n;
  double ra = A.n / n;
  A.m2 = (A.m2 + B.m2) + (delta * delta) * (A.n * rb);
  A.cxy = (A.cxy + B.cxy) + ((delta * ra) * B.sdy - (delta * rb) * A.sdy);
  A.sdy = A.sdy + B.sdy;
  A.mean = A.mean + delta * rb;
  A.n = n;
}

// Calls f(c, offset, len) for every run of channels [c0, c1) over the flattened
// per-channel index range [e0, e1) of (N, S): sample-major, channels inner.
template <typename F>
inline void for_runs(i64 C, i64 S, i64 c0, i64 c1, i64 e0, i64 e1, F&& f) {
  i64 e = e0;
  while (e < e1) {
    i64 n = e / S, s = e % S;
    i64 len = std::min(S - s, e1 - e);
    for (i64 c = c0; c < c1; ++c) f(c, (n * C + c) * S + s, len);
    e += len;
  }
}

// for_runs, also prefetching the rows ahead of the current one from `a` and `b` (b may
// be null): these passes read from memory, in pieces too short (small S) or too far
// apart (the next sample's rows) for the hardware prefetcher to follow.
template <typename T, typename F>
inline void for_runs_pf(i64 C, i64 S, i64 c0, i64 c1, i64 e0, i64 e1, const T* a, const T* b,
                        F&& f) {
  const i64 piece = (c1 - c0) * std::min(S, e1 - e0);  // elements of one row of the unit
  const i64 piece_bytes = std::max<i64>(1, piece * static_cast<i64>(sizeof(T)));
  const i64 dist = std::min<i64>(32, std::max<i64>(1, (kPrefetchBytes + piece_bytes - 1) / piece_bytes));
  const i64 pf_bytes = std::min(piece_bytes, kPrefetchBytes);
  i64 e = e0;
  while (e < e1) {
    i64 n = e / S, s = e % S;
    i64 len = std::min(S - s, e1 - e);
    i64 ahead = (n + dist) * S;  // first element of row n + dist within the channel
    if (ahead < e1) {
      i64 off = ((n + dist) * C + c0) * S + std::max<i64>(0, e0 - ahead);
      const char* pa = reinterpret_cast<const char*>(a + off);
      const char* pb = b ? reinterpret_cast<const char*>(b + off) : nullptr;
      for (i64 k = 0; k < pf_bytes; k += 64) {
        __builtin_prefetch(pa + k, 0, 3);
        if (pb) __builtin_prefetch(pb + k, 0, 3);
      }
    }
    for (i64 c = c0; c < c1; ++c) f(c, (n * C + c) * S + s, len);
    e += len;
  }
}

// Moments of channels [c0, c1) over [e0, e1) into out[c - c0]. dy == nullptr: forward
// (m2 only); otherwise sdy and cxy too.
template <typename T>
void unit_stats(const bn::Ops<T>& ops, const T* x, const T* dy, i64 C, i64 S, i64 c0, i64 c1,
                i64 e0, i64 e1, Mom* out) {
  for (i64 c = c0; c < c1; ++c) out[c - c0] = Mom{0, 0, 0, 0, 0};
  if (S >= kChunkedMinS) {
    const i64 chunk = std::max<i64>(16, kChunkBytes / static_cast<i64>(sizeof(T)));
    for_runs_pf(C, S, c0, c1, e0, e1, x, dy, [&](i64 c, i64 off, i64 len) {
      i64 pieces = (len + chunk - 1) / chunk;
      i64 base = len / pieces, extra = len % pieces, at = off;
      for (i64 k = 0; k < pieces; ++k) {
        i64 l = base + (k < extra ? 1 : 0);
        Mom m{static_cast<double>(l), 0, 0, 0, 0};
        m.mean = ops.sum(x + at, l) / m.n;
        if (dy) {
          double o[3];
          ops.m2dy(x + at, dy + at, l, m.mean, o);
          m.m2 = o[0];
          m.sdy = o[1];
          m.cxy = o[2];
        } else {
          // one refinement step: the mean plus the mean deviation from it (exact for a
          // constant chunk); m2 stays the plain sum of squared deviations
          double o[2];
          ops.m2(x + at, l, m.mean, o);
          m.m2 = o[0];
          m.mean = m.mean + o[1] / m.n;
        }
        merge(out[c - c0], m);
        at += l;
      }
    });
  } else {
    // Two passes over the unit: the mean first, then deviations from it.
    for_runs_pf(C, S, c0, c1, e0, e1, x, dy, [&](i64 c, i64 off, i64 len) {
      out[c - c0].mean += ops.sum(x + off, len);
      out[c - c0].n += static_cast<double>(len);
    });
    for (i64 c = c0; c < c1; ++c)
      if (out[c - c0].n > 0) out[c - c0].mean /= out[c - c0].n;
    for_runs(C, S, c0, c1, e0, e1, [&](i64 c, i64 off, i64 len) {
      Mom& m = out[c - c0];
      if (dy) {
        double o[3];
        ops.m2dy(x + off, dy + off, len, m.mean, o);
        m.m2 += o[0];
        m.sdy += o[1];
        m.cxy += o[2];
      } else {
        double o[2];
        ops.m2(x + off, len, m.mean, o);
        m.m2 += o[0];
        m.sdy += o[1];  // sum of deviations, folded into the mean below
      }
    });
    if (!dy)
      for (i64 c = c0; c < c1; ++c) {
        Mom& m = out[c - c0];
        if (m.n > 0) m.mean = m.mean + m.sdy / m.n;
        m.sdy = 0;
      }
  }
}

// sum dy and sum dy * (x - mean[c]) with given means (eval backward).
template <typename T>
void unit_dysums(const bn::Ops<T>& ops, const T* x, const T* dy, i64 C, i64 S, i64 c0, i64 c1,
                 i64 e0, i64 e1, const double* mean, Mom* out) {
  for (i64 c = c0; c < c1; ++c) out[c - c0] = Mom{0, 0, 0, 0, 0};
  for_runs_pf(C, S, c0, c1, e0, e1, x, dy, [&](i64 c, i64 off, i64 len) {
    double o[2];
    ops.dy(x + off, dy + off, len, mean[c], o);
    out[c - c0].n += static_cast<double>(len);
    out[c - c0].sdy += o[0];
    out[c - c0].cxy += o[1];
  });
}

// Mean as an unevaluated sum of two T values.
template <typename T>
inline void split_mean(double mean, T& hi, T& lo) {
  hi = static_cast<T>(mean);
  lo = static_cast<T>(mean - static_cast<double>(hi));
}

// How the (C, N*S) work is cut into units for the threads.
struct Plan {
  int threads = 1;
  i64 cb = 1;       // channels per block (split == false)
  i64 nblocks = 0;
  i64 parts = 1;    // pieces per channel (split == true)
  bool split = false;
  i64 units() const { return split ? nblocks * parts : nblocks; }
};

Plan make_plan(i64 C, i64 NS, i64 bytes_per_elem) {
  Plan p;
  i64 total_bytes = C * NS * bytes_per_elem;  // fits: the caller's arrays exist
  int t = num_threads();
  i64 useful = std::max<i64>(1, total_bytes / (128 * 1024));
  p.threads = static_cast<int>(std::min<i64>(t, useful));
  i64 chan_bytes = std::max<i64>(1, NS * bytes_per_elem);
  p.cb = std::max<i64>(1, kBlockBytes / chan_bytes);
  if (p.threads > 1) p.cb = std::min(p.cb, std::max<i64>(1, C / (4 * p.threads)));
  p.nblocks = (C + p.cb - 1) / p.cb;
  if (p.threads > 1 && C < 4 * p.threads) {
    i64 parts = (4 * p.threads + C - 1) / C;
    parts = std::min(parts, std::max<i64>(1, NS / kMinPartElems));
    if (parts > 1) {
      p.split = true;
      p.parts = parts;
      p.cb = 1;
      p.nblocks = C;
    }
  }
  return p;
}

// Unit u of plan p: channels [c0, c1), element range [e0, e1).
inline void unit_range(const Plan& p, i64 C, i64 NS, i64 u, i64& c0, i64& c1, i64& e0, i64& e1) {
  if (p.split) {
    i64 c = u / p.parts, k = u % p.parts;
    c0 = c;
    c1 = c + 1;
    e0 = NS * k / p.parts;
    e1 = NS * (k + 1) / p.parts;
  } else {
    c0 = u * p.cb;
    c1 = std::min(C, c0 + p.cb);
    e0 = 0;
    e1 = NS;
  }
}

template <typename T>
const bn::Ops<T>& ops_for_active_isa();
template <>
const bn::Ops<float>& ops_for_active_isa<float>() {
  return active_isa() >= Isa::avx2 ? bn::avx2_ops_f32() : bn::scalar_ops_f32();
}
template <>
const bn::Ops<double>& ops_for_active_isa<double>() {
  return active_isa() >= Isa::avx2 ? bn::avx2_ops_f64() : bn::scalar_ops_f64();
}

// Per-call per-channel state, in the calling thread's scratch memory.
template <typename T>
struct ChannelState {
  Mom* mom;
  bn::Coef<T>* coef;
  Mom* partial;  // split plans: C * parts
};

template <typename T>
ChannelState<T> channel_state(i64 C, const Plan& p) {
  std::size_t mom_bytes = static_cast<std::size_t>(checked_mul(C, sizeof(Mom), "batch norm state"));
  std::size_t coef_bytes =
      static_cast<std::size_t>(checked_mul(C, sizeof(bn::Coef<T>), "batch norm state"));
  std::size_t mom_pad = (mom_bytes + 63) / 64 * 64;
  char* base = static_cast<char*>(scratch(kScratchOp1, mom_pad + coef_bytes));
  ChannelState<T> st;
  st.mom = reinterpret_cast<Mom*>(base);
  st.coef = reinterpret_cast<bn::Coef<T>*>(base + mom_pad);
  st.partial = nullptr;
  if (p.split) {
    i64 cnt = checked_mul(C, p.parts, "batch norm state");
    st.partial = static_cast<Mom*>(
        scratch(kScratchOp0, static_cast<std::size_t>(checked_mul(cnt, sizeof(Mom), "batch norm state"))));
  }
  return st;
}

}  // namespace

namespace bn {
const Ops<float>& scalar_ops_f32() {
  static const Ops<float> o = make_scalar_ops<float>();
  return o;
}
const Ops<double>& scalar_ops_f64() {
  static const Ops<double> o = make_scalar_ops<double>();
  return o;
}
}  // namespace bn

template <typename T>
void batchnorm_forward(const T* x, T* y, const BatchNormParams& p, bool training,
                       const double* mean_in, const double* var_in, const double* weight,
                       const double* bias, double* batch_mean, double* batch_m2) {
  const i64 C = p.c, S = p.s, NS = p.n * p.s;
  if (C == 0 || NS == 0) return;
  const bn::Ops<T>& ops = ops_for_active_isa<T>();
  const Plan plan = make_plan(C, NS, static_cast<i64>(sizeof(T)));
  ChannelState<T> st = channel_state<T>(C, plan);
  const bool stream = checked_mul(checked_mul(C, NS, "output"), sizeof(T), "output") > kStreamBytes && !std::getenv("BN_NOSTREAM");
  const double eps = p.eps;

  auto coef_from = [&](i64 c, double mean, double var) {
    double invstd = 1.0 / std::sqrt(var + eps);
    double a = weight ? invstd * weight[c] : invstd;
    bn::Coef<T>& k = st.coef[c];
    split_mean<T>(mean, k.mean_hi, k.mean_lo);
    k.a = static_cast<T>(a);
    k.b = static_cast<T>(bias ? bias[c] : 0.0);
    k.mdy = T(0);
  };
  auto finalize = [&](i64 c) {
    const Mom& m = st.mom[c];
    batch_mean[c] = m.mean;
    batch_m2[c] = m.m2;
    coef_from(c, m.mean, m.m2 / m.n);
  };
  auto normalise = [&](i64 c0, i64 c1, i64 e0, i64 e1) {
    for_runs(C, S, c0, c1, e0, e1,
             [&](i64 c, i64 off, i64 len) { ops.norm(x + off, y + off, len, st.coef[c], stream); });
    if (stream) ops.fence();
  };

  if (!training) {
    for (i64 c = 0; c < C; ++c) coef_from(c, mean_in[c], var_in[c]);
  }
  const i64 units = plan.units();
  if (!training || !plan.split) {
#pragma omp parallel for schedule(static) num_threads(plan.threads)
    for (i64 u = 0; u < units; ++u) {
      i64 c0, c1, e0, e1;
      unit_range(plan, C, NS, u, c0, c1, e0, e1);
      if (training) {
        unit_stats<T>(ops, x, nullptr, C, S, c0, c1, e0, e1, st.mom + c0);
        for (i64 c = c0; c < c1; ++c) finalize(c);
      }
      normalise(c0, c1, e0, e1);
    }
    return;
  }
  // Split plan: per-piece moments, merged in piece order, then the normalising pass.
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, C, NS, u, c0, c1, e0, e1);
    unit_stats<T>(ops, x, nullptr, C, S, c0, c1, e0, e1, st.partial + u);
  }
  for (i64 c = 0; c < C; ++c) {
    st.mom[c] = Mom{0, 0, 0, 0, 0};
    for (i64 k = 0; k < plan.parts; ++k) merge(st.mom[c], st.partial[c * plan.parts + k]);
    finalize(c);
  }
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, C, NS, u, c0, c1, e0, e1);
    normalise(c0, c1, e0, e1);
  }
}

template <typename T>
void batchnorm_backward(const T* dy, const T* x, T* dx, const BatchNormParams& p,
                        bool training, const double* mean_in, const double* var_in,
                        const double* weight, double* grad_weight, double* grad_bias) {
  const i64 C = p.c, S = p.s, NS = p.n * p.s;
  if (C == 0) return;
  if (NS == 0) {
    for (i64 c = 0; c < C; ++c) {
      if (grad_weight) grad_weight[c] = 0.0;
      if (grad_bias) grad_bias[c] = 0.0;
    }
    return;
  }
  const bn::Ops<T>& ops = ops_for_active_isa<T>();
  const bool need_sums = training || grad_weight || grad_bias;
  const Plan plan = make_plan(C, NS, static_cast<i64>(sizeof(T)) * (need_sums ? 2 : 1));
  ChannelState<T> st = channel_state<T>(C, plan);
  const bool stream = checked_mul(checked_mul(C, NS, "output"), sizeof(T), "output") > kStreamBytes && !std::getenv("BN_NOSTREAM");
  const double eps = p.eps;

  // Per channel: coefficients for dx and the parameter gradients, from the moments.
  auto finalize = [&](i64 c) {
    const Mom& m = st.mom[c];
    double mean, var;
    if (training) {
      mean = m.mean;
      var = m.m2 / m.n;
    } else {
      mean = mean_in[c];
      var = var_in[c];
    }
    double invstd = 1.0 / std::sqrt(var + eps);
    double w = weight ? weight[c] : 1.0;
    double a = w * invstd;
    bn::Coef<T>& k = st.coef[c];
    split_mean<T>(mean, k.mean_hi, k.mean_lo);
    k.a = static_cast<T>(a);
    if (training) {
      k.mdy = static_cast<T>(m.sdy / m.n);
      k.b = static_cast<T>(a * ((m.cxy / m.n) / (var + eps)));
    } else {
      k.mdy = T(0);
      k.b = T(0);
    }
    if (need_sums) {
      if (grad_weight) grad_weight[c] = m.cxy * invstd;
      if (grad_bias) grad_bias[c] = m.sdy;
    }
  };
  auto reduce = [&](i64 c0, i64 c1, i64 e0, i64 e1, Mom* out) {
    if (training)
      unit_stats<T>(ops, x, dy, C, S, c0, c1, e0, e1, out);
    else
      unit_dysums<T>(ops, x, dy, C, S, c0, c1, e0, e1, mean_in, out);
  };
  auto grad_input = [&](i64 c0, i64 c1, i64 e0, i64 e1) {
    if (training)
      for_runs(C, S, c0, c1, e0, e1, [&](i64 c, i64 off, i64 len) {
        ops.dx(x + off, dy + off, dx + off, len, st.coef[c], stream);
      });
    else
      for_runs(C, S, c0, c1, e0, e1, [&](i64 c, i64 off, i64 len) {
        ops.scale(dy + off, dx + off, len, st.coef[c].a, stream);
      });
    if (stream) ops.fence();
  };

  const i64 units = plan.units();
  if (!need_sums) {
    for (i64 c = 0; c < C; ++c) finalize(c);
#pragma omp parallel for schedule(static) num_threads(plan.threads)
    for (i64 u = 0; u < units; ++u) {
      i64 c0, c1, e0, e1;
      unit_range(plan, C, NS, u, c0, c1, e0, e1);
      grad_input(c0, c1, e0, e1);
    }
    return;
  }
  if (!plan.split) {
#pragma omp parallel for schedule(static) num_threads(plan.threads)
    for (i64 u = 0; u < units; ++u) {
      i64 c0, c1, e0, e1;
      unit_range(plan, C, NS, u, c0, c1, e0, e1);
      reduce(c0, c1, e0, e1, st.mom + c0);
      for (i64 c = c0; c < c1; ++c) finalize(c);
      grad_input(c0, c1, e0, e1);
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, C, NS, u, c0, c1, e0, e1);
    reduce(c0, c1, e0, e1, st.partial + u);
  }
  for (i64 c = 0; c < C; ++c) {
    Mom& m = st.mom[c];
    m = Mom{0, 0, 0, 0, 0};
    for (i64 k = 0; k < plan.parts; ++k) {
      const Mom& q = st.partial[c * plan.parts + k];
      if (training) {
        merge(m, q);
      } else {
        m.n += q.n;
        m.sdy += q.sdy;
        m.cxy += q.cxy;
      }
    }
    finalize(c);
  }
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, C, NS, u, c0, c1, e0, e1);
    grad_input(c0, c1, e0, e1);
  }
}

template void batchnorm_forward<float>(const float*, float*, const BatchNormParams&, bool,
                                       const double*, const double*, const double*,
                                       const double*, double*, double*);
template void batchnorm_forward<double>(const double*, double*, const BatchNormParams&, bool,
                                        const double*, const double*, const double*,
                                        const double*, double*, double*);
template void batchnorm_backward<float>(const float*, const float*, float*,
                                        const BatchNormParams&, bool, const double*,
                                        const double*, const double*, double*, double*);
template void batchnorm_backward<double>(const double*, const double*, double*,
                                         const BatchNormParams&, bool, const double*,
                                         const double*, const double*, double*, double*);

}  // namespace pyconv
