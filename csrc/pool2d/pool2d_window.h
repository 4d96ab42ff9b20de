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

#include "pool2d/pool2d.h"

namespace cnnext {

struct Span {
  int64_t lo, hi;     // input positions [lo, hi) read (clamped to the input)
  int64_t padded;     // the window's length counting padding (average pooling's count_include_pad)
};

C10_HOST_DEVICE inline int64_t floor_div_nonneg(int64_t a, int64_t b) { return a / b; }
C10_HOST_DEVICE inline int64_t ceil_div_nonneg(int64_t a, int64_t b) { return (a + b - 1) / b; }
C10_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
C10_HOST_DEVICE inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Max pooling along one axis: the taps t in [lo, hi) land inside the input.
struct MaxAxis {
  int64_t size, out_size, kernel, stride, pad, dilation;

  C10_HOST_DEVICE Span taps(int64_t o) const {
    const int64_t start = o * stride - pad;
    const int64_t lo = start < 0 ? ceil_div_nonneg(-start, dilation) : 0;
    const int64_t last = size - 1 - start;  // the tap must satisfy t * dilation <= last
    const int64_t hi = last < 0 ? 0 : min64(kernel, last / dilation + 1);
    return {lo, max64(lo, hi), kernel};
  }
  C10_HOST_DEVICE int64_t position(int64_t o, int64_t t) const { return o * stride - pad + t * dilation; }
  // The tap of output o's window that reads input i, or -1 if none does (i between dilated taps
  // or outside the window).
  C10_HOST_DEVICE int64_t tap_reading(int64_t o, int64_t i) const {
    const int64_t reach = i - position(o, 0);
    if (reach < 0 || reach % dilation != 0 || reach / dilation >= kernel) return -1;
    return reach / dilation;
  }
  C10_HOST_DEVICE Span covering(int64_t i) const {
    const int64_t reach = i + pad - (kernel - 1) * dilation;  // o * stride >= reach
    const int64_t lo = reach <= 0 ? 0 : ceil_div_nonneg(reach, stride);
    return {lo, max64(lo, min64(out_size, floor_div_nonneg(i + pad, stride) + 1)), 0};
  }
};

// Average or adaptive-average pooling along one axis (kernel == 0 selects adaptive).
struct AvgAxis {
  int64_t size, out_size, kernel, stride, pad;

  C10_HOST_DEVICE Span window(int64_t o) const {
    if (kernel == 0) {
      const int64_t lo = o * size / out_size, hi = ceil_div_nonneg((o + 1) * size, out_size);
      return {lo, hi, hi - lo};
    }
    const int64_t start = o * stride - pad, end = min64(start + kernel, size + pad);
    return {max64(start, 0), min64(end, size), end - start};
  }
  C10_HOST_DEVICE Span covering(int64_t i) const {
    if (kernel == 0) {
      return {i * out_size / size, min64(out_size, ceil_div_nonneg((i + 1) * out_size, size)), 0};
    }
    const int64_t reach = i + pad - kernel;  // o * stride > reach
    const int64_t lo = reach < 0 ? 0 : floor_div_nonneg(reach, stride) + 1;
    return {lo, max64(lo, min64(out_size, floor_div_nonneg(i + pad, stride) + 1)), 0};
  }
};

// What an average window divides by.
struct AvgDivisor {
  bool count_include_pad;
  int64_t divisor_override;  // 0: none

  C10_HOST_DEVICE int64_t operator()(const Span& rows, const Span& cols) const {
    if (divisor_override != 0) return divisor_override;
    if (count_include_pad) return rows.padded * cols.padded;
    return (rows.hi - rows.lo) * (cols.hi - cols.lo);
  }
};

inline MaxAxis max_rows(const Pool2dGeometry& g) {
  return {g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dil_h};
}
inline MaxAxis max_cols(const Pool2dGeometry& g) {
  return {g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dil_w};
}
inline AvgAxis avg_rows(const Pool2dGeometry& g) { return {g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h}; }
inline AvgAxis avg_cols(const Pool2dGeometry& g) { return {g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w}; }

inline at::MemoryFormat pool2d_memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace cnnext
