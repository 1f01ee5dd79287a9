// The CUDA GEMM main loop shared by dense (linear.cu) and conv2d (conv2d.cu):
//   C[b][m, n] = sum_k A[b](m, k) * B[b](n, k),   b = a batch index (conv groups or images).
//
// The loop knows nothing of where A and B come from. Each operand is a *loader*: given a row
// (m for A, n for B) fixed for the thread's whole run and a k, it returns four consecutive
// elements, either along k (kAlongK) or along the rows, zero outside the matrix. A strided
// matrix is one loader (MatLoader, 128-bit loads when aligned); conv2d's im2col and its
// transposes are others (conv2d.cu), so convolution runs as an implicit GEMM with no column
// matrix in memory. The result goes through an *epilogue* (store(b, split, m, n, v)), which adds
// biases, accumulates, or scatters into NCHW.
//
// Tiles (llm.c / siboehm-style SGEMM): a BM x BN block per CTA, BK deep, staged in shared memory
// k-major (As[k][m], Bs[k][n]), double buffered: the next BK slice is loaded from global memory
// into registers while the current one is multiplied from shared memory, so one __syncthreads
// per slice suffices. Each thread owns TM x TN outputs as (TM/4) x (TN/4) blocks of 4x4, the
// blocks spread BM/(TM/4) rows apart so that the shared-memory reads are float4 and each warp
// reads contiguous 128-bit words (no bank conflicts). Shared rows are padded by 4 floats: the
// transposing stores of along-k loaders then spread over banks.
//
// Split-K: when the M x N tiles are too few to fill the GPU (a dense layer at small batch, the
// weight gradient of a convolution), the k range is cut into `splits` slices, each CTA writes
// its partial tile to a workspace, and gemm_splitk_reduce sums the slices in a fixed order
// (deterministic, unlike atomics) and applies the real epilogue.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dlkern {
namespace cuda_gemm {

// Loaders and epilogues are __host__ __device__: csrc/tests/test_cuda_loaders.cu calls them on the
// CPU to check their index arithmetic against the reference convolution without a GPU.
#define DLKERN_HD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__
#define DLKERN_UNROLL _Pragma("unroll")
#else
#define DLKERN_UNROLL  // the host compiler does not know the pragma
#endif

DLKERN_HD float ldg(const float* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

template <int BM_, int BN_, int BK_, int TM_, int TN_, int kMinBlocks_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kMinBlocks = kMinBlocks_;  // CTAs per SM the register budget must allow
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kPad = 4;
  static_assert(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0, "4-wide register blocks");
  static_assert((BM * BK / 4) % kThreads == 0 && (BN * BK / 4) % kThreads == 0,
                "every thread loads the same number of 4-element units");
};
// 128x128 blocks, 8x8 per thread: for large M and N (arithmetic intensity 32 FMA per loaded
// float). Capping it at 128 registers for two CTAs per SM made ptxas spill 30-80 bytes (sm_90,
// CUDA 13.0), so it runs one 8-warp CTA per SM and hides latency with its 64 independent
// accumulators and the one-slice-ahead prefetch. 64x64 blocks, 4x4 per thread, 16 deep: four
// times the CTAs, for medium sizes (~70 registers, no spills).
using BigTile = TileConfig<128, 128, 8, 8, 8, 1>;
using SmallTile = TileConfig<64, 64, 16, 4, 4, 2>;

// A strided matrix: element (row, k) of batch b at data[b * batch_stride + row * s_row + k * s_k].
// kAlongK: the 4-element units run along k (s_k == 1 is the fast case); otherwise along rows.
// `vec` (host-checked): the unit's stride is 1 and every unit start is 16-byte aligned.
template <bool kAlongK_>
struct MatLoader {
  static constexpr bool kAlongK = kAlongK_;
  const float* data = nullptr;
  int64_t rows = 0, s_row = 0, s_k = 0, batch_stride = 0;
  bool vec = false;

