// What the CPU pooling loops share: task splitting, the phase-split layout of strided windows,
// channel blocks, and branch-free selects. Part of one instruction-set build (loops.h), which
// includes it after cpu_isa_target.h; it includes nothing itself.
//
// Words used throughout:
//   window tap   one element (t, u) of the kernel, numbered t * kernel_w + u (the uint8 argmax)
//   phase        with stride s, input column iw belongs to phase iw mod s; a row split by phase
//                holds phase p's columns contiguously, so each window column reads contiguous
//                memory for all outputs
//   share        an output's gradient divided among the inputs its average window read
//   2x2 tiling   2x2 windows at stride 2 that each lie inside the input (is_2x2_tiling)
#pragma once

#ifndef CNNEXT_CPU_ISA_TARGET_H
#error "pool2d/cpu/loops_common.h is part of a loops build: include pool2d/cpu/loops.h"
#endif

// gcc turns a zeroing loop into memset / `rep stos` (loop distribution), and the sums then go
// through memory instead of staying in registers; initialising from the first pixel instead makes
// gcc copy it through the stack. This attribute keeps the plain zeroing loop (benchmarks/NOTES.md,
// "Figures moved out of the code").
#if defined(__GNUC__) && !defined(__clang__)
#define CNNEXT_NO_MEMSET_IDIOM __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CNNEXT_NO_MEMSET_IDIOM
#endif

namespace cnnext {
namespace {

// Below this many elements of work a task is not worth a thread.
constexpr int64_t kMinTaskWork = 32768;
int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(work_per_task, 1));
}

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
auto spans_of(int64_t out_size, const Fn& fn) {
  std::vector<decltype(fn(int64_t{0}))> spans(out_size);
  for (int64_t o = 0; o < out_size; ++o) spans[o] = fn(o);
  return spans;
}

// Where the reads of window position t (row or column) sit in a layout split by stride phase:
// phase (t * dilation - pad) mod stride, at index o + shift for output o (shift may be negative:
// the padding).
struct PhaseOffset {
  int64_t phase, shift;
};
std::vector<PhaseOffset> phase_offsets(int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  std::vector<PhaseOffset> offsets(kernel);
  for (int64_t t = 0; t < kernel; ++t) {
    const int64_t offset = t * dilation - pad;
    const int64_t phase = ((offset % stride) + stride) % stride;
    offsets[t] = {phase, (offset - phase) / stride};
  }
  return offsets;
}

// Window column u as the row loops use it: the outputs [lo, hi) for which it lands inside the
// input, the input column it reads for output 0 (input column = o * stride + offset), and where
// PhasedRow keeps those inputs (PhaseOffset). Computed once per call: the divisions cost more than
// the row loops they would sit in.
struct WindowColumn {
  int64_t lo, hi, offset, phase, shift;
};
std::vector<WindowColumn> window_columns(const Pool2dGeometry& g) {
  const auto phases = phase_offsets(g.kernel_w, g.stride_w, g.pad_w, 1);
  std::vector<WindowColumn> columns(g.kernel_w);
  for (int64_t u = 0; u < g.kernel_w; ++u) {
    const auto [lo, hi] = tap_output_range(g.out_w, g.in_w, g.stride_w, g.pad_w, u);
    columns[u] = {lo, hi, u - g.pad_w, phases[u].phase, phases[u].shift};
  }
  return columns;
}

