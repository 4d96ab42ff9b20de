// conv2d on the CPU. Float32 convolutions without groups run direct kernels: on AVX-512 CPUs those
// of conv2d_cpu_channels_last.cpp for every channels_last result and for NCHW ones where they pay
// for the copies (uses_channels_last_kernels); else, on AVX2 + FMA CPUs, those of
// conv2d_cpu_direct.cpp on NCHW (forward, weight gradient, and the input gradient as stride-1
// convolutions of dy, one per stride phase, in both families). Everything else (float64, groups,
// output rows narrower than 6, other CPUs) is lowered to GEMM (im2col / col2im) with the GEMMs in
// BLAS (at::mm / at::bmm), as follows.
//
// Work is split by sample, and each sample into blocks of output rows: a thread builds the column
// matrix of one block in a private buffer small enough to stay in L2 (column_block_bytes) and
// multiplies it while it is there. Whole-sample column matrices are 3.2 MB for 16 channels and a
// 7x7 kernel on 32x32 maps; written and re-read through DRAM they made the 7x7 case twice as slow
// and its timing depend on what else the machine was doing. With fewer samples than threads,
// samples run one after another and the GEMMs and im2col/col2im loops parallelise inside instead.
//
// For sample n, group g and a block of Lb output positions, with K = C/groups * kh * kw:
//   cols[g]  (K, Lb)                    im2col of the block, zeros where the window hits padding
//   forward: out[n, g, block]   = W[g] (Cout/groups, K) @ cols[g]                       (written =)
//   dweight: dW[g]             += dY[n, g, block] (Cout/groups, Lb) @ cols[g]^T
//                                 (a partial sum per thread, the partials added in thread order)
//   dinput:  dcols[g]           = W[g]^T @ dY[n, g, block]; col2im adds dcols into dinput[n],
//                                 which is zeroed per sample first (so dinput is written, not +=)
//   dbias:   sum of dY over (N, Ho, Wo)                                                 (written =)
// The GEMM path computes in NCHW; results come back in conv2d_output_format (channels_last where
// the input or the weight is).
#include <ATen/AccumulateType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_cpu_channels_last.h"
#include "conv2d/conv2d_cpu_direct.h"
#include "conv2d/conv2d_cpu_variants.h"
#include "cpu_cache.h"
#include "cpu_isa.h"
#include "cpu_output_memory.h"

namespace cnnext {
namespace {

// Half of the core's L2 (cpu_cache.h): room for the block's columns plus the GEMM's panels.
int64_t column_block_bytes() { return cpu_l2_cache_bytes() / 2; }

// Runs fn(begin, end) over samples: split across threads when there are at least as many
// samples as threads; otherwise in one call on this thread, so that the BLAS calls and the
// im2col/col2im loops inside can use the threads themselves.
template <typename Fn>
void for_sample_ranges(int64_t batch, const Fn& fn) {
  const int64_t grain = batch >= at::get_num_threads() ? 1 : std::max<int64_t>(batch, 1);
  at::parallel_for(0, batch, grain, fn);
}

// Output rows per block so that one block's columns (groups * K * rows * Wo values) fit the budget.
int64_t rows_per_block(const Conv2dGeometry& g, int64_t element_size) {
  const int64_t row_bytes = g.groups * g.patch_size() * g.out_w * element_size;
  return std::clamp<int64_t>(column_block_bytes() / std::max<int64_t>(row_bytes, 1), 1, g.out_h);
}

// Visits every (channel c, column row k, output row oh, input row ih) of output rows [oh0, oh1)
// whose input row is inside the image, calling fn(column_row_offset, input_row_offset, ow_lo,
// ow_hi, kj) where the valid output columns are [ow_lo, ow_hi). Channels are split across
// threads; every call for channel c touches only column rows of c and input plane c.
template <typename Fn>
void for_each_tap_row(const Conv2dGeometry& g, int64_t oh0, int64_t oh1, bool visit_padding_rows,
                      const Fn& fn) {
  const int64_t Wo = g.out_w, block_len = (oh1 - oh0) * Wo, khkw = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t row = (c * khkw + ki * g.kernel_w + kj) * block_len;  // groups stack in c
          const auto [ow_lo, ow_hi] = tap_output_range(Wo, g.in_w, g.stride_w, g.pad_w, kj * g.dil_w);
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
            const bool inside = ih >= 0 && ih < g.in_h;
            if (inside || visit_padding_rows) {
              fn(row + (oh - oh0) * Wo, inside ? (c * g.in_h + ih) * g.in_w : -1, ow_lo, ow_hi, kj);
            }
          }
        }
      }
    }
  });
}

