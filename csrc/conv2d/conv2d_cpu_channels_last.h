// Direct float32 conv2d kernels for channels_last tensors on AVX-512 CPUs: vectorised over channels.
//
// The NCHW direct kernels (conv2d_cpu_direct.h) put 8 output columns in a vector, which a 6- or
// 8-wide output row cannot fill, and a channels_last tensor had to be copied to NCHW and back
// around them (four layout copies per convolution). These read and write channels_last in place:
// a vector holds 16 output channels, and a register tile is P neighbouring output pixels x V
// vectors (up to 32 channels), accumulated over every (ki, kj, input channel) with one broadcast
// input value per pixel and V weight vectors per input channel. Taps that fall in the padding read
// a row of zeros; nothing is copied.
//
//   forward:      out[n, oh, ow, co] = bias[co] + sum over (ki, kj, c) of
//                                      x[n, oh*s - pad + ki*dil, ow*s - pad + kj*dil, c] * w[co, c, ki, kj]
//                 (with at most 16 output channels and 3-, 5- or 7-wide windows along rows, row
//                 tiles that reuse each input value for every tap reading it; see the .cpp)
//   input grad:   the forward kernel on dy with w flipped and transposed, once per stride phase of
//                 dx (conv2d_cpu.cpp's phases), each phase written into its strided slice of dx.
//   weight grad:  dw[co, c, ki, kj] = sum over (n, oh, ow) of dy[n, oh, ow, co] * x[...]: a register
//                 tile of R input channels x V vectors of output channels per tap, summed over
//                 the pixels of L2-sized row blocks; dbias in the same pass.
#pragma once

#include "conv2d/conv2d.h"

namespace cnnext {

// True where these kernels run: float32, one group, an AVX-512 CPU (cpu_use_avx512()). Compiled
// for the baseline ISA (conv2d_cpu.cpp), which keeps other CPUs out of the AVX-512 unit.
bool conv2d_channels_last_applies(const Conv2dGeometry& g, at::ScalarType dtype);

// Where the forward runs its row tiles (one vector of output channels, a kernel 3, 5 or 7 wide,
// stride and dilation 1 along rows: each broadcast input value serves every tap of a kernel row);
// baseline build (conv2d_cpu.cpp).
bool conv2d_channels_last_row_tiles_apply(const Conv2dGeometry& g);

// Where a result with channels innermost goes: element (n, row, column, channel) at
// data[n * sample + row * row_step + column * column_step + channel]. A stride phase of dx is
// such a view of dx itself.
struct ChannelsLastOut {
  float* data;
  int64_t sample, row_step, column_step;
};

// out (N, Ho, Wo, Cout) = conv(x (N, H, W, C), w (Cout, C, kh, kw) contiguous) + bias (may be
// null). Every output element is written. Negative padding (a phase of a strided input gradient)
// starts the window later.
void conv2d_channels_last_forward(const float* x, const float* w, const float* bias,
                                  const ChannelsLastOut& out, const Conv2dGeometry& g);

// dw (Cout, C, kh, kw) unless null and dbias (Cout) unless null, for dy (N, Ho, Wo, Cout) and
// x (N, H, W, C; may be null where dw is); both written, not accumulated. Threads sum their own
// samples into private partial sums, added in thread order (deterministic for a thread count).
void conv2d_channels_last_weight_grad(const float* dy, const float* x, float* dw, float* dbias,
                                      const Conv2dGeometry& g);

}  // namespace cnnext
