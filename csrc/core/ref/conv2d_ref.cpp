// Reference conv2d: direct loops accumulating in double, every output element a gather (no
// scattered writes, so no races and no dependence on the thread count). Plus the shape rules
// every path shares.
#include <algorithm>
#include <atomic>

#include "../conv2d.h"
#include "../cpu/parallel.h"

namespace dlkern {

const char* conv2d_algo_name(Conv2dAlgo a) {
  switch (a) {
    case Conv2dAlgo::kAuto: return "auto";
    case Conv2dAlgo::kGemm1x1: return "gemm1x1";
    case Conv2dAlgo::kIm2col: return "im2col";
    case Conv2dAlgo::kDepthwise: return "depthwise";
    case Conv2dAlgo::kWinograd: return "winograd";
  }
  return "unknown";
}

namespace {
std::atomic<int> g_preference{static_cast<int>(Conv2dAlgo::kAuto)};
}

Status conv2d_set_preference(Conv2dAlgo a) {
  if (a != Conv2dAlgo::kAuto && a != Conv2dAlgo::kWinograd && a != Conv2dAlgo::kIm2col)
    return Status::kInvalidArgument;
  g_preference.store(static_cast<int>(a));
  return Status::kOk;
}

Conv2dAlgo conv2d_preference() { return static_cast<Conv2dAlgo>(g_preference.load()); }

namespace {
std::atomic<int64_t> g_winograd_passes{0};
}

int64_t conv2d_winograd_passes() { return g_winograd_passes.load(); }
void conv2d_count_winograd_pass() { g_winograd_passes.fetch_add(1, std::memory_order_relaxed); }

// Winograd's transforms cost about (C + K) per tile and its GEMMs save C * K, so it pays from
// some channels up, with enough tiles for the GEMMs' columns (its transformed filter, 16 K C
// floats, is read once per chunk of tiles), and on 7x7 maps (8x8 outputs computed for 49) only
// from 256 channels on the avx512 path. Measured Winograd / im2col (cpu/winograd.h, 2 threads,
// the 2-core Zen 5 EPYC, 2026-12-04; forward, backward data, backward weight), batch 8 unless
// said:
//   avx512: 64 -> 64 at 56x56 0.80-0.87, 0.75-0.81, 0.73-0.82; 128 at 28x28 0.64, 0.60, 0.63;
//           256 at 14x14 0.65, 0.63, 0.58; 512 at 14x14 0.69-0.73, 0.70, 0.53; 64 at 14x14 0.92,
//           0.90, 0.64; 128 at 14x14 0.75, 0.74, 0.62; 512 at 14x14, batch 2 (98 tiles) 0.96,
//           0.92, 0.62; 256 at 7x7 0.92, 0.91, 0.74 (batch 4: 0.79, 0.93, 0.82); 512 at 7x7
//           1.05, 1.03, 0.65 (batch 16: 0.94, 0.93, 0.66); and left to im2col: 128 at 7x7 1.11,
//           1.07, 0.70; 32 -> 32 at 56x56 0.99 (forward), 16 at 56x56 1.37, 3 -> 64 at 56x56 2.3;
//   avx2:   0.52-0.75 from 32 to 256 channels on 14x14 to 56x56 maps, 512 at 7x7 0.94, 0.62,
//           0.68; 128 at 7x7 0.73, 0.54, 0.65.
// Grouped layers keep their routes (the direct grouped kernels, per-group GEMMs): Winograd's
// per-group GEMMs measured 1.05-2.7x their time (forward; backward alike) from 4 to 48 channels
// per group (128 x 28 x 28 in 8 groups 2.0, 432 x 14 x 14 in 9 groups 1.05, 256 x 28 x 28 in 8
// groups 1.9, 64 x 56 x 56 in 8 groups 2.7).
bool conv2d_winograd_pays(const Conv2dShape& s) {
  if (s.groups != 1) return false;
  const bool avx512 = cpu_isa_active() == CpuIsa::kAvx512;
  const int64_t channels = std::min(s.C, s.K), side = std::min(s.P, s.Q);
  const int64_t tiles = s.N * ((s.P + 1) / 2) * ((s.Q + 1) / 2);
  if (channels < (avx512 ? 64 : 32) || side < 7 || tiles < 96) return false;
  return !avx512 || side >= 10 || channels >= 256;
}

// Backward weight by Winograd pays more widely than the forward (its dy transform is cheap and
// its GEMMs run over the batch's tiles): Winograd / im2col measured as above (avx512; avx2
// alike) 0.53-0.82 from 64 channels, 64 at 7x7 0.57, 32 at 14x14 to 64x64 0.59-0.91, 16 at
// 56x56 0.73 (avx2 0.62), 8 -> 16 at 32x32 0.61, 16 -> 32 at 28x28 1.01; 3 -> 64 at 56x56 3.5.
bool conv2d_winograd_weight(const Conv2dShape& s, Conv2dAlgo algo) {
  if (!conv2d_algo_applies(s, Conv2dAlgo::kWinograd)) return false;
  if (algo == Conv2dAlgo::kWinograd) return true;
  if (algo != Conv2dAlgo::kAuto || conv2d_preference() == Conv2dAlgo::kIm2col) return false;
  if (conv2d_pick_algo(s) == Conv2dAlgo::kWinograd) return true;
  const int64_t tiles = s.N * ((s.P + 1) / 2) * ((s.Q + 1) / 2);
  return s.groups == 1 && std::min(s.C, s.K) >= 8 && std::min(s.P, s.Q) >= 7 && tiles >= 64;
}

Status conv2d_validate(const Conv2dShape& s) {
  if (s.N < 0 || s.C < 0 || s.H < 0 || s.W < 0 || s.K < 0 || s.R < 1 || s.S < 1 || s.P < 0 ||
      s.Q < 0)
    return Status::kInvalidArgument;
  if (s.stride_h < 1 || s.stride_w < 1 || s.dil_h < 1 || s.dil_w < 1 || s.pad_h < 0 ||
      s.pad_w < 0 || s.groups < 1 || s.C % s.groups != 0 || s.K % s.groups != 0)
    return Status::kInvalidArgument;
  return Status::kOk;
}

Conv2dAlgo conv2d_pick_algo(const Conv2dShape& s) {
  if (conv2d_algo_applies(s, Conv2dAlgo::kDepthwise)) return Conv2dAlgo::kDepthwise;
  if (conv2d_algo_applies(s, Conv2dAlgo::kGemm1x1)) return Conv2dAlgo::kGemm1x1;
  const Conv2dAlgo pref = conv2d_preference();
  if (pref != Conv2dAlgo::kIm2col && conv2d_algo_applies(s, Conv2dAlgo::kWinograd) &&
      (pref == Conv2dAlgo::kWinograd || conv2d_winograd_pays(s)))
    return Conv2dAlgo::kWinograd;
  return Conv2dAlgo::kIm2col;
}

bool conv2d_algo_applies(const Conv2dShape& s, Conv2dAlgo a) {
  switch (a) {
    case Conv2dAlgo::kAuto:
    case Conv2dAlgo::kIm2col:
      return true;
    case Conv2dAlgo::kGemm1x1:
      return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 &&
             s.pad_w == 0 && s.P == s.H && s.Q == s.W;
    case Conv2dAlgo::kDepthwise:
      return s.groups > 1 && s.groups == s.C;
    case Conv2dAlgo::kWinograd:
      return s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 &&
             s.dil_w == 1;
  }
  return false;
}

Status conv2d_fwd_ref(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                      float* y, int threads) {
  const Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, planes = s.N * s.K;
  const int64_t work = planes * s.P * s.Q * (Cg * s.R * s.S + 1);
  parallel_for(planes, threads_for(work, 1 << 14, threads), [&](int64_t b, int64_t e) {
    for (int64_t nk = b; nk < e; ++nk) {
      const int64_t n = nk / s.K, k = nk % s.K, g = k / Kg;
      const float* xg = x + (n * s.C + g * Cg) * s.H * s.W;
      const float* wk = w + k * Cg * s.R * s.S;
      float* yp = y + nk * s.P * s.Q;
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          double acc = bias ? bias[k] : 0.0;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < s.R; ++r) {
              const int64_t ih = p * s.stride_h - s.pad_h + r * s.dil_h;
              if (ih < 0 || ih >= s.H) continue;
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t iw = q * s.stride_w - s.pad_w + t * s.dil_w;
                if (iw < 0 || iw >= s.W) continue;
                acc += static_cast<double>(wk[(c * s.R + r) * s.S + t]) *
                       xg[(c * s.H + ih) * s.W + iw];
              }
            }
          yp[p * s.Q + q] = static_cast<float>(acc);
        }
    }
  });
  return Status::kOk;
}

