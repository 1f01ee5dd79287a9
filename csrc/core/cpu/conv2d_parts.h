// Pieces of the AVX2 conv2d (conv2d_avx2.cpp) that the avx512 path's (conv2d_avx512.cpp) shares.
// The functions declared here are compiled for AVX2 in conv2d_avx2.cpp: call them only from the
// avx2 and avx512 paths.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "../conv2d.h"
#include "parallel.h"

namespace dlkern {

// Forward: below this many output positions per image, the batch's positions are one GEMM.
constexpr int64_t kConvSmallImage = 256;

// Runs f(n, inner_threads) for every image: rounds of `threads` images in parallel, one thread
// each, then the remaining images one after the other with all threads inside.
template <typename F>
void conv2d_for_images(int64_t N, int threads, int64_t work_per_image, const F& f) {
  const int nt = threads_for(N * work_per_image, int64_t{1} << 16, threads);
  const int64_t full = nt > 1 ? N / nt * nt : 0;
  if (full > 0) parallel_for(full, nt, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) f(n, 1);
    });
  for (int64_t n = full; n < N; ++n) f(n, threads);
}

// Runs f(n, g, inner_threads), which returns a Status, for every image n and group g: the images
// by conv2d_for_images, an image's groups in order until one fails. Returns the first failure
// (in image order), else kOk.
template <typename F>
Status conv2d_for_image_groups(const Conv2dShape& s, int threads, int64_t work_per_image,
                               const F& f) {
  std::vector<Status> status(static_cast<size_t>(s.N), Status::kOk);  // one per image: no race
  conv2d_for_images(s.N, threads, work_per_image, [&](int64_t n, int inner) {
    for (int64_t g = 0; g < s.groups && status[n] == Status::kOk; ++g) status[n] = f(n, g, inner);
  });
  for (const Status r : status)
    if (r != Status::kOk) return r;
  return Status::kOk;
}

// Moves group g's output of nb images from image n0 on out of a GEMM workspace (K/groups rows
// of nb*P*Q columns, image i's at column i*P*Q) into NCHW y.
inline void conv2d_workspace_to_nchw(const Conv2dShape& s, int64_t g, int64_t n0, int64_t nb,
                                     const float* ws, float* y, int threads) {
  const int64_t Kg = s.K / s.groups, PQ = s.P * s.Q;
  parallel_for(nb * Kg, threads_for(nb * Kg * PQ, 1 << 15, threads), [&](int64_t b, int64_t e) {
    for (int64_t ik = b; ik < e; ++ik) {
      const int64_t i = ik / Kg, k = ik % Kg;
      std::memcpy(y + ((n0 + i) * s.K + g * Kg + k) * PQ, ws + k * nb * PQ + i * PQ,
                  sizeof(float) * PQ);
    }
  });
}

// Grouped convolutions with at most this many output channels per group take their weight
// gradient from depthwise.h's direct dot products (dw::grouped_weight) instead of im2col GEMMs.
constexpr int64_t kConvDirectGroup = 64;
bool conv2d_grouped_weight_direct(const Conv2dShape& s, Conv2dAlgo algo);

// Grouped convolutions at strides above 1 or on small images run their forward as depthwise.h's
// direct products (dw::grouped_fwd) instead of im2col GEMMs, whose B packing then costs about
// as much as the multiply. Measured on the 2-core AVX-512 EPYC (Zen 5), direct / GEMM: 0.43 at
// 256 x 28 x 28, 16 channels per group, stride 2; 0.58-0.9 at the other strided rows tried;
// 0.64-0.93 on 7 x 7 and 14 x 14 images; 0.97-1.24 at stride 1 on 28 x 28 and larger images
// (where the GEMM reads a padded copy in place), so those keep the GEMM. Both direct routes
// need a group's planes within 16 MiB.
bool conv2d_grouped_fwd_direct(const Conv2dShape& s, Conv2dAlgo algo);
// And their backward data at strides above 1 (dw::grouped_bwd_data; at stride 1 it is a forward).
bool conv2d_grouped_bwd_direct(const Conv2dShape& s, Conv2dAlgo algo);

// Backward data at stride 1 is a stride-1 convolution over dy (P x Q, padded by (R-1)*dh - ph
// and (S-1)*dw - pw, negative pads cropping) with the flipped, transposed weight, producing
// H x W: the shape of it.
inline Conv2dShape conv2d_transposed(const Conv2dShape& s) {
  Conv2dShape t = s;
  t.C = s.K, t.H = s.P, t.W = s.Q, t.K = s.C;
  t.pad_h = (s.R - 1) * s.dil_h - s.pad_h, t.pad_w = (s.S - 1) * s.dil_w - s.pad_w;
  t.P = s.H, t.Q = s.W;
  return t;
}

// Whether the weight's n values are all finite. Backward data as a convolution over a
// zero-padded dY (the transposed convolution, the direct grouped and depthwise routes) multiplies
// the padding by the weight: an infinite weight would put 0 * inf = NaN where torch, summing
// only real products, gives a finite value or an infinity. Those routes need a finite weight;
// the col2im tiles and the depthwise scatter take the others.
inline bool conv2d_weight_finite(const float* w, int64_t n) {
  if (w == nullptr) return true;  // (refused later, by the route that needs it)
  uint32_t bad = 0;  // an all-ones exponent: inf or NaN (integer ops, which vectorise)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, w + i, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

// The flipped, transposed weight of the transposed convolution of backward data at stride 1
// (a thread-local buffer):
// wt[g][c][k][R-1-r][S-1-t] = w[g*Kg + k][c][r][t]
const float* conv2d_flipped_weight(const Conv2dShape& s, const float* w);

}  // namespace dlkern
