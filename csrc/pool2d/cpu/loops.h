// One instruction-set build of the CPU pooling loops: every variant of variants.h, and the
// table that runs them. Compiled three times, once per level of cpu_isa_target.h
// (loops_baseline.cpp, loops_avx2.cpp, loops_avx512.cpp); pool2d_cpu.cpp picks the build
// (cpu_isa.h) and the variant (variants.h) per call. Each build exports one factory,
// pool2d_cpu_loops_<level>(); everything else has internal linkage.
//
// Layouts: NCHW tasks own (n, c) planes, whose window bounds are computed once per call (the same
// for every plane), so the inner loops only read, compare or add, and write; channels_last tasks
// loop channels innermost over contiguous memory. The family files say how each variant works.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu_reduce.h"
#include "pool2d/cpu/variants.h"
#include "pool2d/pool2d_window.h"

#include "cpu_isa_target.h"  // last include: what follows is compiled for this build's level

// The loops, which include nothing themselves (everything they use is above), in this order: each
// uses what the ones before it define.
// clang-format off
#include "pool2d/cpu/loops_common.h"
#include "pool2d/cpu/max_forward.h"
#include "pool2d/cpu/max_backward.h"
#include "pool2d/cpu/avg_forward.h"
#include "pool2d/cpu/avg_backward.h"
// clang-format on