// x (C, H, W) of one sample, output rows [oh0, oh1) -> cols (groups, K, Lb).
template <typename scalar_t>
void im2col(const scalar_t* x, scalar_t* cols, const Conv2dGeometry& g, int64_t oh0, int64_t oh1) {
  const int64_t Wo = g.out_w;
  for_each_tap_row(g, oh0, oh1, /*visit_padding_rows=*/true,
                   [&](int64_t col_offset, int64_t in_offset, int64_t ow_lo, int64_t ow_hi, int64_t kj) {
                     scalar_t* dst = cols + col_offset;
                     if (in_offset < 0) {
                       std::fill(dst, dst + Wo, scalar_t(0));
                       return;
                     }
                     const scalar_t* src = x + in_offset - g.pad_w + kj * g.dil_w;
                     std::fill(dst, dst + ow_lo, scalar_t(0));
                     if (g.stride_w == 1) {  // contiguous run: a plain copy the compiler vectorises
                       std::copy(src + ow_lo, src + ow_hi, dst + ow_lo);
                     } else {
                       for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dst[ow] = src[ow * g.stride_w];
                     }
                     std::fill(dst + ow_hi, dst + Wo, scalar_t(0));
                   });
}

// cols (groups, K, Lb) of output rows [oh0, oh1) -> added into dx (C, H, W) of one sample.
template <typename scalar_t>
void col2im_add(const scalar_t* cols, scalar_t* dx, const Conv2dGeometry& g, int64_t oh0, int64_t oh1) {
  for_each_tap_row(g, oh0, oh1, /*visit_padding_rows=*/false,
                   [&](int64_t col_offset, int64_t in_offset, int64_t ow_lo, int64_t ow_hi, int64_t kj) {
                     const scalar_t* src = cols + col_offset;
                     scalar_t* __restrict__ dst = dx + in_offset - g.pad_w + kj * g.dil_w;
                     const int64_t stride_w = g.stride_w;
                     if (stride_w == 1) {
                       for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dst[ow] += src[ow];
                     } else {
                       for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dst[ow * stride_w] += src[ow];
                     }
                   });
}

// out = a @ b for (groups, m, k) x (groups, k, n); one plain GEMM when there is one group.
void gemm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  // Below autograd: the operands may be views of tensors that require grad (the backward op called
  // with create_graph=True), and out= ops refuse those; the op's derivative is cnnext's own.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (a.size(0) == 1) {
    auto out_matrix = out.select(0, 0);
    at::mm_out(out_matrix, a.select(0, 0), b.select(0, 0));
  } else {
    at::bmm_out(out, a, b);
  }
}

// dbias[co] = sum over (n, l) of dy[n, co, l], accumulated in double for float inputs.
template <typename scalar_t>
void bias_grad(const scalar_t* dy, scalar_t* dbias, const Conv2dGeometry& g) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
  const int64_t Cout = g.out_channels, L = g.out_pixels();
  at::parallel_for(0, Cout, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      acc_t sum = 0;
      for (int64_t n = 0; n < g.batch; ++n) {
        const scalar_t* src = dy + (n * Cout + co) * L;
        for (int64_t l = 0; l < L; ++l) sum += src[l];
      }
      dbias[co] = static_cast<scalar_t>(sum);
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) { check_device_type(t, name, c10::DeviceType::CPU); }

