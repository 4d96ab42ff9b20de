// Pooling loops on the CPU: max (with argmax indices), average and adaptive average, forward and backward,
// computed directly in the input's layout.
//
//   NCHW:          one task per (n, c) plane; the window bounds of every output row and column are
//                  computed once per call (they are the same for every plane), so the inner loops
//                  only read, compare/add and write.
//   channels_last: one task per (n, output row) in forward, looping channels innermost over
//                  contiguous memory (vectorisable); backward tasks own (n, channel block) slices.
// Backward: each task owns a grad_input slice. Mostly a scatter: the task zeroes its slice, then
// adds every grad_output of that slice into the input positions its window read (max: the saved
// argmax only). Windows that tile the input write each input once instead (no zeroing), and the
// NCHW average backward of other windows gathers row by row (avg_backward_gather_rows). Tasks never
// share a grad_input element, so there are no races and the result does not depend on threads.
//
// This file is compiled twice, once per level of cpu_isa_target.h (pool2d_cpu_baseline.cpp,
// pool2d_cpu_avx2.cpp), and the entry points in pool2d_cpu.cpp pick the AVX2 build where the CPU
// has it. Each build exports one factory, pool2d_cpu_loops_<level>(), returning its loops;
// everything else has internal linkage.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu_reduce.h"
#include "pool2d/pool2d_cpu_loops_table.h"
#include "pool2d/pool2d_window.h"

#include "cpu_isa_target.h"  // last: the code below is compiled for this build's level

// gcc turns a zeroing loop into memset / `rep stos` (loop distribution), and the sums then go
// through memory instead of staying in registers; initialising from the first pixel instead makes
// gcc copy it through the stack. This attribute keeps the plain zeroing loop (figures:
// benchmarks/NOTES.md, "Figures moved out of the code").
#if defined(__GNUC__) && !defined(__clang__)
#define CNNEXT_NO_MEMSET_IDIOM __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CNNEXT_NO_MEMSET_IDIOM
#endif

namespace cnnext {
namespace {

// Below this many elements of work a task is not worth a thread.
constexpr int64_t kMinTaskWork = 32768;
int64_t grain_for(int64_t work_per_task) { return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(work_per_task, 1)); }

// Runs fn(n, c_begin, c_end) over (sample, channel block) slices, enough of them to occupy every
// thread even for a small batch. Used by the channels_last backward scatters and global pooling.
template <typename Fn>
void for_channel_slices(int64_t batch, int64_t channels, const Fn& fn) {
  const int64_t threads = at::get_num_threads();
  const int64_t blocks_per_sample = batch >= threads ? 1 : ceil_div(threads, std::max<int64_t>(batch, 1));
  const int64_t block = ceil_div(channels, blocks_per_sample);
  const int64_t blocks = ceil_div(channels, block);
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c0 = (task % blocks) * block;
      fn(task / blocks, c0, std::min(channels, c0 + block));
    }
  });
}

// The window of every output position along one axis, computed once per call.
template <typename Fn>
std::vector<Span> spans_of(int64_t out_size, const Fn& fn) {
  std::vector<Span> spans(out_size);
  for (int64_t o = 0; o < out_size; ++o) spans[o] = fn(o);
  return spans;
}

// Where window tap t of output o reads along one axis, in a layout split by stride phase: phase
// (t * dilation - pad) mod stride, at index o + shift (may be negative: the padding).
struct PhaseTap {
  int64_t phase, shift;
};
std::vector<PhaseTap> phase_taps(int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  std::vector<PhaseTap> taps(kernel);
  for (int64_t t = 0; t < kernel; ++t) {
    const int64_t offset = t * dilation - pad;
    const int64_t phase = ((offset % stride) + stride) % stride;
    taps[t] = {phase, (offset - phase) / stride};
  }
  return taps;
}

// Window column u of every output column: the outputs it lands inside the input for, the input
// column of output 0 (input column = o * stride + offset), and where PhasedRow keeps those inputs:
// phase offset mod stride, at o + shift. Computed once per call: the divisions cost more than the
// row loops they would sit in.
struct ColumnTap {
  int64_t lo, hi, offset, phase, shift;
};
std::vector<ColumnTap> column_taps(const Pool2dGeometry& g, int64_t dilation) {
  const int64_t stride = std::max<int64_t>(g.stride_w, 1);  // adaptive pooling has no stride
  const auto phases = phase_taps(g.kernel_w, stride, g.pad_w, dilation);
  std::vector<ColumnTap> taps(g.kernel_w);
  for (int64_t u = 0; u < g.kernel_w; ++u) {
    const auto [lo, hi] = tap_output_range(g.out_w, g.in_w, stride, g.pad_w, u * dilation);
    taps[u] = {lo, hi, u * dilation - g.pad_w, phases[u].phase, phases[u].shift};
  }
  return taps;
}

// dst[p * pitch + j] = line[j * stride + p] for every column of the line with j < limit: a row
// split by stride phase. The stride-2 split is a two-way deinterleave the compiler vectorises.
template <typename scalar_t>
void split_into_phases(const scalar_t* __restrict__ line, int64_t width, int64_t stride, scalar_t* __restrict__ dst,
                       int64_t pitch, int64_t limit) {
  if (stride == 1) {
    std::copy(line, line + std::min(width, limit), dst);
    return;
  }
  const int64_t full = std::min(width / stride, limit);
  if (stride == 2) {
    for (int64_t j = 0; j < full; ++j) {
      dst[j] = line[2 * j];
      dst[pitch + j] = line[2 * j + 1];
    }
  } else {
    for (int64_t j = 0; j < full; ++j)
      for (int64_t p = 0; p < stride; ++p) dst[p * pitch + j] = line[j * stride + p];
  }
  if (full < limit)  // a last, partial group of columns
    for (int64_t p = 0; p < width - full * stride; ++p) dst[p * pitch + full] = line[full * stride + p];
}

// One input row split by stride phase, so that every window column reads contiguous memory:
// with stride s, phase p holds line[j * s + p] at j, and window column `tap` of output o reads
// phase (tap.offset mod s) at o + shift. Stride 1 uses the row itself. Strided loads inside the
// compare/add loops had kept those scalar.
template <typename scalar_t>
class PhasedRow {
 public:
  PhasedRow(int64_t width, int64_t stride)
      : stride_(stride), phase_len_(ceil_div(width, stride)), buffer_(stride > 1 ? stride * phase_len_ : 0) {}

  void load(const scalar_t* line, int64_t width) {
    line_ = line;
    if (stride_ > 1) split_into_phases(line, width, stride_, buffer_.data(), phase_len_, phase_len_);
  }

