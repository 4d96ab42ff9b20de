// attention: softmax(q k^T * scale + bias) v without materialising the Lq x Lk matrix, as
// torch.nn.functional.scaled_dot_product_attention computes it (is_causal: query i sees keys
// j <= i, top-left aligned as SDPA does when Lq != Lk).
//
//   q (B, H, Lq, E)   k (B, Hk, Lk, E)   v (B, Hk, Lk, Ev)   ->   out (B, H, Lq, Ev), lse (B, H, Lq)
//
// Hk = H, or with grouped-query attention (AttentionOptions::gqa) a divisor of H: query head h
// reads key/value head h / (H / Hk). q, k, v may be broadcast views (stride 0 in B or H); their
// rows (the last dimension) must be contiguous. Options (AttentionOptions): an additive bias
// (the float form of SDPA's attn_mask, a (B, H, Lq, Lk) view, broadcast strides allowed) and
// dropout on the attention weights with a counter-based mask (philox.h: seed, offset and the
// element's index in (B, H, Lq, Lk) decide it, so backward regenerates it instead of storing it).
//
// Keys are visited in tiles with an online softmax (running max m and sum l per query row); only
// out and the per-row log-sum-exp lse = m + log(l) are saved for backward. The private backward
// op recomputes the probabilities tile by tile (FlashAttention-2): with Di = rowsum(dO_i * O_i),
// Z the dropout mask scaled by 1 / (1 - p) (all ones without dropout),
//   P = exp(q k^T * scale + bias - lse),  dV = (P * Z)^T dO,  dP = (dO v^T) * Z,  dS = P * (dP - D),
//   dQ = dS k * scale,  dK = dS^T q * scale,  dBias = dS.
// A row whose scores are all -inf (fully masked) has lse = -inf, output 0 and gradients 0, as
// SDPA on the CPU gives. All gradients are written (=), in the full broadcast shapes (B, H, ...)
// and (B, Hk, ...): the caller sums them to its inputs' shapes. E and Ev are at most kMaxHeadDim.
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
  int64_t kv_heads, v_dim;  // key/value heads (heads unless grouped), value head dimension
  // Keys [0, k_end) visible to query row i.
  int64_t key_end(int64_t i) const { return causal ? std::min(k_len, i + 1) : k_len; }
  // Query heads per key/value head.
  int64_t group() const { return heads / kv_heads; }
};

// What scaled_dot_product_attention adds to q, k, v, scale and causal.
struct AttentionOptions {
  at::Tensor bias;                   // undefined, or additive scores as a (B, H, Lq, Lk) view of q's dtype
  double dropout_p = 0.0;            // probability of zeroing an attention weight; 0: no dropout
  int64_t seed = 0, offset = 0;      // the dropout mask's Philox key and counter offset
  bool gqa = false;                  // k and v may have fewer heads than q (grouped-query attention)
  bool bias_has_nan_or_inf = false;  // a NaN or +inf in the bias (which makes its rows NaN); CPU only

  bool dropout() const { return dropout_p > 0.0; }
};

// Checks q, k, v (4-D, same batch, floating point, head dims within the supported maximum, heads
// equal or grouped as options.gqa allows), the bias and the dropout probability, and resolves the
// scale (default 1/sqrt(E)).
AttentionGeometry attention_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     std::optional<double> scale, bool causal,
                                     const AttentionOptions& options);

// The same for the backward op, plus grad_out, out and lse against q's and v's shapes.
AttentionGeometry attention_backward_geometry(const at::Tensor& grad_out, const at::Tensor& q,
                                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                              const at::Tensor& lse, std::optional<double> scale, bool causal,
                                              const AttentionOptions& options);

using AttentionOutputs = std::tuple<at::Tensor, at::Tensor>;
// dq (B, H, Lq, E), dk (B, Hk, Lk, E), dv (B, Hk, Lk, Ev), dbias (B, H, Lq, Lk) or empty when not asked for.
using AttentionGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The options from the operators' arguments (bias: SDPA's float attn_mask, already broadcast).
AttentionOptions attention_options(const std::optional<at::Tensor>& bias, double dropout_p,
                                   const std::optional<at::Tensor>& dropout_rng, bool gqa);

// The operators (schemas in operator_schemas.h): forward, and backward with bias_grad asking for dBias.
AttentionOutputs attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       std::optional<double> scale, bool causal,
                                       const std::optional<at::Tensor>& bias, double dropout_p,
                                       const std::optional<at::Tensor>& dropout_rng, bool gqa);
AttentionGrads attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                      std::optional<double> scale, bool causal,
                                      const std::optional<at::Tensor>& bias, double dropout_p,
                                      const std::optional<at::Tensor>& dropout_rng, bool gqa, bool bias_grad);
#ifdef CNNEXT_WITH_CUDA
AttentionOutputs attention_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::optional<double> scale, bool causal,
                                        const std::optional<at::Tensor>& bias, double dropout_p,
                                        const std::optional<at::Tensor>& dropout_rng, bool gqa);
AttentionGrads attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                       std::optional<double> scale, bool causal,
                                       const std::optional<at::Tensor>& bias, double dropout_p,
                                       const std::optional<at::Tensor>& dropout_rng, bool gqa,
                                       bool bias_grad);
#endif

}  // namespace cnnext
