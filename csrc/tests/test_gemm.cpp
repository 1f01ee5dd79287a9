// The GEMM core against the double-accumulating reference, on the AVX2 path and (where the CPU
// has it) the AVX-512 one: every version (packed, dot, direct, axpy, outer), sizes below, at and
// above the micro-tiles (6x16; 8x48) and the cache blocks (KC=320, MC=144; KC=768, MC=192), all
// four transpose combinations plus sliced (strided) operands, bias, accumulate, 1 to 3 threads
// (results bit-identical across thread counts).
// With --bench [n]: GFLOP/s of a square GEMM on each path (not part of ctest).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../core/linear.h"
#include "../core/gemm.h"
#include "check.h"

using dlkern::GemmArgs;
using dlkern::MatrixRef;
using dlkern::Status;

namespace {

using GemmFn = Status (*)(const GemmArgs&, int);
struct Path {
  const char* name;
  GemmFn fn;
};
Path g_path = {"avx2", dlkern::gemm_avx2};

std::vector<Path> paths() {
  std::vector<Path> out = {{"avx2", dlkern::gemm_avx2}};
  if (dlkern::cpu_isa_best() >= dlkern::CpuIsa::kAvx512) out.push_back({"avx512", dlkern::gemm_avx512});
  return out;
}

struct Mat {
  std::vector<float> buf;
  MatrixRef ref;
};

// rows x cols view with layout 0: row-major, 1: column-major (transposed), 2: row-major with
// every other column (sliced)
Mat make(int64_t rows, int64_t cols, int layout, std::mt19937& rng) {
  std::normal_distribution<float> d;
  Mat m;
  const int64_t mult = layout == 2 ? 2 : 1;
  m.buf.resize(static_cast<size_t>(std::max<int64_t>(1, rows * cols * mult)));
  for (auto& v : m.buf) v = d(rng);
  if (layout == 0) m.ref = {m.buf.data(), cols, 1};
  if (layout == 1) m.ref = {m.buf.data(), 1, rows};
  if (layout == 2) m.ref = {m.buf.data(), cols * 2, 2};
  return m;
}

int check_case(int64_t M, int64_t N, int64_t K, int la, int lb, bool bias, bool acc, int threads,
               std::mt19937& rng) {
  Mat A = make(M, K, la, rng), B = make(K, N, lb, rng);
  std::vector<float> bv(static_cast<size_t>(std::max<int64_t>(N, 1)));
  for (auto& v : bv) v = std::normal_distribution<float>()(rng);
  std::vector<float> c0(static_cast<size_t>(std::max<int64_t>(1, M * (N + 3))));
  for (auto& v : c0) v = std::normal_distribution<float>()(rng);
  std::vector<float> got = c0, want = c0;
  GemmArgs g;
  g.M = M, g.N = N, g.K = K, g.A = A.ref, g.B = B.ref, g.ldc = N + 3;
  g.bias = bias ? bv.data() : nullptr;
  g.accumulate = acc;
  g.C = want.data();
  CHECK(dlkern::gemm_ref(g, 1) == Status::kOk, "ref failed");
  g.C = got.data();
  CHECK(g_path.fn(g, threads) == Status::kOk, "%s failed", g_path.name);
  // error bound: float32 summation of K products, relative to sum |a||b|
  double worst = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N + 3; ++j) {
      const size_t at = static_cast<size_t>(i * (N + 3) + j);
      if (j >= N) {  // outside the N columns: must be untouched
        if (got[at] != c0[at]) worst = 1e30;
        continue;
      }
      double mag = std::fabs(c0[at]) + (bias ? std::fabs(bv[j]) : 0) + 1e-3;
      for (int64_t k = 0; k < K; ++k)
        mag += std::fabs(A.ref.data[i * A.ref.rs + k * A.ref.cs]) *
               std::fabs(B.ref.data[k * B.ref.rs + j * B.ref.cs]);
      worst = std::max(worst, std::fabs(got[at] - want[at]) / mag);
    }
  const double bound = 4 * 6e-8 * std::sqrt(static_cast<double>(K) + 1) + 1e-7;
  CHECK(worst <= bound, "%s: M=%lld N=%lld K=%lld layouts %d/%d bias %d acc %d threads %d: rel err %g > %g",
        g_path.name, (long long)M, (long long)N, (long long)K, la, lb, (int)bias, (int)acc, threads, worst,
        bound);
  return 0;
}

