#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyconv {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

Isa detected_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc's checks include the OS's XSAVE support for the wider registers.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::scalar;
}

static bool cpu_can_run(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(detected_isa()); }

static Isa parse_isa(const std::string& name, bool* ok) {
  *ok = true;
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  *ok = false;
  return Isa::scalar;
}

static Isa initial_isa() {
  Isa best = detected_isa();
  const char* env = std::getenv("PYCONV_ISA");
  if (env && *env) {
    bool ok;
    Isa want = parse_isa(env, &ok);
    // An unknown or unsupported request falls back to the best path this CPU has;
    // kernel_info() reports what is actually in use.
    if (ok && cpu_can_run(want)) return want;
  }
  return best;
}

static std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_active_isa(const std::string& name) {
  bool ok;
  Isa want = parse_isa(name, &ok);
  if (!ok) throw std::invalid_argument("isa: unknown ISA '" + name + "' (scalar, avx2, avx512)");
  if (!cpu_can_run(want))
    throw std::invalid_argument("isa: this CPU cannot run '" + name + "' (best: " +
                                isa_name(detected_isa()) + ")");
  isa_slot().store(static_cast<int>(want), std::memory_order_relaxed);
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

static std::atomic<int>& thread_slot() {
#ifdef _OPENMP
  static std::atomic<int> slot{omp_get_max_threads() > 0 ? omp_get_max_threads() : 1};
#else
  static std::atomic<int> slot{1};
#endif
  return slot;
}

int num_threads() { return thread_slot().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
  thread_slot().store(n, std::memory_order_relaxed);
#else
  thread_slot().store(1, std::memory_order_relaxed);
#endif
}

int threads_for_work(double work, double grain) {
  const int all = num_threads();
  if (!(work >= grain) || all <= 1) return 1;
  const double useful = work / grain;
  return useful >= all ? all : static_cast<int>(useful);
}

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

namespace {
struct ScratchBuffers {
  void* ptr[kScratchSlots] = {};
  std::size_t size[kScratchSlots] = {};
  ~ScratchBuffers() {
    for (int i = 0; i < kScratchSlots; ++i) std::free(ptr[i]);
  }
};
thread_local ScratchBuffers tl_scratch;
}  // namespace

void* scratch(int slot, std::size_t bytes) {
  if (slot < 0 || slot >= kScratchSlots) throw std::invalid_argument("scratch: bad slot");
  ScratchBuffers& s = tl_scratch;
  if (bytes == 0) bytes = 64;
  if (s.size[slot] >= bytes) return s.ptr[slot];
  std::size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded < bytes) throw std::bad_alloc();
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  std::free(s.ptr[slot]);
  s.ptr[slot] = p;
  s.size[slot] = rounded;
  return p;
}

}  // namespace pyconv
