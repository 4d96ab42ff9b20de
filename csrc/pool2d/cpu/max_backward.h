// Max pooling backward on the CPU, six variants (variants.h), by layout and argmax kind:
//   nchw_2x2_tiling                  uint8 taps, 2x2 tiling: every input written once (scatter_2x2_row)
//   nchw_tap_scatter                 uint8 taps, other windows: zero fill, then one add per output
//   nchw_position_scatter            int64 positions: zero fill, then one add per output
//   channels_last_2x2_tiling         uint8 taps, 2x2 tiling: every input written once (select_2x2_pixel)
//   channels_last_tap_gather         uint8 taps, other windows: each input pixel gathered once from the
//                                    windows covering it, a branch-free select over channels
//   channels_last_position_scatter   int64 positions: zero fill, then one add per channel
// Each task owns a grad_input slice (planes, rows or channel blocks of a sample), so no two tasks write
// one element and the result does not depend on threads. Saved indices that did not come from
// forward (outside the window or the input) are an error, not a stray write.
// Part of one instruction-set build (loops.h), included after cpu_isa_target.h.
#pragma once

#ifndef CNNEXT_CPU_ISA_TARGET_H
#error "pool2d/cpu/max_backward.h is part of a loops build: include pool2d/cpu/loops.h"
#endif

namespace cnnext {
namespace {

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
    TORCH_CHECK(in_kernel && ih >= 0 && ih < g_.in_h && iw >= 0 && iw < g_.in_w,
                "_max_pool2d_backward: window tap ", int(tap), " of the ", g_.kernel_h, "x", g_.kernel_w,
                " window at (", row0, ", ", col0, ") is outside the kernel or the ", g_.in_h, "x", g_.in_w,
                " input");
    return ih * g_.in_w + iw;
  }

 private:
  const Pool2dGeometry& g_;
  std::vector<int64_t> row_, col_;
};

// One output row of 2x2 tiling windows over rows a and b: each gradient goes to its window's
// argmax tap, zeros to the other three; every input is written once (no zero fill, no scatter).
template <typename scalar_t>
void scatter_2x2_row(const scalar_t* __restrict__ dy, const uint8_t* __restrict__ taps,
                     scalar_t* __restrict__ a, scalar_t* __restrict__ b, int64_t OW) {
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
  TORCH_CHECK(worst < 4, "_max_pool2d_backward: window tap ", int(worst),
              " is outside the 2x2 kernel's 4 taps");
}

// One channels_last output pixel of a 2x2 tiling window: its C gradients go to the window's four
// input pixels (taps 0-3, row-major), each channel's to the tap forward saved and zeros to the
// other three, in one vectorised pass over the channels (the general select this file once had,
// which walked the window's taps with a loop and a match count per channel, left narrow layers
// far behind native; figures in benchmarks/NOTES.md). Blocks of 16
// channels of a length fixed at compile time: a loop over C vectorises by the uint8 taps, 64
// channels a step with AVX-512, and 16- or 32-channel layers ran its scalar remainder. `worst`
// keeps the largest tap seen.
template <int64_t kBlockLength, typename scalar_t>
void select_2x2_block(const scalar_t* __restrict__ dy, const uint8_t* __restrict__ taps,
                      scalar_t* __restrict__ tap0, scalar_t* __restrict__ tap1, scalar_t* __restrict__ tap2,
                      scalar_t* __restrict__ tap3, uint8_t& worst, int64_t len) {
  const int64_t n = kBlockLength ? kBlockLength : len;
  for (int64_t ch = 0; ch < n; ++ch) {
    const uint8_t tap = taps[ch];
    const scalar_t v = dy[ch];
    tap0[ch] = keep_if(v, tap == 0);
    tap1[ch] = keep_if(v, tap == 1);
    tap2[ch] = keep_if(v, tap == 2);
    tap3[ch] = keep_if(v, tap == 3);
  }
  for (int64_t ch = 0; ch < n; ++ch) worst = std::max(worst, taps[ch]);
}

// The pixel's channels in blocks of 16 (select_2x2_block), top and bottom the window's two input
// rows at its left column. Returns the largest tap seen (checked by the caller: anything above 3
// did not come from forward).
template <typename scalar_t>
uint8_t select_2x2_pixel(const scalar_t* dy, const uint8_t* taps, scalar_t* top, scalar_t* bottom,
                         int64_t C) {
  constexpr int64_t kBlock = 16;
  uint8_t worst = 0;
  int64_t c0 = 0;
  for (; c0 + kBlock <= C; c0 += kBlock)
    select_2x2_block<kBlock>(dy + c0, taps + c0, top + c0, top + C + c0, bottom + c0, bottom + C + c0, worst,
                             0);
  if (c0 < C)
    select_2x2_block<0>(dy + c0, taps + c0, top + c0, top + C + c0, bottom + c0, bottom + C + c0, worst,
                        C - c0);
  return worst;
}

