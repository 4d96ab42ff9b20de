// The pooling operator entry points, written once for both devices: argument checks, the layout
// the loops work in (NCHW or channels_last; other strides are copied once), output allocation and
// the empty-tensor early return. `Loops` supplies the device: kDevice, empty(sizes, options) to
// allocate outputs, and the four loops, taking dense tensors in the layout `channels_last` names
// and preallocated outputs:
//   max_forward(x, out, indices, g, channels_last)   indices: undefined (no argmax, inference),
//                                                    int64 plane positions or uint8 window taps
//   max_backward(dy, indices, dx, g, channels_last)  indices: int64 or uint8, as forward wrote
//   avg_forward(x, out, g, divisor, channels_last)    divisor: see AvgDivisor (adaptive: kernel 0)
//   avg_backward(dy, dx, g, divisor, channels_last)
#pragma once

#include <ATen/ops/empty.h>

#include "common.h"
#include "pool2d/pool2d.h"
#include "pool2d/pool2d_window.h"

namespace cnnext {

// uint8 window taps can name the taps of windows up to kMaxWindowTaps.
inline void check_window_taps(const char* op, const Pool2dGeometry& g) {
  TORCH_CHECK(g.kernel_h * g.kernel_w <= kMaxWindowTaps, op, ": uint8 window taps name at most ",
              kMaxWindowTaps, " taps, the kernel ", g.kernel_h, "x", g.kernel_w, " has ",
              g.kernel_h * g.kernel_w, "; use max_pool2d (int64 indices)");
}

template <typename Loops>
struct Pool2dEntries {
  static PoolWithIndices max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    bool ceil_mode, Argmax argmax) {
    const bool taps = argmax == Argmax::kWindowTap;
    const char* op = taps ? "_max_pool2d_with_taps" : "max_pool2d";
    const auto g = pool2d_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode);
    check_device_type(input, taps ? "_max_pool2d_with_taps: input" : "max_pool2d: input", Loops::kDevice);
    if (taps) check_window_taps(op, g);
    const bool channels_last = pool2d_channels_last(input);
    const auto format = pool2d_memory_format(channels_last);
    auto out = Loops::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(format));
    at::Tensor indices;
    if (argmax != Argmax::kNone) {
      const auto dtype = taps ? at::kByte : at::kLong;
      indices = Loops::empty(out.sizes(), out.options().dtype(dtype).memory_format(format));
    }
    if (out.numel() > 0) Loops::max_forward(input.contiguous(format), out, indices, g, channels_last);
    return {out, indices};
  }

  static at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& indices, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, bool ceil_mode) {
    const char* op = "_max_pool2d_backward";
    const auto g = pool2d_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode);
    check_device_type(input, "_max_pool2d_backward: input", Loops::kDevice);
    check_pool2d_grad_output(op, grad_output, input, g);
    TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kByte, op,
                ": indices must be int64 plane positions or uint8 window taps, got ", indices.scalar_type());
    if (indices.scalar_type() == at::kByte) check_window_taps(op, g);
    TORCH_CHECK(indices.sizes() == grad_output.sizes(), op, ": indices must have shape ", grad_output.sizes(),
                ", got ", indices.sizes());
    check_same_device(input, "input", indices, "indices");
    const bool channels_last = pool2d_channels_last(input);
    const auto format = pool2d_memory_format(channels_last);
    auto dx = Loops::empty(input.sizes(), input.options().memory_format(format));
    if (dx.numel() > 0) {
      // grad_output and indices in the same layout: one set of strides serves both.
      Loops::max_backward(grad_output.contiguous(format), indices.contiguous(format), dx, g, channels_last);
    }
    return dx;
  }

  static at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
    const auto g = pool2d_geometry("avg_pool2d", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
    check_device_type(input, "avg_pool2d: input", Loops::kDevice);
    check_divisor_override(divisor_override);
    return average(input, g, {count_include_pad, divisor_override.value_or(0)});
  }

  static at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                        std::optional<int64_t> divisor_override) {
    const char* op = "_avg_pool2d_backward";
    const auto g = pool2d_geometry(op, input, kernel_size, stride, padding, {1, 1}, ceil_mode);
    check_device_type(input, "_avg_pool2d_backward: input", Loops::kDevice);
    check_divisor_override(divisor_override);
    return average_backward(op, grad_output, input, g, {count_include_pad, divisor_override.value_or(0)});
  }

  static at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
    const auto g = adaptive_pool2d_geometry("adaptive_avg_pool2d", input, output_size);
    check_device_type(input, "adaptive_avg_pool2d: input", Loops::kDevice);
    return average(input, g, {true, 0});
  }

  static at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
    const char* op = "_adaptive_avg_pool2d_backward";
    check_ndim(grad_output, "_adaptive_avg_pool2d_backward: grad_output", 4);
    const auto g = adaptive_pool2d_geometry(op, input, {grad_output.size(2), grad_output.size(3)});
    check_device_type(input, "_adaptive_avg_pool2d_backward: input", Loops::kDevice);
    return average_backward(op, grad_output, input, g, {true, 0});
  }

 private:
  static at::Tensor average(const at::Tensor& input, const Pool2dGeometry& g, AvgDivisor divisor) {
    const bool channels_last = pool2d_channels_last(input);
    const auto format = pool2d_memory_format(channels_last);
    auto out = Loops::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(format));
    if (out.numel() > 0) Loops::avg_forward(input.contiguous(format), out, g, divisor, channels_last);
    return out;
  }

  static at::Tensor average_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                     const Pool2dGeometry& g, AvgDivisor divisor) {
    check_pool2d_grad_output(op, grad_output, input, g);
    const bool channels_last = pool2d_channels_last(input);
    const auto format = pool2d_memory_format(channels_last);
    auto dx = Loops::empty(input.sizes(), input.options().memory_format(format));
    if (dx.numel() > 0) Loops::avg_backward(grad_output.contiguous(format), dx, g, divisor, channels_last);
    return dx;
  }
};

}  // namespace cnnext

