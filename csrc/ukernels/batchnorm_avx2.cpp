// AVX2 + FMA kernels for batchnorm (compiled with -mavx2 -mfma; reached only through the
// run-time dispatcher). They follow the numerical contract in batchnorm.h exactly, so
// their results equal the scalar path's bit for bit: 16 double lanes per reduction
// (four 4-wide accumulators), the same lane combination, and no fused multiply-add.
#include <immintrin.h>

#include <cstdint>

#include "batchnorm.h"

#include <cstring>

namespace pyconv {
namespace {

// Stops the compiler contracting a product into the next addition (a no-op at run time).
inline __m256d keep(__m256d v) {
  __asm__("" : "+x"(v));
  return v;
}
inline __m256 keep(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}
inline double keep(double v) {
  __asm__("" : "+x"(v));
  return v;
}
inline float keep(float v) {
  __asm__("" : "+x"(v));
  return v;
}

// Four consecutive elements widened to double.
inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline __m256d load4(const double* p) { return _mm256_loadu_pd(p); }

inline double combine16(const double* a) {
  double t[4];
  for (int l = 0; l < 4; ++l) t[l] = (a[l] + a[4 + l]) + (a[8 + l] + a[12 + l]);
  return (t[0] + t[2]) + (t[1] + t[3]);
}

inline void store16(double* a, __m256d a0, __m256d a1, __m256d a2, __m256d a3) {
  _mm256_storeu_pd(a, a0);
  _mm256_storeu_pd(a + 4, a1);
  _mm256_storeu_pd(a + 8, a2);
  _mm256_storeu_pd(a + 12, a3);
}

template <typename T>
double v_sum(const T* x, i64 len) {
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  i64 i = 0;
  for (; i + 16 <= len; i += 16) {
    a0 = _mm256_add_pd(a0, load4(x + i));
    a1 = _mm256_add_pd(a1, load4(x + i + 4));
    a2 = _mm256_add_pd(a2, load4(x + i + 8));
    a3 = _mm256_add_pd(a3, load4(x + i + 12));
  }
  alignas(32) double a[16];
  store16(a, a0, a1, a2, a3);
  for (int j = 0; i + j < len; ++j) a[j] += static_cast<double>(x[i + j]);
  return combine16(a);
}

template <typename T>
void v_m2(const T* x, i64 len, double mean, double* out) {
  const __m256d m = _mm256_set1_pd(mean);
  __m256d a[4], b[4];
  for (int k = 0; k < 4; ++k) a[k] = b[k] = _mm256_setzero_pd();
  i64 i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int k = 0; k < 4; ++k) {
      __m256d d = _mm256_sub_pd(load4(x + i + 4 * k), m);
      a[k] = _mm256_add_pd(a[k], keep(_mm256_mul_pd(d, d)));
      b[k] = _mm256_add_pd(b[k], d);
    }
  }
  alignas(32) double aa[16], ab[16];
  store16(aa, a[0], a[1], a[2], a[3]);
  store16(ab, b[0], b[1], b[2], b[3]);
  for (int j = 0; i + j < len; ++j) {
    double d = static_cast<double>(x[i + j]) - mean;
    aa[j] += keep(d * d);
    ab[j] += d;
  }
  out[0] = combine16(aa);
  out[1] = combine16(ab);
}

template <typename T>
double v_sq(const T* x, i64 len, double mean) {
  const __m256d m = _mm256_set1_pd(mean);
  __m256d a[4];
  for (int k = 0; k < 4; ++k) a[k] = _mm256_setzero_pd();
  i64 i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int k = 0; k < 4; ++k) {
      __m256d d = _mm256_sub_pd(load4(x + i + 4 * k), m);
      a[k] = _mm256_add_pd(a[k], keep(_mm256_mul_pd(d, d)));
    }
  }
  alignas(32) double aa[16];
  store16(aa, a[0], a[1], a[2], a[3]);
  for (int j = 0; i + j < len; ++j) {
    double d = static_cast<double>(x[i + j]) - mean;
    aa[j] += keep(d * d);
  }
  return combine16(aa);
}