template <typename scalar_t>
void max_backward_channels_last_2x2_tiling(const scalar_t* dy, const uint8_t* taps, scalar_t* dx,
                                           const Pool2dGeometry& g) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  at::parallel_for(0, g.batch * OH, grain_for(4 * OW * C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / OH, oh = task % OH;
      scalar_t* top = dx + ((n * H + 2 * oh) * W) * C;  // (W, C)
      scalar_t* bottom = top + W * C;
      uint8_t worst = 0;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t o = (n * OH + oh) * OW + ow;
        worst = std::max(
            worst, select_2x2_pixel(dy + o * C, taps + o * C, top + 2 * ow * C, bottom + 2 * ow * C, C));
      }
      TORCH_CHECK(worst < 4, "_max_pool2d_backward: window tap ", int(worst),
                  " is outside the 2x2 kernel's 4 taps");
      // An odd last column, and below the last window row an odd last row, belong to no window.
      if (2 * OW < W) {
        std::fill(top + 2 * OW * C, top + W * C, scalar_t(0));
        std::fill(bottom + 2 * OW * C, bottom + W * C, scalar_t(0));
      }
      if (oh == OH - 1 && 2 * OH < H)
        std::fill(dx + (n * H + 2 * OH) * W * C, dx + (n + 1) * H * W * C, scalar_t(0));
    }
  });
}

template <typename scalar_t>
void max_backward_nchw_2x2_tiling(const scalar_t* dy, const uint8_t* taps, scalar_t* dx,
                                  const Pool2dGeometry& g) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  const bool covers_input = 2 * OH == H && 2 * OW == W;  // else an odd last row or column stays zero
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dst = dx + plane * H * W;
      if (!covers_input) std::fill(dst, dst + H * W, scalar_t(0));
      for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t o = (plane * OH + oh) * OW;
        scatter_2x2_row(dy + o, taps + o, dst + 2 * oh * W, dst + (2 * oh + 1) * W, OW);
      }
    }
  });
}

// The NCHW scatters: index_t uint8_t (window taps, decoded and checked) or int64_t (positions).
template <typename index_t, typename scalar_t>
void max_backward_nchw_scatter(const scalar_t* dy, const index_t* indices, scalar_t* dx,
                               const Pool2dGeometry& g) {
  const int64_t HW = g.in_h * g.in_w, OH = g.out_h, OW = g.out_w, OHW = OH * OW;
  const TapDecoder decoder(g);
  at::parallel_for(0, g.batch * g.channels, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dst = dx + plane * HW;
      std::fill(dst, dst + HW, scalar_t(0));
      const scalar_t* src = dy + plane * OHW;
      const index_t* argmax = indices + plane * OHW;
      if constexpr (kRecordsTaps<index_t>) {
        for (int64_t oh = 0; oh < OH; ++oh) {
          const int64_t row0 = decoder.row0(oh);
          for (int64_t ow = 0; ow < OW; ++ow)
            dst[decoder.position(row0, decoder.col0(ow), argmax[oh * OW + ow])] += src[oh * OW + ow];
        }
      } else {
        for (int64_t o = 0; o < OHW; ++o) {
          check_index(argmax[o], HW);
          dst[argmax[o]] += src[o];
        }
      }
    }
  });
}

// Whether every channel's saved tap of one window names a tap inside the input: the window's taps
// [r.lo, r.hi) x [c.lo, c.hi) (interior windows: any tap below kernel_h * kernel_w).
bool window_taps_inside(const uint8_t* __restrict__ taps, int64_t C, Span r, Span c,
                        const Pool2dGeometry& g) {
  uint8_t outside = 0;
  if (r.lo == 0 && r.hi == g.kernel_h && c.lo == 0 && c.hi == g.kernel_w) {
    const int64_t count = g.kernel_h * g.kernel_w;  // at most 256: uint8 taps
    uint8_t worst = 0;
    for (int64_t ch = 0; ch < C; ++ch) worst = std::max(worst, taps[ch]);
    return worst < count;
  }
  const uint32_t width = static_cast<uint32_t>(c.hi - c.lo);
  for (int64_t ch = 0; ch < C; ++ch) {
    uint8_t inside = 0;
    for (int64_t t = r.lo; t < r.hi; ++t)
      inside |= static_cast<uint32_t>(int32_t(taps[ch]) - int32_t(t * g.kernel_w + c.lo)) < width;
    outside |= inside ^ 1;
  }
  return outside == 0;
}

