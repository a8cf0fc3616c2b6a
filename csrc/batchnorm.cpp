// Batch normalisation: the portable run primitives and the channel-level algorithms
// (blocking for cache reuse, threading, statistics merging). See batchnorm.h for the
// numerical contract every ISA follows.
#include "batchnorm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <cstdlib>

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
double s_sq(const T* x, i64 len, double mean) {
  double a[16] = {};
  i64 i = 0;
  for (; i + 16 <= len; i += 16)
    for (int j = 0; j < 16; ++j) {
      double d = static_cast<double>(x[i + j]) - mean;
      a[j] += keep(d * d);
    }
  for (int j = 0; i + j < len; ++j) {
    double d = static_cast<double>(x[i + j]) - mean;
    a[j] += keep(d * d);
  }
  return combine16(a);
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

// Row grouping shared with every ISA: 4 rows form one term ((t0 + t1) + (t2 + t3)),
// other counts go row by row. term(row, j) gives one row's contribution.
template <typename Term>
inline double row_group(i64 j, Term&& term) {
  return (term(0, j) + term(1, j)) + (term(2, j) + term(3, j));
}

template <typename T>
void s_col_add(const T* x, i64 ld, i64 rows, i64 w, double* acc) {
  auto t = [&](i64 r, i64 j) { return static_cast<double>(x[r * ld + j]); };
  if (rows == 4) {
    for (i64 j = 0; j < w; ++j) acc[j] += row_group(j, t);
    return;
  }
  for (i64 r = 0; r < rows; ++r)
    for (i64 j = 0; j < w; ++j) acc[j] += t(r, j);
}

template <typename T>
void s_col_welford(const T* x, i64 ld, i64 rows, i64 w, double r1, double r2, double* mean,
                   double* m2) {
  for (i64 j = 0; j < w; ++j) {
    double mb, m2b;
    if (rows == 4) {
      double v[4];
      for (int k = 0; k < 4; ++k) v[k] = static_cast<double>(x[k * ld + j]);
      mb = ((v[0] + v[1]) + (v[2] + v[3])) * 0.25;
      double e[4];
      for (int k = 0; k < 4; ++k) e[k] = v[k] - mb;
      m2b = (keep(e[0] * e[0]) + keep(e[1] * e[1])) + (keep(e[2] * e[2]) + keep(e[3] * e[3]));
    } else {
      mb = static_cast<double>(x[j]);
      m2b = 0.0;
    }
    const double delta = mb - mean[j];
    mean[j] = mean[j] + keep(delta * r1);
    m2[j] = m2[j] + (m2b + keep(keep(delta * delta) * r2));
  }
}

template <typename T>
void s_col_m2(const T* x, i64 ld, i64 rows, i64 w, const double* mean, double* q, double* r) {
  auto dev = [&](i64 k, i64 j) { return static_cast<double>(x[k * ld + j]) - mean[j]; };
  auto sq = [&](i64 k, i64 j) {
    double d = dev(k, j);
    return keep(d * d);
  };
  if (rows == 4) {
    for (i64 j = 0; j < w; ++j) {
      q[j] += row_group(j, sq);
      if (r) r[j] += row_group(j, dev);
    }
    return;
  }
  for (i64 k = 0; k < rows; ++k)
    for (i64 j = 0; j < w; ++j) {
      q[j] += sq(k, j);
      if (r) r[j] += dev(k, j);
    }
}

template <typename T>
void s_col_m2dy(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean, double* q,
                double* g, double* cx) {
  auto dev = [&](i64 k, i64 j) { return static_cast<double>(x[k * ld + j]) - mean[j]; };
  auto sq = [&](i64 k, i64 j) {
    double d = dev(k, j);
    return keep(d * d);
  };
  auto gy = [&](i64 k, i64 j) { return static_cast<double>(dy[k * ld + j]); };
  auto co = [&](i64 k, i64 j) { return keep(gy(k, j) * dev(k, j)); };
  if (rows == 4) {
    for (i64 j = 0; j < w; ++j) {
      q[j] += row_group(j, sq);
      g[j] += row_group(j, gy);
      cx[j] += row_group(j, co);
    }
    return;
  }
  for (i64 k = 0; k < rows; ++k)
    for (i64 j = 0; j < w; ++j) {
      q[j] += sq(k, j);
      g[j] += gy(k, j);
      cx[j] += co(k, j);
    }
}

template <typename T>
void s_col_dy(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean, double* g,
              double* cx) {
  auto dev = [&](i64 k, i64 j) { return static_cast<double>(x[k * ld + j]) - mean[j]; };
  auto gy = [&](i64 k, i64 j) { return static_cast<double>(dy[k * ld + j]); };
  auto co = [&](i64 k, i64 j) { return keep(gy(k, j) * dev(k, j)); };
  if (rows == 4) {
    for (i64 j = 0; j < w; ++j) {
      g[j] += row_group(j, gy);
      cx[j] += row_group(j, co);
    }
    return;
  }
  for (i64 k = 0; k < rows; ++k)
    for (i64 j = 0; j < w; ++j) {
      g[j] += gy(k, j);
      cx[j] += co(k, j);
    }
}

template <typename T>
void s_col_norm(const T* x, T* y, i64 w, const bn::ColCoef<T>& k, bool) {
  for (i64 j = 0; j < w; ++j) {
    T d = (x[j] - k.mean_hi[j]) - k.mean_lo[j];
    y[j] = keep(d * k.a[j]) + k.b[j];
  }
}

template <typename T>
void s_col_dx(const T* x, const T* dy, T* dx, i64 w, const bn::ColCoef<T>& k, bool) {
  for (i64 j = 0; j < w; ++j) {
    T g = dy[j] - k.mdy[j];
    T d = (x[j] - k.mean_hi[j]) - k.mean_lo[j];
    dx[j] = keep(g * k.a[j]) - keep(d * k.b[j]);
  }
}

template <typename T>
void s_col_scale(const T* dy, T* dx, i64 w, const T* a, bool) {
  for (i64 j = 0; j < w; ++j) dx[j] = dy[j] * a[j];
}

template <typename T>
void s_norm_runs(const T* x, T* y, i64 nruns, i64 S, const bn::Coef<T>* coef, i64 c, i64 C) {
  for (i64 r = 0; r < nruns; ++r) {
    s_norm<T>(x + r * S, y + r * S, S, coef[c], false);
    if (++c == C) c = 0;
  }
}

template <typename T>
void s_copy_out(T* dst, const T* src, i64 n, bool) {
  std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
}

void s_fence() {}

template <typename T>
bn::Ops<T> make_scalar_ops() {
  bn::Ops<T> o;
  o.sum = &s_sum<T>;
  o.m2 = &s_m2<T>;
  o.sq = &s_sq<T>;
  o.m2dy = &s_m2dy<T>;
  o.dy = &s_dy<T>;
  o.norm = &s_norm<T>;
  o.dx = &s_dx<T>;
  o.scale = &s_scale<T>;
  o.col_add = &s_col_add<T>;
  o.col_m2 = &s_col_m2<T>;
  o.col_welford = &s_col_welford<T>;
  o.col_m2dy = &s_col_m2dy<T>;
  o.col_dy = &s_col_dy<T>;
  o.col_norm = &s_col_norm<T>;
  o.col_dx = &s_col_dx<T>;
  o.col_scale = &s_col_scale<T>;
  o.norm_runs = &s_norm_runs<T>;
  o.copy_out = &s_copy_out<T>;
  o.fence = &s_fence;
  return o;
}

// ------------------------------------------------------------------ algorithms

// Channels whose runs (S) are at least this long are cut into L1-sized chunks whose
// moments merge by Chan's formula; shorter runs are handled as columns: a row piece of a
// channel block is a set of columns, each accumulated over the rows (two passes over the
// L2-resident block), and a channel's columns merge by Chan's formula at the end.
constexpr i64 kChunkedMinS = 512;
constexpr i64 kChunkBytes = 8192;           // one chunk of x (and of dy) stays in L1
constexpr i64 kBlockBytes = 320 * 1024;     // a channel block is re-read from L2
constexpr i64 kMaxCols = 2048;              // widest row piece of the column scheme
constexpr i64 kMinPartElems = 16384;        // smallest piece of a split channel
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

// Mean as an unevaluated sum of two T values.
template <typename T>
inline void split_mean(double mean, T& hi, T& lo) {
  hi = static_cast<T>(mean);
  lo = static_cast<T>(mean - static_cast<double>(hi));
}

inline void prefetch_bytes(const void* p, i64 bytes) {
  const char* c = static_cast<const char*>(p);
  for (i64 k = 0; k < bytes; k += 64) __builtin_prefetch(c + k, 0, 3);
}

// Prefetches the next unit's input block (rows of row_bytes, ld_bytes apart, from a and
// from b when set) into the caches while the current unit works from L2, spread over the
// current unit's passes that do not read memory, so that the memory keeps streaming
// during them. progress(f) prefetches up to fraction (phase + f) / phases of the block.
struct Ahead {
  const char* a = nullptr;
  const char* b = nullptr;
  i64 ld_bytes = 0, row_bytes = 0, rows = 0;
  i64 done = 0;  // bytes prefetched so far, row-major
  int phase = 0, phases = 1;

  void progress(double f) {
    if (!a) return;
    const double total = static_cast<double>(rows) * static_cast<double>(row_bytes);
    const i64 target = static_cast<i64>(total * (phase + std::min(f, 1.0)) / phases);
    while (done < target) {
      const i64 r = done / row_bytes, o = done % row_bytes;
      const i64 off = r * ld_bytes + o;
      __builtin_prefetch(a + off, 0, 2);
      if (b) __builtin_prefetch(b + off, 0, 2);
      done += 64 - (o & 63);
    }
  }
  void next_phase() {
    progress(1.0);
    ++phase;
  }
};

// One thread's column accumulators and per-column coefficients (kMaxCols each).
template <typename T>
struct ColWork {
  double *q, *r, *g, *mean;
  T *mh, *ml, *a, *b, *mdy;
};

// Everything one call shares with its units.
template <typename T>
struct Ctx {
  const bn::Ops<T>* ops;
  const T* x;
  const T* dy;   // backward only
  T* out;        // y or dx
  i64 C, S;
  bool stream;
  bool columns;  // S < kChunkedMinS
  bn::Coef<T>* coef;
  const double* mean_in;  // backward with given statistics: the mean
};

template <typename T>
struct Ident {
  using type = const T*;
};
template <typename T>
using NoDeduce = typename Ident<T>::type;  // const T*, not used to deduce T

// Row-major walk over the runs of channels [c0, c1) in [e0, e1) (chunked scheme). The
// runs are long here, and the hardware prefetcher follows them better without help
// (measured: software prefetch of the next row made these passes slower).
template <typename T, typename F>
inline void for_runs(const Ctx<T>& k, i64 c0, i64 c1, i64 e0, i64 e1, F&& f,
                     Ahead* ah = nullptr) {
  const i64 C = k.C, S = k.S;
  i64 e = e0;
  while (e < e1) {
    i64 n = e / S, s = e % S;
    i64 len = std::min(S - s, e1 - e);
    for (i64 c = c0; c < c1; ++c) {
      f(c, (n * C + c) * S + s, len);
      if (ah) ah->progress((static_cast<double>(e - e0 + len) * (c - c0 + 1) / (c1 - c0)) / (e1 - e0));
    }
    e += len;
  }
}

// The same runs in the opposite order (each run still forward). A pass over data that
// the previous pass has just read goes backwards: what that pass read last is what the
// caches still hold, and a set larger than the cache re-read forwards would miss all
// the way (each miss evicting the next line needed).
template <typename T, typename F>
inline void for_runs_reverse(const Ctx<T>& k, i64 c0, i64 c1, i64 e0, i64 e1, F&& f) {
  const i64 C = k.C, S = k.S;
  i64 e = e1;
  while (e > e0) {
    const i64 n = (e - 1) / S;
    const i64 start = std::max(n * S, e0);
    const i64 len = e - start, s = start - n * S;
    for (i64 c = c1 - 1; c >= c0; --c) f(c, (n * C + c) * S + s, len);
    e = start;
  }
}

// Row walk of the column scheme: f(offset of row n's piece, rows) over [n0, n1) in
// groups of `group` rows (the last ones singly), prefetching ahead from a and b (either
// may be null).
template <typename T, typename F>
inline void for_rows(const Ctx<T>& k, i64 c0, i64 c1, i64 n0, i64 n1, i64 group, NoDeduce<T> a,
                     NoDeduce<T> b, F&& f, Ahead* ah = nullptr) {
  const i64 w = (c1 - c0) * k.S;
  const i64 bytes = std::max<i64>(1, w * static_cast<i64>(sizeof(T)));
  const i64 dist = std::min<i64>(32, std::max<i64>(group, (kPrefetchBytes + bytes - 1) / bytes));
  const i64 pf = std::min(bytes, kPrefetchBytes);
  for (i64 n = n0; n < n1;) {
    const i64 g = n1 - n >= group ? group : 1;
    for (i64 r = n + dist; r < n + dist + g && r < n1; ++r) {
      i64 off = (r * k.C + c0) * k.S;
      if (a) prefetch_bytes(a + off, pf);
      if (b) prefetch_bytes(b + off, pf);
    }
    f((n * k.C + c0) * k.S, g);
    n += g;
    if (ah) ah->progress(static_cast<double>(n - n0) / static_cast<double>(n1 - n0));
  }
}

// Moments of one run x[0, len) (with dy[0, len) when dy is set), merged into `out`: the
// run is cut into L1-sized pieces (sum pass, then deviation pass from L1), each piece
// merged in order. Every caller takes a channel's runs in the same order: the same bits.
template <typename T>
inline void run_moments(const bn::Ops<T>& ops, const T* x, const T* dy, i64 len, Mom& out) {
  const i64 chunk = std::max<i64>(16, kChunkBytes / static_cast<i64>(sizeof(T)));
  i64 pieces = (len + chunk - 1) / chunk;
  i64 base = len / pieces, extra = len % pieces, at = 0;
  for (i64 p = 0; p < pieces; ++p) {
    i64 l = base + (p < extra ? 1 : 0);
    Mom m{static_cast<double>(l), 0, 0, 0, 0};
    m.mean = ops.sum(x + at, l) / m.n;
    if (dy) {
      double o[3];
      ops.m2dy(x + at, dy + at, l, m.mean, o);
      m.m2 = o[0];
      m.sdy = o[1];
      m.cxy = o[2];
    } else if (sizeof(T) == sizeof(float)) {
      // float32 pieces (at most kChunkBytes / 4 values of 24 bits) sum exactly in double
      // unless their exponents spread over more than about 2^18, and even then the
      // mean's rounding is far below the spread: no refinement step (as the columns)
      m.m2 = ops.sq(x + at, l, m.mean);
    } else {
      // one refinement step: the mean plus the mean deviation from it (exact for a
      // constant chunk); m2 stays the plain sum of squared deviations
      double o[2];
      ops.m2(x + at, l, m.mean, o);
      m.m2 = o[0];
      m.mean = m.mean + o[1] / m.n;
    }
    merge(out, m);
    at += l;
  }
}

// One group of g rows (4, or 1) of the one-pass column statistics; `done` counts the rows
// merged so far.
template <typename T>
inline void col_welford_group(const bn::Ops<T>& ops, const T* x, i64 ld, i64 g, i64 w, i64& done,
                              const ColWork<T>& cw) {
  const double na = static_cast<double>(done), gb = static_cast<double>(g);
  const double r1 = gb / (na + gb);
  ops.col_welford(x, ld, g, w, r1, na * r1, cw.mean, cw.q);
  done += g;
}

// The channel moments of channels [c0, c1) from their columns (S per channel, `rows`
// values each), merged column by column.
template <typename T>
inline void col_welford_merge(const ColWork<T>& cw, i64 c0, i64 c1, i64 S, double rows, Mom* out) {
  for (i64 c = c0; c < c1; ++c) {
    Mom acc{0, 0, 0, 0, 0};
    for (i64 s = 0; s < S; ++s) {
      i64 j = (c - c0) * S + s;
      merge(acc, Mom{rows, cw.mean[j], cw.q[j], 0, 0});
    }
    out[c - c0] = acc;
  }
}

// Training statistics of channels [c0, c1) over [e0, e1) into out[c - c0]; with dy
// (backward) also sum dy and the co-moment.
template <typename T>
void unit_stats(const Ctx<T>& k, const ColWork<T>& cw, i64 c0, i64 c1, i64 e0, i64 e1,
                Mom* out, Ahead* ah = nullptr) {
  const bn::Ops<T>& ops = *k.ops;
  const T* x = k.x;
  const T* dy = k.dy;
  for (i64 c = c0; c < c1; ++c) out[c - c0] = Mom{0, 0, 0, 0, 0};
  if (!k.columns) {
    for_runs(k, c0, c1, e0, e1, [&](i64 c, i64 off, i64 len) {
      run_moments<T>(ops, x + off, dy ? dy + off : nullptr, len, out[c - c0]);
    });
    return;
  }
  const i64 S = k.S, w = (c1 - c0) * S, n0 = e0 / S, n1 = e1 / S;
  const double rows = static_cast<double>(n1 - n0);
  const i64 ld = k.C * S;
  if (!dy) {
    // One pass from memory: Chan's update per column, 4 rows at a time.
    std::fill(cw.mean, cw.mean + w, 0.0);
    std::fill(cw.q, cw.q + w, 0.0);
    i64 done = 0;
    for_rows(k, c0, c1, n0, n1, 4, x, nullptr, [&](i64 off, i64 g) {
      col_welford_group<T>(ops, x + off, ld, g, w, done, cw);
    });
    col_welford_merge<T>(cw, c0, c1, S, rows, out);
    return;
  }
  // The refinement of the column means is only needed where a column sum can round:
  // float32 values sum exactly in double (fewer than 2^29 rows), float64 ones may not.
  double* refine = sizeof(T) == sizeof(float) && rows < 536870912.0 ? nullptr : cw.r;
  std::fill(cw.g, cw.g + w, 0.0);
  for_rows(k, c0, c1, n0, n1, 4, x, nullptr,
           [&](i64 off, i64 g) { ops.col_add(x + off, ld, g, w, cw.g); });
  for (i64 j = 0; j < w; ++j) cw.mean[j] = cw.g[j] / rows;
  std::fill(cw.q, cw.q + w, 0.0);
  std::fill(cw.r, cw.r + w, 0.0);
  std::fill(cw.g, cw.g + w, 0.0);
  if (dy)
    for_rows(k, c0, c1, n0, n1, 4, nullptr, dy, [&](i64 off, i64 g) {
      ops.col_m2dy(x + off, dy + off, ld, g, w, cw.mean, cw.q, cw.g, cw.r);
    });
  else
    for_rows(k, c0, c1, n0, n1, 4, nullptr, nullptr,
             [&](i64 off, i64 g) { ops.col_m2(x + off, ld, g, w, cw.mean, cw.q, refine); }, ah);
  if (ah) ah->next_phase();  // (only passed for the forward)
  for (i64 c = c0; c < c1; ++c) {
    Mom acc{0, 0, 0, 0, 0};
    for (i64 s = 0; s < S; ++s) {
      i64 j = (c - c0) * S + s;
      Mom m{rows, cw.mean[j], cw.q[j], 0, 0};
      if (dy) {
        m.sdy = cw.g[j];
        m.cxy = cw.r[j];
      } else {
        m.mean = m.mean + cw.r[j] / rows;  // refinement, as in the chunked scheme
      }
      merge(acc, m);
    }
    out[c - c0] = acc;
  }
}

// Eval backward: sum dy and sum dy * (x - running mean) for channels [c0, c1).
template <typename T>
void unit_dysums(const Ctx<T>& k, const ColWork<T>& cw, i64 c0, i64 c1, i64 e0, i64 e1,
                 Mom* out) {
  const bn::Ops<T>& ops = *k.ops;
  for (i64 c = c0; c < c1; ++c) out[c - c0] = Mom{0, 0, 0, 0, 0};
  if (!k.columns) {
    for_runs(k, c0, c1, e0, e1, [&](i64 c, i64 off, i64 len) {
      double o[2];
      ops.dy(k.x + off, k.dy + off, len, k.mean_in[c], o);
      out[c - c0].n += static_cast<double>(len);
      out[c - c0].sdy += o[0];
      out[c - c0].cxy += o[1];
    });
    return;
  }
  const i64 S = k.S, w = (c1 - c0) * S, n0 = e0 / S, n1 = e1 / S;
  for (i64 c = c0; c < c1; ++c)
    for (i64 s = 0; s < S; ++s) cw.mean[(c - c0) * S + s] = k.mean_in[c];
  std::fill(cw.g, cw.g + w, 0.0);
  std::fill(cw.r, cw.r + w, 0.0);
  for_rows(k, c0, c1, n0, n1, 4, k.x, k.dy, [&](i64 off, i64 g) {
    ops.col_dy(k.x + off, k.dy + off, k.C * S, g, w, cw.mean, cw.g, cw.r);
  });
  for (i64 c = c0; c < c1; ++c) {
    Mom& m = out[c - c0];
    for (i64 s = 0; s < S; ++s) {
      i64 j = (c - c0) * S + s;
      m.sdy += cw.g[j];
      m.cxy += cw.r[j];
    }
    m.n = static_cast<double>((n1 - n0) * S);
  }
}

// Per-column copies of the channel coefficients of [c0, c1).
template <typename T>
bn::ColCoef<T> expand_coef(const Ctx<T>& k, const ColWork<T>& cw, i64 c0, i64 c1) {
  const i64 S = k.S;
  for (i64 c = c0; c < c1; ++c) {
    const bn::Coef<T>& q = k.coef[c];
    for (i64 s = 0; s < S; ++s) {
      i64 j = (c - c0) * S + s;
      cw.mh[j] = q.mean_hi;
      cw.ml[j] = q.mean_lo;
      cw.a[j] = q.a;
      cw.b[j] = q.b;
      cw.mdy[j] = q.mdy;
    }
  }
  return bn::ColCoef<T>{cw.mh, cw.ml, cw.a, cw.b, cw.mdy};
}

enum class Pass { norm, dx, scale };

// Columns with runs of at least this many elements normalise a row piece run by run
// (norm_runs: one broadcast coefficient set per run) into an L1 staging buffer, then copy
// it out, instead of col_norm's per-column coefficient rows (five loads per vector):
// measured ~15% faster on the 256x512x7x7 training forward. The same bits.
constexpr i64 kColRunsMinS = 8;

// Row piece at `off` (channels [c0, c0 + cbw), S each) normalised run by run, staged in
// the thread's column coefficient rows (unused in this scheme).
template <typename T>
inline void norm_row_runs(const Ctx<T>& k, const ColWork<T>& cw, i64 off, i64 c0, i64 cbw,
                          bool stream) {
  T* dst = k.out + off;
  const std::uintptr_t mis = reinterpret_cast<std::uintptr_t>(dst) & 63;
  T* buf = reinterpret_cast<T*>(reinterpret_cast<char*>(cw.mh) + (mis % sizeof(T) == 0 ? mis : 0));
  k.ops->norm_runs(k.x + off, buf, cbw, k.S, k.coef, c0, k.C);
  k.ops->copy_out(dst, buf, cbw * k.S, stream);
}

// The element-wise pass over channels [c0, c1) in [e0, e1). `first` says the inputs
// come from memory (nothing read them before in this unit): prefetch them.
template <typename T>
void unit_elementwise(const Ctx<T>& k, const ColWork<T>& cw, Pass pass, i64 c0, i64 c1, i64 e0,
                      i64 e1, bool first, Ahead* ah = nullptr) {
  const bn::Ops<T>& ops = *k.ops;
  const T* x = k.x;
  const T* dy = k.dy;
  T* out = k.out;
  const T* pa = first ? (pass == Pass::scale ? dy : x) : nullptr;
  const T* pb = first && pass == Pass::dx ? dy : nullptr;
  if (!k.columns) {
    auto run = [&](i64 c, i64 off, i64 len) {
      if (pass == Pass::norm)
        ops.norm(x + off, out + off, len, k.coef[c], k.stream);
      else if (pass == Pass::dx)
        ops.dx(x + off, dy + off, out + off, len, k.coef[c], k.stream);
      else
        ops.scale(dy + off, out + off, len, k.coef[c].a, k.stream);
    };
    if (!first && !(ah && ah->a))
      for_runs_reverse(k, c0, c1, e0, e1, run);
    else
      for_runs(k, c0, c1, e0, e1, run, ah);
  } else {
    const i64 w = (c1 - c0) * k.S, n0 = e0 / k.S, n1 = e1 / k.S;
    const bool runs = pass == Pass::norm && k.S >= kColRunsMinS;
    bn::ColCoef<T> cc = runs ? bn::ColCoef<T>{} : expand_coef(k, cw, c0, c1);
    for_rows(k, c0, c1, n0, n1, 1, pa, pb, [&](i64 off, i64) {
      if (runs)
        norm_row_runs<T>(k, cw, off, c0, c1 - c0, k.stream);
      else if (pass == Pass::norm)
        ops.col_norm(x + off, out + off, w, cc, k.stream);
      else if (pass == Pass::dx)
        ops.col_dx(x + off, dy + off, out + off, w, cc, k.stream);
      else
        ops.col_scale(dy + off, out + off, w, cc.a, k.stream);
    }, ah);
  }
  if (k.stream) ops.fence();
}

// How the (C, N*S) work is cut into units for the threads.
struct Plan {
  int threads = 1;
  i64 cb = 1;       // channels per block
  i64 nblocks = 0;
  i64 parts = 1;    // pieces per channel (split plans)
  bool split = false;
  bool columns = false;
  i64 units() const { return split ? nblocks * parts : nblocks; }
};

Plan make_plan(i64 N, i64 C, i64 S, i64 bytes_per_elem) {
  Plan p;
  const i64 NS = N * S;
  i64 total_bytes = C * NS * bytes_per_elem;  // fits: the caller's arrays exist
  i64 useful = std::max<i64>(1, total_bytes / (128 * 1024));
  p.threads = static_cast<int>(std::min<i64>(num_threads(), useful));
  p.columns = S < kChunkedMinS;
  i64 chan_bytes = std::max<i64>(1, NS * bytes_per_elem);
  p.cb = std::max<i64>(1, kBlockBytes / chan_bytes);
  if (p.columns) p.cb = std::min(p.cb, std::max<i64>(1, kMaxCols / S));
  if (p.threads > 1) p.cb = std::min(p.cb, std::max<i64>(1, C / (4 * p.threads)));
  p.nblocks = (C + p.cb - 1) / p.cb;
  if (p.threads > 1 && C < 4 * p.threads) {
    i64 parts = (4 * p.threads + C - 1) / C;
    parts = std::min(parts, std::max<i64>(1, NS / kMinPartElems));
    if (p.columns) parts = std::min(parts, N);
    if (parts > 1) {
      p.split = true;
      p.parts = parts;
      p.cb = 1;
      p.nblocks = C;
    }
  }
  return p;
}

// Unit u of plan p: channels [c0, c1), element range [e0, e1) (whole rows for columns).
inline void unit_range(const Plan& p, i64 N, i64 C, i64 S, i64 u, i64& c0, i64& c1, i64& e0,
                       i64& e1) {
  if (p.split) {
    i64 c = u / p.parts, k = u % p.parts;
    c0 = c;
    c1 = c + 1;
    if (p.columns) {
      e0 = (N * k / p.parts) * S;
      e1 = (N * (k + 1) / p.parts) * S;
    } else {
      e0 = N * S * k / p.parts;
      e1 = N * S * (k + 1) / p.parts;
    }
  } else {
    c0 = u * p.cb;
    c1 = std::min(C, c0 + p.cb);
    e0 = 0;
    e1 = N * S;
  }
}

// The block of unit u (a non-split plan) to prefetch while the previous unit finishes:
// x (and dy when given), `phases` passes of the previous unit to spread it over.
template <typename T>
Ahead make_ahead(const Plan& p, i64 N, i64 C, i64 S, i64 u, const T* x, const T* dy,
                 int phases) {
  Ahead ah;
  if (p.split || u >= p.units()) return ah;
  i64 c0, c1, e0, e1;
  unit_range(p, N, C, S, u, c0, c1, e0, e1);
  const i64 es = static_cast<i64>(sizeof(T));
  ah.a = reinterpret_cast<const char*>(x + c0 * S);
  ah.b = dy ? reinterpret_cast<const char*>(dy + c0 * S) : nullptr;
  ah.ld_bytes = C * S * es;
  ah.row_bytes = (c1 - c0) * S * es;
  ah.rows = N;
  ah.phases = phases;
  return ah;
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

// Per-call state in the calling thread's scratch memory (never per-call allocations):
// moments and coefficients per channel, split-plan partials, per-thread column work.
template <typename T>
struct State {
  Mom* mom = nullptr;
  bn::Coef<T>* coef = nullptr;
  Mom* partial = nullptr;
  char* colbase = nullptr;
  std::size_t colstride = 0;
  ColWork<T> work(int t) const {
    ColWork<T> w{};
    if (!colbase) return w;
    char* b = colbase + colstride * static_cast<std::size_t>(t);
    double* d = reinterpret_cast<double*>(b);
    w.q = d;
    w.r = d + kMaxCols;
    w.g = d + 2 * kMaxCols;
    w.mean = d + 3 * kMaxCols;
    T* t0 = reinterpret_cast<T*>(d + 4 * kMaxCols);
    w.mh = t0;
    w.ml = t0 + kMaxCols;
    w.a = t0 + 2 * kMaxCols;
    w.b = t0 + 3 * kMaxCols;
    w.mdy = t0 + 4 * kMaxCols;
    return w;
  }
};

inline std::size_t round64(std::size_t v) { return (v + 63) / 64 * 64; }

template <typename T>
State<T> make_state(i64 C, const Plan& p) {
  const char* what = "batch norm state";
  std::size_t mom_bytes = round64(static_cast<std::size_t>(checked_mul(C, sizeof(Mom), what)));
  std::size_t coef_bytes =
      round64(static_cast<std::size_t>(checked_mul(C, sizeof(bn::Coef<T>), what)));
  std::size_t colstride = p.columns ? round64(kMaxCols * (4 * sizeof(double) + 5 * sizeof(T))) : 0;
  std::size_t col_bytes = colstride * static_cast<std::size_t>(p.threads);
  char* base = static_cast<char*>(scratch(kScratchOp1, mom_bytes + coef_bytes + col_bytes));
  State<T> st;
  st.mom = reinterpret_cast<Mom*>(base);
  st.coef = reinterpret_cast<bn::Coef<T>*>(base + mom_bytes);
  if (p.columns) {
    st.colbase = base + mom_bytes + coef_bytes;
    st.colstride = colstride;
  }
  if (p.split) {
    i64 cnt = checked_mul(C, p.parts, what);
    st.partial = static_cast<Mom*>(
        scratch(kScratchOp0, static_cast<std::size_t>(checked_mul(cnt, sizeof(Mom), what))));
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

// Eval forward in memory order: the (n, c) runs are split into one contiguous range per
// thread and walked linearly (the hardware prefetcher sees one stream in, one out). Long
// runs go straight to norm; short runs (S < kChunkedMinS) are normalised a chunk of whole
// runs at a time into a per-thread staging buffer (L1) placed at the destination's
// alignment, then copied out (non-temporal for large outputs). Element-wise only: any
// split gives the same bits.
constexpr i64 kRunsMinS = 8;            // shorter runs keep the column scheme
constexpr i64 kRunStageElems = 1024;    // elements per staged chunk (about)

template <typename T>
void eval_forward_runs(const bn::Ops<T>& ops, const T* x, T* y, i64 N, i64 C, i64 S,
                       const bn::Coef<T>* coef, bool stream, int threads) {
  const i64 runs = N * C;
  const bool staged = S < kChunkedMinS;
  const i64 per = std::max<i64>(1, kRunStageElems / S);
  const std::size_t stride = round64(static_cast<std::size_t>(per * S + 16) * sizeof(T) + 64);
  char* stage = staged ? static_cast<char*>(scratch(kScratchOp0, stride * threads)) : nullptr;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int t = 0; t < threads; ++t) {
    const i64 r0 = runs * t / threads, r1 = runs * (t + 1) / threads;
    if (!staged) {
      i64 c = r0 % C;
      for (i64 r = r0; r < r1; ++r) {
        ops.norm(x + r * S, y + r * S, S, coef[c], stream);
        if (++c == C) c = 0;
      }
    } else {
      char* mine = stage + stride * static_cast<std::size_t>(thread_index());
      for (i64 r = r0; r < r1; r += per) {
        const i64 nr = std::min(per, r1 - r);
        T* dst = y + r * S;
        const std::size_t mis = reinterpret_cast<std::uintptr_t>(dst) & 63;
        T* buf = reinterpret_cast<T*>(mine + (mis % sizeof(T) == 0 ? mis : 0));
        ops.norm_runs(x + r * S, buf, nr, S, coef, r % C, C);
        ops.copy_out(dst, buf, nr * S, stream);
      }
    }
    if (stream) ops.fence();
  }
}

// Training forward, long runs, data far larger than the caches (non-split plans):
// software-pipelined units. Each thread takes a contiguous range of units; while unit u
// is normalised from the caches (run by run in the order its statistics read them,
// non-temporal stores), the statistics of unit u+1 read its runs from memory, a
// proportional share after each run of u, so that memory reads and writes overlap
// instead of alternating (measured ~1.2x on 32x64x56x56 at 1 thread; with short runs,
// as columns, it measured slower than the plain per-unit order and is not used). Every
// channel's moments enter in the order unit_stats takes them and the normalising pass is
// element-wise: the same bits as the unpipelined path.
template <typename T, class Fin>
void forward_pipelined(const Ctx<T>& k, const Plan& plan, const State<T>& st, i64 N, Fin&& finalize) {
  const bn::Ops<T>& ops = *k.ops;
  const i64 C = k.C, S = k.S;
  const T* x = k.x;
  T* y = k.out;
  const i64 units = plan.units();
  const int nt = plan.threads;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int t = 0; t < nt; ++t) {
    const i64 u0 = units * t / nt, u1 = units * (t + 1) / nt;
    if (u0 >= u1) continue;
    // unit u's channels [c0, c1); its runs q = n * (c1 - c0) + (c - c0) in read order
    auto channels = [&](i64 u, i64& c0, i64& c1) {
      i64 e0, e1;
      unit_range(plan, N, C, S, u, c0, c1, e0, e1);
      for (i64 c = c0; c < c1; ++c) st.mom[c] = Mom{0, 0, 0, 0, 0};
      return N * (c1 - c0);
    };
    auto stats_run = [&](i64 q, i64 c0, i64 c1) {
      const i64 cbw = c1 - c0, n = q / cbw, c = c0 + q % cbw;
      run_moments<T>(ops, x + (n * C + c) * S, nullptr, S, st.mom[c]);
    };
    i64 c0, c1;
    i64 R = channels(u0, c0, c1);
    for (i64 q = 0; q < R; ++q) stats_run(q, c0, c1);
    for (i64 u = u0; u < u1; ++u) {
      for (i64 c = c0; c < c1; ++c) finalize(c);
      i64 d0 = 0, d1 = 0, R2 = 0, done = 0;
      if (u + 1 < u1) R2 = channels(u + 1, d0, d1);
      const i64 cbw = c1 - c0;
      for (i64 i = 0; i < R; ++i) {
        const i64 n = i / cbw, c = c0 + i % cbw, off = (n * C + c) * S;
        ops.norm(x + off, y + off, S, k.coef[c], true);
        for (const i64 want = R2 * (i + 1) / R; done < want; ++done) stats_run(done, d0, d1);
      }
      c0 = d0;
      c1 = d1;
      R = R2;
    }
    ops.fence();
  }
}

template <typename T>
void batchnorm_forward(const T* x, T* y, const BatchNormParams& p, bool training,
                       const double* mean_in, const double* var_in, const double* weight,
                       const double* bias, double* batch_mean, double* batch_m2) {
  const i64 N = p.n, C = p.c, S = p.s, NS = p.n * p.s;
  if (C == 0 || NS == 0) return;
  const Plan plan = make_plan(N, C, S, static_cast<i64>(sizeof(T)));
  State<T> st = make_state<T>(C, plan);
  Ctx<T> k{&ops_for_active_isa<T>(), x, nullptr, y, C, S,
           checked_mul(checked_mul(C, NS, "output"), sizeof(T), "output") > kStreamOutputBytes,
           plan.columns, st.coef, nullptr};
  const double eps = p.eps;

  auto coef_from = [&](i64 c, double mean, double var) {
    double invstd = 1.0 / std::sqrt(var + eps);
    double a = weight ? invstd * weight[c] : invstd;
    bn::Coef<T>& q = st.coef[c];
    split_mean<T>(mean, q.mean_hi, q.mean_lo);
    q.a = static_cast<T>(a);
    q.b = static_cast<T>(bias ? bias[c] : 0.0);
    q.mdy = T(0);
  };
  auto finalize = [&](i64 c) {
    const Mom& m = st.mom[c];
    batch_mean[c] = m.mean;
    batch_m2[c] = m.m2;
    coef_from(c, m.mean, m.m2 / m.n);
  };

  if (!training)
    for (i64 c = 0; c < C; ++c) coef_from(c, mean_in[c], var_in[c]);
  if (!training && S >= kRunsMinS) {
    eval_forward_runs<T>(*k.ops, x, y, N, C, S, st.coef, k.stream, plan.threads);
    return;
  }
  const i64 units = plan.units();
  if (training && !plan.split && k.stream && !plan.columns) {
    forward_pipelined<T>(k, plan, st, N, finalize);
    return;
  }
  if (!training || !plan.split) {
    // Each unit: statistics (from memory), then the normalising pass (from L2).
#pragma omp parallel for schedule(static) num_threads(plan.threads)
    for (i64 u = 0; u < units; ++u) {
      i64 c0, c1, e0, e1;
      unit_range(plan, N, C, S, u, c0, c1, e0, e1);
      ColWork<T> cw = st.work(thread_index());
      if (training) {
        unit_stats<T>(k, cw, c0, c1, e0, e1, st.mom + c0);
        for (i64 c = c0; c < c1; ++c) finalize(c);
      }
      unit_elementwise<T>(k, cw, Pass::norm, c0, c1, e0, e1, !training);
    }
    return;
  }
  // Split plan: per-piece moments, merged in piece order, then the normalising pass.
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, N, C, S, u, c0, c1, e0, e1);
    unit_stats<T>(k, st.work(thread_index()), c0, c1, e0, e1, st.partial + u);
  }
  for (i64 c = 0; c < C; ++c) {
    st.mom[c] = Mom{0, 0, 0, 0, 0};
    for (i64 q = 0; q < plan.parts; ++q) merge(st.mom[c], st.partial[c * plan.parts + q]);
    finalize(c);
  }
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, N, C, S, u, c0, c1, e0, e1);
    unit_elementwise<T>(k, st.work(thread_index()), Pass::norm, c0, c1, e0, e1, true);
  }
}