template <typename T>
void v_m2dy(const T* x, const T* dy, i64 len, double mean, double* out) {
  const __m256d m = _mm256_set1_pd(mean);
  __m256d q[4], g[4], c[4];
  for (int k = 0; k < 4; ++k) q[k] = g[k] = c[k] = _mm256_setzero_pd();
  i64 i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int k = 0; k < 4; ++k) {
      __m256d d = _mm256_sub_pd(load4(x + i + 4 * k), m);
      __m256d e = load4(dy + i + 4 * k);
      q[k] = _mm256_add_pd(q[k], keep(_mm256_mul_pd(d, d)));
      g[k] = _mm256_add_pd(g[k], e);
      c[k] = _mm256_add_pd(c[k], keep(_mm256_mul_pd(e, d)));
    }
  }
  alignas(32) double aq[16], ag[16], ac[16];
  store16(aq, q[0], q[1], q[2], q[3]);
  store16(ag, g[0], g[1], g[2], g[3]);
  store16(ac, c[0], c[1], c[2], c[3]);
  for (int j = 0; i + j < len; ++j) {
    double d = static_cast<double>(x[i + j]) - mean;
    double e = static_cast<double>(dy[i + j]);
    aq[j] += keep(d * d);
    ag[j] += e;
    ac[j] += keep(e * d);
  }
  out[0] = combine16(aq);
  out[1] = combine16(ag);
  out[2] = combine16(ac);
}

template <typename T>
void v_dy(const T* x, const T* dy, i64 len, double mean, double* out) {
  const __m256d m = _mm256_set1_pd(mean);
  __m256d g[4], c[4];
  for (int k = 0; k < 4; ++k) g[k] = c[k] = _mm256_setzero_pd();
  i64 i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int k = 0; k < 4; ++k) {
      __m256d d = _mm256_sub_pd(load4(x + i + 4 * k), m);
      __m256d e = load4(dy + i + 4 * k);
      g[k] = _mm256_add_pd(g[k], e);
      c[k] = _mm256_add_pd(c[k], keep(_mm256_mul_pd(e, d)));
    }
  }
  alignas(32) double ag[16], ac[16];
  store16(ag, g[0], g[1], g[2], g[3]);
  store16(ac, c[0], c[1], c[2], c[3]);
  for (int j = 0; i + j < len; ++j) {
    double d = static_cast<double>(x[i + j]) - mean;
    double e = static_cast<double>(dy[i + j]);
    ag[j] += e;
    ac[j] += keep(e * d);
  }
  out[0] = combine16(ag);
  out[1] = combine16(ac);
}

