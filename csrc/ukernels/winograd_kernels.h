// Winograd F(2x2,3x3) tile transforms, written once and compiled three times: into
// csrc/conv_winograd.cpp (portable), csrc/ukernels/winograd_avx2.cpp and
// winograd_avx512.cpp (with their ISA flags, where the compiler vectorises the loops over
// tiles). Include it inside a namespace distinct per ISA; everything here has internal
// linkage, so the three copies never merge.
//
// Only additions and subtractions, in the same order in every copy (no multiply exists to
// contract into an FMA), so the three ISAs give bitwise identical transforms.
//
//   B^T = [1  0 -1  0]      A^T = [1  1  1  0]
//         [0  1  1  0]            [0  1 -1 -1]
//         [0 -1  1  0]
//         [0  1  0 -1]
#pragma once
#include <cstdint>

namespace {

// Input transform of `len` horizontally adjacent tiles: rows[r][k] (k < 2*len + 2) is
// input row r of the tile row, already zero-padded, starting at the first tile's left
// column. Writes V(p = 4*r + c, tile j) = (B^T d_j B)[r][c] to out[p*ps + j].
template <typename T>
inline void wino_input_rows(const T* const* rows, std::int64_t len, T* __restrict out, std::int64_t ps) {
  constexpr std::int64_t kChunk = 64;  // tiles per pass: the row-transformed values stay in L1
  T a[4][4][kChunk];
  for (std::int64_t j0 = 0; j0 < len; j0 += kChunk) {
    const std::int64_t n = len - j0 < kChunk ? len - j0 : kChunk;
    for (int r = 0; r < 4; ++r) {
      const T* __restrict s = rows[r] + 2 * j0;
      T* __restrict a0 = a[r][0];
      T* __restrict a1 = a[r][1];
      T* __restrict a2 = a[r][2];
      T* __restrict a3 = a[r][3];
      for (std::int64_t j = 0; j < n; ++j) {
        const T d0 = s[2 * j], d1 = s[2 * j + 1], d2 = s[2 * j + 2], d3 = s[2 * j + 3];
        a0[j] = d0 - d2;
        a1[j] = d1 + d2;
        a2[j] = d2 - d1;
        a3[j] = d1 - d3;
      }
    }
    for (int c = 0; c < 4; ++c) {
      const T* __restrict b0 = a[0][c];
      const T* __restrict b1 = a[1][c];
      const T* __restrict b2 = a[2][c];
      const T* __restrict b3 = a[3][c];
      T* __restrict o0 = out + (0 + c) * ps + j0;
      T* __restrict o1 = out + (4 + c) * ps + j0;
      T* __restrict o2 = out + (8 + c) * ps + j0;
      T* __restrict o3 = out + (12 + c) * ps + j0;
      for (std::int64_t j = 0; j < n; ++j) {
        o0[j] = b0[j] - b2[j];
        o1[j] = b1[j] + b2[j];
        o2[j] = b2[j] - b1[j];
        o3[j] = b1[j] - b3[j];
      }
    }
  }
}

// Output transform of `len` adjacent tiles: m[p*ps + j] is M(p, tile j); writes the 2x2
// outputs Y = A^T M A + bias of tile j to y0[2j], y0[2j+1] (top row) and y1[2j], y1[2j+1].
template <typename T>
inline void wino_output_rows(const T* m, std::int64_t ps, std::int64_t len, T bias, T* __restrict y0,
                             T* __restrict y1) {
  constexpr std::int64_t kChunk = 64;
  T s0[4][kChunk], s1[4][kChunk];
  for (std::int64_t j0 = 0; j0 < len; j0 += kChunk) {
    const std::int64_t n = len - j0 < kChunk ? len - j0 : kChunk;
    for (int r = 0; r < 4; ++r) {
      const T* __restrict m0 = m + (4 * r + 0) * ps + j0;
      const T* __restrict m1 = m + (4 * r + 1) * ps + j0;
      const T* __restrict m2 = m + (4 * r + 2) * ps + j0;
      const T* __restrict m3 = m + (4 * r + 3) * ps + j0;
      T* __restrict t0 = s0[r];
      T* __restrict t1 = s1[r];
      for (std::int64_t j = 0; j < n; ++j) {
        t0[j] = (m0[j] + m1[j]) + m2[j];
        t1[j] = (m1[j] - m2[j]) - m3[j];
      }
    }
    T* __restrict u0 = y0 + 2 * j0;
    T* __restrict u1 = y1 + 2 * j0;
    for (std::int64_t j = 0; j < n; ++j) {
      u0[2 * j] = ((s0[0][j] + s0[1][j]) + s0[2][j]) + bias;
      u0[2 * j + 1] = ((s1[0][j] + s1[1][j]) + s1[2][j]) + bias;
      u1[2 * j] = ((s0[1][j] - s0[2][j]) - s0[3][j]) + bias;
      u1[2 * j + 1] = ((s1[1][j] - s1[2][j]) - s1[3][j]) + bias;
    }
  }
}

// Grad weight's last step dW = G^T X G for `len` consecutive input channels: X(p, ci) =
// x[p*ps + ci]; writes the 3x3 kernel of channel ci to out[9*ci .. 9*ci + 8].
// Multiplications by 1/2 are exact, so a contraction into FMAs changes nothing.
template <typename T>
inline void wino_weight_out_rows(const T* x, std::int64_t ps, std::int64_t len, T* __restrict out) {
  constexpr std::int64_t kChunk = 64;
  T o[9][kChunk];
  const T h = T(0.5);
  for (std::int64_t j0 = 0; j0 < len; j0 += kChunk) {
    const std::int64_t n = len - j0 < kChunk ? len - j0 : kChunk;
    const T* __restrict s = x + j0;
    for (std::int64_t j = 0; j < n; ++j) {
      T t[3][4];  // G^T X
      for (int c = 0; c < 4; ++c) {
        const T x0 = s[c * ps + j], x1 = s[(4 + c) * ps + j], x2 = s[(8 + c) * ps + j], x3 = s[(12 + c) * ps + j];
        t[0][c] = x0 + (x1 + x2) * h;
        t[1][c] = (x1 - x2) * h;
        t[2][c] = (x1 + x2) * h + x3;
      }
      for (int r = 0; r < 3; ++r) {  // (G^T X) G
        o[3 * r + 0][j] = t[r][0] + (t[r][1] + t[r][2]) * h;
        o[3 * r + 1][j] = (t[r][1] - t[r][2]) * h;
        o[3 * r + 2][j] = (t[r][1] + t[r][2]) * h + t[r][3];
      }
    }
    T* __restrict d = out + 9 * j0;
    for (std::int64_t j = 0; j < n; ++j)
      for (int r = 0; r < 9; ++r) d[9 * j + r] = o[r][j];
  }
}

}  // namespace

