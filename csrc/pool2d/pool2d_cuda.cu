// Pooling on CUDA: max (with argmax indices), average and adaptive average, forward and backward.
//
// Forward: one thread per output element; it walks its window (pool2d_window.h) and writes the
// result (and, for max, the argmax: plane position ih * W + iw or window tap). Backward is a
// gather, one thread per input element: it visits the outputs whose window can read it
// (`covering`) and sums their gradient shares (max: only where the saved argmax names this
// element; an argmax naming no input of its window matches nothing), then writes grad_input (=). No
// atomics, so results are deterministic. Tensors are read and written through their strides, and
// the thread-to-element order follows the memory layout (channels innermost for channels_last,
// width innermost for NCHW) so a warp's accesses are contiguous. Accumulation is in float for
// half/bfloat16/float and in double for double.
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common.h"
#include "cuda_device.h"
#include "cuda_fast_divmod.h"
#include "pool2d/pool2d_entries.h"

namespace cnnext {
namespace {

constexpr int kThreads = 256;

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

// index_t: what the argmax is recorded as (Argmax in pool2d.h): int64_t plane positions ih * W + iw,
// or uint8_t window taps t * kernel_w + u. indices null: inference, no argmax wanted.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void max_forward_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, index_t* indices, Strides4 os,
                                   int64_t C, MaxAxis rows, MaxAxis cols, int64_t total) {
  using acc_t = cuda::acc_t<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord o = decode<kChannelsLast>(index, C, rows.out_size, cols.out_size);
    const Span r = rows.taps(o.h), cc = cols.taps(o.w);
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t best_t = r.lo, best_u = cc.lo;  // kept if nothing beats -inf: the first tap inside, as native
    for (int64_t t = r.lo; t < r.hi; ++t) {
      const int64_t ih = rows.position(o.h, t);
      for (int64_t u = cc.lo; u < cc.hi; ++u) {
        const acc_t v = static_cast<acc_t>(x[xs.offset(o.n, o.c, ih, cols.position(o.w, u))]);
        if (v > best || isnan(v)) {  // NaN wins, as in native max pooling
          best = v;
          best_t = t;
          best_u = u;
        }
      }
    }
    const int64_t at = os.offset(o.n, o.c, o.h, o.w);
    out[at] = static_cast<scalar_t>(best);
    if (indices == nullptr) continue;
    if constexpr (std::is_same_v<index_t, uint8_t>) {
      indices[at] = static_cast<uint8_t>(best_t * cols.kernel + best_u);
    } else {
      indices[at] = rows.position(o.h, best_t) * cols.size + cols.position(o.w, best_u);
    }
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void max_backward_kernel(const scalar_t* dy, const index_t* indices, Strides4 ys, scalar_t* dx,
                                    Strides4 xs, int64_t C, MaxAxis rows, MaxAxis cols, int64_t total) {
  using acc_t = cuda::acc_t<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord i = decode<kChannelsLast>(index, C, rows.size, cols.size);
    const Span oh_range = rows.covering(i.h), ow_range = cols.covering(i.w);
    const int64_t me = i.h * cols.size + i.w;
    acc_t sum = 0;
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      const int64_t t = rows.tap_reading(oh, i.h);
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const int64_t at = ys.offset(i.n, i.c, oh, ow);
        bool mine;
        if constexpr (std::is_same_v<index_t, uint8_t>) {
          const int64_t u = cols.tap_reading(ow, i.w);
          mine = t >= 0 && u >= 0 && indices[at] == t * cols.kernel + u;
        } else {
          mine = indices[at] == me;
        }
        if (mine) sum += static_cast<acc_t>(dy[at]);
      }
    }
    dx[xs.offset(i.n, i.c, i.h, i.w)] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void avg_forward_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, Strides4 os, int64_t C,
                                   AvgAxis rows, AvgAxis cols, AvgDivisor divisor, int64_t total) {
  using acc_t = cuda::acc_t<scalar_t>;
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
  using acc_t = cuda::acc_t<scalar_t>;
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

// ---- vectorised channels_last forwards -----------------------------------------------------------
// With channels innermost and contiguous (stride 1), C a multiple of kVec<scalar_t> and every pixel's
// channels 16-byte aligned, a thread takes kVec consecutive channels of one output pixel (4 floats, 8
// halves, 2 doubles) and reads each window tap with one 128-bit load: a warp's loads cover 32 such
// blocks of neighbouring channels, contiguous. Element indices are int (the launcher checks the
// count) and split with FastDivmod: (pixel, channel block), pixel -> (n, oh, ow).
template <typename scalar_t>
inline constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));

