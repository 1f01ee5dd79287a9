// Softmax forward and backward, AVX2 + FMA + OpenMP.
//
// Two layouts of the [outer, dim, inner] view:
//   inner == 1 (reduction over the contiguous last axis): one row at a time.
//     - rows up to kInCacheRow floats: three passes over the row while it sits in L1
//       (max; e = exp(x - max) stored to y and summed; y *= 1/sum). One exp per element.
//     - longer rows: an online pass computes (max, sum) together reading x once, rescaling the
//       running sum only when a block raises the running max; a second pass writes
//       y = exp(x - max) / sum. x is read twice and y written once instead of three reads and two
//       writes, which matters once a row no longer fits in cache.
//   inner > 1 (reduction over a strided axis): column blocks of kColBlock floats of the inner
//     axis; each pass walks the dim rows of the block, so every load is a full contiguous vector
//     and the block (dim * 128 bytes) stays in L2 between passes.
// Backward is memory-bound: one pass for dot = sum(dy * y), one for dx = (dy - dot) * y.
// Work is split over rows (or column blocks) with OpenMP; small problems stay on one thread.
#include <cmath>
#include <cstdint>

#include "../softmax.h"
#include "parallel.h"
#include "vec_avx2.h"

namespace dlkern {
namespace {

using namespace avx2;

constexpr int64_t kInCacheRow = 8192;  // floats: 32 KiB, inside the 48 KiB L1d of this machine
constexpr int64_t kColBlock = 32;      // floats of the inner axis per column block: 4 vectors
// Below this many elements per thread, a fork/join (~1 us with torch's warm OpenMP pool) costs
// more than it saves. Measured: 128x64 (8192 elements) is faster on 2 threads than on 1.
constexpr int64_t kMinWorkPerThread = 1 << 11;

inline __m256 load_tail(const float* p, __m256i mask, __m256 fill) {
  return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, mask), _mm256_castsi256_ps(mask));
}

// ---- inner == 1: rows -------------------------------------------------------------------

float row_max(const float* x, int64_t n) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
    m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
    m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
  if (i < n) m1 = _mm256_max_ps(m1, load_tail(x + i, first_lanes(n - i), ninf));
  return hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

// y = exp(x - mx); returns sum(y).
float row_exp_store_sum(const float* x, float* y, int64_t n, float mx) {
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 e0 = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    const __m256 e1 = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
    const __m256 e2 = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), vm));
    const __m256 e3 = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), vm));
    _mm256_storeu_ps(y + i, e0);
    _mm256_storeu_ps(y + i + 8, e1);
    _mm256_storeu_ps(y + i + 16, e2);
    _mm256_storeu_ps(y + i + 24, e3);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
    s2 = _mm256_add_ps(s2, e2);
    s3 = _mm256_add_ps(s3, e3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(y + i, e);
    s0 = _mm256_add_ps(s0, e);
  }
  if (i < n) {
    const __m256i mask = first_lanes(n - i);
    const __m256 e = _mm256_and_ps(exp_nonpos_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vm)),
                                   _mm256_castsi256_ps(mask));
    _mm256_maskstore_ps(y + i, mask, e);
    s1 = _mm256_add_ps(s1, e);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void row_scale(float* y, int64_t n, float a) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), va));
    _mm256_storeu_ps(y + i + 8, _mm256_mul_ps(_mm256_loadu_ps(y + i + 8), va));
    _mm256_storeu_ps(y + i + 16, _mm256_mul_ps(_mm256_loadu_ps(y + i + 16), va));
    _mm256_storeu_ps(y + i + 24, _mm256_mul_ps(_mm256_loadu_ps(y + i + 24), va));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), va));
  if (i < n) {
    const __m256i mask = first_lanes(n - i);
    _mm256_maskstore_ps(y + i, mask, _mm256_mul_ps(_mm256_maskload_ps(y + i, mask), va));
  }
}

