// Pooling on CUDA: max (with argmax indices), average and adaptive average, forward and backward.
//
// Why one file of ~560 lines: the element-wise and vectorised kernels share the window arithmetic,
// the division-free axes and the launch logic (CudaLoops) that picks between them.
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
//
// Kernel variants:
//   per-element  (max_forward_kernel, ...): any layout; a thread per element.
//   vectorised   (*_vec_kernel): channels_last with whole aligned 16-byte channel blocks, forward
//                and backward: a thread per 16-byte block of channels of one pixel, one 128-bit
//                load per window tap (or covering output) and one 128-bit store.
// Index arithmetic is division-free in the max and average kernels: elements are split into
// (n, c, h, w) by FastDivmod on int indices (each launch covers a batch slice of fewer than 2^31
// elements: for_batch_slices), and the window arithmetic divides by stride and dilation with a
// FastDivmod divider (FastMaxAxis, FastAvgAxis). Adaptive windows keep 64-bit division (their
// bounds divide o * size, which may pass 2^31).
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

// The window arithmetic's divider on CUDA (pool2d_window.h): a FastDivmod multiply-high. Its
// dividends are nonnegative and below 2^31 (check_windows_fit).
struct FastDivider {
  cuda::FastDivmod by;
  __host__ __device__ __forceinline__ int64_t div(int64_t a) const { return by.div(static_cast<int>(a)); }
};
using FastMaxAxis = MaxAxisOf<FastDivider>;
using FastAvgAxis = AvgAxisOf<FastDivider>;

FastMaxAxis fast(const MaxAxis& a) {
  using cuda::FastDivmod;
  return {a.size,
          a.out_size,
          a.kernel,
          a.stride,
          a.pad,
          a.dilation,
          {FastDivmod::of_size(a.stride)},
          {FastDivmod::of_size(a.dilation)}};
}
FastAvgAxis fast(const AvgAxis& a) {
  return {a.size, a.out_size, a.kernel, a.stride, a.pad, {cuda::FastDivmod::of_size(a.stride)}};
}

// Every dividend of the window arithmetic is at most size + pad + stride + dilation along its axis.
void check_windows_fit(const Pool2dGeometry& g) {
  const int64_t largest =
      std::max(g.in_h + g.pad_h + g.stride_h + g.dil_h, g.in_w + g.pad_w + g.stride_w + g.dil_w);
  TORCH_CHECK(largest <= cuda::kMaxDividend,
              "pooling (CUDA): input sizes, padding, stride and dilation up to ", largest,
              " exceed the kernels' 32-bit window arithmetic (2^31 - 1)");
}

// Element `index` of a (N, C, H, W) tensor counted in memory order of the layout.
struct Coord {
  int64_t n, c, h, w;
};

// Thread index -> (n, c, h, w) of a (N, C, H, W) tensor in the layout's memory order, by FastDivmod
// on int indices (a launch covers fewer than 2^31 elements: for_batch_slices).
struct ElementGrid {
  cuda::FastDivmod fastest, second, third;  // channels_last: C, W, H; NCHW: W, H, C

  template <bool kChannelsLast>
  __device__ __forceinline__ Coord at(int index) const {
    const auto [rest, a] = fastest.divmod(index);
    const auto [rest2, b] = second.divmod(rest);
    const auto [n, c3] = third.divmod(rest2);
    if constexpr (kChannelsLast) {
      return {n, a, c3, b};  // a = c, b = w, c3 = h
    } else {
      return {n, c3, b, a};  // a = w, b = h, c3 = c
    }
  }
};

ElementGrid element_grid(bool channels_last, int64_t C, int64_t H, int64_t W) {
  using cuda::FastDivmod;
  if (channels_last) return {FastDivmod::of_size(C), FastDivmod::of_size(W), FastDivmod::of_size(H)};
  return {FastDivmod::of_size(W), FastDivmod::of_size(H), FastDivmod::of_size(C)};
}