template <typename scalar_t>
struct alignas(16) Vec {
  scalar_t v[kVec<scalar_t>];
};

// Thread index -> (n, oh, ow) and first channel c0 of its block, in channels_last memory order.
struct VecGrid {
  cuda::FastDivmod by_blocks, by_out_w, by_out_h;  // channel blocks per pixel, Wo, Ho

  struct Slot {
    int n, oh, ow;
    int64_t c0;
  };
  template <int V>
  __device__ __forceinline__ Slot slot(int index) const {
    const auto [pixel, block] = by_blocks.divmod(index);
    const auto [rest, ow] = by_out_w.divmod(pixel);
    const auto [n, oh] = by_out_h.divmod(rest);
    return {n, oh, ow, int64_t{block} * V};
  }
};

template <typename scalar_t, typename index_t>
__global__ void max_forward_vec_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, index_t* indices, Strides4 os,
                                       MaxAxis rows, MaxAxis cols, VecGrid grid, int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  constexpr int V = kVec<scalar_t>;
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total; index += gridDim.x * blockDim.x) {
    const auto [n, oh, ow, c0] = grid.slot<V>(index);
    const Span r = rows.taps(oh), cc = cols.taps(ow);
    acc_t best[V];
    int best_t[V], best_u[V];  // kept if nothing beats -inf: the first tap inside, as native
#pragma unroll
    for (int e = 0; e < V; ++e) {
      best[e] = -std::numeric_limits<acc_t>::infinity();
      best_t[e] = static_cast<int>(r.lo);
      best_u[e] = static_cast<int>(cc.lo);
    }
    for (int t = static_cast<int>(r.lo); t < r.hi; ++t) {
      const int64_t ih = rows.position(oh, t);
      for (int u = static_cast<int>(cc.lo); u < cc.hi; ++u) {
        const Vec<scalar_t> in =
            *reinterpret_cast<const Vec<scalar_t>*>(x + xs.offset(n, c0, ih, cols.position(ow, u)));
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const acc_t v = static_cast<acc_t>(in.v[e]);
          if (v > best[e] || isnan(v)) {  // NaN wins, as in native max pooling
            best[e] = v;
            best_t[e] = t;
            best_u[e] = u;
          }
        }
      }
    }
    const int64_t at = os.offset(n, c0, oh, ow);
    Vec<scalar_t> result;
#pragma unroll
    for (int e = 0; e < V; ++e) result.v[e] = static_cast<scalar_t>(best[e]);
    *reinterpret_cast<Vec<scalar_t>*>(out + at) = result;
    if (indices == nullptr) continue;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if constexpr (std::is_same_v<index_t, uint8_t>) {
        indices[at + e] = static_cast<uint8_t>(best_t[e] * cols.kernel + best_u[e]);
      } else {
        indices[at + e] = rows.position(oh, best_t[e]) * cols.size + cols.position(ow, best_u[e]);
      }
    }
  }
}

template <typename scalar_t>
__global__ void avg_forward_vec_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, Strides4 os, AvgAxis rows,
                                       AvgAxis cols, AvgDivisor divisor, VecGrid grid, int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  constexpr int V = kVec<scalar_t>;
  for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total; index += gridDim.x * blockDim.x) {
    const auto [n, oh, ow, c0] = grid.slot<V>(index);
    const Span r = rows.window(oh), cc = cols.window(ow);
    acc_t sum[V];
#pragma unroll
    for (int e = 0; e < V; ++e) sum[e] = acc_t(0);
    for (int64_t ih = r.lo; ih < r.hi; ++ih) {
      for (int64_t iw = cc.lo; iw < cc.hi; ++iw) {
        const Vec<scalar_t> in = *reinterpret_cast<const Vec<scalar_t>*>(x + xs.offset(n, c0, ih, iw));
#pragma unroll
        for (int e = 0; e < V; ++e) sum[e] += static_cast<acc_t>(in.v[e]);
      }
    }
    const int64_t d = divisor(r, cc);
    Vec<scalar_t> result;
#pragma unroll
    for (int e = 0; e < V; ++e) result.v[e] = static_cast<scalar_t>(d == 0 ? acc_t(0) : sum[e] / static_cast<acc_t>(d));
    *reinterpret_cast<Vec<scalar_t>*>(out + os.offset(n, c0, oh, ow)) = result;
  }
}


