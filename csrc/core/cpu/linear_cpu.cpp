// The dense layer's three products expressed as GEMMs (gemm.h); the ISA is chosen inside.
#include "../linear.h"

namespace dlkern {

Status linear_fwd_cpu(const LinearShape& s, MatrixRef x, MatrixRef w, const float* bias, float* y,
                      int threads) {
  if (s.batch < 0 || s.in < 0 || s.out < 0) return Status::kInvalidArgument;
  GemmArgs g;
  g.M = s.batch;
  g.N = s.out;
  g.K = s.in;
  g.A = x;
  g.B = {w.data, w.cs, w.rs};  // B[k][n] = w[n][k]
  g.C = y;
  g.ldc = s.out;
  g.bias = bias;
  return gemm_cpu(g, threads);
}

Status linear_bwd_cpu(const LinearShape& s, MatrixRef x, MatrixRef w, const float* dy, float* dx,
                      float* dw, float* db, int threads) {
  if (s.batch < 0 || s.in < 0 || s.out < 0) return Status::kInvalidArgument;
  if (dx != nullptr) {  // dx[b, i] = sum_o dy[b, o] * w[o, i]
    GemmArgs g;
    g.M = s.batch;
    g.N = s.in;
    g.K = s.out;
    g.A = {dy, s.out, 1};
    g.B = w;
    g.C = dx;
    g.ldc = s.in;
    const Status st = gemm_cpu(g, threads);
    if (st != Status::kOk) return st;
  }
  if (dw != nullptr) {  // dw[o, i] = sum_b dy[b, o] * x[b, i]
    GemmArgs g;
    g.M = s.out;
    g.N = s.in;
    g.K = s.batch;
    g.A = {dy, 1, s.out};
    g.B = x;
    g.C = dw;
    g.ldc = s.in;
    const Status st = gemm_cpu(g, threads);
    if (st != Status::kOk) return st;
  }
  if (db != nullptr) return colsum_cpu(s.batch, s.out, dy, s.out, db, false, threads);
  return Status::kOk;
}

}  // namespace dlkern
