// AVX2/FMA conv2d: the algorithms described in conv2d.h.
//
// Versions:
//   1. gemm1x1: the GEMM core on the tensors as they lie (no copy).
//   2. im2col (implicit GEMM): gather_panels() is the GEMM's B packer; it writes the im2col
//      matrix's KC x NC blocks straight into NR-column micro-panels. The same gather serves
//      backward data at stride 1 (a transposed convolution over dY with the flipped, transposed
//      weight) and, into a row-major tile, backward weight (dW += dY_tile * col_tile^T) and
//      the col2im tiles of backward data at stride > 1.
//   3. depthwise: depthwise.h at 8 floats a vector.
//   4. winograd: winograd.h at 8 floats a vector (forward, backward data and weight), falling
//      back to im2col where it does not serve.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../conv2d.h"
#include "../gemm.h"
#include "conv2d_parts.h"
#include "parallel.h"
#include "scratch.h"
#include "vec_avx2.h"
#include "depthwise.h"
#include "winograd.h"

namespace dlkern {
namespace {

constexpr int NR = kGemmNR;

thread_local Scratch tl_tile, tl_wt;

// The GEMMs of this file: gemm_avx512 on the avx512 path, gemm_avx2 otherwise (this code runs
// only on the avx2 and avx512 paths; gemm_cpu would send an implicit B to gemm_ref, which refuses
// it, if the reference path were selected while a conv2d_*_avx2 call ran).
Status conv_gemm(const GemmArgs& g, int threads) {
  return cpu_isa_active() == CpuIsa::kAvx512 ? gemm_avx512(g, threads) : gemm_avx2(g, threads);
}

// ---- the gather: B[k][n] of an implicit GEMM --------------------------------------------------

// k = (c, r, t) in the weight's order, n = (p, q) an output position:
//   B[k][n] = x[c][p*sh - ph + r*dh][q*sw - pw + t*dw], zero outside the H x W plane.
// ph and pw may be negative (the transposed convolution of backward data).
// Positions may run across images (n = image * PQ + p * Q + q, image i's input at x + i * img):
// the forward of small images makes the whole batch's positions the GEMM's columns.
struct Gather {
  const float* x;
  int64_t plane;  // H * W: the stride between channels
  int64_t H, W, R, S, sh, sw, ph, pw, dh, dw, Q;
  int64_t PQ = INT64_MAX, img = 0;  // positions per image, stride between images
};

// A run of consecutive output positions within one output row, and where it goes in the row
// being written.
struct Piece {
  const float* x;  // channel 0 of the run's image
  int64_t ih0, iw0, len, off;
};

// Splits positions [n0, n0 + len) into runs along output rows.
static int64_t make_pieces(const Gather& g, int64_t n0, int64_t len, Piece* out) {
  int64_t i = n0 / g.PQ, rem = n0 - i * g.PQ;
  int64_t np = 0, off = 0, p = rem / g.Q, q = rem - p * g.Q;
  const int64_t P = g.PQ / g.Q;
  while (off < len) {
    if (p == P) {  // next image
      ++i;
      p = 0;
    }
    const int64_t l = std::min(len - off, g.Q - q);
    out[np++] = {g.x + i * g.img, p * g.sh - g.ph, q * g.sw - g.pw, l, off};
    off += l;
    ++p;
    q = 0;
  }
  return np;
}

static inline void zero(float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(d + j, _mm256_setzero_ps());
  for (; j < n; ++j) d[j] = 0.f;
}

// d[j] = src[j * sw] for j < n; `avail` floats from src on may be read.
static inline void copy_strided(const float* src, int64_t sw, int64_t n, float* d, int64_t avail) {
  int64_t j = 0;
  if (sw == 1) {
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(d + j, _mm256_loadu_ps(src + j));
  } else if (sw == 2) {
    // 16 floats loaded for 8 values: the odd one past src[2 * (n - 1)] must be readable
    for (; j + 8 <= n && 2 * j + 16 <= avail; j += 8) {
      const __m256 a = _mm256_loadu_ps(src + 2 * j), b = _mm256_loadu_ps(src + 2 * j + 8);
      const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 a4 a6 b4 b6
      _mm256_storeu_ps(d + j, _mm256_castpd_ps(
                                  _mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
    }
  }
  for (; j < n; ++j) d[j] = src[j * sw];
}

// The valid range [lo, hi) of j for which iw0 + j*sw lies in [0, W), clipped to [0, len).
static inline void valid_range(int64_t iw0, int64_t sw, int64_t W, int64_t len, int64_t* lo,
                               int64_t* hi) {
  int64_t a = iw0 >= 0 ? 0 : (-iw0 + sw - 1) / sw;
  int64_t b = W - 1 - iw0 < 0 ? 0 : (W - 1 - iw0) / sw + 1;
  a = std::min(a, len);
  b = std::max(a, std::min(b, len));
  *lo = a;
  *hi = b;
}

// d[j] = row[iw0 + j*sw] (zero outside [0, W)) for j < len; `avail` floats from row on may be
// read (the rest of the plane).
static inline void gather_row(const float* row, int64_t W, int64_t avail, int64_t iw0, int64_t sw,
                              int64_t len, float* d) {
  if (iw0 >= 0 && iw0 + (len - 1) * sw < W) {
    copy_strided(row + iw0, sw, len, d, avail - iw0);
    return;
  }
  int64_t lo, hi;
  valid_range(iw0, sw, W, len, &lo, &hi);
  zero(d, lo);
  copy_strided(row + iw0 + lo * sw, sw, hi - lo, d + lo, avail - iw0 - lo * sw);
  zero(d + hi, len - hi);
}

// Rows k0 .. k0+kc of B over the positions the pieces cover: row k at dst + k * ld.
static void gather_rows(const Gather& g, int64_t k0, int64_t kc, const Piece* pc, int64_t np,
                        float* dst, int64_t ld) {
  const int64_t RS = g.R * g.S;
  int64_t c = k0 / RS, rem = k0 - c * RS, r = rem / g.S, t = rem - r * g.S;
  for (int64_t k = 0; k < kc; ++k) {
    float* d = dst + k * ld;
    const int64_t cofs = c * g.plane;
    const int64_t dr = r * g.dh, dt = t * g.dw;
    for (int64_t i = 0; i < np; ++i) {
      const int64_t ih = pc[i].ih0 + dr;
      if (ih < 0 || ih >= g.H)
        zero(d + pc[i].off, pc[i].len);
      else
        gather_row(pc[i].x + cofs + ih * g.W, g.W, (g.H - ih) * g.W, pc[i].iw0 + dt, g.sw, pc[i].len,
                   d + pc[i].off);
    }
    if (++t == g.S) {
      t = 0;
      if (++r == g.R) {
        r = 0;
        ++c;
      }
    }
  }
}

// gather_rows for the common panel: 16 positions in one output row at column stride 1. Each k
// row is then one 16-float copy (two loads, two stores) unless it touches the padding. With 64
// output channels the GEMM spends only 8 FMA instructions per gathered float, so the generic
// gather's per-row calls were a fifth of a 3x3 convolution's time.
static void gather_rows16(const Gather& g, int64_t k0, int64_t kc, const Piece& pc, float* dst) {
  const int64_t RS = g.R * g.S;
  int64_t c = k0 / RS, rem = k0 - c * RS, r = rem / g.S, t = rem - r * g.S;
  for (int64_t k = 0; k < kc; ++k, dst += NR) {
    const int64_t ih = pc.ih0 + r * g.dh, iw = pc.iw0 + t * g.dw;
    if (ih < 0 || ih >= g.H) {
      _mm256_store_ps(dst, _mm256_setzero_ps());
      _mm256_store_ps(dst + 8, _mm256_setzero_ps());
    } else if (iw >= 0 && iw + NR <= g.W) {
      const float* src = pc.x + c * g.plane + ih * g.W + iw;
      _mm256_store_ps(dst, _mm256_loadu_ps(src));
      _mm256_store_ps(dst + 8, _mm256_loadu_ps(src + 8));
    } else {
      gather_row(pc.x + c * g.plane + ih * g.W, g.W, (g.H - ih) * g.W, iw, 1, NR, dst);
    }
    if (++t == g.S) {
      t = 0;
      if (++r == g.R) {
        r = 0;
        ++c;
      }
    }
  }
}

// The GEMM's B packer (gemm.h BPacker): NR-column micro-panels of B[k0:k0+kc][n0:n0+nc].
void gather_panels(const void* ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* bp) {
  const Gather& g = *static_cast<const Gather*>(ctx);
  Piece pc[NR];
  for (int64_t jr = 0; jr < nc; jr += NR, bp += NR * kc) {
    const int64_t nr = std::min<int64_t>(NR, nc - jr);
    const int64_t np = make_pieces(g, n0 + jr, nr, pc);
    if (np == 1 && nr == NR && g.sw == 1) {
      gather_rows16(g, k0, kc, pc[0], bp);
      continue;
    }
    gather_rows(g, k0, kc, pc, np, bp, NR);
    if (nr < NR)
      for (int64_t k = 0; k < kc; ++k) zero(bp + k * NR + nr, NR - nr);
  }
}

// B[0:kd][n0:n0+len] as a row-major kd x len tile (leading dimension ld), rows split among
// `threads`.
void gather_tile(const Gather& g, int64_t kd, int64_t n0, int64_t len, float* tile, int64_t ld,
                 int threads) {
  thread_local std::vector<Piece> pieces;
  pieces.resize(static_cast<size_t>(len / std::max<int64_t>(g.Q, 1) + 3));
  const int64_t np = make_pieces(g, n0, len, pieces.data());
  const Piece* pc = pieces.data();
  parallel_for(kd, threads_for(kd * len, 1 << 14, threads), [&](int64_t b, int64_t e) {
    gather_rows(g, b, e - b, pc, np, tile + b * ld, ld);
  });
}

// col2im of one tile: x[c][ih][iw] += tile[k][j] for the tap and position of (k, j), the
// inverse of gather_tile. Channels split among `threads` (each owns its planes).
void scatter_tile(const Gather& g, int64_t channels, int64_t n0, int64_t len, const float* tile,
                  int64_t ld, float* x, int threads) {
  thread_local std::vector<Piece> pieces;
  pieces.resize(static_cast<size_t>(len / std::max<int64_t>(g.Q, 1) + 3));
  const int64_t np = make_pieces(g, n0, len, pieces.data());
  const Piece* pc = pieces.data();
  const int64_t RS = g.R * g.S;
  parallel_for(channels, threads_for(channels * RS * len, 1 << 14, threads),
               [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      float* xc = x + c * g.plane;
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t t = 0; t < g.S; ++t) {
          const float* src = tile + (c * RS + r * g.S + t) * ld;
          for (int64_t i = 0; i < np; ++i) {
            const int64_t ih = pc[i].ih0 + r * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            int64_t lo, hi;
            const int64_t iw0 = pc[i].iw0 + t * g.dw;
            valid_range(iw0, g.sw, g.W, pc[i].len, &lo, &hi);
            float* row = xc + ih * g.W + iw0;
            const float* s = src + pc[i].off;
            int64_t j = lo;
            if (g.sw == 1)
              for (; j + 8 <= hi; j += 8)
                _mm256_storeu_ps(row + j, _mm256_add_ps(_mm256_loadu_ps(row + j),
                                                        _mm256_loadu_ps(s + j)));
            for (; j < hi; ++j) row[j * g.sw] += s[j];
          }
        }
    }
  });
}

// ---- image loop: conv2d_for_images (conv2d_parts.h) ------------------------------------

Gather input_gather(const Conv2dShape& s, const float* xg) {
  return {xg, s.H * s.W, s.H, s.W, s.R, s.S, s.stride_h, s.stride_w, s.pad_h, s.pad_w,
          s.dil_h, s.dil_w, s.Q};
}

int64_t tile_positions(int64_t kd, int64_t PQ) {
  int64_t t = std::max<int64_t>(256, (int64_t{1} << 18) / std::max<int64_t>(kd, 1)) / NR * NR;
  return std::min(t, PQ);
}

static inline float row_sum(const float* g, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(g + j));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(g + j + 8));
  }
  float t = avx2::hsum(_mm256_add_ps(a0, a1));
  for (; j < n; ++j) t += g[j];
  return t;
}