  // Inputs of a window column: output o reads column(tap)[o + tap.shift].
  const scalar_t* column(const ColumnTap& tap) const {
    return stride_ == 1 ? line_ : buffer_.data() + tap.phase * phase_len_;
  }

 private:
  int64_t stride_, phase_len_;
  std::vector<scalar_t> buffer_;
  const scalar_t* line_ = nullptr;
};

// NCHW planes work row by row: for each output row, each window row and each window column, one
// loop over the output columns updates a row of accumulators (vectorisable), instead of a short
// window loop per output element.

// ---------------------------------------------------------------------------------------------
// Max pooling

template <typename scalar_t>
inline bool replaces_max(scalar_t v, scalar_t best) {
  return (v > best) | (v != v);  // NaN wins, as in native max pooling; branch-free for vectorising
}

// channels_last windows go through the channels in blocks of kChannelBlock: a block's running
// maxima or sums (and argmax) stay in registers across the window's pixels instead of
// round-tripping through memory once per pixel. kLen is the block length when known at compile
// time (every block but a short last one), 0 when it is `len`.
constexpr int64_t kChannelBlock = 32;

// What the argmax is recorded as (Argmax in pool2d.h): index_t void = not tracked, int64_t = plane
// position ih * W + iw, uint8_t = window tap t * kernel_w + u.
template <typename index_t>
constexpr bool kTracksArgmax = !std::is_void_v<index_t>;
template <typename index_t>
constexpr bool kRecordsTaps = std::is_same_v<index_t, uint8_t>;

// Maximum (and argmax, as index_t records it) of channels [c0, c0 + len) over the window's pixels
// into best_out and arg_out [c0, c0 + len); `x` is one sample (H, W, C), position(t, u) the plane
// index of window tap (t, u), `first` the argmax kept if nothing beats -inf. The argmax runs in
// int32, beside the float lanes.
template <int64_t kLen, typename index_t, typename scalar_t, typename Position>
void max_pixel_block(const scalar_t* x, scalar_t* __restrict__ best_out, index_t* __restrict__ arg_out, Span rows,
                     Span cols, const Position& position, int64_t kernel_w, int64_t C, int64_t c0, int64_t len,
                     int32_t first) {
  constexpr int64_t kCapacity = kLen ? kLen : kChannelBlock;
  const int64_t n = kLen ? kLen : len;
  scalar_t best[kCapacity];
  int32_t arg[kCapacity];
  for (int64_t k = 0; k < n; ++k) {
    best[k] = -std::numeric_limits<scalar_t>::infinity();
    arg[k] = first;
  }
  for (int64_t t = rows.lo; t < rows.hi; ++t) {  // window rows, then columns: row-major, as native
    for (int64_t u = cols.lo; u < cols.hi; ++u) {
      const int32_t index = position(t, u);
      const int32_t label = kRecordsTaps<index_t> ? static_cast<int32_t>(t * kernel_w + u) : index;
      const scalar_t* __restrict__ src = x + index * C + c0;
      for (int64_t k = 0; k < n; ++k) {
        const bool take = replaces_max(src[k], best[k]);
        best[k] = take ? src[k] : best[k];
        if constexpr (kTracksArgmax<index_t>) arg[k] = take ? label : arg[k];
      }
    }
  }
  for (int64_t k = 0; k < n; ++k) best_out[c0 + k] = best[k];
  if constexpr (kTracksArgmax<index_t>)
    for (int64_t k = 0; k < n; ++k) arg_out[c0 + k] = static_cast<index_t>(arg[k]);
}

// Sum of channels [c0, c0 + len) over the window's pixels (rows x cols of one sample (H, W, C)),
// times `scale`, into out[c0, c0 + len).
template <int64_t kLen, typename scalar_t, typename opmath_t>
CNNEXT_NO_MEMSET_IDIOM void average_pixel_block(const scalar_t* x, scalar_t* out, Span rows, Span cols, int64_t W,
                                                int64_t C, int64_t c0, int64_t len, opmath_t scale) {
  constexpr int64_t kCapacity = kLen ? kLen : kChannelBlock;
  const int64_t n = kLen ? kLen : len;
  opmath_t sum[kCapacity];
  for (int64_t k = 0; k < n; ++k) sum[k] = 0;
  for (int64_t ih = rows.lo; ih < rows.hi; ++ih) {
    for (int64_t iw = cols.lo; iw < cols.hi; ++iw) {
      const scalar_t* __restrict__ src = x + (ih * W + iw) * C + c0;
      for (int64_t k = 0; k < n; ++k) sum[k] += src[k];
    }
  }
  for (int64_t k = 0; k < n; ++k) out[c0 + k] = static_cast<scalar_t>(sum[k] * scale);
}

// Calls block(c0) for every whole block and tail(c0, len) for a short last one.
template <typename Block, typename Tail>
void for_channel_blocks(int64_t C, const Block& block, const Tail& tail) {
  int64_t c0 = 0;
  for (; c0 + kChannelBlock <= C; c0 += kChannelBlock) block(c0);
  if (c0 < C) tail(c0, C - c0);
}

// 2x2 windows at stride 2 without padding or dilation, each inside the input (the pooling
// between CNN stages): the windows tile the input, so NCHW rows are read, or written, in pairs.
inline bool tiles_in_pairs(const Pool2dGeometry& g) {
  return g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0 &&
         g.dil_h == 1 && g.dil_w == 1 && 2 * g.out_h <= g.in_h && 2 * g.out_w <= g.in_w;
}

// One output row of 2x2 windows tiling input rows a and b: the maxima into best and, with
// kWithIndices, the winning taps (0..3, row-major) into winner. Branch-free and in native's tap
// order: NaN wins, ties keep the first maximum.
template <bool kWithIndices, typename scalar_t>
void max_of_pairs_row(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ best,
                      int32_t* __restrict__ winner, int64_t OW) {
  for (int64_t ow = 0; ow < OW; ++ow) {
    scalar_t m = a[2 * ow];
    int32_t w = 0;
    const scalar_t rest[3] = {a[2 * ow + 1], b[2 * ow], b[2 * ow + 1]};
    for (int32_t k = 0; k < 3; ++k) {
      const bool take = replaces_max(rest[k], m);
      m = take ? rest[k] : m;
      if constexpr (kWithIndices) w = take ? k + 1 : w;
    }
    best[ow] = m;
    if constexpr (kWithIndices) winner[ow] = w;
  }
}

