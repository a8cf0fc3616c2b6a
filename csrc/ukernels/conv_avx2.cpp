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

// Lane mask for the first `n` (< 8) 32-bit lanes / (< 4) 64-bit lanes.
inline __m256i tail_mask32(i64 n) {
  alignas(32) static const int m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}
inline void store_first(float* p, __m256 v, i64 n) { _mm256_maskstore_ps(p, tail_mask32(n), v); }
inline void store_first(double* p, __m256d v, i64 n) {
  alignas(32) static const long long m[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
  _mm256_maskstore_pd(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 4 - n)), v);
}

inline __m256 load_first(const float* p, i64 n) { return _mm256_maskload_ps(p, tail_mask32(n)); }
inline __m256d load_first(const double* p, i64 n) {
  alignas(32) static const long long m[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
  return _mm256_maskload_pd(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 4 - n)));
}

// NA independent accumulators (one vector of output each), all taps: out = init + sum_t
// w[t] * buf[base + off[t]], taps in order.
template <typename S, int NA>
inline void corr_block(const typename S::T* const* base, typename S::T* const* out, const i64* cnt,
                       const i64* offs, const typename S::V* wts, int nt, typename S::V init,
                       bool accumulate) {
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[NA];
  for (int j = 0; j < NA; ++j)
    acc[j] = !accumulate ? init : (cnt[j] == L ? S::load(out[j]) : load_first(out[j], cnt[j]));
  for (int t = 0; t < nt; ++t) {
    const i64 o = offs[t];
    const V w = wts[t];
    for (int j = 0; j < NA; ++j) acc[j] = S::fma(w, S::load(base[j] + o), acc[j]);
  }
  for (int j = 0; j < NA; ++j) {
    if (cnt[j] == L)
      S::store(out[j], acc[j]);
    else
      store_first(out[j], acc[j], cnt[j]);
  }
}

// Stride-1-along-W correlation of a padded buffer: output row oh reads buffer rows from
// buf + oh*row_step; every tap t adds wts[t] * buf[... + offs[t] + ow]. The buffer must
// hold round_up(Wo, L) readable columns past every tap offset.
template <typename T>
void corr_plane(const T* buf, i64 row_step, i64 Ho, i64 Wo, const i64* offs, const T* w, int nt,
                T* out, T init, bool accumulate) {
  using S = typename Vec<T>::type;
  using V = typename S::V;
  constexpr int L = S::L;
  constexpr int kBlock = 8;
  V wts[kMaxRows];
  for (int t = 0; t < nt; ++t) wts[t] = S::set1(w[t]);
  const V vi = S::set1(init);
  const i64 nvr = (Wo + L - 1) / L, total = Ho * nvr;
  const T* base[kBlock];
  T* dst[kBlock];
  i64 cnt[kBlock];
  for (i64 it = 0; it < total; it += kBlock) {
    const int na = static_cast<int>(imin(kBlock, total - it));
    for (int j = 0; j < na; ++j) {
      const i64 item = it + j, oh = item / nvr, v = item % nvr;
      base[j] = buf + oh * row_step + v * L;
      dst[j] = out + oh * Wo + v * L;
      cnt[j] = imin(L, Wo - v * L);
    }
    switch (na) {
      case 8: corr_block<S, 8>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      case 7: corr_block<S, 7>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      case 6: corr_block<S, 6>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      case 5: corr_block<S, 5>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      case 4: corr_block<S, 4>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      case 3: corr_block<S, 3>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      case 2: corr_block<S, 2>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
      default: corr_block<S, 1>(base, dst, cnt, offs, wts, nt, vi, accumulate); break;
    }
  }
}

// Copies plane src (rows x cols) into buf (brows x bcols) at offset (r0, c0); the rest of
// buf is zero. r0/c0 may be negative (src rows/columns before the buffer are dropped).
template <typename T>
void pad_plane(const T* src, i64 rows, i64 cols, T* buf, i64 brows, i64 bcols, i64 r0, i64 c0) {
  for (i64 r = 0; r < brows; ++r) {
    T* br = buf + r * bcols;
    const i64 sr = r - r0;
    if (sr < 0 || sr >= rows) {
      for (i64 c = 0; c < bcols; ++c) br[c] = T(0);
      continue;
    }
    const T* s = src + sr * cols;
    const i64 a = imin(imax(c0, 0), bcols), b = imin(imax(c0 + cols, a), bcols);
    for (i64 c = 0; c < a; ++c) br[c] = T(0);
    for (i64 c = a; c < b; ++c) br[c] = s[c - c0];
    for (i64 c = b; c < bcols; ++c) br[c] = T(0);
  }
}