// Row sums of the K x PQ block at dy added into acc (double), rows split among threads.
void add_row_sums(int64_t K, int64_t PQ, const float* dy, double* acc, int threads) {
  parallel_for(K, threads_for(K * PQ, 1 << 15, threads), [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) acc[k] += row_sum(dy + k * PQ, PQ);
  });
}

}  // namespace

Status conv2d_fwd_avx2(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                       float* y, int threads, Conv2dAlgo algo) {
  Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  if (algo == Conv2dAlgo::kAuto) algo = conv2d_pick_algo(s);
  if (!conv2d_algo_applies(s, algo)) return Status::kInvalidArgument;
  const int64_t PQ = s.P * s.Q, HW = s.H * s.W;
  if (s.N == 0 || s.K == 0 || PQ == 0) return Status::kOk;
  if (algo == Conv2dAlgo::kDepthwise) {
    dw::fwd<avx2::F32x8>(s, x, w, bias, y, threads);
    return Status::kOk;
  }
  if (algo == Conv2dAlgo::kWinograd) {
    if (wino::fwd<avx2::F32x8>(s, x, w, bias, y, threads, &conv_gemm)) {
      conv2d_count_winograd_pass();
      return Status::kOk;
    }
    algo = Conv2dAlgo::kIm2col;  // not served (non-finite outputs, a null pointer): im2col
  }
  if (conv2d_grouped_fwd_direct(s, algo)) {
    if (x == nullptr || w == nullptr || y == nullptr) return Status::kInvalidArgument;
    dw::grouped_fwd<avx2::F32x8>(s, x, w, bias, y, threads);
    return Status::kOk;
  }
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, Kd = Cg * s.R * s.S;
  if (PQ < kConvSmallImage && s.N > 1 && Kd > 0) {
    // Small images: the batch's positions are the GEMM's columns (one GEMM per group, N*P*Q
    // columns instead of a few ragged NR strips per image), written to a workspace the size of
    // the group's output and then moved to NCHW.
    float* out = tl_tile.get(static_cast<size_t>(Kg * s.N * PQ));
    for (int64_t g = 0; g < s.groups && st == Status::kOk; ++g) {
      Gather gi = input_gather(s, x + g * Cg * HW);
      if (algo == Conv2dAlgo::kGemm1x1) {  // each image's plane is one row: few pieces per panel
        gi.H = 1, gi.W = HW, gi.Q = PQ;
      }
      gi.PQ = PQ;
      gi.img = s.C * HW;
      GemmArgs ga;
      ga.M = Kg;
      ga.N = s.N * PQ;
      ga.K = Kd;
      ga.A = {w + g * Kg * Kd, Kd, 1};
      ga.pack_b = {gather_panels, &gi};
      ga.C = out;
      ga.ldc = s.N * PQ;
      ga.row_bias = bias ? bias + g * Kg : nullptr;
      st = conv_gemm(ga, threads);
      conv2d_workspace_to_nchw(s, g, 0, s.N, out, y, threads);
    }
    return st;
  }
  return conv2d_for_image_groups(s, threads, s.K * PQ * (Kd + 1), [&](int64_t n, int64_t g,
                                                                       int inner) {
    const float* xg = x + (n * s.C + g * Cg) * HW;
    const Gather gi = input_gather(s, xg);
    GemmArgs ga;
    ga.M = Kg;
    ga.N = PQ;
    ga.K = Kd;
    ga.A = {w + g * Kg * Kd, Kd, 1};
    if (algo == Conv2dAlgo::kGemm1x1)
      ga.B = {xg, HW, 1};
    else
      ga.pack_b = {gather_panels, &gi};
    ga.C = y + (n * s.K + g * Kg) * PQ;
    ga.ldc = PQ;
    ga.row_bias = bias ? bias + g * Kg : nullptr;
    return conv_gemm(ga, inner);
  });
}

