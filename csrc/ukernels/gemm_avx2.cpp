// AVX2 + FMA GEMM micro-kernel (to be written). Compiled with -mavx2 -mfma.
