// 2-D convolution (cross-correlation, as torch's conv2d), float32, NCHW. Torch-free.
//
//   y[n, k, p, q] = bias[k] + sum_{c, r, s} w[k, c, r, s] * x[n, g*Cg + c, ih, iw],
//   ih = p*stride_h - pad_h + r*dil_h,  iw = q*stride_w - pad_w + s*dil_w,
//
// g = k / Kg the group of output channel k (Cg = C / groups input and Kg = K / groups output
// channels per group); taps outside the input read zero. pad_h / pad_w are the top / left
// padding; the output size P x Q is given, so the bottom / right padding is whatever makes it
// (torch's padding='same' with an even kernel pads unequally). x is N x C x H x W, w is
// K x Cg x R x S, y is N x K x P x Q, all contiguous.
//
// Algorithms (Conv2dAlgo; kAuto picks by conv2d_pick_algo's rule, which is documented there):
//   kGemm1x1   1x1 kernel, stride 1, no padding: per image and group a plain GEMM on the input
//              as it lies (Y_g = W_g X_g, dX_g = W_g^T dY_g, dW_g += dY_g X_g^T); no copy.
//   kIm2col    any shape: implicit GEMM. Forward is Y_g = W_g * im2col(X_g), with the im2col
//              matrix never materialised: the GEMM's B-packing step calls an im2col packer
//              (gemm.h BPacker) that writes each KC x NC block of it straight into the
//              micro-kernel's panels. Workspace: the GEMM's packing buffers, KC x NC + MC x KC
//              floats per thread (about 4 MiB with gemm_avx2.cpp's blocks), whatever the image size.
//              Images under 256 output positions (kSmallImage) are batched: one GEMM per group
//              whose columns are the whole batch's positions, into a workspace the size of the
//              output, then moved to NCHW.
//              Backward data with stride 1 and Cg >= 16 is the same machinery run as a transposed
//              convolution (dX = conv(dY, W flipped and transposed), the padding becoming
//              dil*(R-1) - pad); otherwise (stride > 1, or few channels, where a Cg-row GEMM
//              would waste the 6-row micro-tiles) it is a GEMM per tile of T output positions,
//              dcol = W_g^T dY_g[:, tile], scattered back by col2im. Backward weight is
//              dW_g += dY_g[:, tile] * col_tile^T with col_tile an im2col tile of T positions.
//              Both tiles hold Cg*R*S x T floats, T chosen so a tile is about 1 MiB (at least
//              256 positions); plus the flipped weight (the size of w).
//   kDepthwise groups == C (Cg = 1, any channel multiplier): a direct kernel per (image,
//              channel) plane over a zero-padded, stride-phase-split copy of it, every tap of any
//              stride and dilation a contiguous vector load (cpu/depthwise.h, on 8 or 16 float
//              vectors); backward data at stride 1 (multiplier 1) the same forward over dY with
//              the kernel flipped, otherwise its adjoint scatter.
//   kWinograd  3x3, stride 1, dilation 1, any padding and groups: Winograd F(2x2, 3x3)
//              (cpu/winograd.h), 16 GEMMs of K x C x tiles (per group) between the transformed
//              filter and input tiles, 2.25x fewer multiplies than im2col (kAuto takes it for
//              ungrouped layers only). Backward data is the same forward
//              over dY with the flipped, transposed weight; backward weight 16 GEMMs over the
//              tiles, transformed back. A pass whose results come out non-finite (an infinity or
//              NaN in x or w, which the transforms spread over a tile) is computed again by
//              im2col, whose NaNs and infinities are torch's. Workspace: the transformed filter
//              (16/9 of w) and 4 MiB of transformed input and output tiles.
// Grouped convolutions (im2col) with at most 64 output channels per group take the weight
// gradient from direct dot products over phase-split planes
// (cpu/depthwise.h grouped_weight), not im2col GEMMs.
// Bias gradient: row sums of dY, taken in the backward-weight pass over dY.
// Threads: images run in parallel when there are at least as many as threads (each image's
// work single-threaded), otherwise the GEMMs split their output among threads. Every
// reduction (dW, db over images and positions) runs in a fixed order, so results do not depend
// on the thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.h"

namespace dlkern {

struct Conv2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t K = 0, R = 1, S = 1;         // output channels, kernel height and width
  int64_t groups = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;        // top, left
  int64_t dil_h = 1, dil_w = 1;
  int64_t P = 0, Q = 0;                // output height and width
};

