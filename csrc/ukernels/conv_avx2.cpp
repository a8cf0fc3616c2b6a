// AVX2 + FMA kernels for conv (compiled with -mavx2 -mfma; reached only through the
// run-time dispatcher in conv.cpp). Depthwise planes, vectorised along W: each output
// element sums bias, then the taps in (kh, kw) order, as the scalar path does (here with
// fused multiply-adds, so the two paths agree to rounding, and exactly on integer data).
#include <immintrin.h>

#include "conv.h"

namespace pyconv {
namespace {

// Vector traits: float -> 8 lanes, double -> 4 lanes.
struct VF {
  using T = float;
  using V = __m256;
  static constexpr int L = 8;
  static V set1(T a) { return _mm256_set1_ps(a); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // Adds the products a*b (8 lanes) into two 4-lane double accumulators.
  static void dot_acc(const T* a, const T* b, __m256d& s0, __m256d& s1) {
    __m256 va = _mm256_loadu_ps(a), vb = _mm256_loadu_ps(b);
    s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(va)),
                         _mm256_cvtps_pd(_mm256_castps256_ps128(vb)), s0);
    s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)),
                         _mm256_cvtps_pd(_mm256_extractf128_ps(vb, 1)), s1);
  }
};
struct VD {
  using T = double;
  using V = __m256d;
  static constexpr int L = 4;
  static V set1(T a) { return _mm256_set1_pd(a); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static void dot_acc(const T* a, const T* b, __m256d& s0, __m256d& s1) {
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a), _mm256_loadu_pd(b), s0);
    s1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + 4), _mm256_loadu_pd(b + 4), s1);
  }
};
template <typename T> struct Vec;
template <> struct Vec<float> { using type = VF; };
template <> struct Vec<double> { using type = VD; };

inline double hsum(__m256d v) {
  __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  lo = _mm_add_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

// Local helpers instead of std::min/max so no template instantiated with AVX2 flags can
// be shared with the baseline objects.
inline i64 imin(i64 a, i64 b) { return a < b ? a : b; }
inline i64 imax(i64 a, i64 b) { return a < b ? b : a; }

constexpr int kMaxRows = 64;  // taps kept per output row in the register-blocked path

template <typename T>
void forward_plane(const ConvParams& p, const T* x, const T* wk, T bias, T* y, const i64* lo,
                   const i64* hi) {
  using S = typename Vec<T>::type;
  using V = typename S::V;
  constexpr int L = S::L;
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride, kW = p.w.kernel, kH = p.h.kernel;
  // Columns in which every tap kw is inside the input.
  i64 owA = 0, owB = Wo;
  for (i64 kw = 0; kw < kW; ++kw) {
    owA = imax(owA, lo[kw]);
    owB = imin(owB, hi[kw]);
  }
  if (owB < owA) owB = owA;
  const bool vec = sw == 1 && kH * kW <= kMaxRows;
  const T* rows[kMaxRows];
  const T* wts[kMaxRows];
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    T* yr = y + oh * Wo;
    // scalar columns (edges, strided case): same tap order as the vector ones
    auto column = [&](i64 ow) {
      T s = bias;
      for (i64 kh = 0; kh < kH; ++kh) {
        const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
        if (ih < 0 || ih >= p.h.in) continue;
        const T* xr = x + ih * W;
        for (i64 kw = 0; kw < kW; ++kw)
          if (ow >= lo[kw] && ow < hi[kw])
            s += wk[kh * kW + kw] * xr[ow * sw + kw * p.w.dilation - p.w.pad_lo];
      }
      yr[ow] = s;
    };
    if (!vec) {
      for (i64 ow = 0; ow < Wo; ++ow) column(ow);
      continue;
    }
    int nt = 0;
    for (i64 kh = 0; kh < kH; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      for (i64 kw = 0; kw < kW; ++kw) {
        rows[nt] = x + ih * W + kw * p.w.dilation - p.w.pad_lo;
        wts[nt] = wk + kh * kW + kw;
        ++nt;
      }
    }
    for (i64 ow = 0; ow < owA; ++ow) column(ow);
    const V vb = S::set1(bias);
    i64 ow = owA;
    for (; ow + 4 * L <= owB; ow += 4 * L) {
      V a0 = vb, a1 = vb, a2 = vb, a3 = vb;
      for (int t = 0; t < nt; ++t) {
        const V wv = S::set1(*wts[t]);
        const T* s = rows[t] + ow;
        a0 = S::fma(wv, S::load(s), a0);
        a1 = S::fma(wv, S::load(s + L), a1);
        a2 = S::fma(wv, S::load(s + 2 * L), a2);
        a3 = S::fma(wv, S::load(s + 3 * L), a3);
      }
      S::store(yr + ow, a0);
      S::store(yr + ow + L, a1);
      S::store(yr + ow + 2 * L, a2);
      S::store(yr + ow + 3 * L, a3);
    }
    for (; ow + L <= owB; ow += L) {
      V a0 = vb;
      for (int t = 0; t < nt; ++t) a0 = S::fma(S::set1(*wts[t]), S::load(rows[t] + ow), a0);
      S::store(yr + ow, a0);
    }
    for (; ow < Wo; ++ow) column(ow);
  }
}

