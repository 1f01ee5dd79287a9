// Runtime dispatch of conv2d: the reference loops, or the AVX2 algorithms (conv2d_avx2.cpp), whose
// GEMMs run gemm_avx512 on the avx512 path, where stride-1 forwards take conv2d_avx512.cpp.
#include "../conv2d.h"

namespace dlkern {

Status conv2d_fwd_cpu(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                      float* y, int threads, Conv2dAlgo algo) {
  if (cpu_isa_active() == CpuIsa::kAvx512)
    return conv2d_fwd_avx512(s, x, w, bias, y, threads, algo);
  if (cpu_isa_active() == CpuIsa::kAvx2) return conv2d_fwd_avx2(s, x, w, bias, y, threads, algo);
  return conv2d_fwd_ref(s, x, w, bias, y, threads);
}

Status conv2d_bwd_cpu(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                      float* dx, float* dw, float* db, int threads, Conv2dAlgo algo) {
  if (cpu_isa_active() == CpuIsa::kAvx512)
    return conv2d_bwd_avx512(s, x, w, dy, dx, dw, db, threads, algo);
  if (cpu_isa_active() == CpuIsa::kAvx2)
    return conv2d_bwd_avx2(s, x, w, dy, dx, dw, db, threads, algo);
  return conv2d_bwd_ref(s, x, w, dy, dx, dw, db, threads);
}

}  // namespace dlkern
