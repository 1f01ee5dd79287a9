// conv2d forward and backward data on the avx512 path: stride-1 convolutions as a GEMM over a zero-padded copy of
// the input, read in place by gemm_avx512 (a row-offset B, gemm.h), with no im2col.
//
// With the input padded to Hp x Wp = (P + (R-1)*dh) x (Q + (S-1)*dw), the im2col matrix of a
// stride-1 convolution is B[(c, r, t)][n] = xpad[c][r*dh][t*dw + n] for n = p*Wp + q: every row
// is a contiguous run of the padded plane, at offset c*Hp*Wp + r*dh*Wp + t*dw. The GEMM computes
// Wp columns per output row, of which the last (S-1)*dw are discarded as it stores them into
// NCHW (a wrapped C, gemm.h), and never gathers: the gather of conv2d_avx2.cpp writes and
// then reads back every element of B, which was a third of a 3x3, 64-channel layer's time.
// Backward data at stride 1 (4 or more channels per group) is a forward by the same routes, over
// dy with the flipped, transposed weight. The other im2col forwards (strides above 1, small images batched into one GEMM, layers whose
// discarded columns would exceed kMaxWaste) read a phase-split copy of the input through a
// masked B packer ("stretches", below); depthwise layers run depthwise.h and Winograd layers
// (forward, backward data and weight) winograd.h on zmm vectors; the
// rest (1x1, the other backward passes) runs the conv2d_avx2.cpp algorithms.
// Workspace: per thread, the padded copy of one image's group (Cg x Hp x Wp floats, 13 MiB for
// 64 x 224 x 224), or the phase-split copy of one image's group (or of the batch's, for small
// images: about the size of the input) and for those a workspace the size of the output; for
// backward data a copy of the weight; thread-local, kept for the next call.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../conv2d.h"
#include "../gemm.h"
#include "conv2d_parts.h"
#include "parallel.h"
#include "scratch.h"
#include "vec_avx512.h"
#include "depthwise.h"
#include "winograd.h"

namespace dlkern {
namespace {

constexpr double kMaxWaste = 0.125;   // discarded columns per output column, at most
// Backward data at stride 1 runs as the transposed convolution's forward from this many input
// channels per group (its GEMM's rows; gemm_avx512's tiles have 8): at 4 (ResNeXt's 128 x 56 x 56
// in 32 groups) it took 2.8 ms against the col2im tiles' 8.4; at 3 (an RGB input, 224 x 224) it
// lost, 2.9 ms against 1.9 (2 threads, the 2-core AVX-512 EPYC, 2026-12-03).
constexpr int64_t kMinTransposedRows = 4;

thread_local Scratch tl_pad;

struct Padded {
  int64_t Hp, Wp;
  // zeros past the last plane: B's last row, (S-1)*dw past it, read 16 floats past its end
  int64_t slack;
  int64_t plane() const { return Hp * Wp; }
};

Padded padded(const Conv2dShape& s) {
  return {s.P + (s.R - 1) * s.dil_h, s.Q + (s.S - 1) * s.dil_w, (s.S - 1) * s.dil_w + 16};
}

// Some input and some output: this file's GEMM routes need both (the avx2 path does the rest).
bool nonempty(const Conv2dShape& s) {
  return s.N > 0 && s.K > 0 && s.P * s.Q > 0 && s.C > 0 && s.H * s.W > 0;
}

bool applies(const Conv2dShape& s, Conv2dAlgo algo) {
  if (algo != Conv2dAlgo::kIm2col || s.stride_h != 1 || s.stride_w != 1) return false;
  if (!nonempty(s)) return false;
  if (s.P * s.Q < kConvSmallImage && s.N > 1) return false;
  if (s.Q < 16) return false;  // a wrapped C needs rows of 16 columns or more
  return static_cast<double>((s.S - 1) * s.dil_w) <= kMaxWaste * static_cast<double>(s.Q);
}

// xp[c][i][j] = x[c][i - pad_h][j - pad_w], zero outside the input, for `channels` planes.
void pad_input(const Conv2dShape& s, const Padded& pd, const float* x, int64_t channels,
               float* xp) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* xc = x + c * s.H * s.W;
    float* pc = xp + c * pd.plane();
    for (int64_t i = 0; i < pd.Hp; ++i) {
      float* row = pc + i * pd.Wp;
      const int64_t ih = i - s.pad_h;
      if (ih < 0 || ih >= s.H) {
        std::memset(row, 0, sizeof(float) * pd.Wp);
        continue;
      }
      // columns j with 0 <= j - pad_w < W
      const int64_t j0 = std::min(pd.Wp, std::max<int64_t>(0, s.pad_w));
      const int64_t j1 = std::max(j0, std::min(pd.Wp, s.W + s.pad_w));
      std::memset(row, 0, sizeof(float) * j0);
      if (j1 > j0) std::memcpy(row + j0, xc + ih * s.W + (j0 - s.pad_w), sizeof(float) * (j1 - j0));
      std::memset(row + j1, 0, sizeof(float) * (pd.Wp - j1));
    }
  }
  std::memset(xp + channels * pd.plane(), 0, sizeof(float) * pd.slack);
}

