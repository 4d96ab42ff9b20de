// Every cnnext operator schema, and which kernel serves it on which device. The autograd formula
// and the fake (meta) implementations live in Python (cnnext/ops/), per the torch.library pattern.
#include <torch/library.h>

#include "conv2d/conv2d.h"

TORCH_LIBRARY(cnnext, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cnnext, CPU, m) {
  m.impl("conv2d", &cnnext::conv2d_forward_cpu);
  m.impl("_conv2d_backward", &cnnext::conv2d_backward_cpu);
}

#ifdef CNNEXT_WITH_CUDA
TORCH_LIBRARY_IMPL(cnnext, CUDA, m) {
  m.impl("conv2d", &cnnext::conv2d_forward_cuda);
  m.impl("_conv2d_backward", &cnnext::conv2d_backward_cuda);
}
#endif
