// Dispatch and timing for the machine probes (machine.h). The ISA-specific loops live in
// machine_avx2.cpp and machine_avx512.cpp, each compiled for its ISA alone.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "../machine.h"
#include "parallel.h"

namespace dlkern {

// machine_avx2.cpp / machine_avx512.cpp: `iters` rounds of the FMA block; returns a value that
// depends on every accumulator so the loop cannot be removed.
float fma_block_avx2(int64_t iters);
float fma_block_avx512(int64_t iters);
int64_t fma_block_flops_avx2();
int64_t fma_block_flops_avx512();
void stream_copy_avx2(const float* src, float* dst, int64_t n);

namespace {

double now() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

}  // namespace

Status cpu_fma_peak(int width, int threads, double seconds, double* gflops) {
  if (gflops == nullptr || threads < 1 || !(seconds > 0)) return Status::kInvalidArgument;
  float (*block)(int64_t);
  int64_t flops_per_iter;
  if (width == 256) {
    if (cpu_isa_best() < CpuIsa::kAvx2) return Status::kUnsupported;
    block = fma_block_avx2;
    flops_per_iter = fma_block_flops_avx2();
  } else if (width == 512) {
    if (cpu_isa_best() < CpuIsa::kAvx512) return Status::kUnsupported;
    block = fma_block_avx512;
    flops_per_iter = fma_block_flops_avx512();
  } else {
    return Status::kInvalidArgument;
  }
  // Calibrate the round count so one timed run lasts about a tenth of the budget, then keep the
  // best of several runs: the best is the ceiling; slower runs measure the neighbours.
  int64_t iters = 1 << 14;
  for (;;) {
    const double t0 = now();
    volatile float sink = block(iters);
    (void)sink;
    if (now() - t0 > seconds / 20 || iters > (int64_t{1} << 40)) break;
    iters *= 2;
  }
  double best = 0;
  const double start = now();
  do {
    float sinks[256] = {};
    const double t0 = now();
    parallel_for(threads, threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sinks[i & 255] = block(iters);
    });
    const double dt = now() - t0;
    volatile float sink = sinks[0];
    (void)sink;
    const double g = static_cast<double>(flops_per_iter) * iters * threads / dt * 1e-9;
    if (g > best) best = g;
  } while (now() - start < seconds);
  *gflops = best;
  return Status::kOk;
}

Status cpu_stream_copy_bandwidth(int64_t bytes, int threads, double seconds, double* gbps) {
  if (gbps == nullptr || threads < 1 || bytes < 4096 || !(seconds > 0))
    return Status::kInvalidArgument;
  const int64_t n = (bytes / 4) & ~int64_t{1023};  // whole 4 KiB pages per buffer
  const size_t size = static_cast<size_t>(n) * 4;
  float* src = static_cast<float*>(std::aligned_alloc(64, size));
  float* dst = static_cast<float*>(std::aligned_alloc(64, size));
  if (src == nullptr || dst == nullptr) {
    std::free(src);
    std::free(dst);
    return Status::kInvalidArgument;
  }
  // First touch from the threads that will stream the data (their pages, their memory node).
  parallel_for(n, threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) src[i] = static_cast<float>(i & 1023);
    std::memset(dst + b, 0, static_cast<size_t>(e - b) * 4);
  });
  const bool avx2 = cpu_isa_best() >= CpuIsa::kAvx2;
  double best = 0;
  const double start = now();
  int passes = 0;
  do {
    const double t0 = now();
    // Chunks of 64 floats so every thread's range starts on a cache line.
    parallel_for(n / 64, threads, [&](int64_t b, int64_t e) {
      if (avx2)
        stream_copy_avx2(src + b * 64, dst + b * 64, (e - b) * 64);
      else
        std::memcpy(dst + b * 64, src + b * 64, static_cast<size_t>(e - b) * 256);
    });
    const double dt = now() - t0;
    const double g = 2.0 * static_cast<double>(size) / dt * 1e-9;
    if (g > best) best = g;
    ++passes;
  } while (passes < 3 || now() - start < seconds);
  volatile float sink = dst[n / 2];
  (void)sink;
  std::free(src);
  std::free(dst);
  *gbps = best;
  return Status::kOk;
}

}  // namespace dlkern
