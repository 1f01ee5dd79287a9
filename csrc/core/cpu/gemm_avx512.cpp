// AVX-512 GEMM: the packed path of gemm_avx2.cpp (its version 1) with a micro-kernel and
// blocking of its own. The skinny products (versions 2-5, bound by memory rather than FMAs) and
// the degenerate ones run gemm_avx2 unchanged.
//
// Micro-kernel: 8 rows x 48 columns of C in 24 zmm accumulators. Per k step it loads three
// 16-float rows of B (three consecutive micro-panels of gemm.h's kGemmNR layout, so the
// im2col packer of conv2d serves this path as it is) and broadcasts eight values of A: 11 loads
// for 24 FMAs, where a 24 x 16 tile would need 25. Eight rows fit the channel counts of real
// networks (multiples of 8) without a ragged last tile. Rows past M run a kernel instantiated
// for fewer rows; columns past N are masked at the load and store of C (B's padding is zero).
// Blocking (measured on a Xeon with 48 KiB of L1d and 2 MiB of L2 per core; KC 128-1024 and
// MC 96-768 tried, within the machine's noise above KC = 384):
//   KC = 384 at most (K cut into equal blocks, multiples of 8): fewer passes over C matter more
//        than keeping a tile's three B panels (72 KiB) in L1; they come from L2;
//   MC = 192 (the packed A block, 192 x 384 x 4 B = 288 KiB, in L2);
//   NC = 3072 (the packed B block, 4.5 MiB, in L3).
// The micro-kernel alone, on operands in L1/L2, runs at 90-93% of the FMA peak; the whole
// product loses the rest to packing and to C's loads and stores between K blocks.
// Each KC block is summed on its own and added to C, as in gemm_avx2.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../gemm.h"
#include "gemm_parts.h"
#include "parallel.h"
#include "scratch.h"

#if defined(__clang__) && !defined(__AVX512F__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"))), \
                             apply_to = function)
#define DLKERN_AVX512_CLANG_PUSHED 1
#elif defined(__GNUC__) && !defined(__AVX512F__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own intrinsics (_mm512_max_ps: an undefined pass-through operand) set this off
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

namespace dlkern {
namespace {

constexpr int MR = 8;
constexpr int NP = 3;             // B micro-panels per tile
constexpr int NR = kGemmNR;       // columns per micro-panel
constexpr int64_t KC = 384;
constexpr int64_t MC = 192;
constexpr int64_t NC = 3072;

thread_local Scratch tl_a, tl_b;

// kZero / kBias / kRowBias: C = A*B (+ bias[n] / + row_bias[m]); kAddC: C += A*B.
enum Init { kZero, kBias, kRowBias, kAddC };

// r[i][j] <- r[j][i] for an 8 x 8 block.
inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Packs the mc x kc block of A at `a` into MR-row micro-panels: panel p holds, for each k, the
// MR values A[p*MR + 0..MR-1][k] (zero past the last row).
void pack_a(int64_t mc, int64_t kc, const float* a, int64_t rs, int64_t cs, float* ap) {
  for (int64_t ir = 0; ir < mc; ir += MR, ap += MR * kc) {
    const int64_t mr = std::min<int64_t>(MR, mc - ir);
    const float* src = a + ir * rs;
    if (mr == MR && rs == 1) {  // A^T: each k's MR values are contiguous
      for (int64_t k = 0; k < kc; ++k)
        _mm256_store_ps(ap + k * MR, _mm256_loadu_ps(src + k * cs));
    } else if (mr == MR && cs == 1) {  // rows contiguous along k: 8 x 8 blocks transposed
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8) {
        __m256 r[MR];
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) r[i] = _mm256_loadu_ps(src + i * rs + k);
        transpose8(r);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) _mm256_store_ps(ap + (k + i) * MR, r[i]);
      }
      for (; k < kc; ++k)
        for (int i = 0; i < MR; ++i) ap[k * MR + i] = src[i * rs + k];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) ap[k * MR + i] = i < mr ? src[i * rs + k * cs] : 0.f;
    }
  }
}

// C[0..kRows)[0..16*kPanels) of one tile. `a`: a packed A micro-panel (MR values per k);
// `b`: the first of kPanels packed B micro-panels, each kc x NR. `last`: the lanes of the last
// panel that lie inside C. `bias`: NR*kPanels column biases (kBias) or kRows row biases (kRowBias).
template <int kRows, int kPanels>
void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c,
             int64_t ldc, __mmask16 last, Init init, const float* bias) {
  __m512 acc[kRows][kPanels];
  __mmask16 mask[kPanels];
#pragma GCC unroll 3
  for (int p = 0; p < kPanels; ++p) mask[p] = p == kPanels - 1 ? last : __mmask16(0xffff);
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p)
      acc[r][p] = init == kBias      ? _mm512_maskz_loadu_ps(mask[p], bias + p * NR)
                  : init == kRowBias ? _mm512_set1_ps(bias[r])
                                     : _mm512_setzero_ps();
  // C's rows are far apart (a new page each when they are long): fetch the tile now, while the
  // k loop runs, rather than stall on it at the end
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p)
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + p * NR), _MM_HINT_T0);
  const int64_t pstride = kc * NR;
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[kPanels];
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p) bv[p] = _mm512_load_ps(b + p * pstride + k * NR);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 ar = _mm512_set1_ps(a[k * MR + r]);
#pragma GCC unroll 3
      for (int p = 0; p < kPanels; ++p) acc[r][p] = _mm512_fmadd_ps(ar, bv[p], acc[r][p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p) {
      float* cp = c + r * ldc + p * NR;
      __m512 v = acc[r][p];
      if (init == kAddC) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[p], cp), v);
      _mm512_mask_storeu_ps(cp, mask[p], v);
    }
}