  struct State {
    const float* p;
  };
  DLKERN_HD State prepare(int64_t b, int64_t row) const {
    return {data + b * batch_stride + row * s_row};
  }
  DLKERN_HD void load(const State& st, int64_t row, int64_t k, int64_t k_end, float v[4]) const {
    if (kAlongK) {
      if (vec && row < rows && k + 3 < k_end) {
        const float4 q = *reinterpret_cast<const float4*>(st.p + k);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
        return;
      }
DLKERN_UNROLL
      for (int j = 0; j < 4; ++j)
        v[j] = (row < rows && k + j < k_end) ? ldg(st.p + (k + j) * s_k) : 0.0f;
    } else {
      if (vec && row + 3 < rows && k < k_end) {
        const float4 q = *reinterpret_cast<const float4*>(st.p + k * s_k);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
        return;
      }
DLKERN_UNROLL
      for (int j = 0; j < 4; ++j)
        v[j] = (row + j < rows && k < k_end) ? ldg(st.p + j * s_row + k * s_k) : 0.0f;
    }
  }
};

// C[b] row-major with leading dimension ldc: C = A*B (+ bias[n]) (+ row_bias[m]), or C += A*B.
struct MatStore {
  float* c = nullptr;
  int64_t ldc = 0, batch_stride = 0;
  const float* bias = nullptr;
  const float* row_bias = nullptr;
  bool accumulate = false;
  DLKERN_HD void store(int64_t b, int, int64_t m, int64_t n, float v) const {
    float* p = c + b * batch_stride + m * ldc + n;
    if (bias) v += bias[n];
    if (row_bias) v += row_bias[m];
    *p = accumulate ? *p + v : v;
  }
};

// Split-K partial tiles: ws[(b * splits + split) * M * N + m * N + n].
struct PartialStore {
  float* ws = nullptr;
  int64_t M = 0, N = 0;
  int splits = 1;
  DLKERN_HD void store(int64_t b, int split, int64_t m, int64_t n, float v) const {
    ws[((b * splits + split) * M + m) * N + n] = v;
  }
};

// The main loop, one piece on purpose (about 110 lines): the shared-memory double buffers, the
// accumulator tile and the prefetch registers all belong to one software-pipelined loop; split
// into functions they would only be passed around, and no part would read alone.
template <class Cfg, class LA, class LB, class Epi>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    gemm_tile_kernel(LA la, LB lb, Epi epi, int64_t M, int64_t N, int64_t K, int splits,
                     int64_t k_per_split) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  constexpr int kT = Cfg::kThreads, kPad = Cfg::kPad;
  constexpr int kUnitsA = BM * BK / 4 / kT, kUnitsB = BN * BK / 4 / kT;
  __shared__ __align__(16) float As[2][BK][BM + kPad];
  __shared__ __align__(16) float Bs[2][BK][BN + kPad];

  const int tid = threadIdx.x;
  const int64_t b = blockIdx.z / splits;
  const int split = static_cast<int>(blockIdx.z % splits);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t k_begin = split * k_per_split;
  const int64_t k_end = k_begin + k_per_split < K ? k_begin + k_per_split : K;

  // Each unit's (row, k) offset inside the tile; the row is fixed for the whole k loop.
  int ra_row[kUnitsA], ra_k[kUnitsA], rb_row[kUnitsB], rb_k[kUnitsB];
  typename LA::State sa[kUnitsA];
  typename LB::State sb[kUnitsB];
DLKERN_UNROLL
  for (int u = 0; u < kUnitsA; ++u) {
    const int id = tid + u * kT;
    ra_row[u] = LA::kAlongK ? id / (BK / 4) : (id % (BM / 4)) * 4;
    ra_k[u] = LA::kAlongK ? (id % (BK / 4)) * 4 : id / (BM / 4);
    sa[u] = la.prepare(b, m0 + ra_row[u]);
  }
DLKERN_UNROLL
  for (int u = 0; u < kUnitsB; ++u) {
    const int id = tid + u * kT;
    rb_row[u] = LB::kAlongK ? id / (BK / 4) : (id % (BN / 4)) * 4;
    rb_k[u] = LB::kAlongK ? (id % (BK / 4)) * 4 : id / (BN / 4);
    sb[u] = lb.prepare(b, n0 + rb_row[u]);
  }