void same_across_threads(int64_t M, int64_t N, int64_t K, int la, int lb, std::mt19937& rng) {
  Mat A = make(M, K, la, rng), B = make(K, N, lb, rng);
  std::vector<float> c1(static_cast<size_t>(M * N)), cn(c1.size());
  GemmArgs g;
  g.M = M, g.N = N, g.K = K, g.A = A.ref, g.B = B.ref, g.ldc = N;
  g.C = c1.data();
  CHECK(g_path.fn(g, 1) == Status::kOk, "%s failed", g_path.name);
  for (int t = 2; t <= 3; ++t) {
    g.C = cn.data();
    CHECK(g_path.fn(g, t) == Status::kOk, "%s failed", g_path.name);
    CHECK(std::memcmp(c1.data(), cn.data(), c1.size() * sizeof(float)) == 0,
          "%s: M=%lld N=%lld K=%lld layouts %d/%d: %d threads differ from 1", g_path.name,
          (long long)M, (long long)N, (long long)K, la, lb, t);
  }
}

// gemm_avx512's row-offset B and wrapped C (the convolution over a padded input): B's row k at
// x + rows[k], C's columns in rows of c_row kept and c_skip dropped, against a double reference,
// with the row bias or not, on 1-3 threads (bit-identical); the same B with a plain C; and the
// other paths' refusals.
void check_wrapped(int64_t M, int64_t K, int64_t N, int64_t c_row, int64_t c_skip, bool row_bias,
                   std::mt19937& rng) {
  std::normal_distribution<float> d;
  const int64_t L = c_row + c_skip, stride = N + 21;  // rows of B apart, 16 readable past N
  std::vector<float> x(static_cast<size_t>(K * stride + 16)), a(static_cast<size_t>(M * K)),
      rb(static_cast<size_t>(M));
  for (auto& v : x) v = d(rng);
  for (auto& v : a) v = d(rng);
  for (auto& v : rb) v = d(rng);
  std::vector<int64_t> rows(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) rows[k] = ((k * 7) % K) * stride + k % 5;  // any order
  GemmArgs g;
  g.M = M, g.N = N, g.K = K, g.A = {a.data(), K, 1}, g.B = {x.data(), 0, 1};
  g.b_rows = rows.data(), g.c_row = c_row, g.c_skip = c_skip;
  g.row_bias = row_bias ? rb.data() : nullptr;
  const int64_t width = dlkern::gemm_c_width(g);
  g.ldc = width + 5;
  std::vector<float> c[3];
  for (int t = 1; t <= 3; ++t) {
    c[t - 1].assign(static_cast<size_t>(M * g.ldc), 7.f);
    g.C = c[t - 1].data();
    CHECK(dlkern::gemm_avx512(g, t) == Status::kOk, "wrapped: avx512 failed");
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < g.ldc; ++j) {
      const float got = c[0][m * g.ldc + j];
      if (j >= width) {
        CHECK(got == 7.f, "wrapped: column %lld of row %lld past the kept ones was written",
              (long long)j, (long long)m);
        continue;
      }
      const int64_t n = j / c_row * L + j % c_row;  // the virtual column stored at j
      double want = row_bias ? rb[m] : 0.0, mag = std::fabs(want) + 1e-3;
      for (int64_t k = 0; k < K; ++k) {
        want += static_cast<double>(a[m * K + k]) * x[rows[k] + n];
        mag += std::fabs(a[m * K + k] * x[rows[k] + n]);
      }
      CHECK(std::fabs(got - want) <= 4 * 6e-8 * std::sqrt(K + 1.0) * mag + 1e-6,
            "wrapped M=%lld K=%lld N=%lld c_row=%lld c_skip=%lld: C[%lld][%lld] %g, want %g",
            (long long)M, (long long)K, (long long)N, (long long)c_row, (long long)c_skip,
            (long long)m, (long long)j, got, want);
    }
  CHECK(c[0] == c[1] && c[0] == c[2], "wrapped: threads differ");
  CHECK(dlkern::gemm_avx2(g, 1) == Status::kUnsupported, "avx2 took a row-offset B");
  CHECK(dlkern::gemm_ref(g, 1) == Status::kUnsupported, "ref took a row-offset B");
  // without the wrap, every column n lands at C[m][n] (conv2d_avx512.cpp's phase-split GEMM)
  GemmArgs h = g;
  h.c_row = 0, h.c_skip = 0, h.ldc = N;
  std::vector<float> plain(static_cast<size_t>(M * N), 7.f);
  h.C = plain.data();
  CHECK(dlkern::gemm_avx512(h, 2) == Status::kOk, "a row-offset B without a wrapped C failed");
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double want = row_bias ? rb[m] : 0.0, mag = std::fabs(want) + 1e-3;
      for (int64_t k = 0; k < K; ++k) {
        want += static_cast<double>(a[m * K + k]) * x[rows[k] + n];
        mag += std::fabs(a[m * K + k] * x[rows[k] + n]);
      }
      CHECK(std::fabs(plain[m * N + n] - want) <= 4 * 6e-8 * std::sqrt(K + 1.0) * mag + 1e-6,
            "row-offset B M=%lld K=%lld N=%lld: C[%lld][%lld] %g, want %g", (long long)M,
            (long long)K, (long long)N, (long long)m, (long long)n, plain[m * N + n], want);
    }
  h = g;
  h.c_skip = 15 - c_row;
  if (h.c_skip >= 0) CHECK(dlkern::gemm_avx512(h, 1) == Status::kInvalidArgument, "wrap < 16");
  h = g;
  h.row_bias = nullptr, h.bias = rb.data();
  CHECK(dlkern::gemm_avx512(h, 1) == Status::kInvalidArgument, "column bias on a wrapped C");
}

