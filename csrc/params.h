// Parameter records shared by the kernels and the bindings, plus the overflow-checked
// size arithmetic every entry point uses before it allocates.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyconv {

using i64 = std::int64_t;

// a * b, or std::overflow_error naming `what` (pybind11 turns it into OverflowError).
inline i64 checked_mul(i64 a, i64 b, const char* what) {
  i64 r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw std::overflow_error(std::string(what) + ": size product overflows int64 (" +
                              std::to_string(a) + " * " + std::to_string(b) + ")");
  return r;
}

inline i64 checked_add(i64 a, i64 b, const char* what) {
  i64 r;
  if (__builtin_add_overflow(a, b, &r))
    throw std::overflow_error(std::string(what) + ": size sum overflows int64 (" +
                              std::to_string(a) + " + " + std::to_string(b) + ")");
  return r;
}

// ceil(a / b) for b > 0 and a > INT64_MIN, without intermediate overflow (a stride of
// 2**63-1 is valid); round_up(a, b) = b * ceil(a / b) for sizes a >= 0.
inline i64 ceil_div(i64 a, i64 b) { return a >= 0 ? a / b + (a % b != 0) : -((-a) / b); }
inline i64 round_up(i64 a, i64 b) { return ceil_div(a, b) * b; }

// One spatial dimension of a sliding-window op. 1D ops use the W dimension with H = 1.
struct Window {
  i64 in = 1;        // input extent
  i64 kernel = 1;    // F
  i64 stride = 1;    // S
  i64 pad_lo = 0;    // P_lo
  i64 pad_hi = 0;    // P_hi
  i64 dilation = 1;  // D
  i64 out = 1;       // floor((in + P_lo + P_hi - D*(F-1) - 1) / S) + 1 (pooling may use ceil_mode)
};

// 2D convolution, NCHW input, weight (C_out, C_in/groups, kH, kW).
struct ConvParams {
  i64 n = 0;       // batch
  i64 c_in = 0;
  i64 c_out = 0;
  i64 groups = 1;
  Window h, w;
  i64 cin_g() const { return c_in / groups; }
  i64 cout_g() const { return c_out / groups; }
};

// 2D max-pool over (N, C, H, W); indices are flat h*W_in + w within each plane.
struct PoolParams {
  i64 n = 0;
  i64 c = 0;
  Window h, w;
  bool ceil_mode = false;
};

// Batch norm over (N, C, S): statistics per channel over N and the flattened spatial S.
struct BatchNormParams {
  i64 n = 0;
  i64 c = 0;
  i64 s = 1;       // product of the spatial extents (1 for (N, C) input)
  double eps = 1e-5;
  double momentum = 0.1;
};

}  // namespace pyconv
