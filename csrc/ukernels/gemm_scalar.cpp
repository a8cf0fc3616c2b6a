// Portable GEMM micro-kernel (to be written).
