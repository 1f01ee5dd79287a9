// Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016) for 3x3, stride-1, dilation-1 layers, any
// padding and groups (the GEMMs per group), written once over a vector type V (vec_avx2.h's
// F32x8, vec_avx512.h's F32x16). Include it after the vector header of the translation unit's
// path.
//
// The output is cut into 2 x 2 tiles, tile (i, j) of image n reading the 4 x 4 input patch at
// rows 2i - pad_h.., columns 2j - pad_w.. (zero outside the input). With
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1],
// a tile's output is A^T [ sum_c (G w[k][c] G^T) .* (B^T d[c] B) ] A: the sum over channels is,
// for each of the 16 positions xi of the 4 x 4 transformed tile, a GEMM
//   M_xi (K x tiles) = U_xi (K x C) * V_xi (C x tiles)   (per group: Kg x Cg times Cg x tiles),
// 2.25 times fewer multiplies than the direct convolution's (16 per 4 outputs instead of 36).
// The GEMMs run on the GEMM core; the transforms are vectorised over 8 or 16 tiles of a tile row
// (deinterleaving the input rows' even and odd columns, interleaving the output's).
//
// F(2x2, 3x3) is the largest tile that passes the registry's tolerance (4x torch's own float32
// error plus 2e-6 of the largest output): emulated on ResNet and VGG shapes, its max error
// against float64 is 0.12-0.16 of that bound, where F(3x3, 3x3) reaches 1.25 and F(4x4, 3x3)
// 1.62 (points 0, +-1, 1/2, -2, the most accurate set tried; python -m bench.winograd_error
// --tiles, docs/conv2d.md).
// Tiles: the batch's N * ceil(P/2) * ceil(Q/2) tiles in order (image, tile row, tile column)
// are the GEMMs' columns, cut into near-equal chunks (multiples of 16 tiles, at least 16) whose
// transformed input and output (16 (C + K) floats per tile) take at most the larger of 4 MiB and
// the transformed filter's bytes up to 32 MiB (the filter: 16 K C/groups floats, 16/9 of the
// weight, computed on each call, read once per chunk). A 4 MiB cap on every
// layer read a 512-channel filter 2 to 7 times: the larger cap took 0.80-0.91 of its time from
// 512 x 7 x 7 to 512 x 28 x 28 and 0.73 at 1024 x 7 x 7, 256 channels unchanged (0.98-1.01; the
// 2-core Zen 5, avx512, 2026-12-04). Chunks within a small layer's input plus output bytes made a
// 512 x 7 x 7 layer's forward 1.28x im2col's time; 0.5-2 MiB chunks were 3-20% slower at 64 to
// 256 channels.
// Threads: the input transform splits channels, the GEMMs the 16 positions, the output transform
// output channels; every sum runs in one fixed order, so results do not depend on the thread
// count.
//
// Non-finite values: the transforms mix a tile's inputs, so an infinity or NaN in x or w reaches
// outputs the direct convolution leaves finite (and inf - inf makes NaN where it gives an
// infinity). fwd() returns false when any output it wrote is not finite; the caller then computes
// the layer again by another route.
//
// Everything here is in an anonymous namespace, as depthwise.h: each path's translation unit
// compiles its own copy for its own target, and no copy can be shared between them at link
// time (an AVX-512 one would be a SIGILL on a CPU without it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../conv2d.h"
#include "../gemm.h"
#include "conv2d_parts.h"
#include "parallel.h"
#include "scratch.h"

