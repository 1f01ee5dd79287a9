// Reference batchnorm chunk kernels: scalar, accumulating in double.
#include "../batch_norm.h"

namespace dlkern {
namespace {

void stats_ref(const float* x, int64_t n, float k, double* s1, double* s2) {
  double a = 0, b = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - k;
    a += d;
    b += d * d;
  }
  *s1 = a;
  *s2 = b;
}

void normalize_ref(const float* x, int64_t n, float mean, float scale, float shift, float* y) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<float>((static_cast<double>(x[i]) - mean) * scale + shift);
}

void normalize_rows_ref(const float* x, int64_t S, int64_t rows, int64_t c0, int64_t C,
                        const float* mean, const float* scale, const float* shift, float* y) {
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1)
    normalize_ref(x + r * S, S, mean[c], scale[c], shift[c], y + r * S);
}

void bwd_reduce_ref(const float* x, const float* dy, int64_t n, float mean, double* sdy,
                    double* sdyx) {
  double a = 0, b = 0;
  for (int64_t i = 0; i < n; ++i) {
    a += dy[i];
    b += static_cast<double>(dy[i]) * (static_cast<double>(x[i]) - mean);
  }
  *sdy = a;
  *sdyx = b;
}

void bwd_dx_ref(const float* x, const float* dy, int64_t n, float mean, float a, float bb, float c,
                float* dx) {
  // bb == 0 (eval mode): dx does not depend on x, so a NaN in x must not reach dx
  for (int64_t i = 0; i < n; ++i)
    dx[i] = static_cast<float>(
        static_cast<double>(a) * dy[i] +
        (bb == 0.f ? 0.0 : static_cast<double>(bb) * (static_cast<double>(x[i]) - mean)) + c);
}

void bwd_reduce_rows_ref(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                         int64_t C, const float* mean, double* sdy, double* sdyx) {
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1)
    bwd_reduce_ref(x + r * S, dy + r * S, S, mean[c], sdy + r, sdyx + r);
}

void bwd_dx_rows_ref(const float* x, const float* dy, int64_t S, int64_t rows, int64_t c0,
                     int64_t C, const float* mean, const float* a, const float* bb, const float* cc,
                     float* dx) {
  for (int64_t r = 0, c = c0; r < rows; ++r, c = c + 1 == C ? 0 : c + 1)
    bwd_dx_ref(x + r * S, dy + r * S, S, mean[c], a[c], bb[c], cc[c], dx + r * S);
}


void cols_stats_ref(const float* x, int64_t rows, int64_t W, int64_t ld, const float* k,
                    double* s1, double* s2) {
  for (int64_t j = 0; j < W; ++j) s1[j] = s2[j] = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < W; ++j) {
      const double d = static_cast<double>(x[r * ld + j]) - k[j];
      s1[j] += d;
      s2[j] += d * d;
    }
}

void cols_normalize_ref(const float* x, int64_t rows, int64_t W, const float* mean,
                        const float* scale, const float* shift, float* y) {
  for (int64_t r = 0; r < rows; ++r)
    normalize_rows_ref(x + r * W, 1, W, 0, W, mean, scale, shift, y + r * W);
}

void cols_bwd_reduce_ref(const float* x, const float* dy, int64_t rows, int64_t W, int64_t ld,
                         const float* mean, double* sdy, double* sdyx) {
  for (int64_t j = 0; j < W; ++j) sdy[j] = sdyx[j] = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < W; ++j) {
      const double g = dy[r * ld + j];
      sdy[j] += g;
      sdyx[j] += g * (static_cast<double>(x[r * ld + j]) - mean[j]);
    }
}

void cols_bwd_dx_ref(const float* x, const float* dy, int64_t rows, int64_t W, const float* mean,
                     const float* a, const float* bb, const float* c, float* dx) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < W; ++j) {
      const int64_t i = r * W + j;
      bwd_dx_ref(x + i, dy + i, 1, mean[j], a[j], bb ? bb[j] : 0.f, c[j], dx + i);
    }
}

}  // namespace

const BatchNormKernels kBatchNormRef = {stats_ref,      normalize_ref,       normalize_rows_ref,
                                        bwd_reduce_ref, bwd_dx_ref,          bwd_reduce_rows_ref,
                                        bwd_dx_rows_ref, cols_stats_ref,     cols_normalize_ref,
                                        cols_bwd_reduce_ref, cols_bwd_dx_ref};

}  // namespace dlkern
