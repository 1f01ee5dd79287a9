// The avx512 path's batchnorm: the narrow kernels (S < kBatchNormNarrowS) on zmm registers, 16
// columns a vector, one vcvtps2pd widening 8 floats, with the arithmetic and order of
// batch_norm_avx2.cpp's narrow kernels (sums in double, four rows at a time, column sums in
// L1); of the wide kernels, the backward pair on zmm (its reduction widens every value to
// double: on the 2-core Zen 5 the AVX2 one took twice the time of the elementwise pass that
// reads the same data), the forward's AVX2's.
#include <algorithm>
#include <cstdint>

#include "../batch_norm.h"
#include "vec_avx512.h"

namespace dlkern {
namespace {

// The lanes of a 16-column block: all (plain loads and stores: masked ones with every lane on
// ran the memory-bound 1024x4096 rows 1.3-1.6x slower on Zen 4) or the first n of a row's tail.
struct Lanes {
  bool masked;
  __mmask16 m;
  explicit Lanes(int64_t n)
      : masked(n < 16), m(avx512::F32x16::first(n)) {}
};
inline __m512 load16(const float* p, const Lanes& l) {
  return l.masked ? _mm512_maskz_loadu_ps(l.m, p) : _mm512_loadu_ps(p);
}
inline void store16(float* p, __m512 v, const Lanes& l) {
  if (l.masked)
    _mm512_mask_storeu_ps(p, l.m, v);
  else
    _mm512_storeu_ps(p, v);
}

// the (masked) 16 floats at p as two 8-double vectors
inline void widen16(const float* p, const Lanes& m, __m512d* lo, __m512d* hi) {
  const __m512 v = load16(p, m);
  *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  *hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

template <bool kWeighted>
void cols_reduce(const float* x, const float* g, int64_t rows, int64_t W, int64_t ld,
                 const float* centre, double* s1, double* s2) {
  alignas(64) double acc1[kBatchNormNarrowCols] = {}, acc2[kBatchNormNarrowCols] = {};
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int64_t nr = std::min<int64_t>(4, rows - r0);
    for (int64_t j = 0; j < W; j += 16) {
      const Lanes m(W - j);
      __m512d c0, c1, a0 = _mm512_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
      widen16(centre + j, m, &c0, &c1);
      for (int64_t r = r0; r < r0 + nr; ++r) {
        __m512d v0, v1;
        widen16(x + r * ld + j, m, &v0, &v1);
        if constexpr (kWeighted) {
          __m512d w0, w1;
          widen16(g + r * ld + j, m, &w0, &w1);
          a0 = _mm512_add_pd(a0, w0);
          a1 = _mm512_add_pd(a1, w1);
          b0 = _mm512_fmadd_pd(w0, _mm512_sub_pd(v0, c0), b0);
          b1 = _mm512_fmadd_pd(w1, _mm512_sub_pd(v1, c1), b1);
        } else {
          const __m512d d0 = _mm512_sub_pd(v0, c0), d1 = _mm512_sub_pd(v1, c1);
          a0 = _mm512_add_pd(a0, d0);
          a1 = _mm512_add_pd(a1, d1);
          b0 = _mm512_fmadd_pd(d0, d0, b0);
          b1 = _mm512_fmadd_pd(d1, d1, b1);
        }
      }
      // lanes past W add zeros (W <= 256, j + 16 <= 256)
      _mm512_store_pd(acc1 + j, _mm512_add_pd(_mm512_load_pd(acc1 + j), a0));
      _mm512_store_pd(acc1 + j + 8, _mm512_add_pd(_mm512_load_pd(acc1 + j + 8), a1));
      _mm512_store_pd(acc2 + j, _mm512_add_pd(_mm512_load_pd(acc2 + j), b0));
      _mm512_store_pd(acc2 + j + 8, _mm512_add_pd(_mm512_load_pd(acc2 + j + 8), b1));
    }
  }
  std::copy(acc1, acc1 + W, s1);
  std::copy(acc2, acc2 + W, s2);
}

void cols_stats_avx512(const float* x, int64_t rows, int64_t W, int64_t ld, const float* k,
                       double* s1, double* s2) {
  cols_reduce<false>(x, nullptr, rows, W, ld, k, s1, s2);
}

void cols_bwd_reduce_avx512(const float* x, const float* dy, int64_t rows, int64_t W, int64_t ld,
                            const float* mean, double* sdy, double* sdyx) {
  cols_reduce<true>(x, dy, rows, W, ld, mean, sdy, sdyx);
}

// fn(offset in the input, column, lanes) for every row and 16-column block
template <typename F>
void cols_each(int64_t rows, int64_t W, const F& fn) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < W; j += 16) fn(r * W + j, j, Lanes(W - j));
}

void cols_normalize_avx512(const float* x, int64_t rows, int64_t W, const float* mean,
                           const float* scale, const float* shift, float* y) {
  cols_each(rows, W, [&](int64_t i, int64_t j, const Lanes& m) {
    const __m512 v = _mm512_sub_ps(load16(x + i, m), load16(mean + j, m));
    store16(y + i, _mm512_fmadd_ps(v, load16(scale + j, m), load16(shift + j, m)), m);
  });
}

