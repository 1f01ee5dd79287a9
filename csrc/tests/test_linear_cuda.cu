// CUDA SGEMM and dense layer against the CPU reference path (double accumulation): every
// operand layout (row-major, transposed, sliced), tile edges (sizes 1, primes, one past 64 and
// 128), split-K (with and without a workspace: the results must agree) and the fused extras
// (bias, row bias, accumulate). Exits 77 (skipped) without a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "../core/common.h"
#include "../core/linear.h"
#include "cuda_util.cuh"

using dlkern::LinearShape;
using dlkern::MatrixRef;
using dlkern::Status;
using namespace dlkern_test;

namespace {

std::mt19937 g_rng(7);

std::vector<float> randn(size_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}

// x: batch x in (row stride x_rs >= in), w: out x in, or in x out transposed (w_t).
void check_dense(int64_t batch, int64_t in, int64_t out, bool bias, bool w_t, int64_t x_pad) {
  const int64_t x_rs = in + x_pad;
  const auto x = randn(batch * x_rs), w = randn(in * out), b = randn(out), dy = randn(batch * out);
  const MatrixRef xh{x.data(), x_rs, 1};
  const MatrixRef wh = w_t ? MatrixRef{w.data(), 1, out} : MatrixRef{w.data(), in, 1};
  const LinearShape s{batch, in, out};
  std::vector<float> y(batch * out), dx(batch * in), dw(out * in), db(out);
  CHECK(dlkern::linear_fwd_cpu(s, xh, wh, bias ? b.data() : nullptr, y.data(), 1) == Status::kOk, "ref fwd");
  CHECK(dlkern::linear_bwd_cpu(s, xh, wh, dy.data(), dx.data(), dw.data(), db.data(), 1) == Status::kOk, "ref bwd");

  DevBuf X(x), Wd(w), B(b), DY(dy);
  DevBytes ws(dlkern::linear_cuda_workspace(s));
  const MatrixRef xd{X.p, x_rs, 1};
  const MatrixRef wd = w_t ? MatrixRef{Wd.p, 1, out} : MatrixRef{Wd.p, in, 1};
  std::vector<float> got[2][4];
  for (int run = 0; run < 2; ++run) {  // run 0 with the workspace (split-K allowed), run 1 without
    void* wsp = run == 0 ? ws.p : nullptr;
    const size_t wsn = run == 0 ? ws.n : 0;
    DevBuf Y(batch * out, 7.f), DX(batch * in, 7.f), DW(out * in, 7.f), DB(out, 7.f);
    CHECK(dlkern::linear_fwd_cuda(s, xd, wd, bias ? B.p : nullptr, Y.p, wsp, wsn, nullptr) == Status::kOk,
          "fwd launch: %s", dlkern::status_detail());
    CHECK(dlkern::linear_bwd_cuda(s, xd, wd, DY.p, DX.p, DW.p, DB.p, wsp, wsn, nullptr) == Status::kOk,
          "bwd launch: %s", dlkern::status_detail());
    sync_ok("dense kernels");
    got[run][0] = Y.host(), got[run][1] = DX.host(), got[run][2] = DW.host(), got[run][3] = DB.host();
  }
  const std::vector<float>* ref[4] = {&y, &dx, &dw, &db};
  const char* names[4] = {"y", "dx", "dw", "db"};
  const double tol = 2e-6 * std::sqrt(static_cast<double>(batch + in + out + 64));
  for (int run = 0; run < 2; ++run)
    for (int i = 0; i < 4; ++i) {
      const double e = rel_err(got[run][i], *ref[i]);
      CHECK(e <= tol, "dense b%lld in%lld out%lld bias%d w_t%d pad%lld %s (%s workspace): error %.3g > %.3g",
            (long long)batch, (long long)in, (long long)out, bias, w_t, (long long)x_pad, names[i],
            run == 0 ? "with" : "without", e, tol);
    }
}

// gemm_cuda's fused extras the dense layer does not use: row_bias and accumulate.
void check_gemm_extras(int64_t M, int64_t N, int64_t K) {
  const auto a = randn(M * K), bm = randn(K * N), rb = randn(M), c0 = randn(M * N);
  for (int mode = 0; mode < 2; ++mode) {
    dlkern::GemmArgs g;
    g.M = M, g.N = N, g.K = K;
    g.A = {a.data(), K, 1}, g.B = {bm.data(), N, 1};
    std::vector<float> ref = c0;
    g.C = ref.data(), g.ldc = N;
    if (mode == 0) g.row_bias = rb.data(); else g.accumulate = true;
    CHECK(dlkern::gemm_ref(g, 1) == Status::kOk, "gemm_ref");
    DevBuf A(a), Bd(bm), RB(rb), C(c0);
    g.A.data = A.p, g.B.data = Bd.p, g.C = C.p;
    if (mode == 0) g.row_bias = RB.p;
    DevBytes ws(dlkern::gemm_cuda_workspace(g));
    CHECK(dlkern::gemm_cuda(g, ws.p, ws.n, nullptr) == Status::kOk, "gemm_cuda: %s", dlkern::status_detail());
    sync_ok("gemm");
    const double e = rel_err(C.host(), ref);
    CHECK(e <= 2e-6 * std::sqrt(K + 64.0), "gemm %lldx%lldx%lld %s: error %.3g", (long long)M,
          (long long)N, (long long)K, mode == 0 ? "row_bias" : "accumulate", e);
  }
}

}  // namespace

int main() {
  skip_without_gpu();
  dlkern::cpu_isa_select(dlkern::CpuIsa::kReference);
  for (int64_t batch : {1, 3, 64, 65, 129})
    for (int64_t in : {1, 5, 128, 131})
      for (int64_t out : {1, 7, 64, 130})
        check_dense(batch, in, out, (batch + in + out) % 2 == 0, out % 2 == 1, in % 3 == 1 ? 3 : 0);
  check_dense(256, 784, 1024, true, false, 0);   // the workloads' dense layer (split-K)
  check_dense(1, 784, 1024, true, true, 0);
  check_dense(1024, 784, 1024, false, false, 4);
  check_dense(0, 5, 7, true, false, 0);          // empty batch: dw = 0, db = 0
  check_dense(4, 0, 3, true, false, 0);          // no input features: y = bias
  check_gemm_extras(33, 70, 500);
  check_gemm_extras(300, 260, 1100);
  // bad arguments come back as statuses, not crashes
  dlkern::GemmArgs bad;
  bad.M = -1;
  CHECK(dlkern::gemm_cuda(bad, nullptr, 0, nullptr) == Status::kInvalidArgument, "negative M");
  TEST_MAIN_END();
}
