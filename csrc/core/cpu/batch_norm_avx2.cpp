// AVX2/FMA batchnorm chunk kernels: the reductions accumulate in double (independent vector
// accumulators); one pass per kernel.
#include <algorithm>
#include <cstdint>

#include "../batch_norm.h"
#include "vec_avx2.h"

namespace dlkern {
namespace {

// The reductions accumulate in double: each group of 4 floats is widened (vcvtps2pd) and shifted,
// added and squared in double. The pass reads each value once and stays near memory speed; float
// accumulators (even flushed into doubles every 256 values) left the mean of a 2x64x112x112 conv
// output (|mean| << std) 25x further from the float64 mean than torch's, which is the correctly
// rounded mean.
static inline __m256d load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

void stats_avx2(const float* x, int64_t n, float k, double* s1, double* s2) {
  const __m256d kv = _mm256_set1_pd(static_cast<double>(k));
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  __m256d b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256d d0 = _mm256_sub_pd(load4(x + i), kv);
    const __m256d d1 = _mm256_sub_pd(load4(x + i + 4), kv);
    const __m256d d2 = _mm256_sub_pd(load4(x + i + 8), kv);
    const __m256d d3 = _mm256_sub_pd(load4(x + i + 12), kv);
    a0 = _mm256_add_pd(a0, d0);
    a1 = _mm256_add_pd(a1, d1);
    a2 = _mm256_add_pd(a2, d2);
    a3 = _mm256_add_pd(a3, d3);
    b0 = _mm256_fmadd_pd(d0, d0, b0);
    b1 = _mm256_fmadd_pd(d1, d1, b1);
    b2 = _mm256_fmadd_pd(d2, d2, b2);
    b3 = _mm256_fmadd_pd(d3, d3, b3);
  }
  for (; i + 4 <= n; i += 4) {
    const __m256d d = _mm256_sub_pd(load4(x + i), kv);
    a0 = _mm256_add_pd(a0, d);
    b0 = _mm256_fmadd_pd(d, d, b0);
  }
  double sa = avx2::hsum_pd(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
  double sb = avx2::hsum_pd(_mm256_add_pd(_mm256_add_pd(b0, b1), _mm256_add_pd(b2, b3)));
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(k);
    sa += d;
    sb += d * d;
  }
  *s1 = sa;
  *s2 = sb;
}

void normalize_avx2(const float* x, int64_t n, float mean, float scale, float shift, float* y) {
  const __m256 m = _mm256_set1_ps(mean), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), sc, sh));
    _mm256_storeu_ps(y + i + 8,
                     _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), m), sc, sh));
  }
  for (; i < n; ++i) y[i] = (x[i] - mean) * scale + shift;
}

void normalize_rows_avx2(const float* x, int64_t S, int64_t rows, int64_t c0, int64_t C,
                         const float* mean, const float* scale, const float* shift, float* y) {
  const int64_t full = S & ~int64_t{7};
  const __m256i tail = avx2::first_lanes(static_cast<int>(S - full));
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1) {
    const float* xr = x + r * S;
    float* yr = y + r * S;
    const __m256 m = _mm256_set1_ps(mean[c]), sc = _mm256_set1_ps(scale[c]);
    const __m256 sh = _mm256_set1_ps(shift[c]);
    for (int64_t i = 0; i < full; i += 8)
      _mm256_storeu_ps(yr + i, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), m), sc, sh));
    if (full < S)  // masked tail: no scalar loop per row
      _mm256_maskstore_ps(yr + full, tail,
                          _mm256_fmadd_ps(_mm256_sub_ps(_mm256_maskload_ps(xr + full, tail), m),
                                          sc, sh));
  }
}

