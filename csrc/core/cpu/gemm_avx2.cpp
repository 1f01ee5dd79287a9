// AVX2/FMA GEMM, built the way BLIS builds one, plus two no-packing paths for the skinny
// products of small-batch dense layers.
//
// Versions, chosen per call in gemm_avx2():
//   1. packed:  panels of A (MR rows) and B (NR columns) packed into contiguous, aligned
//      buffers, a 6x16 register-blocked micro-kernel (12 ymm accumulators = 96 floats of C,
//      2 ymm of B and 1 broadcast of A per k step), and BLIS's three cache-blocking loops:
//        NC = 3072 columns of B per packed block (KC x NC x 4 B = 3.75 MiB, in the 32 MiB L3),
//        KC = 320  (at most: K is cut into equal blocks, a multiple of 8 long; one B
//                   micro-panel, KC x NR x 4 B = 20 KiB, stays in the 48 KiB L1d while the A
//                   block streams past it),
//        MC = 144  (the packed A block, MC x KC x 4 B = 180 KiB, in the 1 MiB L2).
//      Transposed operands are transposed while packing (8x8 AVX2 transposes when the panel's
//      source is contiguous along k), so X*W^T, dY*W and dY^T*X all take the same path.
//      Edge tiles run the same micro-kernel on a zero-padded copy of the C tile.
//   2. dot ("TN", both operands contiguous along k, no packing): C[m,n] = <A row m, B col n>,
//      vectorised along k with a 3x4 (or 2x6, 1x8) tile of accumulators reduced at the end.
//      This is the linear forward X*W^T for small batches: the weight is read straight from
//      its (out, in) layout, once per row tile, instead of being packed (packing would read
//      and write all of W on every call, which dominates when the batch is small).
//   3. direct ("NN", small M, no packing): the 6x16 micro-kernel reading B rows (contiguous
//      along n) and A rows in place: the linear backward dX = dY*W for batches of 5-16, which
//      streams W once in 16-column strips.
//   4. axpy ("NN", 1-2 rows, or rows of B on a 4 KiB stride): C rows updated from four B rows
//      at a time, B read row by row: dX = dY*W for the smallest batches (see axpy_step).
//   5. outer (K <= 4): the axpy loop on a copy of B placed away from C modulo 4 KiB: the weight
//      gradient dY^T*X of batches 1-4 (see gemm_outer_block). Threads split its rows.
// Threads split C into contiguous blocks along N (or M, whichever duplicates the smaller
// packing), each running the sequential loops with its own packing buffers: no barriers, no
// shared writes.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../gemm.h"
#include "gemm_parts.h"
#include "parallel.h"
#include "scratch.h"
#include "vec_avx2.h"

