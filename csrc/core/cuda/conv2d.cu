// conv2d forward and backward, CUDA, float32, NCHW: implicit GEMMs on the tile kernel of
// gemm_tile.cuh. No column matrix is ever stored: the loaders below compute, for the element
// (row, k) of a GEMM operand, which input (or gradient) element it is, and read it (or 0 in the
// padding). Per group g (Cg = C/groups input and Kg = K/groups output channels per group):
//
//   forward        y_g[Kg, N*P*Q]  = W_g[Kg, Cg*R*S]  x col_g[Cg*R*S, N*P*Q]        (im2col in B)
//   backward data  dx_g[Cg, N*H*W] = W_g^T[Cg, Kg*R*S] x dcol_g[Kg*R*S, N*H*W]
//                  a gather: input position (h, w) takes dy[p, q] for every (r, s) with
//                  p*sh = h + ph - r*dh (q likewise); no scatter, no atomics, deterministic.
//                  For stride > 1 most (r, s) do not divide and read 0: that is (1 - 1/(sh*sw))
//                  of the FLOPs wasted, kept for simplicity (stride-2 backward is not a target).
//   backward weight dW_g[Kg, Cg*R*S] = dy_g[Kg, N*P*Q] x col_g^T[N*P*Q, Cg*R*S]
//                  K here is N*P*Q (large) and M x N small, so this is where split-K matters.
//   bias gradient  db[k] = sum of dy over (n, p, q): channel_sum_kernel, one CTA per channel.
//
// Kernel versions:
//   gemm_tile_kernel + ImColLoader / DyGatherLoader / WeightTLoader / DyRowLoader / ColTLoader
//                     the general implicit GEMMs (any kernel, stride, padding, dilation, groups);
//   gemm_tile_kernel + MatLoader (1x1, stride 1, no padding, one group): plain batched GEMMs over
//                     the images, with 128-bit loads (the "1x1 through the GEMM" path);
//   channel_sum_kernel the bias gradient.
// Index arithmetic inside the loaders is 32-bit (the host refuses sizes past 2^31 positions);
// element offsets are 64-bit.
#include <cuda_runtime.h>

#include <cstdint>

#include "../conv2d.h"
#include "check.cuh"
#include "conv2d_loaders.cuh"
#include "gemm_tile.cuh"

namespace dlkern {
namespace {

using cuda_gemm::MatLoader;
using cuda_gemm::MatStore;
using cuda_gemm::Plan;
using namespace cuda_conv;

__global__ void channel_sum_kernel(const float* __restrict__ dy, int n_img, int channels,
                                   int plane, float* __restrict__ out) {
  __shared__ float part[32];
  const int ch = blockIdx.x;
  const int64_t total = static_cast<int64_t>(n_img) * plane;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t img = i / plane, pos = i % plane;
    s += dy[(img * channels + ch) * plane + pos];
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) t += part[w];
    out[ch] = t;
  }
}

// dx, dw and db (each may be null) set to zero: the backward of a convolution with no outputs.
Status zero_grads(const Conv2dShape& s, float* dx, float* dw, float* db, cudaStream_t cs) {
  const size_t counts[3] = {static_cast<size_t>(s.N * s.C * s.H * s.W),
                            static_cast<size_t>(s.K * (s.C / s.groups) * s.R * s.S),
                            static_cast<size_t>(s.K)};
  float* outs[3] = {dx, dw, db};
  for (int i = 0; i < 3; ++i)
    if (outs[i] != nullptr && counts[i] > 0) {
      const Status st = cuda_status(cudaMemsetAsync(outs[i], 0, counts[i] * sizeof(float), cs),
                                    "conv2d backward of an empty output (cudaMemsetAsync)");
      if (st != Status::kOk) return st;
    }
  return Status::kOk;
}

bool plan_for(const Dims& d, size_t ws_bytes, Plan* p) {
  return cuda_gemm::plan(d.batch, d.M, d.N, d.K, ws_bytes, p);
}

}  // namespace

size_t conv2d_cuda_workspace(const Conv2dShape& s) {
  if (conv2d_validate(s) != Status::kOk || !fits32(s)) return 0;
  size_t w = 0;
  for (const Dims& d : {fwd_dims(s), dx_dims(s), dw_dims(s)}) {
    if (d.batch <= 0 || d.M <= 0 || d.N <= 0 || d.K <= 0) continue;
    const size_t b = cuda_gemm::workspace_wanted(d.batch, d.M, d.N, d.K);
    if (b > w) w = b;
  }
  return w;
}

