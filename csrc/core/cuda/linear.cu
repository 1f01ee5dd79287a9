// Dense (linear) layer and the strided SGEMM under it, CUDA, float32.
//
// Kernel versions:
//   gemm_tile_kernel<BigTile|SmallTile>  (gemm_tile.cuh) shared-memory tiled SGEMM, 8x8 (or 4x4)
//                       outputs per thread, double-buffered 128-bit staging, fused bias; A and B
//                       read through MatLoader, so the three products of a linear layer
//                       (x*w^T, dy*w, dy^T*x) run on the tensors as they lie, transposes included.
//   gemm_splitk_reduce  deterministic split-K: when M x N gives too few CTAs for the GPU (small
//                       batches, or the weight gradient, whose K is the batch), slices of K are
//                       summed in a fixed order from a caller-given workspace.
//   colsum_kernel       the bias gradient: 32 columns x 8 row-phases per CTA, combined in a fixed
//                       order through shared memory (no atomics: results are reproducible).
// Every launch is checked; an error comes back as Status::kCudaError with status_detail() naming
// the kernel and the CUDA error.
#include <cuda_runtime.h>

#include "../linear.h"
#include "check.cuh"
#include "gemm_tile.cuh"

namespace dlkern {
namespace cuda_gemm {

int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) {
    cudaGetLastError();  // not sticky; leave no error for the next launch check
    return 0;
  }
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (dev < 64) cached[dev] = n;
  return n;
}

}  // namespace cuda_gemm

namespace {

using cuda_gemm::MatLoader;
using cuda_gemm::MatStore;
using cuda_gemm::Plan;

// One operand as a loader over (row, k): element at data[row * s_row + k * s_k]. Units run along
// whichever dimension has the smaller stride; 128-bit loads when that stride is 1 and aligned.
struct Operand {
  const float* data;
  int64_t rows, s_row, s_k;
  bool along_k() const { return s_k == 1 || (s_row != 1 && s_k <= s_row); }
  template <bool kAlongK>
  MatLoader<kAlongK> loader() const {
    MatLoader<kAlongK> l;
    l.data = data, l.rows = rows, l.s_row = s_row, l.s_k = s_k, l.batch_stride = 0;
    const int64_t lead = kAlongK ? s_row : s_k;
    l.vec = (kAlongK ? s_k == 1 : s_row == 1) && lead % 4 == 0 && aligned16(data);
    return l;
  }
};

template <class F>
cudaError_t with_loaders(const Operand& a, const Operand& b, F&& f) {
  if (a.along_k()) {
    if (b.along_k()) return f(a.loader<true>(), b.loader<true>());
    return f(a.loader<true>(), b.loader<false>());
  }
  if (b.along_k()) return f(a.loader<false>(), b.loader<true>());
  return f(a.loader<false>(), b.loader<false>());
}

__global__ void colsum_kernel(int64_t M, int64_t N, const float* __restrict__ x, int64_t ld,
                              float* __restrict__ out, bool accumulate) {
  __shared__ float part[8][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  float s = 0.0f;
  if (n < N)
    for (int64_t m = ty; m < M; m += 8) s += x[m * ld + n];
  part[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && n < N) {
    float t = 0.0f;
#pragma unroll
    for (int r = 0; r < 8; ++r) t += part[r][tx];
    out[n] = accumulate ? out[n] + t : t;
  }
}

Status gemm_cuda_impl(const GemmArgs& g, void* ws, size_t ws_bytes, cudaStream_t stream) {
  const Operand a{g.A.data, g.M, g.A.rs, g.A.cs};
  const Operand b{g.B.data, g.N, g.B.cs, g.B.rs};  // B as (n, k)
  Plan p;
  if (!cuda_gemm::plan(1, g.M, g.N, g.K, ws == nullptr ? 0 : ws_bytes, &p))
    return Status::kUnsupported;
  MatStore epi;
  epi.c = g.C, epi.ldc = g.ldc, epi.bias = g.bias, epi.row_bias = g.row_bias;
  epi.accumulate = g.accumulate;
  const cudaError_t e = with_loaders(a, b, [&](auto la, auto lb) {
    return cuda_gemm::launch(p, la, lb, epi, 1, g.M, g.N, g.K, static_cast<float*>(ws), stream);
  });
  return cuda_status(e, "gemm_tile_kernel");
}

}  // namespace

size_t gemm_cuda_workspace(const GemmArgs& g) {
  if (g.M <= 0 || g.N <= 0 || g.K <= 0) return 0;
  return cuda_gemm::workspace_wanted(1, g.M, g.N, g.K);
}

Status gemm_cuda(const GemmArgs& g, void* workspace, size_t workspace_bytes, void* stream) {
  const Status st = gemm_validate(g);
  if (st != Status::kOk || g.M == 0 || g.N == 0) return st;
  if (g.pack_b.fn != nullptr || g.b_rows != nullptr || g.c_row > 0)
    return Status::kUnsupported;  // CPU features
  return gemm_cuda_impl(g, workspace, workspace_bytes, static_cast<cudaStream_t>(stream));
}

Status colsum_cuda(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                   void* stream) {
  if (M < 0 || N < 0 || (N > 0 && out == nullptr) || (M > 0 && N > 0 && (x == nullptr || ld < N)))
    return Status::kInvalidArgument;
  if (N == 0) return Status::kOk;
  const int64_t blocks = (N + 31) / 32;
  if (blocks > 2147483647LL) return Status::kUnsupported;
  colsum_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      M, N, x, ld, out, accumulate);
  return cuda_status(cudaGetLastError(), "colsum_kernel");
}