namespace dlkern {
namespace {

constexpr int MR = 6;
constexpr int NR = kGemmNR;  // the packed-B layout gemm.h publishes for implicit B
constexpr int64_t KC = 320;  // the largest k block; K is cut into equal blocks of at most this
constexpr int64_t MC = 144;
constexpr int64_t NC = 3072;
constexpr int64_t kDotMaxM = 48;     // dot path up to this many rows (measured crossover)
constexpr int64_t kDirectMaxM = 16;  // direct path up to this many rows
constexpr int64_t kAxpyMaxM = 2;     // axpy path up to this many rows (instead of direct)
constexpr int64_t kDotKC = 1024;     // k chunk of the dot path: 4 B rows x 4 KiB in L1

thread_local Scratch tl_a, tl_b;

// How a micro-tile starts and ends: kZero/kBias start from 0 or the bias and store; kLoadC
// starts from C; kAddC starts from 0 and adds C at the store. Later K blocks of the packed path
// use kAddC: each KC block is summed on its own and the block sums are added, a two-level
// summation whose rounding error grows with KC + K/KC rather than with K. kRowBias starts row r
// from row_bias[r] (a convolution's per-output-channel bias).
enum Init { kZero = 0, kBias = 1, kLoadC = 2, kAddC = 3, kRowBias = 4 };

// ---- packing ------------------------------------------------------------------------------

static inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4,
                              __m256& r5, __m256& r6, __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r0 = _mm256_permute2f128_ps(s0, s4, 0x20);
  r1 = _mm256_permute2f128_ps(s1, s5, 0x20);
  r2 = _mm256_permute2f128_ps(s2, s6, 0x20);
  r3 = _mm256_permute2f128_ps(s3, s7, 0x20);
  r4 = _mm256_permute2f128_ps(s0, s4, 0x31);
  r5 = _mm256_permute2f128_ps(s1, s5, 0x31);
  r6 = _mm256_permute2f128_ps(s2, s6, 0x31);
  r7 = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Packs the mc x kc block of A at `a` into MR-row micro-panels: panel p holds, for each k, the
// MR values A[p*MR + 0..MR-1][k] (zero past the last row).
static void pack_a(int64_t mc, int64_t kc, const float* a, int64_t rs, int64_t cs, float* ap) {
  for (int64_t ir = 0; ir < mc; ir += MR, ap += MR * kc) {
    const int64_t mr = std::min<int64_t>(MR, mc - ir);
    const float* src = a + ir * rs;
    if (mr == MR && rs == 1) {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) ap[k * MR + i] = src[k * cs + i];
    } else if (cs == 1) {
      for (int i = 0; i < MR; ++i) {
        if (i < mr) {
          const float* row = src + i * rs;
          for (int64_t k = 0; k < kc; ++k) ap[k * MR + i] = row[k];
        } else {
          for (int64_t k = 0; k < kc; ++k) ap[k * MR + i] = 0.f;
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) ap[k * MR + i] = i < mr ? src[i * rs + k * cs] : 0.f;
    }
  }
}

// Packs the kc x nc block of B at `b` into NR-column micro-panels: panel p holds, for each k,
// the NR values B[k][p*NR + 0..NR-1] (zero past the last column), 64-byte aligned.
static void pack_b(int64_t kc, int64_t nc, const float* b, int64_t rs, int64_t cs, float* bp) {
  for (int64_t jr = 0; jr < nc; jr += NR, bp += NR * kc) {
    const int64_t nr = std::min<int64_t>(NR, nc - jr);
    const float* src = b + jr * cs;
    if (nr == NR && cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        _mm256_store_ps(bp + k * NR, _mm256_loadu_ps(src + k * rs));
        _mm256_store_ps(bp + k * NR + 8, _mm256_loadu_ps(src + k * rs + 8));
      }
    } else if (nr == NR && rs == 1) {
      // columns are contiguous along k (the weight in X*W^T): transpose 8x8 blocks
      int64_t k = 0;
      for (; k + 8 <= kc; k += 8) {
        for (int h = 0; h < 2; ++h) {
          const float* s = src + h * 8 * cs + k;
          __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + cs);
          __m256 r2 = _mm256_loadu_ps(s + 2 * cs), r3 = _mm256_loadu_ps(s + 3 * cs);
          __m256 r4 = _mm256_loadu_ps(s + 4 * cs), r5 = _mm256_loadu_ps(s + 5 * cs);
          __m256 r6 = _mm256_loadu_ps(s + 6 * cs), r7 = _mm256_loadu_ps(s + 7 * cs);
          transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* d = bp + k * NR + h * 8;
          _mm256_store_ps(d, r0);
          _mm256_store_ps(d + NR, r1);
          _mm256_store_ps(d + 2 * NR, r2);
          _mm256_store_ps(d + 3 * NR, r3);
          _mm256_store_ps(d + 4 * NR, r4);
          _mm256_store_ps(d + 5 * NR, r5);
          _mm256_store_ps(d + 6 * NR, r6);
          _mm256_store_ps(d + 7 * NR, r7);
        }
      }
      for (; k < kc; ++k)
        for (int j = 0; j < NR; ++j) bp[k * NR + j] = src[j * cs + k];
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int j = 0; j < NR; ++j) bp[k * NR + j] = j < nr ? src[k * rs + j * cs] : 0.f;
    }
  }
}

// ---- the 6x16 micro-kernel ------------------------------------------------------------------