namespace cnnext {
namespace {

[[noreturn]] void wrong_variant(Pool2dCpuVariant variant, const char* loop) {
  TORCH_INTERNAL_ASSERT(false, "pool2d CPU: variant ", static_cast<int>(variant), " is not one of the ", loop,
                        " variants");
}

void max_forward_loop(Pool2dCpuVariant variant, const at::Tensor& x, const at::Tensor& out,
                      const at::Tensor& indices, const Pool2dGeometry& g) {
  using V = Pool2dCpuVariant;
  CNNEXT_DISPATCH_CPU_TYPES(x.scalar_type(), "max_pool2d_forward_cpu", [&] {
    with_argmax_type(indices, [&](auto tag) {
      using index_t = typename decltype(tag)::type;
      index_t* argmax = nullptr;
      if constexpr (kTracksArgmax<index_t>) argmax = indices.mutable_data_ptr<index_t>();
      const scalar_t* src = x.const_data_ptr<scalar_t>();
      scalar_t* dst = out.mutable_data_ptr<scalar_t>();
      switch (variant) {
        case V::kMaxForwardNchw2x2Tiling:
          return max_forward_nchw_2x2_tiling(src, dst, argmax, g);
        case V::kMaxForwardNchwPlaneFold:
          return max_forward_nchw_plane_fold(src, dst, argmax, g);
        case V::kMaxForwardChannelsLastBlocks:
          return max_forward_channels_last_blocks(src, dst, argmax, g);
        default:
          wrong_variant(variant, "max_pool2d forward");
      }
    });
  });
}

void max_backward_loop(Pool2dCpuVariant variant, const at::Tensor& dy, const at::Tensor& indices,
                       const at::Tensor& dx, const Pool2dGeometry& g) {
  using V = Pool2dCpuVariant;
  const bool taps = indices.scalar_type() == at::kByte;  // else int64 positions (checked by the entry)
  CNNEXT_DISPATCH_CPU_TYPES(dy.scalar_type(), "max_pool2d_backward_cpu", [&] {
    const scalar_t* src = dy.const_data_ptr<scalar_t>();
    scalar_t* dst = dx.mutable_data_ptr<scalar_t>();
    const uint8_t* window_taps = taps ? indices.const_data_ptr<uint8_t>() : nullptr;
    const int64_t* positions = taps ? nullptr : indices.const_data_ptr<int64_t>();
    switch (variant) {
      case V::kMaxBackwardNchw2x2Tiling:
        if (taps) return max_backward_nchw_2x2_tiling(src, window_taps, dst, g);
        break;
      case V::kMaxBackwardNchwTapScatter:
        if (taps) return max_backward_nchw_scatter(src, window_taps, dst, g);
        break;
      case V::kMaxBackwardNchwPositionScatter:
        if (!taps) return max_backward_nchw_scatter(src, positions, dst, g);
        break;
      case V::kMaxBackwardChannelsLast2x2Tiling:
        if (taps) return max_backward_channels_last_2x2_tiling(src, window_taps, dst, g);
        break;
      case V::kMaxBackwardChannelsLastTapGather:
        if (taps) return max_backward_channels_last_tap_gather(src, window_taps, dst, g);
        break;
      case V::kMaxBackwardChannelsLastPositionScatter:
        if (!taps) return max_backward_channels_last_position_scatter(src, positions, dst, g);
        break;
      default:
        break;
    }
    wrong_variant(variant, taps ? "max_pool2d backward (window taps)" : "max_pool2d backward (positions)");
  });
}

void avg_forward_loop(Pool2dCpuVariant variant, const at::Tensor& x, const at::Tensor& out,
                      const Pool2dGeometry& g, AvgDivisor divisor) {
  using V = Pool2dCpuVariant;
  CNNEXT_DISPATCH_CPU_TYPES(x.scalar_type(), "avg_pool2d_forward_cpu", [&] {
    const AvgWindows<at::opmath_type<scalar_t>> windows(g, divisor);
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    switch (variant) {
      case V::kAvgForwardNchwGlobal:
        return avg_forward_nchw_global(src, dst, g, windows);
      case V::kAvgForwardChannelsLastGlobal:
        return avg_forward_channels_last_global(src, dst, g, windows);
      case V::kAvgForwardNchw2x2Tiling:
        return avg_forward_nchw_2x2_tiling(src, dst, g, windows);
      case V::kAvgForwardNchwSeparable:
        return avg_forward_nchw_separable(src, dst, g, windows);
      case V::kAvgForwardNchwAdaptive:
        return avg_forward_nchw_adaptive(src, dst, g, windows);
      case V::kAvgForwardChannelsLast2x2Tiling:
        return avg_forward_channels_last_2x2_tiling(src, dst, g, windows);
      case V::kAvgForwardChannelsLastBlocks:
        return avg_forward_channels_last_blocks(src, dst, g, windows);
      default:
        wrong_variant(variant, "avg_pool2d forward");
    }
  });
}

void avg_backward_loop(Pool2dCpuVariant variant, const at::Tensor& dy, const at::Tensor& dx,
                       const Pool2dGeometry& g, AvgDivisor divisor) {
  using V = Pool2dCpuVariant;
  CNNEXT_DISPATCH_CPU_TYPES(dy.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    const AvgWindows<scalar_t> windows(g, divisor);
    const scalar_t* src = dy.const_data_ptr<scalar_t>();
    scalar_t* dst = dx.mutable_data_ptr<scalar_t>();
    switch (variant) {
      case V::kAvgBackwardNchwGlobal:
        return avg_backward_nchw_global(src, dst, g, windows);
      case V::kAvgBackwardChannelsLastGlobal:
        return avg_backward_channels_last_global(src, dst, g, windows);
      case V::kAvgBackwardNchwGatherRows:
        return avg_backward_nchw_gather_rows(src, dst, g, windows);
      case V::kAvgBackwardNchw2x2Tiling:
        return avg_backward_nchw_scatter<true>(src, dst, g, windows);
      case V::kAvgBackwardNchwAdaptiveScatter:
        return avg_backward_nchw_scatter<false>(src, dst, g, windows);
      case V::kAvgBackwardChannelsLastGather:
        return avg_backward_channels_last_gather(src, dst, g, windows);
      default:
        wrong_variant(variant, "avg_pool2d backward");
    }
  });
}

}  // namespace

Pool2dCpuLoops CNNEXT_ISA_NAME(pool2d_cpu_loops)() {
  return {&max_forward_loop, &max_backward_loop, &avg_forward_loop, &avg_backward_loop};
}

}  // namespace cnnext
