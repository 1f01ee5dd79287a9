// Measured machine ceilings, for the roofline columns of the benchmark reports.
//
// Peaks quoted from a data sheet say little on a shared cloud core (clock, SMT neighbours and
// power limits all move them), so the harness measures them once per run with these probes.
// Both are torch-free and take the same thread count as the kernels they are compared with.
#pragma once

#include <cstdint>

#include "common.h"

namespace dlkern {

// Float32 FMA throughput of a register-only loop: `threads` threads, each with enough
// independent accumulators to cover the FMA latency on every FMA pipe, for at least `seconds`.
// `width` is the vector width in bits: 256 (AVX2+FMA) or 512 (AVX-512F). Writes GFLOP/s
// (2 flops per lane per FMA). kUnsupported when this CPU lacks the ISA.
Status cpu_fma_peak(int width, int threads, double seconds, double* gflops);

// Streaming bandwidth: a copy of `bytes` from one buffer to another (each 64-byte aligned, far
// larger than the last-level cache), `threads` threads on contiguous halves, best of repeated
// passes within `seconds`. Counted as bytes read + bytes written, the same convention as the ops'
// byte models. Non-temporal stores where AVX2 is available (a plain store costs an extra read
// for the write-allocate, which would make the probe slower than a well-written kernel).
Status cpu_stream_copy_bandwidth(int64_t bytes, int threads, double seconds, double* gbps);

}  // namespace dlkern
