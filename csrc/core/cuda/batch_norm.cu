// Batch normalization forward (training and inference) and backward, CUDA, float32, over an
// input viewed as N x C x S (batch_norm.h). Semantics and numerics follow the CPU path:
//
// Statistics are shifted sums: each channel's values are summed as (x - K), K the channel's first
// value, so a large mean (1e4 with unit spread) keeps its variance's digits; a thread sums in
// float over its slice, then the partial sums are combined in double through warp shuffles,
// shared memory and (for grids wider than one CTA per channel) a per-channel pass over the CTAs'
// partials in a fixed order. Shifted sums merge by plain addition, so the result is independent of
// how the work was cut and reproducible run to run (the role Welford/Chan merging plays elsewhere,
// without a division per element).
//
// Kernel versions:
//   bn_reduce_kernel<kStats|kBwd, VEC>  one CTA per (channel, slice): grid-wide for few channels
//                           and large spatial extents (slices chosen to give ~4 CTAs per SM);
//                           VEC reads float4 when S % 4 == 0 and the tensors are 16-byte aligned.
//                           kStats sums (x-K), (x-K)^2; kBwd sums dy, dy*(x-mean) (the two fused
//                           backward reductions, one read of x and dy).
//   bn_finalize_*_kernel    one thread per channel: mean, invstd, running statistics (momentum,
//                           unbiased variance, as torch), and the per-channel affine constants;
//                           inference folds running stats, weight and bias into them directly.
//   bn_apply_kernel<VEC>    y = (x - mean) * scale + shift, or dx = a*dy + b*(x - mean) + c:
//                           one elementwise pass, channel from a multiply-shift division.
// Memory traffic as on CPU: training forward 3 passes over E elements (x read twice, y written),
// inference 2, backward 5 (3 in eval). Every launch is checked.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../batch_norm.h"
#include "check.cuh"
#include "fastdiv.cuh"

namespace dlkern {
namespace cuda_gemm {
int sm_count();  // linear.cu
}

namespace {

constexpr int kThreads = 256;

enum class Reduce { kStats, kBwd };

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Partials: out[c * slices + j] = (s1, s2) over channel c's slice j of its N*S values.
//   kStats: s1 = sum(x - K), s2 = sum((x - K)^2), K = x[c * S]
//   kBwd:   s1 = sum(dy),    s2 = sum(dy * (x - mean[c]))
template <Reduce kMode, bool kVec>
__global__ void __launch_bounds__(kThreads)
    bn_reduce_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                     const float* __restrict__ mean, int C, int S, FastDiv units_per_row,
                     int units, int slices, double2* __restrict__ out) {
  constexpr int V = kVec ? 4 : 1;
  const int c = blockIdx.x / slices, j = blockIdx.x % slices;
  const int per = (units + slices - 1) / slices;
  const int begin = j * per, end = min(units, begin + per);
  const float k = kMode == Reduce::kStats ? x[static_cast<int64_t>(c) * S] : mean[c];
  float a = 0.0f, b = 0.0f;
  for (int u = begin + threadIdx.x; u < end; u += kThreads) {
    const uint32_t n = units_per_row.div(static_cast<uint32_t>(u));
    const int s = (u - static_cast<int>(n) * units_per_row.d) * V;
    const int64_t off = (static_cast<int64_t>(n) * C + c) * S + s;
    float xv[V], gv[V];
    if (kVec) {
      const float4 q = *reinterpret_cast<const float4*>(x + off);
      xv[0] = q.x, xv[1] = q.y, xv[2] = q.z, xv[3] = q.w;
      if (kMode == Reduce::kBwd) {
        const float4 g = *reinterpret_cast<const float4*>(dy + off);
        gv[0] = g.x, gv[1] = g.y, gv[2] = g.z, gv[3] = g.w;
      }
    } else {
      xv[0] = x[off];
      if (kMode == Reduce::kBwd) gv[0] = dy[off];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float d = xv[e] - k;
      if (kMode == Reduce::kStats) {
        a += d;
        b = fmaf(d, d, b);
      } else {
        a += gv[e];
        b = fmaf(gv[e], d, b);
      }
    }
  }
  __shared__ double2 part[kThreads / 32];
  double da = warp_sum(static_cast<double>(a)), db = warp_sum(static_cast<double>(b));
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = make_double2(da, db);
  __syncthreads();
  if (threadIdx.x == 0) {
    double ta = 0.0, tb = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) ta += part[w].x, tb += part[w].y;
    out[blockIdx.x] = make_double2(ta, tb);
  }
}