// dst[p * pitch + j] = line[j * stride + p] for every column of the line with j < limit: a row
// split by stride phase. The stride-2 split is a two-way deinterleave the compiler vectorises.
template <typename scalar_t>
void split_into_phases(const scalar_t* __restrict__ line, int64_t width, int64_t stride,
                       scalar_t* __restrict__ dst, int64_t pitch, int64_t limit) {
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

// line[j * stride + p] = phases[p * phase_len + j] for every column of the line: the inverse of
// split_into_phases.
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

// One input row split by stride phase, so that every window column reads contiguous memory
// (strided loads inside the compare/add loops had kept those scalar). Stride 1 uses the row itself.
template <typename scalar_t>
class PhasedRow {
 public:
  PhasedRow(int64_t width, int64_t stride)
      : stride_(stride), phase_len_(ceil_div(width, stride)), buffer_(stride > 1 ? stride * phase_len_ : 0) {}

  void load(const scalar_t* line, int64_t width) {
    line_ = line;
    if (stride_ > 1) split_into_phases(line, width, stride_, buffer_.data(), phase_len_, phase_len_);
  }

  // The inputs of a window column: output o reads column(c)[o + c.shift].
  const scalar_t* column(const WindowColumn& c) const {
    return stride_ == 1 ? line_ : buffer_.data() + c.phase * phase_len_;
  }

 private:
  int64_t stride_, phase_len_;
  std::vector<scalar_t> buffer_;
  const scalar_t* line_ = nullptr;
};

// channels_last windows go through the channels in blocks of kChannelBlock: a block's running
// maxima or sums (and argmax) stay in registers across the window's pixels instead of
// round-tripping through memory once per pixel.
constexpr int64_t kChannelBlock = 32;

// Calls block(c0) for every whole block and tail(c0, len) for a short last one.
template <typename Block, typename Tail>
void for_channel_blocks(int64_t C, const Block& block, const Tail& tail) {
  int64_t c0 = 0;
  for (; c0 + kChannelBlock <= C; c0 += kChannelBlock) block(c0);
  if (c0 < C) tail(c0, C - c0);
}

// The windows that read each input position along one axis, as (output, window tap) pairs in
// output order: the gather-style channels_last backwards walk them so that each grad_input
// element is summed in registers and written once (a zero fill followed by one read-modify-write
// per covering window had left their first touch of a fresh gradient outside the sums).
struct Cover {
  int64_t out, tap;
};
class AxisCovers {
 public:
  // reads(o, emit) calls emit(i, t) for every input i that output o's window reads, at tap t.
  template <typename Reads>
  AxisCovers(int64_t in_size, int64_t out_size, const Reads& reads) : first_(in_size + 1, 0) {
    for (int64_t o = 0; o < out_size; ++o) reads(o, [&](int64_t i, int64_t) { ++first_[i + 1]; });
    for (int64_t i = 0; i < in_size; ++i) first_[i + 1] += first_[i];
    covers_.resize(first_[in_size]);
    std::vector<int64_t> next(first_.begin(), first_.end() - 1);
    for (int64_t o = 0; o < out_size; ++o)
      reads(o, [&](int64_t i, int64_t t) { covers_[next[i]++] = {o, t}; });
  }
  const Cover* begin(int64_t i) const { return covers_.data() + first_[i]; }
  const Cover* end(int64_t i) const { return covers_.data() + first_[i + 1]; }

 private:
  std::vector<int64_t> first_;  // input i's covers are covers_[first_[i], first_[i + 1])
  std::vector<Cover> covers_;
};

// One block of a gathered pixel: `add(row cover, column cover, c0, sum, n)` adds one covering
// window's contribution to channels [c0, c0 + n) into sum[0, n); the sums stay in registers over
// the covering windows (in output order) and are stored once. kBlockLength fixed at compile time
// is what lets them stay there; 0: a short last block of `len` channels.
template <int64_t kBlockLength, typename scalar_t, typename Add>
CNNEXT_NO_MEMSET_IDIOM void gather_block(const Cover* rows, const Cover* rows_end, const Cover* cols,
                                         const Cover* cols_end, int64_t c0, scalar_t* __restrict__ pixel,
                                         int64_t len, const Add& add) {
  const int64_t n = kBlockLength ? kBlockLength : len;
  scalar_t sum[kBlockLength ? kBlockLength : kChannelBlock];
  for (int64_t ch = 0; ch < n; ++ch) sum[ch] = scalar_t(0);
  for (const Cover* r = rows; r != rows_end; ++r)
    for (const Cover* c = cols; c != cols_end; ++c) add(*r, *c, c0, sum, n);
  for (int64_t ch = 0; ch < n; ++ch) pixel[c0 + ch] = sum[ch];
}

// channels_last grad_input pixel (ih, iw) summed from the windows covering it (AxisCovers of rows
// and columns), block of channels by block, each element written once (the gather-style backwards).
template <typename scalar_t, typename Add>
void gather_pixel(const AxisCovers& rows, int64_t ih, const AxisCovers& cols, int64_t iw, int64_t C,
                  scalar_t* pixel, const Add& add) {
  for_channel_blocks(
      C,
      [&](int64_t c0) {
        gather_block<kChannelBlock>(rows.begin(ih), rows.end(ih), cols.begin(iw), cols.end(iw), c0, pixel, 0,
                                    add);
      },
      [&](int64_t c0, int64_t len) {
        gather_block<0>(rows.begin(ih), rows.end(ih), cols.begin(iw), cols.end(iw), c0, pixel, len, add);
      });
}

// v where `keep`, else +0, without a branch (argmax taps are random: branches mispredict) and
// without v * 0 (NaN for an infinite v).
template <typename scalar_t>
inline scalar_t keep_if(scalar_t v, bool keep) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  bits_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= bits_t{0} - static_cast<bits_t>(keep);
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The windows of one average-pooling call (AvgAxis::kernel == 0: adaptive), computed once for
// every plane: each output row's and column's input span, and 1 / divisor of every output (0 where
// a window is empty) so the plane loops multiply (vectorised) instead of dividing per element
// (rounding differs from a true division by at most one ulp).
template <typename value_t>
struct AvgWindows {
  std::vector<AvgWindow> rows, cols;
  std::vector<value_t> scale;  // (OH, OW)

  AvgWindows(const Pool2dGeometry& g, AvgDivisor divisor) {
    const AvgAxis row_axis = avg_rows(g), col_axis = avg_cols(g);
    rows = spans_of(g.out_h, [&](int64_t o) { return row_axis.window(o); });
    cols = spans_of(g.out_w, [&](int64_t o) { return col_axis.window(o); });
    scale.resize(rows.size() * cols.size());
    for (size_t oh = 0; oh < rows.size(); ++oh) {
      for (size_t ow = 0; ow < cols.size(); ++ow) {
        const int64_t d = divisor(rows[oh], cols[ow]);
        scale[oh * cols.size() + ow] = d == 0 ? value_t(0) : value_t(1) / static_cast<value_t>(d);
      }
    }
  }
};

}  // namespace
}  // namespace cnnext
