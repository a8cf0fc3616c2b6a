// Winograd F(2x2,3x3) lowering of the convolution family (placeholder until it lands).
