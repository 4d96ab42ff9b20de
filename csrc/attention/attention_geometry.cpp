// Boundary checks of attention, shared by CPU and CUDA.
#include <cmath>

#include "attention/attention.h"
#include "common.h"

namespace cnnext {

AttentionOptions attention_options(const std::optional<at::Tensor>& bias, double dropout_p,
                                   const std::optional<at::Tensor>& dropout_rng, bool gqa) {
  AttentionOptions options;
  if (bias.has_value() && bias->defined()) options.bias = *bias;
  options.dropout_p = dropout_p;
  options.gqa = gqa;
  if (options.dropout()) {
    TORCH_CHECK(dropout_rng.has_value() && dropout_rng->defined() && dropout_rng->device().is_cpu() &&
                    dropout_rng->scalar_type() == at::kLong && dropout_rng->numel() == 2,
                "attention: dropout_p > 0 needs dropout_rng, a CPU int64 tensor holding (seed, offset)");
    const auto rng = dropout_rng->contiguous();
    options.seed = rng.const_data_ptr<int64_t>()[0];
    options.offset = rng.const_data_ptr<int64_t>()[1];
  }
  return options;
}

AttentionGeometry attention_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     std::optional<double> scale, bool causal,
                                     const AttentionOptions& options) {
  check_ndim(q, "attention: q", 4);
  check_ndim(k, "attention: k", 4);
  check_ndim(v, "attention: v", 4);
  check_floating(q, "attention: q");
  check_same_dtype(q, "q", k, "k");
  check_same_dtype(q, "q", v, "v");
  check_same_device(q, "q", k, "k");
  check_same_device(q, "q", v, "v");
  TORCH_CHECK(k.size(0) == v.size(0) && k.size(1) == v.size(1) && k.size(2) == v.size(2),
              "attention: k and v must agree in all but the last dimension, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0), "attention: q and k must have the same batch size, got ", q.size(0),
              " and ", k.size(0));
  if (options.gqa) {
    TORCH_CHECK(k.size(1) >= 1 && q.size(1) % k.size(1) == 0,
                "attention: with enable_gqa the number of query heads (", q.size(1),
                ") must be a multiple of the number of key/value heads (", k.size(1), ")");
  } else {
    TORCH_CHECK(q.size(1) == k.size(1), "attention: q and k must have the same number of heads, got ",
                q.size(1), " and ", k.size(1), " (enable_gqa shares key/value heads among query heads)");
  }
  TORCH_CHECK(q.size(3) == k.size(3), "attention: q and k must have the same head dimension, got ", q.size(3),
              " and ", k.size(3));
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kAttentionMaxHeadDim,
              "attention: head dimension must be in [1, ", kAttentionMaxHeadDim, "], got ", q.size(3));
  TORCH_CHECK(v.size(3) >= 1 && v.size(3) <= kAttentionMaxHeadDim,
              "attention: v's head dimension must be in [1, ", kAttentionMaxHeadDim, "], got ", v.size(3));
  TORCH_CHECK(k.size(2) >= 1 || q.size(2) == 0, "attention: k must have at least one key, got shape ",
              k.sizes());
  TORCH_CHECK(options.dropout_p >= 0.0 && options.dropout_p <= 1.0,
              "attention: dropout_p must be in [0, 1], got ", options.dropout_p);
  if (options.bias.defined()) {
    const at::Tensor& bias = options.bias;
    check_same_dtype(q, "q", bias, "bias");
    check_same_device(q, "q", bias, "bias");
    TORCH_CHECK(bias.dim() == 4 && bias.size(0) == q.size(0) && bias.size(1) == q.size(1) &&
                    bias.size(2) == q.size(2) && bias.size(3) == k.size(2),
                "attention: bias must have shape (B, H, Lq, Lk) = (", q.size(0), ", ", q.size(1), ", ",
                q.size(2), ", ", k.size(2), ") (a broadcast view is fine), got ", bias.sizes());
  }
  AttentionGeometry g{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
                      0.0,       causal,    k.size(1), v.size(3)};
  g.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(g.head_dim));
  return g;
}

AttentionGeometry attention_backward_geometry(const at::Tensor& grad_out, const at::Tensor& q,
                                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                              const at::Tensor& lse, std::optional<double> scale, bool causal,
                                              const AttentionOptions& options) {
  const auto g = attention_geometry(q, k, v, scale, causal, options);
  const std::vector<int64_t> out_shape{g.batch, g.heads, g.q_len, g.v_dim};
  TORCH_CHECK(grad_out.sizes() == out_shape && out.sizes() == out_shape,
              "_attention_backward: grad_out and out must have shape ", at::IntArrayRef(out_shape), ", got ",
              grad_out.sizes(), " and ", out.sizes());
  TORCH_CHECK(lse.sizes() == q.sizes().slice(0, 3), "_attention_backward: lse must have shape ",
              q.sizes().slice(0, 3), ", got ", lse.sizes());
  check_same_dtype(q, "q", grad_out, "grad_out");
  check_same_device(q, "q", grad_out, "grad_out");
  return g;
}

}  // namespace cnnext
