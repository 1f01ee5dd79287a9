// dlkern core: the torch-free contract shared by every kernel.
//
// A core entry point takes raw pointers, sizes, a thread count (CPU) or a stream (CUDA), and
// returns a Status. It never throws, never exits, never allocates device memory behind the
// caller's back. The bindings layer (csrc/bindings) turns a non-ok Status into a Python
// exception that names the op.
#pragma once

#include <cstdint>

namespace dlkern {

enum class Status : int {
  kOk = 0,
  kInvalidArgument = 1,  // sizes/pointers the kernel cannot accept (caller bug)
  kUnsupported = 2,      // a valid request this build or machine cannot serve
  kCudaError = 3,        // a CUDA launch or runtime call failed
};

const char* status_string(Status s);

// The detail behind the last non-ok Status on this thread (a CUDA error's name and the kernel
// that hit it), or "" when none was recorded. CUDA entry points record it; the bindings append
// it to the exception message.
void set_status_detail(const char* detail);
const char* status_detail();

// CPU instruction-set paths. Ordered: a higher value needs every feature of a lower one.
enum class CpuIsa : int {
  kReference = 0,  // scalar, accumulates in double; runs anywhere
  kAvx2 = 1,       // AVX2 + FMA
  kAvx512 = 2,     // AVX-512 F, BW, DQ and VL (Skylake-SP and later, Zen 4 and later), with the
                   // OS saving the zmm and mask registers (XCR0); ops without an AVX-512 kernel of
                   // their own run their AVX2 one on this path
};

const char* cpu_isa_name(CpuIsa isa);
// Parses "reference" / "avx2" / "avx512" / "auto" (the best supported). Returns kInvalidArgument for an
// unknown name and kUnsupported when the machine lacks the requested features.
Status cpu_isa_parse(const char* name, CpuIsa* out);
// The best path this CPU supports (cpuid, checked once).
CpuIsa cpu_isa_best();
// The path kernels dispatch to now: cpu_isa_best() unless overridden by cpu_isa_select().
CpuIsa cpu_isa_active();
// Overrides the active path (tests and benchmarks use it to cover every path on one machine).
Status cpu_isa_select(CpuIsa isa);

// Number of threads to use for `work` units of roughly equal cost, given a cap. Small problems
// run on one thread: an OpenMP fork/join costs about a microsecond, which is the whole runtime
// of a small softmax.
inline int threads_for(int64_t work, int64_t min_work_per_thread, int max_threads) {
  if (max_threads <= 1 || work <= min_work_per_thread) return 1;
  int64_t t = work / min_work_per_thread;
  return t < max_threads ? static_cast<int>(t) : max_threads;
}

}  // namespace dlkern
