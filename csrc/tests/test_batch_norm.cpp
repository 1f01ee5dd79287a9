// Batchnorm core: the AVX2 path against the double-accumulating reference path for training
// forward (outputs, saved statistics, running statistics), eval forward and both backward
// modes, over shapes with small and large spatial extents (the row-range and chunked drivers),
// 1 and 2 threads, and a large-mean input whose variance must survive the shifted sums.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../core/batch_norm.h"
#include "check.h"

using dlkern::BatchNormShape;
using dlkern::CpuIsa;
using dlkern::Status;

namespace {

struct Out {
  std::vector<float> y, mean, invstd, rm, rv, ye, dx, dw, db, dxe;
};

Out run(const BatchNormShape& s, const std::vector<float>& x, const std::vector<float>& g,
        const std::vector<float>& w, const std::vector<float>& b, int threads) {
  const size_t E = x.size(), C = static_cast<size_t>(s.C);
  Out o;
  o.y.resize(E), o.ye.resize(E), o.dx.resize(E), o.dxe.resize(E);
  o.mean.resize(C), o.invstd.resize(C), o.dw.resize(C), o.db.resize(C);
  o.rm.assign(C, 0.1f), o.rv.assign(C, 2.0f);
  CHECK(dlkern::batch_norm_fwd_train_cpu(s, x.data(), w.data(), b.data(), 1e-5, 0.1, o.rm.data(),
                                         o.rv.data(), o.y.data(), o.mean.data(), o.invstd.data(),
                                         threads) == Status::kOk, "train fwd failed");
  CHECK(dlkern::batch_norm_bwd_cpu(s, x.data(), g.data(), w.data(), o.mean.data(), o.invstd.data(),
                                   true, o.dx.data(), o.dw.data(), o.db.data(), threads) == Status::kOk,
        "bwd failed");
  std::vector<float> em(C), ei(C);
  CHECK(dlkern::batch_norm_fwd_eval_cpu(s, x.data(), w.data(), b.data(), o.rm.data(), o.rv.data(),
                                        1e-5, o.ye.data(), em.data(), ei.data(), threads) == Status::kOk,
        "eval fwd failed");
  CHECK(dlkern::batch_norm_bwd_cpu(s, x.data(), g.data(), w.data(), em.data(), ei.data(), false,
                                   o.dxe.data(), nullptr, nullptr, threads) == Status::kOk,
        "eval bwd failed");
  return o;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1.0, err = 0;  // the data are O(1): errors of near-zero means count absolutely
  for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, std::fabs((double)b[i]));
  for (size_t i = 0; i < a.size(); ++i) err = std::max(err, std::fabs((double)a[i] - b[i]));
  return err / scale;
}

void check_shape(int64_t N, int64_t C, int64_t S, float offset, std::mt19937& rng) {
  const BatchNormShape s{N, C, S};
  std::normal_distribution<float> d;
  std::vector<float> x(static_cast<size_t>(N * C * S)), g(x.size()), w(C), b(C);
  for (auto& v : x) v = d(rng) + offset;
  for (auto& v : g) v = d(rng);
  for (auto& v : w) v = 0.5f + std::fabs(d(rng));
  for (auto& v : b) v = d(rng);
  dlkern::cpu_isa_select(CpuIsa::kReference);
  const Out ref = run(s, x, g, w, b, 1);
  for (int p = 0; p < 4; ++p) {
    const CpuIsa isa = p < 2 ? CpuIsa::kAvx2 : CpuIsa::kAvx512;
    const int t = 1 + p % 2;
    if (isa > dlkern::cpu_isa_best()) continue;  // main() says when avx512 is skipped
    dlkern::cpu_isa_select(isa);
    const Out got = run(s, x, g, w, b, t);
    const struct { const char* what; const std::vector<float>&a, &b; double tol; } cmp[] = {
        {"y", got.y, ref.y, 2e-5}, {"mean", got.mean, ref.mean, 1e-6},
        {"invstd", got.invstd, ref.invstd, 1e-5}, {"running_mean", got.rm, ref.rm, 1e-6},
        {"running_var", got.rv, ref.rv, 1e-5}, {"eval y", got.ye, ref.ye, 2e-5},
        {"dx", got.dx, ref.dx, 5e-5}, {"dw", got.dw, ref.dw, 5e-5}, {"db", got.db, ref.db, 5e-5},
        {"eval dx", got.dxe, ref.dxe, 2e-5}};
    for (const auto& c : cmp) {
      const double e = max_rel(c.a, c.b);
      CHECK(e <= c.tol, "N=%lld C=%lld S=%lld offset %g %s threads %d: %s rel err %g > %g",
            (long long)N, (long long)C, (long long)S, offset,
            isa == CpuIsa::kAvx512 ? "avx512" : "avx2", t, c.what, e, c.tol);
    }
  }
  if (offset != 0.f) {  // the variance of N(offset, 1) data must come out near 1
    for (int64_t c = 0; c < C; ++c) {
      const double var = 1.0 / (ref.invstd[c] * (double)ref.invstd[c]) - 1e-5;
      CHECK(std::fabs(var - 1.0) < 0.2, "large mean: channel %lld variance %g", (long long)c, var);
    }
  }
}

}  // namespace

int main() {
  if (dlkern::cpu_isa_best() < CpuIsa::kAvx2) {
    std::printf("no AVX2/FMA on this CPU: only the reference path exists\n");
    return 77;
  }
  if (dlkern::cpu_isa_best() < CpuIsa::kAvx512)
    std::printf("no AVX-512 on this CPU: the avx512 path's narrow kernels are not tested\n");
  std::mt19937 rng(7);
  // small S (row ranges, masked tails), S at and around the vector width, large S (chunks)
  for (int64_t S : {1, 7, 8, 9, 49, 196})
    for (int64_t C : {1, 3, 17}) check_shape(3, C, S, 0.f, rng);
  // the narrow path (S < 8): column blocks of 16 and their masked tails, row counts off the
  // four-row steps, several row blocks (64 rows or more each) and 256-column chunks at once,
  // large means
  for (int64_t C : {1, 8, 9, 16, 33, 100}) check_shape(37, C, 1, 0.f, rng);
  check_shape(1000, 7, 3, 0.f, rng);
  check_shape(1000, 300, 1, 0.f, rng);
  check_shape(301, 130, 3, 1e4f, rng);
  check_shape(517, 5, 1, 1e4f, rng);
  check_shape(2, 300, 1, 0.f, rng);
  check_shape(1, 3, 224 * 224, 0.f, rng);      // two chunks per row... and more
  check_shape(2, 2, 16384 + 5, 0.f, rng);      // one full chunk plus a tail
  check_shape(4, 3, 1000, 1e4f, rng);          // large mean
  check_shape(1, 2, 50000, 1e4f, rng);
  // invalid: one value per channel in training, negative sizes
  float v = 1, y = 0, m = 0, is = 0;
  CHECK(dlkern::batch_norm_fwd_train_cpu({1, 1, 1}, &v, nullptr, nullptr, 1e-5, 0.1, nullptr,
                                         nullptr, &y, &m, &is, 1) == Status::kInvalidArgument,
        "one value per channel accepted");
  CHECK(dlkern::batch_norm_fwd_eval_cpu({-1, 1, 1}, &v, nullptr, nullptr, &v, &v, 1e-5, &y,
                                        nullptr, nullptr, 1) == Status::kInvalidArgument,
        "negative N accepted");
  dlkern::cpu_isa_select(dlkern::cpu_isa_best());
  TEST_MAIN_END();
}