#define CNNEXT_GRID_STRIDE_LOOP(i, total)                                       \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (total); \
       i += int64_t(gridDim.x) * blockDim.x)

// index_t: what the argmax is recorded as (Argmax in pool2d.h): int64_t plane positions ih * W + iw,
// or uint8_t window taps t * kernel_w + u. indices null: inference, no argmax wanted.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void max_forward_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, index_t* indices,
                                   Strides4 os, ElementGrid grid, FastMaxAxis rows, FastMaxAxis cols,
                                   int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord o = grid.at<kChannelsLast>(static_cast<int>(index));
    const Span row_taps = rows.taps(o.h), col_taps = cols.taps(o.w);
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    // Kept if nothing beats -inf: the first tap inside, as native.
    int64_t best_t = row_taps.lo, best_u = col_taps.lo;
    for (int64_t t = row_taps.lo; t < row_taps.hi; ++t) {
      const int64_t ih = rows.position(o.h, t);
      for (int64_t u = col_taps.lo; u < col_taps.hi; ++u) {
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

// Whether the saved argmax at `at` names input (ih, iw), read by tap t of its window's rows and
// column output ow (window taps: (t, the column tap reading iw) must be recorded; plane positions:
// position = ih * W + iw).
template <typename index_t>
__device__ __forceinline__ bool argmax_names(const index_t* indices, int64_t at, const FastMaxAxis& cols,
                                             int64_t t, int64_t ow, int64_t iw, int64_t position) {
  if constexpr (std::is_same_v<index_t, uint8_t>) {
    const int64_t u = cols.tap_reading(ow, iw);
    return t >= 0 && u >= 0 && indices[at] == t * cols.kernel + u;
  } else {
    return indices[at] == position;
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void max_backward_kernel(const scalar_t* dy, const index_t* indices, Strides4 ys, scalar_t* dx,
                                    Strides4 xs, ElementGrid grid, FastMaxAxis rows, FastMaxAxis cols,
                                    int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord i = grid.at<kChannelsLast>(static_cast<int>(index));
    const Span oh_range = rows.covering(i.h), ow_range = cols.covering(i.w);
    const int64_t position = i.h * cols.size + i.w;  // in the (n, c) plane
    acc_t sum = 0;
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      const int64_t t = rows.tap_reading(oh, i.h);
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const int64_t at = ys.offset(i.n, i.c, oh, ow);
        if (argmax_names(indices, at, cols, t, ow, i.w, position)) sum += static_cast<acc_t>(dy[at]);
      }
    }
    dx[xs.offset(i.n, i.c, i.h, i.w)] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, bool kChannelsLast>
__global__ void avg_forward_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, Strides4 os,
                                   ElementGrid grid, FastAvgAxis rows, FastAvgAxis cols, AvgDivisor divisor,
                                   int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord o = grid.at<kChannelsLast>(static_cast<int>(index));
    const AvgWindow row_window = rows.window(o.h), col_window = cols.window(o.w);
    acc_t sum = 0;
    for (int64_t ih = row_window.lo; ih < row_window.hi; ++ih)
      for (int64_t iw = col_window.lo; iw < col_window.hi; ++iw)
        sum += static_cast<acc_t>(x[xs.offset(o.n, o.c, ih, iw)]);
    const int64_t d = divisor(row_window, col_window);
    out[os.offset(o.n, o.c, o.h, o.w)] =
        static_cast<scalar_t>(d == 0 ? acc_t(0) : sum / static_cast<acc_t>(d));
  }
}

// What output (oh, ow)'s gradient is divided by for input (ih, iw) of its window: the window's
// divisor, or 0 if the input is outside the window (average windows are contiguous; covering()
// only bounds them) or the divisor is 0: no share.
__device__ __forceinline__ int64_t average_divisor(const FastAvgAxis& rows, const FastAvgAxis& cols,
                                                   const AvgDivisor& divisor, int64_t oh, int64_t ow,
                                                   int64_t ih, int64_t iw) {
  const AvgWindow row_window = rows.window(oh), col_window = cols.window(ow);
  if (ih < row_window.lo || ih >= row_window.hi || iw < col_window.lo || iw >= col_window.hi) return 0;
  return divisor(row_window, col_window);
}

template <typename scalar_t, bool kChannelsLast>
__global__ void avg_backward_kernel(const scalar_t* dy, Strides4 ys, scalar_t* dx, Strides4 xs,
                                    ElementGrid grid, FastAvgAxis rows, FastAvgAxis cols, AvgDivisor divisor,
                                    int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const Coord i = grid.at<kChannelsLast>(static_cast<int>(index));
    const Span oh_range = rows.covering(i.h), ow_range = cols.covering(i.w);
    acc_t sum = 0;
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const int64_t d = average_divisor(rows, cols, divisor, oh, ow, i.h, i.w);
        if (d != 0) sum += static_cast<acc_t>(dy[ys.offset(i.n, i.c, oh, ow)]) / static_cast<acc_t>(d);
      }
    }
    dx[xs.offset(i.n, i.c, i.h, i.w)] = static_cast<scalar_t>(sum);
  }
}