// C[0..5][0..15] (= or +=) sum_k A[.][k] * B[k][.]. kPackedA: `a` advances MR per k (a packed
// panel); otherwise A[i][k] = a[i * lda + k]. kPackedB: `b` advances NR per k; otherwise
// B[k][j] = b[k * ldb + j]. kRows < 6 computes only the first rows (the direct path's edges).
template <bool kPackedA, bool kPackedB, int kRows = MR>
static inline void ukernel(int64_t kc, const float* __restrict a, int64_t lda,
                           const float* __restrict b, int64_t ldb, float* c, int64_t ldc,
                           Init init, const float* bias16) {
  // bias16: NR column biases (kBias) or MR row biases (kRowBias)
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  if (init == kLoadC) {
#define DLK_LOAD(r)                                                         \
  if (kRows > r) {                                                          \
    c##r##0 = _mm256_loadu_ps(c + r * ldc);                                 \
    c##r##1 = _mm256_loadu_ps(c + r * ldc + 8);                             \
  }
    DLK_LOAD(0) DLK_LOAD(1) DLK_LOAD(2) DLK_LOAD(3) DLK_LOAD(4) DLK_LOAD(5)
#undef DLK_LOAD
  } else if (init == kRowBias) {
#define DLK_ROWB(r)                                    \
  if (kRows > r) c##r##0 = c##r##1 = _mm256_broadcast_ss(bias16 + r);
    DLK_ROWB(0) DLK_ROWB(1) DLK_ROWB(2) DLK_ROWB(3) DLK_ROWB(4) DLK_ROWB(5)
#undef DLK_ROWB
  } else {
    const __m256 z0 = init == kBias ? _mm256_loadu_ps(bias16) : _mm256_setzero_ps();
    const __m256 z1 = init == kBias ? _mm256_loadu_ps(bias16 + 8) : _mm256_setzero_ps();
    c00 = c10 = c20 = c30 = c40 = c50 = z0;
    c01 = c11 = c21 = c31 = c41 = c51 = z1;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float* bk = kPackedB ? b + k * NR : b + k * ldb;
    const __m256 b0 = kPackedB ? _mm256_load_ps(bk) : _mm256_loadu_ps(bk);
    const __m256 b1 = kPackedB ? _mm256_load_ps(bk + 8) : _mm256_loadu_ps(bk + 8);
#define DLK_FMA(r)                                                                       \
  if (kRows > r) {                                                                       \
    const __m256 ar = _mm256_broadcast_ss(kPackedA ? a + k * MR + r : a + r * lda + k);  \
    c##r##0 = _mm256_fmadd_ps(ar, b0, c##r##0);                                          \
    c##r##1 = _mm256_fmadd_ps(ar, b1, c##r##1);                                          \
  }
    DLK_FMA(0) DLK_FMA(1) DLK_FMA(2) DLK_FMA(3) DLK_FMA(4) DLK_FMA(5)
#undef DLK_FMA
  }
#define DLK_STORE(r)                                                                   \
  if (kRows > r) {                                                                     \
    if (init == kAddC) {                                                               \
      c##r##0 = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), c##r##0);                  \
      c##r##1 = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), c##r##1);              \
    }                                                                                  \
    _mm256_storeu_ps(c + r * ldc, c##r##0);                                            \
    _mm256_storeu_ps(c + r * ldc + 8, c##r##1);                                        \
  }
  DLK_STORE(0) DLK_STORE(1) DLK_STORE(2) DLK_STORE(3) DLK_STORE(4) DLK_STORE(5)
#undef DLK_STORE
}

// An edge tile (mr < MR or nr < NR): run the full kernel on a padded copy of the C tile.
template <bool kPackedA, bool kPackedB, int kRows = MR>
static void ukernel_edge(int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb,
                         float* c, int64_t ldc, int mr, int nr, Init init, const float* bias) {
  alignas(64) float tile[MR * NR];
  alignas(64) float bias16[NR];
  std::memset(tile, 0, sizeof(tile));
  std::memset(bias16, 0, sizeof(bias16));
  if (init == kLoadC || init == kAddC)
    for (int i = 0; i < mr; ++i) std::memcpy(tile + i * NR, c + i * ldc, nr * sizeof(float));
  if (init == kBias) std::memcpy(bias16, bias, nr * sizeof(float));
  if (init == kRowBias) std::memcpy(bias16, bias, mr * sizeof(float));
  ukernel<kPackedA, kPackedB, kRows>(kc, a, lda, b, ldb, tile, NR, init, bias16);
  for (int i = 0; i < mr; ++i) std::memcpy(c + i * ldc, tile + i * NR, nr * sizeof(float));
}

// ---- 1. packed path ---------------------------------------------------------------------------

void gemm_packed_block(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  float* ap = tl_a.get(static_cast<size_t>(MC * KC));
  float* bp = tl_b.get(static_cast<size_t>(KC * ((std::min(NC, n1 - n0) + NR - 1) / NR * NR)));
  const Init first = g.accumulate ? kAddC : g.bias ? kBias : g.row_bias ? kRowBias : kZero;
  // equal k blocks (a multiple of 8 long): a 3x3 convolution over 64 channels (K = 576) runs as
  // 2 x 288 instead of 256 + 256 + 64, whose short last block paid a full pass of C loads and
  // stores and of B packing for a quarter of the work
  const int64_t kblocks = (g.K + KC - 1) / KC;
  const int64_t kstep = std::min(KC, ((g.K + kblocks - 1) / kblocks + 7) & ~int64_t{7});
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < g.K; pc += kstep) {
      const int64_t kc = std::min(kstep, g.K - pc);
      if (g.pack_b.fn != nullptr)
        g.pack_b.fn(g.pack_b.ctx, pc, kc, jc, nc, bp);
      else
        pack_b(kc, nc, g.B.data + pc * g.B.rs + jc * g.B.cs, g.B.rs, g.B.cs, bp);
      const Init init = pc == 0 ? first : kAddC;
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min(MC, m1 - ic);
        pack_a(mc, kc, g.A.data + ic * g.A.rs + pc * g.A.cs, g.A.rs, g.A.cs, ap);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            const float* bias = init == kBias ? g.bias + jc + jr
                                : init == kRowBias ? g.row_bias + ic + ir : nullptr;
            float* c = g.C + (ic + ir) * g.ldc + jc + jr;
            if (mr == MR && nr == NR)
              ukernel<true, true>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, init, bias);
            else if (nr == NR)  // the last rows of C: only those rows computed, in place
              switch (mr) {
                case 1: ukernel<true, true, 1>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, init, bias); break;
                case 2: ukernel<true, true, 2>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, init, bias); break;
                case 3: ukernel<true, true, 3>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, init, bias); break;
                case 4: ukernel<true, true, 4>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, init, bias); break;
                default: ukernel<true, true, 5>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, init, bias); break;
              }
            else
              ukernel_edge<true, true>(kc, ap + ir * kc, 0, bp + jr * kc, 0, c, g.ldc, mr, nr,
                                       init, bias);
          }
        }
      }
    }
  }
}

