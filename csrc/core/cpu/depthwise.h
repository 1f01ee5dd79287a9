// Depthwise conv2d (groups == C, any channel multiplier K / C), and the direct routes of grouped
// convolutions that share its phase-split planes, written once over a vector type V: the avx2
// path instantiates it with vec_avx2.h's F32x8 (conv2d_avx2.cpp), the avx512 path with
// vec_avx512.h's F32x16 (conv2d_avx512.cpp). Include it after <algorithm>, <cstring>,
// <type_traits>, <vector> and the vector header (whose target pragma then applies to these
// functions).
//
// Each input plane is first copied into a zero-padded, phase-split buffer: for strides sh x sw it
// holds up to sh * sw phase planes of Hm x Wm floats, phase (a, b) holding rows i*sh + a and
// columns m*sw + b of the padded input (the phases no tap reads are left out). Output position
// (p, q) then reads tap (r, t) at
//   phase ((r*dh) % sh, (t*dw) % sw), row p + (r*dh) / sh, column q + (t*dw) / sw,
// so over the positions n = p*Wm + q (rows Wm wide, Wm - Q of each discarded) every tap of any
// stride and dilation is one contiguous run at a fixed offset off[r*S + t] from n:
//   forward        y[n] = bias + sum_taps w[tap] * buf[n + off[tap]], Block vectors of n held in
//                  registers over all taps (one load and one FMA per tap and vector); with one
//                  output channel per input, except stride 1 on wide planes, the channels go in
//                  the vector lanes instead (fwd_blocked: no discarded columns, every load a
//                  whole vector);
//   backward data  at stride 1 with one output channel per input, the forward over dy with the
//                  kernel flipped; otherwise the adjoint, dbuf[n + off[tap]] += w[tap] * dy[n]
//                  over the valid columns, then dbuf read back into dx's plane;
//   backward weight dw[tap] = sum_n dy[n] * buf[n + off[tap]] over the valid columns, blocks of
//                  output channels by taps in registers (grouped_weight, which grouped
//                  convolutions share), summed over a chunk of images in registers and the
//                  chunks added in double in image order (so the result does not depend on the
//                  threads);
//   grouped forward y[k][n] = sum_c sum_taps w[k][c][tap] * buf_c[n + off[tap]] (grouped_fwd),
//                  blocks of output channels by vectors of n in registers.
// Columns past Q are masked in both backward passes: a discarded column may read a real input
// value, and 0 * inf there would turn a gradient into NaN.
#pragma once

