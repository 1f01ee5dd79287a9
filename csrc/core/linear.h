// Dense (linear) layer on the GEMM core: y = x * w^T + b.
//
// x is batch x in, w is out x in, y is batch x out (row-major, contiguous). x and w may be any
// strided 2-D views (transposed or sliced weights need no copy: the GEMM packs them).
#pragma once

#include <cstdint>

#include "common.h"
#include "gemm.h"

namespace dlkern {

struct LinearShape {
  int64_t batch = 0, in = 0, out = 0;
};

// y[b, o] = sum_i x[b, i] * w[o, i] (+ bias[o])
Status linear_fwd_cpu(const LinearShape& s, MatrixRef x, MatrixRef w, const float* bias, float* y,
                      int threads);

// From dy (batch x out, contiguous): dx = dy * w (batch x in), dw = dy^T * x (out x in),
// db = column sums of dy. Any of dx, dw, db may be null (not wanted).
Status linear_bwd_cpu(const LinearShape& s, MatrixRef x, MatrixRef w, const float* dy, float* dx,
                      float* dw, float* db, int threads);

// CUDA (csrc/core/cuda/linear.cu): device pointers, a cudaStream_t. The workspace (device memory,
// may be null) lets small batches split K across the GPU; linear_cuda_workspace gives the bytes
// that the largest of the three products would use.
size_t linear_cuda_workspace(const LinearShape& s);
Status linear_fwd_cuda(const LinearShape& s, MatrixRef x, MatrixRef w, const float* bias, float* y,
                       void* workspace, size_t workspace_bytes, void* stream);
Status linear_bwd_cuda(const LinearShape& s, MatrixRef x, MatrixRef w, const float* dy, float* dx,
                       float* dw, float* db, void* workspace, size_t workspace_bytes, void* stream);

}  // namespace dlkern