// Training forward, per channel: statistics, running-statistics update, affine constants.
__global__ void bn_finalize_train_kernel(const double2* __restrict__ part, int slices, int C,
                                         int S, int64_t count, const float* __restrict__ x,
                                         const float* __restrict__ w, const float* __restrict__ b,
                                         double eps, double momentum, float* running_mean,
                                         float* running_var, float* save_mean, float* save_invstd,
                                         float* scale, float* shift) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s1 = 0.0, s2 = 0.0;
  for (int j = 0; j < slices; ++j) s1 += part[c * slices + j].x, s2 += part[c * slices + j].y;
  const double dm = s1 / count;
  double var = s2 / count - dm * dm;
  if (var < 0.0) var = 0.0;  // NaN stays NaN
  const double mean = static_cast<double>(x[static_cast<int64_t>(c) * S]) + dm;
  const double invstd = 1.0 / sqrt(var + eps);
  save_mean[c] = static_cast<float>(mean);
  save_invstd[c] = static_cast<float>(invstd);
  scale[c] = static_cast<float>((w ? w[c] : 1.0) * invstd);
  shift[c] = b ? b[c] : 0.0f;
  if (running_mean)
    running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * mean);
  if (running_var)
    running_var[c] = static_cast<float>((1 - momentum) * running_var[c] +
                                        momentum * var * count / (count - 1));
}

// An empty batch in training: nothing to normalise, running statistics untouched (torch).
__global__ void bn_empty_train_kernel(int C, double eps, float* save_mean, float* save_invstd) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  save_mean[c] = 0.0f;
  save_invstd[c] = static_cast<float>(1.0 / sqrt(eps));
}

// Inference: the running statistics folded with weight and bias.
__global__ void bn_finalize_eval_kernel(int C, const float* __restrict__ rm,
                                        const float* __restrict__ rv, const float* __restrict__ w,
                                        const float* __restrict__ b, double eps, float* mean,
                                        float* scale, float* shift, float* save_mean,
                                        float* save_invstd) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double invstd = 1.0 / sqrt(static_cast<double>(rv[c]) + eps);
  mean[c] = rm[c];
  scale[c] = static_cast<float>((w ? w[c] : 1.0) * invstd);
  shift[c] = b ? b[c] : 0.0f;
  if (save_mean) save_mean[c] = rm[c];
  if (save_invstd) save_invstd[c] = static_cast<float>(invstd);
}

// Backward, per channel: dw, db and the constants of dx = a*dy + bb*(x - mean) + cc.
__global__ void bn_finalize_bwd_kernel(const double2* __restrict__ part, int slices, int C,
                                       int64_t count, const float* __restrict__ w,
                                       const float* __restrict__ invstd, bool training, float* dw,
                                       float* db, float* ka, float* kb, float* kc) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double g = 0.0, p = 0.0;
  if (part != nullptr)
    for (int j = 0; j < slices; ++j) g += part[c * slices + j].x, p += part[c * slices + j].y;
  const double is = invstd[c], wc = w ? w[c] : 1.0;
  if (dw) dw[c] = static_cast<float>(p * is);
  if (db) db[c] = static_cast<float>(g);
  ka[c] = static_cast<float>(wc * is);
  kb[c] = training && count > 0 ? static_cast<float>(-wc * is * is * is * p / count) : 0.0f;
  kc[c] = training && count > 0 ? static_cast<float>(-wc * is * g / count) : 0.0f;
}

