// The CPU pooling loops as a table of functions, one table per instruction set the loops were
// compiled for (pool2d_cpu_loops.h, built by pool2d_cpu_baseline.cpp and pool2d_cpu_avx2.cpp).
// Tensors passed in are dense in the layout `channels_last` names; outputs are preallocated.
#pragma once

#include <ATen/core/Tensor.h>

#include "pool2d/pool2d.h"
#include "pool2d/pool2d_window.h"

namespace cnnext {

struct Pool2dCpuLoops {
  // `indices` undefined: inference, the argmax is not tracked.
  void (*max_forward)(const at::Tensor& x, const at::Tensor& out, const at::Tensor& indices, const Pool2dGeometry& g,
                      bool channels_last);
  void (*max_backward)(const at::Tensor& dy, const at::Tensor& indices, const at::Tensor& dx,
                       const Pool2dGeometry& g, bool channels_last);
  void (*avg_forward)(const at::Tensor& x, const at::Tensor& out, const Pool2dGeometry& g, AvgDivisor divisor,
                      bool channels_last);
  void (*avg_backward)(const at::Tensor& dy, const at::Tensor& dx, const Pool2dGeometry& g, AvgDivisor divisor,
                       bool channels_last);
};

Pool2dCpuLoops pool2d_cpu_loops_baseline();
#if defined(__x86_64__)
Pool2dCpuLoops pool2d_cpu_loops_avx2();  // call only where the CPU has AVX2
#endif

}  // namespace cnnext