template <typename T>
void backward_input_plane(const ConvParams& p, const T* dy, const T* wk, T* dx, const i64* lo,
                          const i64* hi) {
  using S = typename Vec<T>::type;
  constexpr int L = S::L;
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride, kW = p.w.kernel;
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    const T* dyr = dy + oh * Wo;
    for (i64 kh = 0; kh < p.h.kernel; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      T* dxr = dx + ih * W;
      for (i64 kw = 0; kw < kW; ++kw) {
        const T wv = wk[kh * kW + kw];
        T* ds = dxr + kw * p.w.dilation - p.w.pad_lo;
        i64 ow = lo[kw];
        if (sw == 1) {
          const auto vw = S::set1(wv);
          for (; ow + L <= hi[kw]; ow += L)
            S::store(ds + ow, S::fma(vw, S::load(dyr + ow), S::load(ds + ow)));
          for (; ow < hi[kw]; ++ow) ds[ow] += wv * dyr[ow];
        } else {
          for (; ow < hi[kw]; ++ow) ds[ow * sw] += wv * dyr[ow];
        }
      }
    }
  }
}

template <typename T>
void backward_weight_plane(const ConvParams& p, const T* dy, const T* x, double* acc,
                           const i64* lo, const i64* hi) {
  using S = typename Vec<T>::type;
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride, kW = p.w.kernel;
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    const T* dyr = dy + oh * Wo;
    for (i64 kh = 0; kh < p.h.kernel; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      const T* xr = x + ih * W;
      for (i64 kw = 0; kw < kW; ++kw) {
        const T* xs = xr + kw * p.w.dilation - p.w.pad_lo;
        double s = 0;
        i64 ow = lo[kw];
        if (sw == 1) {
          __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
          // 8 elements per dot_acc in both types
          for (; ow + 8 <= hi[kw]; ow += 8) S::dot_acc(dyr + ow, xs + ow, s0, s1);
          s = hsum(_mm256_add_pd(s0, s1));
          for (; ow < hi[kw]; ++ow) s += double(dyr[ow]) * double(xs[ow]);
        } else {
          for (; ow < hi[kw]; ++ow) s += double(dyr[ow]) * double(xs[ow * sw]);
        }
        acc[kh * kW + kw] += s;
      }
    }
  }
}

}  // namespace

namespace avx2 {
template <typename T>
void dw_forward_plane(const ConvParams& p, const T* x, const T* wk, T bias, T* y,
                      const i64* kw_lo, const i64* kw_hi) {
  forward_plane<T>(p, x, wk, bias, y, kw_lo, kw_hi);
}
template <typename T>
void dw_backward_input_plane(const ConvParams& p, const T* dy, const T* wk, T* dx,
                             const i64* kw_lo, const i64* kw_hi) {
  backward_input_plane<T>(p, dy, wk, dx, kw_lo, kw_hi);
}
template <typename T>
void dw_backward_weight_plane(const ConvParams& p, const T* dy, const T* x, double* acc,
                              const i64* kw_lo, const i64* kw_hi) {
  backward_weight_plane<T>(p, dy, x, acc, kw_lo, kw_hi);
}
template void dw_forward_plane<float>(const ConvParams&, const float*, const float*, float, float*, const i64*, const i64*);
template void dw_forward_plane<double>(const ConvParams&, const double*, const double*, double, double*, const i64*, const i64*);
template void dw_backward_input_plane<float>(const ConvParams&, const float*, const float*, float*, const i64*, const i64*);
template void dw_backward_input_plane<double>(const ConvParams&, const double*, const double*, double*, const i64*, const i64*);
template void dw_backward_weight_plane<float>(const ConvParams&, const float*, const float*, double*, const i64*, const i64*);
template void dw_backward_weight_plane<double>(const ConvParams&, const double*, const double*, double*, const i64*, const i64*);
}  // namespace avx2

}  // namespace pyconv
