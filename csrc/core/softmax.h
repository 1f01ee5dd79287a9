// Softmax over one axis of a contiguous float32 tensor, viewed as [outer, dim, inner]:
// element (o, d, i) lives at ((o * dim) + d) * inner + i and the reduction runs over d.
//
//   forward:   y = exp(x - max_d x) / sum_d exp(x - max_d x)
//   backward:  dx = y * (dy - sum_d dy * y)
//
// Semantics follow torch: a NaN anywhere in a reduced line, a +inf in it, or a line of all -inf
// makes the whole line NaN.
#pragma once

#include <cstdint>

#include "common.h"

namespace dlkern {

struct SoftmaxShape {
  int64_t outer = 1;
  int64_t dim = 1;
  int64_t inner = 1;
  int64_t numel() const { return outer * dim * inner; }
};

// Checks sizes (non-negative, no overflow of numel). Every entry point calls it.
Status softmax_check_shape(const SoftmaxShape& s);

// Dispatching entry points (CPU): pick the path from cpu_isa_active().
Status softmax_fwd_cpu(const SoftmaxShape& s, const float* x, float* y, int num_threads);
Status softmax_bwd_cpu(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                       int num_threads);

// The per-path implementations, callable directly (C++ tests compare them).
Status softmax_fwd_ref(const SoftmaxShape& s, const float* x, float* y, int num_threads);
Status softmax_bwd_ref(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                       int num_threads);
Status softmax_fwd_avx2(const SoftmaxShape& s, const float* x, float* y, int num_threads);
Status softmax_bwd_avx2(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                        int num_threads);
Status softmax_fwd_avx512(const SoftmaxShape& s, const float* x, float* y, int num_threads);
Status softmax_bwd_avx512(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                          int num_threads);

// CUDA (csrc/core/cuda/softmax.cu). `stream` is a cudaStream_t; pointers are device pointers.
Status softmax_fwd_cuda(const SoftmaxShape& s, const float* x, float* y, void* stream);
Status softmax_bwd_cuda(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                        void* stream);

}  // namespace dlkern
