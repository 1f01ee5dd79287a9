#include "common.h"

#include <atomic>
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
  }
  return "unknown";
}

CpuIsa cpu_isa_best() {
  static const CpuIsa best = [] {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
#endif
    return CpuIsa::kReference;
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
  for (CpuIsa isa : {CpuIsa::kReference, CpuIsa::kAvx2}) {
    if (std::strcmp(name, cpu_isa_name(isa)) == 0) {
      if (static_cast<int>(isa) > static_cast<int>(cpu_isa_best())) return Status::kUnsupported;
      *out = isa;
      return Status::kOk;
    }
  }
  return Status::kInvalidArgument;
}

}  // namespace dlkern
