// The index arithmetic of the CUDA kernels, checked on the CPU (no GPU needed, so CI runs it):
// conv2d's loaders and epilogues (csrc/core/cuda/conv2d_loaders.cuh) are called exactly as
// gemm_tile_kernel calls them -- units of 4 along the loader's axis, k running in BK-deep slices
// past each split-K slice's end -- to materialise every implicit GEMM operand. Out-of-range
// rows and k must read 0, and every in-range element must be written exactly once. The GEMMs are
// then done in double here and stored through the epilogues, and the results must match the
// reference convolution (ref/conv2d_ref.cpp) for forward, backward data and backward weight.
// Also checked: FastDiv (batch_norm.cu's channel and row division) and the split-K plan.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "../core/conv2d.h"
#include "../core/cuda/conv2d_loaders.cuh"
#include "../core/cuda/fastdiv.cuh"
#include "check.h"

using namespace dlkern;
using namespace dlkern::cuda_conv;

namespace {

constexpr int64_t kBK = 16;  // the deeper of the two tile configurations

// Operand (rows x K) of batch b, read the way the tile kernel reads it, with split-K slices of
// `kslice` (a multiple of kBK).
template <class L>
std::vector<double> materialise(const L& l, int64_t b, int64_t rows, int64_t K, int64_t kslice,
                                const char* what) {
  std::vector<double> out(rows * K, NAN);
  const int64_t rows_pad = (rows + 3) / 4 * 4 + 4;  // one unit of rows past the end
  for (int64_t k_begin = 0; k_begin < std::max<int64_t>(K, 1); k_begin += kslice) {
    const int64_t k_end = std::min(K, k_begin + kslice);
    const int64_t k_stop = k_begin + (k_end - k_begin + kBK - 1) / kBK * kBK;  // whole slices
    for (int64_t row0 = 0; row0 < rows_pad; row0 += L::kAlongK ? 1 : 4) {
      const auto st = l.prepare(b, row0);
      for (int64_t k = k_begin; k < k_stop; k += L::kAlongK ? 4 : 1) {
        float v[4];
        l.load(st, row0, k, k_end, v);
        for (int j = 0; j < 4; ++j) {
          const int64_t r = L::kAlongK ? row0 : row0 + j, kk = L::kAlongK ? k + j : k;
          if (r < rows && kk < k_end) {
            CHECK(std::isnan(out[r * K + kk]), "%s: element (%lld, %lld) loaded twice", what,
                  (long long)r, (long long)kk);
            out[r * K + kk] = v[j];
          } else {
            CHECK(v[j] == 0.0f, "%s: (%lld, %lld) outside the operand (or its slice) read %g, "
                  "not 0", what, (long long)r, (long long)kk, v[j]);
          }
        }
      }
    }
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (std::isnan(out[i])) {
      CHECK(false, "%s: element %zu never loaded", what, i);
      break;
    }
  return out;
}

// C[b](m, n) = sum_k A(m, k) B(n, k) through the epilogue, for every batch entry.
template <class LA, class LB, class Epi>
void gemm_through(const LA& a, const LB& b, const Epi& epi, int64_t batch, int64_t M, int64_t N,
                  int64_t K, int64_t kslice, const char* what) {
  for (int64_t bb = 0; bb < batch; ++bb) {
    const auto A = materialise(a, bb, M, K, kslice, what);
    const auto B = materialise(b, bb, N, K, kslice, what);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += A[m * K + k] * B[n * K + k];
        epi.store(bb, 0, m, n, static_cast<float>(acc));
      }
  }
}

double max_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double scale = 1.0, err = 0;
  for (float v : ref) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  for (size_t i = 0; i < a.size(); ++i) err = std::max(err, std::fabs(double(a[i]) - ref[i]));
  return err / scale;
}

int g_shapes = 0;

