// Depthwise conv2d (groups == C, any channel multiplier K / C) written once over a vector type V:
// the avx2 path instantiates it with vec_avx2.h's F32x8 (conv2d_avx2.cpp), the avx512 path with
// vec_avx512.h's F32x16 (conv2d_avx512.cpp). Include it after <algorithm>, <cstring>, <vector>
// and the vector header (whose target pragma then applies to these functions).
//
// Each input plane is first copied into a zero-padded, phase-split buffer: for strides sh x sw it
// holds up to sh * sw phase planes of Hm x Wm floats, phase (a, b) holding rows i*sh + a and
// columns m*sw + b of the padded input (the phases no tap reads are left out). Output position (p, q) then reads tap (r, t) at
//   phase ((r*dh) % sh, (t*dw) % sw), row p + (r*dh) / sh, column q + (t*dw) / sw,
// so over the positions n = p*Wm + q (rows Wm wide, Wm - Q of each discarded) every tap of any
// stride and dilation is one contiguous run at a fixed offset off[r*S + t] from n:
//   forward        y[n] = bias + sum_taps w[tap] * buf[n + off[tap]], Block vectors of n held in
//                  registers over all taps (one load and one FMA per tap and vector);
//   backward data  at stride 1 with one output channel per input, the forward over dy with the
//                  kernel flipped; otherwise the adjoint, dbuf[n + off[tap]] += w[tap] * dy[n]
//                  over the valid columns, then dbuf read back into dx's plane;
//   backward weight dw[tap] = sum_n dy[n] * buf[n + off[tap]] over the valid columns, blocks of
//                  output channels by taps in registers (grouped_weight, which grouped
//                  convolutions share), each image's sums added in double in image order (so
//                  the result does not depend on the threads).
// Columns past Q are masked in both backward passes: a discarded column may read a real input
// value, and 0 * inf there would turn a gradient into NaN.
#pragma once

namespace dlkern {
namespace {
namespace dw {

constexpr int kBlock = 8;  // vectors of output positions per forward register block

struct Geom {
  int64_t H, W, P, Q, ph, pw, sh, sw;
  int64_t Hm, Wm, phase;  // phase-plane rows, columns, floats
  // Only the phases some tap reads are kept (a 1x1 kernel at stride 2 reads one of four):
  // phase (a, b) is plane slot[a*sw + b] of the buffer, -1 when no tap reads it.
  std::vector<int64_t> slot;
  int64_t slots;
  int64_t span;           // floats in the buffer: the planes and a zeroed slack read past them
  std::vector<int64_t> off;  // tap r*S + t at n + off
};

inline Geom geom(const Conv2dShape& s, int lanes) {
  Geom g;
  g.H = s.H, g.W = s.W, g.P = s.P, g.Q = s.Q, g.ph = s.pad_h, g.pw = s.pad_w;
  g.sh = s.stride_h, g.sw = s.stride_w;
  g.Hm = s.P + (s.R - 1) * s.dil_h / s.stride_h;
  g.Wm = s.Q + (s.S - 1) * s.dil_w / s.stride_w;
  g.phase = g.Hm * g.Wm;
  g.slot.assign(static_cast<size_t>(g.sh * g.sw), -1);
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t t = 0; t < s.S; ++t)
      g.slot[(r * s.dil_h % g.sh) * g.sw + t * s.dil_w % g.sw] = 0;
  g.slots = 0;
  for (auto& v : g.slot)
    if (v == 0) v = g.slots++;
  // the forward computes the discarded columns too: its last vector reads up to Wm - Q past
  // the last plane, plus its round-up to a vector
  g.span = g.slots * g.phase + (g.Wm - g.Q) + kBlock * lanes;
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t t = 0; t < s.S; ++t) {
      const int64_t dr = r * s.dil_h, dt = t * s.dil_w;
      g.off.push_back(g.slot[(dr % g.sh) * g.sw + dt % g.sw] * g.phase + dr / g.sh * g.Wm +
                      dt / g.sw);
    }
  return g;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Asks for the n floats at p to be brought into L2, a cache line at a time.
inline void prefetch_plane(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 2);
}

// The columns m in [0, Wm) of phase b whose input column m*sw + b - pw lies in [0, W).
inline void valid_columns(const Geom& g, int64_t b, int64_t* lo, int64_t* hi) {
  const int64_t iw0 = b - g.pw;
  int64_t a = iw0 >= 0 ? 0 : (-iw0 + g.sw - 1) / g.sw;
  int64_t e = g.W - 1 - iw0 < 0 ? 0 : (g.W - 1 - iw0) / g.sw + 1;
  a = std::min(a, g.Wm);
  *lo = a;
  *hi = std::max(a, std::min(e, g.Wm));
}

// d[0 .. n) = s[0 .. n), a vector at a time (rows here are short: a library call per row cost
// as much as the copy), reading and writing nothing past n.
template <class V>
inline void copy(const float* s, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + V::L <= n; j += V::L) V::store(d + j, V::load(s + j));
  if (j < n) V::store_first(d + j, V::load_first(s + j, n - j), n - j);
}

