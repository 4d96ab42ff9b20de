// conv2d: 2-D cross-correlation over NCHW tensors, same semantics as torch.nn.functional.conv2d
// (stride, symmetric zero padding, dilation, groups).
//
//   input  (N, C, H, W)           weight (Cout, C / groups, kh, kw)       bias (Cout) or none
//   output (N, Cout, Ho, Wo)      Ho = (H + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1
//
// Backward is its own op (cnnext::_conv2d_backward) returning (grad_input, grad_weight,
// grad_bias); an entry whose output_mask is false is returned undefined and never computed.
// Saved for backward: input and weight (the autograd glue in cnnext/ops/conv2d.py saves them).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

namespace cnnext {

// Every size the kernels need, validated once at the boundary (shared by CPU and CUDA).
struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t out_pixels() const { return out_h * out_w; }  // L: output positions per sample
  int64_t patch_size() const { return in_per_group() * kernel_h * kernel_w; }  // K of the GEMM
};

// Checks every argument of the forward op (naming it in the error) and returns the geometry.
Conv2dGeometry conv2d_geometry(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The same for the backward op, plus grad_output's shape against the geometry.
Conv2dGeometry conv2d_backward_geometry(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The memory format a user expects back, native's rule: channels_last where the input or the
// weight is (a model moved to channels_last has channels_last weights, and its one-channel input
// images are both formats at once).
inline at::MemoryFormat conv2d_output_format(const at::Tensor& input, const at::Tensor& weight) {
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                             weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The weight's gradient in the weight's own layout (empty_like's rule: the same strides when the
// weight is dense, so a channels_last weight gets a channels_last gradient). DDP's gradient buckets
// and the optimisers expect that; a contiguous gradient for a channels_last weight would cost them
// a copy every step. The kernels compute it contiguous; the weight is small, so one copy here.
inline at::Tensor in_layout_of_weight(const at::Tensor& dweight, const at::Tensor& weight) {
  if (!dweight.defined()) return dweight;
  if (!weight.is_non_overlapping_and_dense()) return dweight.contiguous(weight.suggest_memory_format());
  if (dweight.strides() == weight.strides()) return dweight;
  auto out = dweight.new_empty_strided(weight.sizes(), weight.strides());
  out.copy_(dweight);
  return out;
}

using Conv2dGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
Conv2dGrads conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask);

#ifdef CNNEXT_WITH_CUDA
at::Tensor conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);
Conv2dGrads conv2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask);
#endif

}  // namespace cnnext
