// Launch checking shared by the .cu files: a failed launch or runtime call becomes
// Status::kCudaError, with status_detail() naming the kernel and the CUDA error. Never exit().
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "../common.h"

namespace dlkern {

inline Status cuda_status(cudaError_t e, const char* where) {
  if (e == cudaSuccess) return Status::kOk;
  char buf[200];
  std::snprintf(buf, sizeof(buf), "%s: %s (%s)", where, cudaGetErrorName(e), cudaGetErrorString(e));
  set_status_detail(buf);
  return Status::kCudaError;
}

// After a launch: the launch's own error (bad configuration), if any.
inline Status cuda_launched(const char* kernel) { return cuda_status(cudaGetLastError(), kernel); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace dlkern
