// The CPU conv2d kernels as named variants (cpu_variants.h). conv2d_cpu.cpp chooses per call and
// per result: the direct kernels of conv2d_cpu_direct.cpp where conv2d_direct_applies, else the
// GEMM lowering of conv2d_cpu.cpp. conv2d_cpu_variants.cpp names them and counts their calls.
#pragma once

namespace cnnext {

enum class Conv2dCpuVariant : int {
  kForwardDirect,
  kForwardIm2colGemm,
  kForwardChannelsLast,
  kForwardChannelsLastRows,
  kInputGradDirectPhases,
  kInputGradCol2imGemm,
  kInputGradChannelsLastPhases,
  kWeightGradDirect,
  kWeightGradIm2colGemm,
  kWeightGradChannelsLast,
  kCount,
};

// Counts one call of the variant.
void count_conv2d_cpu_variant(Conv2dCpuVariant variant);

}  // namespace cnnext
