// Average and adaptive-average pooling backward on the CPU, six variants (variants.h):
//   nchw_global             adaptive to 1x1: each plane filled with its one share
//   channels_last_global    adaptive to 1x1: each pixel of a sample gets the sample's shares
//   nchw_gather_rows        fixed windows other than the 2x2 tiling: each grad_input row gathered
//   nchw_2x2_tiling         each share written to the four inputs of its window
//   nchw_adaptive_scatter   adaptive windows: zero fill, then each share added over its window
//   channels_last_gather    any window but global: each input pixel sums the shares of the
//                           windows covering it, written once
// A share is an output's gradient times 1 / divisor (AvgWindows::scale). Each task owns a
// grad_input slice, so no two tasks write one element.
// Part of one instruction-set build (loops.h), included after cpu_isa_target.h.
#pragma once

#ifndef CNNEXT_CPU_ISA_TARGET_H
#error "pool2d/cpu/avg_backward.h is part of a loops build: include pool2d/cpu/loops.h"
#endif

namespace cnnext {
namespace {

// Global pooling (adaptive to 1x1, the head of every CNN here): every input of a plane gets the
// plane's one share, written once. The adaptive scatter zero-filled the plane and then added the
// share: two passes over grad_input (figures in benchmarks/NOTES.md). Same values: 0 + share is
// the share.
template <typename scalar_t>
void avg_backward_nchw_global(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g,
                              const AvgWindows<scalar_t>& windows) {
  const int64_t HW = g.in_h * g.in_w;
  const scalar_t inv = windows.scale[0];
  at::parallel_for(0, g.batch * g.channels, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      std::fill(dx + plane * HW, dx + (plane + 1) * HW, dy[plane] * inv);
  });
}

template <typename scalar_t>
void avg_backward_channels_last_global(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g,
                                       const AvgWindows<scalar_t>& windows) {
  const int64_t HW = g.in_h * g.in_w, C = g.channels;
  const scalar_t inv = windows.scale[0];
  for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
    std::vector<scalar_t> shares(c1 - c0);
    for (int64_t ch = c0; ch < c1; ++ch) shares[ch - c0] = dy[n * C + ch] * inv;
    scalar_t* dst = dx + n * HW * C + c0;  // (HW, C), from channel c0
    for (int64_t i = 0; i < HW; ++i) std::copy(shares.begin(), shares.end(), dst + i * C);
  });
}

// One grad_input row at a time: the rows of shares whose windows cover it are summed (contiguous),
// spread over the window columns into the row's stride phases (contiguous adds), and the phases
// interleaved into the row. Each element is written once: no zero fill and no strided
// read-modify-write (which had dominated the 3x3 stride-2 backward).
template <typename scalar_t>
void avg_backward_nchw_gather_rows(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g,
                                   const AvgWindows<scalar_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, stride = g.stride_w;
  const auto columns = window_columns(g);
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
    covering_rows[ih] = {lo, std::max(lo, hi)};
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
        for (const WindowColumn& c : columns) {
          scalar_t* __restrict__ phase = phases.data() + c.phase * phase_len + c.shift;
          for (int64_t ow = c.lo; ow < c.hi; ++ow) phase[ow] += sum[ow];
        }
        interleave_phases(phases.data(), phase_len, stride, line, W);
      }
    }
  });
}

// The NCHW scatters, row of shares by row: the 2x2 tiling writes each input once (but zeroes the
// plane first for an odd last row or column); adaptive windows add each share over their window.
template <bool k2x2Tiling, typename scalar_t>
void avg_backward_nchw_scatter(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g,
                               const AvgWindows<scalar_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> share_row(OW);
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* dst = dx + plane * H * W;
      std::fill(dst, dst + H * W, scalar_t(0));
      for (int64_t oh = 0; oh < OH; ++oh) {
        scalar_t* __restrict__ share = share_row.data();
        const scalar_t* src = dy + (plane * OH + oh) * OW;
        const scalar_t* __restrict__ row_scale = windows.scale.data() + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) share[ow] = src[ow] * row_scale[ow];
        if constexpr (k2x2Tiling) {
          scalar_t* __restrict__ a = dst + 2 * oh * W;
          scalar_t* __restrict__ b = a + W;
          for (int64_t ow = 0; ow < OW; ++ow)
            a[2 * ow] = a[2 * ow + 1] = b[2 * ow] = b[2 * ow + 1] = share[ow];
        } else {
          const Span r = windows.rows[oh];
          for (int64_t ih = r.lo; ih < r.hi; ++ih) {
            scalar_t* __restrict__ line = dst + ih * W;
            for (int64_t ow = 0; ow < OW; ++ow) {
              const Span c = windows.cols[ow];
              for (int64_t iw = c.lo; iw < c.hi; ++iw) line[iw] += share[ow];
            }
          }
        }
      }
    }
  });
}

// Any window but global (tiling 2x2 and adaptive ones too): tasks own grad_input rows of a sample,
// each pixel gathers the shares of the windows covering it (AxisCovers) and is written once,
// inside the parallel loop (the scatter it replaced zero-filled its slice, then added each share
// over its window's pixels).
template <typename scalar_t>
void avg_backward_channels_last_gather(const scalar_t* dy, scalar_t* dx, const Pool2dGeometry& g,
                                       const AvgWindows<scalar_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  const auto covers_of = [](int64_t in_size, const std::vector<AvgWindow>& spans) {
    return AxisCovers(in_size, static_cast<int64_t>(spans.size()), [&](int64_t o, const auto& emit) {
      for (int64_t i = spans[o].lo; i < spans[o].hi; ++i) emit(i, i - spans[o].lo);
    });
  };
  const AxisCovers rows = covers_of(H, windows.rows), cols = covers_of(W, windows.cols);
  at::parallel_for(0, g.batch * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / H, ih = task % H;
      const scalar_t* sample_dy = dy + n * OH * OW * C;
      const auto add = [&](const Cover& r, const Cover& c, int64_t c0, scalar_t* __restrict__ sum,
                           int64_t len) {
        const int64_t o = r.out * OW + c.out;
        const scalar_t inv = windows.scale[o];
        const scalar_t* __restrict__ src = sample_dy + o * C + c0;
        for (int64_t ch = 0; ch < len; ++ch) sum[ch] += src[ch] * inv;
      };
      scalar_t* line = dx + (n * H + ih) * W * C;  // (W, C)
      for (int64_t iw = 0; iw < W; ++iw) gather_pixel(rows, ih, cols, iw, C, line + iw * C, add);
    }
  });
}

}  // namespace
}  // namespace cnnext