// d[0 .. n) = 0, the same way.
template <class V>
inline void zero(float* d, int64_t n) {
  int64_t j = 0;
  for (; j + V::L <= n; j += V::L) V::store(d + j, V::zero());
  if (j < n) V::store_first(d + j, V::zero(), n - j);
}

// d[j] = s[j * sw] for j < n.
template <class V>
void copy_strided(const float* s, int64_t sw, int64_t n, float* d) {
  if (sw == 1) {
    copy<V>(s, d, n);
  } else if (sw == 2) {
    for (int64_t j = 0; j < n; j += V::L) V::evens(s + 2 * j, d + j, std::min<int64_t>(V::L, n - j));
  } else {
    for (int64_t j = 0; j < n; ++j) d[j] = s[j * sw];
  }
}

// The phase-split, zero-padded copy of the H x W plane x: the phase in slot j at
// buf + j * phase_stride (Hm x Wm floats).
template <class V>
void split_phases(const Geom& g, const float* x, float* buf, int64_t phase_stride) {
  // the padding rows, then the input's rows in order, each into its phases one after the other
  // (a phase at a time walked the input sh * sw times, each with a stride: slower from DRAM)
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      if (g.slot[a * g.sw + b] < 0) continue;
      float* plane = buf + g.slot[a * g.sw + b] * phase_stride;
      for (int64_t i = 0; i < g.Hm; ++i) {
        const int64_t ih = i * g.sh + a - g.ph;
        if (ih < 0 || ih >= g.H) zero<V>(plane + i * g.Wm, g.Wm);
      }
    }
  // (a negative padding, the crop of a transposed convolution, drops the first -ph rows)
  for (int64_t ih = std::max<int64_t>(0, -g.ph); ih < g.H; ++ih) {
    const int64_t a = (ih + g.ph) % g.sh, i = (ih + g.ph) / g.sh;
    if (i >= g.Hm) break;
    for (int64_t b = 0; b < g.sw; ++b) {
      if (g.slot[a * g.sw + b] < 0) continue;
      float* row = buf + g.slot[a * g.sw + b] * phase_stride + i * g.Wm;
      int64_t lo, hi;
      valid_columns(g, b, &lo, &hi);
      zero<V>(row, lo);
      if (hi > lo) copy_strided<V>(x + ih * g.W + lo * g.sw + b - g.pw, g.sw, hi - lo, row + lo);
      zero<V>(row + hi, g.Wm - hi);
    }
  }
}


// buf = the phase-split, zero-padded copy of the H x W plane x, phases one after the other, and
// the zeroed slack after them.
template <class V>
void split(const Geom& g, const float* x, float* buf) {
  split_phases<V>(g, x, buf, g.phase);
  const int64_t planes = g.slots * g.phase;
  std::memset(buf + planes, 0, sizeof(float) * (g.span - planes));
}

// dx = the input plane's share of the phase-split dbuf (inputs no tap reaches get zero).
template <class V>
void unsplit(const Geom& g, const float* dbuf, float* dx) {
  for (int64_t ih = 0; ih < g.H; ++ih) {
    float* row = dx + ih * g.W;
    const int64_t i = ih + g.ph, a = i % g.sh, ii = i / g.sh;
    zero<V>(row, g.W);
    if (ii >= g.Hm) continue;
    for (int64_t b = 0; b < g.sw; ++b) {
      if (g.slot[a * g.sw + b] < 0) continue;  // no tap reads these inputs
      const float* src = dbuf + g.slot[a * g.sw + b] * g.phase + ii * g.Wm;
      int64_t lo, hi;
      valid_columns(g, b, &lo, &hi);
      // input column m*sw + b - pw, for m in [lo, hi)
      if (g.sw == 1 && hi > lo)
        copy<V>(src + lo, row + lo - g.pw, hi - lo);
      else
        for (int64_t m = lo; m < hi; ++m) row[m * g.sw + b - g.pw] = src[m];
    }
  }
}