// Element-wise kernels: one vector type per T.
struct VF {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static V set1(T v) { return _mm256_set1_ps(v); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static void stream(T* p, V v) { _mm256_stream_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
};
struct VD {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static V set1(T v) { return _mm256_set1_pd(v); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static void stream(T* p, V v) { _mm256_stream_pd(p, v); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
};

// Applies body(i) (scalar) or vbody(i) (one vector from i) over [0, len). With `stream`,
// whole 64-byte lines of the output go out with non-temporal stores and the partial lines
// at both ends with ordinary ones (a line is never written both ways, which would be
// slow). The per-element arithmetic is identical in every form, so neither alignment
// nor streaming changes a bit.
template <class Vt, class S, class Vb>
inline void elementwise(typename Vt::T* out, i64 len, bool stream, S&& body, Vb&& vbody) {
  using T = typename Vt::T;
  constexpr int W = Vt::W;
  constexpr i64 L = 64 / static_cast<i64>(sizeof(T));  // elements per line (2 vectors)
  i64 i = 0;
  if (stream) {
    i64 head = static_cast<i64>(((64 - (reinterpret_cast<std::uintptr_t>(out) & 63)) & 63) / sizeof(T));
    if ((reinterpret_cast<std::uintptr_t>(out) % sizeof(T)) == 0 && head + L <= len) {
      for (; i < head; ++i) body(i);
      i64 end = head + (len - head) / L * L;
      for (; i < end; i += L) {
        Vt::stream(out + i, vbody(i));
        Vt::stream(out + i + W, vbody(i + W));
      }
    }
  }
  for (; i + 2 * W <= len; i += 2 * W) {
    Vt::store(out + i, vbody(i));
    Vt::store(out + i + W, vbody(i + W));
  }
  for (; i + W <= len; i += W) Vt::store(out + i, vbody(i));
  for (; i < len; ++i) body(i);
}

template <class Vt>
void v_norm(const typename Vt::T* x, typename Vt::T* y, i64 len, const bn::Coef<typename Vt::T>& k,
            bool stream) {
  using T = typename Vt::T;
  using V = typename Vt::V;
  const V mh = Vt::set1(k.mean_hi), ml = Vt::set1(k.mean_lo), a = Vt::set1(k.a), b = Vt::set1(k.b);
  const T smh = k.mean_hi, sml = k.mean_lo, sa = k.a, sb = k.b;
  elementwise<Vt>(
      y, len, stream,
      [&](i64 i) {
        T d = (x[i] - smh) - sml;
        y[i] = keep(d * sa) + sb;
      },
      [&](i64 i) {
        V d = Vt::sub(Vt::sub(Vt::load(x + i), mh), ml);
        return Vt::add(keep(Vt::mul(d, a)), b);
      });
}

template <class Vt>
void v_dx(const typename Vt::T* x, const typename Vt::T* dy, typename Vt::T* dx, i64 len,
          const bn::Coef<typename Vt::T>& k, bool stream) {
  using T = typename Vt::T;
  using V = typename Vt::V;
  const V mh = Vt::set1(k.mean_hi), ml = Vt::set1(k.mean_lo), a = Vt::set1(k.a), b = Vt::set1(k.b),
          mdy = Vt::set1(k.mdy);
  const T smh = k.mean_hi, sml = k.mean_lo, sa = k.a, sb = k.b, smdy = k.mdy;
  elementwise<Vt>(
      dx, len, stream,
      [&](i64 i) {
        T g = dy[i] - smdy;
        T d = (x[i] - smh) - sml;
        dx[i] = keep(g * sa) - keep(d * sb);
      },
      [&](i64 i) {
        V g = Vt::sub(Vt::load(dy + i), mdy);
        V d = Vt::sub(Vt::sub(Vt::load(x + i), mh), ml);
        return Vt::sub(keep(Vt::mul(g, a)), keep(Vt::mul(d, b)));
      });
}

template <class Vt>
void v_scale(const typename Vt::T* dy, typename Vt::T* dx, i64 len, typename Vt::T a, bool stream) {
  using V = typename Vt::V;
  const V va = Vt::set1(a);
  elementwise<Vt>(
      dx, len, stream, [&](i64 i) { dx[i] = dy[i] * a; },
      [&](i64 i) { return Vt::mul(Vt::load(dy + i), va); });
}

// ---- column primitives: lane j of a vector is column j, so no reassociation at all.

// 4-row groups: ((t0 + t1) + (t2 + t3)) per column, as the scalar path.
template <class F>
inline __m256d group4(F&& term) {
  return _mm256_add_pd(_mm256_add_pd(term(0), term(1)), _mm256_add_pd(term(2), term(3)));
}
template <class F>
inline double group4s(F&& term) {
  return (term(0) + term(1)) + (term(2) + term(3));
}
inline void acc4(double* p, __m256d v) { _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), v)); }

template <typename T>
void v_col_add(const T* x, i64 ld, i64 rows, i64 w, double* acc) {
  if (rows == 4) {
    i64 j = 0;
    for (; j + 4 <= w; j += 4) acc4(acc + j, group4([&](int k) { return load4(x + k * ld + j); }));
    for (; j < w; ++j)
      acc[j] += group4s([&](int k) { return static_cast<double>(x[k * ld + j]); });
    return;
  }
  for (i64 r = 0; r < rows; ++r) {
    const T* xr = x + r * ld;
    i64 j = 0;
    for (; j + 4 <= w; j += 4) acc4(acc + j, load4(xr + j));
    for (; j < w; ++j) acc[j] += static_cast<double>(xr[j]);
  }
}

template <typename T>
void v_col_welford(const T* x, i64 ld, i64 rows, i64 w, double r1, double r2, double* mean,
                   double* m2) {
  const __m256d vr1 = _mm256_set1_pd(r1), vr2 = _mm256_set1_pd(r2), q = _mm256_set1_pd(0.25);
  i64 j = 0;
  if (rows == 4) {
    for (; j + 4 <= w; j += 4) {
      __m256d v[4];
      for (int k = 0; k < 4; ++k) v[k] = load4(x + k * ld + j);
      const __m256d mb =
          _mm256_mul_pd(_mm256_add_pd(_mm256_add_pd(v[0], v[1]), _mm256_add_pd(v[2], v[3])), q);
      __m256d e[4];
      for (int k = 0; k < 4; ++k) e[k] = _mm256_sub_pd(v[k], mb);
      const __m256d m2b =
          _mm256_add_pd(_mm256_add_pd(keep(_mm256_mul_pd(e[0], e[0])), keep(_mm256_mul_pd(e[1], e[1]))),
                        _mm256_add_pd(keep(_mm256_mul_pd(e[2], e[2])), keep(_mm256_mul_pd(e[3], e[3]))));
      const __m256d ma = _mm256_loadu_pd(mean + j);
      const __m256d delta = _mm256_sub_pd(mb, ma);
      _mm256_storeu_pd(mean + j, _mm256_add_pd(ma, keep(_mm256_mul_pd(delta, vr1))));
      const __m256d t = _mm256_add_pd(m2b, keep(_mm256_mul_pd(keep(_mm256_mul_pd(delta, delta)), vr2)));
      _mm256_storeu_pd(m2 + j, _mm256_add_pd(_mm256_loadu_pd(m2 + j), t));
    }
    for (; j < w; ++j) {
      double v[4];
      for (int k = 0; k < 4; ++k) v[k] = static_cast<double>(x[k * ld + j]);
      const double mb = ((v[0] + v[1]) + (v[2] + v[3])) * 0.25;
      double e[4];
      for (int k = 0; k < 4; ++k) e[k] = v[k] - mb;
      const double m2b =
          (keep(e[0] * e[0]) + keep(e[1] * e[1])) + (keep(e[2] * e[2]) + keep(e[3] * e[3]));
      const double delta = mb - mean[j];
      mean[j] = mean[j] + keep(delta * r1);
      m2[j] = m2[j] + (m2b + keep(keep(delta * delta) * r2));
    }
    return;
  }
  const __m256d zero = _mm256_setzero_pd();
  for (; j + 4 <= w; j += 4) {
    const __m256d ma = _mm256_loadu_pd(mean + j);
    const __m256d delta = _mm256_sub_pd(load4(x + j), ma);
    _mm256_storeu_pd(mean + j, _mm256_add_pd(ma, keep(_mm256_mul_pd(delta, vr1))));
    const __m256d t = _mm256_add_pd(zero, keep(_mm256_mul_pd(keep(_mm256_mul_pd(delta, delta)), vr2)));
    _mm256_storeu_pd(m2 + j, _mm256_add_pd(_mm256_loadu_pd(m2 + j), t));
  }
  for (; j < w; ++j) {
    const double delta = static_cast<double>(x[j]) - mean[j];
    mean[j] = mean[j] + keep(delta * r1);
    m2[j] = m2[j] + (0.0 + keep(keep(delta * delta) * r2));
  }
}

template <bool kRefine, typename T>
void col_m2_impl(const T* x, i64 ld, i64 rows, i64 w, const double* mean, double* q, double* r) {
  if (rows == 4) {
    i64 j = 0;
    for (; j + 4 <= w; j += 4) {
      const __m256d m = _mm256_loadu_pd(mean + j);
      __m256d d[4];
      for (int k = 0; k < 4; ++k) d[k] = _mm256_sub_pd(load4(x + k * ld + j), m);
      acc4(q + j, group4([&](int k) { return keep(_mm256_mul_pd(d[k], d[k])); }));
      if (kRefine) acc4(r + j, group4([&](int k) { return d[k]; }));
    }
    for (; j < w; ++j) {
      double d[4];
      for (int k = 0; k < 4; ++k) d[k] = static_cast<double>(x[k * ld + j]) - mean[j];
      q[j] += group4s([&](int k) { return keep(d[k] * d[k]); });
      if (kRefine) r[j] += group4s([&](int k) { return d[k]; });
    }
    return;
  }
  for (i64 k = 0; k < rows; ++k) {
    const T* xr = x + k * ld;
    i64 j = 0;
    for (; j + 4 <= w; j += 4) {
      __m256d d = _mm256_sub_pd(load4(xr + j), _mm256_loadu_pd(mean + j));
      acc4(q + j, keep(_mm256_mul_pd(d, d)));
      if (kRefine) acc4(r + j, d);
    }
    for (; j < w; ++j) {
      double d = static_cast<double>(xr[j]) - mean[j];
      q[j] += keep(d * d);
      if (kRefine) r[j] += d;
    }
  }
}

template <typename T>
void v_col_m2(const T* x, i64 ld, i64 rows, i64 w, const double* mean, double* q, double* r) {
  if (r)
    col_m2_impl<true>(x, ld, rows, w, mean, q, r);
  else
    col_m2_impl<false>(x, ld, rows, w, mean, q, r);
}

// kM2: also the squared deviations (training); otherwise only dy sums (eval).
template <bool kM2, typename T>
void col_dy_impl(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean, double* q,
                 double* g, double* cx) {
  if (rows == 4) {
    i64 j = 0;
    for (; j + 4 <= w; j += 4) {
      const __m256d m = _mm256_loadu_pd(mean + j);
      __m256d d[4], e[4];
      for (int k = 0; k < 4; ++k) {
        d[k] = _mm256_sub_pd(load4(x + k * ld + j), m);
        e[k] = load4(dy + k * ld + j);
      }
      if (kM2) acc4(q + j, group4([&](int k) { return keep(_mm256_mul_pd(d[k], d[k])); }));
      acc4(g + j, group4([&](int k) { return e[k]; }));
      acc4(cx + j, group4([&](int k) { return keep(_mm256_mul_pd(e[k], d[k])); }));
    }
    for (; j < w; ++j) {
      double d[4], e[4];
      for (int k = 0; k < 4; ++k) {
        d[k] = static_cast<double>(x[k * ld + j]) - mean[j];
        e[k] = static_cast<double>(dy[k * ld + j]);
      }
      if (kM2) q[j] += group4s([&](int k) { return keep(d[k] * d[k]); });
      g[j] += group4s([&](int k) { return e[k]; });
      cx[j] += group4s([&](int k) { return keep(e[k] * d[k]); });
    }
    return;
  }
  for (i64 k = 0; k < rows; ++k) {
    const T* xr = x + k * ld;
    const T* yr = dy + k * ld;
    i64 j = 0;
    for (; j + 4 <= w; j += 4) {
      __m256d d = _mm256_sub_pd(load4(xr + j), _mm256_loadu_pd(mean + j));
      __m256d e = load4(yr + j);
      if (kM2) acc4(q + j, keep(_mm256_mul_pd(d, d)));
      acc4(g + j, e);
      acc4(cx + j, keep(_mm256_mul_pd(e, d)));
    }
    for (; j < w; ++j) {
      double d = static_cast<double>(xr[j]) - mean[j];
      double e = static_cast<double>(yr[j]);
      if (kM2) q[j] += keep(d * d);
      g[j] += e;
      cx[j] += keep(e * d);
    }
  }
}

template <typename T>
void v_col_m2dy(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean, double* q,
                double* g, double* cx) {
  col_dy_impl<true>(x, dy, ld, rows, w, mean, q, g, cx);
}

template <typename T>
void v_col_dy(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean, double* g,
              double* cx) {
  col_dy_impl<false>(x, dy, ld, rows, w, mean, nullptr, g, cx);
}

template <class Vt>
void v_col_norm(const typename Vt::T* x, typename Vt::T* y, i64 w,
                const bn::ColCoef<typename Vt::T>& k, bool stream) {
  using T = typename Vt::T;
  using V = typename Vt::V;
  const T* __restrict mh = k.mean_hi;
  const T* __restrict ml = k.mean_lo;
  const T* __restrict a = k.a;
  const T* __restrict b = k.b;
  elementwise<Vt>(
      y, w, stream,
      [&](i64 i) {
        T d = (x[i] - mh[i]) - ml[i];
        y[i] = keep(d * a[i]) + b[i];
      },
      [&](i64 i) {
        V d = Vt::sub(Vt::sub(Vt::load(x + i), Vt::load(mh + i)), Vt::load(ml + i));
        return Vt::add(keep(Vt::mul(d, Vt::load(a + i))), Vt::load(b + i));
      });
}

template <class Vt>
void v_col_dx(const typename Vt::T* x, const typename Vt::T* dy, typename Vt::T* dx, i64 w,
              const bn::ColCoef<typename Vt::T>& k, bool stream) {
  using T = typename Vt::T;
  using V = typename Vt::V;
  const T* __restrict mh = k.mean_hi;
  const T* __restrict ml = k.mean_lo;
  const T* __restrict a = k.a;
  const T* __restrict b = k.b;
  const T* __restrict mdy = k.mdy;
  elementwise<Vt>(
      dx, w, stream,
      [&](i64 i) {
        T g = dy[i] - mdy[i];
        T d = (x[i] - mh[i]) - ml[i];
        dx[i] = keep(g * a[i]) - keep(d * b[i]);
      },
      [&](i64 i) {
        V g = Vt::sub(Vt::load(dy + i), Vt::load(mdy + i));
        V d = Vt::sub(Vt::sub(Vt::load(x + i), Vt::load(mh + i)), Vt::load(ml + i));
        return Vt::sub(keep(Vt::mul(g, Vt::load(a + i))), keep(Vt::mul(d, Vt::load(b + i))));
      });
}

template <class Vt>
void v_col_scale(const typename Vt::T* dy, typename Vt::T* dx, i64 w, const typename Vt::T* a,
                 bool stream) {
  elementwise<Vt>(
      dx, w, stream, [&](i64 i) { dx[i] = dy[i] * a[i]; },
      [&](i64 i) { return Vt::mul(Vt::load(dy + i), Vt::load(a + i)); });
}

template <class Vt>
void v_norm_runs(const typename Vt::T* x, typename Vt::T* y, i64 nruns, i64 S,
                 const bn::Coef<typename Vt::T>* coef, i64 c, i64 C) {
  using T = typename Vt::T;
  using V = typename Vt::V;
  constexpr int W = Vt::W;
  for (i64 r = 0; r < nruns; ++r) {
    const bn::Coef<T>& k = coef[c];
    if (++c == C) c = 0;
    const V mh = Vt::set1(k.mean_hi), ml = Vt::set1(k.mean_lo), a = Vt::set1(k.a),
            b = Vt::set1(k.b);
    const T* xr = x + r * S;
    T* yr = y + r * S;
    auto f = [&](i64 i) {
      V d = Vt::sub(Vt::sub(Vt::load(xr + i), mh), ml);
      Vt::store(yr + i, Vt::add(keep(Vt::mul(d, a)), b));
    };
    i64 i = 0;
    for (; i + W <= S; i += W) f(i);
    if (i == S) continue;
    if (r + 1 < nruns) {
      // the last partial vector reads into the next run (S >= W: it exists and is at
      // least one vector long) and spills into its first vector, stored after this one
      f(i);
    } else {
      const T smh = k.mean_hi, sml = k.mean_lo, sa = k.a, sb = k.b;
      for (; i < S; ++i) {
        T d = (xr[i] - smh) - sml;
        yr[i] = keep(d * sa) + sb;
      }
    }
  }
}

template <typename T>
void v_copy_out(T* dst, const T* src, i64 n, bool stream) {
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  const i64 bytes = n * static_cast<i64>(sizeof(T));
  const i64 head = static_cast<i64>((64 - (reinterpret_cast<std::uintptr_t>(d) & 63)) & 63);
  if (!stream || head + 64 > bytes) {
    std::memcpy(d, s, static_cast<std::size_t>(bytes));
    return;
  }
  std::memcpy(d, s, static_cast<std::size_t>(head));
  const i64 end = head + (bytes - head) / 64 * 64;
  for (i64 i = head; i < end; i += 64) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), u);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32), v);
  }
  std::memcpy(d + end, s + end, static_cast<std::size_t>(bytes - end));
}

