// The batchnorm driver: splits N x C x S into (n, c, chunk) work items so that few channels with
// a large spatial extent (the layers suite's BatchNorm2d(3) on 1x3x224x224) still use every
// thread, runs the ISA's chunk kernels in parallel, and combines each channel's chunk sums in a
// fixed order in double (results do not depend on the thread count). Spatial extents below
// kBatchNormNarrowS ((N, C) after a Linear, (N, C, L) with small L) take the narrow path
// instead: N rows of C*S contiguous columns, split into blocks of rows, vectors across columns.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../batch_norm.h"
#include "parallel.h"
#include "scratch.h"

namespace dlkern {
namespace {

// Chunks of at most 16K floats (64 KiB): small enough to balance 2 threads on one channel of
// a 224x224 image, large enough that per-item overhead stays negligible.
constexpr int64_t kChunk = 16384;

const BatchNormKernels& kernels() {
  const CpuIsa isa = cpu_isa_active();
  if (isa >= CpuIsa::kAvx512) return batch_norm_avx512();
  return isa >= CpuIsa::kAvx2 ? kBatchNormAvx2 : kBatchNormRef;
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

// Per-channel sums (a, b) of the items' sums (s1, s2), added in a fixed order.
void combine(const BatchNormShape& s, const Items& it, const std::vector<double>& s1,
             const std::vector<double>& s2, std::vector<double>& a, std::vector<double>& b) {
  a.assign(static_cast<size_t>(s.C), 0.0);
  b.assign(static_cast<size_t>(s.C), 0.0);
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t j = 0; j < it.per_row; ++j) {
        const int64_t i = (n * s.C + c) * it.per_row + j;
        a[c] += s1[i];
        b[c] += s2[i];
      }
}

// ---- the narrow path ---------------------------------------------------------------------------

bool narrow(const BatchNormShape& s) { return s.S < kBatchNormNarrowS; }

// The reductions' work items: up to 8 blocks of rows (at least 64 rows each) times chunks of 256
// columns. Each item writes its column sums, which are added up per channel over the row blocks
// in order; the blocks are a function of the shape alone, so results do not depend on the
// thread count.
struct NarrowItems {
  int64_t blocks, rows, chunks;
  explicit NarrowItems(const BatchNormShape& s)
      : blocks(std::clamp<int64_t>(s.N / 64, 1, 8)), rows((s.N + blocks - 1) / blocks),
        chunks((s.C * s.S + kBatchNormNarrowCols - 1) / kBatchNormNarrowCols) {}
};

// Per-channel sums (a, b) from reduce(first row, rows, first column, columns, column sums a, b)
// over the items in parallel; the W = C*S column sums of each row block are added up per channel
// in a fixed order.
// The calling thread's buffer for the narrow sums (2 x blocks x W doubles), reused: no page
// faults per call; one for the forward's and the backward's sums alike.
double* narrow_scratch(size_t doubles) {
  thread_local Scratch scratch;
  return reinterpret_cast<double*>(scratch.get(2 * doubles));
}

template <typename F>
void narrow_sums(const BatchNormShape& s, int threads, std::vector<double>& a,
                 std::vector<double>& b, const F& reduce) {
  const int64_t W = s.C * s.S;
  const NarrowItems it(s);
  double* pa = narrow_scratch(static_cast<size_t>(2 * it.blocks * W));
  double* pb = pa + it.blocks * W;
  parallel_for(it.blocks * it.chunks, pass_threads(s, threads), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t blk = i / it.chunks, j0 = (i % it.chunks) * kBatchNormNarrowCols;
      const int64_t r0 = blk * it.rows;
      if (r0 >= s.N) continue;  // a last block left empty by the rounding up
      reduce(r0, std::min(it.rows, s.N - r0), j0, std::min(kBatchNormNarrowCols, W - j0),
             pa + blk * W + j0, pb + blk * W + j0);
    }
  });
  a.assign(static_cast<size_t>(s.C), 0.0);
  b.assign(static_cast<size_t>(s.C), 0.0);
  for (int64_t blk = 0; blk < it.blocks && blk * it.rows < s.N; ++blk)
    for (int64_t c = 0, j = blk * W; c < s.C; ++c)
      for (int64_t t = 0; t < s.S; ++t, ++j) {
        a[c] += pa[j];
        b[c] += pb[j];
      }
}