// best[i] = max(best[i], v[i]) with "greater or NaN replaces" (native's order rule), and, with
// winners, win[i] = label + (labels ? labels[i] : 0) where v[i] replaced. Restrict parameters so
// gcc vectorises the float and int32 lanes together.
template <bool kWithWinners, typename scalar_t>
void fold_max(scalar_t* __restrict__ best, int32_t* __restrict__ win, const scalar_t* __restrict__ v,
              const int32_t* __restrict__ labels, int32_t label, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const bool take = replaces_max(v[i], best[i]);
    best[i] = take ? v[i] : best[i];
    if constexpr (kWithWinners) win[i] = take ? label + (labels ? labels[i] : 0) : win[i];
  }
}

// Max pooling of whole NCHW planes in long loops, for windows other than the 2x2 tiling. The plane
// is copied once into a layout split by row and column stride phase and padded with -inf, where
// every window tap is one constant offset for all outputs; the window is then folded along columns
// over all rows at once, and along rows over all outputs at once: long loops, where per-output-row
// loops (16 outputs on a 32x32 map) are mostly loop overhead (figures: NOTES.md, "Figures moved
// out of the code").
// Folding each row's fold in row order gives the row-major fold of the window: with "greater or
// NaN replaces", both keep the first maximum and the last NaN.
template <typename scalar_t, bool kWithWinners>
class MaxPlaneFold {
 public:
  explicit MaxPlaneFold(const Pool2dGeometry& g)
      : g_(g),
        rows_(phase_taps(g.kernel_h, g.stride_h, g.pad_h, g.dil_h)),
        cols_(phase_taps(g.kernel_w, g.stride_w, g.pad_w, g.dil_w)) {
    const auto reach = [](const std::vector<PhaseTap>& taps, int64_t& before, int64_t& after) {
      before = after = 0;
      for (const PhaseTap& t : taps) {
        before = std::max(before, -t.shift);
        after = std::max(after, t.shift);
      }
    };
    int64_t rows_after = 0, cols_after = 0;
    reach(rows_, row_pad_, rows_after);
    reach(cols_, col_pad_, cols_after);
    pitch_ = col_pad_ + g.out_w + cols_after;
    phase_rows_ = row_pad_ + std::max(ceil_div(g.in_h, g.stride_h), g.out_h + rows_after);
    folded_size_ = g.stride_h * phase_rows_ * pitch_;
    phase_size_ = folded_size_ + pitch_;  // the column taps read up to a row past the end
    packed_.resize(g.stride_w * phase_size_);
    row_best_.resize(folded_size_);
    best_.resize(g.out_h * pitch_);
    if constexpr (kWithWinners) {
      row_win_.resize(folded_size_);
      win_.resize(g.out_h * pitch_);
    }
  }

  // Folds the windows of plane x (H, W).
  void run(const scalar_t* x) {
    pack(x);
    for (int64_t u = 0; u < g_.kernel_w; ++u) {
      const scalar_t* v = packed_.data() + cols_[u].phase * phase_size_ + col_pad_ + cols_[u].shift;
      if (u == 0) {  // against -inf the first tap always "replaces"
        std::copy(v, v + folded_size_, row_best_.data());
        if constexpr (kWithWinners) std::fill(row_win_.begin(), row_win_.end(), 0);
      } else {
        fold_max<kWithWinners>(row_best_.data(), row_win_.data(), v, nullptr, static_cast<int32_t>(u), folded_size_);
      }
    }
    const int64_t outputs = g_.out_h * pitch_;
    for (int64_t t = 0; t < g_.kernel_h; ++t) {
      const int64_t start = (rows_[t].phase * phase_rows_ + row_pad_ + rows_[t].shift) * pitch_;
      const int32_t label = static_cast<int32_t>(t * g_.kernel_w);
      if (t == 0) {
        std::copy(row_best_.data() + start, row_best_.data() + start + outputs, best_.data());
        if constexpr (kWithWinners) std::copy(row_win_.data() + start, row_win_.data() + start + outputs, win_.data());
      } else {
        fold_max<kWithWinners>(best_.data(), win_.data(), row_best_.data() + start, row_win_.data() + start, label,
                               outputs);
      }
    }
  }

  // Row oh of the maxima, and of the winning taps t * kernel_w + u (meaningless where the maximum is
  // -inf: no tap beat -inf, the caller names the window's first tap inside the input).
  const scalar_t* best(int64_t oh) const { return best_.data() + oh * pitch_; }
  const int32_t* winners(int64_t oh) const { return win_.data() + oh * pitch_; }

 private:
  // Row ih goes to row phase ih mod sh, position row_pad + ih / sh; column iw to column phase
  // iw mod sw, position col_pad + iw / sw; everything else (the padding) is -inf.
  void pack(const scalar_t* x) {
    std::fill(packed_.begin(), packed_.end(), -std::numeric_limits<scalar_t>::infinity());
    const int64_t H = g_.in_h, W = g_.in_w, sh = g_.stride_h, sw = g_.stride_w;
    const int64_t width = pitch_ - col_pad_;  // columns a window can read, per phase
    // Every input row fits: phase_rows_ >= row_pad_ + ceil(H / sh).
    for (int64_t ih = 0, q = 0, row = row_pad_; ih < H; ++ih) {
      split_into_phases(x + ih * W, W, sw, packed_.data() + (q * phase_rows_ + row) * pitch_ + col_pad_, phase_size_,
                        width);
      if (++q == sh) {  // next row phase, or back to phase 0 one row down
        q = 0;
        ++row;
      }
    }
  }

  const Pool2dGeometry& g_;
  std::vector<PhaseTap> rows_, cols_;
  int64_t row_pad_ = 0, col_pad_ = 0, pitch_ = 0, phase_rows_ = 0, folded_size_ = 0, phase_size_ = 0;
  std::vector<scalar_t> packed_, row_best_, best_;
  std::vector<int32_t> row_win_, win_;
};

// winner[i] = first[i] where best[i] is -inf (no tap beat -inf: the window's first tap inside the
// input, as native), else won[i]. Both loaded unconditionally: written as `c ? first[i] : won[i]`,
// gcc used masked loads, which are slow on AMD (in perf, ~20% of the forward's time outside the
// fold).
template <typename scalar_t>
void pick_winners(const scalar_t* __restrict__ best, const int32_t* __restrict__ won,
                  const int32_t* __restrict__ first, int32_t* __restrict__ winner, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t if_none = first[i], if_any = won[i];
    winner[i] = best[i] == -std::numeric_limits<scalar_t>::infinity() ? if_none : if_any;
  }
}