template <typename T>
void forward_plane(const ConvParams& p, const T* x, const T* wk, T bias, T* y, const i64* lo,
                   const i64* hi, T* buf) {
  using S = typename Vec<T>::type;
  constexpr int L = S::L;
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride, kW = p.w.kernel, kH = p.h.kernel;
  const bool vec = sw == 1 && buf != nullptr;
  if (!vec) {
    // Strided kernels: per element, taps in (kh, kw) order.
    for (i64 oh = 0; oh < p.h.out; ++oh)
      for (i64 ow = 0; ow < Wo; ++ow) {
        T s = bias;
        for (i64 kh = 0; kh < kH; ++kh) {
          const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
          if (ih < 0 || ih >= p.h.in) continue;
          const T* xr = x + ih * W;
          for (i64 kw = 0; kw < kW; ++kw)
            if (ow >= lo[kw] && ow < hi[kw])
              s += wk[kh * kW + kw] * xr[ow * sw + kw * p.w.dilation - p.w.pad_lo];
        }
        y[oh * Wo + ow] = s;
      }
    return;
  }
  // Stride 1 along W: copy the plane into a zero-padded buffer (dw_forward_buffer_elems),
  // so every output element, edges included, is a whole-vector multiply-add over all
  // taps (padding taps add w * 0).
  const i64 Wp = (Wo + L - 1) / L * L + (kW - 1) * p.w.dilation;
  const i64 Hp = (p.h.out - 1) * p.h.stride + (kH - 1) * p.h.dilation + 1;
  pad_plane(x, p.h.in, W, buf, Hp, Wp, p.h.pad_lo, p.w.pad_lo);
  i64 offs[kMaxRows];
  const i64 KK = kH * kW;
  for (i64 t0 = 0; t0 < KK; t0 += kMaxRows) {  // taps in chunks, in order
    const int nt = static_cast<int>(imin(kMaxRows, KK - t0));
    for (int t = 0; t < nt; ++t)
      offs[t] = (t0 + t) / kW * p.h.dilation * Wp + (t0 + t) % kW * p.w.dilation;
    corr_plane<T>(buf, p.h.stride * Wp, p.h.out, Wo, offs, wk + t0, nt, y, bias, t0 > 0);
  }
}

template <typename T>
void backward_input_plane(const ConvParams& p, const T* dy, const T* wk, T* dx, const i64* lo,
                          const i64* hi, T* buf) {
  using S = typename Vec<T>::type;
  constexpr int L = S::L;
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride, kW = p.w.kernel, kH = p.h.kernel;
  if (sw == 1 && p.h.stride == 1 && buf != nullptr) {
    // Stride 1: dx is the correlation of dy, zero-padded by (k-1)*d - pad_lo in front,
    // with the flipped kernel; accumulated into dx (zeroed by the caller).
    const i64 Wp = (imax(W, Wo) + L - 1) / L * L + (kW - 1) * p.w.dilation;
    const i64 Ah = (kH - 1) * p.h.dilation - p.h.pad_lo, Aw = (kW - 1) * p.w.dilation - p.w.pad_lo;
    const i64 Hp = p.h.in + (kH - 1) * p.h.dilation;
    pad_plane(dy, p.h.out, Wo, buf, Hp, Wp, Ah, Aw);
    i64 offs[kMaxRows];
    T wf[kMaxRows];
    const i64 KK = kH * kW;
    for (i64 t0 = 0; t0 < KK; t0 += kMaxRows) {
      const int nt = static_cast<int>(imin(kMaxRows, KK - t0));
      for (int t = 0; t < nt; ++t) {
        const i64 kh = (t0 + t) / kW, kw = (t0 + t) % kW;
        offs[t] = kh * p.h.dilation * Wp + kw * p.w.dilation;
        wf[t] = wk[(kH - 1 - kh) * kW + (kW - 1 - kw)];
      }
      corr_plane<T>(buf, Wp, p.h.in, W, offs, wf, nt, dx, T(0), true);
    }
    return;
  }
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    const T* dyr = dy + oh * Wo;
    for (i64 kh = 0; kh < kH; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      T* dxr = dx + ih * W;
      for (i64 kw = 0; kw < kW; ++kw) {
        const T wv = wk[kh * kW + kw];
        T* ds = dxr + kw * p.w.dilation - p.w.pad_lo;
        for (i64 ow = lo[kw]; ow < hi[kw]; ++ow) ds[ow * sw] += wv * dyr[ow];
      }
    }
  }
}

inline double hsum_acc(__m256 v) {
  __m256d a = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                            _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  return hsum(a);
}
inline double hsum_acc(__m256d v) { return hsum(v); }

