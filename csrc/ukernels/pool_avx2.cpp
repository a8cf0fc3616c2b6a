// AVX2 + FMA kernels for pool (compiled with -mavx2 -mfma; reached only through the run-time dispatcher).
