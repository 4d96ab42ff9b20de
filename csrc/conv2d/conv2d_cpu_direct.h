// Direct (im2col-free) float32 conv2d kernels for AVX2 + FMA CPUs: the fast path of conv2d_cpu.cpp.
//
// The GEMM lowering copies every input value kh * kw times into a column matrix and col2im adds
// them back: a large share of a small convolution's time (NOTES.md, "conv2d, CPU"). These kernels read a
// zero-padded copy of each sample's input instead (about the size of the input, built once per sample; none
// where the input's own layout fits) and accumulate a register tile of 4 output channels x 3 vectors of 8
// output columns (or 3 x 4) over every (input channel, ki, kj) tap: 12 FMAs per 3 input loads and 4 weight
// broadcasts, no column matrix.
//
//   forward:      out = conv(x, w) + bias
//   weight grad:  dw[co, c, ki, kj] = sum over (n, oh, ow) of dy[n, co, oh, ow] * x_padded[...]
//   input grad:   the forward kernel on dy with w flipped and transposed, once per stride phase
//                 of dx with that phase's taps (see conv2d_cpu.cpp).
#pragma once

#include "conv2d/conv2d.h"

namespace cnnext {

// True where the direct kernels run: float32, one group, an AVX2 + FMA CPU (cpu_use_avx2()) and
// output rows at least 6 wide (narrower rows would leave most of each 8-lane vector idle).
// Compiled for the baseline ISA (conv2d_cpu.cpp): it is what keeps other CPUs out of the AVX2
// translation unit (conv2d_cpu_direct.cpp, see cpu_isa_target.h).
bool conv2d_direct_applies(const Conv2dGeometry& g, at::ScalarType dtype);

// The geometry the direct kernels compute: g itself, except that a 1x1, stride-1, unpadded
// convolution is one over planes flattened to a single row of H * W columns (the same arithmetic,
// and with H * W a multiple of 8 it reads its input in place).
Conv2dGeometry conv2d_direct_geometry(const Conv2dGeometry& g);

// out (N, Cout, Ho, Wo) = conv(x (N, C, H, W), w (Cout, C, kh, kw)) + bias; all contiguous NCHW,
// bias may be null. Every output element is written.
void conv2d_direct_forward(const float* x, const float* w, const float* bias, float* out,
                           const Conv2dGeometry& g);

// dw (Cout, C, kh, kw) = the weight gradient for dy (N, Cout, Ho, Wo) and x (N, C, H, W); dw is
// written, not accumulated. Partial sums per thread are added in thread order (deterministic for
// a given thread count).
void conv2d_direct_weight_grad(const float* dy, const float* x, float* dw, const Conv2dGeometry& g);

}  // namespace cnnext
