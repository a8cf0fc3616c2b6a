// Winograd F(2x2,3x3) tile transforms compiled with the AVX2 flags: the loops over
// tiles in winograd_kernels.h vectorise; same operations in the same order as the
// portable copy (csrc/conv_winograd.cpp), so the results are bitwise identical.
#include "../conv.h"
#include "winograd_kernels.h"

namespace pyconv {
namespace wino_avx2 {

PYCONV_WINO_ROW_KERNELS

}  // namespace wino_avx2
}  // namespace pyconv
