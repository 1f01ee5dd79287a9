// Helpers shared by the CUDA tests: skip (exit 77, ctest's SKIP_RETURN_CODE) when no GPU is
// visible, device buffers, and the relative-error measure the CPU tests use.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "check.h"

namespace dlkern_test {

inline void skip_without_gpu() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device visible: skipped\n");
    std::exit(77);
  }
}

// A device copy of a host vector (or `n` uninitialised floats), freed on scope exit. Empty
// buffers hold a null pointer, as an empty tensor may.
struct DevBuf {
  float* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count, float fill = 0.f) : n(count) {
    if (n == 0) return;
    CHECK(cudaMalloc(&p, n * sizeof(float)) == cudaSuccess, "cudaMalloc(%zu floats)", n);
    std::vector<float> h(n, fill);
    cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  explicit DevBuf(const std::vector<float>& h) : DevBuf(h.size()) {
    if (n) cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  std::vector<float> host() const {
    std::vector<float> h(n);
    if (n) cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
  }
};

// Raw device bytes (workspaces).
struct DevBytes {
  void* p = nullptr;
  size_t n = 0;
  explicit DevBytes(size_t bytes) : n(bytes) {
    if (n) CHECK(cudaMalloc(&p, n) == cudaSuccess, "cudaMalloc(%zu bytes)", n);
  }
  DevBytes(const DevBytes&) = delete;
  DevBytes& operator=(const DevBytes&) = delete;
  ~DevBytes() {
    if (p) cudaFree(p);
  }
};

// max |a - ref| / max(1, max |ref|); NaN in a where ref is finite counts as infinite error.
inline double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double scale = 1.0, err = 0;
  for (float v : ref)
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  for (size_t i = 0; i < a.size() && i < ref.size(); ++i) {
    if (std::isnan(ref[i]) && std::isnan(a[i])) continue;
    const double d = std::fabs(static_cast<double>(a[i]) - ref[i]);
    err = std::max(err, std::isnan(d) ? INFINITY : d);
  }
  return a.size() == ref.size() ? err / scale : INFINITY;
}

inline void sync_ok(const char* what) {
  const cudaError_t e = cudaDeviceSynchronize();
  CHECK(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
}

}  // namespace dlkern_test
