// AVX2 + FMA kernels for conv (compiled with -mavx2 -mfma; reached only through the run-time dispatcher).