// ---- 2. dot path (A and B both contiguous along k) -------------------------------------------

// kR rows of A x kC columns of B, accumulated over k in [k0, k1); writes or adds the sums.
template <int kR, int kC>
static void dot_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k0,
                     int64_t k1, float* c, int64_t ldc, bool add, const float* bias) {
  if (k1 - k0 < 8) {
    // Fewer than 8 products: each would sit alone in a lane, rounded before the lanes are
    // summed. Summed exactly in double instead (float products are exact there), C is rounded
    // once: a sum that cancels (dW of a batch of 2) is then as exact as torch's FMA chain.
    for (int i = 0; i < kR; ++i)
      for (int j = 0; j < kC; ++j) {
        double s = 0;
        for (int64_t k = k0; k < k1; ++k)
          s += static_cast<double>(a[i * lda + k]) * static_cast<double>(b[j * ldb + k]);
        float* out = c + i * ldc + j;
        *out = add ? static_cast<float>(*out + s) : static_cast<float>(s + (bias ? bias[j] : 0.f));
      }
    return;
  }
  __m256 acc[kR][kC];
  for (int i = 0; i < kR; ++i)
    for (int j = 0; j < kC; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = k0;
  for (; k + 8 <= k1; k += 8) {
    __m256 av[kR];
    for (int i = 0; i < kR; ++i) av[i] = _mm256_loadu_ps(a + i * lda + k);
    for (int j = 0; j < kC; ++j) {
      const __m256 bv = _mm256_loadu_ps(b + j * ldb + k);
      for (int i = 0; i < kR; ++i) acc[i][j] = _mm256_fmadd_ps(av[i], bv, acc[i][j]);
    }
  }
  if (k < k1) {
    const __m256i m = avx2::first_lanes(static_cast<int>(k1 - k));
    __m256 av[kR];
    for (int i = 0; i < kR; ++i) av[i] = _mm256_maskload_ps(a + i * lda + k, m);
    for (int j = 0; j < kC; ++j) {
      const __m256 bv = _mm256_maskload_ps(b + j * ldb + k, m);
      for (int i = 0; i < kR; ++i) acc[i][j] = _mm256_fmadd_ps(av[i], bv, acc[i][j]);
    }
  }
  for (int i = 0; i < kR; ++i)
    for (int j = 0; j < kC; ++j) {
      const float s = avx2::hsum(acc[i][j]);
      float* out = c + i * ldc + j;
      *out = add ? *out + s : s + (bias ? bias[j] : 0.f);
    }
}

template <int kR, int kC>
static void dot_rows(const GemmArgs& g, int64_t m, int64_t n0, int64_t n1, int64_t k0, int64_t k1,
                     bool add) {
  const float* a = g.A.data + m * g.A.rs;
  int64_t n = n0;
  for (; n + kC <= n1; n += kC)
    dot_tile<kR, kC>(a, g.A.rs, g.B.data + n * g.B.cs, g.B.cs, k0, k1, g.C + m * g.ldc + n, g.ldc,
                     add, g.bias ? g.bias + n : nullptr);
  for (; n < n1; ++n)
    dot_tile<kR, 1>(a, g.A.rs, g.B.data + n * g.B.cs, g.B.cs, k0, k1, g.C + m * g.ldc + n, g.ldc,
                    add, g.bias ? g.bias + n : nullptr);
}

void gemm_dot_block(const GemmArgs& g, int64_t n0, int64_t n1) {
  // k chunks keep a tile's B rows in L1; the first chunk writes (or adds, when accumulating).
  for (int64_t k0 = 0; k0 < g.K; k0 += kDotKC) {
    const int64_t k1 = std::min(g.K, k0 + kDotKC);
    const bool add = k0 > 0 || g.accumulate;
    // n tiles outside m tiles: a tile's B rows are read from memory once, A rows come from L2
    constexpr int64_t kNBlock = 64;
    for (int64_t nb = n0; nb < n1; nb += kNBlock) {
      const int64_t ne = std::min(n1, nb + kNBlock);
      int64_t m = 0;
      if (g.M == 1) {
        dot_rows<1, 8>(g, 0, nb, ne, k0, k1, add);
        continue;
      }
      if (g.M == 2) {
        dot_rows<2, 6>(g, 0, nb, ne, k0, k1, add);
        continue;
      }
      for (; m + 3 <= g.M; m += 3) dot_rows<3, 4>(g, m, nb, ne, k0, k1, add);
      if (g.M - m == 2) dot_rows<2, 6>(g, m, nb, ne, k0, k1, add);
      if (g.M - m == 1) dot_rows<1, 8>(g, m, nb, ne, k0, k1, add);
    }
  }
}

// ---- 3. direct path (small M, A and B rows contiguous) ------------------------------------------

template <int kRows>
static void direct_rows(const GemmArgs& g, int64_t m, int64_t n0, int64_t n1, Init init) {
  const float* a = g.A.data + m * g.A.rs;
  for (int64_t n = n0; n < n1; n += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, n1 - n));
    const float* bias = g.bias ? g.bias + n : nullptr;
    float* c = g.C + m * g.ldc + n;
    if (nr == NR) {
      ukernel<false, false, kRows>(g.K, a, g.A.rs, g.B.data + n, g.B.rs, c, g.ldc, init, bias);
    } else {
      // the last strip: B columns past N must not be read; pack the strip once (small)
      float* bp = tl_b.get(static_cast<size_t>(g.K * NR));
      for (int64_t k = 0; k < g.K; ++k)
        for (int j = 0; j < NR; ++j) bp[k * NR + j] = j < nr ? g.B.data[k * g.B.rs + n + j] : 0.f;
      ukernel_edge<false, true, kRows>(g.K, a, g.A.rs, bp, 0, c, g.ldc, kRows, nr, init, bias);
    }
  }
}