// Forward (dy == null): out = (x - mean) * scale + shift.
// Training backward (kb given): out = ka * dy + kb * (x - mean) + kc (scale = ka, shift = kc).
// Eval backward (kb == null): out = ka * dy + kc, x unread, so a NaN or inf in x stays out of dx.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    bn_apply_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                    const float* __restrict__ mean, const float* __restrict__ scale,
                    const float* __restrict__ kb, const float* __restrict__ shift, FastDiv row_len,
                    FastDiv channels, int64_t units, float* __restrict__ out) {
  constexpr int V = kVec ? 4 : 1;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * kThreads) {
    // unit u covers elements u*V .. u*V+V-1, all in one row (S % V == 0): row = u / (S / V)
    const uint32_t row = row_len.div(static_cast<uint32_t>(u));
    const uint32_t c = row - channels.div(row) * channels.d;
    const float sc = scale[c], sh = shift[c];
    const int64_t off = u * V;
    alignas(16) float q[V], g[V], r[V];
    if (dy == nullptr || kb != nullptr) {
      if (kVec) *reinterpret_cast<float4*>(q) = *reinterpret_cast<const float4*>(x + off);
      else q[0] = x[off];
    }
    if (dy != nullptr) {
      if (kVec) *reinterpret_cast<float4*>(g) = *reinterpret_cast<const float4*>(dy + off);
      else g[0] = dy[off];
    }
    const float m = dy == nullptr || kb != nullptr ? mean[c] : 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (dy == nullptr) r[i] = (q[i] - m) * sc + sh;
      else if (kb == nullptr) r[i] = sc * g[i] + sh;
      else r[i] = sc * g[i] + kb[c] * (q[i] - m) + sh;
    }
    if (kVec) *reinterpret_cast<float4*>(out + off) = *reinterpret_cast<const float4*>(r);
    else out[off] = r[0];
  }
}

// ---- host side ------------------------------------------------------------------------------

constexpr int64_t kMax31 = 2147483647LL;

// Element and row indices go through 32-bit FastDiv: tensors up to 2^31 elements (8 GiB).
bool fits(const BatchNormShape& s) { return s.N * s.C * s.S <= kMax31 && s.C <= kMax31 / 4; }

bool vec_ok(const BatchNormShape& s, const float* a, const float* b) {
  return s.S % 4 == 0 && aligned16(a) && (b == nullptr || aligned16(b));
}

// Slices per channel: about 4 CTAs per SM in all, each with at least 2048 values.
int slices_for(const BatchNormShape& s) {
  const int64_t sms = cuda_gemm::sm_count() > 0 ? cuda_gemm::sm_count() : 108;
  int64_t sl = (4 * sms + s.C - 1) / (s.C > 0 ? s.C : 1);
  const int64_t by_size = (s.N * s.S) / 2048;
  if (sl > by_size) sl = by_size;
  if (sl > 1024) sl = 1024;
  return sl < 1 ? 1 : static_cast<int>(sl);
}

// Workspace layout: 4 * C floats (per-channel constants), then C * slices double2 partials.
struct Workspace {
  float *mean, *scale, *kb, *shift;
  double2* part;
};
size_t ws_floats_bytes(int64_t C) { return ((4 * C * sizeof(float) + 15) / 16) * 16; }

bool carve(const BatchNormShape& s, int slices, void* ws, size_t bytes, Workspace* out) {
  const size_t need = ws_floats_bytes(s.C) + static_cast<size_t>(s.C) * slices * sizeof(double2);
  if (ws == nullptr || bytes < need || !aligned16(ws)) return false;
  float* f = static_cast<float*>(ws);
  out->mean = f, out->scale = f + s.C, out->kb = f + 2 * s.C, out->shift = f + 3 * s.C;
  out->part = reinterpret_cast<double2*>(static_cast<char*>(ws) + ws_floats_bytes(s.C));
  return true;
}