  float va[kUnitsA][4], vb[kUnitsB][4];
  auto fetch = [&](int64_t k0) {
DLKERN_UNROLL
    for (int u = 0; u < kUnitsA; ++u) la.load(sa[u], m0 + ra_row[u], k0 + ra_k[u], k_end, va[u]);
DLKERN_UNROLL
    for (int u = 0; u < kUnitsB; ++u) lb.load(sb[u], n0 + rb_row[u], k0 + rb_k[u], k_end, vb[u]);
  };
  auto stash = [&](int buf) {
DLKERN_UNROLL
    for (int u = 0; u < kUnitsA; ++u) {
      if (LA::kAlongK) {
DLKERN_UNROLL
        for (int j = 0; j < 4; ++j) As[buf][ra_k[u] + j][ra_row[u]] = va[u][j];
      } else {
        *reinterpret_cast<float4*>(&As[buf][ra_k[u]][ra_row[u]]) =
            make_float4(va[u][0], va[u][1], va[u][2], va[u][3]);
      }
    }
DLKERN_UNROLL
    for (int u = 0; u < kUnitsB; ++u) {
      if (LB::kAlongK) {
DLKERN_UNROLL
        for (int j = 0; j < 4; ++j) Bs[buf][rb_k[u] + j][rb_row[u]] = vb[u][j];
      } else {
        *reinterpret_cast<float4*>(&Bs[buf][rb_k[u]][rb_row[u]]) =
            make_float4(vb[u][0], vb[u][1], vb[u][2], vb[u][3]);
      }
    }
  };

  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  constexpr int kRowStride = BM / (TM / 4), kColStride = BN / (TN / 4);
  float acc[TM][TN];
DLKERN_UNROLL
  for (int i = 0; i < TM; ++i)
DLKERN_UNROLL
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  int buf = 0;
  if (k_begin < k_end) {
    fetch(k_begin);
    stash(0);
  }
  __syncthreads();
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    const bool more = k0 + BK < k_end;
    if (more) fetch(k0 + BK);
DLKERN_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], bv[TN];
DLKERN_UNROLL
      for (int i = 0; i < TM / 4; ++i) {
        const float4 q = *reinterpret_cast<const float4*>(&As[buf][kk][i * kRowStride + ty * 4]);
        a[i * 4 + 0] = q.x, a[i * 4 + 1] = q.y, a[i * 4 + 2] = q.z, a[i * 4 + 3] = q.w;
      }
DLKERN_UNROLL
      for (int j = 0; j < TN / 4; ++j) {
        const float4 q = *reinterpret_cast<const float4*>(&Bs[buf][kk][j * kColStride + tx * 4]);
        bv[j * 4 + 0] = q.x, bv[j * 4 + 1] = q.y, bv[j * 4 + 2] = q.z, bv[j * 4 + 3] = q.w;
      }
DLKERN_UNROLL
      for (int i = 0; i < TM; ++i)
DLKERN_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
    }
    if (more) stash(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

DLKERN_UNROLL
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + (i / 4) * kRowStride + ty * 4 + (i % 4);
    if (m >= M) continue;
DLKERN_UNROLL
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + (j / 4) * kColStride + tx * 4 + (j % 4);
      if (n < N) epi.store(b, split, m, n, acc[i][j]);
    }
  }
}

// out(b, m, n) = sum over split s (in order) of ws[b][s][m][n], through the real epilogue.
template <class Epi>
__global__ void gemm_splitk_reduce(const float* __restrict__ ws, Epi epi, int64_t batch,
                                   int64_t M, int64_t N, int splits) {
  const int64_t total = batch * M * N;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / (M * N), mn = i % (M * N);
    const float* p = ws + b * splits * M * N + mn;
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += p[s * M * N];
    epi.store(b, 0, mn / N, mn % N, v);
  }
}

// How a problem is cut: tile shape, split count, grid. Chosen on the host from the sizes and the
// GPU's SM count (plan()), so every caller (dense, conv) shares the same heuristics.
struct Plan {
  bool big = true;
  int splits = 1;
  int64_t k_per_split = 0;
  dim3 grid;
  size_t workspace_bytes = 0;  // needed for splits > 1
};

