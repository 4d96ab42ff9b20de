// Every cnnext operator schema, in one place: the real library (registration.cpp, namespace
// cnnext) and the CUDA emulator's (cuda_emulation/registration.cpp, namespace cnnext_emu) define the
// same operators from here, and the emulator registers the same CUDA functions as registration.cpp.
#pragma once

#include <torch/library.h>

#include "attention/attention.h"
#include "conv2d/conv2d.h"
#include "pool2d/pool2d.h"

namespace cnnext {

inline void define_operator_schemas(torch::Library& m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // Pooling: forward returns what backward needs (max: the argmax indices, int64, as native;
  // or, from _max_pool2d_with_taps, uint8 window taps).
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_max_pool2d_with_taps(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "_max_pool2d_values(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> Tensor");
  m.def(
      "_max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "_avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("_adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");

  // Attention: forward also returns the per-row log-sum-exp that backward recomputes P from. bias:
  // additive scores (SDPA's attn_mask as floats, broadcast to (B, H, Lq, Lk)); dropout_p with
  // dropout_rng, a CPU int64 tensor (seed, offset) of its Philox mask (a tensor, so that drawing it
  // stays inside a compiled graph); gqa: k and v may have fewer heads (attention.h). Backward
  // returns dq, dk, dv in the full broadcast shapes and dbias (B, H, Lq, Lk) if bias_grad, else an
  // empty tensor.
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, float? scale=None, bool causal=False, Tensor? bias=None, "
      "float dropout_p=0.0, Tensor? dropout_rng=None, bool gqa=False) -> (Tensor, Tensor)");
  m.def(
      "_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "float? scale, bool causal, Tensor? bias, float dropout_p, Tensor? dropout_rng, bool gqa, "
      "bool bias_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}

#ifdef CNNEXT_WITH_CUDA  // also defined by the emulator's build
// The CUDA implementations of every operator, for the library `m` was opened for.
inline void register_cuda_kernels(torch::Library& m) {
  m.impl("conv2d", &cnnext::conv2d_forward_cuda);
  m.impl("_conv2d_backward", &cnnext::conv2d_backward_cuda);
  m.impl("max_pool2d", &cnnext::max_pool2d_forward_cuda);
  m.impl("_max_pool2d_with_taps", &cnnext::max_pool2d_with_taps_cuda);
  m.impl("_max_pool2d_values", &cnnext::max_pool2d_values_cuda);
  m.impl("_max_pool2d_backward", &cnnext::max_pool2d_backward_cuda);
  m.impl("avg_pool2d", &cnnext::avg_pool2d_forward_cuda);
  m.impl("_avg_pool2d_backward", &cnnext::avg_pool2d_backward_cuda);
  m.impl("adaptive_avg_pool2d", &cnnext::adaptive_avg_pool2d_forward_cuda);
  m.impl("_adaptive_avg_pool2d_backward", &cnnext::adaptive_avg_pool2d_backward_cuda);
  m.impl("attention", &cnnext::attention_forward_cuda);
  m.impl("_attention_backward", &cnnext::attention_backward_cuda);
}
#endif

}  // namespace cnnext
