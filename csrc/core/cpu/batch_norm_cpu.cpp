// The batchnorm driver: splits N x C x S into (n, c, chunk) work items so that few channels with
// a large spatial extent (the layers suite's BatchNorm2d(3) on 1x3x224x224) still use every
// thread, runs the ISA's chunk kernels in parallel, and combines each channel's chunk sums in a
// fixed order in double (results do not depend on the thread count).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../batch_norm.h"
#include "parallel.h"

namespace dlkern {
namespace {

// Chunks of at most 16K floats (64 KiB): small enough to balance 2 threads on one channel of
// a 224x224 image, large enough that per-item overhead stays negligible.
constexpr int64_t kChunk = 16384;

const BatchNormKernels& kernels() {
  return cpu_isa_active() >= CpuIsa::kAvx2 ? kBatchNormAvx2 : kBatchNormRef;
}

struct Items {
  int64_t per_row, count;
  Items(const BatchNormShape& s) : per_row(s.S > 0 ? (s.S + kChunk - 1) / kChunk : 0),
                                   count(s.N * s.C * per_row) {}
};

Status validate(const BatchNormShape& s) {
  if (s.N < 0 || s.C < 0 || s.S < 0) return Status::kInvalidArgument;
  return Status::kOk;
}

// Runs body(item, row, channel, offset, length) over every item, in parallel. Positions advance
// incrementally inside a thread's range (one division per range, not per item): with small
// spatial extents (8x512x7x7 has 4096 rows of 49) per-item index arithmetic was a visible
// share of the runtime.
// Threads for a pass over the whole input: one per 16K elements, up to `threads`.
int pass_threads(const BatchNormShape& s, int threads) {
  return threads_for(s.N * s.C * s.S, 16384, threads);
}

template <typename F>
void for_items(const BatchNormShape& s, const Items& it, int threads, const F& body) {
  parallel_for(it.count, pass_threads(s, threads), [&](int64_t b, int64_t e) {
    int64_t row = b / it.per_row, j = b % it.per_row, c = row % s.C;
    for (int64_t i = b; i < e; ++i) {
      const int64_t off = j * kChunk;
      body(i, row, c, off, std::min(kChunk, s.S - off));
      if (++j == it.per_row) {
        j = 0;
        ++row;
        if (++c == s.C) c = 0;
      }
    }
  });
}

// y = (x - mean[c]) * scale[c] + shift[c] over the whole input
void normalize_all(const BatchNormKernels& k, const BatchNormShape& s, const Items& it,
                   const float* x, const float* mean, const float* scale, const float* shift,
                   float* y, int threads) {
  if (it.per_row == 1) {  // rows of at most one chunk: whole row ranges per thread
    parallel_for(s.N * s.C, pass_threads(s, threads), [&](int64_t b, int64_t e) {
      k.normalize_rows(x + b * s.S, s.S, e - b, b % s.C, s.C, mean, scale, shift, y + b * s.S);
    });
    return;
  }
  for_items(s, it, threads, [&](int64_t, int64_t row, int64_t c, int64_t off, int64_t len) {
    k.normalize(x + row * s.S + off, len, mean[c], scale[c], shift[c], y + row * s.S + off);
  });
}

}  // namespace

Status batch_norm_fwd_train_cpu(const BatchNormShape& s, const float* x, const float* w,
                                const float* b, double eps, double momentum, float* running_mean,
                                float* running_var, float* y, float* save_mean, float* save_invstd,
                                int threads) {
  if (validate(s) != Status::kOk || !(eps >= 0)) return Status::kInvalidArgument;
  const int64_t count = s.N * s.S;
  if (s.C == 0) return Status::kOk;
  if (count == 1) return Status::kInvalidArgument;  // the bindings raise torch's message first
  if (count == 0) {  // an empty batch: nothing to normalise, running statistics untouched (torch)
    for (int64_t c = 0; c < s.C; ++c) {
      save_mean[c] = 0.f;
      save_invstd[c] = static_cast<float>(1.0 / std::sqrt(eps));
    }
    return Status::kOk;
  }
  const BatchNormKernels& k = kernels();
  const Items it(s);
  std::vector<double> s1(static_cast<size_t>(it.count)), s2(static_cast<size_t>(it.count));
  // shift of channel c: its first value (x[0, c, 0])
  for_items(s, it, threads, [&](int64_t i, int64_t row, int64_t c, int64_t off, int64_t len) {
    k.stats(x + row * s.S + off, len, x[c * s.S], &s1[i], &s2[i]);
  });
  std::vector<float> scale(static_cast<size_t>(s.C)), shift(static_cast<size_t>(s.C));
  for (int64_t c = 0; c < s.C; ++c) {
    double a = 0, q = 0;
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t j = 0; j < it.per_row; ++j) {
        const int64_t i = (n * s.C + c) * it.per_row + j;
        a += s1[i];
        q += s2[i];
      }
    const double shift_k = x[c * s.S];
    const double dm = a / count;
    const double var = std::max(q / count - dm * dm, 0.0);  // NaN stays NaN (std::max keeps arg 1)
    const double mean = shift_k + dm;
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean[c] = static_cast<float>(mean);
    save_invstd[c] = static_cast<float>(invstd);
    scale[c] = static_cast<float>((w ? w[c] : 1.0) * invstd);
    shift[c] = b ? b[c] : 0.f;
    if (running_mean) running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * mean);
    if (running_var)
      running_var[c] = static_cast<float>((1 - momentum) * running_var[c] +
                                          momentum * var * count / (count - 1));
  }
  normalize_all(k, s, it, x, save_mean, scale.data(), shift.data(), y, threads);
  return Status::kOk;
}