// Per-channel constants for each of the C*S columns: the channels' own array when S = 1, else
// each value repeated S times (into `buf`).
const float* per_column(const BatchNormShape& s, const float* v, std::vector<float>& buf) {
  if (s.S == 1) return v;
  buf.resize(static_cast<size_t>(s.C * s.S));
  for (int64_t c = 0, j = 0; c < s.C; ++c)
    for (int64_t t = 0; t < s.S; ++t) buf[j++] = v[c];
  return buf.data();
}

// fn(first row, rows) over all N rows in parallel (the elementwise passes)
template <typename F>
void narrow_rows(const BatchNormShape& s, int threads, const F& fn) {
  parallel_for(s.N, pass_threads(s, threads), [&](int64_t b, int64_t e) { fn(b, e - b); });
}

// Per-channel sums of the training statistics (shifted by each channel's first value), by
// either path.
void stat_sums(const BatchNormKernels& k, const BatchNormShape& s, const float* x, int threads,
               std::vector<double>& a, std::vector<double>& q) {
  if (narrow(s)) {
    std::vector<float> first(static_cast<size_t>(s.C));
    for (int64_t c = 0; c < s.C; ++c) first[c] = x[c * s.S];
    std::vector<float> buf;
    const float* kc = per_column(s, first.data(), buf);
    const int64_t W = s.C * s.S;
    narrow_sums(s, threads, a, q,
                [&](int64_t r0, int64_t rows, int64_t j0, int64_t n, double* pa, double* pb) {
                  k.cols_stats(x + r0 * W + j0, rows, n, W, kc + j0, pa, pb);
                });
    return;
  }
  const Items it(s);
  std::vector<double> s1(static_cast<size_t>(it.count)), s2(static_cast<size_t>(it.count));
  for_items(s, it, threads, [&](int64_t i, int64_t row, int64_t c, int64_t off, int64_t len) {
    k.stats(x + row * s.S + off, len, x[c * s.S], &s1[i], &s2[i]);
  });
  combine(s, it, s1, s2, a, q);
}


// y = (x - mean[c]) * scale[c] + shift[c] over the whole input, by either path
void normalize(const BatchNormKernels& k, const BatchNormShape& s, const float* x,
               const float* mean, const float* scale, const float* shift, float* y, int threads) {
  if (!narrow(s)) return normalize_all(k, s, Items(s), x, mean, scale, shift, y, threads);
  std::vector<float> b1, b2, b3;
  const float *m = per_column(s, mean, b1), *sc = per_column(s, scale, b2),
              *sh = per_column(s, shift, b3);
  const int64_t W = s.C * s.S;
  narrow_rows(s, threads, [&](int64_t r0, int64_t rows) {
    k.cols_normalize(x + r0 * W, rows, W, m, sc, sh, y + r0 * W);
  });
}


// Per-channel sum(dy) and sum(dy * (x - mean)), by the path that fits the shape.
void bwd_sums(const BatchNormKernels& k, const BatchNormShape& s, const float* x, const float* dy,
              const float* mean, int threads, std::vector<double>& g, std::vector<double>& p) {
  if (narrow(s)) {
    std::vector<float> buf;
    const float* mc = per_column(s, mean, buf);
    const int64_t W = s.C * s.S;
    narrow_sums(s, threads, g, p,
                [&](int64_t r0, int64_t rows, int64_t j0, int64_t n, double* pa, double* pb) {
                  k.cols_bwd_reduce(x + r0 * W + j0, dy + r0 * W + j0, rows, n, W,
                                    mc + j0, pa, pb);
                });
    return;
  }
  const Items it(s);
  std::vector<double> sdy(static_cast<size_t>(it.count)), sdyx(static_cast<size_t>(it.count));
  if (it.per_row == 1)  // rows of at most one chunk: row ranges per thread
    parallel_for(s.N * s.C, pass_threads(s, threads), [&](int64_t b, int64_t e) {
      k.bwd_reduce_rows(x + b * s.S, dy + b * s.S, s.S, e - b, b % s.C, s.C, mean, &sdy[b],
                        &sdyx[b]);
    });
  else
    for_items(s, it, threads, [&](int64_t i, int64_t row, int64_t c, int64_t off, int64_t len) {
      k.bwd_reduce(x + row * s.S + off, dy + row * s.S + off, len, mean[c], &sdy[i], &sdyx[i]);
    });
  combine(s, it, sdy, sdyx, g, p);
}