namespace dlkern {
namespace {
namespace dw {

constexpr int kBlock = 8;  // vectors of output positions per forward register block

// f(std::integral_constant<int, n>{}) for a run-time count 1 <= n <= kMax: the register blocks'
// sizes are template arguments. (f's arguments must not be vectors: a lambda does not take the
// vector header's target pragma.)
template <int kMax, class F>
inline void with_count(int64_t n, const F& f) {
  if constexpr (kMax > 1) {
    if (n < kMax) return with_count<kMax - 1>(n, f);
  }
  f(std::integral_constant<int, kMax>{});
}

struct Geom {
  int64_t H, W, P, Q, ph, pw, sh, sw;
  int64_t Hm, Wm, phase;  // phase-plane rows, columns, floats
  // Only the phases some tap reads are kept (a 1x1 kernel at stride 2 reads one of four):
  // phase (a, b) is plane slot[a*sw + b] of the buffer, -1 when no tap reads it.
  std::vector<int64_t> slot;
  int64_t slots;
  int64_t span;           // floats in the buffer: the planes and a zeroed slack read past them
  std::vector<int64_t> off;  // tap r*S + t at n + off
  // phase column b's valid columns [lo[b], hi[b]): those whose input column m*sw + b - pw lies
  // in [0, W)
  std::vector<int64_t> lo, hi;
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
  for (int64_t b = 0; b < g.sw; ++b) {
    const int64_t iw0 = b - g.pw;
    const int64_t a = std::min(g.Wm, iw0 >= 0 ? 0 : (-iw0 + g.sw - 1) / g.sw);
    const int64_t e = g.W - 1 - iw0 < 0 ? 0 : (g.W - 1 - iw0) / g.sw + 1;
    g.lo.push_back(a);
    g.hi.push_back(std::max(a, std::min(e, g.Wm)));
  }
  return g;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Asks for the n floats at p to be brought into L2, a cache line at a time.
inline void prefetch_plane(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 2);
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

// The input's values of the phase-split copy of the H x W plane x (the phase in slot j at
// buf + j * phase_stride, Hm x Wm floats), leaving the padding alone: its rows in order, each
// into its phases one after the other (a phase at a time walked the input sh * sw times, each
// with a stride: slower from DRAM). A buffer split into with the same geometry keeps its
// zero padding: the callers that split plane after plane zero theirs once (a row's zeros were
// as many calls as its values, and the rows of small planes are a vector or two).
// One input row (xr) into its two column phases' rows (d0, d1) at column stride 2, for `planes`
// planes alike: phase b's column m is input column 2m + b - pw for m in [lo[b], hi[b]), and
// their runs start at adjacent input columns (when neither is clamped: the caller checks), so
// one pass of V::deinterleave reads the row once for both.
template <class V>
void split_row2(const Geom& g, const float* xr, float* d0, float* d1, int64_t planes,
                int64_t x_stride, int64_t buf_stride) {
  const int64_t start0 = 2 * g.lo[0] - g.pw, start1 = 2 * g.lo[1] + 1 - g.pw;
  const int64_t be = start0 < start1 ? 0 : 1, bo = 1 - be;  // the even and odd streams
  const int64_t s0 = std::min(start0, start1);
  const int64_t ne = g.hi[be] - g.lo[be], no = g.hi[bo] - g.lo[bo];
  float* de = (be == 0 ? d0 : d1) + g.lo[be];
  float* dd = (bo == 0 ? d0 : d1) + g.lo[bo];
  for (int64_t c = 0; c < planes; ++c) {
    const float* src = xr + c * x_stride + s0;
    for (int64_t j = 0; j < std::max(ne, no); j += V::L)
      V::deinterleave(src + 2 * j, de + c * buf_stride + j, std::clamp<int64_t>(ne - j, 0, V::L),
                      dd + c * buf_stride + j, std::clamp<int64_t>(no - j, 0, V::L));
  }
}

template <class V>
void split_values(const Geom& g, const float* x, float* buf, int64_t phase_stride,
                  int64_t planes = 1, int64_t x_stride = 0, int64_t buf_stride = 0) {
  // (a negative padding, the crop of a transposed convolution, drops the first -ph rows)
  const int64_t ih0 = std::max<int64_t>(0, -g.ph);
  for (int64_t ih = ih0, a = (ih0 + g.ph) % g.sh, i = (ih0 + g.ph) / g.sh; ih < g.H && i < g.Hm;
       ++ih) {
    if (g.sw == 2 && g.slot[a * 2] >= 0 && g.slot[a * 2 + 1] >= 0 &&
        (g.lo[1] == g.lo[0] || g.lo[1] + 1 == g.lo[0])) {  // the runs adjacent
      split_row2<V>(g, x + ih * g.W, buf + g.slot[a * 2] * phase_stride + i * g.Wm,
                    buf + g.slot[a * 2 + 1] * phase_stride + i * g.Wm, planes, x_stride,
                    buf_stride);
      if (++a == g.sh) a = 0, ++i;
      continue;
    }
    for (int64_t b = 0; b < g.sw; ++b) {
      const int64_t slot = g.slot[a * g.sw + b], lo = g.lo[b], n = g.hi[b] - lo;
      if (slot < 0 || n <= 0) continue;
      const float* src = x + ih * g.W + lo * g.sw + b - g.pw;
      float* dst = buf + slot * phase_stride + i * g.Wm + lo;
      // the planes' rows alike, one after the other (the masks of a row's copy computed once)
      for (int64_t c = 0; c < planes; ++c)
        copy_strided<V>(src + c * x_stride, g.sw, n, dst + c * buf_stride);
    }
    if (++a == g.sh) a = 0, ++i;
  }
}

// The whole phase-split, zero-padded copy: the padding rows and columns, then the values.
template <class V>
void split_phases(const Geom& g, const float* x, float* buf, int64_t phase_stride) {
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      if (g.slot[a * g.sw + b] < 0) continue;
      float* plane = buf + g.slot[a * g.sw + b] * phase_stride;
      for (int64_t i = 0; i < g.Hm; ++i) {
        const int64_t ih = i * g.sh + a - g.ph;
        if (ih < 0 || ih >= g.H) {
          zero<V>(plane + i * g.Wm, g.Wm);
        } else {
          zero<V>(plane + i * g.Wm, g.lo[b]);
          zero<V>(plane + i * g.Wm + g.hi[b], g.Wm - g.hi[b]);
        }
      }
    }
  split_values<V>(g, x, buf, phase_stride);
}

// A row of dx at column stride 2 from its two column phases' rows (row zeroed): input column
// iw = 2m + b - pw from phase b's column m, for m in [lo[b], hi[b]). Where both phases have
// their columns, [i0, i1), the row is the two interleaved; the edges a column at a time.
template <class V>
void unsplit_row2(const Geom& g, const float* s0, const float* s1, float* row) {
  const int64_t pw = g.pw;
  const int64_t i0 = std::max(2 * g.lo[0] - pw, 2 * g.lo[1] + 1 - pw);
  const int64_t i1 = std::max(i0, std::min(2 * g.hi[0] - 1 - pw, 2 * g.hi[1] - pw));
  if (i1 > i0) {
    const int64_t b0 = (i0 + pw) % 2, m0 = (i0 + pw - b0) / 2;
    const float* first = b0 == 0 ? s0 + m0 : s1 + m0;       // column i0
    const float* second = b0 == 0 ? s1 + m0 : s0 + m0 + 1;  // column i0 + 1
    for (int64_t j = 0; j < i1 - i0; j += 2 * V::L)
      V::interleave(first + j / 2, second + j / 2, row + i0 + j, std::min<int64_t>(2 * V::L, i1 - i0 - j));
  }
  for (int64_t iw = 0; iw < g.W; ++iw) {
    if (iw == i0 && i1 > i0) iw = i1;
    if (iw >= g.W) break;
    const int64_t b = (iw + pw) % 2, m = (iw + pw - b) / 2;
    if (m >= g.lo[b] && m < g.hi[b]) row[iw] = (b == 0 ? s0 : s1)[m];
  }
}

// dx = the input plane's share of the phase-split dbuf (inputs no tap reaches get zero).
template <class V>
void unsplit(const Geom& g, const float* dbuf, float* dx) {
  for (int64_t ih = 0; ih < g.H; ++ih) {
    float* row = dx + ih * g.W;
    const int64_t i = ih + g.ph, a = i % g.sh, ii = i / g.sh;
    zero<V>(row, g.W);
    if (ii >= g.Hm) continue;
    if (g.sw == 2 && g.slot[a * 2] >= 0 && g.slot[a * 2 + 1] >= 0) {
      unsplit_row2<V>(g, dbuf + g.slot[a * 2] * g.phase + ii * g.Wm,
                      dbuf + g.slot[a * 2 + 1] * g.phase + ii * g.Wm, row);
      continue;
    }
    for (int64_t b = 0; b < g.sw; ++b) {
      if (g.slot[a * g.sw + b] < 0) continue;  // no tap reads these inputs
      const float* src = dbuf + g.slot[a * g.sw + b] * g.phase + ii * g.Wm;
      const int64_t lo = g.lo[b], hi = g.hi[b];
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
    with_count<kBlock>(vectors - v, [&](auto k) {
      fwd_block<V, decltype(k)::value>(g, buf, wk, bias, out, n0);
    });
  }
}

template <class V>
void fwd_planes(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
                int threads) {
  const Geom g = geom(s, V::L);
  const int64_t mult = s.K / s.C, HW = s.H * s.W, PQ = s.P * s.Q, RS = s.R * s.S;
  const int64_t planes = s.N * s.C, n_out = round_up(g.P * g.Wm, V::L);
  parallel_for(planes, threads_for(planes * mult * (g.P * g.Wm * RS + HW), 1 << 14, threads),
               [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_buf, tl_out;
    float* buf = tl_buf.get(static_cast<size_t>(g.span));
    float* out = tl_out.get(static_cast<size_t>(n_out));
    std::memset(buf, 0, sizeof(float) * g.span);
    for (int64_t nc = b; nc < e; ++nc) {
      split_values<V>(g, x + nc * HW, buf, g.phase);
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

// f(start, count) for each of the fewest pieces of at most `most` that split n items, as even
// as they go (the first n % pieces one longer), in order.
template <class F>
inline void even_blocks(int64_t n, int64_t most, const F& f) {
  const int64_t pieces = (n + most - 1) / most;
  for (int64_t i = 0, start = 0; i < pieces; ++i) {
    const int64_t count = n / pieces + (i < n % pieces ? 1 : 0);
    f(start, count);
    start += count;
  }
}

// ---- small planes: channels in the vector lanes ------------------------------------------
//
// On planes of a few rows (7 x 7, 14 x 14) the phase-split planes spend most of each vector on
// discarded columns, and a plane's few vectors leave the FMA pipes waiting on each chain. With
// L channels in a vector instead (a task's L planes copied, padded, as [row][column][channel]
// by gathers), every lane is an output, an output row's columns are independent chains, and
// every FMA reads one whole vector; the outputs go back to NCHW by gathers as well.

template <class V> constexpr int kRowBlock = V::L == 16 ? 14 : 12;  // accumulators

// ob[(p*Q + q0 + j)*L] for j < kQ: output row p's columns q0.., all R x S taps.
template <class V, int kQ>
void blocked_row(const Conv2dShape& s, int64_t Wp, const float* xb, const float* wb,
                 const float* bias, float* ob, int64_t p, int64_t q0) {
  using reg = typename V::reg;
  constexpr int64_t L = V::L;
  reg acc[kQ];
#pragma GCC unroll 16
  for (int j = 0; j < kQ; ++j) acc[j] = V::load(bias);
  const int64_t step = s.stride_w * L;
  for (int64_t r = 0; r < s.R; ++r) {
    const float* row = xb + ((p * s.stride_h + r * s.dil_h) * Wp + q0 * s.stride_w) * L;
    for (int64_t t = 0; t < s.S; ++t) {
      const reg wv = V::load(wb + (r * s.S + t) * L);
      const float* src = row + t * s.dil_w * L;
#pragma GCC unroll 16
      for (int j = 0; j < kQ; ++j) acc[j] = V::fma(wv, V::load(src + j * step), acc[j]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < kQ; ++j) V::store(ob + (p * s.Q + q0 + j) * L, acc[j]);
}

// Where the channel-blocked forward runs (one output channel per input channel), measured on the
// 2-core Zen 5 (blocked / planes, the best of 5 alternating runs). On zmm: 0.42-0.56 on 7 x 7
// planes, 0.69 for 5 x 5 on 14 x 14, 0.4-0.58 at stride 2 (28 x 28 to 112 x 112), 0.76-0.89 for
// 5 x 5 and 7 x 7 on 28 x 28 and 56 x 56, but 1.0-1.2 for 3 x 3 at stride 1 from 14 x 14 up. On
// ymm (half the registers, half the lanes per transpose) only 7 x 7 planes won (0.5-0.97);
// 14 x 14 and larger were 1.05-2 and stride 2 0.8-1.3.
// It also needs the L padded planes within 2^22 floats. (Not the thread count: a route chosen by
// it would give different bits for different thread counts.)
template <class V>
bool blocked_applies(const Conv2dShape& s) {
  const int64_t Hp = (s.P - 1) * s.stride_h + (s.R - 1) * s.dil_h + 1;
  const int64_t Wp = (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1;
  if (s.K != s.C || Hp * Wp * V::L > (int64_t{1} << 22)) return false;
  if (V::L < 16) return s.Q < 8;
  return s.stride_w > 1 || s.Q < 14 || (s.R * s.S >= 25 && s.Q < 64);
}

template <class V>
void fwd_blocked(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                 float* y, int threads) {
  constexpr int64_t L = V::L;
  const int64_t blocks = (s.C + L - 1) / L, HW = s.H * s.W, PQ = s.P * s.Q, RS = s.R * s.S;
  const int64_t Hp = (s.P - 1) * s.stride_h + (s.R - 1) * s.dil_h + 1;
  const int64_t Wp = (s.Q - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1;
  const int64_t tasks = s.N * blocks;
  // the weight as [block][tap][channel], shared by the images
  static thread_local Scratch tl_wb;
  float* wball = tl_wb.get(static_cast<size_t>(blocks * RS * L));
  for (int64_t c0 = 0; c0 < s.C; c0 += L)
    for (int64_t tap = 0; tap < RS; ++tap)
      V::store(wball + (c0 * RS + tap * L), V::gather_first(w + c0 * RS + tap, RS, std::min(L, s.C - c0)));
  // where input pixel ih*W + iw goes in the padded copy (-1: outside the rows and columns read)
  std::vector<int64_t> pos(static_cast<size_t>(HW));
  for (int64_t ih = 0; ih < s.H; ++ih)
    for (int64_t iw = 0; iw < s.W; ++iw) {
      const int64_t i = ih + s.pad_h, j = iw + s.pad_w;
      pos[ih * s.W + iw] = i >= 0 && i < Hp && j >= 0 && j < Wp ? (i * Wp + j) * L : -1;
    }
  parallel_for(tasks, threads_for(tasks * L * (PQ * RS + HW), 1 << 14, threads),
               [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_xb, tl_ob;
    float* xb = tl_xb.get(static_cast<size_t>(Hp * Wp * L));
    float* ob = tl_ob.get(static_cast<size_t>(PQ * L));
    float bl[L];  // the task's biases
    // the padding stays zero: every task writes the same positions
    std::memset(xb, 0, sizeof(float) * Hp * Wp * L);
    typename V::reg r[L];
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / blocks, c0 = task % blocks * L, lanes = std::min(L, s.C - c0);
      const float* wb = wball + c0 * RS;
      V::store(bl, bias != nullptr ? V::load_first(bias + c0, lanes) : V::zero());
      // the input, L pixels of L planes at a time, transposed, each pixel to its padded place
      const float* xc = x + (n * s.C + c0) * HW;
      for (int64_t m = 0; m < HW; m += L) {
        const int64_t k = std::min(L, HW - m);
        for (int64_t c = 0; c < L; ++c) r[c] = c < lanes ? V::load_first(xc + c * HW + m, k) : V::zero();
        V::transpose(r);
        for (int64_t j = 0; j < k; ++j)
          if (pos[m + j] >= 0) V::store(xb + pos[m + j], r[j]);
      }
      for (int64_t p = 0; p < s.P; ++p)
        even_blocks(s.Q, kRowBlock<V>, [&](int64_t q0, int64_t nq) {
          with_count<kRowBlock<V>>(nq, [&](auto q) {
            blocked_row<V, decltype(q)::value>(s, Wp, xb, wb, bl, ob, p, q0);
          });
        });
      // the output, L pixels at a time, transposed back into the L planes
      float* yc = y + (n * s.C + c0) * PQ;
      for (int64_t m = 0; m < PQ; m += L) {
        const int64_t k = std::min(L, PQ - m);
        for (int64_t j = 0; j < L; ++j) r[j] = j < k ? V::load(ob + (m + j) * L) : V::zero();
        V::transpose(r);
        for (int64_t c = 0; c < lanes; ++c) V::store_first(yc + c * PQ + m, r[c], k);
      }
    }
  });
}

// The depthwise forward (and the backward data at stride 1, a forward over dy).
template <class V>
void fwd(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
         int threads) {
  if (blocked_applies<V>(s))
    fwd_blocked<V>(s, x, w, bias, y, threads);
  else
    fwd_planes<V>(s, x, w, bias, y, threads);
}

// ---- grouped convolutions: the forward as direct products ---------------------------------
//
// y[k][n] = bias[k] + sum_c sum_tap w[k][c][tap] * buf_c[n + off[tap]] over a group's Cg
// phase-split input planes (one after the other, so a block's reads past a channel's planes
// land in the next one's, in discarded columns): a block of kK output channels by kV vectors
// of positions in registers, kV plane loads and kK weight broadcasts for kK * kV FMAs. With
// few channels per group the im2col GEMM packs about as many floats as it multiplies; this
// packs nothing but the input's split copy.

// Register blocks: 6 channels x 4 vectors on 16-float vectors (24 accumulators, 4 loads and a
// broadcast of the 32 registers), 4 x 3 on 8-float ones (12 + 3 + 1 of 16).
template <class V> constexpr int kFwdK = V::L == 16 ? 6 : 4;
template <class V> constexpr int kFwdV = V::L == 16 ? 4 : 3;


// out[i][n0 .. n0 + kV * L) for the kK output channels whose weights start at w (w_stride
// apart, each Cg x RS), over the Cg planes of buf (c_stride apart).
template <class V, int kK, int kV>
void group_block(const Geom& g, const float* buf, int64_t c_stride, int64_t Cg, const float* w,
                 int64_t w_stride, const float* bias, float* out, int64_t out_stride,
                 int64_t n0) {
  using reg = typename V::reg;
  const int64_t taps = static_cast<int64_t>(g.off.size());
  const int64_t* off = g.off.data();
  reg acc[kK * kV];
#pragma GCC unroll 8
  for (int i = 0; i < kK; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kV; ++j) acc[i * kV + j] = V::set1(bias != nullptr ? bias[i] : 0.f);
  for (int64_t c = 0; c < Cg; ++c) {
    const float* plane = buf + c * c_stride + n0;
    const float* wc = w + c * taps;
    for (int64_t tap = 0; tap < taps; ++tap) {
      reg xv[kV];
#pragma GCC unroll 4
      for (int j = 0; j < kV; ++j) xv[j] = V::load(plane + off[tap] + j * V::L);
#pragma GCC unroll 8
      for (int i = 0; i < kK; ++i) {
        const reg wv = V::set1(wc[i * w_stride + tap]);
#pragma GCC unroll 4
        for (int j = 0; j < kV; ++j) acc[i * kV + j] = V::fma(wv, xv[j], acc[i * kV + j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kK; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kV; ++j) V::store(out + i * out_stride + n0 + j * V::L, acc[i * kV + j]);
}

// group_block for nk <= kFwdK output channels and nv <= kFwdV vectors.
template <class V>
void group_rows(int64_t nk, int64_t nv, const Geom& g, const float* buf, int64_t c_stride,
                int64_t Cg, const float* w, int64_t w_stride, const float* bias, float* out,
                int64_t out_stride, int64_t n0) {
  with_count<kFwdK<V>>(nk, [&](auto k) {
    with_count<kFwdV<V>>(nv, [&](auto v) {
      group_block<V, decltype(k)::value, decltype(v)::value>(g, buf, c_stride, Cg, w, w_stride,
                                                             bias, out, out_stride, n0);
    });
  });
}

// group_block over all of out's `rows` rows (n_out floats each) of one plane: every block of
// kFwdK rows by kFwdV vectors, the vector blocks outside (a block's inputs stay in L1 while the
// row blocks sweep them); row k's weights at w + k * w_stride, its bias (if any) bias[k].
template <class V>
void group_plane(const Geom& g, const float* buf, int64_t c_stride, int64_t planes,
                 const float* w, int64_t w_stride, const float* bias, int64_t rows, float* out,
                 int64_t n_out) {
  even_blocks(n_out / V::L, kFwdV<V>, [&](int64_t v0, int64_t nv) {
    even_blocks(rows, kFwdK<V>, [&](int64_t k0, int64_t nk) {
      group_rows<V>(nk, nv, g, buf, c_stride, planes, w + k0 * w_stride, w_stride,
                    bias != nullptr ? bias + k0 : nullptr, out + k0 * n_out, n_out, v0 * V::L);
    });
  });
}

// The forward of a grouped convolution (any stride, dilation, padding; pads may be negative,
// cropping): one task per (image, group), its Cg planes split, then every output channel of
// the group, a block of position vectors at a time (the block's inputs stay in L1 while the
// channel blocks sweep them), into a Kg x P*Wm workspace whose Q-column rows go to y.
template <class V>
void grouped_fwd(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                 float* y, int threads) {
  const Geom g = geom(s, V::L);
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q, c_stride = g.slots * g.phase;
  const int64_t n_out = round_up(g.P * g.Wm, V::L);
  const int64_t tasks = s.N * s.groups, work = Kg * Cg * RS * n_out + Cg * HW;
  parallel_for(tasks, threads_for(tasks * work, 1 << 14, threads), [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_buf, tl_out;
    float* buf = tl_buf.get(static_cast<size_t>((Cg - 1) * c_stride + g.span));
    float* out = tl_out.get(static_cast<size_t>(Kg * n_out));
    std::memset(buf, 0, sizeof(float) * ((Cg - 1) * c_stride + g.span));
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / s.groups, gi = task % s.groups;
      const float* xg = x + (n * s.C + gi * Cg) * HW;
      split_values<V>(g, xg, buf, g.phase, Cg, HW, c_stride);
      if (task + 1 < e) {  // fetch the next task's planes while this one is computed
        const int64_t m = (task + 1) / s.groups, gm = (task + 1) % s.groups;
        prefetch_plane(x + (m * s.C + gm * Cg) * HW, Cg * HW);
      }
      const float* wg = w + gi * Kg * Cg * RS;
      const float* bg = bias != nullptr ? bias + gi * Kg : nullptr;
      group_plane<V>(g, buf, c_stride, Cg, wg, Cg * RS, bg, Kg, out, n_out);
      float* yg = y + (n * s.K + gi * Kg) * PQ;
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t p = 0; p < g.P; ++p)
          copy<V>(out + k * n_out + p * g.Wm, yg + k * PQ + p * g.Q, g.Q);
    }
  });
}

// Backward data of a grouped convolution at a stride above 1, as direct products too. Phase
// (a, b) of the split input receives, from tap (r, t) of that phase (r*dh = u*sh + a,
// t*dw = v*sw + b), dbuf[i][j] += w * dy[i - u][j - v]: a stride-1 correlation of dy, which
// padded by U = Hm - P rows and V = Wm - Q columns on each side (Wd = Q + 2V columns) reads tap
// (u, v) at a fixed offset (U - u)*Wd + V - v from output position n = i*Wd + j. So each phase
// is grouped_fwd's block kernel over the group's Kg dy planes with that phase's taps (the
// weight transposed, c for k), into Cg phase planes that unsplit() then reads back into dx.
template <class V>
void grouped_bwd_data(const Conv2dShape& s, const float* w, const float* dy, float* dx,
                      int threads) {
  const Geom g = geom(s, V::L);
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q, U = g.Hm - s.P, Vc = g.Wm - s.Q;
  const int64_t Wd = s.Q + 2 * Vc, dplane = (s.P + 2 * U) * Wd;
  const int64_t n_out = round_up(g.Hm * Wd, V::L);
  // per phase slot: its taps' offsets into the padded dy, and the weight as [g][c][k][tap]
  std::vector<Geom> ph(static_cast<size_t>(g.slots), g);
  std::vector<std::vector<int64_t>> tap_of(static_cast<size_t>(g.slots));
  for (auto& x : ph) x.off.clear();
  for (int64_t r = 0; r < s.R; ++r)
    for (int64_t t = 0; t < s.S; ++t) {
      const int64_t dr = r * s.dil_h, dt = t * s.dil_w;
      const int64_t sl = g.slot[(dr % g.sh) * g.sw + dt % g.sw];
      ph[sl].off.push_back((U - dr / g.sh) * Wd + Vc - dt / g.sw);
      tap_of[sl].push_back(r * s.S + t);
    }
  std::vector<int64_t> wbase(static_cast<size_t>(g.slots) + 1, 0);
  for (int64_t sl = 0; sl < g.slots; ++sl)
    wbase[sl + 1] = wbase[sl] + s.groups * Cg * Kg * static_cast<int64_t>(tap_of[sl].size());
  std::vector<float> wt(static_cast<size_t>(wbase[g.slots]));
  for (int64_t sl = 0; sl < g.slots; ++sl) {
    const int64_t T = static_cast<int64_t>(tap_of[sl].size());
    for (int64_t gi = 0; gi < s.groups; ++gi)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t k = 0; k < Kg; ++k)
          for (int64_t j = 0; j < T; ++j)
            wt[wbase[sl] + ((gi * Cg + c) * Kg + k) * T + j] =
                w[((gi * Kg + k) * Cg + c) * RS + tap_of[sl][j]];
  }
  const int64_t tasks = s.N * s.groups, per_c = g.slots * g.phase;
  parallel_for(tasks, threads_for(tasks * Kg * Cg * RS * n_out, 1 << 14, threads),
               [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_dy, tl_out, tl_dbuf;
    const int64_t dsize = (Kg - 1) * dplane + dplane + n_out + Wd;  // slack past the last plane
    float* dyp = tl_dy.get(static_cast<size_t>(dsize));
    float* out = tl_out.get(static_cast<size_t>(Cg * n_out));
    float* dbuf = tl_dbuf.get(static_cast<size_t>(Cg * per_c));
    std::memset(dyp, 0, sizeof(float) * dsize);  // the padding stays zero
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / s.groups, gi = task % s.groups;
      const float* dyg = dy + (n * s.K + gi * Kg) * PQ;
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t p = 0; p < s.P; ++p)
          copy<V>(dyg + k * PQ + p * s.Q, dyp + k * dplane + (p + U) * Wd + Vc, s.Q);
      for (int64_t sl = 0; sl < g.slots; ++sl) {
        const int64_t T = static_cast<int64_t>(tap_of[sl].size());
        const float* ws = wt.data() + wbase[sl] + gi * Cg * Kg * T;
        group_plane<V>(ph[sl], dyp, dplane, Kg, ws, Kg * T, nullptr, Cg, out, n_out);
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t i = 0; i < g.Hm; ++i)
            copy<V>(out + c * n_out + i * Wd, dbuf + c * per_c + sl * g.phase + i * g.Wm, g.Wm);
      }
      for (int64_t c = 0; c < Cg; ++c)
        unsplit<V>(g, dbuf + c * per_c, dx + (n * s.C + gi * Cg + c) * HW);
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

// n images: the first image's split planes at buf, the next ones `buf` floats further; its dy
// planes `dy` floats apart.
struct Images {
  int64_t n, buf, dy;
};

template <class V, int kK, int kT>
void dot_block(const Geom& g, const Images& im, const float* buf, const float* dy,
               int64_t dy_stride, const int64_t* off, double* acc_out, int64_t acc_stride) {
  using reg = typename V::reg;
  reg acc[kK * kT];
#pragma GCC unroll 32
  for (int i = 0; i < kK * kT; ++i) acc[i] = V::zero();
  // one loop over every row's vectors, all loads masked (the rows are short: a loop per row
  // had the compiler move the accumulators to the stack and back at every row), over all the
  // images (a block's sums taken once: per image they cost as much as a small plane's FMAs)
  const int64_t items = im.n * g.P * ((g.Q + V::L - 1) / V::L);
  const float* row = buf;
  const float* drow = dy;
  for (int64_t it = 0, p = 0, q = 0; it < items; ++it) {
    const int64_t n = std::min<int64_t>(V::L, g.Q - q);
    reg bv[kT];
#pragma GCC unroll 8
    for (int j = 0; j < kT; ++j) bv[j] = V::load_first(row + q + off[j], n);
#pragma GCC unroll 4
    for (int i = 0; i < kK; ++i) {
      const reg dv = V::load_first(drow + q + i * dy_stride, n);
#pragma GCC unroll 8
      for (int j = 0; j < kT; ++j) acc[i * kT + j] = V::fma(dv, bv[j], acc[i * kT + j]);
    }
    q += V::L;
    if (q >= g.Q) {
      q = 0, row += g.Wm, drow += g.Q;
      if (++p == g.P) p = 0, row += im.buf - g.P * g.Wm, drow += im.dy - g.P * g.Q;
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < kK; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kT; ++j) acc_out[i * acc_stride + j] += V::sum(acc[i * kT + j]);
}

// Register blocks: 4 channels x 6 taps on 16-float vectors (24 accumulators, 6 plane loads and
// a dy load of the 32 registers), 2 x 4 on 8-float ones (13 of 16); the channels split as
// evenly as they go.
template <class V> constexpr int kGroupK = V::L == 16 ? 4 : 2;
template <class V> constexpr int kGroupT = V::L == 16 ? 6 : 4;

template <class V, int kK>
void dot_taps_of(const Geom& g, const Images& im, const float* buf, const float* dy, int64_t dy_stride,
                 double* acc, int64_t acc_stride) {
  even_blocks(static_cast<int64_t>(g.off.size()), kGroupT<V>, [&](int64_t t0, int64_t nt) {
    with_count<kGroupT<V>>(nt, [&](auto t) {
      dot_block<V, kK, decltype(t)::value>(g, im, buf, dy, dy_stride, g.off.data() + t0,
                                           acc + t0, acc_stride);
    });
  });
}

// dW of a grouped convolution (any stride, dilation, padding) and db. Each task is one input
// channel of one group, dW[group's k][c][:] summed over the images in order (and, for the
// group's first channel, db): the same bits for any thread count, and work for many threads
// even when the groups are few. The images' planes are split a chunk at a time (as many as
// fit in kChunk floats), each register block summing over the whole chunk.
constexpr int64_t kChunk = 1 << 16;

template <class V>
void grouped_weight(const Conv2dShape& s, const float* x, const float* dy, float* dwt, float* db,
                    int threads) {
  const Geom g = geom(s, V::L);
  const int64_t Cg = s.C / s.groups, Kg = s.K / s.groups, RS = s.R * s.S;
  const int64_t HW = s.H * s.W, PQ = s.P * s.Q, tasks = s.groups * Cg;
  const int64_t work = s.N * Kg * PQ * RS, planes = g.slots * g.phase;
  const int64_t chunk = std::max<int64_t>(1, std::min(s.N, kChunk / std::max<int64_t>(1, planes)));
  parallel_for(tasks, threads_for(tasks * work, 1 << 16, threads), [&](int64_t b, int64_t e) {
    static thread_local Scratch tl_plane;
    const int64_t span = (chunk - 1) * planes + g.span;
    float* buf = tl_plane.get(static_cast<size_t>(span));
    std::memset(buf, 0, sizeof(float) * span);
    std::vector<double> acc(static_cast<size_t>(Kg * RS)), bsum(static_cast<size_t>(Kg));
    for (int64_t task = b; task < e; ++task) {
      const int64_t gi = task / Cg, c = task % Cg;
      const bool bias = db != nullptr && c == 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(bsum.begin(), bsum.end(), 0.0);
      for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
        const Images im{std::min(chunk, s.N - n0), planes, s.K * PQ};
        const float* dyg = dy + (n0 * s.K + gi * Kg) * PQ;
        if (bias)
          for (int64_t n = 0; n < im.n; ++n)
            for (int64_t k = 0; k < Kg; ++k) bsum[k] += plane_sum<V>(dyg + n * im.dy + k * PQ, PQ);
        if (dwt == nullptr) continue;
        for (int64_t n = 0; n < im.n; ++n)  // each read Kg / kK times
          split_values<V>(g, x + ((n0 + n) * s.C + gi * Cg + c) * HW, buf + n * planes, g.phase);
        if (task + 1 < e && n0 + chunk >= s.N)  // the next task's planes, while this one runs
          for (int64_t n = 0; n < std::min(chunk, s.N); ++n)
            prefetch_plane(x + (n * s.C + (task + 1) / Cg * Cg + (task + 1) % Cg) * HW, HW);
        even_blocks(Kg, kGroupK<V>, [&](int64_t k0, int64_t nk) {
          with_count<kGroupK<V>>(nk, [&](auto k) {
            dot_taps_of<V, decltype(k)::value>(g, im, buf, dyg + k0 * PQ, PQ,
                                               acc.data() + k0 * RS, RS);
          });
        });
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
  if (dx != nullptr && s.stride_h == 1 && s.stride_w == 1 && mult == 1 &&
      conv2d_weight_finite(w, s.K * RS)) {
    // the adjoint of a stride-1 depthwise convolution is one: over dy, flipped kernel, padding
    // dil*(k-1) - pad (negative crops), producing H x W, in the forward's register blocks
    const Conv2dShape t = conv2d_transposed(s);  // (C == K)
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
