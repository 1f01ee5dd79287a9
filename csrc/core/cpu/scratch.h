// A per-thread, 64-byte aligned scratch buffer that only grows (the GEMM's packing buffers, the
// convolution's column tiles). Each user declares its own thread_local instances.
#pragma once

#include <cstddef>
#include <cstdlib>

namespace dlkern {

struct Scratch {
  float* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  float* get(size_t floats) {
    if (floats > cap) {
      std::free(p);
      cap = (floats + 15) & ~size_t{15};
      p = static_cast<float*>(std::aligned_alloc(64, cap * sizeof(float)));
    }
    return p;
  }
};

}  // namespace dlkern
