// AVX2+FMA loops of the machine probes (machine.h).
#include <cstdint>

#include "vec_avx2.h"

namespace dlkern {

// 12 independent accumulators: FMA latency (4-5 cycles) times 2 FMA pipes needs at least 10 in
// flight; 12 leaves slack and still fits the 16 ymm registers with the two operands.
constexpr int kAccs = 12;

int64_t fma_block_flops_avx2() { return int64_t{kAccs} * 8 * 2; }

float fma_block_avx2(int64_t iters) {
  __m256 acc[kAccs];
  for (int i = 0; i < kAccs; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  // a * x + b with a just below 1 converges instead of overflowing, whatever `iters` is.
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kAccs; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kAccs; ++i) s = _mm256_add_ps(s, acc[i]);
  return avx2::hsum(s);
}

void stream_copy_avx2(const float* src, float* dst, int64_t n) {
  // n is a multiple of 64 and both pointers are 64-byte aligned (cpu_stream_copy_bandwidth).
  for (int64_t i = 0; i < n; i += 32) {
    const __m256 a = _mm256_load_ps(src + i), b = _mm256_load_ps(src + i + 8);
    const __m256 c = _mm256_load_ps(src + i + 16), d = _mm256_load_ps(src + i + 24);
    _mm256_stream_ps(dst + i, a);
    _mm256_stream_ps(dst + i + 8, b);
    _mm256_stream_ps(dst + i + 16, c);
    _mm256_stream_ps(dst + i + 24, d);
  }
  _mm_sfence();
}

}  // namespace dlkern

#ifdef DLKERN_AVX2_CLANG_PUSHED
#pragma clang attribute pop
#endif
