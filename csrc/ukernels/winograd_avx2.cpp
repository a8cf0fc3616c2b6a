// Winograd F(2x2,3x3) tile transforms compiled with the AVX2 flags: the loops over
// tiles in winograd_kernels.h vectorise; same operations in the same order as the
// portable copy (csrc/conv_winograd.cpp), so the results are bitwise identical.
#include "../conv.h"
#include "winograd_kernels.h"

namespace pyconv {
namespace wino_avx2 {

void input_rows_f32(const float* const* rows, i64 len, float* out, i64 ps) { wino_input_rows(rows, len, out, ps); }
void input_rows_f64(const double* const* rows, i64 len, double* out, i64 ps) { wino_input_rows(rows, len, out, ps); }
void output_rows_f32(const float* m, i64 ps, i64 len, float bias, float* y0, float* y1) {
  wino_output_rows(m, ps, len, bias, y0, y1);
}
void output_rows_f64(const double* m, i64 ps, i64 len, double bias, double* y0, double* y1) {
  wino_output_rows(m, ps, len, bias, y0, y1);
}

}  // namespace wino_avx2
}  // namespace pyconv
