// Pooling on CUDA: max (with argmax indices), average and adaptive average, forward and backward.
//
// Forward: one thread per output element; it walks its window (pool2d_window.h) and writes the
// result (and, for max, the argmax ih * W + iw). Backward is a gather, one thread per input
// element: it visits the outputs whose window can read it (`covering`) and sums their gradient
// shares (max: only where the saved argmax is this element), then writes grad_input (=). No
// atomics, so results are deterministic. Tensors are read and written through their strides, and
// the thread-to-element order follows the memory layout (channels innermost for channels_last,
// width innermost for NCHW) so a warp's accesses are contiguous. Accumulation is in float for
// half/bfloat16/float and in double for double.
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "common.h"
#include "pool2d/pool2d.h"
#include "pool2d/pool2d_window.h"

namespace cnnext {
namespace {

constexpr int kThreads = 256;

struct Strides4 {
  int64_t n, c, h, w;
  __device__ int64_t offset(int64_t n_, int64_t c_, int64_t h_, int64_t w_) const {
    return n_ * n + c_ * c + h_ * h + w_ * w;
  }
};
Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Element `index` of a (N, C, H, W) tensor counted in memory order of the layout.
struct Coord {
  int64_t n, c, h, w;
};
template <bool kChannelsLast>
__device__ Coord decode(int64_t index, int64_t C, int64_t H, int64_t W) {
  if (kChannelsLast) {
    const int64_t c = index % C, w = (index / C) % W, h = (index / (C * W)) % H;
    return {index / (C * W * H), c, h, w};
  }
  const int64_t w = index % W, h = (index / W) % H, c = (index / (W * H)) % C;
  return {index / (W * H * C), c, h, w};
}

#define CNNEXT_GRID_STRIDE_LOOP(i, total) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (total); i += int64_t(gridDim.x) * blockDim.x)

template <typename scalar_t, bool kChannelsLast>
__global__ void max_forward_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, int64_t* indices, Strides4 os,
                                   int64_t C, MaxAxis rows, MaxAxis cols, int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord o = decode<kChannelsLast>(index, C, rows.out_size, cols.out_size);
    const Span r = rows.taps(o.h), cc = cols.taps(o.w);
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t best_index = rows.position(o.h, r.lo) * cols.size + cols.position(o.w, cc.lo);
    for (int64_t t = r.lo; t < r.hi; ++t) {
      const int64_t ih = rows.position(o.h, t);
      for (int64_t u = cc.lo; u < cc.hi; ++u) {
        const int64_t iw = cols.position(o.w, u);
        const acc_t v = static_cast<acc_t>(x[xs.offset(o.n, o.c, ih, iw)]);
        if (v > best || isnan(v)) {  // NaN wins, as in native max pooling
          best = v;
          best_index = ih * cols.size + iw;
        }
      }
    }
    const int64_t at = os.offset(o.n, o.c, o.h, o.w);
    out[at] = static_cast<scalar_t>(best);
    if (indices != nullptr) indices[at] = best_index;  // null: inference, no argmax wanted
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void max_backward_kernel(const scalar_t* dy, const int64_t* indices, Strides4 ys, scalar_t* dx,
                                    Strides4 xs, int64_t C, MaxAxis rows, MaxAxis cols, int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord i = decode<kChannelsLast>(index, C, rows.size, cols.size);
    const Span oh_range = rows.covering(i.h), ow_range = cols.covering(i.w);
    const int64_t me = i.h * cols.size + i.w;
    acc_t sum = 0;
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const int64_t at = ys.offset(i.n, i.c, oh, ow);
        if (indices[at] == me) sum += static_cast<acc_t>(dy[at]);
      }
    }
    dx[xs.offset(i.n, i.c, i.h, i.w)] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void avg_forward_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, Strides4 os, int64_t C,
                                   AvgAxis rows, AvgAxis cols, AvgDivisor divisor, int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord o = decode<kChannelsLast>(index, C, rows.out_size, cols.out_size);
    const Span r = rows.window(o.h), cc = cols.window(o.w);
    acc_t sum = 0;
    for (int64_t ih = r.lo; ih < r.hi; ++ih)
      for (int64_t iw = cc.lo; iw < cc.hi; ++iw) sum += static_cast<acc_t>(x[xs.offset(o.n, o.c, ih, iw)]);
    const int64_t d = divisor(r, cc);
    out[os.offset(o.n, o.c, o.h, o.w)] = static_cast<scalar_t>(d == 0 ? acc_t(0) : sum / static_cast<acc_t>(d));
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void avg_backward_kernel(const scalar_t* dy, Strides4 ys, scalar_t* dx, Strides4 xs, int64_t C,
                                    AvgAxis rows, AvgAxis cols, AvgDivisor divisor, int64_t total) {
  using acc_t = at::acc_type<scalar_t, true>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord i = decode<kChannelsLast>(index, C, rows.size, cols.size);
    const Span oh_range = rows.covering(i.h), ow_range = cols.covering(i.w);
    acc_t sum = 0;
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      const Span r = rows.window(oh);
      if (i.h < r.lo || i.h >= r.hi) continue;
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const Span cc = cols.window(ow);
        const int64_t d = divisor(r, cc);
        if (i.w < cc.lo || i.w >= cc.hi || d == 0) continue;
        sum += static_cast<acc_t>(dy[ys.offset(i.n, i.c, oh, ow)]) / static_cast<acc_t>(d);
      }
    }
    dx[xs.offset(i.n, i.c, i.h, i.w)] = static_cast<scalar_t>(sum);
  }
}