void bwd_reduce_avx2(const float* x, const float* dy, int64_t n, float mean, double* sdy,
                     double* sdyx) {
  const __m256d m = _mm256_set1_pd(static_cast<double>(mean));
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256d g0 = load4(dy + i), g1 = load4(dy + i + 4);
    a0 = _mm256_add_pd(a0, g0);
    a1 = _mm256_add_pd(a1, g1);
    b0 = _mm256_fmadd_pd(g0, _mm256_sub_pd(load4(x + i), m), b0);
    b1 = _mm256_fmadd_pd(g1, _mm256_sub_pd(load4(x + i + 4), m), b1);
  }
  double sa = avx2::hsum_pd(_mm256_add_pd(a0, a1));
  double sb = avx2::hsum_pd(_mm256_add_pd(b0, b1));
  for (; i < n; ++i) {
    sa += dy[i];
    sb += static_cast<double>(dy[i]) * (static_cast<double>(x[i]) - mean);
  }
  *sdy = sa;
  *sdyx = sb;
}

void bwd_dx_avx2(const float* x, const float* dy, int64_t n, float mean, float a, float bb, float c,
                 float* dx) {
  const __m256 av = _mm256_set1_ps(a), cv = _mm256_set1_ps(c);
  int64_t i = 0;
  if (bb == 0.f) {  // eval mode, or a channel whose reduction vanished: x is not needed
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(dy + i), cv));
    for (; i < n; ++i) dx[i] = a * dy[i] + c;
    return;
  }
  const __m256 m = _mm256_set1_ps(mean), bv = _mm256_set1_ps(bb);
  for (; i + 8 <= n; i += 8) {
    const __m256 t = _mm256_fmadd_ps(bv, _mm256_sub_ps(_mm256_loadu_ps(x + i), m), cv);
    _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(dy + i), t));
  }
  for (; i < n; ++i) dx[i] = a * dy[i] + (bb * (x[i] - mean) + c);
}

// Row-range variants for small spatial extents: masked tails instead of a scalar loop per row.
void bwd_reduce_rows_avx2(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                          int64_t C, const float* mean, double* sdy, double* sdyx) {
  const int64_t full = S & ~int64_t{7};
  const __m256i tail = avx2::first_lanes(static_cast<int>(S - full));
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1) {
    const float* xr = x + r * S;
    const float* gr = dy + r * S;
    const __m256d md = _mm256_set1_pd(static_cast<double>(mean[c]));
    __m256d da = _mm256_setzero_pd(), db = da;
    auto add8 = [&](__m256 g, __m256 xv) {
      const __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(g));
      const __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
      const __m256d x0 = _mm256_cvtps_pd(_mm256_castps256_ps128(xv));
      const __m256d x1 = _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1));
      da = _mm256_add_pd(da, _mm256_add_pd(g0, g1));
      db = _mm256_fmadd_pd(g0, _mm256_sub_pd(x0, md), db);
      db = _mm256_fmadd_pd(g1, _mm256_sub_pd(x1, md), db);
    };
    for (int64_t i = 0; i < full; i += 8) add8(_mm256_loadu_ps(gr + i), _mm256_loadu_ps(xr + i));
    // masked lanes: g = 0 and x - m = -m, so they add 0 (unless mean is inf/NaN, which poisons
    // the whole channel anyway)
    if (full < S) add8(_mm256_maskload_ps(gr + full, tail), _mm256_maskload_ps(xr + full, tail));
    sdy[r] = avx2::hsum_pd(da);
    sdyx[r] = avx2::hsum_pd(db);
  }
}

void bwd_dx_rows_avx2(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                      int64_t C, const float* mean, const float* a, const float* bb,
                      const float* cc, float* dx) {
  const int64_t full = S & ~int64_t{7};
  const __m256i tail = avx2::first_lanes(static_cast<int>(S - full));
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1) {
    const float* xr = x + r * S;
    const float* gr = dy + r * S;
    float* dr = dx + r * S;
    const __m256 av = _mm256_set1_ps(a[c]), cv = _mm256_set1_ps(cc[c]);
    if (bb[c] == 0.f) {  // eval mode: x is not read
      for (int64_t i = 0; i < full; i += 8)
        _mm256_storeu_ps(dr + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(gr + i), cv));
      if (full < S)
        _mm256_maskstore_ps(dr + full, tail,
                            _mm256_fmadd_ps(av, _mm256_maskload_ps(gr + full, tail), cv));
      continue;
    }
    const __m256 m = _mm256_set1_ps(mean[c]), bv = _mm256_set1_ps(bb[c]);
    for (int64_t i = 0; i < full; i += 8) {
      const __m256 t = _mm256_fmadd_ps(bv, _mm256_sub_ps(_mm256_loadu_ps(xr + i), m), cv);
      _mm256_storeu_ps(dr + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(gr + i), t));
    }
    if (full < S) {
      const __m256 t =
          _mm256_fmadd_ps(bv, _mm256_sub_ps(_mm256_maskload_ps(xr + full, tail), m), cv);
      _mm256_maskstore_ps(dr + full, tail,
                          _mm256_fmadd_ps(av, _mm256_maskload_ps(gr + full, tail), t));
    }
  }
}

