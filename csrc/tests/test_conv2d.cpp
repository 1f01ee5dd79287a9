// conv2d core: every algorithm that applies to a shape (gemm1x1, im2col, depthwise, winograd), on the avx2
// path and (where the CPU has it) the avx512 one with its padded-input route, against the
// double-accumulating reference, forward and all three gradients, with 1 and 2 threads (which
// must agree bit for bit), over kernels 1-7, strides 1-3, paddings 0-5, dilations 1-2, groups 1,
// 2 and C, odd sizes, and an asymmetric ('same'-style) output size.
//
//   test_conv2d            the checks
//   test_conv2d --bench    GFLOP/s of the best path on the benchmark shapes (no checks)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "../core/conv2d.h"
#include "check.h"

using dlkern::Conv2dAlgo;
using dlkern::Conv2dShape;
using dlkern::CpuIsa;
using dlkern::Status;

namespace {

int g_compared = 0;  // (shape, algorithm) pairs compared

Conv2dShape make(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                 int64_t stride, int64_t pad, int64_t dil, int64_t groups, int64_t extra_q = 0) {
  Conv2dShape s;
  s.N = N, s.C = C, s.H = H, s.W = W, s.K = K, s.R = R, s.S = S, s.groups = groups;
  s.stride_h = stride, s.stride_w = stride, s.pad_h = pad, s.pad_w = pad, s.dil_h = dil,
  s.dil_w = dil;
  s.P = std::max<int64_t>(0, (H + 2 * pad - dil * (R - 1) - 1) / stride + 1);
  s.Q = std::max<int64_t>(0, (W + 2 * pad - dil * (S - 1) - 1) / stride + 1) + extra_q;
  return s;
}

struct Out {
  std::vector<float> y, dx, dw, db;
};

double max_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double scale = 1.0, err = 0;
  for (float v : ref) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  for (size_t i = 0; i < a.size(); ++i)
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - ref[i]));
  return err / scale;
}