// The input gradient as stride-1 convolutions of dy, one per stride phase. Along one axis, input
// position i = a * stride + r receives gradient from tap k at output position
// o = a + (r + pad - k * dil) / stride, only where that division is exact. So phase r of dx is a
// stride-1 convolution of dy with those taps, in reverse order (the kernel flipped), dilated by
// the step between their offsets and padded by minus the smallest offset (negative padding just
// starts later). With stride 1 there is one phase holding every tap: the familiar transposed
// convolution with padding dil * (k - 1) - pad.
struct PhaseAxis {
  std::vector<int64_t> taps;  // kernel positions k of this phase, as the phase convolution applies them
  int64_t out_size, pad, dil;
};

PhaseAxis phase_axis(int64_t r, int64_t stride, int64_t pad, int64_t dil, int64_t kernel, int64_t in_size) {
  PhaseAxis axis{{}, ceil_div(std::max<int64_t>(in_size - r, 0), stride), 0, 1};
  std::vector<int64_t> offsets;
  for (int64_t k = kernel - 1; k >= 0; --k) {  // largest k first: smallest offset first
    const int64_t shift = r + pad - k * dil;
    if (((shift % stride) + stride) % stride == 0) {
      axis.taps.push_back(k);
      offsets.push_back(shift / stride);
    }
  }
  if (!offsets.empty()) axis.pad = -offsets[0];
  if (offsets.size() > 1) axis.dil = offsets[1] - offsets[0];  // every step is the same
  return axis;
}

struct InputGradPhase {
  int64_t row, col;  // r_h, r_w
  PhaseAxis rows, cols;
  Conv2dGeometry geometry;  // dy (N, Cout, Ho, Wo) -> phase of dx (N, C, out rows, out cols)
};

// Every phase of dx, or nothing where some phase with taps is not one the direct kernels run (the
// channels_last kernels run every phase).
std::optional<std::vector<InputGradPhase>> input_grad_phases(const Conv2dGeometry& g, at::ScalarType dtype,
                                                             bool channels_last) {
  if (g.groups != 1) return std::nullopt;
  std::vector<InputGradPhase> phases;
  for (int64_t rh = 0; rh < g.stride_h; ++rh) {
    for (int64_t rw = 0; rw < g.stride_w; ++rw) {
      const auto rows = phase_axis(rh, g.stride_h, g.pad_h, g.dil_h, g.kernel_h, g.in_h);
      const auto cols = phase_axis(rw, g.stride_w, g.pad_w, g.dil_w, g.kernel_w, g.in_w);
      const Conv2dGeometry t{g.batch,
                             g.out_channels,
                             g.out_h,
                             g.out_w,
                             g.in_channels,
                             rows.out_size,
                             cols.out_size,
                             static_cast<int64_t>(rows.taps.size()),
                             static_cast<int64_t>(cols.taps.size()),
                             1,
                             1,
                             rows.pad,
                             cols.pad,
                             rows.dil,
                             cols.dil,
                             1};
      const bool has_taps = !rows.taps.empty() && !cols.taps.empty() && t.out_h > 0 && t.out_w > 0;
      if (has_taps && !channels_last && !conv2d_direct_applies(t, dtype)) return std::nullopt;
      phases.push_back({rh, rw, rows, cols, t});
    }
  }
  return phases;
}

