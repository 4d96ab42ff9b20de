// attention: softmax(q k^T * scale) v without materialising the Lq x Lk matrix, as
// torch.nn.functional.scaled_dot_product_attention computes it (is_causal: query i sees keys
// j <= i, top-left aligned as SDPA does when Lq != Lk).
//
//   q (B, H, Lq, D)   k, v (B, H, Lk, D)   ->   out (B, H, Lq, D), lse (B, H, Lq) float32/64
//
// Keys are visited in tiles with an online softmax (running max m and sum l per query row); only
// out and the per-row log-sum-exp lse = m + log(l) are saved for backward. The private backward
// op recomputes the probabilities tile by tile (FlashAttention-2): with Di = rowsum(dO_i * O_i),
//   P = exp(q k^T * scale - lse),  dV = P^T dO,  dP = dO v^T,  dS = P * (dP - D),
//   dQ = dS k * scale,  dK = dS^T q * scale.
// All three gradients are written (=). D is at most kMaxHeadDim.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace cnnext {

constexpr int64_t kAttentionMaxHeadDim = 256;

struct AttentionGeometry {
  int64_t batch, heads, q_len, k_len, head_dim;
  double scale;
  bool causal;
  // Keys [0, k_end) visible to query row i.
  int64_t key_end(int64_t i) const { return causal ? std::min(k_len, i + 1) : k_len; }
};

// Checks q, k, v (4-D, same batch/heads/head_dim/dtype/device, floating point, head_dim within the
// supported maximum) and resolves the scale (default 1/sqrt(head_dim)).
AttentionGeometry attention_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     std::optional<double> scale, bool causal);

// The same for the backward op, plus grad_out, out and lse against q's shape.
AttentionGeometry attention_backward_geometry(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                              std::optional<double> scale, bool causal);

using AttentionOutputs = std::tuple<at::Tensor, at::Tensor>;
using AttentionGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

AttentionOutputs attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       std::optional<double> scale, bool causal);
AttentionGrads attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      std::optional<double> scale, bool causal);
#ifdef CNNEXT_WITH_CUDA
AttentionOutputs attention_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::optional<double> scale, bool causal);
AttentionGrads attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                       std::optional<double> scale, bool causal);
#endif

}  // namespace cnnext