size_t linear_cuda_workspace(const LinearShape& s) {
  if (s.batch <= 0 || s.in < 0 || s.out <= 0) return 0;
  size_t w = cuda_gemm::workspace_wanted(1, s.batch, s.out, s.in);                  // y
  const size_t dx = cuda_gemm::workspace_wanted(1, s.batch, s.in, s.out);          // dx
  const size_t dw = cuda_gemm::workspace_wanted(1, s.out, s.in, s.batch);          // dw
  if (dx > w) w = dx;
  if (dw > w) w = dw;
  return w;
}

Status linear_fwd_cuda(const LinearShape& s, MatrixRef x, MatrixRef w, const float* bias, float* y,
                       void* workspace, size_t workspace_bytes, void* stream) {
  if (s.batch < 0 || s.in < 0 || s.out < 0) return Status::kInvalidArgument;
  GemmArgs g;
  g.M = s.batch, g.N = s.out, g.K = s.in;
  g.A = x;
  g.B = {w.data, w.cs, w.rs};  // B[k][n] = w[n][k]
  g.C = y, g.ldc = s.out, g.bias = bias;
  return gemm_cuda(g, workspace, workspace_bytes, stream);
}

Status linear_bwd_cuda(const LinearShape& s, MatrixRef x, MatrixRef w, const float* dy, float* dx,
                       float* dw, float* db, void* workspace, size_t workspace_bytes, void* stream) {
  if (s.batch < 0 || s.in < 0 || s.out < 0) return Status::kInvalidArgument;
  // The three products share the workspace: they run in order on one stream.
  if (dx != nullptr) {  // dx[b, i] = sum_o dy[b, o] * w[o, i]
    GemmArgs g;
    g.M = s.batch, g.N = s.in, g.K = s.out;
    g.A = {dy, s.out, 1};
    g.B = w;
    g.C = dx, g.ldc = s.in;
    const Status st = gemm_cuda(g, workspace, workspace_bytes, stream);
    if (st != Status::kOk) return st;
  }
  if (dw != nullptr) {  // dw[o, i] = sum_b dy[b, o] * x[b, i]
    GemmArgs g;
    g.M = s.out, g.N = s.in, g.K = s.batch;
    g.A = {dy, 1, s.out};
    g.B = x;
    g.C = dw, g.ldc = s.in;
    const Status st = gemm_cuda(g, workspace, workspace_bytes, stream);
    if (st != Status::kOk) return st;
  }
  if (db != nullptr) return colsum_cuda(s.batch, s.out, dy, s.out, db, false, stream);
  return Status::kOk;
}

}  // namespace dlkern