#undef CNNEXT_GRID_STRIDE_LOOP

unsigned blocks_for(int64_t total) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(total, kThreads), 1 << 30)); }

void check_cuda(const at::Tensor& t, const char* name) { check_device_type(t, name, c10::DeviceType::CUDA); }


// Launches KERNEL<scalar_t, channels_last>(args...) over `total` elements on the current stream.
#define CNNEXT_LAUNCH_POOL(KERNEL, channels_last, total, ...)                                               \
  do {                                                                                                      \
    const auto stream = c10::cuda::getCurrentCUDAStream();                                                  \
    if (channels_last) {                                                                                    \
      KERNEL<scalar_t, true><<<blocks_for(total), kThreads, 0, stream>>>(__VA_ARGS__, total);               \
    } else {                                                                                                \
      KERNEL<scalar_t, false><<<blocks_for(total), kThreads, 0, stream>>>(__VA_ARGS__, total);              \
    }                                                                                                       \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                         \
  } while (0)

at::Tensor avg_forward_entry(const at::Tensor& input, const Pool2dGeometry& g, AvgDivisor divisor) {
  const c10::cuda::CUDAGuard guard(input.device());
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(format));
  if (out.numel() == 0) return out;
  const auto x = input.contiguous(format);
  const int64_t total = out.numel();
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "avg_pool2d_forward_cuda", [&] {
    CNNEXT_LAUNCH_POOL(avg_forward_kernel, channels_last, total, x.const_data_ptr<scalar_t>(), strides_of(x),
                       out.mutable_data_ptr<scalar_t>(), strides_of(out), g.channels, avg_rows(g), avg_cols(g),
                       divisor);
  });
  return out;
}

at::Tensor avg_backward_entry(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                              const Pool2dGeometry& g, AvgDivisor divisor) {
  check_pool2d_grad_output(op, grad_output, input, g);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto dx = at::empty(input.sizes(), input.options().memory_format(format));
  if (dx.numel() == 0) return dx;
  const auto dy = grad_output.contiguous(format);
  const int64_t total = dx.numel();
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "avg_pool2d_backward_cuda", [&] {
    CNNEXT_LAUNCH_POOL(avg_backward_kernel, channels_last, total, dy.const_data_ptr<scalar_t>(), strides_of(dy),
                       dx.mutable_data_ptr<scalar_t>(), strides_of(dx), g.channels, avg_rows(g), avg_cols(g),
                       divisor);
  });
  return dx;
}

}  // namespace