// ---- vectorised channels_last kernels -------------------------------------------------------------
// With channels innermost and contiguous (stride 1), C a multiple of kVec<scalar_t> and every pixel's
// channels 16-byte aligned, a thread takes kVec consecutive channels of one pixel (4 floats, 8
// halves, 2 doubles) and reads each window tap (forward) or covering output (backward) with one
// 128-bit load: a warp's loads cover 32 such blocks of neighbouring channels, contiguous.
template <typename scalar_t>
inline constexpr int kVec = static_cast<int>(16 / sizeof(scalar_t));

template <typename scalar_t>
struct alignas(16) Vec {
  scalar_t v[kVec<scalar_t>];
};

// Thread index -> (n, h, w) and first channel c0 of its block, in channels_last memory order, over
// a tensor of height H and width W (the output for the forwards, the input for the backwards).
struct VecGrid {
  cuda::FastDivmod by_blocks, by_w, by_h;  // channel blocks per pixel, W, H

  struct Slot {
    int n, h, w;
    int64_t c0;
  };
  template <int V>
  __device__ __forceinline__ Slot slot(int index) const {
    const auto [pixel, block] = by_blocks.divmod(index);
    const auto [rest, w] = by_w.divmod(pixel);
    const auto [n, h] = by_h.divmod(rest);
    return {n, h, w, int64_t{block} * V};
  }
};

template <typename scalar_t>
__device__ __forceinline__ Vec<scalar_t> load_vec(const scalar_t* p) {
  return *reinterpret_cast<const Vec<scalar_t>*>(p);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_vec(scalar_t* p, const acc_t (&values)[kVec<scalar_t>]) {
  Vec<scalar_t> result;
#pragma unroll
  for (int e = 0; e < kVec<scalar_t>; ++e) result.v[e] = static_cast<scalar_t>(values[e]);
  *reinterpret_cast<Vec<scalar_t>*>(p) = result;
}

template <typename scalar_t, typename index_t>
__global__ void max_forward_vec_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, index_t* indices,
                                       Strides4 os, FastMaxAxis rows, FastMaxAxis cols, VecGrid grid,
                                       int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  constexpr int V = kVec<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const auto [n, oh, ow, c0] = grid.slot<V>(static_cast<int>(index));
    const Span row_taps = rows.taps(oh), col_taps = cols.taps(ow);
    acc_t best[V];
    int best_t[V], best_u[V];  // kept if nothing beats -inf: the first tap inside, as native
#pragma unroll
    for (int e = 0; e < V; ++e) {
      best[e] = -std::numeric_limits<acc_t>::infinity();
      best_t[e] = static_cast<int>(row_taps.lo);
      best_u[e] = static_cast<int>(col_taps.lo);
    }
    for (int t = static_cast<int>(row_taps.lo); t < row_taps.hi; ++t) {
      const int64_t ih = rows.position(oh, t);
      for (int u = static_cast<int>(col_taps.lo); u < col_taps.hi; ++u) {
        const Vec<scalar_t> in = load_vec(x + xs.offset(n, c0, ih, cols.position(ow, u)));
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
    store_vec(out + at, best);
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

template <typename scalar_t, typename index_t>
__global__ void max_backward_vec_kernel(const scalar_t* dy, const index_t* indices, Strides4 ys, scalar_t* dx,
                                        Strides4 xs, FastMaxAxis rows, FastMaxAxis cols, VecGrid grid,
                                        int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  constexpr int V = kVec<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const auto [n, ih, iw, c0] = grid.slot<V>(static_cast<int>(index));
    const Span oh_range = rows.covering(ih), ow_range = cols.covering(iw);
    const int64_t position = int64_t{ih} * cols.size + iw;  // in the (n, c) plane
    acc_t sum[V];
#pragma unroll
    for (int e = 0; e < V; ++e) sum[e] = acc_t(0);
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      const int64_t t = rows.tap_reading(oh, ih);
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const int64_t at = ys.offset(n, c0, oh, ow);
        const Vec<scalar_t> g = load_vec(dy + at);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          if (argmax_names(indices, at + e, cols, t, ow, iw, position)) sum[e] += static_cast<acc_t>(g.v[e]);
        }
      }
    }
    store_vec(dx + xs.offset(n, c0, ih, iw), sum);
  }
}