// taps[i] = winner[i] as uint8. A function with restrict parameters: inline, gcc assumed the
// uint8 stores could alias everything (char aliasing) and reloaded the source pointer per element.
inline void narrow_taps(const int32_t* __restrict__ winner, uint8_t* __restrict__ taps, int64_t n) {
  for (int64_t i = 0; i < n; ++i) taps[i] = static_cast<uint8_t>(winner[i]);
}

// index_t void (inference: nothing to save for backward) skips the argmax bookkeeping.
template <typename index_t, typename scalar_t>
void max_forward(const scalar_t* x, scalar_t* out, index_t* indices, const Pool2dGeometry& g, bool channels_last) {
  constexpr bool kWithIndices = kTracksArgmax<index_t>;
  const MaxAxis rows = max_rows(g), cols = max_cols(g);
  const auto row_taps = spans_of(g.out_h, [&](int64_t o) { return rows.taps(o); });
  const auto col_taps = spans_of(g.out_w, [&](int64_t o) { return cols.taps(o); });
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  // Argmax of a window that never beats -inf: its first tap inside the input, as native.
  std::vector<int32_t> first_col(OW);
  for (int64_t ow = 0; ow < OW; ++ow) first_col[ow] = static_cast<int32_t>(cols.position(ow, col_taps[ow].lo));

  if (!channels_last) {
    const int64_t kw = g.kernel_w;
    // Input offset of tap t * kw + u from its window's origin (oh * sh - ph, ow * sw - pw).
    std::vector<int64_t> tap_offset(g.kernel_h * kw);
    for (int64_t t = 0; t < g.kernel_h; ++t)
      for (int64_t u = 0; u < kw; ++u) tap_offset[t * kw + u] = t * g.dil_h * W + u * g.dil_w;
    const bool pairs = tiles_in_pairs(g);
    // The winner of a window where nothing beats -inf: its first tap inside the input, as native.
    std::vector<int32_t> first_tap(pairs ? 0 : OH * OW);
    for (int64_t oh = 0; oh < OH && !pairs; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        first_tap[oh * OW + ow] = static_cast<int32_t>(row_taps[oh].lo * kw + col_taps[ow].lo);
    at::parallel_for(0, g.batch * C, grain_for(H * W), [&](int64_t begin, int64_t end) {
      // Per output row: the winning tap t * kw + u, turned into the recorded argmax at the end.
      std::vector<int32_t> winner_row(OW);
      const auto fold = pairs ? nullptr : std::make_unique<MaxPlaneFold<scalar_t, kWithIndices>>(g);
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* src = x + plane * H * W;  // (H, W)
        if (!pairs) fold->run(src);
        for (int64_t oh = 0; oh < OH; ++oh) {
          scalar_t* __restrict__ best = out + (plane * OH + oh) * OW;
          int32_t* __restrict__ winner = winner_row.data();
          if (pairs) {  // the two rows in one pass; a loop over window taps would pass over them four times
            max_of_pairs_row<kWithIndices>(src + 2 * oh * W, src + (2 * oh + 1) * W, best, winner, OW);
          } else {
            const scalar_t* __restrict__ folded = fold->best(oh);
            std::copy(folded, folded + OW, best);
            if constexpr (kWithIndices) {
              pick_winners(folded, fold->winners(oh), first_tap.data() + oh * OW, winner, OW);
            }
          }
          if constexpr (kRecordsTaps<index_t>) {
            narrow_taps(winner, indices + (plane * OH + oh) * OW, OW);
          } else if constexpr (kWithIndices) {
            int64_t* argmax = indices + (plane * OH + oh) * OW;
            const int64_t origin = rows.position(oh, 0) * W + cols.position(0, 0);
            for (int64_t ow = 0; ow < OW; ++ow) argmax[ow] = origin + ow * g.stride_w + tap_offset[winner[ow]];
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, g.batch * OH, grain_for(OW * C * g.kernel_h * g.kernel_w), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / OH, oh = task % OH;
      const Span r = row_taps[oh];
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Span c = col_taps[ow];
        scalar_t* best = out + ((n * OH + oh) * OW + ow) * C;  // (C)
        index_t* arg = nullptr;                                 // (C)
        if constexpr (kWithIndices) arg = indices + ((n * OH + oh) * OW + ow) * C;
        const int32_t first = kRecordsTaps<index_t> ? static_cast<int32_t>(r.lo * g.kernel_w + c.lo)
                                                    : static_cast<int32_t>(rows.position(oh, r.lo) * W) + first_col[ow];
        // Plane index of window tap (t, u).
        const auto position = [&](int64_t t, int64_t u) {
          return static_cast<int32_t>(rows.position(oh, t) * W + cols.position(ow, u));
        };
        const scalar_t* sample = x + n * H * W * C;
        for_channel_blocks(
            C,
            [&](int64_t c0) {
              max_pixel_block<kChannelBlock>(sample, best, arg, r, c, position, g.kernel_w, C, c0, 0, first);
            },
            [&](int64_t c0, int64_t len) {
              max_pixel_block<0>(sample, best, arg, r, c, position, g.kernel_w, C, c0, len, first);
            });
      }
    }
  });
}

void check_index(int64_t index, int64_t plane_size) {
  TORCH_CHECK(index >= 0 && index < plane_size, "_max_pool2d_backward: index ", index,
              " is outside the input plane of ", plane_size, " elements");
}

// Turns uint8 window taps back into plane positions: tap t * kernel_w + u of the window whose
// top-left tap sits at (row0, col0) (possibly in the padding) reads (row0 + t * dil_h, col0 + u * dil_w).
class TapDecoder {
 public:
  explicit TapDecoder(const Pool2dGeometry& g) : g_(g), row_(g.kernel_h * g.kernel_w), col_(row_.size()) {
    for (int64_t t = 0; t < g.kernel_h; ++t)
      for (int64_t u = 0; u < g.kernel_w; ++u) {
        row_[t * g.kernel_w + u] = t * g.dil_h;
        col_[t * g.kernel_w + u] = u * g.dil_w;
      }
  }
  int64_t row0(int64_t oh) const { return oh * g_.stride_h - g_.pad_h; }
  int64_t col0(int64_t ow) const { return ow * g_.stride_w - g_.pad_w; }

  // The plane position `tap` names, checked: taps that did not come from forward (outside the
  // kernel, or landing in the padding) are an error rather than a stray write.
  int64_t position(int64_t row0, int64_t col0, uint8_t tap) const {
    const bool in_kernel = tap < static_cast<int64_t>(row_.size());
    const int64_t ih = row0 + (in_kernel ? row_[tap] : 0), iw = col0 + (in_kernel ? col_[tap] : 0);
    TORCH_CHECK(in_kernel && ih >= 0 && ih < g_.in_h && iw >= 0 && iw < g_.in_w, "_max_pool2d_backward: window tap ",
                int(tap), " of the ", g_.kernel_h, "x", g_.kernel_w, " window at (", row0, ", ", col0,
                ") is outside the kernel or the ", g_.in_h, "x", g_.in_w, " input");
    return ih * g_.in_w + iw;
  }

 private:
  const Pool2dGeometry& g_;
  std::vector<int64_t> row_, col_;
};

// v where `keep`, else +0, without a branch (argmax taps are random: branches mispredicted and
// took 3x the time) and without v * 0 (NaN for an infinite v).
template <typename scalar_t>
inline scalar_t keep_if(scalar_t v, bool keep) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  bits_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= bits_t{0} - static_cast<bits_t>(keep);
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// One output row of 2x2 windows that tile rows a and b: each gradient goes to its window's
// argmax tap, zeros to the other three; every input is written once (no zero fill, no scatter).
template <typename scalar_t>
void scatter_pairs_row(const scalar_t* __restrict__ dy, const uint8_t* __restrict__ taps, scalar_t* __restrict__ a,
                       scalar_t* __restrict__ b, int64_t OW) {
  uint8_t worst = 0;
  for (int64_t ow = 0; ow < OW; ++ow) {
    const uint8_t tap = taps[ow];
    const scalar_t v = dy[ow];
    worst = std::max(worst, tap);
    a[2 * ow] = keep_if(v, tap == 0);
    a[2 * ow + 1] = keep_if(v, tap == 1);
    b[2 * ow] = keep_if(v, tap == 2);
    b[2 * ow + 1] = keep_if(v, tap == 3);
  }
  TORCH_CHECK(worst < 4, "_max_pool2d_backward: window tap ", int(worst), " is outside the 2x2 kernel's 4 taps");
}

// channels_last backward from window taps, vectorised over the contiguous channels: each tap k of
// a window that lands in the input takes, channel by channel, the gradient where the saved tap is k
// and +0 elsewhere, a branch-free select the compiler vectorises (a scattered write per channel
// stays scalar).
// Windows that tile the input write every input once; overlapping ones add into a zeroed slice.
// `hits` counts the taps that matched per channel: anything but one means the taps did not come
// from forward, reported as the decoder words it.
template <typename scalar_t>
void max_backward_taps_channels_last(const scalar_t* dy, const uint8_t* taps, scalar_t* dx, const Pool2dGeometry& g,
                                     const TapDecoder& decoder) {
  const MaxAxis rows = max_rows(g), cols = max_cols(g);
  const auto row_taps = spans_of(g.out_h, [&](int64_t o) { return rows.taps(o); });
  const auto col_taps = spans_of(g.out_w, [&](int64_t o) { return cols.taps(o); });
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  const bool assign = tiles_in_pairs(g) && 2 * OH == H && 2 * OW == W;  // every input in exactly one window
  for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
    const int64_t len = c1 - c0;
    std::vector<uint8_t> hit_counts(len);
    scalar_t* dst = dx + n * H * W * C + c0;  // (H, W, C), from channel c0
    if (!assign)
      for (int64_t i = 0; i < H * W; ++i) std::fill(dst + i * C, dst + i * C + len, scalar_t(0));
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Span r = row_taps[oh];
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Span c = col_taps[ow];
        const int64_t o = (n * OH + oh) * OW + ow;
        const scalar_t* __restrict__ src = dy + o * C + c0;
        const uint8_t* __restrict__ tap = taps + o * C + c0;
        uint8_t* __restrict__ hits = hit_counts.data();
        std::fill(hits, hits + len, uint8_t(0));
        for (int64_t t = r.lo; t < r.hi; ++t) {
          for (int64_t u = c.lo; u < c.hi; ++u) {
            const uint8_t k = static_cast<uint8_t>(t * g.kernel_w + u);
            scalar_t* __restrict__ pixel = dst + (rows.position(oh, t) * W + cols.position(ow, u)) * C;
            if (assign) {
              for (int64_t ch = 0; ch < len; ++ch) {
                pixel[ch] = keep_if(src[ch], tap[ch] == k);
                hits[ch] += tap[ch] == k;
              }
            } else {
              for (int64_t ch = 0; ch < len; ++ch) {
                pixel[ch] += keep_if(src[ch], tap[ch] == k);
                hits[ch] += tap[ch] == k;
              }
            }
          }
        }
        uint8_t stray = 0;
        for (int64_t ch = 0; ch < len; ++ch) stray |= hits[ch] ^ 1;
        if (stray != 0) {
          for (int64_t ch = 0; ch < len; ++ch)
            if (hits[ch] != 1) decoder.position(decoder.row0(oh), decoder.col0(ow), tap[ch]);  // throws
          TORCH_CHECK(false, "_max_pool2d_backward: window taps matched no input");  // unreachable
        }
      }
    }
  });
}

