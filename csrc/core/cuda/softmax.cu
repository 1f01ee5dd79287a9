// Softmax forward and backward, CUDA, float32, over the [outer, dim, inner] view (softmax.h).
//
// Kernel versions (llm.c style: each adds one idea):
//   softmax_fwd_warp_rows    inner == 1, dim <= kWarpRowMax: one warp per row. Each lane keeps an
//                            online (max, sum) over its strided elements (one read of x), the
//                            warp combines the pairs with shuffles, a second pass writes y.
//   softmax_fwd_block_rows   inner == 1, longer rows: one block per row, the same online pairs
//                            combined through shared memory.
//   softmax_fwd_columns      inner > 1: one thread per (outer, inner) column; consecutive threads
//                            read consecutive addresses, so every pass over dim is coalesced.
//   softmax_bwd_*            the same three shapes for dx = y * (dy - sum(dy * y)).
//   <kVec = true>            the row kernels with 128-bit loads and stores, for rows whose length
//                            is a multiple of 4 floats on 16-byte-aligned tensors.
// Semantics match the CPU paths and torch: NaN in a line, +inf in it, or an all -inf line gives
// a NaN line; -inf entries of a finite line give exactly 0.
// Every launch is checked; failures come back as Status::kCudaError (status_detail() names the
// kernel and the CUDA error), never an exit().
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../softmax.h"
#include "check.cuh"

namespace dlkern {
namespace {

constexpr int kWarp = 32;
constexpr int64_t kWarpRowMax = 1024;
constexpr int kBlockRowThreads = 512;
constexpr int kColumnThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// Running (max, sum of exp(x - max)). max is NaN-sticky; a scale between equal maxima is 1, so
// (-inf) - (-inf) is never evaluated.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ float rescale(float from, float to) {
  return from == to ? 1.0f : expf(from - to);
}

__device__ __forceinline__ float nan_max(float a, float b) {
  return (isnan(a) || a >= b) ? a : b;
}

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = (isnan(a.m) || isnan(b.m)) ? NAN : fmaxf(a.m, b.m);
  return {m, a.s * rescale(a.m, m) + b.s * rescale(b.m, m)};
}

__device__ __forceinline__ MaxSum push(MaxSum a, float x) {
  const float m = isnan(a.m) ? a.m : nan_max(x, a.m);
  const float term = x == -INFINITY ? 0.0f : expf(x - m);
  return {m, a.s * rescale(a.m, m) + term};
}

__device__ __forceinline__ MaxSum warp_combine(MaxSum v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    MaxSum o{__shfl_xor_sync(kFull, v.m, off), __shfl_xor_sync(kFull, v.s, off)};
    v = combine(v, o);
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// y = exp(x - M) / S with torch's NaN cases: M = +inf or -inf (all -inf) gives NaN via inf - inf.
__device__ __forceinline__ float normalize(float x, MaxSum r) {
  if (x == -INFINITY && isfinite(r.m)) return 0.0f;
  return expf(x - r.m) / r.s;
}

// kVec: rows are a multiple of 4 floats and 16-byte aligned: 128-bit loads and stores.
template <bool kVec>
__global__ void softmax_fwd_warp_rows(const float* __restrict__ x, float* __restrict__ y,
                                      int64_t rows, int64_t n) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;  // whole warps exit together: rows map to warps
  const float* xr = x + row * n;
  float* yr = y + row * n;
  MaxSum acc{-INFINITY, 0.0f};
  if constexpr (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    float4* y4 = reinterpret_cast<float4*>(yr);
    for (int64_t i = lane; i < n / 4; i += kWarp) {
      const float4 q = x4[i];
      acc = push(push(push(push(acc, q.x), q.y), q.z), q.w);
    }
    acc = warp_combine(acc);
    for (int64_t i = lane; i < n / 4; i += kWarp) {
      const float4 q = x4[i];
      y4[i] = make_float4(normalize(q.x, acc), normalize(q.y, acc), normalize(q.z, acc),
                          normalize(q.w, acc));
    }
  } else {
    for (int64_t i = lane; i < n; i += kWarp) acc = push(acc, xr[i]);
    acc = warp_combine(acc);
    for (int64_t i = lane; i < n; i += kWarp) yr[i] = normalize(xr[i], acc);
  }
}

template <bool kVec>
__global__ void softmax_fwd_block_rows(const float* __restrict__ x, float* __restrict__ y,
                                       int64_t n) {
  __shared__ MaxSum partial[kBlockRowThreads / kWarp];
  __shared__ MaxSum total;
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * n;
  MaxSum acc{-INFINITY, 0.0f};
  if constexpr (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 q = x4[i];
      acc = push(push(push(push(acc, q.x), q.y), q.z), q.w);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc = push(acc, xr[i]);
  }
  acc = warp_combine(acc);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x / kWarp;
    MaxSum v = lane < nw ? partial[lane] : MaxSum{-INFINITY, 0.0f};
    v = warp_combine(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  const MaxSum r = total;
  if constexpr (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    float4* y4 = reinterpret_cast<float4*>(yr);
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 q = x4[i];
      y4[i] = make_float4(normalize(q.x, r), normalize(q.y, r), normalize(q.z, r),
                          normalize(q.w, r));
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = normalize(xr[i], r);
  }
}

__global__ void softmax_fwd_columns(const float* __restrict__ x, float* __restrict__ y,
                                    int64_t outer, int64_t D, int64_t I) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= outer * I) return;
  const int64_t base = (c / I) * D * I + (c % I);
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t d = 0; d < D; ++d) acc = push(acc, x[base + d * I]);
  for (int64_t d = 0; d < D; ++d) y[base + d * I] = normalize(x[base + d * I], acc);
}