// The offset of B's row k = (c, r, t), in the weight's order.
std::vector<int64_t> row_offsets(const Conv2dShape& s, const Padded& pd) {
  const int64_t Cg = s.C / s.groups;
  std::vector<int64_t> rows(static_cast<size_t>(Cg * s.R * s.S));
  size_t k = 0;
  for (int64_t c = 0; c < Cg; ++c)
    for (int64_t r = 0; r < s.R; ++r)
      for (int64_t t = 0; t < s.S; ++t)
        rows[k++] = c * pd.plane() + r * s.dil_h * pd.Wp + t * s.dil_w;
  return rows;
}

// One image's group g: pad, then the GEMM, its Kg x (P * Wp) product wrapped into y's Kg x P x Q.
Status image_group(const Conv2dShape& s, const Padded& pd, const std::vector<int64_t>& rows,
                   const float* x, const float* w, const float* bias, float* y, int64_t n,
                   int64_t g, int threads) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, Kd = Cg * s.R * s.S;
  float* xp = tl_pad.get(static_cast<size_t>(Cg * pd.plane() + pd.slack));
  pad_input(s, pd, x + (n * s.C + g * Cg) * s.H * s.W, Cg, xp);
  GemmArgs ga;
  ga.M = Kg;
  ga.N = s.P * pd.Wp;
  ga.K = Kd;
  ga.A = {w + g * Kg * Kd, Kd, 1};
  ga.B = {xp, 0, 1};
  ga.b_rows = rows.data();
  ga.C = y + (n * s.K + g * Kg) * s.P * s.Q;
  ga.ldc = s.P * s.Q;
  ga.c_row = s.Q;
  ga.c_skip = pd.Wp - s.Q;
  ga.row_bias = bias ? bias + g * Kg : nullptr;
  return gemm_avx512(ga, threads);
}

// The forward over a padded input, for a shape `applies` accepts (pads may be negative: the
// transposed convolution of backward data crops rather than pads where ph > (R-1)*dh).
Status fwd_padded(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                  float* y, int threads) {
  if (x == nullptr || w == nullptr || y == nullptr) return Status::kInvalidArgument;
  const Padded pd = padded(s);
  const std::vector<int64_t> rows = row_offsets(s, pd);
  const int64_t work = s.K * s.P * s.Q * (s.C / s.groups * s.R * s.S + 1);
  return conv2d_for_image_groups(s, threads, work, [&](int64_t n, int64_t g, int inner) {
    return image_group(s, pd, rows, x, w, bias, y, n, g, inner);
  });
}