// The narrow path: vectors across a row's W columns. The reductions keep each 16-column block's
// sums in registers over all rows (one cache line per row and block; the centre, k or mean,
// widened once per block), widened to double as the wide path's are; the elementwise kernels go
// row by row. Tails are masked.

// The lanes of a block of 8 columns: all of them, or the first n of a tail (masked loads and
// stores only there: AMD's masked stores are microcoded).
struct Lanes {
  bool masked;
  __m256i m;
  explicit Lanes(int64_t n) : masked(n < 8), m(avx2::first_lanes(n)) {}
};
static inline __m256 load8(const float* p, const Lanes& l) {
  return l.masked ? _mm256_maskload_ps(p, l.m) : _mm256_loadu_ps(p);
}
static inline void store8(float* p, __m256 v, const Lanes& l) {
  if (l.masked)
    _mm256_maskstore_ps(p, l.m, v);
  else
    _mm256_storeu_ps(p, v);
}

// the 8 (masked) floats at p as two double vectors
static inline void widen8(const float* p, const Lanes& l, __m256d* lo, __m256d* hi) {
  const __m256 v = load8(p, l);
  *lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  *hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}

// s1[j] = sum over rows of (x - centre[j]) (or of g, kWeighted), s2[j] = sum of (x - centre[j])^2
// (or of g * (x - centre[j])), for W <= kBatchNormNarrowCols: the statistics (g null) and the
// backward sums. Four rows at a time, each row read left to right (four sequential streams the
// prefetchers follow; a walk down a column block touched one line per row and page), summed in
// double registers per 16-column block and added into column sums that stay in L1.

template <bool kWeighted>
void cols_reduce(const float* x, const float* g, int64_t rows, int64_t W, int64_t ld,
                 const float* centre, double* s1, double* s2) {
  alignas(32) double acc1[kBatchNormNarrowCols] = {}, acc2[kBatchNormNarrowCols] = {};
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int64_t nr = std::min<int64_t>(4, rows - r0);
    for (int64_t j = 0; j < W; j += 16) {
      const int64_t n = std::min<int64_t>(16, W - j);
      const Lanes m0(std::min<int64_t>(n, 8)), m1(std::max<int64_t>(n - 8, 0));
      __m256d c[4], a[4], b[4];
      widen8(centre + j, m0, &c[0], &c[1]);
      widen8(centre + j + 8, m1, &c[2], &c[3]);
      for (int q = 0; q < 4; ++q) a[q] = b[q] = _mm256_setzero_pd();
      for (int64_t r = r0; r < r0 + nr; ++r) {
        __m256d v[4];
        widen8(x + r * ld + j, m0, &v[0], &v[1]);
        widen8(x + r * ld + j + 8, m1, &v[2], &v[3]);
        if constexpr (kWeighted) {
          __m256d w[4];
          widen8(g + r * ld + j, m0, &w[0], &w[1]);
          widen8(g + r * ld + j + 8, m1, &w[2], &w[3]);
          for (int q = 0; q < 4; ++q) {
            a[q] = _mm256_add_pd(a[q], w[q]);
            b[q] = _mm256_fmadd_pd(w[q], _mm256_sub_pd(v[q], c[q]), b[q]);
          }
        } else {
          for (int q = 0; q < 4; ++q) {
            const __m256d d = _mm256_sub_pd(v[q], c[q]);
            a[q] = _mm256_add_pd(a[q], d);
            b[q] = _mm256_fmadd_pd(d, d, b[q]);
          }
        }
      }
      for (int q = 0; q < 4; ++q) {  // lanes past W add zeros (W <= 256, j + 16 <= 256)
        _mm256_store_pd(acc1 + j + 4 * q, _mm256_add_pd(_mm256_load_pd(acc1 + j + 4 * q), a[q]));
        _mm256_store_pd(acc2 + j + 4 * q, _mm256_add_pd(_mm256_load_pd(acc2 + j + 4 * q), b[q]));
      }
    }
  }
  for (int64_t i = 0; i < W; ++i) {
    s1[i] = acc1[i];
    s2[i] = acc2[i];
  }
}

