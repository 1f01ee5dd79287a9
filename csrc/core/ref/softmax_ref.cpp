// Scalar reference softmax: accumulates in double. It is the ground truth the C++ tests use and
// the path taken on CPUs without AVX2/FMA (or when DLKERN_CPU_ISA=reference).
#include <cmath>
#include <limits>

#include "../cpu/parallel.h"
#include "../softmax.h"

namespace dlkern {

Status softmax_check_shape(const SoftmaxShape& s) {
  if (s.outer < 0 || s.dim < 0 || s.inner < 0) return Status::kInvalidArgument;
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  if (s.dim != 0 && s.outer > kMax / s.dim) return Status::kInvalidArgument;
  if (s.inner != 0 && s.outer * s.dim > kMax / s.inner) return Status::kInvalidArgument;
  return Status::kOk;
}

namespace {

// Checks the shape, then calls line(base, D, I) for every reduced line (element d of the line at
// base + d * I), lines split across threads.
template <typename F>
Status for_each_line(const SoftmaxShape& s, int num_threads, const F& line) {
  Status st = softmax_check_shape(s);
  if (st != Status::kOk) return st;
  const int64_t lines = s.outer * s.inner, D = s.dim, I = s.inner;
  if (lines == 0 || D == 0) return Status::kOk;
  parallel_for(lines, threads_for(lines * D, 1 << 14, num_threads), [&](int64_t b, int64_t e) {
    for (int64_t l = b; l < e; ++l) line((l / I) * D * I + (l % I), D, I);
  });
  return Status::kOk;
}

}  // namespace

Status softmax_fwd_ref(const SoftmaxShape& s, const float* x, float* y, int num_threads) {
  return for_each_line(s, num_threads, [&](int64_t base, int64_t D, int64_t I) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t d = 0; d < D; ++d) {
      const double v = x[base + d * I];
      if (v > m || std::isnan(v)) m = std::isnan(m) ? m : v;  // NaN is sticky
    }
    double sum = 0.0;
    for (int64_t d = 0; d < D; ++d) sum += std::exp(static_cast<double>(x[base + d * I]) - m);
    for (int64_t d = 0; d < D; ++d)
      y[base + d * I] = static_cast<float>(std::exp(static_cast<double>(x[base + d * I]) - m) / sum);
  });
}

Status softmax_bwd_ref(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                       int num_threads) {
  return for_each_line(s, num_threads, [&](int64_t base, int64_t D, int64_t I) {
    double dot = 0.0;
    for (int64_t d = 0; d < D; ++d)
      dot += static_cast<double>(dy[base + d * I]) * static_cast<double>(y[base + d * I]);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = base + d * I;
      dx[k] = static_cast<float>(static_cast<double>(y[k]) * (static_cast<double>(dy[k]) - dot));
    }
  });
}

}  // namespace dlkern