void check_shape(const Conv2dShape& s, std::mt19937& rng) {
  const int64_t Cg = s.C / s.groups;
  const size_t nx = s.N * s.C * s.H * s.W, nw = s.K * Cg * s.R * s.S, ny = s.N * s.K * s.P * s.Q;
  std::normal_distribution<float> d;
  std::vector<float> x(nx), w(nw), b(s.K), dy(ny);
  for (auto& v : x) v = d(rng);
  for (auto& v : w) v = d(rng);
  for (auto& v : b) v = d(rng);
  for (auto& v : dy) v = d(rng);
  Out ref{std::vector<float>(ny), std::vector<float>(nx), std::vector<float>(nw),
          std::vector<float>(s.K)};
  CHECK(dlkern::conv2d_fwd_ref(s, x.data(), w.data(), b.data(), ref.y.data(), 2) == Status::kOk,
        "ref fwd failed");
  CHECK(dlkern::conv2d_bwd_ref(s, x.data(), w.data(), dy.data(), ref.dx.data(), ref.dw.data(),
                               ref.db.data(), 2) == Status::kOk, "ref bwd failed");
  for (Conv2dAlgo a : {Conv2dAlgo::kGemm1x1, Conv2dAlgo::kIm2col, Conv2dAlgo::kDepthwise,
                       Conv2dAlgo::kWinograd}) {
    if (!dlkern::conv2d_algo_applies(s, a)) continue;
    ++g_compared;
    const int64_t served_before = dlkern::conv2d_winograd_passes();
    Out o[2];
    for (int t = 0; t < 2; ++t) {
      o[t] = {std::vector<float>(ny, 7.f), std::vector<float>(nx, 7.f), std::vector<float>(nw, 7.f),
              std::vector<float>(s.K, 7.f)};
      CHECK(dlkern::conv2d_fwd_cpu(s, x.data(), w.data(), b.data(), o[t].y.data(), t + 1, a) ==
                Status::kOk, "fwd failed");
      CHECK(dlkern::conv2d_bwd_cpu(s, x.data(), w.data(), dy.data(), o[t].dx.data(),
                                   o[t].dw.data(), o[t].db.data(), t + 1, a) == Status::kOk,
            "bwd failed");
    }
    // the sums have up to Cg*R*S (forward), K*R*S (dx) and N*P*Q (dw) float terms
    const double tol = 2e-6 * std::sqrt(static_cast<double>(s.N * s.P * s.Q + s.K * s.R * s.S + 64));
    const char* an = dlkern::conv2d_algo_name(a);
    const std::vector<float>* pairs[4][3] = {{&o[0].y, &o[1].y, &ref.y},
                                             {&o[0].dx, &o[1].dx, &ref.dx},
                                             {&o[0].dw, &o[1].dw, &ref.dw},
                                             {&o[0].db, &o[1].db, &ref.db}};
    const char* names[4] = {"y", "dx", "dw", "db"};
    for (int i = 0; i < 4; ++i) {
      const double e = max_err(*pairs[i][0], *pairs[i][2]);
      CHECK(e <= tol, "%s N%lld C%lld %lldx%lld K%lld %lldx%lld s%lld p%lld d%lld g%lld Q%lld: %s "
            "error %.3g > %.3g", an, (long long)s.N, (long long)s.C, (long long)s.H,
            (long long)s.W, (long long)s.K, (long long)s.R, (long long)s.S,
            (long long)s.stride_h, (long long)s.pad_h, (long long)s.dil_h, (long long)s.groups,
            (long long)s.Q, names[i], e, tol);
      CHECK(*pairs[i][0] == *pairs[i][1], "%s K%lld %lldx%lld C%lld: %s differs between 1 and 2 "
            "threads", an, (long long)s.K, (long long)s.R, (long long)s.S, (long long)s.C,
            names[i]);
    }
    if (a != Conv2dAlgo::kWinograd) continue;
    // each of the two runs' three passes by Winograd (finite inputs: no fallback to im2col)
    CHECK(dlkern::conv2d_winograd_passes() - served_before >= 6 || s.N * s.K * s.P * s.Q == 0 ||
              s.C == 0, "winograd N%lld C%lld %lldx%lld K%lld: served %lld passes of 6",
          (long long)s.N, (long long)s.C, (long long)s.H, (long long)s.W, (long long)s.K,
          (long long)(dlkern::conv2d_winograd_passes() - served_before));
    // past 16 threads Winograd's GEMMs share the threads instead of taking a position each
    Out many{std::vector<float>(ny, 7.f), std::vector<float>(nx, 7.f),
             std::vector<float>(nw, 7.f), std::vector<float>(s.K, 7.f)};
    CHECK(dlkern::conv2d_fwd_cpu(s, x.data(), w.data(), b.data(), many.y.data(), 20, a) ==
              Status::kOk && dlkern::conv2d_bwd_cpu(s, x.data(), w.data(), dy.data(),
                                                    many.dx.data(), many.dw.data(),
                                                    many.db.data(), 20, a) == Status::kOk,
          "winograd with 20 threads failed");
    CHECK(many.y == o[0].y && many.dx == o[0].dx && many.dw == o[0].dw && many.db == o[0].db,
          "winograd N%lld C%lld %lldx%lld K%lld: 20 threads differ from 1", (long long)s.N,
          (long long)s.C, (long long)s.H, (long long)s.W, (long long)s.K);
  }
}

