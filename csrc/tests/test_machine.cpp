// The machine probes return plausible numbers and refuse bad arguments.
#include <cstdio>

#include "../core/machine.h"
#include "check.h"

using dlkern::Status;

int main() {
  double g = -1;
  CHECK(dlkern::cpu_fma_peak(128, 1, 0.05, &g) == Status::kInvalidArgument, "%s", "");
  CHECK(dlkern::cpu_fma_peak(256, 0, 0.05, &g) == Status::kInvalidArgument, "%s", "");
  CHECK(dlkern::cpu_fma_peak(256, 1, 0.05, nullptr) == Status::kInvalidArgument, "%s", "");
  if (dlkern::cpu_isa_best() >= dlkern::CpuIsa::kAvx2) {
    CHECK(dlkern::cpu_fma_peak(256, 1, 0.05, &g) == Status::kOk, "%s", "");
    // positive and at most 8 GHz x 64 flops/cycle. No lower bound beyond 0: on a contended VM,
    // under the sanitizers, a 50 ms probe measured 6.8 GFLOP/s (a timing, not a correctness fact)
    CHECK(g > 0 && g < 512, "FMA peak %.3g GFLOP/s is not a plausible measurement", g);
    std::printf("AVX2 FMA peak, 1 thread: %.1f GFLOP/s\n", g);
  } else {
    CHECK(dlkern::cpu_fma_peak(256, 1, 0.05, &g) == Status::kUnsupported, "%s", "");
  }
  const Status s512 = dlkern::cpu_fma_peak(512, 1, 0.05, &g);
  CHECK(s512 == Status::kOk || s512 == Status::kUnsupported, "%s", "");
  if (s512 == Status::kOk) std::printf("AVX-512 FMA peak, 1 thread: %.1f GFLOP/s\n", g);

  double bw = -1;
  CHECK(dlkern::cpu_stream_copy_bandwidth(100, 1, 0.05, &bw) == Status::kInvalidArgument, "%s", "");
  CHECK(dlkern::cpu_stream_copy_bandwidth(8 << 20, 2, 0.05, &bw) == Status::kOk, "%s", "");
  CHECK(bw > 0 && bw < 10000, "copy bandwidth %.3g GB/s is not a plausible measurement", bw);
  std::printf("copy bandwidth, 8 MiB buffers, 2 threads: %.1f GB/s\n", bw);
  TEST_MAIN_END();
}