void gemm_direct_block(const GemmArgs& g, int64_t n0, int64_t n1) {
  const Init init = g.accumulate ? kLoadC : g.bias ? kBias : kZero;
  int64_t m = 0;
  for (; m + MR <= g.M; m += MR) direct_rows<MR>(g, m, n0, n1, init);
  switch (g.M - m) {
    case 5: direct_rows<5>(g, m, n0, n1, init); break;
    case 4: direct_rows<4>(g, m, n0, n1, init); break;
    case 3: direct_rows<3>(g, m, n0, n1, init); break;
    case 2: direct_rows<2>(g, m, n0, n1, init); break;
    case 1: direct_rows<1>(g, m, n0, n1, init); break;
    default: break;
  }
}

// ---- 4. axpy path (tiny M, B rows contiguous) -----------------------------------------------------

// C[m, n0:n1] (+)= sum over 4 k of A[m, k] * B[k, n0:n1], four B rows streamed front to back.
// Used instead of the direct path for 1-4 rows: there every k step of a 16-column strip lands on
// a new line one B row further on, and with rows of 1024 floats (4 KiB) each of those is a new
// page in the same L1 set, which defeats the prefetchers; here B is read row by row.
// One row: c[n0:n1] (+)= sum_q a[q] * w[q][n0:n1].
template <int KK>
static inline void axpy_row(const float* as, const float* const* w, int64_t n0, int64_t n1,
                            float* c, Init init, const float* bias) {
  __m256 av[4];
  for (int q = 0; q < KK; ++q) av[q] = _mm256_set1_ps(as[q]);
  int64_t n = n0;
  for (; n + 8 <= n1; n += 8) {
    __m256 acc = init == kLoadC ? _mm256_loadu_ps(c + n)
                 : init == kBias ? _mm256_loadu_ps(bias + n) : _mm256_setzero_ps();
    for (int q = 0; q < KK; ++q) acc = _mm256_fmadd_ps(av[q], _mm256_loadu_ps(w[q] + n), acc);
    _mm256_storeu_ps(c + n, acc);
  }
  for (; n < n1; ++n) {
    float acc = init == kLoadC ? c[n] : init == kBias ? bias[n] : 0.f;
    for (int q = 0; q < KK; ++q) acc += as[q] * w[q][n];
    c[n] = acc;
  }
}

