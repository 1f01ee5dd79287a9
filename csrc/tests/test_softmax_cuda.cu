// CUDA softmax against the CPU reference (double accumulation) on the three kernel shapes (warp
// rows, block rows, columns) and torch's NaN/inf semantics: NaN positions must agree both ways.
// Exits 77 (ctest: skipped) when no GPU is visible.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "../core/softmax.h"
#include "cuda_util.cuh"

using dlkern::SoftmaxShape;
using dlkern::Status;
using namespace dlkern_test;

namespace {

void run_case(const SoftmaxShape& s, uint32_t seed, bool specials) {
  const int64_t n = s.numel();
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> x(n), dy(n), yr(n), dxr(n);
  for (auto& v : x) v = nd(gen);
  for (auto& v : dy) v = nd(gen);
  if (specials && n > 3) {
    x[0] = std::nanf("");
    x[n / 2] = -std::numeric_limits<float>::infinity();
    x[n - 1] = std::numeric_limits<float>::infinity();
  }
  DevBuf X(x), Y(n, 7.f), DY(dy), DX(n, 7.f);
  CHECK(dlkern::softmax_fwd_cuda(s, X.p, Y.p, nullptr) == Status::kOk, "fwd launch: %s",
        dlkern::status_detail());
  sync_ok("softmax forward");
  dlkern::softmax_fwd_ref(s, x.data(), yr.data(), 1);
  // A float32 sum of `dim` terms is off by about sqrt(dim) half-ulps from the double reference.
  const double rtol = 1e-6 + 4 * (FLT_EPSILON / 2) * std::sqrt(static_cast<double>(s.dim));
  Err e;
  CHECK(close(Y.host(), yr, 1e-37, rtol, &e), "fwd outer=%lld dim=%lld inner=%lld: max abs %g "
        "rel %g > %g", (long long)s.outer, (long long)s.dim, (long long)s.inner, e.max_abs,
        e.max_rel, rtol);
  // Backward from the reference y, so only the backward kernel is compared. dx = y * (dy - dot):
  // cancellation in (dy - dot) makes relative error unbounded near zero, so the absolute bound
  // scales with the line's magnitude (|dy| ~ 3, y <= 1), as in the CPU test.
  DevBuf YR(yr);
  CHECK(dlkern::softmax_bwd_cuda(s, YR.p, DY.p, DX.p, nullptr) == Status::kOk, "bwd launch: %s",
        dlkern::status_detail());
  sync_ok("softmax backward");
  dlkern::softmax_bwd_ref(s, yr.data(), dy.data(), dxr.data(), 1);
  Err eb;
  CHECK(close(DX.host(), dxr, 2e-5 * 3.0, 1e-4, &eb), "bwd outer=%lld dim=%lld inner=%lld: max "
        "abs %g rel %g", (long long)s.outer, (long long)s.dim, (long long)s.inner, eb.max_abs,
        eb.max_rel);
}

}  // namespace

int main() {
  skip_without_gpu();
  uint32_t seed = 1;
  for (int64_t dim : {1, 7, 32, 33, 1000, 1024, 1025, 4096, 10007})
    for (bool sp : {false, true}) run_case({5, dim, 1}, seed++, sp);
  for (int64_t inner : {2, 33, 512})
    for (int64_t dim : {1, 17, 1000, 1024})
      for (bool sp : {false, true}) run_case({3, dim, inner}, seed++, sp);
  run_case({0, 5, 3}, seed++, false);  // empty
  TEST_MAIN_END();
}