template <typename T>
void backward_weight_plane(const ConvParams& p, const T* dy, const T* x, double* acc,
                           const i64* lo, const i64* hi, T* buf) {
  using S = typename Vec<T>::type;
  using V = typename S::V;
  constexpr int L = S::L;
  const i64 W = p.w.in, Wo = p.w.out, sw = p.w.stride, kW = p.w.kernel, kH = p.h.kernel;
  if (sw == 1 && buf != nullptr) {
    // dW[t] = sum over output pixels of dy * xpad(tap t): vector accumulators per tap
    // over the zero-padded plane, flushed into the double sums every few rows.
    const i64 Wp = (imax(W, Wo) + L - 1) / L * L + (kW - 1) * p.w.dilation;
    const i64 Hp = (p.h.out - 1) * p.h.stride + (kH - 1) * p.h.dilation + 1;
    pad_plane(x, p.h.in, W, buf, Hp, Wp, p.h.pad_lo, p.w.pad_lo);
    const i64 KK = kH * kW, nvr = (Wo + L - 1) / L;
    const i64 flush_rows = imax(1, 64 / nvr);
    constexpr int kTaps = 12;
    for (i64 t0 = 0; t0 < KK; t0 += kTaps) {
      const int nt = static_cast<int>(imin(kTaps, KK - t0));
      i64 offs[kTaps];
      for (int t = 0; t < nt; ++t)
        offs[t] = (t0 + t) / kW * p.h.dilation * Wp + (t0 + t) % kW * p.w.dilation;
      V a[kTaps];
      for (int t = 0; t < kTaps; ++t) a[t] = S::set1(T(0));
      for (i64 oh = 0; oh < p.h.out; ++oh) {
        const T* dyr = dy + oh * Wo;
        const T* br = buf + oh * p.h.stride * Wp;
        for (i64 v = 0; v < nvr; ++v) {
          const i64 ow = v * L;
          if (ow + L <= Wo) {
            const V g = S::load(dyr + ow);
            for (int t = 0; t < nt; ++t) a[t] = S::fma(g, S::load(br + offs[t] + ow), a[t]);
          } else {  // x past the output row stays out of the sums (0 * inf would be NaN)
            const V g = load_first(dyr + ow, Wo - ow);
            for (int t = 0; t < nt; ++t) a[t] = S::fma(g, load_first(br + offs[t] + ow, Wo - ow), a[t]);
          }
        }
        if ((oh + 1) % flush_rows == 0 || oh + 1 == p.h.out) {
          for (int t = 0; t < nt; ++t) {
            acc[t0 + t] += hsum_acc(a[t]);
            a[t] = S::set1(T(0));
          }
        }
      }
    }
    return;
  }
  for (i64 oh = 0; oh < p.h.out; ++oh) {
    const T* dyr = dy + oh * Wo;
    for (i64 kh = 0; kh < kH; ++kh) {
      const i64 ih = oh * p.h.stride + kh * p.h.dilation - p.h.pad_lo;
      if (ih < 0 || ih >= p.h.in) continue;
      const T* xr = x + ih * W;
      for (i64 kw = 0; kw < kW; ++kw) {
        const T* xs = xr + kw * p.w.dilation - p.w.pad_lo;
        double s = 0;
        for (i64 ow = lo[kw]; ow < hi[kw]; ++ow) s += double(dyr[ow]) * double(xs[ow * sw]);
        acc[kh * kW + kw] += s;
      }
    }
  }
}

}  // namespace

namespace avx2 {
template <typename T>
void dw_forward_plane(const ConvParams& p, const T* x, const T* wk, T bias, T* y,
                      const i64* kw_lo, const i64* kw_hi, T* buf) {
  forward_plane<T>(p, x, wk, bias, y, kw_lo, kw_hi, buf);
}
template <typename T>
void dw_backward_input_plane(const ConvParams& p, const T* dy, const T* wk, T* dx,
                             const i64* kw_lo, const i64* kw_hi, T* buf) {
  backward_input_plane<T>(p, dy, wk, dx, kw_lo, kw_hi, buf);
}
template <typename T>
void dw_backward_weight_plane(const ConvParams& p, const T* dy, const T* x, double* acc,
                              const i64* kw_lo, const i64* kw_hi, T* buf) {
  backward_weight_plane<T>(p, dy, x, acc, kw_lo, kw_hi, buf);
}
template void dw_forward_plane<float>(const ConvParams&, const float*, const float*, float, float*, const i64*, const i64*, float*);
template void dw_forward_plane<double>(const ConvParams&, const double*, const double*, double, double*, const i64*, const i64*, double*);
template void dw_backward_input_plane<float>(const ConvParams&, const float*, const float*, float*, const i64*, const i64*, float*);
template void dw_backward_input_plane<double>(const ConvParams&, const double*, const double*, double*, const i64*, const i64*, double*);
template void dw_backward_weight_plane<float>(const ConvParams&, const float*, const float*, double*, const i64*, const i64*, float*);
template void dw_backward_weight_plane<double>(const ConvParams&, const double*, const double*, double*, const i64*, const i64*, double*);
}  // namespace avx2

}  // namespace pyconv
