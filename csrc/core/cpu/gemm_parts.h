// Pieces of the AVX2 GEMM (gemm_avx2.cpp) that the AVX-512 GEMM (gemm_avx512.cpp) shares.
// The functions declared here are compiled for AVX2 in gemm_avx2.cpp: call them only from the
// avx2 and avx512 paths (an AVX-512 CPU runs AVX2 code), never from the reference path.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../gemm.h"

namespace dlkern {

// How gemm_avx2 serves a product (the versions listed at the top of gemm_avx2.cpp).
enum class GemmPath { kPacked, kDot, kDirect, kAxpy, kOuter };
GemmPath gemm_avx2_path(const GemmArgs& g);

// Packs the kc x nc block of B at `b` (element (k, n) at b[k * rs + n * cs]) into gemm.h's
// kGemmNR-column micro-panel layout at bp (64-byte aligned).
void gemm_pack_b_avx2(int64_t kc, int64_t nc, const float* b, int64_t rs, int64_t cs, float* bp);

// Splits [0, n) into `parts` ranges whose boundaries are multiples of `align`.
inline void gemm_split(int64_t n, int parts, int part, int64_t align, int64_t* b, int64_t* e) {
  const int64_t units = (n + align - 1) / align;
  const int64_t per = units / parts, rem = units % parts;
  const int64_t ub = part * per + std::min<int64_t>(part, rem);
  const int64_t ue = ub + per + (part < rem ? 1 : 0);
  *b = std::min(n, ub * align);
  *e = std::min(n, ue * align);
}

// C = bias (or 0, or row_bias), or C unchanged when accumulating: the product when K = 0.
void gemm_empty_k(const GemmArgs& g);

}  // namespace dlkern
