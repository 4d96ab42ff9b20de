// Attention on the CPU: the operator entry points (checks, allocation) bound to the loops of
// attention_cpu_loops.h, in the build for the best instruction set this CPU has (cpu_isa.h).
#include <ATen/ops/empty.h>

#include "attention/attention.h"
#include "attention/attention_cpu_loops_table.h"
#include "common.h"
#include "cpu_isa.h"

namespace cnnext {
namespace {

const AttentionCpuLoops& loops() {
#if defined(__x86_64__)
  static const AttentionCpuLoops table = cpu_use_avx2() ? attention_cpu_loops_avx2() : attention_cpu_loops_baseline();
#else
  static const AttentionCpuLoops table = attention_cpu_loops_baseline();
#endif
  return table;
}

void check_cpu(const at::Tensor& t, const char* name) { check_device_type(t, name, c10::DeviceType::CPU); }

}  // namespace

AttentionOutputs attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       std::optional<double> scale, bool causal) {
  const auto g = attention_geometry(q, k, v, scale, causal);
  check_cpu(q, "attention: q");
  auto out = at::empty({g.batch, g.heads, g.q_len, g.head_dim}, q.options());
  auto lse = at::empty({g.batch, g.heads, g.q_len}, q.options());
  if (out.numel() == 0) return {out, lse};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  loops().forward(qc, kc, vc, out, lse, g);
  return {out, lse};
}

AttentionGrads attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      std::optional<double> scale, bool causal) {
  const auto g = attention_backward_geometry(grad_out, q, k, v, out, lse, scale, causal);
  check_cpu(q, "_attention_backward: q");
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  const auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const auto doc = grad_out.contiguous(), oc = out.contiguous(), lc = lse.contiguous();
  loops().backward(doc, qc, kc, vc, oc, lc, dq, dk, dv, g);
  return {dq, dk, dv};
}

}  // namespace cnnext