unsigned blocks_for(int64_t n, int per) {
  int64_t b = (n + per - 1) / per;
  if (b > 65535 * 16) b = 65535 * 16;  // grid-stride beyond this
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

Status reduce(Reduce mode, const BatchNormShape& s, const float* x, const float* dy,
              const float* mean, int slices, double2* part, cudaStream_t cs) {
  const bool vec = vec_ok(s, x, dy);
  const int v = vec ? 4 : 1;
  const FastDiv upr(static_cast<uint32_t>(s.S / v));
  const int units = static_cast<int>(s.N * s.S / v);
  const unsigned grid = static_cast<unsigned>(s.C * slices);
  const int C = static_cast<int>(s.C), S = static_cast<int>(s.S);
  if (mode == Reduce::kStats) {
    if (vec)
      bn_reduce_kernel<Reduce::kStats, true><<<grid, kThreads, 0, cs>>>(x, dy, mean, C, S, upr, units, slices, part);
    else
      bn_reduce_kernel<Reduce::kStats, false><<<grid, kThreads, 0, cs>>>(x, dy, mean, C, S, upr, units, slices, part);
  } else {
    if (vec)
      bn_reduce_kernel<Reduce::kBwd, true><<<grid, kThreads, 0, cs>>>(x, dy, mean, C, S, upr, units, slices, part);
    else
      bn_reduce_kernel<Reduce::kBwd, false><<<grid, kThreads, 0, cs>>>(x, dy, mean, C, S, upr, units, slices, part);
  }
  return cuda_launched("batchnorm reduction (bn_reduce_kernel)");
}

Status apply(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
             const float* scale, const float* kb, const float* shift, float* out, cudaStream_t cs) {
  const int64_t E = s.N * s.C * s.S;
  if (E == 0) return Status::kOk;
  const bool vec = vec_ok(s, x, dy) && aligned16(out);
  const int v = vec ? 4 : 1;
  const FastDiv row_len(static_cast<uint32_t>(s.S / v)), channels(static_cast<uint32_t>(s.C));
  const int64_t units = E / v;
  const unsigned grid = blocks_for(units, kThreads);
  if (vec)
    bn_apply_kernel<true><<<grid, kThreads, 0, cs>>>(x, dy, mean, scale, kb, shift, row_len, channels, units, out);
  else
    bn_apply_kernel<false><<<grid, kThreads, 0, cs>>>(x, dy, mean, scale, kb, shift, row_len, channels, units, out);
  return cuda_launched("batchnorm elementwise pass (bn_apply_kernel)");
}

unsigned channel_blocks(int64_t C) { return static_cast<unsigned>((C + 127) / 128); }

}  // namespace

size_t batch_norm_cuda_workspace(const BatchNormShape& s) {
  if (s.N < 0 || s.C <= 0 || s.S < 0) return 0;
  return ws_floats_bytes(s.C) + static_cast<size_t>(s.C) * slices_for(s) * sizeof(double2);
}

Status batch_norm_fwd_train_cuda(const BatchNormShape& s, const float* x, const float* w,
                                 const float* b, double eps, double momentum, float* running_mean,
                                 float* running_var, float* y, float* save_mean, float* save_invstd,
                                 void* workspace, size_t workspace_bytes, void* stream) {
  if (s.N < 0 || s.C < 0 || s.S < 0 || !(eps >= 0)) return Status::kInvalidArgument;
  if (s.C == 0) return Status::kOk;
  const int64_t count = s.N * s.S;
  if (count == 1 || save_mean == nullptr || save_invstd == nullptr) return Status::kInvalidArgument;
  if (!fits(s)) return Status::kUnsupported;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  if (count == 0) {
    bn_empty_train_kernel<<<channel_blocks(s.C), 128, 0, cs>>>(static_cast<int>(s.C), eps,
                                                               save_mean, save_invstd);
    return cuda_launched("batchnorm (bn_empty_train_kernel)");
  }
  if (x == nullptr || y == nullptr) return Status::kInvalidArgument;
  const int slices = slices_for(s);
  Workspace ws;
  if (!carve(s, slices, workspace, workspace_bytes, &ws)) return Status::kInvalidArgument;
  Status st = reduce(Reduce::kStats, s, x, nullptr, nullptr, slices, ws.part, cs);
  if (st != Status::kOk) return st;
  bn_finalize_train_kernel<<<channel_blocks(s.C), 128, 0, cs>>>(
      ws.part, slices, static_cast<int>(s.C), static_cast<int>(s.S), count, x, w, b, eps, momentum,
      running_mean, running_var, save_mean, save_invstd, ws.scale, ws.shift);
  st = cuda_launched("batchnorm statistics (bn_finalize_train_kernel)");
  if (st != Status::kOk) return st;
  return apply(s, x, nullptr, save_mean, ws.scale, nullptr, ws.shift, y, cs);
}