void cols_stats_avx2(const float* x, int64_t rows, int64_t W, int64_t ld, const float* k,
                     double* s1, double* s2) {
  cols_reduce<false>(x, nullptr, rows, W, ld, k, s1, s2);
}

void cols_bwd_reduce_avx2(const float* x, const float* dy, int64_t rows, int64_t W, int64_t ld,
                          const float* mean, double* sdy, double* sdyx) {
  cols_reduce<true>(x, dy, rows, W, ld, mean, sdy, sdyx);
}

// fn(columns [j, j + 8) of row r, their lanes) for every row and block
template <typename F>
void cols_each(int64_t rows, int64_t W, const F& fn) {
  const int64_t full = W & ~int64_t{7};
  const Lanes all(8), tail(W - full);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < full; j += 8) fn(r * W + j, j, all);
    if (full < W) fn(r * W + full, full, tail);
  }
}

void cols_normalize_avx2(const float* x, int64_t rows, int64_t W, const float* mean,
                         const float* scale, const float* shift, float* y) {
  cols_each(rows, W, [&](int64_t i, int64_t j, const Lanes& l) {
    const __m256 v = _mm256_sub_ps(load8(x + i, l), load8(mean + j, l));
    store8(y + i, _mm256_fmadd_ps(v, load8(scale + j, l), load8(shift + j, l)), l);
  });
}

void cols_bwd_dx_avx2(const float* x, const float* dy, int64_t rows, int64_t W, const float* mean,
                      const float* a, const float* bb, const float* c, float* dx) {
  if (bb == nullptr) {  // eval mode: dx does not depend on x
    cols_each(rows, W, [&](int64_t i, int64_t j, const Lanes& l) {
      store8(dx + i, _mm256_fmadd_ps(load8(a + j, l), load8(dy + i, l), load8(c + j, l)), l);
    });
    return;
  }
  cols_each(rows, W, [&](int64_t i, int64_t j, const Lanes& l) {
    const __m256 bv = load8(bb + j, l), cv = load8(c + j, l);
    const __m256 d = _mm256_sub_ps(load8(x + i, l), load8(mean + j, l));
    // columns with bb == 0 (a vanished reduction) ignore x: a NaN there must not reach dx
    const __m256 t = _mm256_blendv_ps(_mm256_fmadd_ps(bv, d, cv), cv,
                                      _mm256_cmp_ps(bv, _mm256_setzero_ps(), _CMP_EQ_OQ));
    store8(dx + i, _mm256_fmadd_ps(load8(a + j, l), load8(dy + i, l), t), l);
  });
}

}  // namespace

const BatchNormKernels kBatchNormAvx2 = {
    stats_avx2,       normalize_avx2,       normalize_rows_avx2,  bwd_reduce_avx2,
    bwd_dx_avx2,      bwd_reduce_rows_avx2, bwd_dx_rows_avx2,     cols_stats_avx2,
    cols_normalize_avx2, cols_bwd_reduce_avx2, cols_bwd_dx_avx2};

}  // namespace dlkern

#ifdef DLKERN_AVX2_CLANG_PUSHED
#pragma clang attribute pop
#endif