// Blocks for a grid-stride loop over `total` elements: enough for every element up to 32 blocks
// per SM (four waves of the eight 256-thread blocks an SM holds), then each thread loops.
unsigned blocks_for(int64_t total) {
  const int64_t waves = int64_t{cuda::multiprocessor_count()} * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(total, kThreads), waves)));
}

// Whether the channels_last forward of x -> out can take the vectorised kernels: channels innermost
// and contiguous in both, whole 16-byte channel blocks at 16-byte aligned addresses, an int count.
template <typename scalar_t>
bool vectorisable(const at::Tensor& x, const at::Tensor& out, const Pool2dGeometry& g, bool channels_last) {
  constexpr int V = kVec<scalar_t>;
  const auto whole_blocks = [](const at::Tensor& t) {
    const Strides4 s = strides_of(t);
    return s.c == 1 && s.n % V == 0 && s.h % V == 0 && s.w % V == 0 &&
           reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  };
  return channels_last && g.channels % V == 0 && whole_blocks(x) && whole_blocks(out) &&
         out.numel() / V <= cuda::kMaxDividend;
}

VecGrid vec_grid(const Pool2dGeometry& g, int vec) {
  using cuda::FastDivmod;
  return {FastDivmod::of_size(g.channels / vec), FastDivmod::of_size(g.out_w), FastDivmod::of_size(g.out_h)};
}

// Launches KERNEL<TYPES..., channels_last>(args..., total) over `total` elements on the current
// stream of the tensors' device; TYPES is a parenthesised list, e.g. (scalar_t, index_t).
#define CNNEXT_UNPAREN(...) __VA_ARGS__
#define CNNEXT_LAUNCH_POOL(KERNEL, TYPES, channels_last, total, ...)                                   \
  do {                                                                                                 \
    const cuda::LaunchConfig config{blocks_for(total), kThreads};                                       \
    if (channels_last) {                                                                               \
      cuda::launch<KERNEL<CNNEXT_UNPAREN TYPES, true>>(config, __VA_ARGS__, total);                    \
    } else {                                                                                           \
      cuda::launch<KERNEL<CNNEXT_UNPAREN TYPES, false>>(config, __VA_ARGS__, total);                   \
    }                                                                                                  \
  } while (0)

// Calls fn(index_t{}) with index_t the type `indices` records the argmax as: uint8_t window taps,
// else int64_t plane positions (also for undefined indices, passed to the kernel as null).
template <typename Fn>
void with_argmax_type(const at::Tensor& indices, const Fn& fn) {
  if (indices.defined() && indices.scalar_type() == at::kByte) {
    fn(uint8_t{});
  } else {
    fn(int64_t{});
  }
}

