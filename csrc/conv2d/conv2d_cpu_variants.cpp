// The table of CPU conv2d variants (conv2d_cpu_variants.h).
#include "conv2d/conv2d_cpu_variants.h"

#include "cpu_variants.h"

namespace cnnext {
namespace {

// In the order of Conv2dCpuVariant.
CpuVariant table[] = {
    {"conv2d_forward", "direct",
     "float32, one group, output rows of at least 6 (after flattening a 1x1 stride-1 convolution), "
     "an AVX2 + FMA CPU: register-blocked direct convolution"},
    {"conv2d_forward", "im2col_gemm",
     "everything else (float64, groups, narrow outputs, other CPUs): im2col + BLAS"},
    {"conv2d_forward", "channels_last_direct",
     "float32, one group, an AVX-512 CPU, and a channels_last result (read and written in place) or an NCHW "
     "kernel larger than 1x1 with >= 16 input and output channels (copied to channels_last and back): "
     "direct convolution vectorised over output channels"},
    {"conv2d_forward", "channels_last_rows",
     "as channels_last_direct, with at most 16 output channels and a kernel 3, 5 or 7 wide, stride and "
     "dilation 1 along rows: row tiles over a row-planar copy, each broadcast input value serving a kernel "
     "row's taps"},
    {"conv2d_input_grad", "direct_phases",
     "one group, and every stride phase of the input a convolution the direct kernels run: one direct "
     "convolution of grad_output per phase"},
    {"conv2d_input_grad", "col2im_gemm", "everything else: BLAS into columns, then col2im"},
    {"conv2d_input_grad", "channels_last_direct_phases",
     "as the forward's channels_last variant: the channels_last forward kernel on grad_output, per stride "
     "phase"},
    {"conv2d_weight_grad", "direct", "as the forward's direct variant: direct weight-gradient kernels"},
    {"conv2d_weight_grad", "im2col_gemm", "everything else: im2col + BLAS, a partial sum per thread"},
    {"conv2d_weight_grad", "channels_last_direct",
     "as the forward's channels_last variant: channel-vectorised weight-gradient tiles (and the bias "
     "gradient)"},
};

}  // namespace

void count_conv2d_cpu_variant(Conv2dCpuVariant variant) { count_variant(table, variant); }

std::vector<CpuVariant*> conv2d_cpu_variants() { return entries_of(table); }

}  // namespace cnnext