Status conv2d_bwd_ref(const Conv2dShape& s, const float* x, const float* w, const float* dy,
                      float* dx, float* dw, float* db, int threads) {
  const Status st = conv2d_validate(s);
  if (st != Status::kOk) return st;
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t taps = s.R * s.S;
  if (dx != nullptr) {
    // dx[n, c, ih, iw] = sum over k of c's group, r, t with ih = p*sh - ph + r*dh (same for w)
    const int64_t planes = s.N * s.C;
    parallel_for(planes, threads_for(planes * HW * Kg * taps, 1 << 14, threads),
                 [&](int64_t b, int64_t e) {
      for (int64_t nc = b; nc < e; ++nc) {
        const int64_t n = nc / s.C, c = nc % s.C, g = c / Cg, cl = c % Cg;
        for (int64_t ih = 0; ih < s.H; ++ih)
          for (int64_t iw = 0; iw < s.W; ++iw) {
            double acc = 0;
            for (int64_t r = 0; r < s.R; ++r) {
              const int64_t ph = ih + s.pad_h - r * s.dil_h;
              if (ph < 0 || ph % s.stride_h != 0 || ph / s.stride_h >= s.P) continue;
              const int64_t p = ph / s.stride_h;
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t qw = iw + s.pad_w - t * s.dil_w;
                if (qw < 0 || qw % s.stride_w != 0 || qw / s.stride_w >= s.Q) continue;
                const int64_t q = qw / s.stride_w;
                for (int64_t kl = 0; kl < Kg; ++kl) {
                  const int64_t k = g * Kg + kl;
                  acc += static_cast<double>(w[((k * Cg + cl) * s.R + r) * s.S + t]) *
                         dy[(n * s.K + k) * PQ + p * s.Q + q];
                }
              }
            }
            dx[nc * HW + ih * s.W + iw] = static_cast<float>(acc);
          }
      }
    });
  }
  if (dw != nullptr || db != nullptr) {
    parallel_for(s.K, threads_for(s.K * s.N * PQ * (Cg * taps + 1), 1 << 14, threads),
                 [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t g = k / Kg;
        if (db != nullptr) {
          double acc = 0;
          for (int64_t n = 0; n < s.N; ++n)
            for (int64_t i = 0; i < PQ; ++i) acc += dy[(n * s.K + k) * PQ + i];
          db[k] = static_cast<float>(acc);
        }
        if (dw == nullptr) continue;
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              double acc = 0;
              for (int64_t n = 0; n < s.N; ++n) {
                const float* xc = x + (n * s.C + g * Cg + c) * HW;
                const float* dyk = dy + (n * s.K + k) * PQ;
                for (int64_t p = 0; p < s.P; ++p) {
                  const int64_t ih = p * s.stride_h - s.pad_h + r * s.dil_h;
                  if (ih < 0 || ih >= s.H) continue;
                  for (int64_t q = 0; q < s.Q; ++q) {
                    const int64_t iw = q * s.stride_w - s.pad_w + t * s.dil_w;
                    if (iw < 0 || iw >= s.W) continue;
                    acc += static_cast<double>(dyk[p * s.Q + q]) * xc[ih * s.W + iw];
                  }
                }
              }
              dw[((k * Cg + c) * s.R + r) * s.S + t] = static_cast<float>(acc);
            }
      }
    });
  }
  return Status::kOk;
}

}  // namespace dlkern