// One read of x: per-lane running (max, sum). A block of 4 vectors first updates the running
// max; the running sum is rescaled by exp(old - new) only in lanes where the max rose (so one
// extra exp per block, not per element). Lanes still at -inf keep a zero sum: their scale is
// taken as 1 where old == new, avoiding (-inf) - (-inf).
void row_online_max_sum(const float* x, int64_t n, float* out_max, float* out_sum) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff());
  __m256 m = ninf, s = _mm256_setzero_ps();
  auto rescale = [&](__m256 mn) {
    const __m256 same = _mm256_cmp_ps(m, mn, _CMP_EQ_OQ);
    const __m256 f = _mm256_blendv_ps(exp_nonpos_ps(_mm256_sub_ps(m, mn)), _mm256_set1_ps(1.0f), same);
    s = _mm256_mul_ps(s, f);
    m = mn;
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    const __m256 bm = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3)), m);
    if (_mm256_movemask_ps(_mm256_cmp_ps(bm, m, _CMP_NEQ_UQ))) rescale(bm);
    __m256 t = _mm256_add_ps(exp_nonpos_ps(_mm256_sub_ps(v0, m)), exp_nonpos_ps(_mm256_sub_ps(v1, m)));
    t = _mm256_add_ps(t, _mm256_add_ps(exp_nonpos_ps(_mm256_sub_ps(v2, m)), exp_nonpos_ps(_mm256_sub_ps(v3, m))));
    s = _mm256_add_ps(s, t);
  }
  for (; i < n; i += 8) {
    const __m256i mask = first_lanes(n - i < 8 ? n - i : 8);
    const __m256 v = load_tail(x + i, mask, ninf);
    const __m256 bm = _mm256_max_ps(v, m);
    if (_mm256_movemask_ps(_mm256_cmp_ps(bm, m, _CMP_NEQ_UQ))) rescale(bm);
    s = _mm256_add_ps(
        s, _mm256_and_ps(exp_nonpos_ps(_mm256_sub_ps(v, m)), _mm256_castsi256_ps(mask)));
  }
  // Combine lanes: S = sum_l s_l * exp(m_l - M).
  alignas(32) float ml[8], sl[8];
  _mm256_store_ps(ml, m);
  _mm256_store_ps(sl, s);
  float M = ml[0];
  bool nan = false;
  for (int l = 0; l < 8; ++l) {
    nan |= std::isnan(ml[l]) || std::isnan(sl[l]);
    M = ml[l] > M ? ml[l] : M;
  }
  const __m256 f = exp_nonpos_ps(_mm256_sub_ps(m, _mm256_set1_ps(M)));
  const float S = hsum(_mm256_mul_ps(s, f));
  *out_max = nan ? __builtin_nanf("") : M;
  *out_sum = nan ? __builtin_nanf("") : S;
}

void row_exp_scale(const float* x, float* y, int64_t n, float mx, float a) {
  const __m256 vm = _mm256_set1_ps(mx), va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(exp_nonpos_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)), va));
  if (i < n) {
    const __m256i mask = first_lanes(n - i);
    _mm256_maskstore_ps(
        y + i, mask, _mm256_mul_ps(exp_nonpos_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vm)), va));
  }
}

void fwd_row(const float* x, float* y, int64_t n) {
  if (n <= kInCacheRow) {
    const float mx = row_max(x, n);
    const float sum = row_exp_store_sum(x, y, n, mx);
    row_scale(y, n, 1.0f / sum);
  } else {
    float mx, sum;
    row_online_max_sum(x, n, &mx, &sum);
    row_exp_scale(x, y, n, mx, 1.0f / sum);
  }
}

void bwd_row(const float* y, const float* dy, float* dx, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i + 8), _mm256_loadu_ps(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i + 16), _mm256_loadu_ps(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i + 24), _mm256_loadu_ps(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(y + i), s0);
  if (i < n) {
    const __m256i mask = first_lanes(n - i);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(dy + i, mask), _mm256_maskload_ps(y + i, mask), s1);
  }
  const __m256 dot = _mm256_set1_ps(hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))));
  i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(dy + i), dot),
                                           _mm256_loadu_ps(y + i)));
  if (i < n) {
    const __m256i mask = first_lanes(n - i);
    _mm256_maskstore_ps(dx + i, mask,
                        _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(dy + i, mask), dot),
                                      _mm256_maskload_ps(y + i, mask)));
  }
}

// ---- inner > 1: column blocks -----------------------------------------------------------

// A block of up to kColBlock columns: `nv` vectors, the last one possibly partial.
struct ColBlock {
  int nv;
  __m256i last_mask;
  bool last_partial;
  ColBlock(int64_t width) {
    nv = static_cast<int>((width + 7) / 8);
    const int64_t rem = width - 8 * (nv - 1);
    last_partial = rem != 8;
    last_mask = first_lanes(rem);
  }
  __m256 load(const float* p, int v, __m256 fill) const {
    if (v == nv - 1 && last_partial) return load_tail(p + 8 * v, last_mask, fill);
    return _mm256_loadu_ps(p + 8 * v);
  }
  void store(float* p, int v, __m256 val) const {
    if (v == nv - 1 && last_partial)
      _mm256_maskstore_ps(p + 8 * v, last_mask, val);
    else
      _mm256_storeu_ps(p + 8 * v, val);
  }
};

