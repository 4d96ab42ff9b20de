// Pooling on the CPU: the operator entry points (checks, layout, allocation). The loops live in
// pool2d_cpu_loops.h, compiled for the baseline ISA and for AVX2; the AVX2 build is used where
// the CPU supports it (decided once, at the first call; CNNEXT_CPU_ISA=baseline forces the baseline
// build, which is how the tests cover it on AVX2 machines).
#include "common.h"
#include "pool2d/pool2d.h"
#include "pool2d/pool2d_cpu_loops_table.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace cnnext {
namespace {

void check_cpu(const at::Tensor& t, const char* name) { check_device_type(t, name, c10::DeviceType::CPU); }

const Pool2dCpuLoops& loops() {
  static const Pool2dCpuLoops table = [] {
#if defined(__x86_64__)
    const char* forced = std::getenv("CNNEXT_CPU_ISA");
    const bool baseline_forced = forced != nullptr && std::strcmp(forced, "baseline") == 0;
    if (!baseline_forced && __builtin_cpu_supports("avx2")) return pool2d_cpu_loops_avx2();
#endif
    return pool2d_cpu_loops_baseline();
  }();
  return table;
}

// Shared body of the average-pooling entry points (plain and adaptive).
at::Tensor avg_forward_entry(const at::Tensor& input, const Pool2dGeometry& g, AvgDivisor divisor) {
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(format));
  if (out.numel() == 0) return out;
  const auto x = input.contiguous(format);
  loops().avg_forward(x, out, g, divisor, channels_last);
  return out;
}

at::Tensor avg_backward_entry(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                              const Pool2dGeometry& g, AvgDivisor divisor) {
  check_pool2d_grad_output(op, grad_output, input, g);
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto dx = at::empty(input.sizes(), input.options().memory_format(format));
  if (dx.numel() == 0) return dx;
  const auto dy = grad_output.contiguous(format);
  loops().avg_backward(dy, dx, g, divisor, channels_last);
  return dx;
}

// Forward of max pooling; without indices (inference) the argmax is not tracked and is returned undefined.
PoolWithIndices max_forward_entry(const at::Tensor& input, const Pool2dGeometry& g, bool with_indices) {
  TORCH_CHECK(g.in_h * g.in_w <= std::numeric_limits<int32_t>::max(),
              "max_pool2d (CPU): planes of more than 2^31 - 1 elements are not supported, got ", g.in_h, "x",
              g.in_w);
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(format));
  at::Tensor indices;
  if (with_indices) indices = at::empty(out.sizes(), out.options().dtype(at::kLong).memory_format(format));
  if (out.numel() == 0) return {out, indices};
  const auto x = input.contiguous(format);
  loops().max_forward(x, out, indices, g, channels_last);
  return {out, indices};
}

}  // namespace

PoolWithIndices max_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto g = pool2d_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cpu(input, "max_pool2d: input");
  return max_forward_entry(input, g, /*with_indices=*/true);
}

at::Tensor max_pool2d_values_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto g = pool2d_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cpu(input, "max_pool2d: input");
  return std::get<0>(max_forward_entry(input, g, /*with_indices=*/false));
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, bool ceil_mode) {
  const auto g = pool2d_geometry("_max_pool2d_backward", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cpu(input, "_max_pool2d_backward: input");
  check_pool2d_grad_output("_max_pool2d_backward", grad_output, input, g);
  TORCH_CHECK(indices.scalar_type() == at::kLong, "_max_pool2d_backward: indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), "_max_pool2d_backward: indices must have shape ",
              grad_output.sizes(), ", got ", indices.sizes());
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto dx = at::empty(input.sizes(), input.options().memory_format(format));
  if (dx.numel() == 0) return dx;
  const auto dy = grad_output.contiguous(format);
  const auto argmax = indices.contiguous(format);
  loops().max_backward(dy, argmax, dx, g, channels_last);
  return dx;
}

at::Tensor avg_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                  std::optional<int64_t> divisor_override) {
  const auto g = pool2d_geometry("avg_pool2d", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
  check_cpu(input, "avg_pool2d: input");
  check_divisor_override(divisor_override);
  return avg_forward_entry(input, g, {count_include_pad, divisor_override.value_or(0)});
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto g = pool2d_geometry("_avg_pool2d_backward", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
  check_cpu(input, "_avg_pool2d_backward: input");
  check_divisor_override(divisor_override);
  return avg_backward_entry("_avg_pool2d_backward", grad_output, input, g,
                            {count_include_pad, divisor_override.value_or(0)});
}

at::Tensor adaptive_avg_pool2d_forward_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const auto g = adaptive_pool2d_geometry("adaptive_avg_pool2d", input, output_size);
  check_cpu(input, "adaptive_avg_pool2d: input");
  return avg_forward_entry(input, g, {true, 0});
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  check_ndim(grad_output, "_adaptive_avg_pool2d_backward: grad_output", 4);
  const auto g = adaptive_pool2d_geometry("_adaptive_avg_pool2d_backward", input,
                                          {grad_output.size(-2), grad_output.size(-1)});
  check_cpu(input, "_adaptive_avg_pool2d_backward: input");
  return avg_backward_entry("_adaptive_avg_pool2d_backward", grad_output, input, g, {true, 0});
}

}  // namespace cnnext
