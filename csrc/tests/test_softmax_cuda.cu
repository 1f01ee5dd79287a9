// CUDA softmax against the CPU reference (double accumulation) on the three kernel shapes and
// torch's NaN/inf semantics. Exits 77 (ctest: skipped) when no GPU is visible.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "../core/softmax.h"
#include "check.h"

using dlkern::SoftmaxShape;
using dlkern::Status;

namespace {

void run_case(const SoftmaxShape& s, uint32_t seed, bool specials) {
  const int64_t n = s.numel();
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> x(n), dy(n), yr(n), yg(n), dxr(n), dxg(n);
  for (auto& v : x) v = nd(gen);
  for (auto& v : dy) v = nd(gen);
  if (specials && n > 3) {
    x[0] = std::nanf("");
    x[n / 2] = -std::numeric_limits<float>::infinity();
    x[n - 1] = std::numeric_limits<float>::infinity();
  }
  float *dx_, *dy_, *dxx, *dyy;
  const size_t bytes = n * sizeof(float);
  CHECK(cudaMalloc(&dx_, bytes) == cudaSuccess && cudaMalloc(&dy_, bytes) == cudaSuccess &&
            cudaMalloc(&dxx, bytes) == cudaSuccess && cudaMalloc(&dyy, bytes) == cudaSuccess,
        "cudaMalloc");
  cudaMemcpy(dx_, x.data(), bytes, cudaMemcpyHostToDevice);
  CHECK(dlkern::softmax_fwd_cuda(s, dx_, dy_, nullptr) == Status::kOk, "fwd launch");
  cudaMemcpy(yg.data(), dy_, bytes, cudaMemcpyDeviceToHost);
  dlkern::softmax_fwd_ref(s, x.data(), yr.data(), 1);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(yr[i]) || std::isnan(yg[i])) {
      CHECK(std::isnan(yr[i]) && std::isnan(yg[i]), "NaN mismatch at %lld", (long long)i);
      continue;
    }
    worst = std::fmax(worst, std::fabs(yg[i] - yr[i]) / (1e-30 + std::fabs(yr[i])));
  }
  CHECK(worst <= 2e-6, "fwd outer=%lld dim=%lld inner=%lld: max rel err %g", (long long)s.outer,
        (long long)s.dim, (long long)s.inner, worst);
  // backward from the reference y
  cudaMemcpy(dy_, yr.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(dyy, dy.data(), bytes, cudaMemcpyHostToDevice);
  CHECK(dlkern::softmax_bwd_cuda(s, dy_, dyy, dxx, nullptr) == Status::kOk, "bwd launch");
  cudaMemcpy(dxg.data(), dxx, bytes, cudaMemcpyDeviceToHost);
  dlkern::softmax_bwd_ref(s, yr.data(), dy.data(), dxr.data(), 1);
  double worst_b = 0;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(dxr[i])) worst_b = std::fmax(worst_b, std::fabs(dxg[i] - dxr[i]));
  CHECK(worst_b <= 1e-5, "bwd dim=%lld: max abs err %g", (long long)s.dim, worst_b);
  CHECK(cudaDeviceSynchronize() == cudaSuccess, "kernel error: %s",
        cudaGetErrorString(cudaGetLastError()));
  cudaFree(dx_), cudaFree(dy_), cudaFree(dxx), cudaFree(dyy);
}

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device visible: skipped\n");
    return 77;
  }
  uint32_t seed = 1;
  for (int64_t dim : {1, 7, 32, 33, 1000, 1024, 1025, 4096, 10007})
    for (bool sp : {false, true}) run_case({5, dim, 1}, seed++, sp);
  for (int64_t inner : {2, 33, 512})
    for (int64_t dim : {1, 17, 1024}) run_case({3, dim, inner}, seed++, false);
  TEST_MAIN_END();
}
