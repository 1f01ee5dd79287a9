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
// Blocking (measured on a Xeon with 48 KiB of L1d and 2 MiB of L2 per core, KC 128-1024 and
// MC 96-768 tried, within the machine's noise above KC = 384; then on a Zen 5 EPYC, 48 KiB and
// 1 MiB, where KC = 768 took 0.90-0.96 of KC = 384's time on 3x3 convolutions with 64 to 512
// channels, the best of 3 runs, and MC 96-288 made no difference):
//   KC = 768 at most (K cut into equal blocks, multiples of 8): fewer passes over C matter more
//        than keeping a tile's three B panels in L1; they come from L2;
//   MC = 192 (the packed A block, 192 x 768 x 4 B = 576 KiB, in L2);
//   NC = 3072 (the packed B block, 768 x 3072 x 4 B = 9 MiB, in L3).
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
#include "vec_avx512.h"

namespace dlkern {
namespace {

constexpr int MR = 8;
constexpr int NP = 3;             // B micro-panels per tile
constexpr int NR = kGemmNR;       // columns per micro-panel
constexpr int64_t KC = 768;
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

// Where a tile's columns go in its first row of C (further rows at + ldc): panel p's lane j to
// c[off[0][p] + j] where bit j of mask[0][p] is set, and, in a wrapped C (gemm.h c_row), the
// lanes that fall in the next row of the wrap to c[off[1][p] + j] where mask[1][p] has them.
struct CTile {
  int64_t off[2][NP];
  __mmask16 mask[2][NP];
};

// The CTile of columns [n, n + cols) of C (cols <= NP * NR).
CTile ctile(const GemmArgs& g, int64_t n, int64_t cols) {
  CTile t{};
  for (int p = 0; p < NP; ++p) {
    const int64_t v0 = n + p * NR;  // the panel's first column
    const int64_t lanes = std::max<int64_t>(0, std::min<int64_t>(NR, n + cols - v0));
    const __mmask16 in = static_cast<__mmask16>((1u << lanes) - 1);
    if (g.c_row == 0) {
      t.off[0][p] = v0;
      t.mask[0][p] = in;
      continue;
    }
    // a wrapped C: lanes [0, c_row - q0) in row i, lanes [L - q0, L - q0 + c_row) in row i + 1
    const int64_t L = g.c_row + g.c_skip, i = v0 / L, q0 = v0 % L;
    const int64_t first = std::max<int64_t>(0, std::min<int64_t>(NR, g.c_row - q0));
    const int64_t j2 = L - q0, second = std::max<int64_t>(0, std::min<int64_t>(NR - j2, g.c_row));
    t.off[0][p] = i * g.c_row + q0;
    t.mask[0][p] = static_cast<__mmask16>(((1u << first) - 1) & in);
    t.off[1][p] = second > 0 ? (i + 1) * g.c_row + q0 - L : 0;
    t.mask[1][p] = second > 0 ? static_cast<__mmask16>((((1u << second) - 1) << j2) & in) : 0;
  }
  return t;
}

// C[0..kRows)[tile] of one tile. `a`: a packed A micro-panel (MR values per k). `b`: the first of
// kPanels packed B micro-panels, each kc x NR, or with kConv (a row-offset B and a wrapped C),
// B's tile in place: row k at b + rows[k], its kPanels * 16 columns contiguous. `c`: the tile's
// first row of C, its columns where `t` says. `bias`: NR*kPanels column biases (kBias) or kRows
// row biases (kRowBias).
template <int kRows, int kPanels, bool kConv>
void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b,
             const int64_t* __restrict rows, float* c, int64_t ldc, const CTile& t, Init init,
             const float* bias) {
  __m512 acc[kRows][kPanels];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p)
      acc[r][p] = init == kBias      ? _mm512_maskz_loadu_ps(t.mask[0][p], bias + p * NR)
                  : init == kRowBias ? _mm512_set1_ps(bias[r])
                                     : _mm512_setzero_ps();
  // C's rows are far apart (a new page each when they are long): fetch the tile now, while the
  // k loop runs, rather than stall on it at the end
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p)
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + t.off[0][p]), _MM_HINT_T0);
  const int64_t pstride = kc * NR;
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[kPanels];
#pragma GCC unroll 3
    for (int p = 0; p < kPanels; ++p)
      bv[p] = kConv ? _mm512_loadu_ps(b + rows[k] + p * NR)
                    : _mm512_load_ps(b + p * pstride + k * NR);
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
      float* c0 = c + r * ldc + t.off[0][p];
      float* c1 = c + r * ldc + t.off[1][p];
      __m512 v = acc[r][p];
      if (init == kAddC) {
        __m512 old = _mm512_maskz_loadu_ps(t.mask[0][p], c0);
        if (kConv) old = _mm512_mask_loadu_ps(old, t.mask[1][p], c1);
        v = _mm512_add_ps(old, v);
      }
      _mm512_mask_storeu_ps(c0, t.mask[0][p], v);
      if (kConv) _mm512_mask_storeu_ps(c1, t.mask[1][p], v);
    }
}

