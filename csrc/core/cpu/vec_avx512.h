// The target of the avx512 path's translation units: every feature of the path (AVX-512 F, BW,
// DQ, VL and FMA), whatever the command line enabled already. Include it after the standard and
// project headers (the pragma applies to every function defined after it; an AVX-512-encoded
// inline std:: function would be a SIGILL hazard on the other paths), and end the file with
//   #ifdef DLKERN_AVX512_CLANG_PUSHED / #pragma clang attribute pop / #endif
#pragma once

#include <cstdint>  // before the target pragma, as every standard header

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"))), \
                             apply_to = function)
#define DLKERN_AVX512_CLANG_PUSHED 1
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own intrinsics (_mm512_max_ps: an undefined pass-through operand) set this off
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same, once inlined into an unrolled loop
#endif
#include <immintrin.h>

namespace dlkern {
namespace avx512 {

// One 16-float vector and its operations: vec_avx2.h's F32x8 at twice the width.
namespace {
struct F32x16 {
  using reg = __m512;
  static constexpr int L = 16;
  static __mmask16 first(int64_t n) {
    return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
  }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // past the caches (a non-temporal store; p 64-byte aligned)
  static void stream(float* p, reg v) { _mm512_stream_ps(p, v); }
  static reg load_first(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(first(n), p); }
  static void store_first(float* p, reg v, int64_t n) { _mm512_mask_storeu_ps(p, first(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
  // The 32 floats lo:hi split into evens e (lo0 lo2 .. hi14) and odds o
  static void split(reg lo, reg hi, reg& e, reg& o) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    e = _mm512_permutex2var_ps(lo, ev, hi);
    o = _mm512_permutex2var_ps(lo, od, hi);
  }
  // split's inverse: lo = a0 b0 a1 b1 .. a7 b7, hi = a8 b8 .. a15 b15
  static void zip(reg a, reg b, reg& lo, reg& hi) {
    const __m512i l = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i h = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    lo = _mm512_permutex2var_ps(a, l, b);
    hi = _mm512_permutex2var_ps(a, h, b);
  }
  // e[j] = s[2j] for j < ne, o[j] = s[2j + 1] for j < no (ne, no <= 16), reading only those
  static void deinterleave(const float* s, float* e, int64_t ne, float* o, int64_t no) {
    const int64_t n = 2 * ne - 1 > 2 * no ? 2 * ne - 1 : 2 * no;
    reg ev, od;
    split(load_first(s, n < 16 ? n : 16), load_first(s + 16, n > 16 ? n - 16 : 0), ev, od);
    store_first(e, ev, ne);
    store_first(o, od, no);
  }
  // d[2j] = a[j], d[2j + 1] = b[j] for the n <= 32 floats of d, reading only those
  static void interleave(const float* a, const float* b, float* d, int64_t n) {
    reg lo, hi;
    zip(load_first(a, (n + 1) / 2), load_first(b, n / 2), lo, hi);
    store_first(d, lo, n);
    if (n > 16) store_first(d + 16, hi, n - 16);
  }
  // r[i][j] <- r[j][i] for the 16 x 16 block in r[0..16)
  static void transpose(reg* r) {
    reg t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // u[4i + k]: rows 4i..4i+3 at column 4l + k in each 128-bit lane l
    for (int i = 0; i < 16; i += 4) {
      u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {
      const reg a = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);
      const reg b = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);
      const reg c = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
      const reg d = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
      r[k] = _mm512_shuffle_f32x4(a, c, 0x88);
      r[8 + k] = _mm512_shuffle_f32x4(a, c, 0xDD);
      r[4 + k] = _mm512_shuffle_f32x4(b, d, 0x88);
      r[12 + k] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
  }
  // lane j < n: p[j * stride] (stride * 15 within int32), the rest zero
  static reg gather_first(const float* p, int64_t stride, int64_t n) {
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(static_cast<int>(stride)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), first(n), idx, p, 4);
  }
  static void evens(const float* s, float* d, int64_t n) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const int64_t lo = 2 * n - 1 < 16 ? 2 * n - 1 : 16, hi = 2 * n - 17 > 0 ? 2 * n - 17 : 0;
    store_first(d, _mm512_permutex2var_ps(load_first(s, lo), idx, load_first(s + 16, hi)), n);
  }
};
}  // namespace

}  // namespace avx512
}  // namespace dlkern