Status batch_norm_fwd_eval_cpu(const BatchNormShape& s, const float* x, const float* w,
                               const float* b, const float* running_mean, const float* running_var,
                               double eps, float* y, float* save_mean, float* save_invstd,
                               int threads) {
  if (validate(s) != Status::kOk || running_mean == nullptr || running_var == nullptr)
    return Status::kInvalidArgument;
  const BatchNormKernels& k = kernels();
  std::vector<float> mean(static_cast<size_t>(s.C)), scale(static_cast<size_t>(s.C)),
      shift(static_cast<size_t>(s.C));
  for (int64_t c = 0; c < s.C; ++c) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps);
    mean[c] = running_mean[c];
    scale[c] = static_cast<float>((w ? w[c] : 1.0) * invstd);
    shift[c] = b ? b[c] : 0.f;
    if (save_mean) save_mean[c] = running_mean[c];
    if (save_invstd) save_invstd[c] = static_cast<float>(invstd);
  }
  normalize_all(k, s, Items(s), x, mean.data(), scale.data(), shift.data(), y, threads);
  return Status::kOk;
}

Status batch_norm_bwd_cpu(const BatchNormShape& s, const float* x, const float* dy, const float* w,
                          const float* mean, const float* invstd, bool training, float* dx,
                          float* dw, float* db, int threads) {
  if (validate(s) != Status::kOk) return Status::kInvalidArgument;
  const BatchNormKernels& k = kernels();
  const Items it(s);
  const int64_t count = s.N * s.S;
  std::vector<double> sdy(static_cast<size_t>(it.count)), sdyx(static_cast<size_t>(it.count));
  const bool need_sums = dw || db || (dx && training);
  const bool by_rows = it.per_row == 1;  // rows of at most one chunk: row ranges per thread
  const int nt = pass_threads(s, threads);
  if (need_sums && by_rows)
    parallel_for(s.N * s.C, nt, [&](int64_t b, int64_t e) {
      k.bwd_reduce_rows(x + b * s.S, dy + b * s.S, s.S, e - b, b % s.C, s.C, mean, &sdy[b],
                        &sdyx[b]);
    });
  else if (need_sums)
    for_items(s, it, threads, [&](int64_t i, int64_t row, int64_t c, int64_t off, int64_t len) {
      k.bwd_reduce(x + row * s.S + off, dy + row * s.S + off, len, mean[c], &sdy[i], &sdyx[i]);
    });
  std::vector<float> ka(static_cast<size_t>(s.C)), kb(static_cast<size_t>(s.C)),
      kc(static_cast<size_t>(s.C));
  for (int64_t c = 0; c < s.C; ++c) {
    double g = 0, p = 0;
    if (need_sums)
      for (int64_t n = 0; n < s.N; ++n)
        for (int64_t j = 0; j < it.per_row; ++j) {
          const int64_t i = (n * s.C + c) * it.per_row + j;
          g += sdy[i];
          p += sdyx[i];
        }
    const double is = invstd[c], wc = w ? w[c] : 1.0;
    if (dw) dw[c] = static_cast<float>(p * is);
    if (db) db[c] = static_cast<float>(g);
    // dx = w*is*(dy - mean(dy) - xhat*mean(dy*xhat)) = a*dy + b*(x - mean) + c (training)
    ka[c] = static_cast<float>(wc * is);
    kb[c] = training && count > 0 ? static_cast<float>(-wc * is * is * is * p / count) : 0.f;
    kc[c] = training && count > 0 ? static_cast<float>(-wc * is * g / count) : 0.f;
  }
  if (dx && by_rows)
    parallel_for(s.N * s.C, nt, [&](int64_t b, int64_t e) {
      k.bwd_dx_rows(x + b * s.S, dy + b * s.S, s.S, e - b, b % s.C, s.C, mean, ka.data(),
                    kb.data(), kc.data(), dx + b * s.S);
    });
  else if (dx)
    for_items(s, it, threads, [&](int64_t, int64_t row, int64_t c, int64_t off, int64_t len) {
      k.bwd_dx(x + row * s.S + off, dy + row * s.S + off, len, mean[c], ka[c], kb[c], kc[c],
               dx + row * s.S + off);
    });
  return Status::kOk;
}

}  // namespace dlkern