// ---- backward weight over the padded copy ---------------------------------------------------
//
// dW_g += dY_g X_g^T, where X_g is the im2col matrix (rows k = (c, r, t), columns the output
// positions) of the padded copy: row k holds position (p, q) at xp + rows[k] + p*Wp + q. The
// GEMM's B = X_g^T, so a micro-panel of 16 of its columns (16 rows k) by kc positions is 16
// runs of the padded planes, transposed 16 x 16 at a time; with Q >= 16 a chunk of 16
// positions crosses at most one output row, past which the run goes on Wp - Q floats further.
// Only real positions are read (a discarded column's 0 * inf would be a NaN). The im2col tile of
// conv2d_avx2.cpp was written and read back before the GEMM's packing: a fifth of the pass.

struct Transposed {
  const float* xp;
  const int64_t* rows;
  int64_t Q, Wp;
};

// gemm.h's BPacker: NR-column micro-panels of B[k0:k0+kc][n0:n0+nc] = X^T.
void pack_transposed(const void* ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* bp) {
  const Transposed& t = *static_cast<const Transposed*>(ctx);
  using V = avx512::F32x16;
  V::reg r[16];
  for (int64_t jr = 0; jr < nc; jr += 16, bp += 16 * kc) {
    const int64_t lanes = std::min<int64_t>(16, nc - jr);
    const int64_t* rows = t.rows + n0 + jr;
    for (int64_t k = 0; k < kc; k += 16) {
      const int64_t m = k0 + k, len = std::min<int64_t>(16, kc - k), q = m % t.Q;
      const int64_t in_row = std::min(len, t.Q - q);  // the chunk's positions in row m / Q
      const __mmask16 first = V::first(in_row), rest = V::first(len) & ~first;
      const float* at = t.xp + m / t.Q * t.Wp + q;
      for (int64_t l = 0; l < 16; ++l) {
        if (l >= lanes) {
          r[l] = V::zero();
          continue;
        }
        const float* src = at + rows[l];
        r[l] = _mm512_maskz_loadu_ps(first, src);
        if (rest != 0) r[l] = _mm512_mask_loadu_ps(r[l], rest, src + t.Wp - t.Q);
      }
      V::transpose(r);
      for (int64_t j = 0; j < len; ++j) _mm512_store_ps(bp + (k + j) * 16, r[j]);
    }
  }
}

// Measured on the 2-core Zen 5, this route / the im2col tiles: 0.86-0.92 from 28 x 28 to 56 x 56
// (64 to 512 channels), about 1 at 64 x 64, 1.08-1.15 on 112 x 112 and 224 x 224 (where the tiles
// of the other route stay in L2 and this one streams the padded copy): up to kMaxWeightImage.
constexpr int64_t kMaxWeightImage = 4096;

bool weight_padded_applies(const Conv2dShape& s, Conv2dAlgo algo) {
  return algo == Conv2dAlgo::kIm2col && s.stride_h == 1 && s.stride_w == 1 && s.Q >= 16 &&
         s.P * s.Q <= kMaxWeightImage &&
         nonempty(s) && !conv2d_grouped_weight_direct(s, algo);
}

// dW (not db), the images in order, each image's GEMM on all the threads.
Status bwd_weight_padded(const Conv2dShape& s, const float* x, const float* dy, float* dw,
                         int threads) {
  const Padded pd = padded(s);
  const std::vector<int64_t> rows = row_offsets(s, pd);
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, Kd = Cg * s.R * s.S, PQ = s.P * s.Q;
  std::memset(dw, 0, sizeof(float) * s.K * Kd);
  float* xp = tl_pad.get(static_cast<size_t>(Cg * pd.plane() + pd.slack));
  const Transposed t{xp, rows.data(), s.Q, pd.Wp};
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t g = 0; g < s.groups; ++g) {
      pad_input(s, pd, x + (n * s.C + g * Cg) * s.H * s.W, Cg, xp);
      GemmArgs ga;
      ga.M = Kg;
      ga.N = Kd;
      ga.K = PQ;
      ga.A = {dy + (n * s.K + g * Kg) * PQ, PQ, 1};
      ga.pack_b = {pack_transposed, &t};
      ga.C = dw + g * Kg * Kd;
      ga.ldc = Kd;
      ga.accumulate = true;
      const Status st = gemm_avx512(ga, threads);
      if (st != Status::kOk) return st;
    }
  return Status::kOk;
}