enum class Conv2dAlgo : int { kAuto = 0, kGemm1x1 = 1, kIm2col = 2, kDepthwise = 3,
                              kWinograd = 4 };

const char* conv2d_algo_name(Conv2dAlgo a);

// Sizes non-negative, strides and dilations >= 1, pads >= 0, groups >= 1 dividing C and K.
Status conv2d_validate(const Conv2dShape& s);

// The rule kAuto applies: kDepthwise when groups == C > 1 (one input channel per group);
// kGemm1x1 when R == S == 1, stride 1, no padding and P x Q == H x W; kWinograd where it
// applies and conv2d_winograd_pays (or always / never, by conv2d_set_preference); kIm2col
// otherwise.
Conv2dAlgo conv2d_pick_algo(const Conv2dShape& s);

// Whether `a` can run shape s (kGemm1x1, kDepthwise and kWinograd need the shapes named above;
// kIm2col and kAuto run anything valid).
bool conv2d_algo_applies(const Conv2dShape& s, Conv2dAlgo a);

// Where kWinograd beats im2col (measured; the rule and its numbers are in conv2d_ref.cpp).
bool conv2d_winograd_pays(const Conv2dShape& s);
// Whether backward weight runs Winograd for `algo`: kWinograd; kAuto where the forward picks it
// and, unless the preference is kIm2col, on more shapes by a rule of its own (conv2d_ref.cpp).
bool conv2d_winograd_weight(const Conv2dShape& s, Conv2dAlgo algo);

// How many passes (forward, backward data, backward weight) Winograd has served in this process
// (not counting those handed back to im2col): for tests, which cannot tell the routes apart by
// their results.
int64_t conv2d_winograd_passes();
void conv2d_count_winograd_pass();

// Process-wide: how kAuto chooses between kWinograd and kIm2col where both apply. kAuto (the
// default) by conv2d_winograd_pays, kWinograd always, kIm2col never Winograd (the report's
// custom:winograd and custom:gemm). Other values give kInvalidArgument.
Status conv2d_set_preference(Conv2dAlgo a);
Conv2dAlgo conv2d_preference();

// bias may be null. Dispatches on cpu_isa_active(); the reference path ignores `algo`.
Status conv2d_fwd_cpu(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                      float* y, int threads, Conv2dAlgo algo = Conv2dAlgo::kAuto);
// From dy (N x K x P x Q): dx (like x), dw (like w), db (K). Any of them may be null.
Status conv2d_bwd_cpu(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                      float* dx, float* dw, float* db, int threads,
                      Conv2dAlgo algo = Conv2dAlgo::kAuto);

// Direct loops accumulating in double: the ground truth of the tests and the reference ISA path.
Status conv2d_fwd_ref(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                      float* y, int threads);
Status conv2d_bwd_ref(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                      float* dx, float* dw, float* db, int threads);

Status conv2d_fwd_avx2(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                       float* y, int threads, Conv2dAlgo algo);
Status conv2d_bwd_avx2(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw, float* db, int threads, Conv2dAlgo algo);
// The avx512 path (conv2d_avx512.cpp): stride-1 im2col forwards over a padded input, the other
// im2col forwards over a phase-split copy (a masked B packer), backward data at stride 1 as the
// transposed convolution's forward by those routes, depthwise and the grouped weight gradient
// on zmm; the rest through the AVX2 algorithms (whose GEMMs run gemm_avx512 on this path).
Status conv2d_fwd_avx512(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                         float* y, int threads, Conv2dAlgo algo);
Status conv2d_bwd_avx512(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                         float* dx, float* dw, float* db, int threads, Conv2dAlgo algo);

// CUDA (csrc/core/cuda/conv2d.cu): implicit GEMMs (no im2col buffer) for forward, backward data
// and backward weight; any kernel size, stride, padding, dilation and groups. Device pointers, a
// cudaStream_t. `workspace` (device memory, may be null) lets passes with too few output tiles
// (the weight gradient, mostly) split their long K across the GPU; conv2d_cuda_workspace gives
// the bytes the largest pass would use. Sizes past 2^31 positions give kUnsupported.
size_t conv2d_cuda_workspace(const Conv2dShape& s);
Status conv2d_fwd_cuda(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                       float* y, void* workspace, size_t workspace_bytes, void* stream);
Status conv2d_bwd_cuda(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                       float* dx, float* dw, float* db, void* workspace, size_t workspace_bytes,
                       void* stream);

}  // namespace dlkern