// out[n0 .. n0 + kVecs * L) of one output plane.
template <class V, int kVecs>
inline void fwd_block(const Geom& g, const float* buf, const float* wk, float bias, float* out,
                      int64_t n0) {
  using reg = typename V::reg;
  const int64_t taps = static_cast<int64_t>(g.off.size());
  const int64_t* off = g.off.data();
  reg acc[kVecs];  // (the unroll pragmas keep the arrays in registers: GCC spilled them)
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) acc[j] = V::set1(bias);
  for (int64_t tap = 0; tap < taps; ++tap) {
    const reg wv = V::set1(wk[tap]);
    const float* src = buf + off[tap] + n0;
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) acc[j] = V::fma(wv, V::load(src + j * V::L), acc[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) V::store(out + n0 + j * V::L, acc[j]);
}

// The forward of one output plane: out[n] for n < P*Wm rounded up to a vector, in blocks of
// kBlock vectors, the last block whatever is left: each accumulator is a chain of dependent FMAs
// (one per tap), so a small plane's few vectors are best all in one block.
template <class V>
void fwd_plane(const Geom& g, const float* buf, const float* wk, float bias, float* out) {
  const int64_t vectors = (g.P * g.Wm + V::L - 1) / V::L;
  for (int64_t v = 0; v < vectors; v += kBlock) {
    const int64_t n0 = v * V::L;
    switch (std::min<int64_t>(kBlock, vectors - v)) {
      case 1: fwd_block<V, 1>(g, buf, wk, bias, out, n0); break;
      case 2: fwd_block<V, 2>(g, buf, wk, bias, out, n0); break;
      case 3: fwd_block<V, 3>(g, buf, wk, bias, out, n0); break;
      case 4: fwd_block<V, 4>(g, buf, wk, bias, out, n0); break;
      case 5: fwd_block<V, 5>(g, buf, wk, bias, out, n0); break;
      case 6: fwd_block<V, 6>(g, buf, wk, bias, out, n0); break;
      case 7: fwd_block<V, 7>(g, buf, wk, bias, out, n0); break;
      default: fwd_block<V, kBlock>(g, buf, wk, bias, out, n0);
    }
  }
}

template <class V>
void fwd(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
         int threads) {
  const Geom g = geom(s, V::L);
  const int64_t mult = s.K / s.C, HW = s.H * s.W, PQ = s.P * s.Q, RS = s.R * s.S;
  const int64_t planes = s.N * s.C, n_out = round_up(g.P * g.Wm, V::L);
  parallel_for(planes, threads_for(planes * mult * (g.P * g.Wm * RS + HW), 1 << 14, threads),
               [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_buf, tl_out;
    float* buf = tl_buf.get(static_cast<size_t>(g.span));
    float* out = tl_out.get(static_cast<size_t>(n_out));
    for (int64_t nc = b; nc < e; ++nc) {
      split<V>(g, x + nc * HW, buf);
      // the planes are streamed from memory: fetch the next one while this one is computed
      if (nc + 1 < e) prefetch_plane(x + (nc + 1) * HW, HW);
      const int64_t n = nc / s.C, c = nc % s.C;
      for (int64_t k = c * mult; k < (c + 1) * mult; ++k) {
        fwd_plane<V>(g, buf, w + k * RS, bias ? bias[k] : 0.f, out);
        float* yk = y + (n * s.K + k) * PQ;
        for (int64_t p = 0; p < g.P; ++p) copy<V>(out + p * g.Wm, yk + p * g.Q, g.Q);
      }
    }
  });
}

// dbuf[n + off[tap]] += w[tap] * dy[n] over one output plane's valid positions.
template <class V>
void bwd_data_plane(const Geom& g, const float* dyk, const float* wk, float* dbuf) {
  using reg = typename V::reg;
  const int64_t taps = static_cast<int64_t>(g.off.size());
  const int64_t* off = g.off.data();
  for (int64_t p = 0; p < g.P; ++p) {
    const float* d = dyk + p * g.Q;
    float* base = dbuf + p * g.Wm;
    int64_t q0 = 0;
    for (; q0 + kBlock * V::L <= g.Q; q0 += kBlock * V::L) {
      reg dv[kBlock];
      for (int j = 0; j < kBlock; ++j) dv[j] = V::load(d + q0 + j * V::L);
      for (int64_t tap = 0; tap < taps; ++tap) {
        const reg wv = V::set1(wk[tap]);
        float* t = base + off[tap] + q0;
        for (int j = 0; j < kBlock; ++j)
          V::store(t + j * V::L, V::fma(wv, dv[j], V::load(t + j * V::L)));
      }
    }
    for (; q0 < g.Q; q0 += V::L) {
      const int64_t n = std::min<int64_t>(V::L, g.Q - q0);
      const reg dv = V::load_first(d + q0, n);
      for (int64_t tap = 0; tap < taps; ++tap) {
        float* t = base + off[tap] + q0;
        V::store_first(t, V::fma(V::set1(wk[tap]), dv, V::load_first(t, n)), n);
      }
    }
  }
}