namespace {

// dX of one image's group g (dyg, dxg: its planes) with `inner` threads: a 1x1 GEMM, the
// transposed convolution (wt: conv2d_flipped_weight), or per tile dcol = W_g^T dY_g[:, tile] + col2im.
Status bwd_data_group(const Conv2dShape& s, Conv2dAlgo algo, int64_t g, const float* w,
                      const float* wt, const float* dyg, float* dxg, int inner) {
  const int64_t PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S, Kd = Cg * RS;
  GemmArgs ga;
  ga.C = dxg;
  ga.ldc = HW;
  if (algo == Conv2dAlgo::kGemm1x1) {  // dX_g = W_g^T dY_g
    ga.M = Cg, ga.N = HW, ga.K = Kg;
    ga.A = {w + g * Kg * Cg, 1, Cg};
    ga.B = {dyg, PQ, 1};
    return conv_gemm(ga, inner);
  }
  if (wt != nullptr) {  // dX_g = Wt_g * im2col'(dY_g)
    const Gather gi{dyg, PQ, s.P, s.Q, s.R, s.S, 1, 1,
                    s.dil_h * (s.R - 1) - s.pad_h, s.dil_w * (s.S - 1) - s.pad_w,
                    s.dil_h, s.dil_w, s.W};
    ga.M = Cg, ga.N = HW, ga.K = Kg * RS;
    ga.A = {wt + g * Cg * Kg * RS, Kg * RS, 1};
    ga.pack_b = {gather_panels, &gi};
    return conv_gemm(ga, inner);
  }
  std::memset(dxg, 0, sizeof(float) * Cg * HW);
  const Gather gi = input_gather(s, dxg);
  const int64_t T = tile_positions(Kd, PQ);
  float* tile = tl_tile.get(static_cast<size_t>(Kd * T));
  for (int64_t n0 = 0; n0 < PQ; n0 += T) {
    const int64_t len = std::min(T, PQ - n0);
    ga.M = Kd, ga.N = len, ga.K = Kg;
    ga.A = {w + g * Kg * Kd, 1, Kd};
    ga.B = {dyg + n0, PQ, 1};
    ga.C = tile;
    ga.ldc = T;
    const Status r = conv_gemm(ga, inner);
    if (r != Status::kOk) return r;
    scatter_tile(gi, Cg, n0, len, tile, T, dxg, inner);
  }
  return Status::kOk;
}

// Whether backward data runs as a stride-1 transposed convolution (a GEMM with C/groups rows,
// which wastes most of the 6-row micro-tiles when that is small, an RGB input: the col2im tiles
// serve better there).
bool bwd_data_transposed(const Conv2dShape& s, Conv2dAlgo algo) {
  return algo == Conv2dAlgo::kIm2col && s.stride_h == 1 && s.stride_w == 1 &&
         s.C / s.groups >= 16;
}

// dX for every image (images in parallel, each with its share of the threads).
Status bwd_data(const Conv2dShape& s, Conv2dAlgo algo, const float* w, const float* dy,
                float* dx, int threads) {
  const int64_t PQ = s.P * s.Q, HW = s.H * s.W, Cg = s.C / s.groups, Kg = s.K / s.groups;
  const float* wt = bwd_data_transposed(s, algo) &&
                            conv2d_weight_finite(w, s.K * Cg * s.R * s.S)
                        ? conv2d_flipped_weight(s, w)
                        : nullptr;
  return conv2d_for_image_groups(s, threads, s.K * PQ * Cg * s.R * s.S,
                                 [&](int64_t n, int64_t g, int inner) {
    return bwd_data_group(s, algo, g, w, wt, dy + (n * s.K + g * Kg) * PQ,
                          dx + (n * s.C + g * Cg) * HW, inner);
  });
}

// dW (summed over the images in order, so the result does not depend on the threads) and db.
Status bwd_weight(const Conv2dShape& s, Conv2dAlgo algo, const float* x, const float* dy,
                  float* dw, float* db, int threads) {
  const int64_t PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, Kd = Cg * s.R * s.S;
  if (dw != nullptr) std::memset(dw, 0, sizeof(float) * s.K * Kd);
  std::vector<double> bsum(db != nullptr ? static_cast<size_t>(s.K) : 0);
  const int64_t T = tile_positions(Kd, PQ);
  float* tile = algo == Conv2dAlgo::kIm2col && dw != nullptr && Kd > 0
                    ? tl_tile.get(static_cast<size_t>(Kd * T))
                    : nullptr;
  for (int64_t n = 0; n < s.N; ++n) {
    if (db != nullptr) add_row_sums(s.K, PQ, dy + n * s.K * PQ, bsum.data(), threads);
    if (dw == nullptr || Kd == 0) continue;
    for (int64_t g = 0; g < s.groups; ++g) {
      const float* dyg = dy + (n * s.K + g * Kg) * PQ;
      const float* xg = x + (n * s.C + g * Cg) * HW;
      GemmArgs ga;
      ga.M = Kg, ga.N = Kd;
      ga.C = dw + g * Kg * Kd;
      ga.ldc = Kd;
      ga.accumulate = true;
      if (algo == Conv2dAlgo::kGemm1x1) {  // dW_g += dY_g X_g^T
        ga.K = PQ;
        ga.A = {dyg, PQ, 1};
        ga.B = {xg, 1, HW};
        const Status r = conv_gemm(ga, threads);
        if (r != Status::kOk) return r;
        continue;
      }
      const Gather gi = input_gather(s, xg);
      for (int64_t n0 = 0; n0 < PQ; n0 += T) {  // dW_g += dY_g[:, tile] col_tile^T
        const int64_t len = std::min(T, PQ - n0);
        gather_tile(gi, Kd, n0, len, tile, T, threads);
        ga.K = len;
        ga.A = {dyg + n0, PQ, 1};
        ga.B = {tile, 1, T};
        const Status r = conv_gemm(ga, threads);
        if (r != Status::kOk) return r;
      }
    }
  }
  if (db != nullptr)
    for (int64_t k = 0; k < s.K; ++k) db[k] = static_cast<float>(bsum[k]);
  return Status::kOk;
}

// A 1x1 convolution of 1x1 images (squeeze-excitation) is a linear layer over the batch:
// dX_g = dY_g W_g and dW_g = dY_g^T X_g, one GEMM each for the whole batch (per image they were
// N matrix-vector products and N rank-1 updates of dW).
Status bwd_pointwise(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, float* db, int threads) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
  for (int64_t g = 0; g < s.groups; ++g) {
    GemmArgs ga;
    if (dx != nullptr) {  // dX[n][c] = sum_k dY[n][k] W[k][c]
      ga.M = s.N, ga.N = Cg, ga.K = Kg;
      ga.A = {dy + g * Kg, s.K, 1};
      ga.B = {w + g * Kg * Cg, Cg, 1};
      ga.C = dx + g * Cg;
      ga.ldc = s.C;
      const Status r = conv_gemm(ga, threads);
      if (r != Status::kOk) return r;
    }
    if (dw != nullptr) {  // dW[k][c] = sum_n dY[n][k] X[n][c]
      ga.M = Kg, ga.N = Cg, ga.K = s.N;
      ga.A = {dy + g * Kg, 1, s.K};
      ga.B = {x + g * Cg, s.C, 1};
      ga.C = dw + g * Kg * Cg;
      ga.ldc = Cg;
      const Status r = conv_gemm(ga, threads);
      if (r != Status::kOk) return r;
    }
  }
  if (db != nullptr)
    for (int64_t k = 0; k < s.K; ++k) {
      double t = 0;
      for (int64_t n = 0; n < s.N; ++n) t += dy[n * s.K + k];
      db[k] = static_cast<float>(t);
    }
  return Status::kOk;
}