// dx = a[c] * dy + bb[c] * (x - mean[c]) + cc[c] over the whole input, by either path (bb is
// all zeros unless training: then x is not read)
void bwd_dx(const BatchNormKernels& k, const BatchNormShape& s, const float* x, const float* dy,
            const float* mean, const float* a, const float* bb, const float* cc, bool training,
            float* dx, int threads) {
  if (narrow(s)) {
    std::vector<float> b1, b2, b3, b4;
    const float *m = per_column(s, mean, b1), *av = per_column(s, a, b2),
                *bv = training ? per_column(s, bb, b3) : nullptr, *cv = per_column(s, cc, b4);
    const int64_t W = s.C * s.S;
    narrow_rows(s, threads, [&](int64_t r0, int64_t rows) {
      k.cols_bwd_dx(x + r0 * W, dy + r0 * W, rows, W, m, av, bv, cv, dx + r0 * W);
    });
    return;
  }
  const Items it(s);
  if (it.per_row == 1)
    parallel_for(s.N * s.C, pass_threads(s, threads), [&](int64_t b, int64_t e) {
      k.bwd_dx_rows(x + b * s.S, dy + b * s.S, s.S, e - b, b % s.C, s.C, mean, a, bb, cc,
                    dx + b * s.S);
    });
  else
    for_items(s, it, threads, [&](int64_t, int64_t row, int64_t c, int64_t off, int64_t len) {
      k.bwd_dx(x + row * s.S + off, dy + row * s.S + off, len, mean[c], a[c], bb[c], cc[c],
               dx + row * s.S + off);
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
  std::vector<double> sa, sq;
  stat_sums(k, s, x, threads, sa, sq);
  std::vector<float> scale(static_cast<size_t>(s.C)), shift(static_cast<size_t>(s.C));
  for (int64_t c = 0; c < s.C; ++c) {
    const double shift_k = x[c * s.S];  // the sums are shifted by the channel's first value
    const double dm = sa[c] / count;
    const double var = std::max(sq[c] / count - dm * dm, 0.0);  // NaN stays NaN (arg 1 kept)
    const double mean = shift_k + dm;
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean[c] = static_cast<float>(mean);
    save_invstd[c] = static_cast<float>(invstd);
    scale[c] = static_cast<float>((w ? w[c] : 1.0) * invstd);
    shift[c] = b ? b[c] : 0.f;
    if (running_mean)
      running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * mean);
    if (running_var)
      running_var[c] = static_cast<float>((1 - momentum) * running_var[c] +
                                          momentum * var * count / (count - 1));
  }
  normalize(k, s, x, save_mean, scale.data(), shift.data(), y, threads);
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
  normalize(k, s, x, mean.data(), scale.data(), shift.data(), y, threads);
  return Status::kOk;
}

Status batch_norm_bwd_cpu(const BatchNormShape& s, const float* x, const float* dy, const float* w,
                          const float* mean, const float* invstd, bool training, float* dx,
                          float* dw, float* db, int threads) {
  if (validate(s) != Status::kOk) return Status::kInvalidArgument;
  const BatchNormKernels& k = kernels();
  const int64_t count = s.N * s.S;
  std::vector<double> g(static_cast<size_t>(s.C), 0.0), p(static_cast<size_t>(s.C), 0.0);
  if (dw || db || (dx && training)) bwd_sums(k, s, x, dy, mean, threads, g, p);
  std::vector<float> ka(static_cast<size_t>(s.C)), kb(static_cast<size_t>(s.C)),
      kc(static_cast<size_t>(s.C));
  for (int64_t c = 0; c < s.C; ++c) {
    const double is = invstd[c], wc = w ? w[c] : 1.0;
    if (dw) dw[c] = static_cast<float>(p[c] * is);
    if (db) db[c] = static_cast<float>(g[c]);
    // dx = w*is*(dy - mean(dy) - xhat*mean(dy*xhat)) = a*dy + b*(x - mean) + c (training)
    ka[c] = static_cast<float>(wc * is);
    kb[c] = training && count > 0 ? static_cast<float>(-wc * is * is * is * p[c] / count) : 0.f;
    kc[c] = training && count > 0 ? static_cast<float>(-wc * is * g[c] / count) : 0.f;
  }
  if (dx) bwd_dx(k, s, x, dy, mean, ka.data(), kb.data(), kc.data(), training, dx, threads);
  return Status::kOk;
}

}  // namespace dlkern