// dx (N, C, H, W), phase by phase; a phase without taps gets zeros. In NCHW each phase's
// convolution goes into a dense buffer, then is copied into its strided slice of dx; in
// channels_last (dy and dx channels_last) the kernel writes the slice itself.
void input_grad_by_phases(const at::Tensor& dy, const at::Tensor& weight, at::Tensor& dx,
                          const std::vector<InputGradPhase>& phases, const Conv2dGeometry& g,
                          bool channels_last) {
  for (const auto& phase : phases) {
    auto slice = dx.slice(2, phase.row, g.in_h, g.stride_h).slice(3, phase.col, g.in_w, g.stride_w);
    if (phase.rows.taps.empty() || phase.cols.taps.empty()) {
      slice.zero_();
      continue;
    }
    if (slice.numel() == 0) continue;
    const auto index = [&](const std::vector<int64_t>& taps) {
      return at::from_blob(const_cast<int64_t*>(taps.data()), {static_cast<int64_t>(taps.size())}, at::kLong);
    };
    // (C, Cout, taps_h, taps_w): the phase's taps of the kernel, flipped, channel axes swapped.
    const auto phase_weight = weight.index_select(2, index(phase.rows.taps))
                                  .index_select(3, index(phase.cols.taps))
                                  .transpose(0, 1)
                                  .contiguous();
    if (channels_last) {
      const ChannelsLastOut out{
          dx.mutable_data_ptr<float>() + phase.row * dx.stride(2) + phase.col * dx.stride(3), dx.stride(0),
          g.stride_h * dx.stride(2), g.stride_w * dx.stride(3)};
      conv2d_channels_last_forward(dy.const_data_ptr<float>(), phase_weight.const_data_ptr<float>(), nullptr,
                                   out, phase.geometry);
      continue;
    }
    const bool whole = g.stride_h == 1 && g.stride_w == 1;  // one phase: dx itself
    auto out = whole ? dx : at::empty(slice.sizes(), dx.options());
    conv2d_direct_forward(dy.const_data_ptr<float>(), phase_weight.const_data_ptr<float>(), nullptr,
                          out.mutable_data_ptr<float>(), phase.geometry);
    if (!whole) slice.copy_(out);
  }
}

// Where the channels_last kernels take a call: every call they run with a channels_last result
// (conv2d_output_format), and NCHW ones where they pay for copying the tensors to channels_last
// and back: kernels larger than 1x1 with at least 16 input and output channels. There the NCHW
// kernels, vectorised over output columns, run at 0.3-0.8x native; 1x1 convolutions and the
// few-channel stems stay with them (benchmarks/NOTES.md, "channels_last kernels").
bool uses_channels_last_kernels(const at::Tensor& input, const at::Tensor& weight, const Conv2dGeometry& g) {
  if (!conv2d_channels_last_applies(g, input.scalar_type())) return false;
  if (conv2d_output_format(input, weight) == at::MemoryFormat::ChannelsLast) return true;
  return g.kernel_h * g.kernel_w > 1 && g.in_channels >= 16 && g.out_channels >= 16;
}

// A channels_last (N, C, H, W) tensor as the kernels address it.
ChannelsLastOut channels_last_out(at::Tensor& t) {
  return {t.mutable_data_ptr<float>(), t.stride(0), t.stride(2), t.stride(3)};
}

