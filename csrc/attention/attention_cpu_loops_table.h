// The CPU attention loops as a table of functions, one per instruction set they were compiled for
// (attention_cpu_loops.h, built by attention_cpu_baseline.cpp and attention_cpu_avx2.cpp). Tensors
// are contiguous (B, H, L, D) / (B, H, L); outputs are preallocated.
#pragma once

#include <ATen/core/Tensor.h>

#include "attention/attention.h"

namespace cnnext {

struct AttentionCpuLoops {
  void (*forward)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                  const at::Tensor& lse, const AttentionGeometry& g);
  void (*backward)(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                   const at::Tensor& dv, const AttentionGeometry& g);
};

AttentionCpuLoops attention_cpu_loops_baseline();
#if defined(__x86_64__)
AttentionCpuLoops attention_cpu_loops_avx2();  // call only where the CPU has AVX2
#endif

}  // namespace cnnext
