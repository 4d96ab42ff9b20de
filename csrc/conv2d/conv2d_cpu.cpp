// conv2d on the CPU, lowered to GEMM (im2col / col2im) with the GEMMs in BLAS (at::bmm).
//
// The batch is processed in chunks of `nb` samples so that one GEMM per group covers many samples
// (large GEMMs run near peak; per-sample GEMMs on 8x8 maps do not) while the column buffer stays
// bounded. For a chunk and group g, with K = C/groups * kh * kw and L = Ho * Wo:
//   cols[g]   (K, nb*L)        im2col of the chunk, zeros where the window hits padding
//   forward:  out[g]  = W[g] (Cout/groups, K) @ cols[g]                         -> (Cout/groups, nb*L)
//   dweight:  dW[g]  += dY[g] (Cout/groups, nb*L) @ cols[g]^T                   (accumulated over chunks)
//   dinput:   dcols[g] = W[g]^T @ dY[g], then col2im sums dcols back into dinput (written =)
//   dbias:    sum of dY over (N, Ho, Wo)                                        (written =)
// Tensors are computed in NCHW; channels_last inputs get channels_last results.
#include <ATen/AccumulateType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"
#include "conv2d/conv2d.h"

namespace cnnext {
namespace {

// Upper bound on the elements of one chunk's column buffer (32 MiB of float32): big enough for
// efficient GEMMs, small enough to stay friendly to the caches and memory.
constexpr int64_t kColumnBudget = int64_t{8} << 20;

int64_t samples_per_chunk(const Conv2dGeometry& g) {
  const int64_t per_sample = std::max<int64_t>(1, g.groups * g.patch_size() * g.out_pixels());
  return std::clamp<int64_t>(kColumnBudget / per_sample, 1, std::max<int64_t>(g.batch, 1));
}

// Output columns [lo, hi) whose input column ow * stride - pad + offset lies inside [0, size).
std::pair<int64_t, int64_t> valid_range(int64_t out_size, int64_t size, int64_t stride, int64_t pad,
                                        int64_t offset) {
  const int64_t shift = pad - offset;  // input index = o * stride - shift
  const int64_t lo = shift > 0 ? ceil_div(shift, stride) : 0;
  const int64_t last = size - 1 + shift;  // o * stride <= last
  const int64_t hi = last < 0 ? 0 : last / stride + 1;
  return {std::min(lo, out_size), std::clamp(hi, std::min(lo, out_size), out_size)};
}

// x (nb, C, H, W) -> cols (groups, K, nb*L). One task per (sample, channel) plane; each writes
// its own kh*kw rows, so tasks never collide.
template <typename scalar_t>
void im2col(const scalar_t* x, scalar_t* cols, const Conv2dGeometry& g, int64_t nb) {
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w, Wo = g.out_w, L = g.out_pixels();
  const int64_t Cg = g.in_per_group(), khkw = g.kernel_h * g.kernel_w, K = g.patch_size();
  const int64_t row_len = nb * L;
  at::parallel_for(0, nb * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane_index = begin; plane_index < end; ++plane_index) {
      const int64_t n = plane_index / C, c = plane_index % C;
      const scalar_t* plane = x + plane_index * H * W;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t k = (c % Cg) * khkw + ki * g.kernel_w + kj;
          scalar_t* row = cols + ((c / Cg) * K + k) * row_len + n * L;
          const auto [ow_lo, ow_hi] = valid_range(Wo, W, g.stride_w, g.pad_w, kj * g.dil_w);
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            scalar_t* dst = row + oh * Wo;
            const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
            if (ih < 0 || ih >= H) {
              std::fill(dst, dst + Wo, scalar_t(0));
              continue;
            }
            const scalar_t* src = plane + ih * W - g.pad_w + kj * g.dil_w;
            std::fill(dst, dst + ow_lo, scalar_t(0));
            for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dst[ow] = src[ow * g.stride_w];
            std::fill(dst + ow_hi, dst + Wo, scalar_t(0));
          }
        }
      }
    }
  });
}

// cols (groups, K, nb*L) -> dx (nb, C, H, W), summing every column entry that came from a pixel.
// One task per (sample, channel) plane: it reads only its own rows and writes only its plane.
template <typename scalar_t>
void col2im(const scalar_t* cols, scalar_t* dx, const Conv2dGeometry& g, int64_t nb) {
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w, Wo = g.out_w, L = g.out_pixels();
  const int64_t Cg = g.in_per_group(), khkw = g.kernel_h * g.kernel_w, K = g.patch_size();
  const int64_t row_len = nb * L;
  at::parallel_for(0, nb * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane_index = begin; plane_index < end; ++plane_index) {
      const int64_t n = plane_index / C, c = plane_index % C;
      scalar_t* plane = dx + plane_index * H * W;
      std::fill(plane, plane + H * W, scalar_t(0));
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t k = (c % Cg) * khkw + ki * g.kernel_w + kj;
          const scalar_t* row = cols + ((c / Cg) * K + k) * row_len + n * L;
          const auto [ow_lo, ow_hi] = valid_range(Wo, W, g.stride_w, g.pad_w, kj * g.dil_w);
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dil_h;
            if (ih < 0 || ih >= H) continue;
            const scalar_t* src = row + oh * Wo;
            scalar_t* dst = plane + ih * W - g.pad_w + kj * g.dil_w;
            for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dst[ow * g.stride_w] += src[ow];
          }
        }
      }
    }
  });
}

