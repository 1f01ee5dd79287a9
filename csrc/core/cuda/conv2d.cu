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
#include "gemm_tile.cuh"

namespace dlkern {
namespace {

using cuda_gemm::MatLoader;
using cuda_gemm::MatStore;
using cuda_gemm::Plan;

// Geometry shared by the loaders, as 32-bit values (checked on the host).
struct Geo {
  int C, H, W, K, R, S, Cg, Kg, P, Q;
  int sh, sw, ph, pw, dh, dw;
  int HW, PQ, RS;
  int n_img;
};

// Forward B operand: row n = (img, p, q), k = (c, r, s) -> x[img, g*Cg + c, ih, iw].
struct ImColLoader {
  static constexpr bool kAlongK = false;
  const float* x;
  Geo g;
  struct State {
    int64_t base[4];  // x offset of (img, g*Cg, 0, 0); -1 past the last position
    int ih0[4], iw0[4];
  };
  __device__ State prepare(int64_t grp, int64_t n) const {
    State st;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t nn = n + j;
      if (nn >= static_cast<int64_t>(g.n_img) * g.PQ) {
        st.base[j] = -1, st.ih0[j] = 0, st.iw0[j] = 0;
        continue;
      }
      const int img = static_cast<int>(nn / g.PQ), pq = static_cast<int>(nn % g.PQ);
      const int p = pq / g.Q, q = pq % g.Q;
      st.base[j] = (static_cast<int64_t>(img) * g.C + grp * g.Cg) * g.HW;
      st.ih0[j] = p * g.sh - g.ph;
      st.iw0[j] = q * g.sw - g.pw;
    }
    return st;
  }
  __device__ void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    if (k >= k_end) {
      v[0] = v[1] = v[2] = v[3] = 0.0f;
      return;
    }
    const int kk = static_cast<int>(k);
    const int c = kk / g.RS, rs = kk % g.RS;
    const int r = rs / g.S, s = rs % g.S;
    const int64_t plane = static_cast<int64_t>(c) * g.HW;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int ih = st.ih0[j] + r * g.dh, iw = st.iw0[j] + s * g.dw;
      v[j] = (st.base[j] >= 0 && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                 ? __ldg(x + st.base[j] + plane + static_cast<int64_t>(ih) * g.W + iw)
                 : 0.0f;
    }
  }
};

// y (or dx) in NCHW: GEMM (m, n) of group grp -> channel grp*per_group + m, position n = (img, i)
// over `plane` positions per image; plus bias[channel] when given.
struct NchwStore {
  float* out;
  const float* bias;
  int channels, per_group, plane;
  __device__ void store(int64_t grp, int, int64_t m, int64_t n, float v) const {
    const int64_t ch = grp * per_group + m;
    const int64_t img = n / plane, i = n % plane;
    out[(img * channels + ch) * plane + i] = bias ? v + bias[ch] : v;
  }
};

// Backward-data A operand: row c (input channel in the group), k = (m, r, s) -> w[g*Kg+m, c, r, s].
struct WeightTLoader {
  static constexpr bool kAlongK = true;
  const float* w;
  Geo g;
  struct State {
    const float* p;
    bool ok;
  };
  __device__ State prepare(int64_t grp, int64_t c) const {
    return {w + grp * g.Kg * static_cast<int64_t>(g.Cg) * g.RS + c * g.RS, c < g.Cg};
  }
  __device__ void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t kk = k + j;
      if (!st.ok || kk >= k_end) {
        v[j] = 0.0f;
        continue;
      }
      const int m = static_cast<int>(kk) / g.RS, rs = static_cast<int>(kk) % g.RS;
      v[j] = __ldg(st.p + static_cast<int64_t>(m) * g.Cg * g.RS + rs);
    }
  }
};