// ---- the phase-split gather: any stride, small images, short rows ---------------------------
//
// The shapes `applies` leaves out (strides above 1, rows under 16 columns, small images, wide
// kernels) read depthwise.h's phase-split copy of the input, every image's planes laid out as
// [c][phase][image][Hm][Wm]: there B's row k = (c, r, t) is one run of the copy (tap (r, t) at
// its depthwise.h offset, channel c a whole channel's phases further) in which the output
// (image i, p, q) sits at i*Hm*Wm + p*Wm + q. A micro-panel's 16 columns are then a few
// stretches of that run (one per output row and image they touch), so the B packer copies each
// row of a panel with one masked load per stretch and one store: no per-element gather, and no
// discarded columns computed.

struct Split {
  dw::Geom g;
  int64_t nb, img, phase, chan, floats;
  std::vector<int64_t> rows;
};

Split split_layout(const Conv2dShape& s, int64_t nb) {
  Split t;
  t.g = dw::geom(s, 16);
  t.nb = nb;
  t.img = t.g.Hm * t.g.Wm;
  t.phase = nb * t.img;
  t.chan = t.g.slots * t.phase;
  t.floats = s.C / s.groups * t.chan;
  const int64_t RS = s.R * s.S;
  for (int64_t c = 0; c < s.C / s.groups; ++c)
    for (int64_t i = 0; i < RS; ++i) {
      const int64_t o = t.g.off[i], slot = o / t.g.phase, within = o % t.g.phase;
      t.rows.push_back(c * t.chan + slot * t.phase + within);
    }
  return t;
}

struct Stretches {
  const float* xs;
  const Split* t;
  int64_t PQ, Q;
};

// gemm.h's BPacker over the phase-split copy: NR-column micro-panels of B[k0:k0+kc][n0:n0+nc].
void pack_stretches(const void* ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* bp) {
  const Stretches& st = *static_cast<const Stretches*>(ctx);
  const Split& t = *st.t;
  const int64_t* rows = t.rows.data() + k0;
  for (int64_t jr = 0; jr < nc; jr += 16, bp += 16 * kc) {
    // stretch i: lanes `mask[i]` read xs + rows[k] + delta[i] + lane
    int64_t delta[16];
    __mmask16 mask[16];
    int count = 0;
    const int64_t lanes = std::min<int64_t>(16, nc - jr);
    for (int64_t j = 0; j < lanes;) {
      const int64_t n = n0 + jr + j, i = n / st.PQ, rem = n % st.PQ, p = rem / st.Q;
      const int64_t q = rem % st.Q, len = std::min(lanes - j, st.Q - q);
      delta[count] = i * t.img + p * t.g.Wm + q - j;
      mask[count++] = static_cast<__mmask16>(((1u << len) - 1) << j);
      j += len;
    }
    if (count == 1 && lanes == 16) {
      for (int64_t k = 0; k < kc; ++k)
        _mm512_store_ps(bp + k * 16, _mm512_loadu_ps(st.xs + rows[k] + delta[0]));
      continue;
    }
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = st.xs + rows[k];
      __m512 v = _mm512_setzero_ps();
      for (int i = 0; i < count; ++i) v = _mm512_mask_loadu_ps(v, mask[i], src + delta[i]);
      _mm512_store_ps(bp + k * 16, v);
    }
  }
}