template <typename scalar_t>
__global__ void avg_forward_vec_kernel(const scalar_t* x, Strides4 xs, scalar_t* out, Strides4 os,
                                       FastAvgAxis rows, FastAvgAxis cols, AvgDivisor divisor, VecGrid grid,
                                       int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  constexpr int V = kVec<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const auto [n, oh, ow, c0] = grid.slot<V>(static_cast<int>(index));
    const AvgWindow row_window = rows.window(oh), col_window = cols.window(ow);
    acc_t sum[V];
#pragma unroll
    for (int e = 0; e < V; ++e) sum[e] = acc_t(0);
    for (int64_t ih = row_window.lo; ih < row_window.hi; ++ih) {
      for (int64_t iw = col_window.lo; iw < col_window.hi; ++iw) {
        const Vec<scalar_t> in = load_vec(x + xs.offset(n, c0, ih, iw));
#pragma unroll
        for (int e = 0; e < V; ++e) sum[e] += static_cast<acc_t>(in.v[e]);
      }
    }
    const int64_t d = divisor(row_window, col_window);
#pragma unroll
    for (int e = 0; e < V; ++e) sum[e] = d == 0 ? acc_t(0) : sum[e] / static_cast<acc_t>(d);
    store_vec(out + os.offset(n, c0, oh, ow), sum);
  }
}

template <typename scalar_t>
__global__ void avg_backward_vec_kernel(const scalar_t* dy, Strides4 ys, scalar_t* dx, Strides4 xs,
                                        FastAvgAxis rows, FastAvgAxis cols, AvgDivisor divisor, VecGrid grid,
                                        int total) {
  using acc_t = cuda::acc_t<scalar_t>;
  constexpr int V = kVec<scalar_t>;
  CNNEXT_GRID_STRIDE_LOOP(index, total) {
    const auto [n, ih, iw, c0] = grid.slot<V>(static_cast<int>(index));
    const Span oh_range = rows.covering(ih), ow_range = cols.covering(iw);
    acc_t sum[V];
#pragma unroll
    for (int e = 0; e < V; ++e) sum[e] = acc_t(0);
    for (int64_t oh = oh_range.lo; oh < oh_range.hi; ++oh) {
      for (int64_t ow = ow_range.lo; ow < ow_range.hi; ++ow) {
        const int64_t d = average_divisor(rows, cols, divisor, oh, ow, ih, iw);
        if (d == 0) continue;
        const Vec<scalar_t> g = load_vec(dy + ys.offset(n, c0, oh, ow));
#pragma unroll
        for (int e = 0; e < V; ++e) sum[e] += static_cast<acc_t>(g.v[e]) / static_cast<acc_t>(d);
      }
    }
    store_vec(dx + xs.offset(n, c0, ih, iw), sum);
  }
}