void bench(int64_t n, int threads, const Path& path) {
  std::mt19937 rng(1);
  Mat A = make(n, n, 0, rng), B = make(n, n, 0, rng);
  std::vector<float> C(static_cast<size_t>(n * n));
  GemmArgs g;
  g.M = g.N = g.K = n, g.A = A.ref, g.B = B.ref, g.C = C.data(), g.ldc = n;
  path.fn(g, threads);
  std::vector<double> ts;
  for (int r = 0; r < 7; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    path.fn(g, threads);
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  std::printf("%s gemm %lld^3, %d threads: %.2f ms, %.1f GFLOP/s\n", path.name, (long long)n, threads,
              ts[3] * 1e3, 2.0 * n * n * n / ts[3] * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    const int64_t n = argc > 2 ? std::atoll(argv[2]) : 2048;
    for (const Path& p : paths())
      for (int t = 1; t <= 2; ++t) bench(n, t, p);
    return 0;
  }
  if (dlkern::cpu_isa_best() < dlkern::CpuIsa::kAvx2) {
    std::printf("no AVX2/FMA on this CPU: only the reference path exists\n");
    return 77;
  }
  if (dlkern::cpu_isa_best() >= dlkern::CpuIsa::kAvx512) {
    std::mt19937 rng(7);
    // partial last wrap row, c_skip 0, wraps shorter than a 48-column tile, two K blocks,
    // rows past MC, several column blocks (N > 3072)
    check_wrapped(13, 27, 230, 23, 2, true, rng);
    check_wrapped(8, 9, 100, 20, 0, false, rng);
    check_wrapped(20, 400, 150, 14, 2, true, rng);
    check_wrapped(200, 50, 300, 40, 4, false, rng);
    check_wrapped(17, 30, 3300, 56, 2, true, rng);
  } else {
    std::printf("avx512: skipped (this CPU lacks it)\n");
  }
  for (const Path& path : paths()) {
  g_path = path;
  std::mt19937 rng(42);
  const int64_t sizes[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100};
  // every layout pair on small/odd sizes
  for (int64_t M : sizes)
    for (int64_t N : {1, 7, 16, 17, 33})
      for (int64_t K : {1, 3, 8, 9, 31})
        for (int la = 0; la < 3; ++la)
          for (int lb = 0; lb < 3; ++lb) check_case(M, N, K, la, lb, (M + N) % 2 == 0, false, 2, rng);
  // across the cache blocks and thread splits, with bias and accumulate
  const int64_t big[][3] = {{145, 33, 257}, {7, 3073, 5}, {150, 40, 600}, {13, 1000, 300},
                            {64, 100, 1000}, {49, 17, 1025}, {300, 70, 20}, {1, 1024, 784},
                            {4, 1024, 784}, {16, 784, 1024}, {17, 31, 2049}, {385, 97, 193},
                            {23, 3100, 40}, {64, 3136, 576}, {1024, 784, 1}, {300, 1000, 4}};
  for (auto& s : big)
    for (int la = 0; la < 2; ++la)
      for (int lb = 0; lb < 2; ++lb)
        for (int t = 1; t <= 3; ++t) {
          check_case(s[0], s[1], s[2], la, lb, true, false, t, rng);
          check_case(s[0], s[1], s[2], la, lb, false, true, t, rng);
        }
  // the same product on 1, 2 and 3 threads, bit for bit, in every layout (the sliced one too)
  for (auto& s : big)
    for (int la = 0; la < 3; ++la)
      for (int lb = 0; lb < 3; ++lb) same_across_threads(s[0], s[1], s[2], la, lb, rng);
  // empty and degenerate sizes
  check_case(0, 5, 5, 0, 0, false, false, 2, rng);
  check_case(5, 0, 5, 0, 0, false, false, 2, rng);
  check_case(5, 5, 0, 0, 0, true, false, 2, rng);
  check_case(5, 5, 0, 0, 0, false, true, 2, rng);
  // bias together with accumulate is refused, as are negative sizes
  {
    float c = 0, a = 1, b = 1;
    GemmArgs g;
    g.M = g.N = g.K = 1, g.A = {&a, 1, 1}, g.B = {&b, 1, 1}, g.C = &c, g.ldc = 1;
    g.bias = &a, g.accumulate = true;
    CHECK(path.fn(g, 1) == Status::kInvalidArgument, "bias+accumulate accepted");
    g.bias = nullptr, g.accumulate = false, g.M = -1;
    CHECK(path.fn(g, 1) == Status::kInvalidArgument, "negative M accepted");
  }
  }
  TEST_MAIN_END();
}