// Both gradients of a call the channels_last kernels take (see conv2d_cpu_channels_last.h), dx in
// the result's format.
Conv2dGrads channels_last_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& weight, const Conv2dGeometry& g,
                                   std::array<bool, 3> output_mask) {
  const auto dy = contiguous_cpu_output(grad_output, at::MemoryFormat::ChannelsLast);  // (N, Ho, Wo, Cout)
  at::Tensor dinput, dweight, dbias;
  if (output_mask[0]) {
    count_conv2d_cpu_variant(Conv2dCpuVariant::kInputGradChannelsLastPhases);
    dinput = empty_cpu_output(input.sizes(), input.options().memory_format(at::MemoryFormat::ChannelsLast));
    input_grad_by_phases(dy, weight, dinput,
                         *input_grad_phases(g, input.scalar_type(), /*channels_last=*/true), g,
                         /*channels_last=*/true);
  }
  if (output_mask[1]) {
    count_conv2d_cpu_variant(Conv2dCpuVariant::kWeightGradChannelsLast);
    dweight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  }
  if (output_mask[2]) dbias = at::empty({g.out_channels}, weight.options());
  if (output_mask[1] || output_mask[2]) {
    // x only for dw: an NCHW input is not copied for dx or dbias alone.
    const auto x = output_mask[1] ? contiguous_cpu_output(input, at::MemoryFormat::ChannelsLast)
                                  : at::Tensor();  // (N, H, W, C)
    conv2d_channels_last_weight_grad(dy.const_data_ptr<float>(),
                                     output_mask[1] ? x.const_data_ptr<float>() : nullptr,
                                     output_mask[1] ? dweight.mutable_data_ptr<float>() : nullptr,
                                     output_mask[2] ? dbias.mutable_data_ptr<float>() : nullptr, g);
  }
  if (dinput.defined()) dinput = contiguous_cpu_output(dinput, conv2d_output_format(input, weight));
  return {dinput, in_layout_of_weight(dweight, weight), dbias};
}

}  // namespace

at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  check_cpu(input, "conv2d: input");
  // The kernel's own ATen calls (mm, views) are implementation, not graph: keep autograd out.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const bool has_bias = bias.has_value() && bias->defined();

  // One allocation of the result per path: a second one of the same size alive at the same time
  // kept glibc from reusing freed blocks, and every call paid the page faults of a fresh mapping.
  const std::array<int64_t, 4> sizes{g.batch, g.out_channels, g.out_h, g.out_w};  // (N, Cout, Ho, Wo)
  const auto format = conv2d_output_format(input, weight);
  if (g.batch * g.out_channels * g.out_h * g.out_w == 0)
    return empty_cpu_output(sizes, input.options().memory_format(format));
  if (uses_channels_last_kernels(input, weight, g)) {
    count_conv2d_cpu_variant(conv2d_channels_last_row_tiles_apply(g)
                                 ? Conv2dCpuVariant::kForwardChannelsLastRows
                                 : Conv2dCpuVariant::kForwardChannelsLast);
    const auto x = contiguous_cpu_output(input, at::MemoryFormat::ChannelsLast);  // (N, H, W, C)
    auto out = empty_cpu_output(sizes, input.options().memory_format(at::MemoryFormat::ChannelsLast));
    conv2d_channels_last_forward(x.const_data_ptr<float>(), weight.contiguous().const_data_ptr<float>(),
                                 has_bias ? bias->contiguous().const_data_ptr<float>() : nullptr,
                                 channels_last_out(out), g);
    return contiguous_cpu_output(out, format);
  }
  auto out = empty_cpu_output(sizes, input.options());  // the NCHW kernels'
  const auto x = input.contiguous();                    // (N, C, H, W)
  const auto w = weight.contiguous().view({g.groups, g.out_per_group(), g.patch_size()});
  const auto b = has_bias ? bias->contiguous() : at::Tensor();
  const bool direct = conv2d_direct_applies(g, input.scalar_type());
  count_conv2d_cpu_variant(direct ? Conv2dCpuVariant::kForwardDirect : Conv2dCpuVariant::kForwardIm2colGemm);
  if (direct) {
    conv2d_direct_forward(x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                          has_bias ? b.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(), g);
    return contiguous_cpu_output(out, conv2d_output_format(input, weight));
  }
  const int64_t L = g.out_pixels(), in_sample = g.in_channels * g.in_h * g.in_w;
  const int64_t block_rows = rows_per_block(g, input.element_size());

  CNNEXT_DISPATCH_CPU_TYPES(input.scalar_type(), "conv2d_forward_cpu", [&] {
    for_sample_ranges(g.batch, [&](int64_t begin, int64_t end) {
      auto cols = at::empty({g.groups * g.patch_size() * block_rows * g.out_w}, input.options());
      for (int64_t n = begin; n < end; ++n) {
        const auto out_n = out.select(0, n).view({g.groups, g.out_per_group(), L});
        for (int64_t oh0 = 0; oh0 < g.out_h; oh0 += block_rows) {
          const int64_t oh1 = std::min(g.out_h, oh0 + block_rows), block_len = (oh1 - oh0) * g.out_w;
          const auto cols_block = cols.narrow(0, 0, g.groups * g.patch_size() * block_len)
                                      .view({g.groups, g.patch_size(), block_len});
          im2col(x.const_data_ptr<scalar_t>() + n * in_sample, cols_block.mutable_data_ptr<scalar_t>(), g,
                 oh0, oh1);
          gemm_out(out_n.narrow(2, oh0 * g.out_w, block_len), w, cols_block);
        }
        if (has_bias) {
          scalar_t* o = out_n.mutable_data_ptr<scalar_t>();
          const scalar_t* bias_values = b.const_data_ptr<scalar_t>();
          for (int64_t co = 0; co < g.out_channels; ++co)
            for (int64_t l = 0; l < L; ++l) o[co * L + l] += bias_values[co];
        }
      }
    });
  });
  return contiguous_cpu_output(out, conv2d_output_format(input, weight));
}

