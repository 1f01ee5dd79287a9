// Reference GEMM and column sum: accumulate in double, any strides. The ground truth for the
// AVX2 kernels' tests and the fallback on CPUs without AVX2/FMA.
#include <algorithm>

#include "../cpu/parallel.h"
#include "../gemm.h"

namespace dlkern {

int64_t gemm_c_width(const GemmArgs& g) {
  if (g.c_row == 0) return g.N;
  const int64_t L = g.c_row + g.c_skip;  // a wrapped C keeps c_row of every L columns
  return g.N / L * g.c_row + std::min(g.N % L, g.c_row);
}

Status gemm_validate(const GemmArgs& g) {
  if (g.M < 0 || g.N < 0 || g.K < 0) return Status::kInvalidArgument;
  // one of bias, row_bias and accumulate at most
  if ((g.bias != nullptr) + (g.row_bias != nullptr) + g.accumulate > 1)
    return Status::kInvalidArgument;
  if (g.M == 0 || g.N == 0) return Status::kOk;
  // a wrapped C: rows of 16 columns or more, and no column bias (which column would it follow?)
  if (g.c_row < 0 || g.c_skip < 0 || (g.c_row > 0 && (g.c_row + g.c_skip < 16 || g.bias)))
    return Status::kInvalidArgument;
  if (g.C == nullptr || g.ldc < gemm_c_width(g)) return Status::kInvalidArgument;
  if (g.K > 0 && (g.A.data == nullptr || (g.B.data == nullptr && g.pack_b.fn == nullptr)))
    return Status::kInvalidArgument;
  return Status::kOk;
}

Status gemm_ref(const GemmArgs& g, int threads) {
  const Status s = gemm_validate(g);
  if (s != Status::kOk || g.M == 0 || g.N == 0) return s;
  // implicit and row-offset B are packed-path features
  if (g.pack_b.fn != nullptr || g.b_rows != nullptr || g.c_row > 0) return Status::kUnsupported;
  parallel_for(g.M, threads_for(g.M * g.N * (g.K + 1), 1 << 16, threads), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      for (int64_t j = 0; j < g.N; ++j) {
        double acc = g.bias ? g.bias[j] : g.row_bias ? g.row_bias[i] : 0.0;
        for (int64_t k = 0; k < g.K; ++k)
          acc += static_cast<double>(g.A.data[i * g.A.rs + k * g.A.cs]) *
                 g.B.data[k * g.B.rs + j * g.B.cs];
        float* c = g.C + i * g.ldc + j;
        *c = static_cast<float>(g.accumulate ? *c + acc : acc);
      }
    }
  });
  return Status::kOk;
}

Status colsum_ref(int64_t M, int64_t N, const float* x, int64_t ld, float* out, bool accumulate,
                  int threads) {
  if (M < 0 || N < 0 || (N > 0 && out == nullptr) || (M > 0 && N > 0 && (x == nullptr || ld < N)))
    return Status::kInvalidArgument;
  parallel_for(N, threads_for(M * N, 1 << 16, threads), [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      double acc = 0;
      for (int64_t i = 0; i < M; ++i) acc += x[i * ld + j];
      out[j] = static_cast<float>(accumulate ? out[j] + acc : acc);
    }
  });
  return Status::kOk;
}

}  // namespace dlkern
