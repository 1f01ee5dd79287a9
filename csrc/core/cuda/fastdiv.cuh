// Division by a divisor fixed for a whole kernel launch, as a multiply-high and a shift
// (batch_norm.cu's channel and row indices). Host-callable so that csrc/tests/test_cuda_loaders.cu
// checks it on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dlkern {

// n / d for 0 <= n < 2^31 and d >= 1 as a multiply-high and a shift (the classic round-up
// reciprocal; exact in this range).
struct FastDiv {
  uint32_t d, magic, shift;
  explicit FastDiv(uint32_t div = 1) : d(div) {
    shift = 0;
    while (shift < 32 && (1ull << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((1ull << 32) * ((1ull << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    return (__umulhi(n, magic) + n) >> shift;
#else
    return static_cast<uint32_t>(((static_cast<uint64_t>(n) * magic >> 32) + n) >> shift);
#endif
  }
};

}  // namespace dlkern
