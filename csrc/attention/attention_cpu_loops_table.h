// The CPU attention loops as a table of functions, one per instruction set they were compiled for
// (attention_cpu_loops.h, built by attention_cpu_baseline.cpp, attention_cpu_avx2.cpp and
// attention_cpu_avx512.cpp). q, k, v have contiguous rows (other strides free, 0 for broadcast);
// dout, out, lse and the preallocated outputs are contiguous, in the full shapes of attention.h.
#pragma once

#include <ATen/core/Tensor.h>

#include "attention/attention.h"

namespace cnnext {

struct AttentionCpuLoops {
  void (*forward)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                  const at::Tensor& lse, const AttentionGeometry& g, const AttentionOptions& options);
  // dbias: undefined unless asked for.
  void (*backward)(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                   const at::Tensor& dv, const at::Tensor& dbias, const AttentionGeometry& g,
                   const AttentionOptions& options);
};

AttentionCpuLoops attention_cpu_loops_baseline();
#if defined(__x86_64__)
AttentionCpuLoops attention_cpu_loops_avx2();    // call only where cpu_use_avx2()
AttentionCpuLoops attention_cpu_loops_avx512();  // call only where cpu_use_avx512()
#endif

}  // namespace cnnext