// t (N x Ch x PQ) <-> ws (Ch x N*PQ, image n's positions at column n*PQ), images in parallel.
void to_channel_major(const float* t, int64_t N, int64_t Ch, int64_t PQ, float* ws, int threads) {
  parallel_for(N * Ch, threads_for(N * Ch * PQ, 1 << 15, threads), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      std::memcpy(ws + (i % Ch * N + i / Ch) * PQ, t + i * PQ, sizeof(float) * PQ);
  });
}
void from_channel_major(const float* ws, int64_t N, int64_t Ch, int64_t PQ, float* t, int threads) {
  parallel_for(N * Ch, threads_for(N * Ch * PQ, 1 << 15, threads), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      std::memcpy(t + i * PQ, ws + (i % Ch * N + i / Ch) * PQ, sizeof(float) * PQ);
  });
}

// Backward data of a 1x1 convolution of small images (P*Q < kConvSmallImage, N > 1): dY copied
// channel-major, dX_g = W_g^T dY_g as one GEMM over the batch's N*P*Q positions into a
// channel-major dX, then moved to NCHW: 0.5-0.8 of the time of a GEMM per image (7 x 7 and
// 14 x 14, the 2-core Zen 5), which packed all of W for 49 columns. (The weight gradient's
// GEMMs per image lost nothing: their depth is the positions, their C stays in cache.)
Status bwd_data_pointwise_batch(const Conv2dShape& s, const float* w, const float* dy,
                                float* dx, int threads) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, PQ = s.P * s.Q;
  // images a chunk at a time, the two copies within 2^22 floats
  const int64_t nb = std::max<int64_t>(1, std::min(s.N, (int64_t{1} << 22) / ((s.K + s.C) * PQ)));
  static thread_local Scratch tl_dyc, tl_dxc;
  float* dyc = tl_dyc.get(static_cast<size_t>(s.K * nb * PQ));
  float* dxc = tl_dxc.get(static_cast<size_t>(s.C * nb * PQ));
  for (int64_t n0 = 0; n0 < s.N; n0 += nb) {
    const int64_t n = std::min(nb, s.N - n0), NPQ = n * PQ;
    to_channel_major(dy + n0 * s.K * PQ, n, s.K, PQ, dyc, threads);
    for (int64_t g = 0; g < s.groups; ++g) {
      GemmArgs ga;
      ga.M = Cg, ga.N = NPQ, ga.K = Kg;
      ga.A = {w + g * Kg * Cg, 1, Cg};
      ga.B = {dyc + g * Kg * NPQ, NPQ, 1};
      ga.C = dxc + g * Cg * NPQ;
      ga.ldc = NPQ;
      const Status r = conv_gemm(ga, threads);
      if (r != Status::kOk) return r;
    }
    from_channel_major(dxc, n, s.C, PQ, dx + n0 * s.C * PQ, threads);
  }
  return Status::kOk;
}

}  // namespace

