// Max pooling forward on the CPU, three variants (variants.h):
//   nchw_2x2_tiling       each output row from its two input rows in one pass (max_2x2_row)
//   nchw_plane_fold       the plane split by stride phase and folded over whole planes (MaxPlaneFold)
//   channels_last_blocks  per window, blocks of channels in registers (max_pixel_block)
// The argmax is tracked as index_t says (Argmax in pool2d.h): void = not tracked (inference),
// uint8_t = window tap t * kernel_w + u, int64_t = plane position ih * W + iw. Ties keep the first
// maximum in row-major window order and NaN wins, as native max pooling.
// Part of one instruction-set build (loops.h), included after cpu_isa_target.h.
#pragma once

#ifndef CNNEXT_CPU_ISA_TARGET_H
#error "pool2d/cpu/max_forward.h is part of a loops build: include pool2d/cpu/loops.h"
#endif

namespace cnnext {
namespace {

template <typename index_t>
constexpr bool kTracksArgmax = !std::is_void_v<index_t>;
template <typename index_t>
constexpr bool kRecordsTaps = std::is_same_v<index_t, uint8_t>;

template <typename scalar_t>
inline bool replaces_max(scalar_t v, scalar_t best) {
  return (v > best) | (v != v);  // NaN wins, as in native max pooling; branch-free for vectorising
}

// Maximum (and argmax, as index_t records it) of channels [c0, c0 + len) over the window taps
// (t, u) in rows x cols into best_out and arg_out [c0, c0 + len); `x` is one sample (H, W, C),
// position(t, u) the plane index tap (t, u) reads, `first` the argmax kept if nothing beats -inf.
// kBlockLength is the block length when known at compile time (every block but a short last one),
// 0 when it is `len`. The argmax runs in int32, beside the float lanes.
template <int64_t kBlockLength, typename index_t, typename scalar_t, typename Position>
void max_pixel_block(const scalar_t* x, scalar_t* __restrict__ best_out, index_t* __restrict__ arg_out,
                     Span rows, Span cols, const Position& position, int64_t kernel_w, int64_t C, int64_t c0,
                     int64_t len, int32_t first) {
  constexpr int64_t kCapacity = kBlockLength ? kBlockLength : kChannelBlock;
  const int64_t n = kBlockLength ? kBlockLength : len;
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

// One output row of 2x2 tiling windows over input rows a and b: the maxima into best and, with
// kWithIndices, the winning taps (0..3, row-major) into winner. Branch-free, in native's tap order.
template <bool kWithIndices, typename scalar_t>
void max_2x2_row(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ best,
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

// Max pooling of whole NCHW planes in long loops. The plane is copied once into a layout split by
// row and column stride phase and padded with -inf, where every window tap is one constant offset
// for all outputs; the window is then folded along columns over all rows at once, and along rows
// over all outputs at once: long loops, where per-output-row loops (16 outputs on a 32x32 map) are
// mostly loop overhead. Folding each row's fold in row order gives the row-major fold of the
// window: with "greater or NaN replaces", both keep the first maximum and the last NaN.
template <typename scalar_t, bool kWithWinners>
class MaxPlaneFold {
 public:
  explicit MaxPlaneFold(const Pool2dGeometry& g)
      : g_(g),
        rows_(phase_offsets(g.kernel_h, g.stride_h, g.pad_h, g.dil_h)),
        cols_(phase_offsets(g.kernel_w, g.stride_w, g.pad_w, g.dil_w)) {
    const auto reach = [](const std::vector<PhaseOffset>& offsets, int64_t& before, int64_t& after) {
      before = after = 0;
      for (const PhaseOffset& o : offsets) {
        before = std::max(before, -o.shift);
        after = std::max(after, o.shift);
      }
    };
    int64_t rows_after = 0, cols_after = 0;
    reach(rows_, row_pad_, rows_after);
    reach(cols_, col_pad_, cols_after);
    pitch_ = col_pad_ + g.out_w + cols_after;
    phase_rows_ = row_pad_ + std::max(ceil_div(g.in_h, g.stride_h), g.out_h + rows_after);
    folded_size_ = g.stride_h * phase_rows_ * pitch_;
    phase_size_ = folded_size_ + pitch_;  // the window columns read up to a row past the end
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
      if (u == 0) {  // against -inf the first column always "replaces"
        std::copy(v, v + folded_size_, row_best_.data());
        if constexpr (kWithWinners) std::fill(row_win_.begin(), row_win_.end(), 0);
      } else {
        fold_max<kWithWinners>(row_best_.data(), row_win_.data(), v, nullptr, static_cast<int32_t>(u),
                               folded_size_);
      }
    }
    const int64_t outputs = g_.out_h * pitch_;
    for (int64_t t = 0; t < g_.kernel_h; ++t) {
      const int64_t start = (rows_[t].phase * phase_rows_ + row_pad_ + rows_[t].shift) * pitch_;
      const int32_t label = static_cast<int32_t>(t * g_.kernel_w);
      if (t == 0) {
        std::copy(row_best_.data() + start, row_best_.data() + start + outputs, best_.data());
        if constexpr (kWithWinners)
          std::copy(row_win_.data() + start, row_win_.data() + start + outputs, win_.data());
      } else {
        fold_max<kWithWinners>(best_.data(), win_.data(), row_best_.data() + start, row_win_.data() + start,
                               label, outputs);
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
      split_into_phases(x + ih * W, W, sw, packed_.data() + (q * phase_rows_ + row) * pitch_ + col_pad_,
                        phase_size_, width);
      if (++q == sh) {  // next row phase, or back to phase 0 one row down
        q = 0;
        ++row;
      }
    }
  }

  const Pool2dGeometry& g_;
  std::vector<PhaseOffset> rows_, cols_;
  int64_t row_pad_ = 0, col_pad_ = 0, pitch_ = 0, phase_rows_ = 0, folded_size_ = 0, phase_size_ = 0;
  std::vector<scalar_t> packed_, row_best_, best_;
  std::vector<int32_t> row_win_, win_;
};

// winner[i] = first[i] where best[i] is -inf (no tap beat -inf: the window's first tap inside the
// input, as native), else won[i]. Both loaded unconditionally: written as `c ? first[i] : won[i]`,
// gcc used masked loads, which are slow on AMD.
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

// Records one NCHW output row's winning taps as index_t: the taps themselves, or the plane
// positions they read (window origin plus the tap's offset).
template <typename index_t>
class NchwArgmaxRows {
 public:
  explicit NchwArgmaxRows(const Pool2dGeometry& g) : g_(g), rows_(max_rows(g)), cols_(max_cols(g)) {
    if constexpr (!kRecordsTaps<index_t> && kTracksArgmax<index_t>) {
      tap_input_offset_.resize(g.kernel_h * g.kernel_w);
      for (int64_t t = 0; t < g.kernel_h; ++t)
        for (int64_t u = 0; u < g.kernel_w; ++u)
          tap_input_offset_[t * g.kernel_w + u] = t * g.dil_h * g.in_w + u * g.dil_w;
    }
  }

  void record(const int32_t* winner, index_t* indices, int64_t plane, int64_t oh) const {
    const int64_t OW = g_.out_w;
    if constexpr (kRecordsTaps<index_t>) {
      narrow_taps(winner, indices + (plane * g_.out_h + oh) * OW, OW);
    } else if constexpr (kTracksArgmax<index_t>) {
      int64_t* argmax = indices + (plane * g_.out_h + oh) * OW;
      const int64_t origin = rows_.position(oh, 0) * g_.in_w + cols_.position(0, 0);
      for (int64_t ow = 0; ow < OW; ++ow)
        argmax[ow] = origin + ow * g_.stride_w + tap_input_offset_[winner[ow]];
    }
  }

 private:
  const Pool2dGeometry& g_;
  MaxAxis rows_, cols_;
  std::vector<int64_t> tap_input_offset_;
};

template <typename index_t, typename scalar_t>
void max_forward_nchw_2x2_tiling(const scalar_t* x, scalar_t* out, index_t* indices,
                                 const Pool2dGeometry& g) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  const NchwArgmaxRows<index_t> argmax(g);
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> winner(OW);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* src = x + plane * H * W;
      for (int64_t oh = 0; oh < OH; ++oh) {
        max_2x2_row<kTracksArgmax<index_t>>(src + 2 * oh * W, src + (2 * oh + 1) * W,
                                            out + (plane * OH + oh) * OW, winner.data(), OW);
        argmax.record(winner.data(), indices, plane, oh);
      }
    }
  });
}

