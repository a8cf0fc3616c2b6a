// FP32 FMA peak loop shared by the per-ISA GEMM files. Each instantiates it with a traits
// type of its vector width declared in its own anonymous namespace, so every instantiation
// has internal linkage and is compiled with that file's ISA flags alone.
//
// Traits: V (vector type), kLanes, set1(float), fma(a, b, c) = a * b + c, add(a, b),
// store(float*, V) (aligned to 64 bytes).
//
// 12 independent FMA chains per thread hide the FMA latency on every x86 core this
// project targets (4-cycle latency x 2 pipes = 8 chains needed); the result counts
// 2 FLOP per lane per FMA, summed over all threads, divided by the wall time.
#pragma once

#include <chrono>

namespace pyconv {
namespace gemm_detail {

template <class Tr>
double fma_peak_loop(int threads, double seconds) {
  using V = typename Tr::V;
  using clock = std::chrono::steady_clock;
  double total_flops = 0;
  auto t0 = clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total_flops)
  {
    V x[12];
    for (int i = 0; i < 12; ++i) x[i] = Tr::set1(1.0f + 0.01f * static_cast<float>(i));
    const V mul = Tr::set1(0.999999f), add = Tr::set1(1e-6f);
    V x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5];
    V x6 = x[6], x7 = x[7], x8 = x[8], x9 = x[9], x10 = x[10], x11 = x[11];
    long long iters = 0;
    auto start = clock::now();
    for (;;) {
      for (int r = 0; r < 16384; ++r) {
        x0 = Tr::fma(x0, mul, add); x1 = Tr::fma(x1, mul, add);
        x2 = Tr::fma(x2, mul, add); x3 = Tr::fma(x3, mul, add);
        x4 = Tr::fma(x4, mul, add); x5 = Tr::fma(x5, mul, add);
        x6 = Tr::fma(x6, mul, add); x7 = Tr::fma(x7, mul, add);
        x8 = Tr::fma(x8, mul, add); x9 = Tr::fma(x9, mul, add);
        x10 = Tr::fma(x10, mul, add); x11 = Tr::fma(x11, mul, add);
        // Opaque to the optimiser: the chains must really run every iteration.
        __asm__ volatile("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5));
        __asm__ volatile("" : "+v"(x6), "+v"(x7), "+v"(x8), "+v"(x9), "+v"(x10), "+v"(x11));
      }
      iters += 16384;
      if (std::chrono::duration<double>(clock::now() - start).count() >= seconds) break;
    }
    V s = Tr::add(Tr::add(Tr::add(x0, x1), Tr::add(x2, x3)), Tr::add(Tr::add(x4, x5), Tr::add(x6, x7)));
    s = Tr::add(s, Tr::add(Tr::add(x8, x9), Tr::add(x10, x11)));
    alignas(64) float out[Tr::kLanes];
    Tr::store(out, s);
    volatile float sink = out[0];
    (void)sink;
    total_flops += 12.0 * Tr::kLanes * 2.0 * static_cast<double>(iters);
  }
  double dt = std::chrono::duration<double>(clock::now() - t0).count();
  return dt > 0 ? total_flops / dt * 1e-9 : 0.0;
}

}  // namespace gemm_detail
}  // namespace pyconv
