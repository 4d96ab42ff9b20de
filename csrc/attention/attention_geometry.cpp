// Boundary checks of attention, shared by CPU and CUDA.
#include <cmath>

#include "attention/attention.h"
#include "common.h"

namespace cnnext {

AttentionGeometry attention_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     std::optional<double> scale, bool causal) {
  check_ndim(q, "attention: q", 4);
  check_ndim(k, "attention: k", 4);
  check_ndim(v, "attention: v", 4);
  check_floating(q, "attention: q");
  check_same_dtype(q, "q", k, "k");
  check_same_dtype(q, "q", v, "v");
  check_same_device(q, "q", k, "k");
  check_same_device(q, "q", v, "v");
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0), "attention: q and k must have the same batch size, got ", q.size(0), " and ",
              k.size(0));
  TORCH_CHECK(q.size(1) == k.size(1), "attention: q and k must have the same number of heads, got ", q.size(1),
              " and ", k.size(1));
  TORCH_CHECK(q.size(3) == k.size(3), "attention: q and k must have the same head dimension, got ", q.size(3),
              " and ", k.size(3));
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kAttentionMaxHeadDim, "attention: head dimension must be in [1, ",
              kAttentionMaxHeadDim, "], got ", q.size(3));
  TORCH_CHECK(k.size(2) >= 1 || q.size(2) == 0, "attention: k must have at least one key, got shape ", k.sizes());
  AttentionGeometry g{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0.0, causal};
  g.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(g.head_dim));
  return g;
}

AttentionGeometry attention_backward_geometry(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                              std::optional<double> scale, bool causal) {
  const auto g = attention_geometry(q, k, v, scale, causal);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "_attention_backward: grad_out and out must have q's shape ", q.sizes(), ", got ", grad_out.sizes(),
              " and ", out.sizes());
  TORCH_CHECK(lse.sizes() == q.sizes().slice(0, 3), "_attention_backward: lse must have shape ",
              q.sizes().slice(0, 3), ", got ", lse.sizes());
  check_same_dtype(q, "q", grad_out, "grad_out");
  check_same_device(q, "q", grad_out, "grad_out");
  return g;
}

}  // namespace cnnext