using Kernel = void (*)(int64_t, const float*, const float*, const int64_t*, float*, int64_t,
                        const CTile&, Init, const float*);

template <int kPanels, bool kConv>
Kernel kernel_for_rows(int rows) {
  switch (rows) {
    case 1: return ukernel<1, kPanels, kConv>;
    case 2: return ukernel<2, kPanels, kConv>;
    case 3: return ukernel<3, kPanels, kConv>;
    case 4: return ukernel<4, kPanels, kConv>;
    case 5: return ukernel<5, kPanels, kConv>;
    case 6: return ukernel<6, kPanels, kConv>;
    case 7: return ukernel<7, kPanels, kConv>;
    default: return ukernel<8, kPanels, kConv>;
  }
}

template <bool kConv>
Kernel kernel_for(int rows, int panels) {
  return panels == 1   ? kernel_for_rows<1, kConv>(rows)
         : panels == 2 ? kernel_for_rows<2, kConv>(rows)
                       : kernel_for_rows<3, kConv>(rows);
}

// The tiles of C's rows [ic + m0, ic + m1) and columns [jc + n0, jc + n1) from the packed blocks
// (m0 a multiple of MR, n0 of NR): A's rows ic.. at ap, B's columns jc.. at bp (packed), or for
// kConv, B's rows pc.. at rows (bp then B.data + jc).
void tiles(const GemmArgs& g, const float* ap, const float* bp, const int64_t* rows, int64_t kc,
           Init init, int64_t ic, int64_t jc, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int64_t kTile = NP * NR;
  for (int64_t jr = n0; jr < n1; jr += kTile) {
    const int64_t cols = std::min(kTile, n1 - jr);
    const int panels = static_cast<int>((cols + NR - 1) / NR);
    const CTile t = ctile(g, jc + jr, cols);
    for (int64_t ir = m0; ir < m1; ir += MR) {
      const int tile_rows = static_cast<int>(std::min<int64_t>(MR, m1 - ir));
      const float* bias = init == kBias      ? g.bias + jc + jr
                          : init == kRowBias ? g.row_bias + ic + ir
                                             : nullptr;
      float* c = g.C + (ic + ir) * g.ldc;
      if (rows != nullptr)
        kernel_for<true>(tile_rows, panels)(kc, ap + ir * kc, bp + jr, rows, c, g.ldc, t, init,
                                            bias);
      else
        kernel_for<false>(tile_rows, panels)(kc, ap + ir * kc, bp + jr * kc, nullptr, c, g.ldc, t,
                                             init, bias);
    }
  }
}

// Whether a team of nth splits a block's nc columns on micro-panels rather than its mc rows on
// MR-row slices: the split whose largest share is nearer an even one (a ragged share left one
// thread 4-8% more work: 2048 x 392 x 512 and 256 x 196 x 2304 took 0.93-0.96 of the time by
// rows on the 2-core Zen 5), on a tie columns when each thread gets two tiles' worth.
bool split_columns(int64_t nc, int64_t mc, int nth) {
  const int64_t panels = (nc + NR - 1) / NR, slices = (mc + MR - 1) / MR;
  const int64_t cols = (panels + nth - 1) / nth * slices, rows = (slices + nth - 1) / nth * panels;
  return cols < rows || (cols == rows && nc >= int64_t{2} * nth * NP * NR);
}

