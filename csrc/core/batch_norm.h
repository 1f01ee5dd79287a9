// Batch normalization over the channel dimension of an input viewed as N x C x S (S = the
// product of the spatial dims; (N, C) inputs have S = 1). Torch-free.
//
// Training forward: per-channel mean and biased variance over N*S values, then
//   y = (x - mean) * (w * invstd) + b,   invstd = 1 / sqrt(var + eps).
// Statistics are shifted sums: each channel's values are summed as (x - K) with K the channel's
// first value, per chunk in float lanes and across chunks in double, so inputs with a large mean
// (1e4 with unit spread) keep their variance's digits. (x - mean) is formed before scaling for
// the same reason: torch's folded x * scale + shift cancels digits there.
// Running statistics, when given, are updated as torch does: mean with the batch mean, var with
// the unbiased batch variance, rs = (1 - momentum) * rs + momentum * stat.
//
// Memory traffic (float32 elements of the input, size E = N*C*S): training forward reads x twice
// and writes y (3E; the second read comes from cache when the input fits in L2/L3); inference
// reads x and writes y (2E); backward reads x and dy for the two fused reductions, then reads
// them again and writes dx (5E), or 3E in eval mode, where dx needs no reduction.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.h"

namespace dlkern {

struct BatchNormShape {
  int64_t N = 0, C = 0, S = 0;
};

// w, b, running_mean, running_var may be null (no affine / no running stats). save_mean and
// save_invstd (C values each) receive the batch statistics the backward needs.
Status batch_norm_fwd_train_cpu(const BatchNormShape& s, const float* x, const float* w,
                                const float* b, double eps, double momentum, float* running_mean,
                                float* running_var, float* y, float* save_mean, float* save_invstd,
                                int threads);

// Eval mode: y = (x - running_mean) * (w * invstd) + b with invstd from running_var. Writes the
// mean and invstd used into save_mean / save_invstd when those are non-null (for backward).
Status batch_norm_fwd_eval_cpu(const BatchNormShape& s, const float* x, const float* w,
                               const float* b, const float* running_mean, const float* running_var,
                               double eps, float* y, float* save_mean, float* save_invstd,
                               int threads);

// Backward from the mean and invstd the forward used. training: the batch statistics depend on
// x (the full formula); otherwise they are constants (dx = dy * w * invstd). Any of dx, dw, db
// may be null.
Status batch_norm_bwd_cpu(const BatchNormShape& s, const float* x, const float* dy, const float* w,
                          const float* mean, const float* invstd, bool training, float* dx,
                          float* dw, float* db, int threads);

// Per-chunk kernels, one set per ISA (ref/batch_norm_ref.cpp, cpu/batch_norm_avx2.cpp); the
// driver in cpu/batch_norm_cpu.cpp splits the work and combines the chunks' sums in double.
struct BatchNormKernels {
  // s1 = sum(x - k), s2 = sum((x - k)^2)
  void (*stats)(const float* x, int64_t n, float k, double* s1, double* s2);
  // y = (x - mean) * scale + shift
  void (*normalize)(const float* x, int64_t n, float mean, float scale, float shift, float* y);
  // normalize over `rows` consecutive rows of length S starting at channel c0 (wrapping at C),
  // with per-channel mean/scale/shift: the small-spatial-extent path (one call per thread range
  // rather than one per row)
  void (*normalize_rows)(const float* x, int64_t S, int64_t rows, int64_t c0, int64_t C,
                         const float* mean, const float* scale, const float* shift, float* y);
  // sdy = sum(dy), sdyx = sum(dy * (x - mean))
  void (*bwd_reduce)(const float* x, const float* dy, int64_t n, float mean, double* sdy,
                     double* sdyx);
  // dx = a * dy + bb * (x - mean) + c   (bb = c = 0 in eval mode: dx = a * dy)
  void (*bwd_dx)(const float* x, const float* dy, int64_t n, float mean, float a, float bb, float c,
                 float* dx);
  // the two backward kernels over `rows` consecutive rows of length S from channel c0 (wrapping
  // at C): per-row sums into sdy[r], sdyx[r]; dx with per-channel constants
  void (*bwd_reduce_rows)(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                          int64_t C, const float* mean, double* sdy, double* sdyx);
  void (*bwd_dx_rows)(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                      int64_t C, const float* mean, const float* a, const float* bb,
                      const float* c, float* dx);
  // The narrow path (S < kBatchNormNarrowS: (N, C) and (N, C, L) with small L): the input as
  // `rows` rows of W contiguous columns, constants per column, vectors across columns. The
  // reductions take a range of W <= kBatchNormNarrowCols of the C*S columns (rows `ld` floats
  // apart) and write their column sums to s1/s2 (sdy/sdyx), W doubles each, accumulating in
  // double; the elementwise kernels take whole rows (ld = W). cols_bwd_dx with bb null (eval
  // mode) is dx = a * dy + c, and does not read x.
  void (*cols_stats)(const float* x, int64_t rows, int64_t W, int64_t ld, const float* k,
                     double* s1, double* s2);
  void (*cols_normalize)(const float* x, int64_t rows, int64_t W, const float* mean,
                         const float* scale, const float* shift, float* y);
  void (*cols_bwd_reduce)(const float* x, const float* dy, int64_t rows, int64_t W, int64_t ld,
                          const float* mean, double* sdy, double* sdyx);
  void (*cols_bwd_dx)(const float* x, const float* dy, int64_t rows, int64_t W, const float* mean,
                      const float* a, const float* bb, const float* c, float* dx);
};
// Spatial extents below this take the narrow path: per-channel rows of fewer than 8 floats
// leave a vector mostly empty, and the per-(row, chunk) work items of the wide path cost more
// than the arithmetic.
constexpr int64_t kBatchNormNarrowS = 8;
// The narrow reductions take at most this many columns per call (their sums stay in L1).
constexpr int64_t kBatchNormNarrowCols = 256;
extern const BatchNormKernels kBatchNormRef;
extern const BatchNormKernels kBatchNormAvx2;
// The avx512 path (cpu/batch_norm_avx512.cpp): AVX2's kernels with zmm narrow ones.
const BatchNormKernels& batch_norm_avx512();

// CUDA (csrc/core/cuda/batch_norm.cu): the same contract on device pointers and a cudaStream_t,
// plus a device workspace of batch_norm_cuda_workspace(s) bytes (16-byte aligned; per-channel
// constants and the per-slice partial sums of the grid-wide reductions). Results do not depend
// on the GPU's size: partial sums are combined in a fixed order.
size_t batch_norm_cuda_workspace(const BatchNormShape& s);
Status batch_norm_fwd_train_cuda(const BatchNormShape& s, const float* x, const float* w,
                                 const float* b, double eps, double momentum, float* running_mean,
                                 float* running_var, float* y, float* save_mean, float* save_invstd,
                                 void* workspace, size_t workspace_bytes, void* stream);
Status batch_norm_fwd_eval_cuda(const BatchNormShape& s, const float* x, const float* w,
                                const float* b, const float* running_mean, const float* running_var,
                                double eps, float* y, float* save_mean, float* save_invstd,
                                void* workspace, size_t workspace_bytes, void* stream);
Status batch_norm_bwd_cuda(const BatchNormShape& s, const float* x, const float* dy, const float* w,
                           const float* mean, const float* invstd, bool training, float* dx,
                           float* dw, float* db, void* workspace, size_t workspace_bytes,
                           void* stream);

}  // namespace dlkern