int sm_count();  // of the current device (cached per device); 0 when it cannot be queried

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// `ws_bytes` bounds the split-K workspace: with less room, fewer splits (1 needs none).
inline bool plan(int64_t batch, int64_t M, int64_t N, int64_t K, size_t ws_bytes, Plan* out) {
  Plan p;
  const int64_t sms = sm_count() > 0 ? sm_count() : 108;
  const int64_t big_tiles = ceil_div(M, BigTile::BM) * ceil_div(N, BigTile::BN) * batch;
  p.big = big_tiles >= sms;
  const int bm = p.big ? BigTile::BM : SmallTile::BM, bn = p.big ? BigTile::BN : SmallTile::BN;
  const int bk = p.big ? BigTile::BK : SmallTile::BK;
  const int64_t tiles = ceil_div(M, bm) * ceil_div(N, bn) * batch;
  int64_t splits = 1;
  if (tiles < 2 * sms && K >= 512) {
    splits = ceil_div(2 * sms, tiles);
    const int64_t by_k = K / 256;  // at least 256 deep per slice
    if (splits > by_k) splits = by_k;
    if (splits > 64) splits = 64;
    if (splits < 1) splits = 1;
  }
  while (splits > 1 &&
         static_cast<size_t>(splits) * batch * M * N * sizeof(float) > ws_bytes)
    --splits;
  int64_t kps = ceil_div(ceil_div(K, splits), bk) * bk;
  if (kps == 0) kps = bk;
  splits = ceil_div(K, kps) > 0 ? ceil_div(K, kps) : 1;
  p.splits = static_cast<int>(splits);
  p.k_per_split = kps;
  p.workspace_bytes = splits > 1 ? static_cast<size_t>(splits) * batch * M * N * sizeof(float) : 0;
  const int64_t gx = ceil_div(N, bn), gy = ceil_div(M, bm), gz = batch * splits;
  if (gx > 2147483647LL || gy > 65535 || gz > 65535) return false;
  p.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
  *out = p;
  return true;
}

// The workspace a problem would like (the split-K partials); 0 when it needs none.
inline size_t workspace_wanted(int64_t batch, int64_t M, int64_t N, int64_t K) {
  Plan p;
  return plan(batch, M, N, K, static_cast<size_t>(-1), &p) ? p.workspace_bytes : 0;
}

// Runs one batched GEMM through loaders la, lb and epilogue epi with the given plan.
template <class LA, class LB, class Epi>
cudaError_t launch(const Plan& p, const LA& la, const LB& lb, const Epi& epi, int64_t batch,
                   int64_t M, int64_t N, int64_t K, float* ws, cudaStream_t stream) {
  if (batch == 0 || M == 0 || N == 0) return cudaSuccess;
  if (p.splits == 1) {
    if (p.big)
      gemm_tile_kernel<BigTile><<<p.grid, BigTile::kThreads, 0, stream>>>(la, lb, epi, M, N, K, 1,
                                                                         p.k_per_split);
    else
      gemm_tile_kernel<SmallTile><<<p.grid, SmallTile::kThreads, 0, stream>>>(la, lb, epi, M, N, K,
                                                                             1, p.k_per_split);
    return cudaGetLastError();
  }
  PartialStore part{ws, M, N, p.splits};
  if (p.big)
    gemm_tile_kernel<BigTile><<<p.grid, BigTile::kThreads, 0, stream>>>(la, lb, part, M, N, K,
                                                                       p.splits, p.k_per_split);
  else
    gemm_tile_kernel<SmallTile><<<p.grid, SmallTile::kThreads, 0, stream>>>(
        la, lb, part, M, N, K, p.splits, p.k_per_split);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t total = batch * M * N;
  int64_t blocks = ceil_div(total, 256);
  if (blocks > 65535) blocks = 65535;
  gemm_splitk_reduce<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(ws, epi, batch, M, N,
                                                                       p.splits);
  return cudaGetLastError();
}

}  // namespace cuda_gemm
}  // namespace dlkern