// Backward-data B operand: row n = (img, h, w), k = (m, r, s) -> dy[img, g*Kg+m, p, q] where
// p*sh = h + ph - r*dh and q*sw = w + pw - s*dw, 0 when that has no integer solution in range.
struct DyGatherLoader {
  static constexpr bool kAlongK = false;
  const float* dy;
  Geo g;
  struct State {
    int64_t base[4];  // dy offset of (img, g*Kg, 0, 0); -1 past the last position
    int hp[4], wp[4];
  };
  __device__ State prepare(int64_t grp, int64_t n) const {
    State st;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t nn = n + j;
      if (nn >= static_cast<int64_t>(g.n_img) * g.HW) {
        st.base[j] = -1, st.hp[j] = 0, st.wp[j] = 0;
        continue;
      }
      const int img = static_cast<int>(nn / g.HW), hw = static_cast<int>(nn % g.HW);
      st.base[j] = (static_cast<int64_t>(img) * g.K + grp * g.Kg) * g.PQ;
      st.hp[j] = hw / g.W + g.ph;
      st.wp[j] = hw % g.W + g.pw;
    }
    return st;
  }
  __device__ void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    if (k >= k_end) {
      v[0] = v[1] = v[2] = v[3] = 0.0f;
      return;
    }
    const int kk = static_cast<int>(k);
    const int m = kk / g.RS, rs = kk % g.RS;
    const int r = rs / g.S, s = rs % g.S;
    const int64_t chan = static_cast<int64_t>(m) * g.PQ;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int th = st.hp[j] - r * g.dh, tw = st.wp[j] - s * g.dw;
      float val = 0.0f;
      if (st.base[j] >= 0 && th >= 0 && tw >= 0 && th % g.sh == 0 && tw % g.sw == 0) {
        const int p = th / g.sh, q = tw / g.sw;
        if (p < g.P && q < g.Q) val = __ldg(dy + st.base[j] + chan + p * g.Q + q);
      }
      v[j] = val;
    }
  }
};

// Backward-weight A operand: row m (output channel in the group), k = (img, p, q) -> dy.
struct DyRowLoader {
  static constexpr bool kAlongK = true;
  const float* dy;
  Geo g;
  struct State {
    int64_t base;  // offset of (0, g*Kg + m, 0, 0)
    bool ok;
  };
  __device__ State prepare(int64_t grp, int64_t m) const {
    return {(grp * g.Kg + m) * g.PQ, m < g.Kg};
  }
  __device__ void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    const int k32 = static_cast<int>(k);  // N*P*Q < 2^31 (host-checked)
    int img = k32 / g.PQ, pq = k32 % g.PQ;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = (st.ok && k + j < k_end)
                 ? __ldg(dy + static_cast<int64_t>(img) * g.K * g.PQ + st.base + pq)
                 : 0.0f;
      if (++pq == g.PQ) pq = 0, ++img;
    }
  }
};

// Backward-weight B operand: row n = (c, r, s), k = (img, p, q) -> x[img, g*Cg+c, ih, iw].
struct ColTLoader {
  static constexpr bool kAlongK = true;
  const float* x;
  Geo g;
  struct State {
    int64_t plane;  // offset of (0, g*Cg + c, 0, 0)
    int roff, soff;
    bool ok;
  };
  __device__ State prepare(int64_t grp, int64_t n) const {
    State st;
    st.ok = n < static_cast<int64_t>(g.Cg) * g.RS;
    const int nn = st.ok ? static_cast<int>(n) : 0;
    const int c = nn / g.RS, rs = nn % g.RS;
    st.plane = (grp * g.Cg + c) * static_cast<int64_t>(g.HW);
    st.roff = (rs / g.S) * g.dh - g.ph;
    st.soff = (rs % g.S) * g.dw - g.pw;
    return st;
  }
  __device__ void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    const int k32 = static_cast<int>(k);
    int img = k32 / g.PQ, pq = k32 % g.PQ;
    int p = pq / g.Q, q = pq % g.Q;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int ih = p * g.sh + st.roff, iw = q * g.sw + st.soff;
      v[j] = (st.ok && k + j < k_end && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                 ? __ldg(x + static_cast<int64_t>(img) * g.C * g.HW + st.plane +
                         static_cast<int64_t>(ih) * g.W + iw)
                 : 0.0f;
      if (++q == g.Q) {
        q = 0;
        if (++p == g.P) p = 0, ++img;
      }
    }
  }
};

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