#undef CNNEXT_GRID_STRIDE_LOOP

// Blocks for a grid-stride loop over `total` elements: enough for every element up to 32 blocks
// per SM (four waves of the eight 256-thread blocks an SM holds), then each thread loops.
unsigned blocks_for(int64_t total) {
  const int64_t waves = int64_t{cuda::multiprocessor_count()} * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(total, kThreads), waves)));
}

// Whether the tensors (channels_last, all of one layout) can take the vectorised kernels: channels
// innermost and contiguous, whole 16-byte channel blocks at 16-byte aligned addresses.
template <typename scalar_t>
bool vectorisable(bool channels_last, int64_t channels, std::initializer_list<const at::Tensor*> tensors) {
  constexpr int V = kVec<scalar_t>;
  if (!channels_last || channels % V != 0) return false;
  for (const at::Tensor* t : tensors) {
    const Strides4 s = strides_of(*t);
    if (s.c != 1 || s.n % V != 0 || s.h % V != 0 || s.w % V != 0 ||
        reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 != 0) {
      return false;
    }
  }
  return true;
}

VecGrid vec_grid(int64_t channels, int64_t height, int64_t width, int vec) {
  using cuda::FastDivmod;
  return {FastDivmod::of_size(channels / vec), FastDivmod::of_size(width), FastDivmod::of_size(height)};
}

// Samples [n0, n0 + count) of a tensor (undefined stays undefined).
struct BatchSlice {
  int64_t n0, count;
  at::Tensor operator()(const at::Tensor& t) const { return t.defined() ? t.narrow(0, n0, count) : t; }
};

// Calls launch(slice) for consecutive batch slices with at most 2^31 - 1 elements in each tensor of
// `per_sample` elements per sample: the kernels index elements with int. One slice unless a tensor
// has 2^31 elements or more. (launch takes a BatchSlice, not auto: g++ 12 leaves kernels named as
// template arguments inside a generic lambda uninstantiated.)
template <typename Launch>
void for_batch_slices(int64_t batch, int64_t per_sample, const Launch& launch) {
  TORCH_CHECK(per_sample <= cuda::kMaxDividend, "pooling (CUDA): one sample has ", per_sample,
              " elements, more than the kernels index with 32 bits (2^31 - 1)");
  const int64_t samples = per_sample == 0 ? batch : std::max<int64_t>(1, cuda::kMaxDividend / per_sample);
  for (int64_t n0 = 0; n0 < batch; n0 += samples) launch(BatchSlice{n0, std::min(samples, batch - n0)});
}

// Launches KERNEL<TYPES..., channels_last>(args..., total) over `total` elements on the current
// stream of the tensors' device; TYPES is a parenthesised list, e.g. (scalar_t, index_t).
#define CNNEXT_UNPAREN(...) __VA_ARGS__
#define CNNEXT_LAUNCH_POOL(KERNEL, TYPES, channels_last, total, ...)                                   \
  do {                                                                                                 \
    const cuda::LaunchConfig config{blocks_for(total), kThreads};                                      \
    if (channels_last) {                                                                               \
      cuda::launch<KERNEL<CNNEXT_UNPAREN TYPES, true>>(config, __VA_ARGS__, static_cast<int>(total));  \
    } else {                                                                                           \
      cuda::launch<KERNEL<CNNEXT_UNPAREN TYPES, false>>(config, __VA_ARGS__, static_cast<int>(total)); \
    }                                                                                                  \
  } while (0)

// The argmax type of with_argmax_type (pool2d.h) as the kernels take it: not tracked (void) is a
// null int64_t pointer.
template <typename Tag>
using KernelIndex = std::conditional_t<std::is_void_v<typename Tag::type>, int64_t, typename Tag::type>;

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