double seconds_per_call(const std::function<void()>& f) {
  f();
  double best = 1e9;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void bench() {
  const Conv2dShape shapes[] = {
      make(1, 3, 224, 224, 64, 3, 3, 1, 1, 1, 1), make(1, 3, 224, 224, 64, 5, 5, 1, 2, 1, 1),
      make(1, 3, 224, 224, 64, 3, 3, 2, 1, 1, 1), make(1, 3, 224, 224, 64, 5, 5, 2, 2, 1, 1),
      make(4, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1),   make(8, 32, 64, 64, 64, 3, 3, 1, 1, 1, 1),
      make(8, 3, 224, 224, 64, 7, 7, 2, 3, 1, 1), make(8, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1),
      make(8, 256, 56, 56, 64, 1, 1, 1, 0, 1, 1), make(8, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1),
      make(8, 512, 7, 7, 2048, 1, 1, 1, 0, 1, 1)};
  for (const auto& s : shapes) {
    const int64_t Cg = s.C / s.groups;
    std::vector<float> x(s.N * s.C * s.H * s.W, 0.5f), w(s.K * Cg * s.R * s.S, 0.25f), b(s.K, 1.f);
    std::vector<float> y(s.N * s.K * s.P * s.Q, 0.f), dx(x.size()), dw(w.size()), db(s.K);
    const double fl = 2.0 * y.size() * Cg * s.R * s.S;
    const double tf = seconds_per_call([&] {
      dlkern::conv2d_fwd_cpu(s, x.data(), w.data(), b.data(), y.data(), 2);
    });
    const double tdx = seconds_per_call([&] {
      dlkern::conv2d_bwd_cpu(s, x.data(), w.data(), y.data(), dx.data(), nullptr, nullptr, 2);
    });
    const double tdw = seconds_per_call([&] {
      dlkern::conv2d_bwd_cpu(s, x.data(), w.data(), y.data(), nullptr, dw.data(), db.data(), 2);
    });
    std::printf("N%-2lld C%-3lld %3lldx%-3lld K%-4lld %lldx%lld/%lld  fwd %7.3f ms %6.1f GF/s  "
                "dx %7.3f ms %6.1f  dw %7.3f ms %6.1f\n", (long long)s.N, (long long)s.C,
                (long long)s.H, (long long)s.W, (long long)s.K, (long long)s.R, (long long)s.S,
                (long long)s.stride_h, tf * 1e3, fl / tf * 1e-9, tdx * 1e3, fl / tdx * 1e-9,
                tdw * 1e3, fl / tdw * 1e-9);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (dlkern::cpu_isa_best() < CpuIsa::kAvx2) {
    std::printf("no AVX2/FMA on this CPU: nothing to compare\n");
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    bench();
    return 0;
  }
  // the avx2 path, then the avx512 one (its GEMM, and its stride-1 forward over a padded input)
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
  if (dlkern::cpu_isa_select(isa) != dlkern::Status::kOk) {
    std::printf("%s: skipped (this CPU lacks it)\n", dlkern::cpu_isa_name(isa));
    continue;
  }
  std::printf("%s:\n", dlkern::cpu_isa_name(isa));
  std::mt19937 rng(42);
  for (int64_t k : {1, 2, 3, 5, 7})
    for (int64_t stride : {1, 2, 3})
      for (int64_t pad : {0, 1, 3})
        for (int64_t dil : {1, 2}) {
          const Conv2dShape s = make(2, 3, 13, 17, 5, k, k, stride, pad, dil, 1);
          if (s.P > 0 && s.Q > 0) check_shape(s, rng);
        }
  // groups, depthwise (multiplier 1 and 2), 1x1 on odd sizes, channels past the micro-tile
  check_shape(make(2, 4, 9, 11, 6, 3, 3, 1, 1, 1, 2), rng);
  check_shape(make(3, 17, 13, 5, 17, 3, 3, 1, 1, 1, 17), rng);
  check_shape(make(2, 5, 13, 13, 10, 5, 5, 2, 2, 1, 5), rng);
  check_shape(make(2, 6, 31, 31, 6, 3, 3, 1, 1, 2, 6), rng);
  check_shape(make(2, 4, 40, 40, 4, 3, 3, 2, 1, 1, 4), rng);
  // depthwise.h: 7x7 (more taps than a tap group), strides 2 and 3 (phase planes), dilation with
  // stride, rows past a register block (Q > 64), a 1x1 plane, a kernel wider than the input,
  // an extra output column, padding wider than the kernel's reach, multiplier 3
  check_shape(make(2, 6, 23, 29, 6, 7, 7, 2, 3, 1, 6), rng);
  check_shape(make(1, 5, 17, 19, 5, 5, 5, 3, 2, 1, 5), rng);
  check_shape(make(1, 3, 21, 22, 3, 3, 3, 2, 2, 2, 3), rng);
  check_shape(make(2, 3, 6, 150, 3, 3, 3, 1, 1, 1, 3), rng);
  check_shape(make(2, 7, 1, 1, 7, 3, 3, 1, 1, 1, 7), rng);
  check_shape(make(1, 2, 4, 5, 2, 7, 7, 1, 3, 1, 2), rng);
  check_shape(make(2, 4, 9, 10, 4, 2, 2, 1, 0, 1, 4, 1), rng);
  check_shape(make(1, 4, 6, 7, 4, 3, 3, 1, 4, 1, 4), rng);
  check_shape(make(2, 3, 12, 12, 9, 3, 3, 2, 1, 1, 3), rng);
  check_shape(make(1, 4, 112, 112, 4, 3, 3, 2, 1, 1, 4), rng);
  // the channel-blocked forward (and backward data at stride 1): channels past a vector (16 on
  // zmm, 8 on ymm), a 7x7 kernel on a 7x7 plane, stride 2 on a wide plane, padding past the
  // kernel's reach (backward data then crops), dilation 2
  check_shape(make(2, 40, 7, 7, 40, 7, 7, 1, 3, 1, 40), rng);
  check_shape(make(1, 33, 30, 66, 33, 3, 3, 2, 1, 1, 33), rng);
  check_shape(make(1, 20, 9, 9, 20, 3, 3, 1, 4, 1, 20), rng);
  check_shape(make(2, 9, 12, 12, 9, 3, 3, 1, 2, 2, 9), rng);
  check_shape(make(1, 18, 20, 24, 18, 5, 5, 1, 2, 1, 18), rng);
  // backward data by the transposed forward's routes on the avx512 path: 4 channels per group
  // on small images, and a padding that crops there
  check_shape(make(3, 16, 7, 7, 12, 3, 3, 1, 1, 1, 4), rng);
  check_shape(make(2, 8, 6, 6, 8, 3, 3, 1, 3, 1, 1), rng);
  check_shape(make(1, 8, 32, 32, 8, 1, 1, 1, 1, 1, 1), rng);  // the padded route's crop
  // a wide dilation (an ASPP layer): the forward's last vector reads furthest past the planes
  check_shape(make(1, 2, 64, 64, 2, 3, 3, 1, 36, 36, 2), rng);
  // 1x1 convolutions of 1x1 images (squeeze-excitation): the batch's GEMMs, with groups
  check_shape(make(9, 33, 1, 1, 20, 1, 1, 1, 0, 1, 1), rng);
  check_shape(make(5, 12, 1, 1, 8, 1, 1, 1, 0, 1, 2), rng);
  check_shape(make(3, 17, 5, 13, 23, 1, 1, 1, 0, 1, 1), rng);
  check_shape(make(1, 64, 7, 7, 130, 1, 1, 1, 0, 1, 1), rng);
  check_shape(make(1, 64, 7, 7, 33, 1, 1, 2, 0, 1, 1), rng);
  check_shape(make(2, 32, 12, 12, 20, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 3, 40, 70, 16, 5, 5, 2, 2, 1, 1), rng);
  check_shape(make(1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1), rng);
  check_shape(make(1, 2, 1, 1, 3, 3, 3, 1, 1, 1, 1), rng);
  // an extra output column: the right padding is one more than the left ('same', even kernel)
  check_shape(make(2, 3, 9, 10, 4, 2, 2, 1, 0, 1, 1, 1), rng);
  // tiles: many positions (several backward tiles) and a wide channel count (several K blocks)
  check_shape(make(1, 2, 150, 150, 3, 3, 3, 2, 1, 1, 1), rng);
  check_shape(make(1, 300, 6, 6, 8, 3, 3, 1, 1, 1, 1), rng);
  // grouped forwards as direct products (strides above 1, small images): output channels per
  // group past and between the register blocks (6 on zmm, 4 on ymm), strides 2 and 3 with
  // dilation, 5x5 and 7x7 kernels, 48 channels per group, padding past the kernel's reach, one
  // channel per group with a multiplier, an extra output column
  check_shape(make(2, 12, 14, 14, 26, 3, 3, 2, 1, 1, 2), rng);
  check_shape(make(3, 21, 9, 11, 14, 3, 3, 1, 1, 1, 7), rng);
  check_shape(make(1, 40, 10, 10, 40, 5, 5, 1, 2, 1, 2), rng);
  check_shape(make(2, 16, 23, 19, 32, 3, 3, 3, 0, 2, 4), rng);
  check_shape(make(1, 10, 7, 7, 10, 7, 7, 1, 3, 1, 5), rng);
  check_shape(make(1, 96, 7, 7, 96, 3, 3, 1, 1, 1, 2), rng);
  check_shape(make(2, 6, 5, 5, 6, 3, 3, 1, 4, 1, 3), rng);
  check_shape(make(2, 3, 8, 8, 9, 3, 3, 2, 1, 1, 3), rng);
  check_shape(make(2, 8, 9, 10, 16, 2, 2, 2, 0, 1, 2, 1), rng);
  // empty batch and no output channels
  check_shape(make(0, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(2, 3, 5, 5, 0, 3, 3, 1, 1, 1, 1), rng);
  // output channels past the AVX-512 tile (8 x 48), and GEMM depths past its K block (768)
  check_shape(make(2, 50, 9, 9, 21, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(2, 100, 16, 16, 24, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 90, 8, 20, 20, 3, 3, 1, 1, 1, 1), rng);
  // stride-1 forwards over a padded input (images of 256 positions or more): pads, dilation,
  // groups, 'same' with an extra column, no padding, channels across K blocks
  check_shape(make(1, 5, 17, 23, 19, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(2, 4, 20, 80, 9, 5, 5, 1, 2, 2, 1), rng);
  check_shape(make(2, 6, 20, 40, 10, 3, 3, 1, 1, 1, 2), rng);
  check_shape(make(1, 3, 30, 40, 4, 2, 2, 1, 0, 1, 1, 1), rng);
  check_shape(make(1, 3, 30, 40, 7, 3, 3, 1, 0, 1, 1), rng);
  check_shape(make(1, 3, 24, 64, 5, 1, 7, 1, 3, 1, 1), rng);
  check_shape(make(1, 45, 18, 18, 17, 3, 3, 1, 1, 1, 1), rng);
  // and backward data the same way (16 input channels or more): padding wider than the kernel's
  // reach (the transposed convolution then crops), dilation, groups
  check_shape(make(2, 20, 20, 30, 24, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 16, 24, 40, 8, 3, 3, 1, 2, 2, 1), rng);
  check_shape(make(1, 17, 20, 36, 9, 3, 3, 1, 3, 1, 1), rng);
  check_shape(make(1, 32, 20, 48, 32, 3, 3, 1, 1, 1, 2), rng);   // groups
  check_shape(make(1, 16, 20, 24, 48, 3, 3, 1, 1, 1, 1), rng);   // dX over two K blocks
  check_shape(make(1, 16, 4, 20, 4, 3, 3, 1, 5, 1, 1), rng);     // pad beyond the kernel: crop
  // column blocks past the first (P * Wp > 3072), rows past MC split by rows, three images on
  // two threads, a kernel one column wide (nothing discarded), rows of exactly 16
  check_shape(make(1, 16, 56, 56, 16, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 64, 8, 18, 200, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(3, 16, 16, 20, 8, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 4, 20, 32, 6, 3, 1, 1, 1, 1, 1), rng);
  check_shape(make(1, 3, 20, 16, 5, 3, 3, 1, 1, 1, 1), rng);
  // Winograd (3x3, stride 1): tile rows longer than a vector (35 tiles) and shorter (1), odd and
  // even P and Q, padding 0, 2 and 3 (backward data then crops), one channel in or out, a 1x1
  // image, two chunks of tiles split mid tile row (the batch's 8 x 15 x 15), an extra output
  // column, three chunks of wide tiles (160 + 96 channels), and two chunks (80 + 64 tiles)
  // under the cap of a transformed filter over 4 MiB, stored past the caches (272 channels)
  check_shape(make(1, 4, 9, 70, 5, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(2, 6, 5, 2, 3, 3, 3, 1, 0, 1, 1), rng);
  check_shape(make(3, 1, 8, 9, 7, 3, 3, 1, 2, 1, 1), rng);
  check_shape(make(2, 7, 6, 5, 1, 3, 3, 1, 3, 1, 1), rng);
  check_shape(make(2, 24, 1, 1, 20, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(8, 20, 30, 29, 18, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(2, 5, 11, 12, 6, 3, 3, 1, 1, 1, 1, 1), rng);
  check_shape(make(2, 160, 36, 36, 96, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 272, 23, 23, 272, 3, 3, 1, 1, 1, 1), rng);
  }
  dlkern::cpu_isa_select(dlkern::cpu_isa_best());
  std::printf("%d (shape, algorithm) pairs compared\n", g_compared);
  CHECK(g_compared > 100, "expected over 100 comparisons, ran %d", g_compared);
  TEST_MAIN_END();
}