template <typename index_t, typename scalar_t>
void max_forward_nchw_plane_fold(const scalar_t* x, scalar_t* out, index_t* indices,
                                 const Pool2dGeometry& g) {
  constexpr bool kWithIndices = kTracksArgmax<index_t>;
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  const MaxAxis rows = max_rows(g), cols = max_cols(g);
  // The winner of a window where nothing beats -inf: its first tap inside the input, as native.
  std::vector<int32_t> first_tap(kWithIndices ? OH * OW : 0);
  for (int64_t oh = 0; oh < OH && kWithIndices; ++oh)
    for (int64_t ow = 0; ow < OW; ++ow)
      first_tap[oh * OW + ow] = static_cast<int32_t>(rows.taps(oh).lo * g.kernel_w + cols.taps(ow).lo);
  const NchwArgmaxRows<index_t> argmax(g);
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> winner(OW);
    MaxPlaneFold<scalar_t, kWithIndices> fold(g);
    for (int64_t plane = begin; plane < end; ++plane) {
      fold.run(x + plane * H * W);
      for (int64_t oh = 0; oh < OH; ++oh) {
        const scalar_t* __restrict__ folded = fold.best(oh);
        std::copy(folded, folded + OW, out + (plane * OH + oh) * OW);
        if constexpr (kWithIndices) {
          pick_winners(folded, fold.winners(oh), first_tap.data() + oh * OW, winner.data(), OW);
          argmax.record(winner.data(), indices, plane, oh);
        }
      }
    }
  });
}

