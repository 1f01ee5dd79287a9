// Argument checks shared by the bindings: every failure a user can reach becomes a Python
// exception whose message starts with "dlkern.<op>:" and names the argument, what was expected
// and what was given. TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_INDEX -> IndexError,
// TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK -> RuntimeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "../core/common.h"

#ifdef DLKERN_WITH_CUDA
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dlkern {
namespace bind {

#ifdef DLKERN_WITH_CUDA
// The current stream of the tensor's device, as the core takes it (a cudaStream_t as void*).
// Callers hold a c10::cuda::CUDAGuard for that device.
inline void* cuda_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Device scratch for a core call (split-K partials, per-channel constants), from torch's caching
// allocator (blocks are 512-byte aligned, so the core's 16-byte requirement holds). Lives until the
// returned tensor is dropped; the allocator keeps it stream-ordered.
inline at::Tensor cuda_workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}
#endif

inline void check_float32(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), "dlkern.", op, ": argument '", arg, "' must be a tensor, got None");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "dlkern.", op, ": argument '", arg,
                   "' must be a float32 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "dlkern.", op, ": argument '", arg,
                    "' must be a dense (strided) tensor, got layout ", t.layout());
}

inline void check_same_device(const char* op, const char* a, const at::Tensor& ta, const char* b,
                              const at::Tensor& tb) {
  TORCH_CHECK_VALUE(ta.device() == tb.device(), "dlkern.", op, ": arguments '", a, "' and '", b,
                    "' must be on the same device, got ", ta.device(), " and ", tb.device());
}

inline void check_same_shape(const char* op, const char* a, const at::Tensor& ta, const char* b,
                             const at::Tensor& tb) {
  TORCH_CHECK_VALUE(ta.sizes() == tb.sizes(), "dlkern.", op, ": arguments '", a, "' and '", b,
                    "' must have the same shape, got ", ta.sizes(), " and ", tb.sizes());
}

// Wraps a possibly negative dim like torch does; a 0-d tensor accepts dim 0 and -1.
inline int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  const int64_t n = ndim == 0 ? 1 : ndim;
  TORCH_CHECK_INDEX(dim >= -n && dim < n, "dlkern.", op, ": argument 'dim' out of range: expected ",
                    "a value in [", -n, ", ", n - 1, "] for a ", ndim, "-d input, got ", dim);
  return dim < 0 ? dim + n : dim;
}

// The data pointer of an optional output (a gradient the mask did not ask for is undefined).
inline float* out_ptr(at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; }

inline void check_status(const char* op, Status s) {
  if (s == Status::kOk) return;
  const std::string detail = status_detail();
  set_status_detail("");  // reported once
  TORCH_CHECK(false, "dlkern.", op, ": kernel failed: ", status_string(s),
              detail.empty() ? "" : " (", detail, detail.empty() ? "" : ")");
}

// A CUDA tensor reaching an op with no CUDA kernel gets this message instead of the
// dispatcher's generic one: in a build without CUDA (DLKERN_FORCE_CPU=1, or torch's CUDA appeared
// after the build) it says how to rebuild; in a CUDA build it says the op is CPU-only so far.
[[noreturn]] inline void no_cuda_kernels(const char* op) {
#ifdef DLKERN_WITH_CUDA
  TORCH_CHECK_NOT_IMPLEMENTED(false, "dlkern.", op, ": got a CUDA tensor, but dlkern has no CUDA ",
                              "kernel for this op yet (CPU only)");
#else
  TORCH_CHECK_NOT_IMPLEMENTED(false, "dlkern.", op, ": got a CUDA tensor, but this build of ",
                              "dlkern has no CUDA kernels (it was built without CUDA); rebuild ",
                              "with a CUDA torch and nvcc: pip install --no-build-isolation -e .");
#endif
}

}  // namespace bind
}  // namespace dlkern