template <typename index_t, typename scalar_t>
void max_backward(const scalar_t* dy, const index_t* indices, scalar_t* dx, const Pool2dGeometry& g,
                  bool channels_last) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels, HW = H * W, OHW = OH * OW;
  const TapDecoder decoder(g);
  if (!channels_last) {
    // A scatter per output (a whole-plane select in forward's phase layout, as MaxPlaneFold, is no
    // faster here: NOTES.md, "Figures moved out of the code").
    const bool pairs = kRecordsTaps<index_t> && tiles_in_pairs(g);
    at::parallel_for(0, g.batch * C, grain_for(HW), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        scalar_t* dst = dx + plane * HW;
        // Pairs write every input of their rows; only odd sizes leave a row or column to zero.
        if (!pairs || 2 * OH != H || 2 * OW != W) std::fill(dst, dst + HW, scalar_t(0));
        const scalar_t* src = dy + plane * OHW;
        const index_t* argmax = indices + plane * OHW;
        if constexpr (kRecordsTaps<index_t>) {
          for (int64_t oh = 0; oh < OH; ++oh) {
            const scalar_t* row_dy = src + oh * OW;
            const uint8_t* row_taps = argmax + oh * OW;
            if (pairs) {
              scatter_pairs_row(row_dy, row_taps, dst + 2 * oh * W, dst + (2 * oh + 1) * W, OW);
              continue;
            }
            const int64_t row0 = decoder.row0(oh);
            for (int64_t ow = 0; ow < OW; ++ow)
              dst[decoder.position(row0, decoder.col0(ow), row_taps[ow])] += row_dy[ow];
          }
        } else {
          for (int64_t o = 0; o < OHW; ++o) {
            check_index(argmax[o], HW);
            dst[argmax[o]] += src[o];
          }
        }
      }
    });
    return;
  }
  if constexpr (kRecordsTaps<index_t>) {
    max_backward_taps_channels_last(dy, indices, dx, g, decoder);
  } else {
    for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
      scalar_t* dst = dx + n * HW * C;  // (HW, C)
      for (int64_t i = 0; i < HW; ++i) std::fill(dst + i * C + c0, dst + i * C + c1, scalar_t(0));
      for (int64_t o = 0; o < OHW; ++o) {
        const scalar_t* src = dy + (n * OHW + o) * C;
        const index_t* argmax = indices + (n * OHW + o) * C;
        for (int64_t ch = c0; ch < c1; ++ch) {
          check_index(argmax[ch], HW);
          dst[argmax[ch] * C + ch] += src[ch];
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Average and adaptive-average pooling (AvgAxis::kernel == 0 means adaptive). The NCHW row loops
// need a fixed window width, so adaptive NCHW pooling sums each window directly instead.

// The windows of one average-pooling call, computed once for every plane: each output row's and
// column's input span, and 1 / divisor of every output (0 where a window is empty) so the plane
// loops multiply (vectorised) instead of dividing per element (rounding differs from a true
// division by at most one ulp).
template <typename value_t>
struct AvgWindows {
  std::vector<Span> rows, cols;
  std::vector<value_t> scale;  // (OH, OW)
  bool adaptive;

  AvgWindows(const Pool2dGeometry& g, AvgDivisor divisor) {
    const AvgAxis row_axis = avg_rows(g), col_axis = avg_cols(g);
    rows = spans_of(g.out_h, [&](int64_t o) { return row_axis.window(o); });
    cols = spans_of(g.out_w, [&](int64_t o) { return col_axis.window(o); });
    adaptive = row_axis.kernel == 0;
    scale.resize(rows.size() * cols.size());
    for (size_t oh = 0; oh < rows.size(); ++oh) {
      for (size_t ow = 0; ow < cols.size(); ++ow) {
        const int64_t d = divisor(rows[oh], cols[ow]);
        scale[oh * cols.size() + ow] = d == 0 ? value_t(0) : value_t(1) / static_cast<value_t>(d);
      }
    }
  }
};

template <typename scalar_t>
void avg_forward(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g, AvgDivisor divisor, bool channels_last) {
  using opmath_t = at::opmath_type<scalar_t>;
  const AvgWindows<opmath_t> windows(g, divisor);
  // Named references, not a structured binding: lambdas may not capture those before C++20.
  const auto& row_windows = windows.rows;
  const auto& col_windows = windows.cols;
  const auto& scale = windows.scale;
  const bool adaptive = windows.adaptive;
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;

  if (!channels_last && adaptive && OH == 1 && OW == 1) {  // global pooling: one sum per plane
    // Four planes at a time: four independent streams of loads keep more memory requests in flight
    // than one plane's.
    const int64_t HW = H * W;
    const opmath_t plane_scale = scale[0];
    at::parallel_for(0, g.batch * C, grain_for(HW), [&](int64_t begin, int64_t end) {
      int64_t plane = begin;
      for (; plane + 4 <= end; plane += 4) {
        const scalar_t* src = x + plane * HW;
        opmath_t sums[4][8] = {};
        int64_t i = 0;
        for (; i + 8 <= HW; i += 8)
          for (int p = 0; p < 4; ++p)
            for (int j = 0; j < 8; ++j) sums[p][j] += src[p * HW + i + j];
        for (int p = 0; p < 4; ++p) {
          opmath_t total = 0;
          for (int j = 0; j < 8; ++j) total += sums[p][j];
          for (int64_t k = i; k < HW; ++k) total += src[p * HW + k];
          out[plane + p] = static_cast<scalar_t>(total * plane_scale);
        }
      }
      for (; plane < end; ++plane) {
        out[plane] = static_cast<scalar_t>(sum_lanes<opmath_t>(x + plane * HW, HW) * plane_scale);
      }
    });
    return;
  }
  if (channels_last && adaptive && OH == 1 && OW == 1) {  // global pooling: one pass over each sample
    // All of a slice's channel sums in one buffer (L1-sized): the sample is read once, in memory
    // order. Blocks of channels in registers (below) would read it once per block.
    const opmath_t plane_scale = scale[0];
    for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
      const int64_t len = c1 - c0;
      std::vector<opmath_t> sums(len, opmath_t(0));
      opmath_t* __restrict__ acc = sums.data();
      const scalar_t* sample = x + n * H * W * C + c0;
      // Four quarters of the sample side by side: four load streams (as for NCHW planes above).
      const int64_t quarter = H * W / 4;
      for (int64_t i = 0; i < quarter; ++i) {
        const scalar_t* __restrict__ p0 = sample + i * C;
        const scalar_t* __restrict__ p1 = p0 + quarter * C;
        const scalar_t* __restrict__ p2 = p1 + quarter * C;
        const scalar_t* __restrict__ p3 = p2 + quarter * C;
        for (int64_t ch = 0; ch < len; ++ch)
          acc[ch] += (opmath_t(p0[ch]) + opmath_t(p1[ch])) + (opmath_t(p2[ch]) + opmath_t(p3[ch]));
      }
      for (int64_t i = 4 * quarter; i < H * W; ++i) {
        const scalar_t* __restrict__ pixel = sample + i * C;
        for (int64_t ch = 0; ch < len; ++ch) acc[ch] += pixel[ch];
      }
      for (int64_t ch = 0; ch < len; ++ch) out[n * C + c0 + ch] = static_cast<scalar_t>(acc[ch] * plane_scale);
    });
    return;
  }
  if (!channels_last) {
    const auto taps = column_taps(g, 1);
    const bool pairs = !adaptive && tiles_in_pairs(g);
    at::parallel_for(0, g.batch * C, grain_for(H * W), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> sum_row(OW), column_sums(W);
      PhasedRow<opmath_t> row(W, std::max<int64_t>(g.stride_w, 1));  // adaptive pooling has no stride
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* src = x + plane * H * W;
        for (int64_t oh = 0; oh < OH; ++oh) {
          const Span r = row_windows[oh];
          scalar_t* __restrict__ dst = out + (plane * OH + oh) * OW;
          const opmath_t* __restrict__ row_scale = scale.data() + oh * OW;
          if (pairs) {  // one pass over the two rows, each output from two column pairs, straight out
            const scalar_t* __restrict__ a = src + 2 * oh * W;
            const scalar_t* __restrict__ b = a + W;
            for (int64_t ow = 0; ow < OW; ++ow) {
              const opmath_t left = opmath_t(a[2 * ow]) + opmath_t(b[2 * ow]);
              dst[ow] = static_cast<scalar_t>((left + (opmath_t(a[2 * ow + 1]) + opmath_t(b[2 * ow + 1]))) *
                                              row_scale[ow]);
            }
            continue;
          }
          opmath_t* __restrict__ sum = sum_row.data();
          std::fill(sum, sum + OW, opmath_t(0));
          if (adaptive && OW == 1) {  // whole rows (e.g. global pooling): one contiguous run
            sum[0] = sum_lanes<opmath_t>(src + r.lo * W, (r.hi - r.lo) * W);
          } else if (adaptive) {
            for (int64_t ih = r.lo; ih < r.hi; ++ih) {
              for (int64_t ow = 0; ow < OW; ++ow) {
                const Span c = col_windows[ow];
                sum[ow] += sum_lanes<opmath_t>(src + ih * W + c.lo, c.hi - c.lo);
              }
            }
          } else {
            // The window is separable: sum its rows first (contiguous, one pass per window row),
            // then split and slide over that one row of column sums.
            opmath_t* __restrict__ col_sum = column_sums.data();
            if (r.hi - r.lo == 2) {  // the common 2-row window: one pass
              const scalar_t* __restrict__ a = src + r.lo * W;
              const scalar_t* __restrict__ b = a + W;
              for (int64_t iw = 0; iw < W; ++iw) col_sum[iw] = opmath_t(a[iw]) + opmath_t(b[iw]);
            } else {
              std::fill(col_sum, col_sum + W, opmath_t(0));
              for (int64_t ih = r.lo; ih < r.hi; ++ih) {
                const scalar_t* __restrict__ line = src + ih * W;
                for (int64_t iw = 0; iw < W; ++iw) col_sum[iw] += line[iw];
              }
            }
            row.load(col_sum, W);
            for (const ColumnTap& tap : taps) {
              const opmath_t* v = row.column(tap);
              for (int64_t ow = tap.lo; ow < tap.hi; ++ow) sum[ow] += v[ow + tap.shift];
            }
          }
          for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<scalar_t>(sum[ow] * row_scale[ow]);
        }
      }
    });
    return;
  }
  const bool pairs = !adaptive && tiles_in_pairs(g);
  // A task (one output row) reads about a 1/OH share of the sample, whatever the window.
  const int64_t task_work = std::max(OW * C * g.kernel_h * g.kernel_w, ceil_div(H * W * C, OH));
  at::parallel_for(0, g.batch * OH, grain_for(task_work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / OH, oh = task % OH;
      const Span r = row_windows[oh];
      const scalar_t* sample = x + n * H * W * C;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Span c = col_windows[ow];
        const opmath_t pixel_scale = scale[oh * OW + ow];
        scalar_t* dst = out + ((n * OH + oh) * OW + ow) * C;
        if (pairs) {
          const scalar_t* __restrict__ a = sample + (2 * oh * W + 2 * ow) * C;
          const scalar_t* __restrict__ b = a + W * C;
          scalar_t* __restrict__ o = dst;
          for (int64_t ch = 0; ch < C; ++ch) {
            const opmath_t left = opmath_t(a[ch]) + opmath_t(b[ch]);
            o[ch] = static_cast<scalar_t>((left + (opmath_t(a[C + ch]) + opmath_t(b[C + ch]))) * pixel_scale);
          }
          continue;
        }
        for_channel_blocks(
            C,
            [&](int64_t c0) { average_pixel_block<kChannelBlock>(sample, dst, r, c, W, C, c0, 0, pixel_scale); },
            [&](int64_t c0, int64_t len) { average_pixel_block<0>(sample, dst, r, c, W, C, c0, len, pixel_scale); });
      }
    }
  });
}

