// CPU dispatch for softmax: the path is read per call from cpu_isa_active(), so tests and
// benchmarks can switch paths inside one process.
#include "../softmax.h"

namespace dlkern {

Status softmax_fwd_cpu(const SoftmaxShape& s, const float* x, float* y, int num_threads) {
  if (cpu_isa_active() == CpuIsa::kAvx512) return softmax_fwd_avx512(s, x, y, num_threads);
  if (cpu_isa_active() == CpuIsa::kAvx2) return softmax_fwd_avx2(s, x, y, num_threads);
  return softmax_fwd_ref(s, x, y, num_threads);
}

Status softmax_bwd_cpu(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                       int num_threads) {
  if (cpu_isa_active() == CpuIsa::kAvx512) return softmax_bwd_avx512(s, y, dy, dx, num_threads);
  if (cpu_isa_active() == CpuIsa::kAvx2) return softmax_bwd_avx2(s, y, dy, dx, num_threads);
  return softmax_bwd_ref(s, y, dy, dx, num_threads);
}

}  // namespace dlkern