struct CudaLoops {
  static constexpr c10::DeviceType kDevice = cuda::kDeviceType;

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cuda::empty(sizes, options);
  }

  static void max_forward(const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices,
                          const Pool2dGeometry& g, bool channels_last) {
    const cuda::DeviceGuard guard(x.device());
    const int64_t total = out.numel();
    CNNEXT_DISPATCH_CUDA_TYPES(x.scalar_type(), "max_pool2d_forward_cuda", [&] {
      with_argmax_type(indices, [&](auto tag) {
        using index_t = decltype(tag);
        if (vectorisable<scalar_t>(x, out, g, channels_last)) {
          const int threads = static_cast<int>(total / kVec<scalar_t>);
          cuda::launch<max_forward_vec_kernel<scalar_t, index_t>>(
              {blocks_for(threads), kThreads}, x.const_data_ptr<scalar_t>(), strides_of(x),
              out.mutable_data_ptr<scalar_t>(), indices.defined() ? indices.mutable_data_ptr<index_t>() : nullptr,
              strides_of(out), max_rows(g), max_cols(g), vec_grid(g, kVec<scalar_t>), threads);
          return;
        }
        CNNEXT_LAUNCH_POOL(max_forward_kernel, (scalar_t, index_t), channels_last, total,
                           x.const_data_ptr<scalar_t>(), strides_of(x), out.mutable_data_ptr<scalar_t>(),
                           indices.defined() ? indices.mutable_data_ptr<index_t>() : nullptr, strides_of(out),
                           g.channels, max_rows(g), max_cols(g));
      });
    });
  }

  static void max_backward(const at::Tensor& dy, const at::Tensor& indices, const at::Tensor& dx,
                           const Pool2dGeometry& g, bool channels_last) {
    const cuda::DeviceGuard guard(dx.device());
    const int64_t total = dx.numel();
    CNNEXT_DISPATCH_CUDA_TYPES(dx.scalar_type(), "max_pool2d_backward_cuda", [&] {
      with_argmax_type(indices, [&](auto tag) {
        using index_t = decltype(tag);
        CNNEXT_LAUNCH_POOL(max_backward_kernel, (scalar_t, index_t), channels_last, total,
                           dy.const_data_ptr<scalar_t>(), indices.const_data_ptr<index_t>(), strides_of(dy),
                           dx.mutable_data_ptr<scalar_t>(), strides_of(dx), g.channels, max_rows(g), max_cols(g));
      });
    });
  }

  static void avg_forward(const at::Tensor& x, const at::Tensor& out, const Pool2dGeometry& g, AvgDivisor divisor,
                          bool channels_last) {
    const cuda::DeviceGuard guard(x.device());
    const int64_t total = out.numel();
    CNNEXT_DISPATCH_CUDA_TYPES(x.scalar_type(), "avg_pool2d_forward_cuda", [&] {
      if (vectorisable<scalar_t>(x, out, g, channels_last)) {
        const int threads = static_cast<int>(total / kVec<scalar_t>);
        cuda::launch<avg_forward_vec_kernel<scalar_t>>({blocks_for(threads), kThreads}, x.const_data_ptr<scalar_t>(),
                                                       strides_of(x), out.mutable_data_ptr<scalar_t>(),
                                                       strides_of(out), avg_rows(g), avg_cols(g), divisor,
                                                       vec_grid(g, kVec<scalar_t>), threads);
        return;
      }
      CNNEXT_LAUNCH_POOL(avg_forward_kernel, (scalar_t), channels_last, total, x.const_data_ptr<scalar_t>(),
                         strides_of(x), out.mutable_data_ptr<scalar_t>(), strides_of(out), g.channels, avg_rows(g),
                         avg_cols(g), divisor);
    });
  }

  static void avg_backward(const at::Tensor& dy, const at::Tensor& dx, const Pool2dGeometry& g, AvgDivisor divisor,
                           bool channels_last) {
    const cuda::DeviceGuard guard(dx.device());
    const int64_t total = dx.numel();
    CNNEXT_DISPATCH_CUDA_TYPES(dx.scalar_type(), "avg_pool2d_backward_cuda", [&] {
      CNNEXT_LAUNCH_POOL(avg_backward_kernel, (scalar_t), channels_last, total, dy.const_data_ptr<scalar_t>(),
                         strides_of(dy), dx.mutable_data_ptr<scalar_t>(), strides_of(dx), g.channels, avg_rows(g),
                         avg_cols(g), divisor);
    });
  }
};

#undef CNNEXT_LAUNCH_POOL
#undef CNNEXT_UNPAREN

using Entries = Pool2dEntries<CudaLoops>;

}  // namespace

PoolWithIndices max_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return Entries::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, Argmax::kPlanePosition);
}

PoolWithIndices max_pool2d_with_taps_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                          bool ceil_mode) {
  return Entries::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, Argmax::kWindowTap);
}

at::Tensor max_pool2d_values_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(
      Entries::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, Argmax::kNone));
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, bool ceil_mode) {
  return Entries::max_pool2d_backward(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  return Entries::avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  return Entries::avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                      divisor_override);
}

at::Tensor adaptive_avg_pool2d_forward_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  return Entries::adaptive_avg_pool2d(input, output_size);
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input) {
  return Entries::adaptive_avg_pool2d_backward(grad_output, input);
}

}  // namespace cnnext