__global__ void softmax_bwd_warp_rows(const float* __restrict__ y, const float* __restrict__ dy,
                                      float* __restrict__ dx, int64_t rows, int64_t n) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const int64_t off = row * n;
  float dot = 0.0f;
  for (int64_t i = lane; i < n; i += kWarp) dot = fmaf(dy[off + i], y[off + i], dot);
  dot = warp_sum(dot);
  for (int64_t i = lane; i < n; i += kWarp) dx[off + i] = (dy[off + i] - dot) * y[off + i];
}

__global__ void softmax_bwd_block_rows(const float* __restrict__ y, const float* __restrict__ dy,
                                       float* __restrict__ dx, int64_t n) {
  __shared__ float partial[kBlockRowThreads / kWarp];
  __shared__ float total;
  const int64_t off = static_cast<int64_t>(blockIdx.x) * n;
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dot = fmaf(dy[off + i], y[off + i], dot);
  dot = warp_sum(dot);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = dot;
  __syncthreads();
  if (warp == 0) {
    float v = lane < static_cast<int>(blockDim.x / kWarp) ? partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  const float s = total;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dx[off + i] = (dy[off + i] - s) * y[off + i];
}

__global__ void softmax_bwd_columns(const float* __restrict__ y, const float* __restrict__ dy,
                                    float* __restrict__ dx, int64_t outer, int64_t D, int64_t I) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= outer * I) return;
  const int64_t base = (c / I) * D * I + (c % I);
  float dot = 0.0f;
  for (int64_t d = 0; d < D; ++d) dot = fmaf(dy[base + d * I], y[base + d * I], dot);
  for (int64_t d = 0; d < D; ++d) dx[base + d * I] = (dy[base + d * I] - dot) * y[base + d * I];
}


constexpr int64_t kMaxGrid = 2147483647;

}  // namespace

Status softmax_fwd_cuda(const SoftmaxShape& s, const float* x, float* y, void* stream) {
  Status st = softmax_check_shape(s);
  if (st != Status::kOk) return st;
  if (s.numel() == 0) return Status::kOk;
  if (x == nullptr || y == nullptr) return Status::kInvalidArgument;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  const bool vec = s.dim % 4 == 0 && aligned16(x) && aligned16(y);
  if (s.inner == 1 && s.dim <= kWarpRowMax) {
    const int threads = 256, rows_per_block = threads / kWarp;
    const int64_t blocks = (s.outer + rows_per_block - 1) / rows_per_block;
    if (blocks > kMaxGrid) return Status::kUnsupported;
    if (vec)
      softmax_fwd_warp_rows<true><<<static_cast<unsigned>(blocks), threads, 0, cs>>>(x, y, s.outer, s.dim);
    else
      softmax_fwd_warp_rows<false><<<static_cast<unsigned>(blocks), threads, 0, cs>>>(x, y, s.outer, s.dim);
  } else if (s.inner == 1) {
    if (s.outer > kMaxGrid) return Status::kUnsupported;
    if (vec)
      softmax_fwd_block_rows<true><<<static_cast<unsigned>(s.outer), kBlockRowThreads, 0, cs>>>(x, y, s.dim);
    else
      softmax_fwd_block_rows<false><<<static_cast<unsigned>(s.outer), kBlockRowThreads, 0, cs>>>(x, y, s.dim);
  } else {
    const int64_t blocks = (s.outer * s.inner + kColumnThreads - 1) / kColumnThreads;
    if (blocks > kMaxGrid) return Status::kUnsupported;
    softmax_fwd_columns<<<static_cast<unsigned>(blocks), kColumnThreads, 0, cs>>>(
        x, y, s.outer, s.dim, s.inner);
  }
  return cuda_launched("softmax forward");
}

Status softmax_bwd_cuda(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                        void* stream) {
  Status st = softmax_check_shape(s);
  if (st != Status::kOk) return st;
  if (s.numel() == 0) return Status::kOk;
  if (y == nullptr || dy == nullptr || dx == nullptr) return Status::kInvalidArgument;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  if (s.inner == 1 && s.dim <= kWarpRowMax) {
    const int threads = 256, rows_per_block = threads / kWarp;
    const int64_t blocks = (s.outer + rows_per_block - 1) / rows_per_block;
    if (blocks > kMaxGrid) return Status::kUnsupported;
    softmax_bwd_warp_rows<<<static_cast<unsigned>(blocks), threads, 0, cs>>>(y, dy, dx, s.outer,
                                                                            s.dim);
  } else if (s.inner == 1) {
    if (s.outer > kMaxGrid) return Status::kUnsupported;
    softmax_bwd_block_rows<<<static_cast<unsigned>(s.outer), kBlockRowThreads, 0, cs>>>(y, dy, dx,
                                                                                       s.dim);
  } else {
    const int64_t blocks = (s.outer * s.inner + kColumnThreads - 1) / kColumnThreads;
    if (blocks > kMaxGrid) return Status::kUnsupported;
    softmax_bwd_columns<<<static_cast<unsigned>(blocks), kColumnThreads, 0, cs>>>(
        y, dy, dx, s.outer, s.dim, s.inner);
  }
  return cuda_launched("softmax backward");
}

}  // namespace dlkern
