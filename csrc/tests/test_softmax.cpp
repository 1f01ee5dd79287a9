// Core softmax: every CPU path against the double-accumulating reference, on shapes below, at
// and above the vector width, the 32-float unroll, the column block and the in-cache row limit;
// torch's NaN/inf semantics; thread-count independence; exp accuracy in ulps.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../core/softmax.h"
#include "check.h"
// Last: it switches the rest of this file to AVX2 code generation (only run when supported).
#include "../core/cpu/vec_avx2.h"

using dlkern::CpuIsa;
using dlkern::SoftmaxShape;
using dlkern::Status;
using dlkern_test::close;
using dlkern_test::Err;

namespace {

std::vector<float> hard_input(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = nd(gen);
    const int p = pick(gen);
    if (p == 0) x *= 30.f;           // outliers: exp arguments far below the max
    if (p == 1) x = -std::numeric_limits<float>::infinity();
    if (p == 2) x += 1e4f;           // large magnitude: x - max must be exact-ish
  }
  return v;
}

using Fwd = Status (*)(const SoftmaxShape&, const float*, float*, int);
using Bwd = Status (*)(const SoftmaxShape&, const float*, const float*, float*, int);

// The AVX2 path and, where the CPU has it, the AVX-512 one, each against the reference.
void compare_paths(const SoftmaxShape& s, uint32_t seed) {
  struct Path { Fwd fwd; Bwd bwd; };
  const Path avx2 = {dlkern::softmax_fwd_avx2, dlkern::softmax_bwd_avx2};
  const Path avx512 = {dlkern::softmax_fwd_avx512, dlkern::softmax_bwd_avx512};
  const bool has512 = dlkern::cpu_isa_best() >= CpuIsa::kAvx512;
  for (const Path& p : {avx2, avx512}) {
  if (p.fwd == avx512.fwd && !has512) continue;
  const int64_t n = s.numel();
  auto x = hard_input(n, seed), dy = hard_input(n, seed + 1);
  for (auto& g : dy)
    if (!std::isfinite(g)) g = 1.f;
  std::vector<float> yr(n), ya(n), ya1(n), dxr(n), dxa(n), dxa1(n);
  CHECK(dlkern::softmax_fwd_ref(s, x.data(), yr.data(), 2) == Status::kOk, "ref fwd");
  CHECK(p.fwd(s, x.data(), ya.data(), 2) == Status::kOk, "fwd");
  CHECK(p.fwd(s, x.data(), ya1.data(), 1) == Status::kOk, "fwd 1t");
  Err e;
  CHECK(close(ya, yr, 1e-37, 4e-6, &e), "fwd outer=%lld dim=%lld inner=%lld: max abs %g rel %g",
        (long long)s.outer, (long long)s.dim, (long long)s.inner, e.max_abs, e.max_rel);
  CHECK(std::memcmp(ya.data(), ya1.data(), n * sizeof(float)) == 0,
        "fwd differs between 1 and 2 threads (dim=%lld)", (long long)s.dim);
  // Backward from the same y so only the backward kernel is compared.
  CHECK(dlkern::softmax_bwd_ref(s, yr.data(), dy.data(), dxr.data(), 2) == Status::kOk, "ref bwd");
  CHECK(p.bwd(s, yr.data(), dy.data(), dxa.data(), 2) == Status::kOk, "bwd");
  CHECK(p.bwd(s, yr.data(), dy.data(), dxa1.data(), 1) == Status::kOk, "bwd 1t");
  // dx = y * (dy - dot): cancellation in (dy - dot) makes relative error unbounded near zero,
  // so the absolute bound scales with the line's magnitude (|dy| ~ 3, y <= 1).
  Err eb;
  CHECK(close(dxa, dxr, 2e-5 * 3.0, 1e-4, &eb), "bwd dim=%lld inner=%lld: max abs %g rel %g",
        (long long)s.dim, (long long)s.inner, eb.max_abs, eb.max_rel);
  CHECK(std::memcmp(dxa.data(), dxa1.data(), n * sizeof(float)) == 0, "bwd threads differ");
  }
}