namespace dlkern {
namespace {
namespace wino {

constexpr int kXi = 16;                                // positions of a transformed 4 x 4 tile
constexpr int64_t kChunkBytes = int64_t{4} << 20;      // transformed input + output of a chunk

// conv2d_algo_applies(kWinograd) and some input and output. Any padding, negative too (the
// transposed convolution of backward data crops where the layer's padding exceeds 2).
inline bool applies(const Conv2dShape& s) {
  return conv2d_algo_applies(s, Conv2dAlgo::kWinograd) && s.N > 0 && s.C > 0 && s.K > 0 &&
         s.P > 0 && s.Q > 0 && s.H > 0 && s.W > 0;
}

struct Plan {
  int64_t th, tw, tiles;  // tile rows and columns per image; tiles of the batch
  int64_t chunk, ld;      // tiles per chunk; row stride of the transformed input and output
};

// Chunks: all threads work on each (the input transform splitting channels, the GEMMs
// positions, the output transform output channels). Chunks each thread ran alone, kept in its
// core's cache from the input to the output transform, measured slower: 0.89-1.3x at 64
// channels with 64 to 1024 tiles per chunk (too few GEMM columns, or too few chunks to share).
// Floats of the transformed filter U (and of the weight gradient's dU): 16 K C/groups.
inline int64_t filter_floats(const Conv2dShape& s) { return kXi * s.K * (s.C / s.groups); }

inline Plan plan(const Conv2dShape& s) {
  Plan p;
  p.th = (s.P + 1) / 2, p.tw = (s.Q + 1) / 2, p.tiles = s.N * p.th * p.tw;
  // chunks of at most the larger of 4 MiB and the transformed filter (itself capped at 32 MiB),
  // cut near equal (multiples of 16 tiles, at least 16)
  const int64_t per_tile = 4 * kXi * (s.C + s.K);
  const int64_t budget = std::max(kChunkBytes, std::min(4 * filter_floats(s), 8 * kChunkBytes));
  const int64_t cap = std::max<int64_t>(budget / per_tile / kGemmNR * kGemmNR, kGemmNR);
  const int64_t chunks = (p.tiles + cap - 1) / cap;
  const int64_t even = ((p.tiles + chunks - 1) / chunks + kGemmNR - 1) / kGemmNR * kGemmNR;
  p.chunk = std::min(p.tiles, even);
  p.ld = (p.chunk + kGemmNR - 1) / kGemmNR * kGemmNR + kGemmNR;  // a vector past the last tile
  if (p.ld % 512 == 0) p.ld += kGemmNR;  // rows 2 or 4 KiB apart alias in the caches
  return p;
}

// Tile t of the batch as (image, tile row, tile column).
struct TileAt {
  int64_t n, i, j;
};
inline TileAt tile_at(const Plan& p, int64_t t) {
  const int64_t per_image = p.th * p.tw, r = t % per_image;
  return {t / per_image, r / p.tw, r % p.tw};
}

// Calls f(t, at, len) for the runs of tiles [t, t + len) of [t0, t1) that lie in one tile row.
template <typename F>
void for_tile_rows(const Plan& p, int64_t t0, int64_t t1, const F& f) {
  for (int64_t t = t0; t < t1;) {
    const TileAt at = tile_at(p, t);
    const int64_t len = std::min(p.tw - at.j, t1 - t);
    f(t, at, len);
    t += len;
  }
}

// U[xi][k][c] = (G w[k][c] G^T)[xi], vectorised over c; U aligned to 64 bytes. A U over
// kChunkBytes is written past the caches (it would not stay there for the GEMMs, and the
// stores then skip reading the lines first): 0.93-0.97 of a 512-channel forward's time at
// 7 x 7 and 14 x 14 (the 2-core Zen 5, avx512, 2026-12-04).
template <typename V>
void transform_filter(const Conv2dShape& s, const float* w, float* U, int threads) {
  using R = typename V::reg;
  const int64_t C = s.C / s.groups, K = s.K, KC = K * C;  // w is K x C / groups x 3 x 3
  const float* end = w + KC * 9;
  const bool stream = C % V::L == 0 && 4 * filter_floats(s) > kChunkBytes;
  parallel_for(K, threads_for(KC * 9, 1 << 14, threads), [&](int64_t kb, int64_t ke) {
    const R half = V::set1(0.5f);
    for (int64_t k = kb; k < ke; ++k)
      for (int64_t c = 0; c < C; c += V::L) {
        const int64_t n = std::min<int64_t>(V::L, C - c);
        const float* src = w + (k * C + c) * 9;
        // the n filters' 9 taps: L rows of L floats (9 taps and the next filter's first ones)
        // transposed, so that tap e of filter c + i is lane i of r[e]; on ymm tap 8 gathered
        R r[V::L], g[9], a[4][3];
        for (int i = 0; i < V::L; ++i) {
          const int64_t avail = i < n ? std::min<int64_t>(V::L, end - (src + i * 9)) : 0;
          r[i] = avail == V::L ? V::load(src + i * 9) : V::load_first(src + i * 9, avail);
        }
        V::transpose(r);
        for (int e = 0; e < 9 && e < V::L; ++e) g[e] = r[e];
        if (V::L < 9) g[8] = V::gather_first(src + 8, 9, n);
        for (int col = 0; col < 3; ++col) {  // G g: rows of the 4 x 3 product
          const R g0 = g[col], g1 = g[3 + col], g2 = g[6 + col];
          a[0][col] = g0;
          a[1][col] = V::mul(half, V::add(V::add(g0, g1), g2));
          a[2][col] = V::mul(half, V::add(V::sub(g0, g1), g2));
          a[3][col] = g2;
        }
        for (int row = 0; row < 4; ++row) {  // (G g) G^T
          const R a0 = a[row][0], a1 = a[row][1], a2 = a[row][2];
          const R u[4] = {a0, V::mul(half, V::add(V::add(a0, a1), a2)),
                          V::mul(half, V::add(V::sub(a0, a1), a2)), a2};
          for (int col = 0; col < 4; ++col) {
            float* dst = U + (row * 4 + col) * KC + k * C + c;
            if (stream) V::stream(dst, u[col]);
            else V::store_first(dst, u[col], n);
          }
        }
      }
    if (stream) _mm_sfence();  // the streamed stores seen before the GEMMs read U
  });
}

// B^T d down the columns of the input patches of tiles [j, j + len) of tile row i of plane xc:
// rows t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3 of the 2 len + 2 columns from
// 2j - pad_w (d0..d3 the patch's rows, zero outside the plane), zero past them; buf holds 4
// rows of `width` >= 2 len + 2 L + 2 floats.
template <typename V>
void patch_columns(const Conv2dShape& s, const float* xc, int64_t i, int64_t j, int64_t len,
                   int64_t width, float* buf) {
  using R = typename V::reg;
  const int64_t cols = 2 * len + 2, col0 = 2 * j - s.pad_w;
  const int64_t b0 = std::min(cols, std::max<int64_t>(0, -col0));
  const int64_t b1 = std::max(b0, std::min(cols, s.W - col0));
  const float* rows[4];
  for (int r = 0; r < 4; ++r) {
    const int64_t ih = 2 * i - s.pad_h + r;
    rows[r] = ih >= 0 && ih < s.H ? xc + ih * s.W + col0 : nullptr;
  }
  for (int r = 0; r < 4; ++r) std::memset(buf + r * width, 0, sizeof(float) * b0);
  int64_t b = b0;
  for (; b < b1; b += V::L) {
    const int64_t n = std::min<int64_t>(V::L, b1 - b);
    R d[4];
    for (int r = 0; r < 4; ++r)
      d[r] = rows[r] == nullptr ? V::zero()
             : n == V::L        ? V::load(rows[r] + b)
                                : V::load_first(rows[r] + b, n);
    for (int r = 2; r < 4; ++r)  // the rows the next tile row adds
      if (rows[r] != nullptr) __builtin_prefetch(rows[r] + b + 2 * s.W);
    V::store(buf + b, V::sub(d[0], d[2]));
    V::store(buf + width + b, V::add(d[1], d[2]));
    V::store(buf + 2 * width + b, V::sub(d[2], d[1]));
    V::store(buf + 3 * width + b, V::sub(d[1], d[3]));
  }
  const int64_t end = std::min(width, 2 * len + 2 * V::L + 2);  // what transform_input reads
  for (int r = 0; r < 4; ++r)
    if (b < end) std::memset(buf + r * width + b, 0, sizeof(float) * (end - b));
}

// Vt[xi][c][t - t0] = (B^T d B)[xi] for the tiles t of [t0, t1), channels split among threads.
template <typename V>
void transform_input(const Conv2dShape& s, const Plan& p, const float* x, int64_t t0, int64_t t1,
                     float* Vt, int threads) {
  using R = typename V::reg;
  const int64_t width = 2 * p.tw + 2 * V::L + 2, stride = s.C * p.ld;
  parallel_for(s.C, threads_for(s.C * (t1 - t0) * kXi, 1 << 14, threads), [&](int64_t cb,
                                                                            int64_t ce) {
    static thread_local Scratch tl_rows;
    float* buf = tl_rows.get(static_cast<size_t>(4 * width));
    for (int64_t c = cb; c < ce; ++c)
      for_tile_rows(p, t0, t1, [&](int64_t t, const TileAt& at, int64_t len) {
        patch_columns<V>(s, x + (at.n * s.C + c) * s.H * s.W, at.i, at.j, len, width, buf);
        float* dst = Vt + c * p.ld + (t - t0);
        for (int64_t l = 0; l < len; l += V::L) {
          const int64_t n = std::min<int64_t>(V::L, len - l);
          for (int a = 0; a < 4; ++a) {  // (B^T d) B along row a: columns 2l.. of it
            const float* row = buf + a * width + 2 * l;
            R e, o, e2, o2;
            V::split(V::load(row), V::load(row + V::L), e, o);
            V::split(V::load(row + 2), V::load(row + 2 + V::L), e2, o2);
            float* out = dst + a * 4 * stride + l;
            const R v[4] = {V::sub(e, e2), V::add(o, e2), V::sub(e2, o), V::sub(o, o2)};
            for (int b = 0; b < 4; ++b) {
              if (n == V::L) V::store(out + b * stride, v[b]);
              else V::store_first(out + b * stride, v[b], n);
            }
          }
        }
      });
  });
}

// y's tiles [t0, t1) = A^T M A (+ bias) from Mt[xi][k][t - t0], output channels split among
// threads. Returns whether every value computed was finite. Reads Mt's columns up to a vector
// past t1 - t0, which must hold finite values.
template <typename V>
bool transform_output(const Conv2dShape& s, const Plan& p, const float* Mt, const float* bias,
                      int64_t t0, int64_t t1, float* y, int threads) {
  using R = typename V::reg;
  const int64_t stride = s.K * p.ld;
  int bad = 0;
  parallel_for(s.K, threads_for(s.K * (t1 - t0) * kXi, 1 << 14, threads), [&](int64_t kb,
                                                                            int64_t ke) {
    R nonfinite = V::zero();  // 0 * v summed: NaN once some v is not finite
    const R zero = V::zero();
    for (int64_t k = kb; k < ke; ++k) {
      const R b = V::set1(bias ? bias[k] : 0.f);
      for_tile_rows(p, t0, t1, [&](int64_t t, const TileAt& at, int64_t len) {
        const float* src = Mt + k * p.ld + (t - t0);
        float* y0 = y + ((at.n * s.K + k) * s.P + 2 * at.i) * s.Q;
        const bool second = 2 * at.i + 1 < s.P;
        for (int64_t l = 0; l < len; l += V::L) {
          R z[2][4];
          for (int col = 0; col < 4; ++col) {  // A^T M down the columns
            const R m0 = V::load(src + (0 * 4 + col) * stride + l);
            const R m1 = V::load(src + (1 * 4 + col) * stride + l);
            const R m2 = V::load(src + (2 * 4 + col) * stride + l);
            const R m3 = V::load(src + (3 * 4 + col) * stride + l);
            z[0][col] = V::add(V::add(m0, m1), m2);
            z[1][col] = V::sub(V::sub(m1, m2), m3);
          }
          const int64_t q = 2 * (at.j + l);
          const int64_t cols = std::min<int64_t>(std::min<int64_t>(2 * V::L, s.Q - q),
                                                 2 * (len - l));
          for (int row = 0; row < 2; ++row) {  // (A^T M) A along the row, interleaved
            const R a = V::add(V::add(V::add(z[row][0], z[row][1]), z[row][2]), b);
            const R c = V::add(V::sub(V::sub(z[row][1], z[row][2]), z[row][3]), b);
            nonfinite = V::add(nonfinite, V::add(V::mul(a, zero), V::mul(c, zero)));
            if (row == 1 && !second) break;
            R lo, hi;
            V::zip(a, c, lo, hi);
            float* dst = y0 + row * s.Q + q;
            V::store_first(dst, lo, std::min<int64_t>(cols, V::L));
            if (cols > V::L) V::store_first(dst + V::L, hi, cols - V::L);
          }
        }
      });
    }
    if (V::sum(nonfinite) != 0.f) {
#pragma omp atomic write
      bad = 1;
    }
  });
  return bad == 0;
}

using GemmFn = Status (*)(const GemmArgs&, int);

// Mt_xi (K x nt) = U_xi (K x C) Vt_xi (C x nt) for the 16 positions, split among threads; Mt's
// columns nt.. of each row zeroed (the output transform's vectors read past nt).
inline bool multiply(const Conv2dShape& s, const Plan& p, const float* U, const float* Vt,
                     int64_t nt, float* Mt, int threads, GemmFn gemm) {
  int failed = 0;
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
  // up to 16 threads a position each; more share each GEMM (OpenMP does not nest here)
  const int outer = threads > kXi ? 1 : threads, inner = threads > kXi ? threads : 1;
  parallel_for(kXi, outer, [&](int64_t b, int64_t e) {
    for (int64_t xi = b; xi < e; ++xi) {
      float* m = Mt + xi * s.K * p.ld;
      for (int64_t k = 0; k < s.K; ++k)
        std::memset(m + k * p.ld + nt, 0, sizeof(float) * (p.ld - nt));
      for (int64_t gr = 0; gr < s.groups; ++gr) {  // a group's output channels, its inputs
        GemmArgs g;
        g.M = Kg, g.N = nt, g.K = Cg;
        g.A = {U + (xi * s.K + gr * Kg) * Cg, Cg, 1};
        g.B = {Vt + (xi * s.C + gr * Cg) * p.ld, p.ld, 1};
        g.C = m + gr * Kg * p.ld, g.ldc = p.ld;
        if (gemm(g, inner) != Status::kOk) {
#pragma omp atomic write
          failed = 1;
        }
      }
    }
  });
  return failed == 0;
}

// y's tiles [t0, t1): input transform, products, output transform, on `threads` threads.
template <typename V>
bool tiles(const Conv2dShape& s, const Plan& p, const float* x, const float* U, const float* bias,
           int64_t t0, int64_t t1, float* y, int threads, GemmFn gemm) {
  static thread_local Scratch tl_v, tl_m;
  float* Vt = tl_v.get(static_cast<size_t>(kXi * s.C * p.ld));
  float* Mt = tl_m.get(static_cast<size_t>(kXi * s.K * p.ld));
  transform_input<V>(s, p, x, t0, t1, Vt, threads);
  return multiply(s, p, U, Vt, t1 - t0, Mt, threads, gemm) &&
         transform_output<V>(s, p, Mt, bias, t0, t1, y, threads);
}

// y = conv(x, w) + bias. Returns false, y then partly overwritten, for a shape applies()
// refuses, a null x, w or y, a failed GEMM, or an output that came out non-finite (the top of
// the file); the caller computes y again.
template <typename V>
bool fwd(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
         int threads, GemmFn gemm) {
  if (!applies(s) || x == nullptr || w == nullptr || y == nullptr) return false;
  const Plan p = plan(s);
  static thread_local Scratch tl_u;
  float* U = tl_u.get(static_cast<size_t>(filter_floats(s)));
  transform_filter<V>(s, w, U, threads);
  for (int64_t t0 = 0; t0 < p.tiles; t0 += p.chunk)
    if (!tiles<V>(s, p, x, U, bias, t0, std::min(p.tiles, t0 + p.chunk), y, threads, gemm))
      return false;
  return true;
}

// Backward data by fwd() over dy with the flipped, transposed weight (where the transposed
// shape applies and w, dy are given; a non-finite weight is left to im2col at once). Returns
// whether dx holds the result.
template <typename V>
bool bwd_data(const Conv2dShape& s, const float* w, const float* dy, float* dx, int threads,
              GemmFn gemm) {
  const Conv2dShape t = conv2d_transposed(s);
  if (!applies(t) || w == nullptr || dy == nullptr || dx == nullptr ||
      !conv2d_weight_finite(w, s.K * (s.C / s.groups) * 9))
    return false;
  return fwd<V>(t, dy, conv2d_flipped_weight(s, w), nullptr, dx, threads, gemm);
}

// Zt[xi][k][t - t0] = (A g A^T)[xi] for the tiles t of [t0, t1), g a tile's 2 x 2 values of dy
// (zero past P and Q), A = [1 0; 1 1; 1 -1; 0 -1]; output channels split among threads.
template <typename V>
void transform_grad(const Conv2dShape& s, const Plan& p, const float* dy, int64_t t0, int64_t t1,
                    float* Zt, int threads) {
  using R = typename V::reg;
  const int64_t stride = s.K * p.ld;
  parallel_for(s.K, threads_for(s.K * (t1 - t0) * kXi, 1 << 14, threads), [&](int64_t kb,
                                                                            int64_t ke) {
    for (int64_t k = kb; k < ke; ++k)
      for_tile_rows(p, t0, t1, [&](int64_t t, const TileAt& at, int64_t len) {
        const float* g0 = dy + ((at.n * s.K + k) * s.P + 2 * at.i) * s.Q;
        const bool second = 2 * at.i + 1 < s.P;
        float* dst = Zt + k * p.ld + (t - t0);
        for (int64_t l = 0; l < len; l += V::L) {
          const int64_t n = std::min<int64_t>(V::L, len - l), q = 2 * (at.j + l);
          const int64_t cols = std::min<int64_t>(2 * n, s.Q - q);
          R e[2], o[2];  // columns 2j and 2j + 1 of the tile's two rows
          for (int r = 0; r < 2; ++r) {
            const float* row = g0 + r * s.Q + q;
            const bool here = r == 0 || second;
            V::split(here ? V::load_first(row, std::min<int64_t>(cols, V::L)) : V::zero(),
                     here && cols > V::L ? V::load_first(row + V::L, cols - V::L) : V::zero(),
                     e[r], o[r]);
          }
          // A g: rows g0, g0 + g1, g0 - g1, -g1; then (A g) A^T along each row the same
          const R zero = V::zero();
          const R ce[4] = {e[0], V::add(e[0], e[1]), V::sub(e[0], e[1]), V::sub(zero, e[1])};
          const R co[4] = {o[0], V::add(o[0], o[1]), V::sub(o[0], o[1]), V::sub(zero, o[1])};
          for (int a = 0; a < 4; ++a) {
            const R v[4] = {ce[a], V::add(ce[a], co[a]), V::sub(ce[a], co[a]), V::sub(zero, co[a])};
            for (int b = 0; b < 4; ++b) V::store_first(dst + (a * 4 + b) * stride + l, v[b], n);
          }
        }
      });
  });
}

// dw[k][c] = G^T dU[k][c] G (3 x 3 from 4 x 4), vectorised over c; whether all are finite.
template <typename V>
bool filter_gradient(const Conv2dShape& s, const float* dU, float* dw, int threads) {
  using R = typename V::reg;
  const int64_t C = s.C / s.groups, KC = s.K * C;
  int bad = 0;
  parallel_for(s.K, threads_for(KC * 16, 1 << 14, threads), [&](int64_t kb, int64_t ke) {
    const R half = V::set1(0.5f), zero = V::zero();
    R nonfinite = V::zero();
    alignas(64) float out[9][V::L];
    for (int64_t k = kb; k < ke; ++k)
      for (int64_t c = 0; c < C; c += V::L) {
        const int64_t n = std::min<int64_t>(V::L, C - c);
        R w[3][4];
        for (int b = 0; b < 4; ++b) {  // G^T u down the columns
          const float* u = dU + b * KC + k * C + c;
          const R u0 = V::load_first(u, n), u1 = V::load_first(u + 4 * KC, n);
          const R u2 = V::load_first(u + 8 * KC, n), u3 = V::load_first(u + 12 * KC, n);
          const R sum = V::mul(half, V::add(u1, u2));
          w[0][b] = V::add(u0, sum);
          w[1][b] = V::mul(half, V::sub(u1, u2));
          w[2][b] = V::add(sum, u3);
        }
        for (int r = 0; r < 3; ++r) {  // (G^T u) G along the rows
          const R sum = V::mul(half, V::add(w[r][1], w[r][2]));
          const R v[3] = {V::add(w[r][0], sum), V::mul(half, V::sub(w[r][1], w[r][2])),
                          V::add(sum, w[r][3])};
          for (int q = 0; q < 3; ++q) {
            V::store(out[r * 3 + q], v[q]);
            nonfinite = V::add(nonfinite, V::mul(v[q], zero));
          }
        }
        for (int64_t i = 0; i < n; ++i)
          for (int e = 0; e < 9; ++e) dw[(k * C + c + i) * 9 + e] = out[e][i];
      }
    if (V::sum(nonfinite) != 0.f) {
#pragma omp atomic write
      bad = 1;
    }
  });
  return bad == 0;
}

// dw = the weight gradient (dU_xi = sum over tiles of Z_xi V_xi^T, then G^T dU G), the tiles
// in the forward's chunks, each chunk's 16 products accumulated in order (threads split the
// positions). Returns false, dw then partly overwritten, for a shape applies() refuses, a null
// x, dy or dw, a failed GEMM, or a non-finite result; the caller computes dw again.
template <typename V>
bool bwd_weight(const Conv2dShape& s, const float* x, const float* dy, float* dw, int threads,
                GemmFn gemm) {
  if (!applies(s) || x == nullptr || dy == nullptr || dw == nullptr) return false;
  const Plan p = plan(s);
  static thread_local Scratch tl_du, tl_v, tl_z;
  float* dU = tl_du.get(static_cast<size_t>(filter_floats(s)));
  float* Vt = tl_v.get(static_cast<size_t>(kXi * s.C * p.ld));
  float* Zt = tl_z.get(static_cast<size_t>(kXi * s.K * p.ld));
  for (int64_t t0 = 0; t0 < p.tiles; t0 += p.chunk) {
    const int64_t t1 = std::min(p.tiles, t0 + p.chunk);
    transform_input<V>(s, p, x, t0, t1, Vt, threads);
    transform_grad<V>(s, p, dy, t0, t1, Zt, threads);
    int failed = 0;
    const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int outer = threads > kXi ? 1 : threads, inner = threads > kXi ? threads : 1;
    parallel_for(kXi, outer, [&](int64_t b, int64_t e) {
      for (int64_t xi = b; xi < e; ++xi)
        for (int64_t gr = 0; gr < s.groups; ++gr) {
          GemmArgs g;
          g.M = Kg, g.N = Cg, g.K = t1 - t0;
          g.A = {Zt + (xi * s.K + gr * Kg) * p.ld, p.ld, 1};
          g.B = {Vt + (xi * s.C + gr * Cg) * p.ld, 1, p.ld};
          g.C = dU + (xi * s.K + gr * Kg) * Cg, g.ldc = Cg;
          g.accumulate = t0 > 0;
          if (gemm(g, inner) != Status::kOk) {
#pragma omp atomic write
            failed = 1;
          }
        }
    });
    if (failed) return false;
  }
  return filter_gradient<V>(s, dU, dw, threads);
}

}  // namespace wino
}  // namespace
}  // namespace dlkern