Status batch_norm_fwd_eval_cuda(const BatchNormShape& s, const float* x, const float* w,
                                const float* b, const float* running_mean, const float* running_var,
                                double eps, float* y, float* save_mean, float* save_invstd,
                                void* workspace, size_t workspace_bytes, void* stream) {
  if (s.N < 0 || s.C < 0 || s.S < 0 || running_mean == nullptr || running_var == nullptr)
    return Status::kInvalidArgument;
  if (s.C == 0) return Status::kOk;
  if (s.N * s.S > 0 && (x == nullptr || y == nullptr)) return Status::kInvalidArgument;
  if (!fits(s)) return Status::kUnsupported;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  Workspace ws;
  if (!carve(s, 0, workspace, workspace_bytes, &ws)) return Status::kInvalidArgument;
  bn_finalize_eval_kernel<<<channel_blocks(s.C), 128, 0, cs>>>(
      static_cast<int>(s.C), running_mean, running_var, w, b, eps, ws.mean, ws.scale, ws.shift,
      save_mean, save_invstd);
  const Status st = cuda_launched("batchnorm inference (bn_finalize_eval_kernel)");
  if (st != Status::kOk) return st;
  return apply(s, x, nullptr, ws.mean, ws.scale, nullptr, ws.shift, y, cs);
}

Status batch_norm_bwd_cuda(const BatchNormShape& s, const float* x, const float* dy, const float* w,
                           const float* mean, const float* invstd, bool training, float* dx,
                           float* dw, float* db, void* workspace, size_t workspace_bytes,
                           void* stream) {
  if (s.N < 0 || s.C < 0 || s.S < 0) return Status::kInvalidArgument;
  if (s.C == 0) return Status::kOk;
  if (mean == nullptr || invstd == nullptr) return Status::kInvalidArgument;
  if (!fits(s)) return Status::kUnsupported;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  const int64_t count = s.N * s.S;
  const bool need_sums = (dw || db || (dx && training)) && count > 0;
  if (count > 0 && (dy == nullptr || (x == nullptr && (need_sums || (dx && training)))))
    return Status::kInvalidArgument;
  const int slices = need_sums ? slices_for(s) : 0;
  Workspace ws;
  if (!carve(s, slices, workspace, workspace_bytes, &ws)) return Status::kInvalidArgument;
  Status st;
  if (need_sums) {
    st = reduce(Reduce::kBwd, s, x, dy, mean, slices, ws.part, cs);
    if (st != Status::kOk) return st;
  }
  bn_finalize_bwd_kernel<<<channel_blocks(s.C), 128, 0, cs>>>(
      need_sums ? ws.part : nullptr, slices, static_cast<int>(s.C), count, w, invstd, training, dw,
      db, ws.scale, ws.kb, ws.shift);
  st = cuda_launched("batchnorm backward (bn_finalize_bwd_kernel)");
  if (st != Status::kOk || dx == nullptr) return st;
  return apply(s, x, dy, mean, ws.scale, training ? ws.kb : nullptr, ws.shift, dx, cs);
}

}  // namespace dlkern