template <class V>
float plane_sum(const float* d, int64_t n) {
  typename V::reg acc = V::zero();
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) acc = V::add(acc, V::load(d + i));
  if (i < n) acc = V::add(acc, V::load_first(d + i, n - i));
  return V::sum(acc);
}

// ---- grouped convolutions: the weight gradient as direct dot products ------------------------
//
// dW[k][c][tap] = sum_n dy_k[n] * buf_c[n + off[tap]] over the valid positions, the group's Cg
// input planes phase-split as above: a block of kK output channels by kT taps held in
// registers, kT + kK loads for kK * kT FMAs. For a group of few output channels this beats the
// im2col GEMM, whose 8-row tiles and column tiles then do little work per packed float.

template <class V, int kK, int kT>
void dot_block(const Geom& g, const float* buf, const float* dy, int64_t dy_stride,
               const int64_t* off, double* acc_out, int64_t acc_stride) {
  using reg = typename V::reg;
  reg acc[kK * kT];
#pragma GCC unroll 32
  for (int i = 0; i < kK * kT; ++i) acc[i] = V::zero();
  // one loop over every row's vectors, all loads masked (the rows are short: a loop per row
  // had the compiler move the accumulators to the stack and back at every row)
  const int64_t items = g.P * ((g.Q + V::L - 1) / V::L);
  for (int64_t it = 0, p = 0, q = 0; it < items; ++it) {
    const int64_t n = std::min<int64_t>(V::L, g.Q - q);
    const float* base = buf + p * g.Wm + q;
    const float* d = dy + p * g.Q + q;
    reg bv[kT];
#pragma GCC unroll 8
    for (int j = 0; j < kT; ++j) bv[j] = V::load_first(base + off[j], n);
#pragma GCC unroll 4
    for (int i = 0; i < kK; ++i) {
      const reg dv = V::load_first(d + i * dy_stride, n);
#pragma GCC unroll 8
      for (int j = 0; j < kT; ++j) acc[i * kT + j] = V::fma(dv, bv[j], acc[i * kT + j]);
    }
    q += V::L;
    if (q >= g.Q) q = 0, ++p;
  }
#pragma GCC unroll 4
  for (int i = 0; i < kK; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kT; ++j) acc_out[i * acc_stride + j] += V::sum(acc[i * kT + j]);
}

// Register blocks: 3 channels x 6 taps on 16-float vectors (18 accumulators, 6 plane loads and
// a dy load of the 32 registers), 2 x 4 on 8-float ones (13 of 16).
template <class V> constexpr int kGroupK = V::L == 16 ? 3 : 2;
template <class V> constexpr int kGroupT = V::L == 16 ? 6 : 4;

template <class V, int kK>
void dot_taps_of(const Geom& g, const float* buf, const float* dy, int64_t dy_stride,
                 double* acc, int64_t acc_stride) {
  const int64_t taps = static_cast<int64_t>(g.off.size()), most = kGroupT<V>;
  const int64_t groups = (taps + most - 1) / most;
  for (int64_t i = 0, t0 = 0; i < groups; ++i) {
    const int64_t nt = (taps - t0) / (groups - i);
    const int64_t* off = g.off.data() + t0;
    switch (nt) {
      case 1: dot_block<V, kK, 1>(g, buf, dy, dy_stride, off, acc + t0, acc_stride); break;
      case 2: dot_block<V, kK, 2>(g, buf, dy, dy_stride, off, acc + t0, acc_stride); break;
      case 3: dot_block<V, kK, 3>(g, buf, dy, dy_stride, off, acc + t0, acc_stride); break;
      case 4: dot_block<V, kK, 4>(g, buf, dy, dy_stride, off, acc + t0, acc_stride); break;
      case 5: dot_block<V, kK, 5>(g, buf, dy, dy_stride, off, acc + t0, acc_stride); break;
      default: dot_block<V, kK, kGroupT<V>>(g, buf, dy, dy_stride, off, acc + t0, acc_stride);
    }
    t0 += nt;
  }
}

