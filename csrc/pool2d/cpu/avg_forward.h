// Average and adaptive-average pooling forward on the CPU, seven variants (variants.h):
//   nchw_global               adaptive to 1x1: one sum per plane, four planes side by side
//   channels_last_global      adaptive to 1x1: one pass over each sample, all channel sums at once
//   nchw_2x2_tiling           each output row from its two input rows in one pass
//   nchw_separable            fixed windows: window rows summed, then window columns over phases
//   nchw_adaptive             adaptive windows (their width varies): each window summed directly
//   channels_last_2x2_tiling  each output pixel from four input pixels, channels innermost
//   channels_last_blocks      per window, blocks of channels in registers (average_pixel_block)
// Sums run in opmath_t (float for 16-bit inputs) and are scaled by AvgWindows::scale.
// Part of one instruction-set build (loops.h), included after cpu_isa_target.h.
#pragma once

#ifndef CNNEXT_CPU_ISA_TARGET_H
#error "pool2d/cpu/avg_forward.h is part of a loops build: include pool2d/cpu/loops.h"
#endif

namespace cnnext {
namespace {

// Sum of channels [c0, c0 + len) over the window's pixels (rows x cols of one sample (H, W, C)),
// times `scale`, into out[c0, c0 + len). kBlockLength as in max_pixel_block.
template <int64_t kBlockLength, typename scalar_t, typename opmath_t>
CNNEXT_NO_MEMSET_IDIOM void average_pixel_block(const scalar_t* x, scalar_t* out, Span rows, Span cols,
                                                int64_t W, int64_t C, int64_t c0, int64_t len,
                                                opmath_t scale) {
  constexpr int64_t kCapacity = kBlockLength ? kBlockLength : kChannelBlock;
  const int64_t n = kBlockLength ? kBlockLength : len;
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

// Four planes at a time: four independent streams of loads keep more memory requests in flight
// than one plane's.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_nchw_global(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                             const AvgWindows<opmath_t>& windows) {
  const int64_t HW = g.in_h * g.in_w;
  const opmath_t plane_scale = windows.scale[0];
  at::parallel_for(0, g.batch * g.channels, grain_for(HW), [&](int64_t begin, int64_t end) {
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
}

// All of a slice's channel sums in one buffer (L1-sized): the sample is read once, in memory order.
// Blocks of channels in registers (channels_last_blocks) would read it once per block.
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_channels_last_global(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                                      const AvgWindows<opmath_t>& windows) {
  const int64_t HW = g.in_h * g.in_w, C = g.channels;
  const opmath_t plane_scale = windows.scale[0];
  for_channel_slices(g.batch, C, [&](int64_t n, int64_t c0, int64_t c1) {
    const int64_t len = c1 - c0;
    std::vector<opmath_t> sums(len, opmath_t(0));
    opmath_t* __restrict__ acc = sums.data();
    const scalar_t* sample = x + n * HW * C + c0;
    // Four quarters of the sample side by side: four load streams (as nchw_global).
    const int64_t quarter = HW / 4;
    for (int64_t i = 0; i < quarter; ++i) {
      const scalar_t* __restrict__ p0 = sample + i * C;
      const scalar_t* __restrict__ p1 = p0 + quarter * C;
      const scalar_t* __restrict__ p2 = p1 + quarter * C;
      const scalar_t* __restrict__ p3 = p2 + quarter * C;
      for (int64_t ch = 0; ch < len; ++ch)
        acc[ch] += (opmath_t(p0[ch]) + opmath_t(p1[ch])) + (opmath_t(p2[ch]) + opmath_t(p3[ch]));
    }
    for (int64_t i = 4 * quarter; i < HW; ++i) {
      const scalar_t* __restrict__ pixel = sample + i * C;
      for (int64_t ch = 0; ch < len; ++ch) acc[ch] += pixel[ch];
    }
    for (int64_t ch = 0; ch < len; ++ch) out[n * C + c0 + ch] = static_cast<scalar_t>(acc[ch] * plane_scale);
  });
}

template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_nchw_2x2_tiling(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                                 const AvgWindows<opmath_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      for (int64_t oh = 0; oh < OH; ++oh) {
        const scalar_t* __restrict__ a = x + plane * H * W + 2 * oh * W;
        const scalar_t* __restrict__ b = a + W;
        scalar_t* __restrict__ dst = out + (plane * OH + oh) * OW;
        const opmath_t* __restrict__ row_scale = windows.scale.data() + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) {
          const opmath_t left = opmath_t(a[2 * ow]) + opmath_t(b[2 * ow]);
          dst[ow] = static_cast<scalar_t>((left + (opmath_t(a[2 * ow + 1]) + opmath_t(b[2 * ow + 1]))) *
                                          row_scale[ow]);
        }
      }
    }
  });
}

