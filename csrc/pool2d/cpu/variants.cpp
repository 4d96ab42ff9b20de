// The table of CPU pooling variants (variants.h): names, the conditions they serve, the choice.
#include "pool2d/cpu/variants.h"

#include "cpu_variants.h"

namespace cnnext {
namespace {

// In the order of Pool2dCpuVariant.
CpuVariant table[] = {
    {"max_pool2d_forward", "nchw_2x2_tiling",
     "NCHW, 2x2 windows at stride 2 tiling the input: two rows in one pass"},
    {"max_pool2d_forward", "nchw_plane_fold",
     "NCHW, any other window: the plane split by stride phase, windows folded over whole planes"},
    {"max_pool2d_forward", "channels_last_blocks",
     "channels_last: blocks of channels in registers per window"},
    {"max_pool2d_backward", "nchw_2x2_tiling",
     "NCHW, uint8 window taps, 2x2 tiling windows: every input written once, no zero fill"},
    {"max_pool2d_backward", "nchw_tap_scatter",
     "NCHW, uint8 window taps, any other window: zero fill, then scatter"},
    {"max_pool2d_backward", "nchw_position_scatter", "NCHW, int64 plane positions: zero fill, then scatter"},
    {"max_pool2d_backward", "channels_last_2x2_tiling",
     "channels_last, uint8 window taps, 2x2 tiling windows: each pixel's channels to its four inputs in "
     "one pass"},
    {"max_pool2d_backward", "channels_last_tap_gather",
     "channels_last, uint8 window taps, any other window: each input pixel gathered once from the windows "
     "covering it"},
    {"max_pool2d_backward", "channels_last_position_scatter",
     "channels_last, int64 plane positions: zero fill, then scatter per channel"},
    {"avg_pool2d_forward", "nchw_global", "NCHW, adaptive to 1x1: one sum per plane, four planes at a time"},
    {"avg_pool2d_forward", "channels_last_global",
     "channels_last, adaptive to 1x1: one pass over each sample"},
    {"avg_pool2d_forward", "nchw_2x2_tiling",
     "NCHW, 2x2 windows at stride 2 tiling the input: two rows in one pass"},
    {"avg_pool2d_forward", "nchw_separable",
     "NCHW, any other fixed window: window rows summed, then window columns over stride phases"},
    {"avg_pool2d_forward", "nchw_adaptive", "NCHW, adaptive to more than 1x1: each window summed directly"},
    {"avg_pool2d_forward", "channels_last_2x2_tiling",
     "channels_last, 2x2 windows at stride 2 tiling the input"},
    {"avg_pool2d_forward", "channels_last_blocks",
     "channels_last, any other window (adaptive too): blocks of channels in registers per window"},
    {"avg_pool2d_backward", "nchw_global", "NCHW, adaptive to 1x1: each plane filled with its share"},
    {"avg_pool2d_backward", "channels_last_global",
     "channels_last, adaptive to 1x1: every pixel of a sample gets the sample's shares"},
    {"avg_pool2d_backward", "nchw_gather_rows",
     "NCHW, fixed windows other than the 2x2 tiling: each input row gathered once, no zero fill"},
    {"avg_pool2d_backward", "nchw_2x2_tiling",
     "NCHW, 2x2 tiling windows: each share written to its four inputs"},
    {"avg_pool2d_backward", "nchw_adaptive_scatter",
     "NCHW, adaptive windows: zero fill, then scatter row by row"},
    {"avg_pool2d_backward", "channels_last_gather",
     "channels_last, any window but global: each input pixel gathered once from the windows covering it"},
};
Pool2dCpuVariant counted(Pool2dCpuVariant v) {
  count_variant(table, v);
  return v;
}

}  // namespace

Pool2dCpuVariant choose_max_forward(const Pool2dGeometry& g, bool channels_last) {
  using V = Pool2dCpuVariant;
  if (channels_last) return counted(V::kMaxForwardChannelsLastBlocks);
  return counted(is_2x2_tiling(g) ? V::kMaxForwardNchw2x2Tiling : V::kMaxForwardNchwPlaneFold);
}

Pool2dCpuVariant choose_max_backward(const Pool2dGeometry& g, bool channels_last, bool taps) {
  using V = Pool2dCpuVariant;
  if (channels_last) {
    if (!taps) return counted(V::kMaxBackwardChannelsLastPositionScatter);
    return counted(is_2x2_tiling(g) ? V::kMaxBackwardChannelsLast2x2Tiling
                                    : V::kMaxBackwardChannelsLastTapGather);
  }
  if (!taps) return counted(V::kMaxBackwardNchwPositionScatter);
  return counted(is_2x2_tiling(g) ? V::kMaxBackwardNchw2x2Tiling : V::kMaxBackwardNchwTapScatter);
}

Pool2dCpuVariant choose_avg_forward(const Pool2dGeometry& g, bool channels_last) {
  using V = Pool2dCpuVariant;
  const bool global = is_global(g);
  const bool tiling = !is_adaptive(g) && is_2x2_tiling(g);
  if (channels_last) {
    return counted(global   ? V::kAvgForwardChannelsLastGlobal
                   : tiling ? V::kAvgForwardChannelsLast2x2Tiling
                            : V::kAvgForwardChannelsLastBlocks);
  }
  return counted(global           ? V::kAvgForwardNchwGlobal
                 : tiling         ? V::kAvgForwardNchw2x2Tiling
                 : is_adaptive(g) ? V::kAvgForwardNchwAdaptive
                                  : V::kAvgForwardNchwSeparable);
}

Pool2dCpuVariant choose_avg_backward(const Pool2dGeometry& g, bool channels_last) {
  using V = Pool2dCpuVariant;
  const bool global = is_global(g);
  if (channels_last)
    return counted(global ? V::kAvgBackwardChannelsLastGlobal : V::kAvgBackwardChannelsLastGather);
  if (global) return counted(V::kAvgBackwardNchwGlobal);
  if (is_adaptive(g)) return counted(V::kAvgBackwardNchwAdaptiveScatter);
  return counted(is_2x2_tiling(g) ? V::kAvgBackwardNchw2x2Tiling : V::kAvgBackwardNchwGatherRows);
}

std::vector<CpuVariant*> pool2d_cpu_variants() { return entries_of(table); }

}  // namespace cnnext