// Writes line[j * stride + p] = phases[p * phase_len + j] for every column of the line: the
// inverse of PhasedRow::load.
template <typename scalar_t>
void interleave_phases(const scalar_t* __restrict__ phases, int64_t phase_len, int64_t stride,
                       scalar_t* __restrict__ line, int64_t width) {
  const int64_t full = width / stride;
  if (stride == 1) {
    std::copy(phases, phases + width, line);
    return;
  }
  if (stride == 2) {
    for (int64_t j = 0; j < full; ++j) {
      line[2 * j] = phases[j];
      line[2 * j + 1] = phases[phase_len + j];
    }
  } else {
    for (int64_t j = 0; j < full; ++j)
      for (int64_t p = 0; p < stride; ++p) line[j * stride + p] = phases[p * phase_len + j];
  }
  for (int64_t p = 0; p < width - full * stride; ++p) line[full * stride + p] = phases[p * phase_len + full];
}

// NCHW average-pooling backward for windows that overlap or leave gaps (not the 2x2 tiling, not
// adaptive), as a gather, one grad_input row at a time: the rows of shares (gradient / divisor)
// whose windows cover it are summed (contiguous), spread over the window columns into the row's
// stride phases (contiguous adds), and the phases interleaved into the row. Each element is written
// once: no zero fill and no strided read-modify-write, which had taken ~70% of the 3x3 stride-2
// backward.
template <typename scalar_t>
void avg_backward_gather_rows(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g,
                              const AvgWindows<scalar_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, stride = g.stride_w;
  const auto taps = column_taps(g, 1);
  // The outputs whose window rows contain input row ih: an interval, the same for every plane.
  const AvgAxis row_axis = avg_rows(g);
  std::vector<Span> covering_rows(H);
  for (int64_t ih = 0; ih < H; ++ih) {
    const Span near = row_axis.covering(ih);
    int64_t lo = near.hi, hi = near.lo;
    for (int64_t oh = near.lo; oh < near.hi; ++oh) {
      if (ih < windows.rows[oh].lo || ih >= windows.rows[oh].hi) continue;
      lo = std::min(lo, oh);
      hi = oh + 1;
    }
    covering_rows[ih] = {lo, std::max(lo, hi), 0};
  }
  const int64_t phase_len = ceil_div(W, stride);
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> shares(OH * OW), row_sum(OW), phases(stride * phase_len);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* src = dy + plane * OH * OW;
      for (int64_t o = 0; o < OH * OW; ++o) shares[o] = src[o] * windows.scale[o];
      for (int64_t ih = 0; ih < H; ++ih) {
        scalar_t* __restrict__ line = dx + (plane * H + ih) * W;
        const Span cover = covering_rows[ih];
        if (cover.lo == cover.hi) {
          std::fill(line, line + W, scalar_t(0));
          continue;
        }
        scalar_t* __restrict__ sum = row_sum.data();
        std::copy(shares.data() + cover.lo * OW, shares.data() + (cover.lo + 1) * OW, sum);
        for (int64_t oh = cover.lo + 1; oh < cover.hi; ++oh) {
          const scalar_t* __restrict__ share = shares.data() + oh * OW;
          for (int64_t ow = 0; ow < OW; ++ow) sum[ow] += share[ow];
        }
        std::fill(phases.begin(), phases.end(), scalar_t(0));
        for (const ColumnTap& tap : taps) {
          scalar_t* __restrict__ phase = phases.data() + tap.phase * phase_len + tap.shift;
          for (int64_t ow = tap.lo; ow < tap.hi; ++ow) phase[ow] += sum[ow];
        }
        interleave_phases(phases.data(), phase_len, stride, line, W);
      }
    }
  });
}

