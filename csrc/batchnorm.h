// Batch normalisation over (N, C, S): statistics per channel over N and the flattened
// spatial extent S, with double accumulators and a two-pass / Chan scheme (never
// E[x^2] - E[x]^2).
//
// Structure: the per-ISA files provide the run primitives below (a "run" is a contiguous
// stretch of one channel inside one sample); batchnorm.cpp owns the channel-level
// algorithms (blocking, threading, merging) and calls the primitives through a table.
//
// Numerical contract shared by every ISA (so the scalar and AVX2 paths agree bitwise):
// - a run reduction accumulates element i into lane (i mod 16) in double, in order,
//   the tail continuing the lane pattern; lanes combine as
//   t[l] = (a[l] + a[4+l]) + (a[8+l] + a[12+l]),  result = (t[0] + t[2]) + (t[1] + t[3]);
// - products are never fused with the following addition (no FMA contraction);
// - normalise:   y  = ((x - mean_hi) - mean_lo) * a + b               (in T)
// - grad input:  dx = (dy - mdy) * a - ((x - mean_hi) - mean_lo) * p  (in T)
//   where mean_hi + mean_lo is the double mean split into two T values (so a constant
//   channel gives exactly b).
#pragma once
#include "cpu.h"
#include "params.h"

namespace pyconv {
namespace bn {

// Per-element coefficients of one channel (see the contract above).
template <typename T>
struct Coef {
  T mean_hi, mean_lo;  // the mean as an unevaluated sum hi + lo
  T a;                 // forward: invstd * weight; backward: weight * invstd
  T b;                 // forward: bias; backward: projection coefficient p
  T mdy;               // backward: mean of dy (0 in eval)
};

// Per-column coefficient rows (column j of a row piece has its channel's coefficients).
template <typename T>
struct ColCoef {
  const T* mean_hi;
  const T* mean_lo;
  const T* a;
  const T* b;
  const T* mdy;
};

template <typename T>
struct Ops {
  // sum of x[0..len)
  double (*sum)(const T* x, i64 len);
  // out = {sum (x - mean)^2, sum (x - mean)}; the second refines the mean
  void (*m2)(const T* x, i64 len, double mean, double* out);
  // sum (x - mean)^2 (m2 without the refinement sum)
  double (*sq)(const T* x, i64 len, double mean);
  // out = {sum (x - mean)^2, sum dy, sum dy * (x - mean)}
  void (*m2dy)(const T* x, const T* dy, i64 len, double mean, double* out);
  // out = {sum dy, sum dy * (x - mean)}
  void (*dy)(const T* x, const T* dy, i64 len, double mean, double* out);
  // y = ((x - mean_hi) - mean_lo) * a + b; `stream` asks for non-temporal stores
  void (*norm)(const T* x, T* y, i64 len, const Coef<T>& k, bool stream);
  // dx = (dy - mdy) * a - ((x - mean_hi) - mean_lo) * b
  void (*dx)(const T* x, const T* dy, T* dx, i64 len, const Coef<T>& k, bool stream);
  // dx = dy * a
  void (*scale)(const T* dy, T* dx, i64 len, T a, bool stream);
  // Column primitives, for short runs (small S): a row piece of w elements is w columns,
  // each with its own double accumulators. The reductions take `rows` consecutive row
  // pieces (ld elements apart): 4 rows enter each accumulator as one term
  // ((t0 + t1) + (t2 + t3)); any other count enters row by row. acc[j] += x[j]
  void (*col_add)(const T* x, i64 ld, i64 rows, i64 w, double* acc);
  // d = x[j] - mean[j]: q[j] += d * d, r[j] += d (r may be null: skipped)
  void (*col_m2)(const T* x, i64 ld, i64 rows, i64 w, const double* mean, double* q, double* r);
  // d = x[j] - mean[j]: q[j] += d * d, g[j] += dy[j], cx[j] += dy[j] * d
  void (*col_m2dy)(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean,
                   double* q, double* g, double* cx);
  // d = x[j] - mean[j]: g[j] += dy[j], cx[j] += dy[j] * d
  void (*col_dy)(const T* x, const T* dy, i64 ld, i64 rows, i64 w, const double* mean, double* g,
                 double* cx);
  // One-pass column statistics (Chan's update with groups of rows): the `rows` row
  // pieces (4, or 1) form a group b of count g = rows; for each column, with d = 4-row
  // group mean ((x0 + x1) + (x2 + x3)) * 0.25 (or x0) and m2b = (e0^2 + e1^2) + (e2^2 + e3^2)
  // (e_i = x_i - mean_b; 0 for one row):
  //   delta = mean_b - mean[j];  mean[j] += delta * r1;  m2[j] += m2b + (delta * delta) * r2
  // where the caller passes r1 = g / (n_a + g) and r2 = n_a * r1 (n_a rows merged before).
  void (*col_welford)(const T* x, i64 ld, i64 rows, i64 w, double r1, double r2, double* mean,
                      double* m2);
  // the element-wise kernels above with per-column coefficients
  void (*col_norm)(const T* x, T* y, i64 w, const ColCoef<T>& k, bool stream);
  void (*col_dx)(const T* x, const T* dy, T* dx, i64 w, const ColCoef<T>& k, bool stream);
  void (*col_scale)(const T* dy, T* dx, i64 w, const T* a, bool stream);
  // Eval forward over consecutive runs: run r in [0, nruns) normalises x[r*S, (r+1)*S)
  // into y[r*S, ...) with coef[(c + r) mod C] (c < C), as norm does. Requires S >= 8;
  // y is a staging buffer with room for 8 elements past nruns*S (a run's last vector
  // may spill there or into the next run, which then overwrites it); x is read only
  // inside [0, nruns*S).
  void (*norm_runs)(const T* x, T* y, i64 nruns, i64 S, const Coef<T>* coef, i64 c, i64 C);
  // dst[0, n) = src[0, n); with `stream`, the whole 64-byte lines of dst by non-temporal
  // stores (src has dst's alignment modulo 64 for full speed; any alignment is correct)
  void (*copy_out)(T* dst, const T* src, i64 n, bool stream);
  // orders earlier non-temporal stores before later ordinary ones (end of a unit)
  void (*fence)();
};

// Tables per ISA. The AVX2 ones live in ukernels/batchnorm_avx2.cpp and may only be
// used when active_isa() says the CPU runs AVX2 + FMA.
const Ops<float>& scalar_ops_f32();
const Ops<double>& scalar_ops_f64();
const Ops<float>& avx2_ops_f32();
const Ops<double>& avx2_ops_f64();

}  // namespace bn

// Forward over x (N, C, S) C-contiguous into y (same shape).
// training: statistics from x; batch_mean[c] and batch_m2[c] (sum of squared deviations,
// count N*S) are written for the running-stat update done by the caller.
// eval: mean_in / var_in (length C) are the running statistics.
// weight / bias may be null (1 and 0). All per-channel vectors are double.
// Requires (checked by the caller): training => N*S >= 2; eps finite >= 0.
template <typename T>
void batchnorm_forward(const T* x, T* y, const BatchNormParams& p, bool training,
                       const double* mean_in, const double* var_in, const double* weight,
                       const double* bias, double* batch_mean, double* batch_m2);

// Backward: dx (N, C, S) and, when grad_weight / grad_bias are non-null, their (C,)
// values in double. eval: mean_in / var_in are the running statistics. training:
// statistics recomputed from x, or, when invstd_in is non-null, the saved batch mean
// (mean_in) and inverse standard deviation (invstd_in) of the forward pass.
template <typename T>
void batchnorm_backward(const T* dy, const T* x, T* dx, const BatchNormParams& p,
                        bool training, const double* mean_in, const double* var_in,
                        const double* invstd_in, const double* weight, double* grad_weight,
                        double* grad_bias);

}  // namespace pyconv
