// AVX2/FMA helpers shared by the CPU kernels. Include only from translation units compiled for
// AVX2+FMA (see DLKERN_AVX2_BEGIN below), and only inside an anonymous namespace's reach: these
// are `static inline`, so no AVX2-encoded copy can leak to a caller on a CPU without AVX2.
#pragma once

#include <algorithm>
#include <cstdint>

#include "exp_consts.h"

// Standard headers must be included before this point: the target pragma applies to every
// function defined after it, and an AVX2-encoded inline std:: function would be a SIGILL hazard
// if the linker picked it for the reference path.
#if defined(__clang__) && !defined(__AVX2__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define DLKERN_AVX2_CLANG_PUSHED 1
#elif defined(__GNUC__) && !defined(__AVX2__)
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>

namespace dlkern {
namespace avx2 {

constexpr int kLanes = 8;

// exp(x) for float32 lanes, Cephes-style: x = n*ln2 + r with |r| <= ln2/2 (ln2 split in two so
// n*ln2 is exact), exp(r) by Cephes' degree-7 minimax polynomial evaluated in full Horner form so
// the last step, fma(q, r, 1), rounds once (about 0.5 ulp, against 1.2 ulp for the textbook
// 1 + r + r^2 * P(r)), times 2^n built in the exponent field.
// n = round(x / ln2) uses the 1.5 * 2^23 trick: adding it leaves n in the low mantissa bits, so
// shifting those bits by 23 gives n's exponent field directly (no round or convert instruction).
// Domain: results below FLT_MIN flush to 0 (x < -87.3365, where n would drop below -126).
// kUpper = false skips overflow handling and is valid only for x <= 0 (softmax evaluates
// x - max <= 0); kUpper = true returns +inf for x > 88.0 (true overflow is at 88.72; keeping
// n <= 127 avoids a second scaling step). NaN propagates: vmaxps/vminps return their second
// operand when either is NaN, so the clamps are written with x second and the blends compare
// ordered.
template <bool kUpper>
static inline __m256 exp_ps_impl(__m256 x) {
  using namespace expf32;
  const __m256 lo = _mm256_set1_ps(kLo), hi = _mm256_set1_ps(kHi);
  const __m256 magic = _mm256_set1_ps(kMagic);
  __m256 xc = _mm256_max_ps(lo, x);
  if (kUpper) xc = _mm256_min_ps(hi, xc);
  const __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(kLog2e), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 q = _mm256_set1_ps(kPoly[0]);
  for (int i = 1; i < 8; ++i) q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kPoly[i]));
  const __m256i e = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23),
                                     _mm256_set1_epi32(127 << 23));
  __m256 out = _mm256_mul_ps(q, _mm256_castsi256_ps(e));
  out = _mm256_blendv_ps(out, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  if (kUpper)
    out = _mm256_blendv_ps(out, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return out;
}

// exp(x) on the whole float range (see exp_ps_impl).
static inline __m256 exp_ps(__m256 x) { return exp_ps_impl<true>(x); }
// exp(x) for x <= 0 or NaN only (see exp_ps_impl).
static inline __m256 exp_nonpos_ps(__m256 x) { return exp_ps_impl<false>(x); }

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline double hsum_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

static inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lane mask with the first `n` lanes set, 0 <= n <= 8.
static inline __m256i first_lanes(int64_t n) {
  static const int32_t kBits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kBits + 8 - n));
}

// One 8-float vector and its operations, for code written once over a vector width
// (depthwise.h); vec_avx512.h's F32x16 is the same at 16 floats.
namespace {
struct F32x8 {
  using reg = __m256;
  static constexpr int L = 8;
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  // past the caches (a non-temporal store; p 32-byte aligned)
  static void stream(float* p, reg v) { _mm256_stream_ps(p, v); }
  // lanes n.. read as zero / are left alone, 0 <= n <= L
  static reg load_first(const float* p, int64_t n) { return _mm256_maskload_ps(p, first_lanes(n)); }
  static void store_first(float* p, reg v, int64_t n) { _mm256_maskstore_ps(p, first_lanes(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static float sum(reg v) { return hsum(v); }
  // The 16 floats lo:hi split into evens e (lo0 lo2 .. hi6) and odds o
  static void split(reg lo, reg hi, reg& e, reg& o) {
    e = pairs_in_order(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
    o = pairs_in_order(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // split's inverse: lo = a0 b0 a1 b1 .. a3 b3, hi = a4 b4 .. a7 b7
  static void zip(reg a, reg b, reg& lo, reg& hi) {
    const reg l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);
    lo = _mm256_permute2f128_ps(l, h, 0x20);
    hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
  // e[j] = s[2j] for j < ne, o[j] = s[2j + 1] for j < no (ne, no <= 8), reading only those
  static void deinterleave(const float* s, float* e, int64_t ne, float* o, int64_t no) {
    const int64_t n = std::max(2 * ne - 1, 2 * no);
    reg ev, od;
    split(load_first(s, std::min<int64_t>(n, 8)), load_first(s + 8, std::max<int64_t>(n - 8, 0)),
          ev, od);
    store_first(e, ev, ne);
    store_first(o, od, no);
  }
  // s0 s2 s8 s10 s4 s6 s12 s14 (a shuffle of two vectors' evens) -> s0 s2 s4 ... s14
  static reg pairs_in_order(reg v) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  // d[2j] = a[j], d[2j + 1] = b[j] for the n <= 16 floats of d, reading only those
  static void interleave(const float* a, const float* b, float* d, int64_t n) {
    reg lo, hi;
    zip(load_first(a, (n + 1) / 2), load_first(b, n / 2), lo, hi);
    store_first(d, lo, std::min<int64_t>(n, 8));
    if (n > 8) store_first(d + 8, hi, n - 8);
  }
  // r[i][j] <- r[j][i] for the 8 x 8 block in r[0..8)
  static void transpose(reg* r) {
    reg t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  // lane j < n: p[j * stride] (stride * 7 within int32), the rest zero
  static reg gather_first(const float* p, int64_t stride, int64_t n) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32(static_cast<int>(stride)));
    const __m256i m = first_lanes(n);
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, _mm256_castsi256_ps(m), 4);
  }
  // d[j] = s[2j] for j < n <= L, reading s[0 .. 2n - 2] only
  static void evens(const float* s, float* d, int64_t n) {
    const int64_t lo = std::min<int64_t>(2 * n - 1, 8), hi = std::max<int64_t>(2 * n - 9, 0);
    const __m256 e = _mm256_shuffle_ps(load_first(s, lo), load_first(s + 8, hi),
                                       _MM_SHUFFLE(2, 0, 2, 0));  // s0 s2 s8 s10 s4 s6 s12 s14
    store_first(d, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e),
                                                          _MM_SHUFFLE(3, 1, 2, 0))), n);
  }
};
}  // namespace

}  // namespace avx2
}  // namespace dlkern