void v_fence() { _mm_sfence(); }

template <typename T, class Vt>
bn::Ops<T> make_avx2_ops() {
  bn::Ops<T> o;
  o.sum = &v_sum<T>;
  o.m2 = &v_m2<T>;
  o.sq = &v_sq<T>;
  o.m2dy = &v_m2dy<T>;
  o.dy = &v_dy<T>;
  o.norm = &v_norm<Vt>;
  o.dx = &v_dx<Vt>;
  o.scale = &v_scale<Vt>;
  o.col_add = &v_col_add<T>;
  o.col_m2 = &v_col_m2<T>;
  o.col_welford = &v_col_welford<T>;
  o.col_m2dy = &v_col_m2dy<T>;
  o.col_dy = &v_col_dy<T>;
  o.col_norm = &v_col_norm<Vt>;
  o.col_dx = &v_col_dx<Vt>;
  o.col_scale = &v_col_scale<Vt>;
  o.norm_runs = &v_norm_runs<Vt>;
  o.copy_out = &v_copy_out<T>;
  o.fence = &v_fence;
  return o;
}

}  // namespace

namespace bn {
const Ops<float>& avx2_ops_f32() {
  static const Ops<float> o = make_avx2_ops<float, VF>();
  return o;
}
const Ops<double>& avx2_ops_f64() {
  static const Ops<double> o = make_avx2_ops<double, VD>();
  return o;
}
}  // namespace bn

}  // namespace pyconv
