#include "common.h"

#include <atomic>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <cstring>
#include <initializer_list>

namespace dlkern {

const char* status_string(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kUnsupported: return "unsupported";
    case Status::kCudaError: return "CUDA error";
  }
  return "unknown status";
}

namespace {
thread_local char g_status_detail[256] = "";
}

void set_status_detail(const char* detail) {
  std::strncpy(g_status_detail, detail ? detail : "", sizeof(g_status_detail) - 1);
  g_status_detail[sizeof(g_status_detail) - 1] = '\0';
}

const char* status_detail() { return g_status_detail; }

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kReference: return "reference";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "unknown";
}

namespace {

#if defined(__x86_64__) || defined(__i386__)
// Whether the OS saves the register state an AVX-512 kernel uses: XCR0 bits 1-2 (xmm, ymm) and
// 5-7 (opmask, the upper halves of zmm0-15, zmm16-31). A CPU can have the instructions while
// the OS (or a hypervisor) leaves them disabled; using them then faults.
bool os_saves_zmm() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xe6) == 0xe6;
}
#endif

}  // namespace

CpuIsa cpu_isa_best() {
  static const CpuIsa best = [] {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
      return CpuIsa::kReference;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        os_saves_zmm())
      return CpuIsa::kAvx512;
    return CpuIsa::kAvx2;
#else
    return CpuIsa::kReference;
#endif
  }();
  return best;
}

namespace {
std::atomic<int> g_active{-1};  // -1: not overridden, follow cpu_isa_best()
}

CpuIsa cpu_isa_active() {
  int v = g_active.load(std::memory_order_relaxed);
  return v < 0 ? cpu_isa_best() : static_cast<CpuIsa>(v);
}

Status cpu_isa_select(CpuIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(cpu_isa_best())) return Status::kUnsupported;
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
  return Status::kOk;
}

Status cpu_isa_parse(const char* name, CpuIsa* out) {
  if (name == nullptr) return Status::kInvalidArgument;
  if (std::strcmp(name, "auto") == 0) {
    *out = cpu_isa_best();
    return Status::kOk;
  }
  for (CpuIsa isa : {CpuIsa::kReference, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (std::strcmp(name, cpu_isa_name(isa)) == 0) {
      if (static_cast<int>(isa) > static_cast<int>(cpu_isa_best())) return Status::kUnsupported;
      *out = isa;
      return Status::kOk;
    }
  }
  return Status::kInvalidArgument;
}

}  // namespace dlkern