template <typename scalar_t>
void avg_backward(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g, AvgDivisor divisor, bool channels_last) {
  const AvgWindows<scalar_t> windows(g, divisor);
  const auto& row_windows = windows.rows;
  const auto& col_windows = windows.cols;
  const auto& scale = windows.scale;
  const bool adaptive = windows.adaptive;
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;

  if (!channels_last && !adaptive && !tiles_in_pairs(g)) {
    avg_backward_gather_rows(dy, dx, g, windows);
    return;
  }
  if (!channels_last) {  // 2x2 windows that tile the input, or adaptive windows: a scatter
    const bool pairs = !adaptive;
    at::parallel_for(0, g.batch * C, grain_for(H * W), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> share_row(OW);
      for (int64_t plane = begin; plane < end; ++plane) {
        scalar_t* dst = dx + plane * H * W;
        std::fill(dst, dst + H * W, scalar_t(0));
        for (int64_t oh = 0; oh < OH; ++oh) {
          const Span r = row_windows[oh];
          scalar_t* __restrict__ share = share_row.data();  // each output's gradient per input it read
          const scalar_t* src = dy + (plane * OH + oh) * OW;
          const scalar_t* __restrict__ row_scale = scale.data() + oh * OW;
          for (int64_t ow = 0; ow < OW; ++ow) share[ow] = src[ow] * row_scale[ow];
          if (pairs) {  // every input of the two rows belongs to one window: written, not added
            scalar_t* __restrict__ a = dst + 2 * oh * W;
            scalar_t* __restrict__ b = a + W;
            for (int64_t ow = 0; ow < OW; ++ow) a[2 * ow] = a[2 * ow + 1] = b[2 * ow] = b[2 * ow + 1] = share[ow];
            continue;
          }
          for (int64_t ih = r.lo; ih < r.hi; ++ih) {
            scalar_t* __restrict__ line = dst + ih * W;
            for (int64_t ow = 0; ow < OW; ++ow) {
              const Span c = col_windows[ow];
              for (int64_t iw = c.lo; iw < c.hi; ++iw) line[iw] += share[ow];
            }
          }
        }
      }
    });
    return;
  }
  for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
    scalar_t* dst = dx + n * H * W * C;  // (H, W, C)
    for (int64_t i = 0; i < H * W; ++i) std::fill(dst + i * C + c0, dst + i * C + c1, scalar_t(0));
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Span r = row_windows[oh];
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Span c = col_windows[ow];
        const scalar_t inv = scale[oh * OW + ow];
        const scalar_t* __restrict__ src = dy + ((n * OH + oh) * OW + ow) * C;
        for (int64_t ih = r.lo; ih < r.hi; ++ih)
          for (int64_t iw = c.lo; iw < c.hi; ++iw) {
            scalar_t* __restrict__ pixel = dst + (ih * W + iw) * C;
            for (int64_t ch = c0; ch < c1; ++ch) pixel[ch] += src[ch] * inv;
          }
      }
    }
  });
}