// Defines the eight operator entry points of pool2d.h for one device, `<op>_<device>`, as calls
// of Pool2dEntries<LOOPS>. Used once per device file (pool2d_cpu.cpp, pool2d_cuda.cu), inside
// namespace cnnext; the functions are what registration.cpp and operator_schemas.h bind.
#define CNNEXT_DEFINE_POOL2D_ENTRY_POINTS(device, LOOPS)                                                     \
  PoolWithIndices max_pool2d_forward_##device(const at::Tensor& input, at::IntArrayRef kernel_size,          \
                                              at::IntArrayRef stride, at::IntArrayRef padding,               \
                                              at::IntArrayRef dilation, bool ceil_mode) {                    \
    return Pool2dEntries<LOOPS>::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,        \
                                            Argmax::kPlanePosition);                                         \
  }                                                                                                          \
  PoolWithIndices max_pool2d_with_taps_##device(const at::Tensor& input, at::IntArrayRef kernel_size,        \
                                                at::IntArrayRef stride, at::IntArrayRef padding,             \
                                                at::IntArrayRef dilation, bool ceil_mode) {                  \
    return Pool2dEntries<LOOPS>::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,        \
                                            Argmax::kWindowTap);                                             \
  }                                                                                                          \
  at::Tensor max_pool2d_values_##device(const at::Tensor& input, at::IntArrayRef kernel_size,                \
                                        at::IntArrayRef stride, at::IntArrayRef padding,                     \
                                        at::IntArrayRef dilation, bool ceil_mode) {                          \
    return std::get<0>(Pool2dEntries<LOOPS>::max_pool2d(input, kernel_size, stride, padding, dilation,       \
                                                        ceil_mode, Argmax::kNone));                          \
  }                                                                                                          \
  at::Tensor max_pool2d_backward_##device(const at::Tensor& grad_output, const at::Tensor& input,            \
                                          const at::Tensor& indices, at::IntArrayRef kernel_size,            \
                                          at::IntArrayRef stride, at::IntArrayRef padding,                   \
                                          at::IntArrayRef dilation, bool ceil_mode) {                        \
    return Pool2dEntries<LOOPS>::max_pool2d_backward(grad_output, input, indices, kernel_size, stride,       \
                                                     padding, dilation, ceil_mode);                          \
  }                                                                                                          \
  at::Tensor avg_pool2d_forward_##device(const at::Tensor& input, at::IntArrayRef kernel_size,               \
                                         at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,    \
                                         bool count_include_pad, std::optional<int64_t> divisor_override) {  \
    return Pool2dEntries<LOOPS>::avg_pool2d(input, kernel_size, stride, padding, ceil_mode,                  \
                                            count_include_pad, divisor_override);                            \
  }                                                                                                          \
  at::Tensor avg_pool2d_backward_##device(const at::Tensor& grad_output, const at::Tensor& input,            \
                                          at::IntArrayRef kernel_size, at::IntArrayRef stride,               \
                                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,   \
                                          std::optional<int64_t> divisor_override) {                         \
    return Pool2dEntries<LOOPS>::avg_pool2d_backward(grad_output, input, kernel_size, stride, padding,       \
                                                     ceil_mode, count_include_pad, divisor_override);        \
  }                                                                                                          \
  at::Tensor adaptive_avg_pool2d_forward_##device(const at::Tensor& input, at::IntArrayRef output_size) {    \
    return Pool2dEntries<LOOPS>::adaptive_avg_pool2d(input, output_size);                                    \
  }                                                                                                          \
  at::Tensor adaptive_avg_pool2d_backward_##device(const at::Tensor& grad_output, const at::Tensor& input) { \
    return Pool2dEntries<LOOPS>::adaptive_avg_pool2d_backward(grad_output, input);                           \
  }