void cols_bwd_dx_avx512(const float* x, const float* dy, int64_t rows, int64_t W,
                        const float* mean, const float* a, const float* bb, const float* c,
                        float* dx) {
  if (bb == nullptr) {  // eval mode: dx does not depend on x
    cols_each(rows, W, [&](int64_t i, int64_t j, const Lanes& m) {
      store16(dx + i, _mm512_fmadd_ps(load16(a + j, m), load16(dy + i, m), load16(c + j, m)), m);
    });
    return;
  }
  cols_each(rows, W, [&](int64_t i, int64_t j, const Lanes& m) {
    const __m512 bv = load16(bb + j, m), cv = load16(c + j, m);
    const __m512 d = _mm512_sub_ps(load16(x + i, m), load16(mean + j, m));
    // columns with bb == 0 (a vanished reduction) ignore x: a NaN there must not reach dx
    const __mmask16 live = _mm512_cmp_ps_mask(bv, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const __m512 t = _mm512_mask_fmadd_ps(bv, live, d, cv);  // bv where not live: replaced below
    const __m512 tt = _mm512_mask_blend_ps(live, cv, t);
    store16(dx + i, _mm512_fmadd_ps(load16(a + j, m), load16(dy + i, m), tt), m);
  });
}

// ---- the wide backward: rows of S values per (image, channel) ----------------------------

// sums of g and of g * (x - m) over 16 values at a time into two pairs of double accumulators
struct BwdSums {
  __m512d a0, a1, b0, b1;
  BwdSums() : a0(_mm512_setzero_pd()), a1(a0), b0(a0), b1(a0) {}
  void add(__m512 g, __m512 x, __m512d m) {
    const __m512d g0 = _mm512_cvtps_pd(_mm512_castps512_ps256(g));
    const __m512d g1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(g), 1)));
    const __m512d x0 = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    const __m512d x1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    a0 = _mm512_add_pd(a0, g0);
    a1 = _mm512_add_pd(a1, g1);
    b0 = _mm512_fmadd_pd(g0, _mm512_sub_pd(x0, m), b0);
    b1 = _mm512_fmadd_pd(g1, _mm512_sub_pd(x1, m), b1);
  }
  // over n values (the last n % 16 masked: g = 0 there, so they add nothing)
  void run(const float* x, const float* g, int64_t n, __m512d m) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) add(_mm512_loadu_ps(g + i), _mm512_loadu_ps(x + i), m);
    if (i < n) {
      const __mmask16 t = avx512::F32x16::first(n - i);
      add(_mm512_maskz_loadu_ps(t, g + i), _mm512_maskz_loadu_ps(t, x + i), m);
    }
  }
  double sdy() const { return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1)); }
  double sdyx() const { return _mm512_reduce_add_pd(_mm512_add_pd(b0, b1)); }
};

void bwd_reduce_avx512(const float* x, const float* dy, int64_t n, float mean, double* sdy,
                       double* sdyx) {
  BwdSums t;
  t.run(x, dy, n, _mm512_set1_pd(static_cast<double>(mean)));
  *sdy = t.sdy();
  *sdyx = t.sdyx();
}

void bwd_reduce_rows_avx512(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                            int64_t C, const float* mean, double* sdy, double* sdyx) {
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1) {
    BwdSums t;
    t.run(x + r * S, dy + r * S, S, _mm512_set1_pd(static_cast<double>(mean[c])));
    sdy[r] = t.sdy();
    sdyx[r] = t.sdyx();
  }
}

// dx = a * dy + (bb * (x - mean) + c) over n values; bb == 0 (eval mode, or a vanished
// reduction) does not read x
void bwd_dx_run(const float* x, const float* dy, int64_t n, float mean, float a, float bb,
                float c, float* dx) {
  const __m512 av = _mm512_set1_ps(a), cv = _mm512_set1_ps(c);
  const __m512 m = _mm512_set1_ps(mean), bv = _mm512_set1_ps(bb);
  const bool live = bb != 0.f;
  auto one = [&](__m512 g, __m512 xv) {
    const __m512 t = live ? _mm512_fmadd_ps(bv, _mm512_sub_ps(xv, m), cv) : cv;
    return _mm512_fmadd_ps(av, g, t);
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dx + i, one(_mm512_loadu_ps(dy + i), live ? _mm512_loadu_ps(x + i) : m));
  if (i < n) {
    const __mmask16 t = avx512::F32x16::first(n - i);
    const __m512 xv = live ? _mm512_maskz_loadu_ps(t, x + i) : m;
    _mm512_mask_storeu_ps(dx + i, t, one(_mm512_maskz_loadu_ps(t, dy + i), xv));
  }
}

void bwd_dx_avx512(const float* x, const float* dy, int64_t n, float mean, float a, float bb,
                   float c, float* dx) {
  bwd_dx_run(x, dy, n, mean, a, bb, c, dx);
}

void bwd_dx_rows_avx512(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                        int64_t C, const float* mean, const float* a, const float* bb,
                        const float* cc, float* dx) {
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1)
    bwd_dx_run(x + r * S, dy + r * S, S, mean[c], a[c], bb[c], cc[c], dx + r * S);
}

}  // namespace

const BatchNormKernels& batch_norm_avx512() {
  static const BatchNormKernels k = [] {
    BatchNormKernels t = kBatchNormAvx2;
    t.cols_stats = cols_stats_avx512;
    t.cols_normalize = cols_normalize_avx512;
    t.cols_bwd_reduce = cols_bwd_reduce_avx512;
    t.cols_bwd_dx = cols_bwd_dx_avx512;
    t.bwd_reduce = bwd_reduce_avx512;
    t.bwd_dx = bwd_dx_avx512;
    t.bwd_reduce_rows = bwd_reduce_rows_avx512;
    t.bwd_dx_rows = bwd_dx_rows_avx512;
    return t;
  }();
  return k;
}

}  // namespace dlkern

#ifdef DLKERN_AVX512_CLANG_PUSHED
#pragma clang attribute pop
#endif