template <typename index_t, typename scalar_t>
void max_forward_channels_last_blocks(const scalar_t* x, scalar_t* out, index_t* indices,
                                      const Pool2dGeometry& g) {
  const MaxAxis rows = max_rows(g), cols = max_cols(g);
  // The window taps inside the input, per output row and column.
  const auto inside_rows = spans_of(g.out_h, [&](int64_t o) { return rows.taps(o); });
  const auto inside_cols = spans_of(g.out_w, [&](int64_t o) { return cols.taps(o); });
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  at::parallel_for(
      0, g.batch * OH, grain_for(OW * C * g.kernel_h * g.kernel_w), [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t n = task / OH, oh = task % OH;
          const Span r = inside_rows[oh];
          for (int64_t ow = 0; ow < OW; ++ow) {
            const Span c = inside_cols[ow];
            scalar_t* best = out + ((n * OH + oh) * OW + ow) * C;  // (C)
            index_t* arg = nullptr;                                // (C)
            if constexpr (kTracksArgmax<index_t>) arg = indices + ((n * OH + oh) * OW + ow) * C;
            // Argmax of a window that never beats -inf: its first tap inside the input, as native.
            const int32_t first = static_cast<int32_t>(kRecordsTaps<index_t> ? r.lo * g.kernel_w + c.lo
                                                                             : rows.position(oh, r.lo) * W +
                                                                                   cols.position(ow, c.lo));
            // Plane index of window tap (t, u).
            const auto position = [&](int64_t t, int64_t u) {
              return static_cast<int32_t>(rows.position(oh, t) * W + cols.position(ow, u));
            };
            const scalar_t* sample = x + n * H * W * C;
            for_channel_blocks(
                C,
                [&](int64_t c0) {
                  max_pixel_block<kChannelBlock>(sample, best, arg, r, c, position, g.kernel_w, C, c0, 0,
                                                 first);
                },
                [&](int64_t c0, int64_t len) {
                  max_pixel_block<0>(sample, best, arg, r, c, position, g.kernel_w, C, c0, len, first);
                });
          }
        }
      });
}

}  // namespace
}  // namespace cnnext