template <int KK>
static void axpy_step(const GemmArgs& g, int64_t k0, int64_t n0, int64_t n1, Init init) {
  const float* w[4];
  for (int q = 0; q < 4; ++q) w[q] = g.B.data + (k0 + (q < KK ? q : 0)) * g.B.rs;
  for (int64_t m = 0; m < g.M; ++m) {
    const float* a = g.A.data + m * g.A.rs + k0 * g.A.cs;
    float as[4];
    for (int q = 0; q < KK; ++q) as[q] = a[q * g.A.cs];
    axpy_row<KK>(as, w, n0, n1, g.C + m * g.ldc, init, g.bias);
  }
}

void gemm_axpy_block(const GemmArgs& g, int64_t n0, int64_t n1) {
  const Init first = g.accumulate ? kLoadC : g.bias ? kBias : kZero;
  int64_t k0 = 0;
  for (; k0 + 4 <= g.K; k0 += 4) axpy_step<4>(g, k0, n0, n1, k0 == 0 ? first : kLoadC);
  const Init init = k0 == 0 ? first : kLoadC;
  switch (g.K - k0) {
    case 3: axpy_step<3>(g, k0, n0, n1, init); break;
    case 2: axpy_step<2>(g, k0, n0, n1, init); break;
    case 1: axpy_step<1>(g, k0, n0, n1, init); break;
    default: break;
  }
}

// ---- 5. outer path (K <= 4) -----------------------------------------------------------------

// The weight gradient of batches 1-4 is an outer product: C = A (M x K) * B (K x N), K <= 4. It is
// run as the axpy loop (C row by row, B's K rows re-read from L1 for every row) on one of two
// copies of B placed 2 KiB apart modulo 4 KiB, chosen per row. Reading B in place, B's loads and
// C's stores could sit at nearby offsets modulo 4 KiB, and then every load waited on a store
// (4K aliasing): the same product took 24 us or 180 us depending on where the allocator had put
// the buffers.
thread_local Scratch tl_outer;

template <int KK>
static void outer_rows(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                       const float* copy0, const float* copy1, int64_t ld, Init init) {
  // copy_i holds B[k][n0 + j] at copy_i[k * ld + j]; the copies sit 2 KiB apart modulo 4 KiB
  const float* w0[4];
  const float* w1[4];
  for (int q = 0; q < 4; ++q) {
    w0[q] = copy0 + (q < KK ? q : 0) * ld - n0;
    w1[q] = copy1 + (q < KK ? q : 0) * ld - n0;
  }
  for (int64_t m = m0; m < m1; ++m) {
    float* c = g.C + m * g.ldc;
    float as[4];
    for (int q = 0; q < KK; ++q) as[q] = g.A.data[m * g.A.rs + q * g.A.cs];
    // B's loads run ahead of C's stores by a few hundred bytes: a copy whose offset from this
    // row, modulo 4 KiB, is under 2 KiB never meets a store still in flight
    const uintptr_t d = (reinterpret_cast<uintptr_t>(copy0) -
                         reinterpret_cast<uintptr_t>(c + n0)) & 4095;
    axpy_row<KK>(as, d < 2048 ? w0 : w1, n0, n1, c, init, g.bias);
  }
}