// nb images from image n0 (group g): split, then the GEMM into y (one image) or into a
// workspace then moved to NCHW (several).
Status stretch_group(const Conv2dShape& s, const Split& t, const float* x, const float* w,
                     const float* bias, float* y, int64_t n0, int64_t g, int threads) {
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, Kd = Cg * s.R * s.S, HW = s.H * s.W;
  const int64_t PQ = s.P * s.Q;
  static thread_local Scratch tl_split, tl_ws;
  float* xs = tl_split.get(static_cast<size_t>(t.floats));
  parallel_for(Cg * t.nb, threads_for(Cg * t.nb * HW, 1 << 15, threads), [&](int64_t b, int64_t e) {
    for (int64_t ci = b; ci < e; ++ci) {
      const int64_t c = ci / t.nb, i = ci % t.nb;
      dw::split_phases<avx512::F32x16>(t.g, x + ((n0 + i) * s.C + g * Cg + c) * HW,
                                       xs + c * t.chan + i * t.img, t.phase);
    }
  });
  const Stretches st{xs, &t, PQ, s.Q};
  GemmArgs ga;
  ga.M = Kg;
  ga.N = t.nb * PQ;
  ga.K = Kd;
  ga.A = {w + g * Kg * Kd, Kd, 1};
  ga.pack_b = {pack_stretches, &st};
  ga.C = t.nb == 1 ? y + (n0 * s.K + g * Kg) * PQ : tl_ws.get(static_cast<size_t>(Kg * ga.N));
  ga.ldc = t.nb == 1 ? PQ : ga.N;
  ga.row_bias = bias ? bias + g * Kg : nullptr;
  const Status r = gemm_avx512(ga, threads);
  if (r != Status::kOk || t.nb == 1) return r;
  conv2d_workspace_to_nchw(s, g, n0, t.nb, ga.C, y, threads);
  return Status::kOk;
}

// The forward over phase-split copies: small images all in one GEMM per group, others one image
// per GEMM, images in parallel.
Status fwd_stretches(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                     float* y, int threads) {
  if (x == nullptr || w == nullptr || y == nullptr) return Status::kInvalidArgument;
  if (s.P * s.Q < kConvSmallImage && s.N > 1) {
    const Split t = split_layout(s, s.N);
    for (int64_t g = 0; g < s.groups; ++g) {
      const Status st = stretch_group(s, t, x, w, bias, y, 0, g, threads);
      if (st != Status::kOk) return st;
    }
    return Status::kOk;
  }
  const Split t = split_layout(s, 1);
  const int64_t work = s.K * s.P * s.Q * (s.C / s.groups * s.R * s.S + 1);
  return conv2d_for_image_groups(s, threads, work, [&](int64_t n, int64_t g, int inner) {
    return stretch_group(s, t, x, w, bias, y, n, g, inner);
  });
}

bool stretches_apply(const Conv2dShape& s, Conv2dAlgo algo) {
  return algo == Conv2dAlgo::kIm2col && nonempty(s);
}

// The im2col forward's routes, best first.
Status fwd_im2col(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                  float* y, int threads) {
  if (x == nullptr || w == nullptr || y == nullptr) return Status::kInvalidArgument;
  if (conv2d_grouped_fwd_direct(s, Conv2dAlgo::kIm2col)) {
    dw::grouped_fwd<avx512::F32x16>(s, x, w, bias, y, threads);
    return Status::kOk;
  }
  if (applies(s, Conv2dAlgo::kIm2col)) return fwd_padded(s, x, w, bias, y, threads);
  return fwd_stretches(s, x, w, bias, y, threads);
}

}  // namespace

Status conv2d_fwd_avx512(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                         float* y, int threads, Conv2dAlgo algo) {
  if (conv2d_validate(s) != Status::kOk) return conv2d_fwd_avx2(s, x, w, bias, y, threads, algo);
  Conv2dAlgo a = algo == Conv2dAlgo::kAuto ? conv2d_pick_algo(s) : algo;
  if (a == Conv2dAlgo::kDepthwise && conv2d_algo_applies(s, a)) {
    if (s.N > 0 && s.K > 0 && s.P * s.Q > 0) dw::fwd<avx512::F32x16>(s, x, w, bias, y, threads);
    return Status::kOk;
  }
  if (a == Conv2dAlgo::kWinograd && conv2d_algo_applies(s, a)) {
    if (wino::fwd<avx512::F32x16>(s, x, w, bias, y, threads, &gemm_avx512)) {
      conv2d_count_winograd_pass();
      return Status::kOk;
    }
    a = Conv2dAlgo::kIm2col;  // not served (non-finite outputs, a null pointer): im2col
  }
  if (stretches_apply(s, a)) return fwd_im2col(s, x, w, bias, y, threads);
  return conv2d_fwd_avx2(s, x, w, bias, y, threads, a);
}