constexpr int64_t kMax32 = 2147483647LL;

bool fits32(const Conv2dShape& s) {
  const int64_t CRS = s.C / s.groups * s.R * s.S, KRS = s.K / s.groups * s.R * s.S;
  return s.N * s.H * s.W <= kMax32 && s.N * s.P * s.Q <= kMax32 && CRS <= kMax32 &&
         KRS <= kMax32 && s.K * s.P * s.Q <= kMax32 && s.C * s.H * s.W <= kMax32 &&
         s.groups <= 65535;
}

Geo geo_of(const Conv2dShape& s) {
  Geo g;
  g.C = static_cast<int>(s.C), g.H = static_cast<int>(s.H), g.W = static_cast<int>(s.W);
  g.K = static_cast<int>(s.K), g.R = static_cast<int>(s.R), g.S = static_cast<int>(s.S);
  g.Cg = static_cast<int>(s.C / s.groups), g.Kg = static_cast<int>(s.K / s.groups);
  g.P = static_cast<int>(s.P), g.Q = static_cast<int>(s.Q);
  g.sh = static_cast<int>(s.stride_h), g.sw = static_cast<int>(s.stride_w);
  g.ph = static_cast<int>(s.pad_h), g.pw = static_cast<int>(s.pad_w);
  g.dh = static_cast<int>(s.dil_h), g.dw = static_cast<int>(s.dil_w);
  g.HW = g.H * g.W, g.PQ = g.P * g.Q, g.RS = g.R * g.S;
  g.n_img = static_cast<int>(s.N);
  return g;
}

// 1x1, stride 1, no padding, one group: y_img = W x_img is a plain GEMM per image.
bool plain_1x1(const Conv2dShape& s) {
  return s.groups == 1 && s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 &&
         s.pad_h == 0 && s.pad_w == 0 && s.P == s.H && s.Q == s.W;
}

MatLoader<false> rows_contiguous(const float* data, int64_t rows, int64_t s_k,
                                 int64_t batch_stride) {
  MatLoader<false> l;
  l.data = data, l.rows = rows, l.s_row = 1, l.s_k = s_k, l.batch_stride = batch_stride;
  l.vec = s_k % 4 == 0 && batch_stride % 4 == 0 && aligned16(data);
  return l;
}

// The GEMM sizes (batch, M, N, K) of each pass.
struct Dims {
  int64_t batch, M, N, K;
};
Dims fwd_dims(const Conv2dShape& s) {
  if (plain_1x1(s)) return {s.N, s.K, s.H * s.W, s.C};
  return {s.groups, s.K / s.groups, s.N * s.P * s.Q, s.C / s.groups * s.R * s.S};
}
Dims dx_dims(const Conv2dShape& s) {
  if (plain_1x1(s)) return {s.N, s.C, s.H * s.W, s.K};
  return {s.groups, s.C / s.groups, s.N * s.H * s.W, s.K / s.groups * s.R * s.S};
}
Dims dw_dims(const Conv2dShape& s) {
  return {s.groups, s.K / s.groups, s.C / s.groups * s.R * s.S, s.N * s.P * s.Q};
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
  if (x == nullptr || w == nullptr || y == nullptr) return Status::kInvalidArgument;
  if (!fits32(s)) return Status::kUnsupported;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  float* ws = static_cast<float*>(workspace);
  const size_t wsb = ws == nullptr ? 0 : workspace_bytes;
  const Dims d = fwd_dims(s);
  Plan p;
  if (!plan_for(d, wsb, &p)) return Status::kUnsupported;
  cudaError_t e;
  if (plain_1x1(s)) {
    MatLoader<true> a;  // W: K x C, rows contiguous along k
    a.data = w, a.rows = s.K, a.s_row = s.C, a.s_k = 1, a.batch_stride = 0;
    a.vec = s.C % 4 == 0 && aligned16(w);
    const auto b = rows_contiguous(x, s.H * s.W, s.H * s.W, s.C * s.H * s.W);
    MatStore epi;
    epi.c = y, epi.ldc = s.H * s.W, epi.batch_stride = s.K * s.H * s.W, epi.row_bias = bias;
    e = cuda_gemm::launch(p, a, b, epi, d.batch, d.M, d.N, d.K, ws, cs);
  } else {
    const Geo g = geo_of(s);
    MatLoader<true> a;  // W_g: Kg x Cg*R*S
    a.data = w, a.rows = g.Kg, a.s_row = d.K, a.s_k = 1, a.batch_stride = g.Kg * d.K;
    a.vec = d.K % 4 == 0 && aligned16(w);
    const ImColLoader b{x, g};
    const NchwStore epi{y, bias, g.K, g.Kg, g.PQ};
    e = cuda_gemm::launch(p, a, b, epi, d.batch, d.M, d.N, d.K, ws, cs);
  }
  return cuda_status(e, "conv2d forward (gemm_tile_kernel)");
}

