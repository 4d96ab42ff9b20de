// Attention on the CPU: the operator entry points (checks, allocation) bound to the loops of
// attention_cpu_loops.h, in the build for the best instruction set this CPU has (cpu_isa.h).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "attention/attention.h"
#include "attention/attention_cpu_loops_table.h"
#include "common.h"
#include "cpu_isa.h"
#include "cpu_output_memory.h"

namespace cnnext {
namespace {

const AttentionCpuLoops& loops() {
#if defined(__x86_64__)
  static const AttentionCpuLoops table = cpu_use_avx512() ? attention_cpu_loops_avx512()
                                         : cpu_use_avx2() ? attention_cpu_loops_avx2()
                                                          : attention_cpu_loops_baseline();
#else
  static const AttentionCpuLoops table = attention_cpu_loops_baseline();
#endif
  return table;
}

void check_cpu(const at::Tensor& t, const char* name) { check_device_type(t, name, c10::DeviceType::CPU); }

// t itself when its rows are contiguous (batch and head strides are free: a broadcast view is read
// in place, without materialising the repeats), else a contiguous copy.
at::Tensor with_contiguous_rows(const at::Tensor& t) {
  const bool rows_contiguous = t.size(3) <= 1 || t.stride(3) == 1;
  const bool blas_row_stride = t.stride(2) >= std::max<int64_t>(1, t.size(3));  // a valid leading dimension
  return rows_contiguous && blas_row_stride ? t : t.contiguous();
}

// Whether the bias holds NaN or +inf, checked over its distinct elements only (a broadcast
// dimension, stride 0, once): the loops then search their scores for such values.
bool has_nan_or_inf(const at::Tensor& bias) {
  if (!bias.defined()) return false;
  std::vector<int64_t> sizes(bias.sizes().begin(), bias.sizes().end());
  for (int64_t d = 0; d < bias.dim(); ++d) {
    if (bias.stride(d) == 0) sizes[d] = 1;
  }
  const auto distinct = bias.as_strided(sizes, bias.strides());
  return distinct.isnan().logical_or(distinct.isposinf()).any().item<bool>();
}

}  // namespace

AttentionOutputs attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       std::optional<double> scale, bool causal,
                                       const std::optional<at::Tensor>& bias, double dropout_p,
                                       const std::optional<at::Tensor>& dropout_rng, bool gqa) {
  auto options = attention_options(bias, dropout_p, dropout_rng, gqa);
  const auto g = attention_geometry(q, k, v, scale, causal, options);
  check_cpu(q, "attention: q");
  options.bias_has_nan_or_inf = has_nan_or_inf(options.bias);
  auto out = empty_cpu_output({g.batch, g.heads, g.q_len, g.v_dim}, q.options());
  auto lse = empty_cpu_output({g.batch, g.heads, g.q_len}, q.options());
  if (out.numel() == 0) return {out, lse};
  loops().forward(with_contiguous_rows(q), with_contiguous_rows(k), with_contiguous_rows(v), out, lse, g,
                  options);
  return {out, lse};
}

AttentionGrads attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      std::optional<double> scale, bool causal,
                                      const std::optional<at::Tensor>& bias, double dropout_p,
                                      const std::optional<at::Tensor>& dropout_rng, bool gqa,
                                      bool bias_grad) {
  const auto options = attention_options(bias, dropout_p, dropout_rng, gqa);
  const auto g = attention_backward_geometry(grad_out, q, k, v, out, lse, scale, causal, options);
  check_cpu(q, "_attention_backward: q");
  auto dq = empty_cpu_output({g.batch, g.heads, g.q_len, g.head_dim}, q.options());
  auto dk = empty_cpu_output({g.batch, g.kv_heads, g.k_len, g.head_dim}, q.options());
  auto dv = empty_cpu_output({g.batch, g.kv_heads, g.k_len, g.v_dim}, q.options());
  // Zero: causal blocks the backward never visits keep their zero gradient.
  auto dbias =
      bias_grad ? at::zeros({g.batch, g.heads, g.q_len, g.k_len}, q.options()) : at::empty({0}, q.options());
  if (dq.numel() == 0 || dk.numel() == 0 || dv.numel() == 0)
    return AttentionGrads{dq.zero_(), dk.zero_(), dv.zero_(), dbias};
  loops().backward(grad_out.contiguous(), with_contiguous_rows(q), with_contiguous_rows(k),
                   with_contiguous_rows(v), out.contiguous(), lse.contiguous(), dq, dk, dv,
                   bias_grad ? dbias : at::Tensor(), g, options);
  return AttentionGrads{dq, dk, dv, dbias};
}

}  // namespace cnnext
