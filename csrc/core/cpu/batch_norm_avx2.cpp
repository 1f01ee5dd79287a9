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

}  // namespace

const BatchNormKernels kBatchNormAvx2 = {stats_avx2,      normalize_avx2,      normalize_rows_avx2,
                                         bwd_reduce_avx2, bwd_dx_avx2,         bwd_reduce_rows_avx2,
                                         bwd_dx_rows_avx2};

}  // namespace dlkern

#ifdef DLKERN_AVX2_CLANG_PUSHED
#pragma clang attribute pop
#endif