Status conv2d_bwd_cuda(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw, float* db, void* workspace, size_t workspace_bytes,
                       void* stream) {
  Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  if (!fits32(s)) return Status::kUnsupported;
  const bool empty_out = s.N == 0 || s.P == 0 || s.Q == 0;  // dy is empty: gradients are zeros
  if ((!empty_out && dy == nullptr) || (dx && s.N * s.C * s.H * s.W > 0 && s.K > 0 && !w) ||
      (dw && !empty_out && s.C > 0 && !x))
    return Status::kInvalidArgument;
  cudaStream_t cs = static_cast<cudaStream_t>(stream);
  float* ws = static_cast<float*>(workspace);
  const size_t wsb = ws == nullptr ? 0 : workspace_bytes;
  const Geo g = geo_of(s);

  if (dx != nullptr && s.N * s.C * s.H * s.W > 0) {
    const Dims d = dx_dims(s);
    Plan p;
    if (!plan_for(d, wsb, &p)) return Status::kUnsupported;
    cudaError_t e;
    if (plain_1x1(s)) {
      const auto a = rows_contiguous(w, s.C, s.C, 0);  // W^T: row c, k = m -> w[m * C + c]
      const auto b = rows_contiguous(dy, s.H * s.W, s.H * s.W, s.K * s.H * s.W);
      MatStore epi;
      epi.c = dx, epi.ldc = s.H * s.W, epi.batch_stride = s.C * s.H * s.W;
      e = cuda_gemm::launch(p, a, b, epi, d.batch, d.M, d.N, d.K, ws, cs);
    } else {
      const WeightTLoader a{w, g};
      const DyGatherLoader b{dy, g};
      const NchwStore epi{dx, nullptr, g.C, g.Cg, g.HW};
      e = cuda_gemm::launch(p, a, b, epi, d.batch, d.M, d.N, d.K, ws, cs);
    }
    st = cuda_status(e, "conv2d backward data (gemm_tile_kernel)");
    if (st != Status::kOk) return st;
  }
  if (dw != nullptr && s.K * s.C / s.groups * s.R * s.S > 0) {
    const Dims d = dw_dims(s);
    Plan p;
    if (!plan_for(d, wsb, &p)) return Status::kUnsupported;
    const DyRowLoader a{dy, g};
    const ColTLoader b{x, g};
    MatStore epi;
    epi.c = dw, epi.ldc = d.N, epi.batch_stride = d.M * d.N;
    // K = 0 (an empty batch) still runs: every tile stores its zero accumulators.
    st = cuda_status(cuda_gemm::launch(p, a, b, epi, d.batch, d.M, d.N, d.K, ws, cs),
                     "conv2d backward weight (gemm_tile_kernel)");
    if (st != Status::kOk) return st;
  }
  if (db != nullptr && s.K > 0) {
    if (empty_out) {
      st = cuda_status(cudaMemsetAsync(db, 0, s.K * sizeof(float), cs), "conv2d bias gradient");
    } else {
      channel_sum_kernel<<<static_cast<unsigned>(s.K), 256, 0, cs>>>(dy, g.n_img, g.K, g.PQ, db);
      st = cuda_launched("conv2d bias gradient (channel_sum_kernel)");
    }
  }
  return st;
}

}  // namespace dlkern