bool conv2d_grouped_weight_direct(const Conv2dShape& s, Conv2dAlgo algo) {
  return algo == Conv2dAlgo::kIm2col && s.groups > 1 && s.K / s.groups <= kConvDirectGroup;
}

namespace {
// The direct grouped routes' conditions shared by both passes: a group's split planes (about
// Cg padded planes, or Kg of dy) within kDirectFloats. (Not the thread count: a route chosen by
// it would give different bits for different thread counts.)
constexpr int64_t kDirectFloats = int64_t{1} << 22;
bool grouped_direct_fits(const Conv2dShape& s, Conv2dAlgo algo) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
  const int64_t plane = (s.H + 2 * s.pad_h + s.R) * (s.W + 2 * s.pad_w + s.S);
  return algo == Conv2dAlgo::kIm2col && s.groups > 1 && std::max(Cg, Kg) * plane <= kDirectFloats;
}
}  // namespace

bool conv2d_grouped_fwd_direct(const Conv2dShape& s, Conv2dAlgo algo) {
  return grouped_direct_fits(s, algo) &&
         (s.stride_h > 1 || s.stride_w > 1 || s.P * s.Q < kConvSmallImage);
}

bool conv2d_grouped_bwd_direct(const Conv2dShape& s, Conv2dAlgo algo) {
  return grouped_direct_fits(s, algo) && (s.stride_h > 1 || s.stride_w > 1);
}