void special_values() {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  // rows of 11: lengths cross the vector width so the tail path sees the special value too
  struct Case {
    std::vector<float> row;
    bool all_nan;
  } cases[] = {
      {{1, 2, 3, nan, 4, 5, 6, 7, 8, 9, 10}, true},
      {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, nan}, true},
      {{1, 2, inf, 4, 5, 6, 7, 8, 9, 10, 11}, true},
      {{-inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf}, true},
      {{-inf, 0, -inf, 0, -inf, 0, -inf, 0, -inf, 0, -inf}, false},
      {{5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, false},
  };
  for (auto isa : {CpuIsa::kReference, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (dlkern::cpu_isa_select(isa) != Status::kOk) continue;
    for (const auto& c : cases) {
      // a tail alone, the 16- and 64-wide loops of the avx512 path, a short row (3 passes), a
      // long one (the online pass)
      for (int64_t reps : {int64_t{1}, int64_t{3}, int64_t{9}, int64_t{100}, int64_t{1000}}) {
        SoftmaxShape s{1, 11 * reps, 1};
        std::vector<float> x, y(s.numel());
        for (int64_t r = 0; r < reps; ++r) x.insert(x.end(), c.row.begin(), c.row.end());
        CHECK(dlkern::softmax_fwd_cpu(s, x.data(), y.data(), 2) == Status::kOk, "fwd");
        for (int64_t i = 0; i < s.numel(); ++i) {
          if (c.all_nan) {
            CHECK(std::isnan(y[i]), "%s: expected NaN at %lld, got %g", dlkern::cpu_isa_name(isa),
                  (long long)i, y[i]);
          } else if (x[i] == -inf) {
            CHECK(y[i] == 0.f, "%s: exp(-inf) must be 0, got %g", dlkern::cpu_isa_name(isa), y[i]);
          } else {
            int64_t live = 0;
            for (float xv : x) live += xv != -inf;
            const double want = 1.0 / live;
            CHECK(std::fabs(y[i] - want) <= 1e-6 * want, "%s: got %g want %g",
                  dlkern::cpu_isa_name(isa), y[i], want);
          }
        }
      }
    }
  }
  dlkern::cpu_isa_select(dlkern::cpu_isa_best());
}

void bad_arguments() {
  float v = 0;
  CHECK(dlkern::softmax_fwd_cpu({1, -1, 1}, &v, &v, 1) == Status::kInvalidArgument, "neg dim");
  CHECK(dlkern::softmax_fwd_cpu({int64_t{1} << 40, int64_t{1} << 40, 1}, &v, &v, 1) ==
            Status::kInvalidArgument,
        "overflowing numel");
  CHECK(dlkern::softmax_fwd_cpu({0, 5, 3}, nullptr, nullptr, 1) == Status::kOk, "empty");
  CpuIsa isa;
  CHECK(dlkern::cpu_isa_parse("sse9", &isa) == Status::kInvalidArgument, "unknown isa name");
  CHECK(dlkern::cpu_isa_parse("reference", &isa) == Status::kOk && isa == CpuIsa::kReference,
        "reference always available");
}

// ulp distance between a float result and the exact value (in double).
double ulp_error(float got, double exact) {
  const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(exact)) - 23);
  return std::fabs(got - exact) / ulp;
}