void fwd_cols(const float* x, float* y, int64_t D, int64_t I, int64_t width) {
  const ColBlock cb(width);
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff()), zero = _mm256_setzero_ps();
  __m256 m[4] = {ninf, ninf, ninf, ninf}, s[4] = {zero, zero, zero, zero};
  for (int64_t d = 0; d < D; ++d)
    for (int v = 0; v < cb.nv; ++v) m[v] = _mm256_max_ps(m[v], cb.load(x + d * I, v, ninf));
  for (int64_t d = 0; d < D; ++d)
    for (int v = 0; v < cb.nv; ++v) {
      const __m256 e = exp_nonpos_ps(_mm256_sub_ps(cb.load(x + d * I, v, zero), m[v]));
      cb.store(y + d * I, v, e);
      s[v] = _mm256_add_ps(s[v], e);
    }
  for (int v = 0; v < cb.nv; ++v) s[v] = _mm256_div_ps(_mm256_set1_ps(1.0f), s[v]);
  for (int64_t d = 0; d < D; ++d)
    for (int v = 0; v < cb.nv; ++v)
      cb.store(y + d * I, v, _mm256_mul_ps(cb.load(y + d * I, v, zero), s[v]));
}

void bwd_cols(const float* y, const float* dy, float* dx, int64_t D, int64_t I, int64_t width) {
  const ColBlock cb(width);
  const __m256 zero = _mm256_setzero_ps();
  __m256 dot[4] = {zero, zero, zero, zero};
  for (int64_t d = 0; d < D; ++d)
    for (int v = 0; v < cb.nv; ++v)
      dot[v] = _mm256_fmadd_ps(cb.load(dy + d * I, v, zero), cb.load(y + d * I, v, zero), dot[v]);
  for (int64_t d = 0; d < D; ++d)
    for (int v = 0; v < cb.nv; ++v)
      cb.store(dx + d * I, v,
               _mm256_mul_ps(_mm256_sub_ps(cb.load(dy + d * I, v, zero), dot[v]),
                             cb.load(y + d * I, v, zero)));
}

// Runs `row(offset, n)` over every row (inner == 1) or `cols(offset, width)` over every column
// block (inner > 1), split across threads.
template <typename RowFn, typename ColFn>
void for_each_line(const SoftmaxShape& s, int num_threads, const RowFn& row, const ColFn& cols) {
  const int64_t D = s.dim, I = s.inner;
  const int nt = threads_for(s.numel(), kMinWorkPerThread, num_threads);
  if (I == 1) {
    parallel_for(s.outer, nt, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) row(o * D, D);
    });
    return;
  }
  const int64_t nblk = (I + kColBlock - 1) / kColBlock;
  parallel_for(s.outer * nblk, nt, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / nblk, i0 = (t % nblk) * kColBlock;
      const int64_t w = I - i0 < kColBlock ? I - i0 : kColBlock;
      cols(o * D * I + i0, w);
    }
  });
}

}  // namespace

Status softmax_fwd_avx2(const SoftmaxShape& s, const float* x, float* y, int num_threads) {
  Status st = softmax_check_shape(s);
  if (st != Status::kOk) return st;
  if (s.numel() == 0) return Status::kOk;
  if (x == nullptr || y == nullptr) return Status::kInvalidArgument;
  const int64_t D = s.dim, I = s.inner;
  for_each_line(
      s, num_threads, [&](int64_t off, int64_t n) { fwd_row(x + off, y + off, n); },
      [&](int64_t off, int64_t w) { fwd_cols(x + off, y + off, D, I, w); });
  return Status::kOk;
}

Status softmax_bwd_avx2(const SoftmaxShape& s, const float* y, const float* dy, float* dx,
                        int num_threads) {
  Status st = softmax_check_shape(s);
  if (st != Status::kOk) return st;
  if (s.numel() == 0) return Status::kOk;
  if (y == nullptr || dy == nullptr || dx == nullptr) return Status::kInvalidArgument;
  const int64_t D = s.dim, I = s.inner;
  for_each_line(
      s, num_threads, [&](int64_t off, int64_t n) { bwd_row(y + off, dy + off, dx + off, n); },
      [&](int64_t off, int64_t w) { bwd_cols(y + off, dy + off, dx + off, D, I, w); });
  return Status::kOk;
}

}  // namespace dlkern

#ifdef DLKERN_AVX2_CLANG_PUSHED
#pragma clang attribute pop
#endif