Conv2dGrads conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const auto g = conv2d_backward_geometry(grad_output, input, weight, stride, padding, dilation, groups);
  check_cpu(input, "_conv2d_backward: input");
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  if (uses_channels_last_kernels(input, weight, g))
    return channels_last_backward(grad_output, input, weight, g, output_mask);
  const bool need_bias = output_mask[2];

  const auto x = input.contiguous();         // (N, C, H, W)
  const auto dy = grad_output.contiguous();  // (N, Cout, Ho, Wo)
  at::Tensor dinput, dweight, dbias;
  if (output_mask[0]) dinput = empty_cpu_output(input.sizes(), input.options());
  if (need_bias) dbias = at::empty({g.out_channels}, weight.options());

  // The direct kernels take what they can; the GEMM loop below does the rest. Plain names, not a
  // structured binding: the kernels' lambdas capture them (C++17 forbids that).
  const bool direct_weight = output_mask[1] && conv2d_direct_applies(g, input.scalar_type());
  const auto input_phases =
      output_mask[0] ? input_grad_phases(g, input.scalar_type(), /*channels_last=*/false) : std::nullopt;
  const bool need_input = output_mask[0] && !input_phases, need_weight = output_mask[1] && !direct_weight;
  if (output_mask[0])
    count_conv2d_cpu_variant(input_phases ? Conv2dCpuVariant::kInputGradDirectPhases
                                          : Conv2dCpuVariant::kInputGradCol2imGemm);
  if (output_mask[1])
    count_conv2d_cpu_variant(direct_weight ? Conv2dCpuVariant::kWeightGradDirect
                                           : Conv2dCpuVariant::kWeightGradIm2colGemm);
  if (direct_weight) {
    dweight = at::empty(weight.sizes(), weight.options());
    conv2d_direct_weight_grad(dy.const_data_ptr<float>(), x.const_data_ptr<float>(),
                              dweight.mutable_data_ptr<float>(), g);
  }
  if (input_phases) input_grad_by_phases(dy, weight, dinput, *input_phases, g, /*channels_last=*/false);

  const auto w = weight.contiguous().view({g.groups, g.out_per_group(), g.patch_size()});
  const auto w_t = w.transpose(1, 2);  // (groups, K, Cout/groups)
  const int64_t L = g.out_pixels(), in_sample = g.in_channels * g.in_h * g.in_w;
  const int64_t block_rows = rows_per_block(g, input.element_size());
  // One partial dW per thread, summed in thread order at the end (zero for batch 0).
  const int64_t partial_count = need_weight ? at::get_num_threads() : 0;
  std::vector<at::Tensor> partial_dweight(partial_count);
  for (auto& partial : partial_dweight)
    partial = at::zeros({g.groups, g.out_per_group(), g.patch_size()}, w.options());

  CNNEXT_DISPATCH_CPU_TYPES(input.scalar_type(), "conv2d_backward_cpu", [&] {
    if (need_bias) bias_grad(dy.const_data_ptr<scalar_t>(), dbias.mutable_data_ptr<scalar_t>(), g);
    if (!(need_input || need_weight)) return;
    for_sample_ranges(g.batch, [&](int64_t begin, int64_t end) {
      auto cols = at::empty({g.groups * g.patch_size() * block_rows * g.out_w}, input.options());
      at::Tensor partial = need_weight ? partial_dweight[at::get_thread_num()] : at::Tensor();
      for (int64_t n = begin; n < end; ++n) {
        const auto dy_n = dy.select(0, n).view({g.groups, g.out_per_group(), L});
        scalar_t* dx_n = need_input ? dinput.mutable_data_ptr<scalar_t>() + n * in_sample : nullptr;
        if (need_input) std::fill(dx_n, dx_n + in_sample, scalar_t(0));
        for (int64_t oh0 = 0; oh0 < g.out_h; oh0 += block_rows) {
          const int64_t oh1 = std::min(g.out_h, oh0 + block_rows), block_len = (oh1 - oh0) * g.out_w;
          const auto cols_block = cols.narrow(0, 0, g.groups * g.patch_size() * block_len)
                                      .view({g.groups, g.patch_size(), block_len});
          const auto dy_block = dy_n.narrow(2, oh0 * g.out_w, block_len);
          if (need_weight) {
            im2col(x.const_data_ptr<scalar_t>() + n * in_sample, cols_block.mutable_data_ptr<scalar_t>(), g,
                   oh0, oh1);
            partial.baddbmm_(dy_block, cols_block.transpose(1, 2));
          }
          if (need_input) {
            gemm_out(cols_block, w_t, dy_block);  // dcols (groups, K, Lb)
            col2im_add(cols_block.const_data_ptr<scalar_t>(), dx_n, g, oh0, oh1);
          }
        }
      }
    });
  });
  if (output_mask[0]) dinput = contiguous_cpu_output(dinput, conv2d_output_format(input, weight));
  if (need_weight) {
    dweight = partial_dweight[0];
    for (int64_t t = 1; t < partial_count; ++t) dweight.add_(partial_dweight[t]);
    dweight = dweight.view(weight.sizes());
  }
  return {dinput, in_layout_of_weight(dweight, weight), dbias};
}

