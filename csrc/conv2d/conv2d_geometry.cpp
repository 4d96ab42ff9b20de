// Boundary checks of conv2d, shared by the CPU and CUDA implementations: each requirement is its
// own check and its message names the argument, the expectation and what was got.
#include "conv2d/conv2d.h"

#include "common.h"

namespace cnnext {

Conv2dGeometry conv2d_geometry(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_ndim(input, "conv2d: input", 4);
  check_ndim(weight, "conv2d: weight", 4);
  check_floating(input, "conv2d: input");
  check_same_dtype(input, "input", weight, "weight");
  check_same_device(input, "input", weight, "weight");
  check_pair(stride, "conv2d: stride", 1);
  check_pair(padding, "conv2d: padding", 0);
  check_pair(dilation, "conv2d: dilation", 1);
  TORCH_CHECK(groups >= 1, "conv2d: groups must be >= 1, got ", groups);

  Conv2dGeometry g{};
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];
  g.groups = groups;

  TORCH_CHECK(g.in_channels % groups == 0, "conv2d: groups (", groups, ") must divide the input channels (",
              g.in_channels, ")");
  TORCH_CHECK(g.out_channels % groups == 0, "conv2d: groups (", groups,
              ") must divide the output channels (weight.size(0) = ", g.out_channels, ")");
  TORCH_CHECK(weight.size(1) * groups == g.in_channels, "conv2d: weight expects ", weight.size(1) * groups,
              " input channels (weight.size(1) * groups = ", weight.size(1), " * ", groups,
              "), but input has ", g.in_channels, " channels");
  TORCH_CHECK(g.kernel_h >= 1 && g.kernel_w >= 1, "conv2d: kernel size must be >= 1, got weight shape ",
              weight.sizes());

  const char* op = "conv2d";
  const int64_t span_h = window_extent(op, g.kernel_h, g.dil_h),
                span_w = window_extent(op, g.kernel_w, g.dil_w);
  const int64_t padded_h =
      checked_add(op, "the padded input height", g.in_h, checked_mul(op, "padding", 2, g.pad_h));
  const int64_t padded_w =
      checked_add(op, "the padded input width", g.in_w, checked_mul(op, "padding", 2, g.pad_w));
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w, "conv2d: kernel size (dilated) ", span_h, "x", span_w,
              " is larger than the padded input ", padded_h, "x", padded_w);
  g.out_h = (padded_h - span_h) / g.stride_h + 1;
  g.out_w = (padded_w - span_w) / g.stride_w + 1;

  if (bias.has_value() && bias->defined()) {
    check_ndim(*bias, "conv2d: bias", 1);
    TORCH_CHECK(bias->size(0) == g.out_channels, "conv2d: bias must have ", g.out_channels,
                " entries (one per output channel), got ", bias->size(0));
    check_same_dtype(input, "input", *bias, "bias");
    check_same_device(input, "input", *bias, "bias");
  }
  return g;
}

Conv2dGeometry conv2d_backward_geometry(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = conv2d_geometry(input, weight, std::nullopt, stride, padding, dilation, groups);
  check_same_dtype(input, "input", grad_output, "grad_output");
  check_same_device(input, "input", grad_output, "grad_output");
  const std::array<int64_t, 4> expected{g.batch, g.out_channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
              "_conv2d_backward: grad_output must have shape ", at::IntArrayRef(expected), ", got ",
              grad_output.sizes());
  return g;
}

}  // namespace cnnext