void check_conv(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                int64_t stride, int64_t pad, int64_t dil, int64_t groups, std::mt19937& rng) {
  Conv2dShape s;
  s.N = N, s.C = C, s.H = H, s.W = W, s.K = K, s.R = R, s.S = S, s.groups = groups;
  s.stride_h = stride, s.stride_w = stride + (R > 1 ? 1 : 0);  // unequal strides too
  s.pad_h = pad, s.pad_w = pad, s.dil_h = dil, s.dil_w = dil;
  s.P = (H + 2 * pad - dil * (R - 1) - 1) / s.stride_h + 1;
  s.Q = (W + 2 * pad - dil * (S - 1) - 1) / s.stride_w + 1;
  if (s.P <= 0 || s.Q <= 0) return;
  ++g_shapes;
  const int64_t Cg = C / groups;
  std::normal_distribution<float> d;
  std::vector<float> x(N * C * H * W), w(K * Cg * R * S), b(K), dy(N * K * s.P * s.Q);
  for (auto* v : {&x, &w, &b, &dy})
    for (auto& e : *v) e = d(rng);
  std::vector<float> ry(dy.size()), rdx(x.size()), rdw(w.size()), rdb(K);
  CHECK(conv2d_fwd_ref(s, x.data(), w.data(), b.data(), ry.data(), 1) == Status::kOk, "ref");
  CHECK(conv2d_bwd_ref(s, x.data(), w.data(), dy.data(), rdx.data(), rdw.data(), rdb.data(), 1) ==
            Status::kOk, "ref");
  CHECK(fits32(s), "shape should fit 32-bit indexing");
  char what[160];
  std::snprintf(what, sizeof(what), "N%lld C%lld %lldx%lld K%lld %lldx%lld s%lld p%lld d%lld g%lld",
                (long long)N, (long long)C, (long long)H, (long long)W, (long long)K, (long long)R,
                (long long)S, (long long)stride, (long long)pad, (long long)dil, (long long)groups);
  for (int64_t kslice : {kBK, 4 * kBK, int64_t(1) << 40}) {  // split-K slices, and none
    std::vector<float> y(dy.size(), 7.f), dx(x.size(), 7.f), dwv(w.size(), 7.f);
    const Dims fd = fwd_dims(s), xd = dx_dims(s), wd = dw_dims(s);
    if (plain_1x1(s)) {
      const Fwd1x1 f = fwd_1x1(s, x.data(), w.data(), b.data(), y.data());
      gemm_through(f.a, f.b, f.epi, fd.batch, fd.M, fd.N, fd.K, kslice, what);
      const Dx1x1 g = dx_1x1(s, w.data(), dy.data(), dx.data());
      gemm_through(g.a, g.b, g.epi, xd.batch, xd.M, xd.N, xd.K, kslice, what);
    } else {
      const FwdIm2col f = fwd_im2col(s, x.data(), w.data(), b.data(), y.data());
      gemm_through(f.a, f.b, f.epi, fd.batch, fd.M, fd.N, fd.K, kslice, what);
      const DxGather g = dx_gather(s, w.data(), dy.data(), dx.data());
      gemm_through(g.a, g.b, g.epi, xd.batch, xd.M, xd.N, xd.K, kslice, what);
    }
    const Dw h = dw_implicit(s, x.data(), dy.data(), dwv.data());
    gemm_through(h.a, h.b, h.epi, wd.batch, wd.M, wd.N, wd.K, kslice, what);
    CHECK(max_err(y, ry) < 1e-6, "%s: forward differs from the reference (%.3g)", what, max_err(y, ry));
    CHECK(max_err(dx, rdx) < 1e-6, "%s: backward data differs (%.3g)", what, max_err(dx, rdx));
    CHECK(max_err(dwv, rdw) < 1e-6, "%s: backward weight differs (%.3g)", what, max_err(dwv, rdw));
  }
}

void check_fastdiv() {
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> num(0, 2147483647u), den(1, 2147483647u);
  int bad = 0;
  for (int i = 0; i < 3000; ++i) {
    const uint32_t dv = i < 300 ? static_cast<uint32_t>(i + 1) : den(rng);
    const FastDiv f(dv);
    for (uint32_t n : {0u, 1u, dv - 1, dv, dv + 1, 2147483646u, 2147483647u, num(rng), num(rng)})
      if (n <= 2147483647u && f.div(n) != n / dv) ++bad;
  }
  CHECK(bad == 0, "FastDiv: %d wrong quotients", bad);
}

void check_plan() {
  cuda_gemm::Plan p;
  // 4096^3: enough 128x128 tiles for any GPU, no split
  CHECK(cuda_gemm::plan(1, 4096, 4096, 4096, size_t(1) << 40, &p) && p.big && p.splits == 1,
        "4096^3 plan");
  // a dense layer at batch 256 splits K when given room, never without
  CHECK(cuda_gemm::plan(1, 256, 1024, 784, size_t(1) << 40, &p) && p.splits > 1 &&
            p.k_per_split % 16 == 0 && (p.splits - 1) * p.k_per_split < 784,
        "784->1024 plan: splits %d x %lld", p.splits, (long long)p.k_per_split);
  CHECK(cuda_gemm::plan(1, 256, 1024, 784, 0, &p) && p.splits == 1, "no workspace, no split");
  CHECK(cuda_gemm::plan(1, 256, 1024, 784, 100, &p) && p.splits == 1, "too little workspace");
  CHECK(cuda_gemm::plan(1, 5, 5, 0, size_t(1) << 40, &p) && p.splits == 1, "K = 0");
  CHECK(!cuda_gemm::plan(70000, 5, 5, 5, 0, &p), "a grid past 65535 in z is refused");
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  for (int64_t k : {1, 2, 3, 5})
    for (int64_t stride : {1, 2, 3})
      for (int64_t pad : {0, 1, 2})
        for (int64_t dil : {1, 2}) check_conv(2, 3, 9, 11, 5, k, k, stride, pad, dil, 1, rng);
  check_conv(2, 4, 7, 9, 6, 3, 3, 1, 1, 1, 2, rng);    // groups
  check_conv(2, 5, 8, 6, 10, 3, 3, 1, 1, 1, 5, rng);   // depthwise, multiplier 2
  check_conv(3, 6, 5, 7, 9, 1, 1, 1, 0, 1, 1, rng);    // the 1x1 GEMM path
  check_conv(2, 8, 4, 4, 12, 1, 1, 1, 0, 1, 1, rng);   // 1x1 with 128-bit-able strides
  check_conv(1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, rng);
  check_conv(1, 2, 1, 1, 3, 3, 3, 1, 1, 1, 1, rng);
  check_conv(2, 17, 6, 5, 19, 3, 2, 1, 1, 1, 1, rng);  // K*R*S and C*R*S not multiples of 4
  std::printf("%d conv shapes checked\n", g_shapes);
  CHECK(g_shapes > 60, "expected over 60 shapes, ran %d", g_shapes);
  check_fastdiv();
  check_plan();
  TEST_MAIN_END();
}