// Any window (overlapping ones too; tiling 2x2 ones take channels_last_2x2_tiling): tasks own
// grad_input rows of a sample, and each pixel gathers from the windows covering it (AxisCovers),
// so every element is written once, inside the parallel loop. The task owning a window's first
// input row checks that window's taps first (taps that did not come from forward are an error,
// worded by the decoder; each window is checked once).
template <typename scalar_t>
void max_backward_channels_last_tap_gather(const scalar_t* dy, const uint8_t* taps, scalar_t* dx,
                                           const Pool2dGeometry& g) {
  const MaxAxis row_axis = max_rows(g), col_axis = max_cols(g);
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  const auto covers_of = [](const MaxAxis& axis) {
    return AxisCovers(axis.size, axis.out_size, [&](int64_t o, const auto& emit) {
      const Span taps_inside = axis.taps(o);
      for (int64_t t = taps_inside.lo; t < taps_inside.hi; ++t) emit(axis.position(o, t), t);
    });
  };
  const AxisCovers rows = covers_of(row_axis), cols = covers_of(col_axis);
  const auto inside_rows = spans_of(OH, [&](int64_t o) { return row_axis.taps(o); });
  const auto inside_cols = spans_of(OW, [&](int64_t o) { return col_axis.taps(o); });
  const TapDecoder decoder(g);
  at::parallel_for(0, g.batch * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / H, ih = task % H;
      const scalar_t* sample_dy = dy + n * OH * OW * C;
      const uint8_t* sample_taps = taps + n * OH * OW * C;
      for (const Cover* r = rows.begin(ih); r != rows.end(ih); ++r) {
        if (r->tap != inside_rows[r->out].lo) continue;  // not this window row's first input row
        for (int64_t ow = 0; ow < OW; ++ow) {
          const uint8_t* window = sample_taps + (r->out * OW + ow) * C;
          if (window_taps_inside(window, C, inside_rows[r->out], inside_cols[ow], g)) continue;
          for (int64_t ch = 0; ch < C; ++ch)  // throws at the first channel outside
            decoder.position(decoder.row0(r->out), decoder.col0(ow), window[ch]);
          TORCH_CHECK(false, "_max_pool2d_backward: window taps outside the input");  // unreachable
        }
      }
      // Each covering window's gradient where its saved tap is the one reading this pixel, +0
      // elsewhere: a branch-free select the compiler vectorises.
      const auto add = [&](const Cover& r, const Cover& c, int64_t c0, scalar_t* __restrict__ sum,
                           int64_t len) {
        const int64_t o = (r.out * OW + c.out) * C + c0;
        const uint8_t k = static_cast<uint8_t>(r.tap * g.kernel_w + c.tap);
        const scalar_t* __restrict__ src = sample_dy + o;
        const uint8_t* __restrict__ tap = sample_taps + o;
        for (int64_t ch = 0; ch < len; ++ch) sum[ch] += keep_if(src[ch], tap[ch] == k);
      };
      scalar_t* line = dx + (n * H + ih) * W * C;  // (W, C)
      for (int64_t iw = 0; iw < W; ++iw) gather_pixel(rows, ih, cols, iw, C, line + iw * C, add);
    }
  });
}

template <typename scalar_t>
void max_backward_channels_last_position_scatter(const scalar_t* dy, const int64_t* indices, scalar_t* dx,
                                                 const Pool2dGeometry& g) {
  const int64_t HW = g.in_h * g.in_w, OHW = g.out_h * g.out_w, C = g.channels;
  for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
    scalar_t* dst = dx + n * HW * C;  // (HW, C)
    for (int64_t i = 0; i < HW; ++i) std::fill(dst + i * C + c0, dst + i * C + c1, scalar_t(0));
    for (int64_t o = 0; o < OHW; ++o) {
      const scalar_t* src = dy + (n * OHW + o) * C;
      const int64_t* argmax = indices + (n * OHW + o) * C;
      for (int64_t ch = c0; ch < c1; ++ch) {
        check_index(argmax[ch], HW);
        dst[argmax[ch] * C + ch] += src[ch];
      }
    }
  });
}

}  // namespace
}  // namespace cnnext
