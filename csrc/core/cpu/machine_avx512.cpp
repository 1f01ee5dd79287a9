// AVX-512F loop of the FMA probe (machine.h). dlkern's kernels stop at AVX2, but torch's
// (oneDNN, MKL) use AVX-512 where the CPU has it, so "percent of this machine's peak" has to be
// measured at the widest width the machine offers, or torch could exceed 100%.
#include <cstdint>

#if defined(__clang__) && !defined(__AVX512F__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#define DLKERN_AVX512_CLANG_PUSHED 1
#elif defined(__GNUC__) && !defined(__AVX512F__)
#pragma GCC target("avx512f")
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own intrinsics (_mm512_reduce_add_ps: an undefined pass-through operand) set this off
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

namespace dlkern {

constexpr int kAccs = 16;  // of 32 zmm registers; covers latency x 2 pipes with slack

int64_t fma_block_flops_avx512() { return int64_t{kAccs} * 16 * 2; }

float fma_block_avx512(int64_t iters) {
  __m512 acc[kAccs];
  for (int i = 0; i < kAccs; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAccs; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAccs; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

}  // namespace dlkern

#ifdef DLKERN_AVX512_CLANG_PUSHED
#pragma clang attribute pop
#endif
