// Runtime dispatch of the GEMM core and the column sum.
#include "../gemm.h"

namespace dlkern {

Status gemm_cpu(const GemmArgs& g, int threads) {
  switch (cpu_isa_active()) {
    case CpuIsa::kAvx512: return gemm_avx512(g, threads);
    case CpuIsa::kAvx2: return gemm_avx2(g, threads);
    default: return gemm_ref(g, threads);
  }
}

Status colsum_cpu(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                  int threads) {
  return cpu_isa_active() >= CpuIsa::kAvx2 ? colsum_avx2(M, N, x, ld, out, accumulate, threads)
                                           : colsum_ref(M, N, x, ld, out, accumulate, threads);
}

}  // namespace dlkern
