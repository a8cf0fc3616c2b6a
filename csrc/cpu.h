// CPU feature detection, the per-process ISA choice, the thread count and per-caller
// scratch memory reused across calls.
#pragma once
#include <cstddef>
#include <string>

namespace pyconv {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Best ISA this CPU (and OS) supports, ignoring PYCONV_ISA.
Isa detected_isa();
// ISA in use: chosen once per process from CPUID, overridden by PYCONV_ISA.
Isa active_isa();
// Test hook: force an ISA; throws std::invalid_argument if the CPU cannot run it.
void set_active_isa(const std::string& name);

// Outputs of this many bytes and more are written with non-temporal (streaming) stores
// where a kernel writes whole aligned lines: a quarter of the 32 MiB L3 of the machines
// measured on; smaller outputs stay in cache for the op that reads them next.
constexpr long long kStreamOutputBytes = 8ll << 20;

bool openmp_enabled();
// Threads each kernel's parallel regions use (num_threads clause); >= 1.
int num_threads();
void set_num_threads(int n);  // n >= 1, else std::invalid_argument
// Threads worth waking for `work` units when one thread should get at least `grain`
// units: 1 below one grain (a fork/join costs more than it saves), else at most
// num_threads(). Kernels whose results must not depend on it only use it for work split
// into independent pieces.
int threads_for_work(double work, double grain);
// Index of the calling thread in the innermost OpenMP team (0 outside one).
int thread_index();
// Threads in the innermost OpenMP team (1 outside one).
int team_size();

// Scratch memory owned by the calling thread, 64-byte aligned, grown on demand and
// reused by later calls from the same thread. Distinct slots never alias, so a kernel
// that calls another (conv -> gemm) uses different slots. Call it outside any parallel
// region (it may throw std::bad_alloc) and hand slices to the workers.
enum ScratchSlot : int { kScratchGemmA = 0, kScratchGemmB = 1, kScratchOp0 = 2, kScratchOp1 = 3,
                         kScratchSlots = 4 };
void* scratch(int slot, std::size_t bytes);

}  // namespace pyconv