// (nb, Cout, L) <-> (groups, Cout/groups, nb*L): the sample-major tensor layout vs the GEMM
// layout. `to_gemm` picks the direction; `bias` (may be null) is added on the way to tensor layout.
template <typename scalar_t>
void regroup(scalar_t* tensor, scalar_t* gemm, const scalar_t* bias, const Conv2dGeometry& g, int64_t nb,
             bool to_gemm) {
  const int64_t Cout = g.out_channels, L = g.out_pixels();
  at::parallel_for(0, nb * Cout, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t n = index / Cout, co = index % Cout;
      scalar_t* t = tensor + index * L;
      scalar_t* m = gemm + (co * nb + n) * L;  // gemm row (group, co % Coutg) is row co
      if (to_gemm) {
        std::copy(t, t + L, m);
      } else {
        const scalar_t b = bias ? bias[co] : scalar_t(0);
        for (int64_t l = 0; l < L; ++l) t[l] = m[l] + b;
      }
    }
  });
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

}  // namespace

at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto g = conv2d_geometry(input, weight, bias, stride, padding, dilation, groups);
  check_cpu(input, "conv2d: input");
  const bool has_bias = bias.has_value() && bias->defined();

  auto out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());  // (N, Cout, Ho, Wo)
  if (out.numel() == 0) return out.contiguous(conv2d_output_format(input));
  const auto x = input.contiguous();                                                  // (N, C, H, W)
  const auto w = weight.contiguous().view({g.groups, g.out_per_group(), g.patch_size()});
  const auto b = has_bias ? bias->contiguous() : at::Tensor();

  const int64_t nb = samples_per_chunk(g), L = g.out_pixels();
  auto cols = at::empty({g.groups * g.patch_size() * nb * L}, input.options());
  auto prod = at::empty({g.groups * g.out_per_group() * nb * L}, input.options());
  CNNEXT_DISPATCH_CPU_TYPES(input.scalar_type(), "conv2d_forward_cpu", [&] {
    for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
      const int64_t cur = std::min(nb, g.batch - n0);
      auto cols_chunk = cols.narrow(0, 0, g.groups * g.patch_size() * cur * L)
                            .view({g.groups, g.patch_size(), cur * L});
      auto prod_chunk = prod.narrow(0, 0, g.groups * g.out_per_group() * cur * L)
                            .view({g.groups, g.out_per_group(), cur * L});
      im2col(x.data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w, cols_chunk.data_ptr<scalar_t>(), g,
             cur);
      at::bmm_out(prod_chunk, w, cols_chunk);
      regroup(out.data_ptr<scalar_t>() + n0 * g.out_channels * L, prod_chunk.data_ptr<scalar_t>(),
              has_bias ? b.data_ptr<scalar_t>() : nullptr, g, cur, /*to_gemm=*/false);
    }
  });
  return out.contiguous(conv2d_output_format(input));
}

Conv2dGrads conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const auto g = conv2d_backward_geometry(grad_output, input, weight, stride, padding, dilation, groups);
  check_cpu(input, "_conv2d_backward: input");
  const auto [need_input, need_weight, need_bias] = output_mask;

  const auto x = input.contiguous();        // (N, C, H, W)
  const auto dy = grad_output.contiguous(); // (N, Cout, Ho, Wo)
  const auto w = weight.contiguous().view({g.groups, g.out_per_group(), g.patch_size()});
  at::Tensor dinput, dweight, dbias;
  if (need_input) dinput = at::empty(input.sizes(), input.options());
  // dweight is accumulated chunk by chunk, so it starts at zero (also the answer for batch 0).
  if (need_weight) dweight = at::zeros({g.groups, g.out_per_group(), g.patch_size()}, weight.options());
  if (need_bias) dbias = at::empty({g.out_channels}, weight.options());

  const int64_t nb = samples_per_chunk(g), L = g.out_pixels();
  const int64_t in_sample = g.in_channels * g.in_h * g.in_w, out_sample = g.out_channels * L;
  CNNEXT_DISPATCH_CPU_TYPES(input.scalar_type(), "conv2d_backward_cpu", [&] {
    if (need_bias) bias_grad(dy.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(), g);
    if (!(need_input || need_weight) || g.batch == 0) return;
    auto cols = at::empty({g.groups * g.patch_size() * nb * L}, input.options());
    auto dy_gemm = at::empty({g.groups * g.out_per_group() * nb * L}, input.options());
    for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
      const int64_t cur = std::min(nb, g.batch - n0);
      auto cols_chunk = cols.narrow(0, 0, g.groups * g.patch_size() * cur * L)
                            .view({g.groups, g.patch_size(), cur * L});
      auto dy_chunk = dy_gemm.narrow(0, 0, g.groups * g.out_per_group() * cur * L)
                          .view({g.groups, g.out_per_group(), cur * L});
      regroup<scalar_t>(const_cast<scalar_t*>(dy.data_ptr<scalar_t>()) + n0 * out_sample, dy_chunk.data_ptr<scalar_t>(),
              nullptr, g, cur, /*to_gemm=*/true);
      if (need_weight) {
        im2col(x.data_ptr<scalar_t>() + n0 * in_sample, cols_chunk.data_ptr<scalar_t>(), g, cur);
        dweight.baddbmm_(dy_chunk, cols_chunk.transpose(1, 2));
      }
      if (need_input) {
        at::bmm_out(cols_chunk, w.transpose(1, 2), dy_chunk);  // dcols (groups, K, cur*L)
        col2im(cols_chunk.data_ptr<scalar_t>(), dinput.data_ptr<scalar_t>() + n0 * in_sample, g, cur);
      }
    }
  });
  if (need_input) dinput = dinput.contiguous(conv2d_output_format(input));
  if (need_weight) dweight = dweight.view(weight.sizes());
  return {dinput, dweight, dbias};
}

}  // namespace cnnext