template <typename T>
void batchnorm_backward(const T* dy, const T* x, T* dx, const BatchNormParams& p,
                        bool training, const double* mean_in, const double* var_in,
                        const double* invstd_in, const double* weight, double* grad_weight,
                        double* grad_bias) {
  const i64 N = p.n, C = p.c, S = p.s, NS = p.n * p.s;
  if (C == 0) return;
  if (NS == 0) {
    for (i64 c = 0; c < C; ++c) {
      if (grad_weight) grad_weight[c] = 0.0;
      if (grad_bias) grad_bias[c] = 0.0;
    }
    return;
  }
  const bool need_sums = training || grad_weight || grad_bias;
  const Plan plan = make_plan(N, C, S, static_cast<i64>(sizeof(T)) * (need_sums ? 2 : 1));
  State<T> st = make_state<T>(C, plan);
  Ctx<T> k{&ops_for_active_isa<T>(), x, dy, dx, C, S,
           checked_mul(checked_mul(C, NS, "output"), sizeof(T), "output") > kStreamOutputBytes,
           plan.columns, st.coef, mean_in};
  const double eps = p.eps;
  const Pass pass = training ? Pass::dx : Pass::scale;
  const bool given = !training || invstd_in;  // statistics come from the caller

  // Per channel: coefficients for dx and the parameter gradients, from the moments.
  auto finalize = [&](i64 c) {
    const Mom& m = st.mom[c];
    double mean, invstd, ivar;  // ivar = 1 / (var + eps)
    if (!given) {
      mean = m.mean;
      double v = m.m2 / m.n + eps;
      invstd = 1.0 / std::sqrt(v);
      ivar = 1.0 / v;
    } else if (training) {
      mean = mean_in[c];
      invstd = invstd_in[c];
      ivar = invstd * invstd;
    } else {
      mean = mean_in[c];
      invstd = 1.0 / std::sqrt(var_in[c] + eps);
      ivar = 0.0;
    }
    double w = weight ? weight[c] : 1.0;
    double a = w * invstd;
    bn::Coef<T>& q = st.coef[c];
    split_mean<T>(mean, q.mean_hi, q.mean_lo);
    q.a = static_cast<T>(a);
    if (training) {
      q.mdy = static_cast<T>(m.sdy / m.n);
      q.b = static_cast<T>(a * ((m.cxy / m.n) * ivar));
    } else {
      q.mdy = T(0);
      q.b = T(0);
    }
    if (need_sums) {
      if (grad_weight) grad_weight[c] = m.cxy * invstd;
      if (grad_bias) grad_bias[c] = m.sdy;
    }
  };
  auto reduce = [&](const ColWork<T>& cw, i64 c0, i64 c1, i64 e0, i64 e1, Mom* out) {
    if (!given)
      unit_stats<T>(k, cw, c0, c1, e0, e1, out);
    else
      unit_dysums<T>(k, cw, c0, c1, e0, e1, out);
  };

  const i64 units = plan.units();
  if (!need_sums) {
    for (i64 c = 0; c < C; ++c) finalize(c);
#pragma omp parallel for schedule(static) num_threads(plan.threads)
    for (i64 u = 0; u < units; ++u) {
      i64 c0, c1, e0, e1;
      unit_range(plan, N, C, S, u, c0, c1, e0, e1);
      unit_elementwise<T>(k, st.work(thread_index()), pass, c0, c1, e0, e1, true);
    }
    return;
  }
  if (!plan.split && given && !plan.columns && k.stream) {
    // Long runs, given statistics, data far larger than the caches: software-pipelined
    // units. While unit u's element-wise pass runs (over its runs in the order its
    // reduction read them, so each run comes back from the caches about one unit's
    // traffic after it was read; non-temporal stores), unit u+1's reduction reads its
    // runs from memory, one run's worth after each element-wise run, so reads and
    // writes of memory overlap (measured: 1.27x over reduce-then-write per unit; walking
    // u backwards here was slower). Every run's sums enter in the same order as
    // unit_dysums takes them, and the element-wise pass is order-free: the same bits.
    const int T_ = plan.threads;
    auto unit_runs = [&](i64 u, i64& c0, i64& c1) {
      i64 e0, e1;
      unit_range(plan, N, C, S, u, c0, c1, e0, e1);
      return N * (c1 - c0);
    };
    auto run_off = [&](i64 q, i64 c0, i64 c1, i64& c) {
      const i64 cbw = c1 - c0, n = q / cbw;
      c = c0 + q % cbw;
      return (n * C + c) * S;
    };
    auto sums_run = [&](i64 q, i64 c0, i64 c1) {
      i64 c;
      const i64 off = run_off(q, c0, c1, c);
      double o[2];
      k.ops->dy(x + off, dy + off, S, mean_in[c], o);
      Mom& m = st.mom[c];
      m.n += static_cast<double>(S);
      m.sdy += o[0];
      m.cxy += o[1];
    };
    auto elem_run = [&](i64 q, i64 c0, i64 c1) {
      i64 c;
      const i64 off = run_off(q, c0, c1, c);
      if (pass == Pass::dx)
        k.ops->dx(x + off, dy + off, dx + off, S, st.coef[c], true);
      else
        k.ops->scale(dy + off, dx + off, S, st.coef[c].a, true);
    };
#pragma omp parallel for schedule(static) num_threads(T_)
    for (int t = 0; t < T_; ++t) {
      const i64 u0 = units * t / T_, u1 = units * (t + 1) / T_;
      if (u0 >= u1) continue;
      i64 c0, c1;
      i64 R = unit_runs(u0, c0, c1);
      for (i64 c = c0; c < c1; ++c) st.mom[c] = Mom{0, 0, 0, 0, 0};
      for (i64 q = 0; q < R; ++q) sums_run(q, c0, c1);
      for (i64 u = u0; u < u1; ++u) {
        for (i64 c = c0; c < c1; ++c) finalize(c);
        i64 d0 = 0, d1 = 0, R2 = 0;
        if (u + 1 < u1) {
          R2 = unit_runs(u + 1, d0, d1);
          for (i64 c = d0; c < d1; ++c) st.mom[c] = Mom{0, 0, 0, 0, 0};
        }
        i64 done = 0;  // runs of u+1 reduced so far
        for (i64 i = 0; i < R; ++i) {
          elem_run(i, c0, c1);
          const i64 want = R2 * (i + 1) / R;
          for (; done < want; ++done) sums_run(done, d0, d1);
        }
        for (; done < R2; ++done) sums_run(done, d0, d1);
        c0 = d0;
        c1 = d1;
        R = R2;
      }
      k.ops->fence();
    }
    return;
  }
  if (!plan.split) {
#pragma omp parallel for schedule(static) num_threads(plan.threads)
    for (i64 u = 0; u < units; ++u) {
      i64 c0, c1, e0, e1;
      unit_range(plan, N, C, S, u, c0, c1, e0, e1);
      ColWork<T> cw = st.work(thread_index());
      // column scheme, data far larger than the caches: the next unit's x and dy stream
      // in during the dx pass (measured: a clear gain for short runs; with long runs the
      // L2 cannot hold both units, and in the forward pass no gain)
      Ahead ah = plan.columns && k.stream ? make_ahead<T>(plan, N, C, S, u + 1, x, dy, 1) : Ahead{};
      reduce(cw, c0, c1, e0, e1, st.mom + c0);
      for (i64 c = c0; c < c1; ++c) finalize(c);
      unit_elementwise<T>(k, cw, pass, c0, c1, e0, e1, false, &ah);
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, N, C, S, u, c0, c1, e0, e1);
    reduce(st.work(thread_index()), c0, c1, e0, e1, st.partial + u);
  }
  for (i64 c = 0; c < C; ++c) {
    Mom& m = st.mom[c];
    m = Mom{0, 0, 0, 0, 0};
    for (i64 q = 0; q < plan.parts; ++q) {
      const Mom& part = st.partial[c * plan.parts + q];
      if (!given) {
        merge(m, part);
      } else {
        m.n += part.n;
        m.sdy += part.sdy;
        m.cxy += part.cxy;
      }
    }
    finalize(c);
  }
#pragma omp parallel for schedule(static) num_threads(plan.threads)
  for (i64 u = 0; u < units; ++u) {
    i64 c0, c1, e0, e1;
    unit_range(plan, N, C, S, u, c0, c1, e0, e1);
    unit_elementwise<T>(k, st.work(thread_index()), pass, c0, c1, e0, e1, true);
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
                                        const double*, const double*, const double*, double*,
                                        double*);
template void batchnorm_backward<double>(const double*, const double*, double*,
                                         const BatchNormParams&, bool, const double*,
                                         const double*, const double*, const double*, double*,
                                         double*);

}  // namespace pyconv