// dW of a grouped convolution (any stride, dilation, padding) and db. Each task is one input
// channel of one group, dW[group's k][c][:] summed over the images in order (and, for the
// group's first channel, db): the same bits for any thread count, and work for many threads
// even when the groups are few.
template <class V>
void grouped_weight(const Conv2dShape& s, const float* x, const float* dy, float* dwt, float* db,
                    int threads) {
  const Geom g = geom(s, V::L);
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q, tasks = s.groups * Cg;
  const int64_t work = s.N * Kg * PQ * RS;
  parallel_for(tasks, threads_for(tasks * work, 1 << 16, threads), [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_plane;
    float* buf = tl_plane.get(static_cast<size_t>(g.span));
    std::vector<double> acc(static_cast<size_t>(Kg * RS)), bsum(static_cast<size_t>(Kg));
    for (int64_t task = b; task < e; ++task) {
      const int64_t gi = task / Cg, c = task % Cg;
      const bool bias = db != nullptr && c == 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(bsum.begin(), bsum.end(), 0.0);
      for (int64_t n = 0; n < s.N; ++n) {
        const float* dyg = dy + (n * s.K + gi * Kg) * PQ;
        if (bias)
          for (int64_t k = 0; k < Kg; ++k) bsum[k] += plane_sum<V>(dyg + k * PQ, PQ);
        if (dwt == nullptr) continue;
        split<V>(g, x + (n * s.C + gi * Cg + c) * HW, buf);  // read Kg / kK times
        for (int64_t k0 = 0; k0 < Kg; k0 += kGroupK<V>) {
          const float* d = dyg + k0 * PQ;
          double* a = acc.data() + k0 * RS;
          switch (std::min<int64_t>(kGroupK<V>, Kg - k0)) {
            case 1: dot_taps_of<V, 1>(g, buf, d, PQ, a, RS); break;
            case 2: dot_taps_of<V, 2>(g, buf, d, PQ, a, RS); break;
            default: dot_taps_of<V, kGroupK<V>>(g, buf, d, PQ, a, RS);
          }
        }
      }
      if (bias)
        for (int64_t k = 0; k < Kg; ++k) db[gi * Kg + k] = static_cast<float>(bsum[k]);
      if (dwt != nullptr)
        for (int64_t k = 0; k < Kg; ++k)
          for (int64_t i = 0; i < RS; ++i)
            dwt[((gi * Kg + k) * Cg + c) * RS + i] = static_cast<float>(acc[k * RS + i]);
    }
  });
}

template <class V>
void bwd(const Conv2dShape& s, const float* x, const float* w, const float* dy, float* dx,
         float* dwt, float* db, int threads) {
  const Geom g = geom(s, V::L);
  const int64_t mult = s.K / s.C, HW = s.H * s.W, PQ = s.P * s.Q, RS = s.R * s.S;
  const int64_t work = mult * (PQ * RS + HW);
  if (dx != nullptr && s.stride_h == 1 && s.stride_w == 1 && mult == 1) {
    // the adjoint of a stride-1 depthwise convolution is one: over dy, flipped kernel, padding
    // dil*(k-1) - pad (negative crops), producing H x W, in the forward's register blocks
    Conv2dShape t = s;
    t.H = s.P, t.W = s.Q, t.P = s.H, t.Q = s.W;
    t.pad_h = (s.R - 1) * s.dil_h - s.pad_h, t.pad_w = (s.S - 1) * s.dil_w - s.pad_w;
    static thread_local Scratch tl_flip;
    float* wf = tl_flip.get(static_cast<size_t>(s.K * RS));
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t i = 0; i < RS; ++i) wf[k * RS + RS - 1 - i] = w[k * RS + i];
    fwd<V>(t, dy, wf, nullptr, dx, threads);
  } else if (dx != nullptr) {
    const int64_t planes = s.N * s.C;
    parallel_for(planes, threads_for(planes * work, 1 << 14, threads), [&](int64_t b, int64_t e) {
      static thread_local Scratch tl_dbuf;
      float* dbuf = tl_dbuf.get(static_cast<size_t>(g.span));
      for (int64_t nc = b; nc < e; ++nc) {
        std::memset(dbuf, 0, sizeof(float) * g.span);
        const int64_t n = nc / s.C, c = nc % s.C;
        for (int64_t k = c * mult; k < (c + 1) * mult; ++k)
          bwd_data_plane<V>(g, dy + (n * s.K + k) * PQ, w + k * RS, dbuf);
        unsplit<V>(g, dbuf, dx + nc * HW);
      }
    });
  }
  if (dwt != nullptr || db != nullptr) grouped_weight<V>(s, x, dy, dwt, db, threads);
}

}  // namespace dw
}  // namespace
}  // namespace dlkern