// BLIS's loops with the packed blocks shared by the team (BLIS's way, rather than
// gemm_avx2's split of C into one block per thread, where each thread packs all of A or all of
// B for itself): every thread packs its share of each B block's micro-panels and of each A
// block's, waits for the others, computes its share of the block's tiles (by columns or rows,
// whichever split_columns finds more even), and waits again before the buffers are refilled. Each
// element of A and B is packed once, whatever the thread count.
void packed(const GemmArgs& g, int nt) {
  float* ap = tl_a.get(static_cast<size_t>(MC * KC));
  const bool row_b = g.b_rows != nullptr;
  float* bp = row_b ? nullptr
                    : tl_b.get(static_cast<size_t>(KC * ((std::min(NC, g.N) + NR - 1) / NR * NR)));
  const Init first = g.accumulate ? kAddC : g.bias ? kBias : g.row_bias ? kRowBias : kZero;
  const int64_t kblocks = (g.K + KC - 1) / KC;
  const int64_t kstep = std::min(KC, ((g.K + kblocks - 1) / kblocks + 7) & ~int64_t{7});
  auto team = [&](int tid, int nth) {
    for (int64_t jc = 0; jc < g.N; jc += NC) {
      const int64_t nc = std::min(NC, g.N - jc);
      const bool by_n = split_columns(nc, std::min(MC, g.M), nth);
      for (int64_t pc = 0; pc < g.K; pc += kstep) {
        const int64_t kc = std::min(kstep, g.K - pc);
        int64_t b0, b1;
        gemm_split(nc, nth, tid, NR, &b0, &b1);
        if (!row_b && b0 < b1 && g.pack_b.fn != nullptr)  // (a row-offset B is read in place)
          g.pack_b.fn(g.pack_b.ctx, pc, kc, jc + b0, b1 - b0, bp + b0 * kc);
        else if (!row_b && b0 < b1)
          gemm_pack_b_avx2(kc, b1 - b0, g.B.data + pc * g.B.rs + (jc + b0) * g.B.cs, g.B.rs,
                           g.B.cs, bp + b0 * kc);
        if (!row_b) team_barrier(nth);
        const Init init = pc == 0 ? first : kAddC;
        for (int64_t ic = 0; ic < g.M; ic += MC) {
          const int64_t mc = std::min(MC, g.M - ic);
          int64_t a0, a1;
          gemm_split(mc, nth, tid, MR, &a0, &a1);
          if (a0 < a1)
            pack_a(a1 - a0, kc, g.A.data + (ic + a0) * g.A.rs + pc * g.A.cs, g.A.rs, g.A.cs,
                   ap + a0 * kc);
          team_barrier(nth);
          const float* b = row_b ? g.B.data + jc : bp;
          const int64_t* rows = row_b ? g.b_rows + pc : nullptr;
          if (by_n) {
            gemm_split(nc, nth, tid, NR, &b0, &b1);
            if (b0 < b1) tiles(g, ap, b, rows, kc, init, ic, jc, 0, mc, b0, b1);
          } else if (a0 < a1) {
            tiles(g, ap, b, rows, kc, init, ic, jc, a0, a1, 0, nc);
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
  if (s != Status::kOk || g.M == 0 || g.N == 0) return s;
  if (g.K == 0) {
    gemm_empty_k(g);
    return Status::kOk;
  }
  // a wrapped C comes with a row-offset B (the convolution over a padded input)
  if (g.c_row > 0 && g.b_rows == nullptr) return Status::kUnsupported;
  // the skinny products stay on gemm_avx2's unpacked versions, except the direct one from 8 rows
  // up (dX of a batch of 8-16): packing its B pays there (16 x 784 x 1024: 205 -> 140 us on two
  // threads; 4 rows: 57 -> 85 us)
  const GemmPath path = g.b_rows == nullptr ? gemm_avx2_path(g) : GemmPath::kPacked;
  if (path != GemmPath::kPacked && !(path == GemmPath::kDirect && g.M >= MR))
    return gemm_avx2(g, threads);
  // a team pays its fork and two barriers per block: 2^19 FMAs (about 2 us) per thread first
  // (128 x 64 x 32 took 3.7 us on one thread, 5.9 us on two)
  const int nt = threads_for(g.M * g.N * g.K, int64_t{1} << 19, threads);
  packed(g, nt);
  return Status::kOk;
}

}  // namespace dlkern

#ifdef DLKERN_AVX512_CLANG_PUSHED
#pragma clang attribute pop
#endif
