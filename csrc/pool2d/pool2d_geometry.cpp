// Boundary checks of the pooling ops, shared by CPU and CUDA: one requirement per check, each
// message naming the op and the argument, with the native ops' rules for output sizes.
#include <limits>

#include "common.h"
#include "pool2d/pool2d.h"

namespace cnnext {
namespace {

void check_pool_input(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-D (N, C, H, W) tensor, got ", input.dim(),
              "-D with shape ", input.sizes());
  TORCH_CHECK(
      input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0, op,
      ": input must have non-zero channels, height and width (only the batch may be empty), got shape ",
      input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
}

// Output length along one axis, as native pooling computes it: in ceil mode the last window
// must still start inside the input or its left padding.
int64_t pooled_size(const char* op, int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                    int64_t dilation, bool ceil_mode) {
  const int64_t span = window_extent(op, kernel, dilation);
  const int64_t padded = checked_add(op, "the padded input size", size, checked_mul(op, "padding", 2, pad));
  const int64_t numerator = checked_add(op, "the output size", padded - span, ceil_mode ? stride - 1 : 0);
  // Floor division that rounds towards minus infinity (numerator may be negative).
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && checked_mul(op, "the last window's start", out - 1, stride) >= size + pad) --out;
  return out;
}

// The input's sizes; the window fields stay 0 (AvgAxis reads kernel 0 as adaptive pooling).
Pool2dGeometry input_geometry(const at::Tensor& input) {
  Pool2dGeometry g{};
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  return g;
}

}  // namespace

Pool2dGeometry pool2d_geometry(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool ceil_mode) {
  check_pool_input(op, input);
  TORCH_CHECK(kernel_size.size() == 2, op, ": kernel_size must have 2 entries, got ", kernel_size.size());
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 entries, got ", stride.size());
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 entries, got ", padding.size());
  TORCH_CHECK(dilation.size() == 2, op, ": dilation must have 2 entries, got ", dilation.size());
  for (int axis = 0; axis < 2; ++axis) {
    TORCH_CHECK(kernel_size[axis] >= 1, op, ": kernel_size must be >= 1, got ", kernel_size);
    TORCH_CHECK(stride[axis] >= 1, op, ": stride must be >= 1, got ", stride);
    TORCH_CHECK(dilation[axis] >= 1, op, ": dilation must be >= 1, got ", dilation);
    TORCH_CHECK(padding[axis] >= 0, op, ": padding must be >= 0, got ", padding);
    const int64_t span = window_extent(op, kernel_size[axis], dilation[axis]);
    TORCH_CHECK(padding[axis] <= span / 2, op,
                ": padding must be at most half of the (dilated) kernel size, got padding ", padding,
                " for kernel_size ", kernel_size, " and dilation ", dilation);
  }
  Pool2dGeometry g = input_geometry(input);
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  // The kernels number a window's taps t * kernel_w + u in 32 bits. Windows this large reach the
  // ops only when called directly: cnnext.ops serves windows larger than the input as the global
  // reductions they are (cnnext/ops/pool2d.py).
  TORCH_CHECK(g.kernel_h <= std::numeric_limits<int32_t>::max() / g.kernel_w, op, ": a ", g.kernel_h, "x",
              g.kernel_w, " window has more than 2^31 - 1 taps (cnnext.ops.max_pool2d and avg_pool2d serve ",
              "windows larger than the input as the global reductions they are)");
  g.out_h = pooled_size(op, g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, ceil_mode);
  g.out_w = pooled_size(op, g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, ceil_mode);
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, op, ": the output would be empty: input ", g.in_h, "x", g.in_w,
              " with kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding, ", dilation ",
              dilation, " gives ", g.out_h, "x", g.out_w);
  return g;
}

Pool2dGeometry adaptive_pool2d_geometry(const char* op, const at::Tensor& input,
                                        at::IntArrayRef output_size) {
  check_pool_input(op, input);
  TORCH_CHECK(output_size.size() == 2, op, ": output_size must have 2 entries, got ", output_size.size());
  TORCH_CHECK(output_size[0] >= 1 && output_size[1] >= 1, op, ": output_size must be >= 1, got ",
              output_size);
  Pool2dGeometry g = input_geometry(input);
  g.out_h = output_size[0];
  g.out_w = output_size[1];
  return g;
}

void check_pool2d_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                              const Pool2dGeometry& g) {
  check_same_dtype(input, "input", grad_output, "grad_output");
  check_same_device(input, "input", grad_output, "grad_output");
  const std::array<int64_t, 4> expected{g.batch, g.channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, ": grad_output must have shape ",
              at::IntArrayRef(expected), ", got ", grad_output.sizes());
}

bool pool2d_channels_last(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

void check_divisor_override(std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0,
              "avg_pool2d: divisor_override must be nonzero, got 0");
}

}  // namespace cnnext
