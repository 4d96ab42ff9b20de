// The cnnext operators (schemas in operator_schemas.h) and which kernel serves each on which
// device. The autograd formulas and the fake (meta) implementations live in Python (cnnext/ops/),
// per the torch.library pattern.
#include <torch/library.h>

#include "operator_schemas.h"

TORCH_LIBRARY(cnnext, m) { cnnext::define_operator_schemas(m); }

TORCH_LIBRARY_IMPL(cnnext, CPU, m) {
  m.impl("conv2d", &cnnext::conv2d_forward_cpu);
  m.impl("_conv2d_backward", &cnnext::conv2d_backward_cpu);
  m.impl("max_pool2d", &cnnext::max_pool2d_forward_cpu);
  m.impl("_max_pool2d_with_taps", &cnnext::max_pool2d_with_taps_cpu);
  m.impl("_max_pool2d_values", &cnnext::max_pool2d_values_cpu);
  m.impl("_max_pool2d_backward", &cnnext::max_pool2d_backward_cpu);
  m.impl("avg_pool2d", &cnnext::avg_pool2d_forward_cpu);
  m.impl("_avg_pool2d_backward", &cnnext::avg_pool2d_backward_cpu);
  m.impl("adaptive_avg_pool2d", &cnnext::adaptive_avg_pool2d_forward_cpu);
  m.impl("_adaptive_avg_pool2d_backward", &cnnext::adaptive_avg_pool2d_backward_cpu);
  m.impl("attention", &cnnext::attention_forward_cpu);
  m.impl("_attention_backward", &cnnext::attention_backward_cpu);
}

#ifdef CNNEXT_WITH_CUDA
TORCH_LIBRARY_IMPL(cnnext, CUDA, m) { cnnext::register_cuda_kernels(m); }
#endif
