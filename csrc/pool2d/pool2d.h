// pool2d: max, average and adaptive-average pooling over (N, C, H, W) tensors, same semantics
// and output sizes as torch.nn.functional.{max_pool2d, avg_pool2d, adaptive_avg_pool2d}.
//
//   input  (N, C, H, W), NCHW or channels_last (used in place; other strides are copied once)
//   output (N, C, OH, OW) in the input's memory format
//   max_pool2d also returns indices (N, C, OH, OW) int64: the argmax as ih * W + iw within its
//   (n, c) plane, as native does. NaN propagates: a NaN in a window wins (the last one seen, in
//   row-major window order, again as native does); ties keep the first maximum.
//
// _max_pool2d_values: max_pool2d without indices, for inference (not differentiable); cnnext.ops
// uses it when no gradient is needed and no indices were asked for.
// _max_pool2d_with_taps: max_pool2d whose argmax is the window tap t * kernel_w + u as uint8 (the
// window's row t and column u, row-major), for windows of at most 256 taps: what autograd saves
// when the caller did not ask for indices. An eighth of int64's bytes to write, keep and read
// back (measured on the 2x2 case: see benchmarks/NOTES.md).
//
// Backward ops (private, joined in Python with register_autograd):
//   _max_pool2d_backward:          grad_input[n, c, indices[n, c, o]] += grad_output[n, c, o]
//                                  (indices: int64 plane positions, or uint8 window taps)
//   _avg_pool2d_backward,
//   _adaptive_avg_pool2d_backward: every input in a window gets grad_output / divisor
// grad_input is written (=) in full, zeros where no window reads.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace cnnext {

// Sizes and window parameters of max/avg pooling, validated at the boundary.
struct Pool2dGeometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

// Checks input, kernel_size, stride, padding, dilation (naming each in its message) and computes
// the output size as native does (floor or ceil mode, the last window starting inside the input).
Pool2dGeometry pool2d_geometry(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool ceil_mode);
// Output size (N, C, OH, OW) of adaptive pooling, with the input checks.
Pool2dGeometry adaptive_pool2d_geometry(const char* op, const at::Tensor& input, at::IntArrayRef output_size);
// grad_output must be shaped like the forward output.
void check_pool2d_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                              const Pool2dGeometry& g);
// The layout the kernels compute in: channels_last if the input is laid out that way, else NCHW.
bool pool2d_channels_last(const at::Tensor& input);
// divisor_override, if given, must be nonzero.
void check_divisor_override(std::optional<int64_t> divisor_override);

using PoolWithIndices = std::tuple<at::Tensor, at::Tensor>;

// How max pooling records each window's argmax (the indices tensor's dtype tells the loops).
enum class Argmax {
  kNone,           // inference: not tracked
  kPlanePosition,  // int64 ih * W + iw within the (n, c) plane: native's, returned to users
  kWindowTap,      // uint8 t * kernel_w + u within the window: saved for backward
};
constexpr int64_t kMaxWindowTaps = 256;  // the most taps a uint8 can name

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<index_t>{}) with index_t the type `indices` records the argmax as (Argmax): void
// when undefined (not tracked), uint8_t window taps, int64_t plane positions.
template <typename Fn>
void with_argmax_type(const at::Tensor& indices, const Fn& fn) {
  if (!indices.defined()) {
    fn(TypeTag<void>{});
  } else if (indices.scalar_type() == at::kByte) {
    fn(TypeTag<uint8_t>{});
  } else {
    fn(TypeTag<int64_t>{});
  }
}

PoolWithIndices max_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, bool ceil_mode);
PoolWithIndices max_pool2d_with_taps_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d_values_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& indices, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   bool ceil_mode);
at::Tensor avg_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                  bool count_include_pad, std::optional<int64_t> divisor_override);
at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override);
at::Tensor adaptive_avg_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef output_size);
at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input);

#ifdef CNNEXT_WITH_CUDA
PoolWithIndices max_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, bool ceil_mode);
PoolWithIndices max_pool2d_with_taps_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d_values_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  bool ceil_mode);
at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& indices, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    bool ceil_mode);
at::Tensor avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                   bool count_include_pad, std::optional<int64_t> divisor_override);
at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                    std::optional<int64_t> divisor_override);
at::Tensor adaptive_avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef output_size);
at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input);
#endif

}  // namespace cnnext