// Typed entry points of the table: the dtype dispatch happens here, inside this build's ISA.

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<index_t>) with index_t the type `indices` records the argmax as (Argmax in
// pool2d.h): void when undefined, uint8_t window taps, int64_t plane positions.
template <typename Fn>
void with_argmax_type(const at::Tensor& indices, const Fn& fn) {
  if (!indices.defined()) {
    fn(TypeTag<void>{});
  } else if (indices.scalar_type() == at::kByte) {
    fn(TypeTag<uint8_t>{});
  } else {
    fn(TypeTag<int64_t>{});
  }
}

void max_forward_loop(const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices, const Pool2dGeometry& g,
                      bool channels_last) {
  CNNEXT_DISPATCH_CPU_TYPES(x.scalar_type(), "max_pool2d_forward_cpu", [&] {
    with_argmax_type(indices, [&](auto tag) {
      using index_t = typename decltype(tag)::type;
      index_t* argmax = nullptr;
      if constexpr (kTracksArgmax<index_t>) argmax = indices.mutable_data_ptr<index_t>();
      max_forward(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), argmax, g, channels_last);
    });
  });
}

void max_backward_loop(const at::Tensor& dy, const at::Tensor& indices, const at::Tensor& dx, const Pool2dGeometry& g,
                       bool channels_last) {
  CNNEXT_DISPATCH_CPU_TYPES(dy.scalar_type(), "max_pool2d_backward_cpu", [&] {
    with_argmax_type(indices, [&](auto tag) {
      using index_t = typename decltype(tag)::type;
      if constexpr (kTracksArgmax<index_t>) {  // backward always has indices (checked by the entry)
        max_backward(dy.const_data_ptr<scalar_t>(), indices.const_data_ptr<index_t>(), dx.mutable_data_ptr<scalar_t>(),
                     g, channels_last);
      }
    });
  });
}

void avg_forward_loop(const at::Tensor& x, const at::Tensor& out, const Pool2dGeometry& g, AvgDivisor divisor,
                      bool channels_last) {
  CNNEXT_DISPATCH_CPU_TYPES(x.scalar_type(), "avg_pool2d_forward_cpu", [&] {
    avg_forward(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, divisor, channels_last);
  });
}

void avg_backward_loop(const at::Tensor& dy, const at::Tensor& dx, const Pool2dGeometry& g, AvgDivisor divisor,
                       bool channels_last) {
  CNNEXT_DISPATCH_CPU_TYPES(dy.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    avg_backward(dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), g, divisor, channels_last);
  });
}

}  // namespace

Pool2dCpuLoops CNNEXT_ISA_NAME(pool2d_cpu_loops)() {
  return {&max_forward_loop, &max_backward_loop, &avg_forward_loop, &avg_backward_loop};
}

}  // namespace cnnext
