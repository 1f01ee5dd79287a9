// Softmax forward and backward on zmm registers: the rows of softmax_avx2.cpp's inner == 1
// layout that fit in L1 (up to kInCacheRow floats, the three-pass forward), 16 lanes wide with
// masked tails. Longer rows (one online pass, bound by memory) and the strided layout
// (inner > 1) run softmax_avx2 unchanged.
#include <cstdint>

#include "../softmax.h"
#include "exp_consts.h"
#include "parallel.h"
#include "vec_avx512.h"

namespace dlkern {
namespace {

constexpr int64_t kInCacheRow = 8192;  // as softmax_avx2.cpp
constexpr int64_t kMinWorkPerThread = 1 << 11;

inline __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

// Horizontal sum and max, by halves (GCC 12's _mm512_reduce_* warn of an uninitialised value).
inline float hsum(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
inline float hmax(__m512 v) {
  const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_max_ss(q, _mm_movehdup_ps(q)));
}

// exp(x) for x <= 0 or NaN: avx2::exp_nonpos_ps (vec_avx2.h) on 16 lanes, the same arithmetic.
inline __m512 exp_nonpos(__m512 x) {
  using namespace expf32;
  const __m512 lo = _mm512_set1_ps(kLo), magic = _mm512_set1_ps(kMagic);
  const __m512 xc = _mm512_max_ps(lo, x);  // NaN stays NaN: vmaxps returns its second operand
  const __m512 t = _mm512_fmadd_ps(xc, _mm512_set1_ps(kLog2e), magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 q = _mm512_set1_ps(kPoly[0]);
  for (int i = 1; i < 8; ++i) q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kPoly[i]));
  const __m512i e = _mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(t), 23),
                                     _mm512_set1_epi32(127 << 23));
  const __m512 out = _mm512_mul_ps(q, _mm512_castsi512_ps(e));
  return _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
}

float row_max(const float* x, int64_t n) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  __m512 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
    m2 = _mm512_max_ps(m2, _mm512_loadu_ps(x + i + 32));
    m3 = _mm512_max_ps(m3, _mm512_loadu_ps(x + i + 48));
  }
  for (; i + 16 <= n; i += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
  if (i < n) m1 = _mm512_max_ps(m1, _mm512_mask_loadu_ps(ninf, first_lanes(n - i), x + i));
  // a NaN may be lost here (vmaxps returns its second operand when either is NaN); it still
  // makes its row NaN through exp(NaN - max) in the sum
  return hmax(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

// y = exp(x - mx); returns sum(y).
float row_exp_store_sum(const float* x, float* y, int64_t n, float mx) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 e0 = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    const __m512 e1 = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm));
    const __m512 e2 = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i + 32), vm));
    const __m512 e3 = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i + 48), vm));
    _mm512_storeu_ps(y + i, e0);
    _mm512_storeu_ps(y + i + 16, e1);
    _mm512_storeu_ps(y + i + 32, e2);
    _mm512_storeu_ps(y + i + 48, e3);
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
    s2 = _mm512_add_ps(s2, e2);
    s3 = _mm512_add_ps(s3, e3);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(y + i, e);
    s0 = _mm512_add_ps(s0, e);
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 e = _mm512_maskz_mov_ps(
        m, exp_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm)));
    _mm512_mask_storeu_ps(y + i, m, e);
    s1 = _mm512_add_ps(s1, e);
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

void row_scale(float* y, int64_t n, float a) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), va));
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), va));
  }
}

void fwd_row(const float* x, float* y, int64_t n) {
  const float mx = row_max(x, n);
  const float sum = row_exp_store_sum(x, y, n, mx);
  row_scale(y, n, 1.0f / sum);
}

void bwd_row(const float* y, const float* dy, float* dx, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(y + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i + 16), _mm512_loadu_ps(y + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i + 32), _mm512_loadu_ps(y + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i + 48), _mm512_loadu_ps(y + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16)
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(y + i), s0);
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + i), _mm512_maskz_loadu_ps(m, y + i), s1);
  }
  const __m512 dot = _mm512_set1_ps(
      hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))));
  i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(dy + i), dot),
                                           _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(dx + i, m,
                          _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, dy + i), dot),
                                        _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// Whether the rows of this shape take the zmm path (else softmax_avx2 serves it).
bool zmm_rows(const SoftmaxShape& s) { return s.inner == 1 && s.dim <= kInCacheRow; }

template <typename RowFn>
void for_each_row(const SoftmaxShape& s, int num_threads, const RowFn& row) {
  const int nt = threads_for(s.numel(), kMinWorkPerThread, num_threads);
  parallel_for(s.outer, nt, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) row(o * s.dim, s.dim);
  });
}

}  // namespace

Status softmax_fwd_avx512(const SoftmaxShape& s, const float* x, float* y, int num_threads) {
  if (softmax_check_shape(s) != Status::kOk || s.numel() == 0 || !zmm_rows(s))
    return softmax_fwd_avx2(s, x, y, num_threads);
  if (x == nullptr || y == nullptr) return Status::kInvalidArgument;
  for_each_row(s, num_threads, [&](int64_t off, int64_t n) { fwd_row(x + off, y + off, n); });
  return Status::kOk;
}

Status softmax_bwd_avx512(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                          int num_threads) {
  if (softmax_check_shape(s) != Status::kOk || s.numel() == 0 || !zmm_rows(s))
    return softmax_bwd_avx2(s, y, dy, dx, num_threads);
  if (y == nullptr || dy == nullptr || dx == nullptr) return Status::kInvalidArgument;
  for_each_row(s, num_threads,
               [&](int64_t off, int64_t n) { bwd_row(y + off, dy + off, dx + off, n); });
  return Status::kOk;
}

}  // namespace dlkern

#ifdef DLKERN_AVX512_CLANG_PUSHED
#pragma clang attribute pop
#endif
