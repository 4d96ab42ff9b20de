// The CPU pooling kernels as named variants: which variant serves which call, and the table of
// functions that run them, one table per instruction-set build of the loops (loops.h).
//
// The choice is made once per call, here, from the geometry, the memory layout and the argmax
// kind; the table in variants.cpp names each variant and the condition it serves in words, and
// counts its calls (cpu_variants.h). The loops behind one variant are in the file of its family:
//
//   max_forward.h    nchw_2x2_tiling, nchw_plane_fold, channels_last_blocks
//   max_backward.h   nchw_2x2_tiling, nchw_tap_scatter, nchw_position_scatter,
//                    channels_last_2x2_tiling, channels_last_tap_gather, channels_last_position_scatter
//   avg_forward.h    nchw_global, channels_last_global, nchw_2x2_tiling, nchw_separable,
//                    nchw_adaptive, channels_last_2x2_tiling, channels_last_blocks
//   avg_backward.h   nchw_global, channels_last_global, nchw_gather_rows, nchw_2x2_tiling,
//                    nchw_adaptive_scatter, channels_last_gather
#pragma once

#include <ATen/core/Tensor.h>

#include "pool2d/pool2d.h"
#include "pool2d/pool2d_window.h"

namespace cnnext {

enum class Pool2dCpuVariant : int {
  kMaxForwardNchw2x2Tiling,
  kMaxForwardNchwPlaneFold,
  kMaxForwardChannelsLastBlocks,
  kMaxBackwardNchw2x2Tiling,
  kMaxBackwardNchwTapScatter,
  kMaxBackwardNchwPositionScatter,
  kMaxBackwardChannelsLast2x2Tiling,
  kMaxBackwardChannelsLastTapGather,
  kMaxBackwardChannelsLastPositionScatter,
  kAvgForwardNchwGlobal,
  kAvgForwardChannelsLastGlobal,
  kAvgForwardNchw2x2Tiling,
  kAvgForwardNchwSeparable,
  kAvgForwardNchwAdaptive,
  kAvgForwardChannelsLast2x2Tiling,
  kAvgForwardChannelsLastBlocks,
  kAvgBackwardNchwGlobal,
  kAvgBackwardChannelsLastGlobal,
  kAvgBackwardNchwGatherRows,
  kAvgBackwardNchw2x2Tiling,
  kAvgBackwardNchwAdaptiveScatter,
  kAvgBackwardChannelsLastGather,
  kCount,
};

// 2x2 windows at stride 2 without padding or dilation, each inside the input (the pooling between
// CNN stages): the windows tile the input, two rows at a time.
inline bool is_2x2_tiling(const Pool2dGeometry& g) {
  return g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
         g.pad_w == 0 && g.dil_h == 1 && g.dil_w == 1 && 2 * g.out_h <= g.in_h && 2 * g.out_w <= g.in_w;
}

// Adaptive average pooling: its geometry has no kernel or stride (AvgAxis: kernel 0).
inline bool is_adaptive(const Pool2dGeometry& g) { return g.kernel_h == 0; }

// Global average pooling: adaptive to 1x1, one window per plane.
inline bool is_global(const Pool2dGeometry& g) { return is_adaptive(g) && g.out_h == 1 && g.out_w == 1; }

// The variant serving a call, counted as one call of it. `taps`: the argmax is recorded as uint8
// window taps (Argmax::kWindowTap), else as int64 plane positions.
Pool2dCpuVariant choose_max_forward(const Pool2dGeometry& g, bool channels_last);
Pool2dCpuVariant choose_max_backward(const Pool2dGeometry& g, bool channels_last, bool taps);
Pool2dCpuVariant choose_avg_forward(const Pool2dGeometry& g, bool channels_last);
Pool2dCpuVariant choose_avg_backward(const Pool2dGeometry& g, bool channels_last);

// The loops of one instruction-set build. Tensors are dense in the layout the variant names;
// outputs are preallocated; `indices` undefined: the argmax is not tracked (inference).
struct Pool2dCpuLoops {
  void (*max_forward)(Pool2dCpuVariant variant, const at::Tensor& x, const at::Tensor& out,
                      const at::Tensor& indices, const Pool2dGeometry& g);
  void (*max_backward)(Pool2dCpuVariant variant, const at::Tensor& dy, const at::Tensor& indices,
                       const at::Tensor& dx, const Pool2dGeometry& g);
  void (*avg_forward)(Pool2dCpuVariant variant, const at::Tensor& x, const at::Tensor& out,
                      const Pool2dGeometry& g, AvgDivisor divisor);
  void (*avg_backward)(Pool2dCpuVariant variant, const at::Tensor& dy, const at::Tensor& dx,
                       const Pool2dGeometry& g, AvgDivisor divisor);
};

Pool2dCpuLoops pool2d_cpu_loops_baseline();
#if defined(__x86_64__)
Pool2dCpuLoops pool2d_cpu_loops_avx2();    // call only where cpu_use_avx2()
Pool2dCpuLoops pool2d_cpu_loops_avx512();  // call only where cpu_use_avx512()
#endif

}  // namespace cnnext