Status conv2d_bwd_avx512(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                         float* dx, float* dw, float* db, int threads, Conv2dAlgo algo) {
  if (conv2d_validate(s) != Status::kOk)
    return conv2d_bwd_avx2(s, x, w, dy, dx, dw, db, threads, algo);
  Conv2dAlgo a = algo == Conv2dAlgo::kAuto ? conv2d_pick_algo(s) : algo;
  if (a == Conv2dAlgo::kDepthwise && conv2d_algo_applies(s, a) && s.N > 0 && s.K > 0 &&
      s.P * s.Q > 0) {
    dw::bwd<avx512::F32x16>(s, x, w, dy, dx, dw, db, threads);
    return Status::kOk;
  }
  if (conv2d_winograd_weight(s, algo) &&
      wino::bwd_weight<avx512::F32x16>(s, x, dy, dw, threads, &gemm_avx512)) {
    dw = nullptr;
    conv2d_count_winograd_pass();
  }
  if (a == Conv2dAlgo::kWinograd && conv2d_algo_applies(s, a)) {
    if (wino::bwd_data<avx512::F32x16>(s, w, dy, dx, threads, &gemm_avx512)) {
      dx = nullptr;
      conv2d_count_winograd_pass();
    }
    a = Conv2dAlgo::kIm2col;  // the bias gradient, and dx, dw where Winograd did not serve
  }
  if (conv2d_grouped_weight_direct(s, a) && (dw != nullptr || db != nullptr) &&
      s.N > 0 && s.K > 0 && s.P * s.Q > 0) {
    if (dy == nullptr || (dw != nullptr && x == nullptr)) return Status::kInvalidArgument;
    dw::grouped_weight<avx512::F32x16>(s, x, dy, dw, db, threads);
    if (dx == nullptr) return Status::kOk;
    dw = nullptr, db = nullptr;  // dx is left
  } else if (dw != nullptr && weight_padded_applies(s, a)) {
    if (dy == nullptr || x == nullptr) return Status::kInvalidArgument;
    const Status st = bwd_weight_padded(s, x, dy, dw, threads);
    if (st != Status::kOk) return st;
    dw = nullptr;  // db and dx are left
  }
  if (dx == nullptr) return conv2d_bwd_avx2(s, x, w, dy, dx, dw, db, threads, a);
  // backward data at stride 1 as the transposed convolution, by the forward's routes: its GEMM
  // has C / groups rows, from kMinTransposedRows up
  const Conv2dShape t = conv2d_transposed(s);
  const bool finite = conv2d_weight_finite(w, s.K * (s.C / s.groups) * s.R * s.S);
  const bool as_forward = a == Conv2dAlgo::kIm2col && s.stride_h == 1 && s.stride_w == 1 &&
                          s.C / s.groups >= kMinTransposedRows && nonempty(s) && finite;
  if (!as_forward && finite && conv2d_grouped_bwd_direct(s, a) && nonempty(s)) {
    if (w == nullptr || dy == nullptr) return Status::kInvalidArgument;
    dw::grouped_bwd_data<avx512::F32x16>(s, w, dy, dx, threads);
    return conv2d_bwd_avx2(s, x, w, dy, nullptr, dw, db, threads, a);
  }
  if (!as_forward) return conv2d_bwd_avx2(s, x, w, dy, dx, dw, db, threads, a);
  if (w == nullptr || dy == nullptr) return Status::kInvalidArgument;
  const float* wt = conv2d_flipped_weight(s, w);
  const Status st = fwd_im2col(t, dy, wt, nullptr, dx, threads);
  if (st != Status::kOk || (dw == nullptr && db == nullptr)) return st;
  return conv2d_bwd_avx2(s, x, w, dy, nullptr, dw, db, threads, a);
}

}  // namespace dlkern

#ifdef DLKERN_AVX512_CLANG_PUSHED
#pragma clang attribute pop
#endif