// The window is separable: for each output row, sum its window rows first (contiguous, one pass
// per window row), then split that one row of column sums by stride phase and add each window
// column over all outputs (contiguous).
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_nchw_separable(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                                const AvgWindows<opmath_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  const auto columns = window_columns(g);
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> sum_row(OW), column_sums(W);
    PhasedRow<opmath_t> phased(W, g.stride_w);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* src = x + plane * H * W;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const Span r = windows.rows[oh];
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
        opmath_t* __restrict__ sum = sum_row.data();
        std::fill(sum, sum + OW, opmath_t(0));
        phased.load(col_sum, W);
        for (const WindowColumn& c : columns) {
          const opmath_t* v = phased.column(c);
          for (int64_t ow = c.lo; ow < c.hi; ++ow) sum[ow] += v[ow + c.shift];
        }
        scalar_t* __restrict__ dst = out + (plane * OH + oh) * OW;
        const opmath_t* __restrict__ row_scale = windows.scale.data() + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<scalar_t>(sum[ow] * row_scale[ow]);
      }
    }
  });
}

template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_nchw_adaptive(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                               const AvgWindows<opmath_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w;
  at::parallel_for(0, g.batch * g.channels, grain_for(H * W), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> sum_row(OW);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* src = x + plane * H * W;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const Span r = windows.rows[oh];
        opmath_t* __restrict__ sum = sum_row.data();
        std::fill(sum, sum + OW, opmath_t(0));
        if (OW == 1) {  // whole rows: one contiguous run
          sum[0] = sum_lanes<opmath_t>(src + r.lo * W, (r.hi - r.lo) * W);
        } else {
          for (int64_t ih = r.lo; ih < r.hi; ++ih) {
            for (int64_t ow = 0; ow < OW; ++ow) {
              const Span c = windows.cols[ow];
              sum[ow] += sum_lanes<opmath_t>(src + ih * W + c.lo, c.hi - c.lo);
            }
          }
        }
        scalar_t* __restrict__ dst = out + (plane * OH + oh) * OW;
        const opmath_t* __restrict__ row_scale = windows.scale.data() + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) dst[ow] = static_cast<scalar_t>(sum[ow] * row_scale[ow]);
      }
    }
  });
}

// Tasks are (sample, output row): a task reads about a 1/OH share of the sample, whatever the window.
template <typename PixelFn>
void for_channels_last_output_pixels(const Pool2dGeometry& g, const PixelFn& pixel) {
  const int64_t OH = g.out_h, OW = g.out_w, C = g.channels;
  const int64_t task_work = std::max(OW * C * g.kernel_h * g.kernel_w, ceil_div(g.in_h * g.in_w * C, OH));
  at::parallel_for(0, g.batch * OH, grain_for(task_work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task)
      for (int64_t ow = 0; ow < OW; ++ow) pixel(task / OH, task % OH, ow);
  });
}

template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_channels_last_2x2_tiling(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                                          const AvgWindows<opmath_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  for_channels_last_output_pixels(g, [&](int64_t n, int64_t oh, int64_t ow) {
    const opmath_t pixel_scale = windows.scale[oh * OW + ow];
    const scalar_t* __restrict__ a = x + n * H * W * C + (2 * oh * W + 2 * ow) * C;
    const scalar_t* __restrict__ b = a + W * C;
    scalar_t* __restrict__ o = out + ((n * OH + oh) * OW + ow) * C;
    for (int64_t ch = 0; ch < C; ++ch) {
      const opmath_t left = opmath_t(a[ch]) + opmath_t(b[ch]);
      o[ch] = static_cast<scalar_t>((left + (opmath_t(a[C + ch]) + opmath_t(b[C + ch]))) * pixel_scale);
    }
  });
}

template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
void avg_forward_channels_last_blocks(const scalar_t* x, scalar_t* out, const Pool2dGeometry& g,
                                      const AvgWindows<opmath_t>& windows) {
  const int64_t H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, C = g.channels;
  for_channels_last_output_pixels(g, [&](int64_t n, int64_t oh, int64_t ow) {
    const Span r = windows.rows[oh], c = windows.cols[ow];
    const opmath_t pixel_scale = windows.scale[oh * OW + ow];
    const scalar_t* sample = x + n * H * W * C;
    scalar_t* dst = out + ((n * OH + oh) * OW + ow) * C;
    for_channel_blocks(
        C,
        [&](int64_t c0) { average_pixel_block<kChannelBlock>(sample, dst, r, c, W, C, c0, 0, pixel_scale); },
        [&](int64_t c0, int64_t len) {
          average_pixel_block<0>(sample, dst, r, c, W, C, c0, len, pixel_scale);
        });
  });
}

}  // namespace
}  // namespace cnnext
