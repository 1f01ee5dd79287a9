// GEMM core shared by dense (linear) and conv2d: C[M,N] = op(A)[M,K] * op(B)[K,N], float32.
//
// Operands are strided views, so every transpose the layers need (X*W^T forward, dY*W and
// dY^T*X backward) is handled by how the panels are packed, never by copying a whole matrix.
// C is row-major with leading dimension ldc. Optional extras fused into the output write:
// `bias[n]` added to every row (the linear layer's bias), and `accumulate` (C += A*B rather
// than C = A*B).
#pragma once

#include <cstdint>

#include "common.h"

namespace dlkern {

// Element (i, j) of a matrix view is data[i * rs + j * cs].
struct MatrixRef {
  const float* data = nullptr;
  int64_t rs = 0;
  int64_t cs = 1;
};

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  MatrixRef A;   // M x K
  MatrixRef B;   // K x N
  float* C = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;  // N values, or null
  bool accumulate = false;      // C += A*B; not together with bias
};

// Dispatches on cpu_isa_active(). `threads` is an upper bound (small problems use fewer).
Status gemm_cpu(const GemmArgs& g, int threads);
Status gemm_ref(const GemmArgs& g, int threads);   // double accumulation, any strides
Status gemm_avx2(const GemmArgs& g, int threads);  // packed, register-blocked (gemm_avx2.cpp)

// out[n] = sum_m X[m, n] for a row-major M x N matrix with leading dimension ld (the linear
// layer's bias gradient). `accumulate` adds into out.
Status colsum_cpu(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                  int threads);
Status colsum_ref(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                  int threads);
Status colsum_avx2(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                   int threads);

// Validation shared by every path: sizes non-negative, pointers present when needed.
Status gemm_validate(const GemmArgs& g);

}  // namespace dlkern