bool conv2d_channels_last_applies(const Conv2dGeometry& g, at::ScalarType dtype) {
  return dtype == at::kFloat && g.groups == 1 && cpu_use_avx512();
}

bool conv2d_channels_last_row_tiles_apply(const Conv2dGeometry& g) {
  const bool width = g.kernel_w == 3 || g.kernel_w == 5 || g.kernel_w == 7;
  return g.out_channels <= 16 && width && g.stride_w == 1 && g.dil_w == 1;
}

bool conv2d_direct_applies(const Conv2dGeometry& g, at::ScalarType dtype) {
  return dtype == at::kFloat && g.groups == 1 && conv2d_direct_geometry(g).out_w >= 6 && cpu_use_avx2();
}

Conv2dGeometry conv2d_direct_geometry(const Conv2dGeometry& g) {
  // (The output size is checked too: the input-gradient phases of strided convolutions are 1x1
  // convolutions whose output may be a row or column larger than their input.)
  const bool pointwise = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
                         g.pad_h == 0 && g.pad_w == 0 && g.out_h == g.in_h && g.out_w == g.in_w;
  if (!pointwise) return g;
  Conv2dGeometry flat = g;
  flat.in_h = flat.out_h = 1;
  flat.in_w = flat.out_w = g.in_h * g.in_w;
  return flat;
}

}  // namespace cnnext