// exp_ps over [-87.33, 88] on a fine grid plus the edges: at most 1 ulp where the
// result is normal; 0 below FLT_MIN; inf above the documented domain; NaN in, NaN out.
void exp_accuracy() {
  double worst = 0, worst_x = 0, worst_np = 0, worst_np_x = 0;
  alignas(32) float in[8], out[8], out_np[8];
  auto run = [&](float x0) {
    for (int l = 0; l < 8; ++l) in[l] = x0 + l * 1e-3f;
    _mm256_store_ps(out, dlkern::avx2::exp_ps(_mm256_load_ps(in)));
    _mm256_store_ps(out_np, dlkern::avx2::exp_nonpos_ps(_mm256_load_ps(in)));
    for (int l = 0; l < 8; ++l) {
      const double ex = std::exp(static_cast<double>(in[l]));
      if (ex < 1.1754943508222875e-38 || in[l] > 88.0f) continue;
      const double e = ulp_error(out[l], ex);
      if (e > worst) worst = e, worst_x = in[l];
      if (in[l] > 0) continue;
      const double enp = ulp_error(out_np[l], ex);
      if (enp > worst_np) worst_np = enp, worst_np_x = in[l];
    }
  };
  for (float x = -87.33f; x < 88.f; x += 0.0371f) run(x);
  for (float x = -1.f; x < 1.f; x += 1.3e-4f) run(x);  // where softmax spends its time
  std::printf("exp_ps: max error %.3f ulp at x=%.7g; exp_nonpos_ps: %.3f ulp at x=%.7g\n", worst,
              worst_x, worst_np, worst_np_x);
  CHECK(worst <= 1.0, "exp_ps max error %.3f ulp at x=%.7g", worst, worst_x);
  CHECK(worst_np <= 1.0, "exp_nonpos_ps max error %.3f ulp at x=%.7g", worst_np, worst_np_x);
  {
    const float ninf = -std::numeric_limits<float>::infinity();
    const float edge[8] = {ninf, -100.f, -87.34f, std::nanf(""), 0.f, -0.f, -1e-30f, -87.f};
    std::memcpy(in, edge, sizeof(edge));
    _mm256_store_ps(out_np, dlkern::avx2::exp_nonpos_ps(_mm256_load_ps(in)));
    CHECK(out_np[0] == 0.f && out_np[1] == 0.f && out_np[2] == 0.f, "nonpos underflow: %g %g %g",
          out_np[0], out_np[1], out_np[2]);
    CHECK(std::isnan(out_np[3]), "nonpos NaN must propagate, got %g", out_np[3]);
    CHECK(out_np[4] == 1.f && out_np[5] == 1.f && out_np[6] == 1.f, "nonpos exp(0) must be 1");
    CHECK(out_np[7] > 0.f, "nonpos exp(-87) must be normal, got %g", out_np[7]);
  }
  const float inf = std::numeric_limits<float>::infinity();
  const float edge[8] = {-inf, -100.f, -87.34f, 88.5f, inf, std::nanf(""), 0.f, -0.f};
  std::memcpy(in, edge, sizeof(edge));
  _mm256_store_ps(out, dlkern::avx2::exp_ps(_mm256_load_ps(in)));
  CHECK(out[0] == 0.f && out[1] == 0.f && out[2] == 0.f, "underflow must flush to 0: %g %g %g",
        out[0], out[1], out[2]);
  CHECK(out[3] == inf && out[4] == inf, "overflow must give inf: %g %g", out[3], out[4]);
  CHECK(std::isnan(out[5]), "NaN must propagate, got %g", out[5]);
  CHECK(out[6] == 1.f && out[7] == 1.f, "exp(0) must be exactly 1: %g %g", out[6], out[7]);
}

}  // namespace

int main() {
  bad_arguments();
  special_values();
  if (dlkern::cpu_isa_best() < CpuIsa::kAvx2) {
    std::printf("no AVX2+FMA on this CPU: only the reference path was tested\n");
    TEST_MAIN_END();
  }
  exp_accuracy();
  uint32_t seed = 1;
  for (int64_t dim : {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 8191, 8192, 8193, 20011})
    compare_paths({3, dim, 1}, seed++);
  for (int64_t inner : {2, 3, 7, 8, 9, 31, 32, 33, 40, 100})
    for (int64_t dim : {1, 5, 64})
      compare_paths({2, dim, inner}, seed++);
  compare_paths({257, 129, 1}, seed++);     // enough rows to split across threads
  compare_paths({1, 1024, 512}, seed++);    // dim=0 of 1024x512
  TEST_MAIN_END();
}
