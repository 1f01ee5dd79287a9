// CUDA conv2d (forward, backward data, backward weight, bias gradient) against the CPU reference
// (double accumulation): the kernel/stride/padding/dilation grid, groups and depthwise, the 1x1
// GEMM path, tile edges, split-K with and without a workspace, empty batches, no output channels or
// positions (dy empty and null: every gradient zero, not stale). Runs twice and
// requires identical bits (no atomics anywhere). Exits 77 (skipped) without a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "../core/conv2d.h"
#include "cuda_util.cuh"

using dlkern::Conv2dShape;
using dlkern::Status;
using namespace dlkern_test;

namespace {

int g_compared = 0;

Conv2dShape make(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                 int64_t stride, int64_t pad, int64_t dil, int64_t groups) {
  Conv2dShape s;
  s.N = N, s.C = C, s.H = H, s.W = W, s.K = K, s.R = R, s.S = S, s.groups = groups;
  s.stride_h = stride, s.stride_w = stride, s.pad_h = pad, s.pad_w = pad, s.dil_h = dil,
  s.dil_w = dil;
  s.P = std::max<int64_t>(0, (H + 2 * pad - dil * (R - 1) - 1) / stride + 1);
  s.Q = std::max<int64_t>(0, (W + 2 * pad - dil * (S - 1) - 1) / stride + 1);
  return s;
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
  std::vector<float> ry(ny), rdx(nx), rdw(nw), rdb(s.K);
  CHECK(dlkern::conv2d_fwd_ref(s, x.data(), w.data(), b.data(), ry.data(), 1) == Status::kOk, "ref fwd");
  CHECK(dlkern::conv2d_bwd_ref(s, x.data(), w.data(), dy.data(), rdx.data(), rdw.data(), rdb.data(), 1) ==
            Status::kOk, "ref bwd");
  DevBuf X(x), Wd(w), B(b), DY(dy);
  DevBytes ws(dlkern::conv2d_cuda_workspace(s));
  std::vector<float> got[3][4];
  for (int run = 0; run < 3; ++run) {  // 0, 1: with the workspace (must be bit-equal); 2: without
    void* wsp = run < 2 ? ws.p : nullptr;
    const size_t wsn = run < 2 ? ws.n : 0;
    DevBuf Y(ny, 7.f), DX(nx, 7.f), DW(nw, 7.f), DB(s.K, 7.f);
    CHECK(dlkern::conv2d_fwd_cuda(s, X.p, Wd.p, B.p, Y.p, wsp, wsn, nullptr) == Status::kOk,
          "fwd launch: %s", dlkern::status_detail());
    CHECK(dlkern::conv2d_bwd_cuda(s, X.p, Wd.p, DY.p, DX.p, DW.p, DB.p, wsp, wsn, nullptr) ==
              Status::kOk, "bwd launch: %s", dlkern::status_detail());
    sync_ok("conv2d kernels");
    got[run][0] = Y.host(), got[run][1] = DX.host(), got[run][2] = DW.host(), got[run][3] = DB.host();
  }
  ++g_compared;
  const std::vector<float>* ref[4] = {&ry, &rdx, &rdw, &rdb};
  const char* names[4] = {"y", "dx", "dw", "db"};
  const double tol = 2e-6 * std::sqrt(static_cast<double>(s.N * s.P * s.Q + s.K * s.R * s.S +
                                                          Cg * s.R * s.S + 64));
  for (int i = 0; i < 4; ++i) {
    for (int run : {0, 2}) {
      const double e = rel_err(got[run][i], *ref[i]);
      CHECK(e <= tol, "N%lld C%lld %lldx%lld K%lld %lldx%lld s%lld p%lld d%lld g%lld: %s error "
            "%.3g > %.3g (%s workspace)", (long long)s.N, (long long)s.C, (long long)s.H,
            (long long)s.W, (long long)s.K, (long long)s.R, (long long)s.S, (long long)s.stride_h,
            (long long)s.pad_h, (long long)s.dil_h, (long long)s.groups, names[i], e, tol,
            run == 0 ? "with" : "without");
    }
    CHECK(got[0][i] == got[1][i], "%s differs between two identical runs", names[i]);
  }
}

}  // namespace

int main() {
  skip_without_gpu();
  std::mt19937 rng(42);
  for (int64_t k : {1, 2, 3, 5, 7})
    for (int64_t stride : {1, 2, 3})
      for (int64_t pad : {0, 1, 3})
        for (int64_t dil : {1, 2}) {
          const Conv2dShape s = make(2, 3, 13, 17, 5, k, k, stride, pad, dil, 1);
          if (s.P > 0 && s.Q > 0) check_shape(s, rng);
        }
  check_shape(make(2, 4, 9, 11, 6, 3, 3, 1, 1, 1, 2), rng);       // groups
  check_shape(make(3, 17, 13, 5, 17, 3, 3, 1, 1, 1, 17), rng);    // depthwise
  check_shape(make(2, 5, 13, 13, 10, 5, 5, 2, 2, 1, 5), rng);     // depthwise, multiplier 2
  check_shape(make(3, 17, 5, 13, 23, 1, 1, 1, 0, 1, 1), rng);     // 1x1 GEMM path, odd sizes
  check_shape(make(2, 64, 7, 7, 130, 1, 1, 1, 0, 1, 1), rng);     // 1x1 past a 128 tile
  check_shape(make(1, 64, 7, 7, 33, 1, 1, 2, 0, 1, 1), rng);      // 1x1 stride 2: implicit GEMM
  check_shape(make(2, 32, 12, 12, 20, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(1, 3, 40, 70, 16, 5, 5, 2, 2, 1, 1), rng);
  check_shape(make(1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1), rng);
  check_shape(make(1, 2, 1, 1, 3, 3, 3, 1, 1, 1, 1), rng);
  check_shape(make(4, 64, 28, 28, 64, 3, 3, 1, 1, 1, 1), rng);    // split-K weight gradient
  check_shape(make(2, 130, 9, 9, 129, 3, 3, 1, 1, 1, 1), rng);    // channels past the tiles
  check_shape(make(0, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1), rng);        // empty batch
  check_shape(make(2, 3, 5, 5, 0, 3, 3, 1, 1, 1, 1), rng);        // no output channels (dy null)
  check_shape(make(2, 3, 2, 2, 4, 3, 3, 1, 0, 1, 1), rng);        // no output positions (dy null)
  check_shape(make(2, 0, 5, 5, 4, 3, 3, 1, 1, 1, 1), rng);        // no input channels
  check_shape(make(2, 3, 0, 5, 4, 3, 3, 1, 2, 1, 1), rng);        // H = 0, padded: y = bias
  std::printf("%d shapes compared\n", g_compared);
  TEST_MAIN_END();
}
