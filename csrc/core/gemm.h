// GEMM core shared by dense (linear) and conv2d: C[M,N] = op(A)[M,K] * op(B)[K,N], float32.
//
// Operands are strided views, so every transpose the layers need (X*W^T forward, dY*W and
// dY^T*X backward) is handled by how the panels are packed, never by copying a whole matrix.
// C is row-major with leading dimension ldc. Optional extras fused into the output write:
// `bias[n]` added to every row (the linear layer's bias), `row_bias[m]` added to every column
// (a convolution's bias, C being output channels x positions), and `accumulate` (C += A*B
// rather than C = A*B).
//
// Implicit B: instead of a matrix view, B may be produced panel by panel by a callback
// (`pack_b`), which writes a kc x nc block of B straight into the packed layout the
// micro-kernel reads. Convolution uses it to run im2col inside the GEMM's packing step, so the
// only workspace is the GEMM's own packing buffer (KC x NC floats per thread), whatever the
// image size.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.h"

namespace dlkern {

// Element (i, j) of a matrix view is data[i * rs + j * cs].
struct MatrixRef {
  const float* data = nullptr;
  int64_t rs = 0;
  int64_t cs = 1;
};

// The packed B layout (AVX2 and AVX-512 paths): a kc x nc block is stored as ceil(nc / kGemmNR) micro-panels
// of kc x kGemmNR floats, panel p at bp + p * kc * kGemmNR holding B[k0 + k][n0 + p * kGemmNR + j]
// at [k * kGemmNR + j], zero for columns past nc. bp is 64-byte aligned.
constexpr int kGemmNR = 16;
struct BPacker {
  void (*fn)(const void* ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* bp) = nullptr;
  const void* ctx = nullptr;
};

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  MatrixRef A;   // M x K
  MatrixRef B;   // K x N (unused when pack_b is set)
  BPacker pack_b;  // implicit B: AVX2 and AVX-512 paths only (gemm_ref and gemm_cpu's reference path refuse it)
  // Row-offset B, AVX-512 path only (the others give kUnsupported): B[k][n] = B.data[b_rows[k] + n],
  // rows anywhere, contiguous along n, each readable 16 floats past column N (the last micro-panel
  // is loaded whole, its extra lanes discarded). A stride-1 convolution over a padded copy of its
  // input is such a B: row k = (c, r, t) starts at c * plane + r * Wp + t (conv2d_avx512.cpp), and
  // the micro-kernel reads it in place, without im2col.
  const int64_t* b_rows = nullptr;
  // Wrapped C, only with b_rows (AVX-512 path only; b_rows may come without it): C's columns come in rows of c_row kept
  // columns followed by c_skip discarded ones, c_row + c_skip >= 16: column n = i * (c_row +
  // c_skip) + q goes to C[m * ldc + i * c_row + q] when q < c_row, and nowhere otherwise; no
  // column bias. A convolution over a padded input computes Wp = Q + (S-1)*dw columns per output
  // row and keeps Q.
  int64_t c_row = 0, c_skip = 0;
  float* C = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;  // N values, or null
  const float* row_bias = nullptr;  // M values, or null; the AVX2 and AVX-512 packed paths
  bool accumulate = false;      // C += A*B; not together with bias or row_bias
};

// Dispatches on cpu_isa_active(). `threads` is an upper bound (small problems use fewer).
Status gemm_cpu(const GemmArgs& g, int threads);
Status gemm_ref(const GemmArgs& g, int threads);   // double accumulation, any strides
Status gemm_avx2(const GemmArgs& g, int threads);  // packed, register-blocked (gemm_avx2.cpp)
Status gemm_avx512(const GemmArgs& g, int threads);  // its packed path on zmm (gemm_avx512.cpp)

// out[n] = sum_m X[m, n] for a row-major M x N matrix with leading dimension ld (the linear
// layer's bias gradient). `accumulate` adds into out.
Status colsum_cpu(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                  int threads);
Status colsum_ref(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                  int threads);
Status colsum_avx2(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                   int threads);

// CUDA (csrc/core/cuda/linear.cu): the same product on device pointers, any strides (128-bit
// loads where the contiguous dimension allows), bias / row_bias / accumulate fused; pack_b is a
// CPU feature and gives kUnsupported. `workspace` (device memory, may be null) lets problems with
// too few output tiles for the GPU split K; gemm_cuda_workspace says how many bytes it would use.
// `stream` is a cudaStream_t.
size_t gemm_cuda_workspace(const GemmArgs& g);
Status gemm_cuda(const GemmArgs& g, void* workspace, size_t workspace_bytes, void* stream);
Status colsum_cuda(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                   void* stream);

// Validation shared by every path: sizes non-negative, pointers present when needed.
Status gemm_validate(const GemmArgs& g);
// How many columns of each row of C the product writes: N, or for a wrapped C fewer.
int64_t gemm_c_width(const GemmArgs& g);

}  // namespace dlkern