struct CudaLoops {
  static constexpr c10::DeviceType kDevice = cuda::kDeviceType;

  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cuda::empty(sizes, options);
  }

  static void max_forward(const at::Tensor& x_all, const at::Tensor& out_all, const at::Tensor& indices_all,
                          const Pool2dGeometry& g, bool channels_last) {
    const cuda::DeviceGuard guard(x_all.device());
    check_windows_fit(g);
    const FastMaxAxis rows = fast(max_rows(g)), cols = fast(max_cols(g));
    const int64_t per_sample = g.channels * std::max(g.in_h * g.in_w, g.out_h * g.out_w);
    for_batch_slices(g.batch, per_sample, [&](const BatchSlice& slice) {
      const at::Tensor x = slice(x_all), out = slice(out_all), indices = slice(indices_all);
      const int64_t total = out.numel();
      CNNEXT_DISPATCH_CUDA_TYPES(x.scalar_type(), "max_pool2d_forward_cuda", [&] {
        with_argmax_type(indices, [&](auto tag) {
          using index_t = KernelIndex<decltype(tag)>;
          if (vectorisable<scalar_t>(channels_last, g.channels, {&x, &out})) {
            const int64_t threads = total / kVec<scalar_t>;
            cuda::launch<max_forward_vec_kernel<scalar_t, index_t>>(
                {blocks_for(threads), kThreads}, x.const_data_ptr<scalar_t>(), strides_of(x),
                out.mutable_data_ptr<scalar_t>(), data_or_null<index_t>(indices), strides_of(out), rows, cols,
                vec_grid(g.channels, g.out_h, g.out_w, kVec<scalar_t>), static_cast<int>(threads));
            return;
          }
          CNNEXT_LAUNCH_POOL(max_forward_kernel, (scalar_t, index_t), channels_last, total,
                             x.const_data_ptr<scalar_t>(), strides_of(x), out.mutable_data_ptr<scalar_t>(),
                             data_or_null<index_t>(indices), strides_of(out),
                             element_grid(channels_last, g.channels, g.out_h, g.out_w), rows, cols);
        });
      });
    });
  }

  static void max_backward(const at::Tensor& dy_all, const at::Tensor& indices_all, const at::Tensor& dx_all,
                           const Pool2dGeometry& g, bool channels_last) {
    const cuda::DeviceGuard guard(dx_all.device());
    check_windows_fit(g);
    const FastMaxAxis rows = fast(max_rows(g)), cols = fast(max_cols(g));
    const int64_t per_sample = g.channels * std::max(g.in_h * g.in_w, g.out_h * g.out_w);
    for_batch_slices(g.batch, per_sample, [&](const BatchSlice& slice) {
      const at::Tensor dy = slice(dy_all), indices = slice(indices_all), dx = slice(dx_all);
      const int64_t total = dx.numel();
      CNNEXT_DISPATCH_CUDA_TYPES(dx.scalar_type(), "max_pool2d_backward_cuda", [&] {
        with_argmax_type(indices, [&](auto tag) {
          using index_t = KernelIndex<decltype(tag)>;
          if (vectorisable<scalar_t>(channels_last, g.channels, {&dy, &dx})) {
            const int64_t threads = total / kVec<scalar_t>;
            cuda::launch<max_backward_vec_kernel<scalar_t, index_t>>(
                {blocks_for(threads), kThreads}, dy.const_data_ptr<scalar_t>(),
                indices.const_data_ptr<index_t>(), strides_of(dy), dx.mutable_data_ptr<scalar_t>(),
                strides_of(dx), rows, cols, vec_grid(g.channels, g.in_h, g.in_w, kVec<scalar_t>),
                static_cast<int>(threads));
            return;
          }
          CNNEXT_LAUNCH_POOL(max_backward_kernel, (scalar_t, index_t), channels_last, total,
                             dy.const_data_ptr<scalar_t>(), indices.const_data_ptr<index_t>(), strides_of(dy),
                             dx.mutable_data_ptr<scalar_t>(), strides_of(dx),
                             element_grid(channels_last, g.channels, g.in_h, g.in_w), rows, cols);
        });
      });
    });
  }

  static void avg_forward(const at::Tensor& x_all, const at::Tensor& out_all, const Pool2dGeometry& g,
                          AvgDivisor divisor, bool channels_last) {
    const cuda::DeviceGuard guard(x_all.device());
    check_windows_fit(g);
    const FastAvgAxis rows = fast(avg_rows(g)), cols = fast(avg_cols(g));
    const int64_t per_sample = g.channels * std::max(g.in_h * g.in_w, g.out_h * g.out_w);
    for_batch_slices(g.batch, per_sample, [&](const BatchSlice& slice) {
      const at::Tensor x = slice(x_all), out = slice(out_all);
      const int64_t total = out.numel();
      CNNEXT_DISPATCH_CUDA_TYPES(x.scalar_type(), "avg_pool2d_forward_cuda", [&] {
        if (vectorisable<scalar_t>(channels_last, g.channels, {&x, &out})) {
          const int64_t threads = total / kVec<scalar_t>;
          cuda::launch<avg_forward_vec_kernel<scalar_t>>(
              {blocks_for(threads), kThreads}, x.const_data_ptr<scalar_t>(), strides_of(x),
              out.mutable_data_ptr<scalar_t>(), strides_of(out), rows, cols, divisor,
              vec_grid(g.channels, g.out_h, g.out_w, kVec<scalar_t>), static_cast<int>(threads));
          return;
        }
        CNNEXT_LAUNCH_POOL(avg_forward_kernel, (scalar_t), channels_last, total, x.const_data_ptr<scalar_t>(),
                           strides_of(x), out.mutable_data_ptr<scalar_t>(), strides_of(out),
                           element_grid(channels_last, g.channels, g.out_h, g.out_w), rows, cols, divisor);
      });
    });
  }

  static void avg_backward(const at::Tensor& dy_all, const at::Tensor& dx_all, const Pool2dGeometry& g,
                           AvgDivisor divisor, bool channels_last) {
    const cuda::DeviceGuard guard(dx_all.device());
    check_windows_fit(g);
    const FastAvgAxis rows = fast(avg_rows(g)), cols = fast(avg_cols(g));
    const int64_t per_sample = g.channels * std::max(g.in_h * g.in_w, g.out_h * g.out_w);
    for_batch_slices(g.batch, per_sample, [&](const BatchSlice& slice) {
      const at::Tensor dy = slice(dy_all), dx = slice(dx_all);
      const int64_t total = dx.numel();
      CNNEXT_DISPATCH_CUDA_TYPES(dx.scalar_type(), "avg_pool2d_backward_cuda", [&] {
        if (vectorisable<scalar_t>(channels_last, g.channels, {&dy, &dx})) {
          const int64_t threads = total / kVec<scalar_t>;
          cuda::launch<avg_backward_vec_kernel<scalar_t>>(
              {blocks_for(threads), kThreads}, dy.const_data_ptr<scalar_t>(), strides_of(dy),
              dx.mutable_data_ptr<scalar_t>(), strides_of(dx), rows, cols, divisor,
              vec_grid(g.channels, g.in_h, g.in_w, kVec<scalar_t>), static_cast<int>(threads));
          return;
        }
        CNNEXT_LAUNCH_POOL(avg_backward_kernel, (scalar_t), channels_last, total,
                           dy.const_data_ptr<scalar_t>(), strides_of(dy), dx.mutable_data_ptr<scalar_t>(),
                           strides_of(dx), element_grid(channels_last, g.channels, g.in_h, g.in_w), rows,
                           cols, divisor);
      });
    });
  }
};

#undef CNNEXT_LAUNCH_POOL
#undef CNNEXT_UNPAREN

}  // namespace

CNNEXT_DEFINE_POOL2D_ENTRY_POINTS(cuda, CudaLoops)

}  // namespace cnnext