// Rows [m0, m1) of C, all its columns (threads split the rows: each writes one contiguous part of
// C; split along columns, two threads' interleaved row halves wrote 3 MiB slower than one thread).
void gemm_outer_block(const GemmArgs& g, int64_t m0, int64_t m1) {
  const int64_t n0 = 0, n1 = g.N;
  const int64_t w = n1 - n0, ld = (w + 15) & ~int64_t{15};
  const int64_t span = g.K * ld;  // floats per copy
  float* raw = tl_outer.get(static_cast<size_t>(2 * span + 2048));
  float* copy0 = raw;
  // copy1 starts 2 KiB past copy0 modulo 4 KiB
  const int64_t gap = ((2048 - (span * 4) % 4096) + 4096) % 4096 / 4;
  float* copy1 = copy0 + span + gap;
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t j = 0; j < w; ++j) {
      const float v = g.B.data[k * g.B.rs + (n0 + j) * g.B.cs];
      copy0[k * ld + j] = v;
      copy1[k * ld + j] = v;
    }
  const Init first = g.accumulate ? kLoadC : g.bias ? kBias : kZero;
  switch (g.K) {
    case 4: outer_rows<4>(g, m0, m1, n0, n1, copy0, copy1, ld, first); break;
    case 3: outer_rows<3>(g, m0, m1, n0, n1, copy0, copy1, ld, first); break;
    case 2: outer_rows<2>(g, m0, m1, n0, n1, copy0, copy1, ld, first); break;
    case 1: outer_rows<1>(g, m0, m1, n0, n1, copy0, copy1, ld, first); break;
    default: break;
  }
}

// The packed path's threads: C split into contiguous blocks along N (multiples of nr) or M
// (multiples of mr), block(g, m0, m1, n0, n1) run on each with its own packing buffers. Along N
// when that duplicates the smaller packing (each thread packs all of A for its columns) or when
// M is too short to split. An implicit B (im2col) is the costly packing, so it is never
// duplicated.
template <typename Block>
void gemm_packed_parallel(const GemmArgs& g, int nt, int64_t mr, int64_t nr, const Block& block) {
  const bool by_n = ((g.pack_b.fn != nullptr || g.M <= g.N) && g.N >= nt * nr) || g.M < nt * mr;
  const int64_t extent = by_n ? g.N : g.M, align = by_n ? nr : mr;
  const int parts = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(nt, (extent + align - 1) / align)));
  parallel_for(parts, parts, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t lo, hi;
      gemm_split(extent, parts, static_cast<int>(t), align, &lo, &hi);
      if (lo >= hi) continue;
      if (by_n)
        block(g, 0, g.M, lo, hi);
      else
        block(g, lo, hi, 0, g.N);
    }
  });
}

}  // namespace

void gemm_pack_b_avx2(int64_t kc, int64_t nc, const float* b, int64_t rs, int64_t cs, float* bp) {
  pack_b(kc, nc, b, rs, cs, bp);
}

void gemm_empty_k(const GemmArgs& g) {
  if (g.accumulate) return;
  // (a wrapped C, which has no column bias, keeps its first gemm_c_width columns)
  const int64_t width = gemm_c_width(g);
  for (int64_t i = 0; i < g.M; ++i)
    for (int64_t j = 0; j < width; ++j)
      g.C[i * g.ldc + j] = g.bias ? g.bias[j] : g.row_bias ? g.row_bias[i] : 0.f;
}

GemmPath gemm_avx2_path(const GemmArgs& g) {
  // an implicit B or a row bias exists only in the packed path
  if (g.pack_b.fn != nullptr || g.row_bias != nullptr) return GemmPath::kPacked;
  if (g.A.cs == 1 && g.B.rs == 1 && g.M <= kDotMaxM) return GemmPath::kDot;
  // B rows whose stride is a multiple of 4 KiB put every k step of the direct path's strips in
  // one L1 set on a new page; the axpy path reads B row by row instead.
  const bool page_rows = g.B.rs % 1024 == 0;
  const bool nn = g.A.cs == 1 && g.B.cs == 1;
  if (nn && g.M > kAxpyMaxM && g.M <= kDirectMaxM && !page_rows) return GemmPath::kDirect;
  // the outer path serves any product with K <= 4 (dW of batches 1-4, an outer product): C is
  // then written row by row in one pass, where the packed path's 6-row tiles would write 6 rows
  // at a 4 KiB stride when C's rows are that long.
  if (g.K <= 4 && g.M > kAxpyMaxM) return GemmPath::kOuter;
  if (nn && g.M <= kDirectMaxM) return GemmPath::kAxpy;
  return GemmPath::kPacked;
}