using Kernel = void (*)(int64_t, const float*, const float*, float*, int64_t, __mmask16, Init,
                        const float*);

template <int kPanels>
Kernel kernel_for_rows(int rows) {
  switch (rows) {
    case 1: return ukernel<1, kPanels>;
    case 2: return ukernel<2, kPanels>;
    case 3: return ukernel<3, kPanels>;
    case 4: return ukernel<4, kPanels>;
    case 5: return ukernel<5, kPanels>;
    case 6: return ukernel<6, kPanels>;
    case 7: return ukernel<7, kPanels>;
    default: return ukernel<8, kPanels>;
  }
}

Kernel kernel_for(int rows, int panels) {
  return panels == 1 ? kernel_for_rows<1>(rows) : panels == 2 ? kernel_for_rows<2>(rows)
                                                              : kernel_for_rows<3>(rows);
}

// The tiles of C[ic + m0 : ic + m1][jc + n0 : jc + n1) from the packed blocks (m0 a multiple of
// MR, n0 of NR): A's rows ic.. at ap, B's columns jc.. at bp.
void tiles(const GemmArgs& g, const float* ap, const float* bp, int64_t kc, Init init, int64_t ic,
           int64_t jc, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int64_t kTile = NP * NR;
  for (int64_t jr = n0; jr < n1; jr += kTile) {
    const int64_t cols = std::min(kTile, n1 - jr);
    const int panels = static_cast<int>((cols + NR - 1) / NR);
    const int tail = static_cast<int>(cols - (panels - 1) * NR);
    const __mmask16 last = static_cast<__mmask16>((1u << tail) - 1);
    for (int64_t ir = m0; ir < m1; ir += MR) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, m1 - ir));
      const float* bias = init == kBias      ? g.bias + jc + jr
                          : init == kRowBias ? g.row_bias + ic + ir
                                             : nullptr;
      kernel_for(rows, panels)(kc, ap + ir * kc, bp + jr * kc, g.C + (ic + ir) * g.ldc + jc + jr,
                               g.ldc, last, init, bias);
    }
  }
}

// BLIS's loops with the packed blocks shared by the team (BLIS's way, rather than
// gemm_avx2's split of C into one block per thread, where each thread packs all of A or all of
// B for itself): every thread packs its share of each B block's micro-panels and of each A
// block's, waits for the others, computes its share of the block's tiles (columns when there
// are enough micro-panels, else rows), and waits again before the buffers are refilled. Each
// element of A and B is packed once, whatever the thread count.
void packed(const GemmArgs& g, int nt) {
  float* ap = tl_a.get(static_cast<size_t>(MC * KC));
  float* bp = tl_b.get(static_cast<size_t>(KC * ((std::min(NC, g.N) + NR - 1) / NR * NR)));
  const Init first = g.accumulate ? kAddC : g.bias ? kBias : g.row_bias ? kRowBias : kZero;
  const int64_t kblocks = (g.K + KC - 1) / KC;
  const int64_t kstep = std::min(KC, ((g.K + kblocks - 1) / kblocks + 7) & ~int64_t{7});
  auto team = [&](int tid, int nth) {
    for (int64_t jc = 0; jc < g.N; jc += NC) {
      const int64_t nc = std::min(NC, g.N - jc);
      // columns split on micro-panels when each thread gets at least two tiles' worth
      const bool by_n = nc >= int64_t{2} * nth * NP * NR;
      for (int64_t pc = 0; pc < g.K; pc += kstep) {
        const int64_t kc = std::min(kstep, g.K - pc);
        int64_t b0, b1;
        gemm_split(nc, nth, tid, NR, &b0, &b1);
        if (b0 < b1 && g.pack_b.fn != nullptr)
          g.pack_b.fn(g.pack_b.ctx, pc, kc, jc + b0, b1 - b0, bp + b0 * kc);
        else if (b0 < b1)
          gemm_pack_b_avx2(kc, b1 - b0, g.B.data + pc * g.B.rs + (jc + b0) * g.B.cs, g.B.rs,
                           g.B.cs, bp + b0 * kc);
        team_barrier(nth);
        const Init init = pc == 0 ? first : kAddC;
        for (int64_t ic = 0; ic < g.M; ic += MC) {
          const int64_t mc = std::min(MC, g.M - ic);
          int64_t a0, a1;
          gemm_split(mc, nth, tid, MR, &a0, &a1);
          if (a0 < a1)
            pack_a(a1 - a0, kc, g.A.data + (ic + a0) * g.A.rs + pc * g.A.cs, g.A.rs, g.A.cs,
                   ap + a0 * kc);
          team_barrier(nth);
          if (by_n) {
            gemm_split(nc, nth, tid, NR, &b0, &b1);
            if (b0 < b1) tiles(g, ap, bp, kc, init, ic, jc, 0, mc, b0, b1);
          } else if (a0 < a1) {
            tiles(g, ap, bp, kc, init, ic, jc, a0, a1, 0, nc);
          }
          team_barrier(nth);
        }
      }
    }
  };
  run_team(nt, team);
}

}  // namespace

Status gemm_avx512(const GemmArgs& g, int threads) {
  const Status s = gemm_validate(g);
  if (s != Status::kOk || g.M == 0 || g.N == 0 || g.K == 0 ||
      gemm_avx2_path(g) != GemmPath::kPacked)
    return gemm_avx2(g, threads);
  const int nt = threads_for(g.M * g.N * g.K, int64_t{1} << 16, threads);
  packed(g, nt);
  return Status::kOk;
}

}  // namespace dlkern

#ifdef DLKERN_AVX512_CLANG_PUSHED
#pragma clang attribute pop
#endif