const float* conv2d_flipped_weight(const Conv2dShape& s, const float* w) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  float* wt = tl_wt.get(static_cast<size_t>(s.K * Cg * RS));
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t k = 0; k < Kg; ++k)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < RS; ++i)
          wt[((g * Cg + c) * Kg + k) * RS + (RS - 1 - i)] = w[((g * Kg + k) * Cg + c) * RS + i];
  return wt;
}

Status conv2d_bwd_avx2(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw, float* db, int threads, Conv2dAlgo algo) {
  const Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  const Conv2dAlgo input_algo = algo;
  if (algo == Conv2dAlgo::kAuto) algo = conv2d_pick_algo(s);
  if (!conv2d_algo_applies(s, algo)) return Status::kInvalidArgument;
  const int64_t Cg = s.C / s.groups, dx_n = s.N * s.C * s.H * s.W;
  // no output positions or channels: nothing flows back
  if (s.N == 0 || s.K == 0 || s.P * s.Q == 0) {
    if (dx != nullptr) std::memset(dx, 0, sizeof(float) * dx_n);
    if (dw != nullptr) std::memset(dw, 0, sizeof(float) * s.K * Cg * s.R * s.S);
    if (db != nullptr) std::memset(db, 0, sizeof(float) * s.K);
    return Status::kOk;
  }
  if (algo == Conv2dAlgo::kDepthwise) {
    dw::bwd<avx2::F32x8>(s, x, w, dy, dx, dw, db, threads);
    return Status::kOk;
  }
  if (conv2d_winograd_weight(s, input_algo) &&
      wino::bwd_weight<avx2::F32x8>(s, x, dy, dw, threads, &conv_gemm)) {
    dw = nullptr;
    conv2d_count_winograd_pass();
  }
  if (algo == Conv2dAlgo::kWinograd) {
    if (wino::bwd_data<avx2::F32x8>(s, w, dy, dx, threads, &conv_gemm)) {
      dx = nullptr;
      conv2d_count_winograd_pass();
    }
    algo = Conv2dAlgo::kIm2col;  // the bias gradient, and dx, dw where Winograd did not serve
  }
  if (algo == Conv2dAlgo::kGemm1x1 && s.P * s.Q == 1 && Cg > 0)
    return bwd_pointwise(s, x, w, dy, dx, dw, db, threads);
  if (dx != nullptr && Cg == 0) std::memset(dx, 0, sizeof(float) * dx_n);
  const bool finite = dx == nullptr || conv2d_weight_finite(w, s.K * Cg * s.R * s.S);
  const bool transposed = finite && s.stride_h == 1 && s.stride_w == 1 &&
                          conv2d_grouped_fwd_direct(conv2d_transposed(s), algo);
  const bool strided = finite && conv2d_grouped_bwd_direct(s, algo);
  const bool pointwise = algo == Conv2dAlgo::kGemm1x1 && s.P * s.Q < kConvSmallImage && s.N > 1;
  if (dx != nullptr && Cg > 0 && (transposed || strided || pointwise) &&
      (w == nullptr || dy == nullptr))
    return Status::kInvalidArgument;
  if (dx != nullptr && Cg > 0 && transposed) {
    dw::grouped_fwd<avx2::F32x8>(conv2d_transposed(s), dy, conv2d_flipped_weight(s, w), nullptr,
                                 dx, threads);
  } else if (dx != nullptr && Cg > 0 && pointwise) {
    const Status r = bwd_data_pointwise_batch(s, w, dy, dx, threads);
    if (r != Status::kOk) return r;
  } else if (dx != nullptr && Cg > 0 && strided) {
    dw::grouped_bwd_data<avx2::F32x8>(s, w, dy, dx, threads);
  } else if (dx != nullptr && Cg > 0) {
    const Status r = bwd_data(s, algo, w, dy, dx, threads);
    if (r != Status::kOk) return r;
  }
  if (dw == nullptr && db == nullptr) return Status::kOk;
  if (conv2d_grouped_weight_direct(s, algo)) {
    dw::grouped_weight<avx2::F32x8>(s, x, dy, dw, db, threads);
    return Status::kOk;
  }
  return bwd_weight(s, algo, x, dy, dw, db, threads);
}

}  // namespace dlkern