Status gemm_avx2(const GemmArgs& g, int threads) {
  const Status s = gemm_validate(g);
  if (s != Status::kOk || g.M == 0 || g.N == 0) return s;
  if (g.b_rows != nullptr || g.c_row > 0) return Status::kUnsupported;  // gemm_avx512's features
  if (g.K == 0) {
    gemm_empty_k(g);
    return Status::kOk;
  }
  // ~64k FMAs per thread before a second thread pays for its fork/join (~1-2 us)
  const int nt = threads_for(g.M * g.N * g.K, int64_t{1} << 16, threads);
  const GemmPath path = gemm_avx2_path(g);
  const bool dot = path == GemmPath::kDot, direct = path == GemmPath::kDirect;
  const bool axpy = path == GemmPath::kAxpy, outer = path == GemmPath::kOuter;
  if (outer) {
    const int parts = static_cast<int>(std::min<int64_t>(nt, g.M));
    parallel_for(parts, parts, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        int64_t m0, m1;
        gemm_split(g.M, parts, static_cast<int>(t), 1, &m0, &m1);
        if (m0 < m1) gemm_outer_block(g, m0, m1);
      }
    });
    return Status::kOk;
  }
  if (dot || direct || axpy) {
    const int64_t align = direct ? NR : 8;
    const int parts = static_cast<int>(std::min<int64_t>(nt, (g.N + align - 1) / align));
    parallel_for(parts, parts, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        int64_t n0, n1;
        gemm_split(g.N, parts, static_cast<int>(t), align, &n0, &n1);
        if (n0 >= n1) continue;
        if (dot)
          gemm_dot_block(g, n0, n1);
        else if (axpy)
          gemm_axpy_block(g, n0, n1);
        else
          gemm_direct_block(g, n0, n1);
      }
    });
    return Status::kOk;
  }
  gemm_packed_parallel(g, nt, MR, NR, gemm_packed_block);
  return Status::kOk;
}

Status colsum_avx2(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                   int threads) {
  if (M < 0 || N < 0 || (N > 0 && out == nullptr) || (M > 0 && N > 0 && (x == nullptr || ld < N)))
    return Status::kInvalidArgument;
  constexpr int64_t kBlock = 32;  // 4 accumulators per column block
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  const int nt = threads_for(M * N, int64_t{1} << 15, threads);
  parallel_for(blocks, nt, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t n0 = blk * kBlock, nn = std::min(kBlock, N - n0);
      if (nn == kBlock) {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t i = 0; i < M; ++i) {
          const float* r = x + i * ld + n0;
          s0 = _mm256_add_ps(s0, _mm256_loadu_ps(r));
          s1 = _mm256_add_ps(s1, _mm256_loadu_ps(r + 8));
          s2 = _mm256_add_ps(s2, _mm256_loadu_ps(r + 16));
          s3 = _mm256_add_ps(s3, _mm256_loadu_ps(r + 24));
        }
        if (accumulate) {
          s0 = _mm256_add_ps(s0, _mm256_loadu_ps(out + n0));
          s1 = _mm256_add_ps(s1, _mm256_loadu_ps(out + n0 + 8));
          s2 = _mm256_add_ps(s2, _mm256_loadu_ps(out + n0 + 16));
          s3 = _mm256_add_ps(s3, _mm256_loadu_ps(out + n0 + 24));
        }
        _mm256_storeu_ps(out + n0, s0);
        _mm256_storeu_ps(out + n0 + 8, s1);
        _mm256_storeu_ps(out + n0 + 16, s2);
        _mm256_storeu_ps(out + n0 + 24, s3);
      } else {
        for (int64_t j = n0; j < n0 + nn; ++j) {
          float s = 0.f;
          for (int64_t i = 0; i < M; ++i) s += x[i * ld + j];
          out[j] = accumulate ? out[j] + s : s;
        }
      }
    }
  });
  return Status::kOk;
}

}  // namespace dlkern

#ifdef DLKERN_AVX2_CLANG_PUSHED
#pragma clang attribute pop
#endif