namespace {

// Forward of max pooling; without indices (inference) they are not written and returned undefined.
PoolWithIndices max_forward_entry(const at::Tensor& input, const Pool2dGeometry& g, bool with_indices) {
  const c10::cuda::CUDAGuard guard(input.device());
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto out = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().memory_format(format));
  at::Tensor indices;
  if (with_indices) indices = at::empty(out.sizes(), out.options().dtype(at::kLong).memory_format(format));
  if (out.numel() == 0) return {out, indices};
  const auto x = input.contiguous(format);
  const int64_t total = out.numel();
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "max_pool2d_forward_cuda", [&] {
    CNNEXT_LAUNCH_POOL(max_forward_kernel, channels_last, total, x.const_data_ptr<scalar_t>(), strides_of(x),
                       out.mutable_data_ptr<scalar_t>(),
                       with_indices ? indices.mutable_data_ptr<int64_t>() : nullptr, strides_of(out), g.channels,
                       max_rows(g), max_cols(g));
  });
  return {out, indices};
}

}  // namespace

PoolWithIndices max_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto g = pool2d_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cuda(input, "max_pool2d: input");
  return max_forward_entry(input, g, /*with_indices=*/true);
}

at::Tensor max_pool2d_values_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto g = pool2d_geometry("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cuda(input, "max_pool2d: input");
  return std::get<0>(max_forward_entry(input, g, /*with_indices=*/false));
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, bool ceil_mode) {
  const auto g = pool2d_geometry("_max_pool2d_backward", input, kernel_size, stride, padding, dilation, ceil_mode);
  check_cuda(input, "_max_pool2d_backward: input");
  check_pool2d_grad_output("_max_pool2d_backward", grad_output, input, g);
  TORCH_CHECK(indices.scalar_type() == at::kLong, "_max_pool2d_backward: indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), "_max_pool2d_backward: indices must have shape ",
              grad_output.sizes(), ", got ", indices.sizes());
  check_same_device(input, "input", indices, "indices");
  const c10::cuda::CUDAGuard guard(input.device());
  const bool channels_last = pool2d_channels_last(input);
  const auto format = pool2d_memory_format(channels_last);
  auto dx = at::empty(input.sizes(), input.options().memory_format(format));
  if (dx.numel() == 0) return dx;
  const auto dy = grad_output.contiguous(format);
  const auto argmax = indices.contiguous(format);  // same layout as dy: one stride set serves both
  const int64_t total = dx.numel();
  CNNEXT_DISPATCH_CUDA_TYPES(input.scalar_type(), "max_pool2d_backward_cuda", [&] {
    CNNEXT_LAUNCH_POOL(max_backward_kernel, channels_last, total, dy.const_data_ptr<scalar_t>(),
                       argmax.const_data_ptr<int64_t>(), strides_of(dy), dx.mutable_data_ptr<scalar_t>(),
                       strides_of(dx), g.channels, max_rows(g), max_cols(g));
  });
  return dx;
}

at::Tensor avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const auto g = pool2d_geometry("avg_pool2d", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
  check_cuda(input, "avg_pool2d: input");
  check_divisor_override(divisor_override);
  return avg_forward_entry(input, g, {count_include_pad, divisor_override.value_or(0)});
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  const auto g = pool2d_geometry("_avg_pool2d_backward", input, kernel_size, stride, padding, {1, 1}, ceil_mode);
  check_cuda(input, "_avg_pool2d_backward: input");
  check_divisor_override(divisor_override);
  return avg_backward_entry("_avg_pool2d_backward", grad_output, input, g,
                            {count_include_pad, divisor_override.value_or(0)});
}

at::Tensor adaptive_avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  const auto g = adaptive_pool2d_geometry("adaptive_avg_pool2d", input, output_size);
  check_cuda(input, "adaptive_avg_pool2d: input");
  return avg_forward_entry(input, g, {true, 0});
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input) {
  check_ndim(grad_output, "_adaptive_avg_pool2d_backward: grad_output", 4);
  const auto g = adaptive_pool2d_geometry("_adaptive_avg_pool2d_backward", input,
                                          {grad_output.size(-2), grad_output.size(-1)});
  check_cuda(input, "_adaptive_avg_pool2d_backward: input");
  return avg_backward_entry("_adaptive_avg_pool2d_backward", grad_output, input, g, {true, 0});
}

}  // namespace cnnext
