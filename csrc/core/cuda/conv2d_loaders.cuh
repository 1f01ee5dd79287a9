// The operand loaders and the NCHW epilogue of conv2d's implicit GEMMs (conv2d.cu), in a header
// so that csrc/tests/test_cuda_loaders.cu can run their index arithmetic on the CPU and compare the
// implicit matrices with the reference convolution, GPU or not. Interface: gemm_tile.cuh.
#pragma once

#include <cstdint>

#include "../conv2d.h"
#include "check.cuh"
#include "gemm_tile.cuh"

namespace dlkern {
namespace cuda_conv {

using cuda_gemm::ldg;

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
  DLKERN_HD State prepare(int64_t grp, int64_t n) const {
    State st;
DLKERN_UNROLL
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
  DLKERN_HD void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    if (k >= k_end) {
      v[0] = v[1] = v[2] = v[3] = 0.0f;
      return;
    }
    const int kk = static_cast<int>(k);
    const int c = kk / g.RS, rs = kk % g.RS;
    const int r = rs / g.S, s = rs % g.S;
    const int64_t plane = static_cast<int64_t>(c) * g.HW;
DLKERN_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int ih = st.ih0[j] + r * g.dh, iw = st.iw0[j] + s * g.dw;
      v[j] = (st.base[j] >= 0 && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                 ? ldg(x + st.base[j] + plane + static_cast<int64_t>(ih) * g.W + iw)
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
  DLKERN_HD void store(int64_t grp, int, int64_t m, int64_t n, float v) const {
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
  DLKERN_HD State prepare(int64_t grp, int64_t c) const {
    return {w + grp * g.Kg * static_cast<int64_t>(g.Cg) * g.RS + c * g.RS, c < g.Cg};
  }
  DLKERN_HD void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
DLKERN_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t kk = k + j;
      if (!st.ok || kk >= k_end) {
        v[j] = 0.0f;
        continue;
      }
      const int m = static_cast<int>(kk) / g.RS, rs = static_cast<int>(kk) % g.RS;
      v[j] = ldg(st.p + static_cast<int64_t>(m) * g.Cg * g.RS + rs);
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
  DLKERN_HD State prepare(int64_t grp, int64_t n) const {
    State st;
DLKERN_UNROLL
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
  DLKERN_HD void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    if (k >= k_end) {
      v[0] = v[1] = v[2] = v[3] = 0.0f;
      return;
    }
    const int kk = static_cast<int>(k);
    const int m = kk / g.RS, rs = kk % g.RS;
    const int r = rs / g.S, s = rs % g.S;
    const int64_t chan = static_cast<int64_t>(m) * g.PQ;
DLKERN_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int th = st.hp[j] - r * g.dh, tw = st.wp[j] - s * g.dw;
      float val = 0.0f;
      if (st.base[j] >= 0 && th >= 0 && tw >= 0 && th % g.sh == 0 && tw % g.sw == 0) {
        const int p = th / g.sh, q = tw / g.sw;
        if (p < g.P && q < g.Q) val = ldg(dy + st.base[j] + chan + p * g.Q + q);
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
  DLKERN_HD State prepare(int64_t grp, int64_t m) const {
    return {(grp * g.Kg + m) * g.PQ, m < g.Kg};
  }
  DLKERN_HD void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    const int k32 = static_cast<int>(k);  // N*P*Q < 2^31 (host-checked)
    int img = k32 / g.PQ, pq = k32 % g.PQ;
DLKERN_UNROLL
    for (int j = 0; j < 4; ++j) {
      v[j] = (st.ok && k + j < k_end)
                 ? ldg(dy + static_cast<int64_t>(img) * g.K * g.PQ + st.base + pq)
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
  DLKERN_HD State prepare(int64_t grp, int64_t n) const {
    State st;
    st.ok = n < static_cast<int64_t>(g.Cg) * g.RS;
    const int nn = st.ok ? static_cast<int>(n) : 0;
    const int c = nn / g.RS, rs = nn % g.RS;
    st.plane = (grp * g.Cg + c) * static_cast<int64_t>(g.HW);
    st.roff = (rs / g.S) * g.dh - g.ph;
    st.soff = (rs % g.S) * g.dw - g.pw;
    return st;
  }
  DLKERN_HD void load(const State& st, int64_t, int64_t k, int64_t k_end, float v[4]) const {
    const int k32 = static_cast<int>(k);
    int img = k32 / g.PQ, pq = k32 % g.PQ;
    int p = pq / g.Q, q = pq % g.Q;
DLKERN_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int ih = p * g.sh + st.roff, iw = q * g.sw + st.soff;
      v[j] = (st.ok && k + j < k_end && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                 ? ldg(x + static_cast<int64_t>(img) * g.C * g.HW + st.plane +
                         static_cast<int64_t>(ih) * g.W + iw)
                 : 0.0f;
      if (++q == g.Q) {
        q = 0;
        if (++p == g.P) p = 0, ++img;
      }
    }
  }
};

constexpr int64_t kMax32 = 2147483647LL;

inline bool fits32(const Conv2dShape& s) {
  const int64_t CRS = s.C / s.groups * s.R * s.S, KRS = s.K / s.groups * s.R * s.S;
  return s.N * s.H * s.W <= kMax32 && s.N * s.P * s.Q <= kMax32 && CRS <= kMax32 &&
         KRS <= kMax32 && s.K * s.P * s.Q <= kMax32 && s.C * s.H * s.W <= kMax32 &&
         s.groups <= 65535;
}

inline Geo geo_of(const Conv2dShape& s) {
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
inline bool plain_1x1(const Conv2dShape& s) {
  return s.groups == 1 && s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 &&
         s.pad_h == 0 && s.pad_w == 0 && s.P == s.H && s.Q == s.W;
}

inline cuda_gemm::MatLoader<false> rows_contiguous(const float* data, int64_t rows, int64_t s_k,
                                 int64_t batch_stride) {
  cuda_gemm::MatLoader<false> l;
  l.data = data, l.rows = rows, l.s_row = 1, l.s_k = s_k, l.batch_stride = batch_stride;
  l.vec = s_k % 4 == 0 && batch_stride % 4 == 0 && aligned16(data);
  return l;
}

// The GEMM sizes (batch, M, N, K) of each pass.
struct Dims {
  int64_t batch, M, N, K;
};
inline Dims fwd_dims(const Conv2dShape& s) {
  if (plain_1x1(s)) return {s.N, s.K, s.H * s.W, s.C};
  return {s.groups, s.K / s.groups, s.N * s.P * s.Q, s.C / s.groups * s.R * s.S};
}
inline Dims dx_dims(const Conv2dShape& s) {
  if (plain_1x1(s)) return {s.N, s.C, s.H * s.W, s.K};
  return {s.groups, s.C / s.groups, s.N * s.H * s.W, s.K / s.groups * s.R * s.S};
}
inline Dims dw_dims(const Conv2dShape& s) {
  return {s.groups, s.K / s.groups, s.C / s.groups * s.R * s.S, s.N * s.P * s.Q};
}


// The operands and epilogue of each pass, built here for conv2d.cu and for the CPU-side test.
struct FwdIm2col {  // y_g = W_g x col_g
  cuda_gemm::MatLoader<true> a;
  ImColLoader b;
  NchwStore epi;
};
inline FwdIm2col fwd_im2col(const Conv2dShape& s, const float* x, const float* w,
                            const float* bias, float* y) {
  const Geo g = geo_of(s);
  const int64_t crs = static_cast<int64_t>(g.Cg) * g.RS;
  FwdIm2col o{{}, {x, g}, {y, bias, g.K, g.Kg, g.PQ}};
  o.a.data = w, o.a.rows = g.Kg, o.a.s_row = crs, o.a.s_k = 1, o.a.batch_stride = g.Kg * crs;
  o.a.vec = crs % 4 == 0 && aligned16(w);
  return o;
}

struct Fwd1x1 {  // y_img = W x_img
  cuda_gemm::MatLoader<true> a;
  cuda_gemm::MatLoader<false> b;
  cuda_gemm::MatStore epi;
};
inline Fwd1x1 fwd_1x1(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                      float* y) {
  Fwd1x1 o;
  o.a.data = w, o.a.rows = s.K, o.a.s_row = s.C, o.a.s_k = 1, o.a.batch_stride = 0;
  o.a.vec = s.C % 4 == 0 && aligned16(w);
  o.b = rows_contiguous(x, s.H * s.W, s.H * s.W, s.C * s.H * s.W);
  o.epi.c = y, o.epi.ldc = s.H * s.W, o.epi.batch_stride = s.K * s.H * s.W, o.epi.row_bias = bias;
  return o;
}

struct DxGather {  // dx_g = W_g^T x dcol_g
  WeightTLoader a;
  DyGatherLoader b;
  NchwStore epi;
};
inline DxGather dx_gather(const Conv2dShape& s, const float* w, const float* dy, float* dx) {
  const Geo g = geo_of(s);
  return {{w, g}, {dy, g}, {dx, nullptr, g.C, g.Cg, g.HW}};
}

struct Dx1x1 {  // dx_img = W^T dy_img
  cuda_gemm::MatLoader<false> a, b;
  cuda_gemm::MatStore epi;
};
inline Dx1x1 dx_1x1(const Conv2dShape& s, const float* w, const float* dy, float* dx) {
  Dx1x1 o;
  o.a = rows_contiguous(w, s.C, s.C, 0);  // row c, k = m -> w[m * C + c]
  o.b = rows_contiguous(dy, s.H * s.W, s.H * s.W, s.K * s.H * s.W);
  o.epi.c = dx, o.epi.ldc = s.H * s.W, o.epi.batch_stride = s.C * s.H * s.W;
  return o;
}

struct Dw {  // dW_g = dy_g x col_g^T
  DyRowLoader a;
  ColTLoader b;
  cuda_gemm::MatStore epi;
};
inline Dw dw_implicit(const Conv2dShape& s, const float* x, const float* dy, float* dw) {
  const Geo g = geo_of(s);
  const Dims d = dw_dims(s);
  Dw o{{dy, g}, {x, g}, {}};
  o.epi.c = dw, o.epi.ldc = d.N, o.epi.batch_stride = d.M * d.N;
  return o;
}

}  // namespace cuda_conv
}  // namespace dlkern