Status conv2d_fwd_cuda(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                       float* y, void* workspace, size_t workspace_bytes, void* stream) {
  Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  if (s.N == 0 || s.K == 0 || s.P == 0 || s.Q == 0) return Status::kOk;
  // An empty x (C, H or W = 0) or w may be null: y is then the bias (a GEMM of depth 0 or one
  // that reads only padding).
  if (y == nullptr || (s.N * s.C * s.H * s.W > 0 && x == nullptr) ||
      (s.K * (s.C / s.groups) * s.R * s.S > 0 && w == nullptr))
    return Status::kInvalidArgument;
  if (!fits32(s)) return Status::kUnsupported;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  float* ws = static_cast<float*>(workspace);
  const size_t wsb = ws == nullptr ? 0 : workspace_bytes;
  const Dims d = fwd_dims(s);
  Plan p;
  if (!plan_for(d, wsb, &p)) return Status::kUnsupported;
  cudaError_t e;
  if (plain_1x1(s)) {
    const Fwd1x1 o = fwd_1x1(s, x, w, bias, y);
    e = cuda_gemm::launch(p, o.a, o.b, o.epi, d.batch, d.M, d.N, d.K, ws, cs);
  } else {
    const FwdIm2col o = fwd_im2col(s, x, w, bias, y);
    e = cuda_gemm::launch(p, o.a, o.b, o.epi, d.batch, d.M, d.N, d.K, ws, cs);
  }
  return cuda_status(e, "conv2d forward (gemm_tile_kernel)");
}

Status conv2d_bwd_cuda(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw, float* db, void* workspace, size_t workspace_bytes,
                       void* stream) {
  Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  if (!fits32(s)) return Status::kUnsupported;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  // No output positions or channels (dy is empty, null allowed): every gradient is zero.
  if (s.N == 0 || s.K == 0 || s.P == 0 || s.Q == 0) return zero_grads(s, dx, dw, db, cs);
  if (dy == nullptr || (dx && s.N * s.C * s.H * s.W > 0 && !w) ||
      (dw && s.N * s.C * s.H * s.W > 0 && !x))
    return Status::kInvalidArgument;
  float* ws = static_cast<float*>(workspace);
  const size_t wsb = ws == nullptr ? 0 : workspace_bytes;
  const Geo g = geo_of(s);

  if (dx != nullptr && s.N * s.C * s.H * s.W > 0) {
    const Dims d = dx_dims(s);
    Plan p;
    if (!plan_for(d, wsb, &p)) return Status::kUnsupported;
    cudaError_t e;
    if (plain_1x1(s)) {
      const Dx1x1 o = dx_1x1(s, w, dy, dx);
      e = cuda_gemm::launch(p, o.a, o.b, o.epi, d.batch, d.M, d.N, d.K, ws, cs);
    } else {
      const DxGather o = dx_gather(s, w, dy, dx);
      e = cuda_gemm::launch(p, o.a, o.b, o.epi, d.batch, d.M, d.N, d.K, ws, cs);
    }
    st = cuda_status(e, "conv2d backward data (gemm_tile_kernel)");
    if (st != Status::kOk) return st;
  }
  if (dw != nullptr && s.K * s.C / s.groups * s.R * s.S > 0) {
    const Dims d = dw_dims(s);
    Plan p;
    if (!plan_for(d, wsb, &p)) return Status::kUnsupported;
    const Dw o = dw_implicit(s, x, dy, dw);
    st = cuda_status(cuda_gemm::launch(p, o.a, o.b, o.epi, d.batch, d.M, d.N, d.K, ws, cs),
                     "conv2d backward weight (gemm_tile_kernel)");
    if (st != Status::kOk) return st;
  }
  if (db != nullptr) {
    channel_sum_kernel<<<static_cast<unsigned>(s.K), 256, 0, cs>>>(dy, g.n_img, g.K, g.PQ, db);
    st = cuda_launched("conv2d bias gradient (channel_sum_kernel)");
  }
  return st;
}

}  // namespace dlkern
