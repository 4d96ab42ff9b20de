// Window arithmetic of pooling along one axis, shared by the CPU and CUDA kernels (host+device).
//
// For output position o, the input positions read are:
//   max:      o * stride - pad + t * dilation, t in [0, kernel), those inside [0, size)
//   average:  [o * stride - pad, min(that + kernel, size + pad)) clamped to [0, size); the
//             unclamped length counts the padding (count_include_pad)
//   adaptive: [floor(o * size / out), ceil((o + 1) * size / out))
// and `covering(i)` inverts that: the outputs [lo, hi) whose window may read input i (used by
// the gather-style CUDA backward, which owns one input element per thread).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "common.h"
#include "pool2d/pool2d.h"

namespace cnnext {

// A half-open range [lo, hi): the window taps, input positions or outputs an axis function names.
struct Span {
  int64_t lo, hi;
};

// An average window along one axis: the input positions [lo, hi) it reads (clamped to the input)
// and its length counting the padding (what count_include_pad divides by).
struct AvgWindow : Span {
  int64_t length_with_padding;
};
C10_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
C10_HOST_DEVICE inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Division of nonnegative window arithmetic by an axis's stride or dilation: plain `/` here (the
// CPU kernels); the CUDA kernels instantiate the axes with a FastDivmod-based divider instead
// (pool2d_cuda.cu), whose launch checks keep every dividend below 2^31.
struct PlainDivider {
  int64_t divisor;
  C10_HOST_DEVICE int64_t div(int64_t a) const { return a / divisor; }
};

// Max pooling along one axis: the taps t in [lo, hi) land inside the input.
template <typename Divider>
struct MaxAxisOf {
  int64_t size, out_size, kernel, stride, pad, dilation;
  Divider by_stride, by_dilation;

  C10_HOST_DEVICE Span taps(int64_t o) const {
    const int64_t start = o * stride - pad;
    const int64_t lo = start < 0 ? by_dilation.div(dilation - 1 - start) : 0;  // ceil(-start / dilation)
    const int64_t last = size - 1 - start;  // the tap must satisfy t * dilation <= last
    const int64_t hi = last < 0 ? 0 : min64(kernel, by_dilation.div(last) + 1);
    return {lo, max64(lo, hi)};
  }
  C10_HOST_DEVICE int64_t position(int64_t o, int64_t t) const { return o * stride - pad + t * dilation; }
  // The tap of output o's window that reads input i, or -1 if none does (i between dilated taps
  // or outside the window).
  C10_HOST_DEVICE int64_t tap_reading(int64_t o, int64_t i) const {
    const int64_t reach = i - position(o, 0);
    if (reach < 0) return -1;
    const int64_t t = by_dilation.div(reach);
    return (t * dilation != reach || t >= kernel) ? -1 : t;
  }
  C10_HOST_DEVICE Span covering(int64_t i) const {
    const int64_t reach = i + pad - (kernel - 1) * dilation;  // o * stride >= reach
    const int64_t lo = reach <= 0 ? 0 : by_stride.div(reach + stride - 1);
    return {lo, max64(lo, min64(out_size, by_stride.div(i + pad) + 1))};
  }
};
using MaxAxis = MaxAxisOf<PlainDivider>;

// Average or adaptive-average pooling along one axis (kernel == 0 selects adaptive, whose bounds
// divide o * size, which may pass 2^31, by plain 64-bit division on both devices).
template <typename Divider>
struct AvgAxisOf {
  int64_t size, out_size, kernel, stride, pad;
  Divider by_stride;

  C10_HOST_DEVICE AvgWindow window(int64_t o) const {
    if (kernel == 0) {
      const int64_t lo = o * size / out_size, hi = ceil_div((o + 1) * size, out_size);
      return {{lo, hi}, hi - lo};
    }
    const int64_t start = o * stride - pad, end = min64(start + kernel, size + pad);
    return {{max64(start, 0), min64(end, size)}, end - start};
  }
  C10_HOST_DEVICE Span covering(int64_t i) const {
    if (kernel == 0) {
      return {i * out_size / size, min64(out_size, ceil_div((i + 1) * out_size, size))};
    }
    const int64_t reach = i + pad - kernel;  // o * stride > reach
    const int64_t lo = reach < 0 ? 0 : by_stride.div(reach) + 1;
    return {lo, max64(lo, min64(out_size, by_stride.div(i + pad) + 1))};
  }
};
using AvgAxis = AvgAxisOf<PlainDivider>;

// What an average window divides by.
struct AvgDivisor {
  bool count_include_pad;
  int64_t divisor_override;  // 0: none

  C10_HOST_DEVICE int64_t operator()(const AvgWindow& rows, const AvgWindow& cols) const {
    if (divisor_override != 0) return divisor_override;
    if (count_include_pad) return rows.length_with_padding * cols.length_with_padding;
    return (rows.hi - rows.lo) * (cols.hi - cols.lo);
  }
};

// Adaptive pooling has no window fields (kernel 0, stride 0): its dividers get 1, never used.
inline MaxAxis max_rows(const Pool2dGeometry& g) {
  return {g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, {g.stride_h}, {g.dil_h}};
}
inline MaxAxis max_cols(const Pool2dGeometry& g) {
  return {g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, {g.stride_w}, {g.dil_w}};
}
inline AvgAxis avg_rows(const Pool2dGeometry& g) {
  return {g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, {g.stride_h > 0 ? g.stride_h : 1}};
}
inline AvgAxis avg_cols(const Pool2dGeometry& g) {
  return {g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, {g.stride_w > 0 ? g.stride_w : 1}};
}

inline at::MemoryFormat pool2d_memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace cnnext