// The row entry points every ISA file defines (inside its own namespace) around the
// templates above, so each is compiled with that file's flags.
#define PYCONV_WINO_ROW_KERNELS                                                                  \
  void input_rows_f32(const float* const* rows, std::int64_t len, float* out, std::int64_t ps) { \
    wino_input_rows(rows, len, out, ps);                                                         \
  }                                                                                              \
  void input_rows_f64(const double* const* rows, std::int64_t len, double* out, std::int64_t ps) { \
    wino_input_rows(rows, len, out, ps);                                                         \
  }                                                                                              \
  void output_rows_f32(const float* m, std::int64_t ps, std::int64_t len, float bias, float* y0,  \
                       float* y1) {                                                              \
    wino_output_rows(m, ps, len, bias, y0, y1);                                                  \
  }                                                                                              \
  void output_rows_f64(const double* m, std::int64_t ps, std::int64_t len, double bias, double* y0, \
                       double* y1) {                                                             \
    wino_output_rows(m, ps, len, bias, y0, y1);                                                  \
  }                                                                                              \
  void weight_out_rows_f32(const float* x, std::int64_t ps, std::int64_t len, float* out) {       \
    wino_weight_out_rows(x, ps, len, out);                                                       \
  }                                                                                              \
  void weight_out_rows_f64(const double* x, std::int64_t ps, std::int64_t len, double* out) {     \
    wino_weight_out_rows(x, ps, len, out);                                                       \
  }
