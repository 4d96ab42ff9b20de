"""cnnext.ops.scaled_dot_product_attention and cnnext.ops.attention: fused attention on cnnext's
kernels.

``scaled_dot_product_attention`` takes torch.nn.functional.scaled_dot_product_attention's arguments
and follows its documented semantics: softmax(q k^T * scale + mask) v with leading batch
dimensions broadcast between query, key and value, a boolean (True takes part) or additive float
``attn_mask`` broadcastable to (..., L, S), dropout on the attention weights, ``is_causal`` (query
i sees keys j <= i, top-left aligned when L != S) and grouped-query attention (``enable_gqa``:
key/value heads shared by groups of query heads, never repeated in memory). The L x S
matrix is never materialised: the forward keeps a running max and sum per query row and saves
only the output and the per-row log-sum-exp; the backward op (``cnnext::_attention_backward``)
recomputes the probabilities tile by tile, and regenerates the dropout mask from its Philox seed
and offset (csrc/philox.h) instead of storing it.

A row every key of which is masked out gives 0 and passes no gradient on every device, as SDPA on
the CPU does.
``attention(q, k, v, scale, causal)`` is the short form for (B, H, L, D) or (B, L, D) tensors.
"""

import functools
import math

import torch
from torch import Tensor

from ._library import check_same_device, ops, registration

__all__ = ["attention", "scaled_dot_product_attention"]


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, causal: bool = False) -> Tensor:
    """Fused attention; ``scale`` defaults to 1 / sqrt(D), as in SDPA.

    Args:
        q: (B, H, Lq, D) or (B, Lq, D).
        k, v: (B, H, Lk, D) or (B, Lk, D), the same number of dimensions as q.
        scale: multiplier of q k^T (None: 1 / sqrt(D)).
        causal: mask key j for query i when j > i.
    """
    dims = {q.dim(), k.dim(), v.dim()}
    if dims == {3}:
        return attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale, causal).squeeze(1)
    if dims != {4}:
        raise RuntimeError(
            "attention: q, k and v must all be 4-D (B, H, L, D) or all 3-D (B, L, D), got "
            f"{q.dim()}-D, {k.dim()}-D and {v.dim()}-D"
        )
    out, _ = torch.ops.cnnext.attention.default(q, k, v, scale, causal)
    return out


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention on cnnext's kernels (same arguments).

    Args:
        query: (..., L, E); key: (..., S, E); value: (..., S, Ev). Leading dimensions broadcast;
            with ``enable_gqa`` the head dimension (-3) of key and value may divide query's.
        attn_mask: bool (True: the key takes part) or float (float32 or query's dtype) added to
            the scores, broadcastable to (..., L, S). A float mask that requires grad gets one.
        dropout_p: probability of zeroing each attention weight (the rest scaled by 1 / (1 - p)),
            drawn from torch's default CPU generator (reproducible with torch.manual_seed); pass 0
            in evaluation, as with SDPA.
        is_causal: query i sees keys j <= i; not together with attn_mask.
        scale: multiplier of q k^T (None: 1 / sqrt(E)).
        enable_gqa: key/value heads shared by groups of query heads.
    """
    q4, k4, v4, bias4, out_shape = _as_four_dimensional(query, key, value, attn_mask, is_causal, enable_gqa)
    dropout_p = float(dropout_p)
    if dropout_p > 1.0:
        raise RuntimeError(
            "scaled_dot_product_attention: dropout probability has to be between 0 and 1, "
            f"but got {dropout_p}"
        )
    dropout_p = max(dropout_p, 0.0)  # SDPA takes a negative probability as none
    rng = None
    if dropout_p > 0.0:
        # (seed, offset) of the dropout mask, from the default CPU generator: a tensor op, so a
        # compiled graph draws it too.
        rng = torch.randint(-(2**62), 2**62, (2,), dtype=torch.int64)
    out, _ = torch.ops.cnnext.attention.default(
        q4, k4, v4, scale, is_causal, bias4, dropout_p, rng, enable_gqa and k4.shape[1] != q4.shape[1]
    )
    return out.reshape(out_shape)


def _as_four_dimensional(query, key, value, attn_mask, is_causal, enable_gqa):
    """query, key, value and the mask as (B, H, L, E)-shaped views for the operator (broadcast
    dimensions keep stride 0 where a view can express them), and the output's shape."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() < 2:
            raise RuntimeError(
                f"scaled_dot_product_attention: {name} must have at least 2 dimensions, got {t.dim()}"
            )
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(
            "scaled_dot_product_attention: query, key and value must have the same dtype, got "
            f"{query.dtype}, {key.dtype} and {value.dtype}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise RuntimeError(
            "scaled_dot_product_attention: query and key must have the same last dimension, got "
            f"{query.shape[-1]} and {key.shape[-1]}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise RuntimeError(
            "scaled_dot_product_attention: key and value must have the same number of keys (dim -2), got "
            f"{key.shape[-2]} and {value.shape[-2]}"
        )
    if attn_mask is not None and is_causal:
        raise RuntimeError(
            "scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True"
        )
    L, S, E, Ev = query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1]
    same_lead = query.shape[:-2] == key.shape[:-2] == value.shape[:-2]
    if attn_mask is None and same_lead and query.dim() == 4:
        return query, key, value, None, (*query.shape[:-1], Ev)  # the common case, nothing to broadcast
    # The mask is broadcast to the scores' shape, which it may not enlarge (SDPA adds it in place).
    mask_lead = tuple(attn_mask.shape[:-2]) if attn_mask is not None else ()

    def broadcast(*shapes):
        try:
            return torch.broadcast_shapes(*shapes)
        except RuntimeError as error:
            raise RuntimeError(
                "scaled_dot_product_attention: the leading (batch and head) dimensions of query "
                f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)} and attn_mask "
                f"{tuple(attn_mask.shape) if attn_mask is not None else None} do not broadcast"
            ) from error

    if enable_gqa and min(query.dim(), key.dim(), value.dim()) >= 3:
        hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if hk != hv or hk == 0 or hq % hk != 0:
            raise RuntimeError(
                "scaled_dot_product_attention: Number of heads in key and value must divide the number of "
                f"heads in query (enable_gqa), and key and value must agree; got {hq}, {hk} and {hv}"
            )
        batch = broadcast(query.shape[:-3], key.shape[:-3], value.shape[:-3])
        q_lead, kv_lead = (*batch, hq), (*batch, hk)
    else:
        q_lead = kv_lead = broadcast(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    if attn_mask is not None and broadcast(q_lead, mask_lead) != q_lead:
        _mask_does_not_broadcast(attn_mask, (*q_lead, L, S))
    q = _four_d(query.expand(*q_lead, L, E))
    k = _four_d(key.expand(*kv_lead, S, E))
    v = _four_d(value.expand(*kv_lead, S, Ev))
    bias = None
    if attn_mask is not None:
        if attn_mask.dim() < 2 or tuple(attn_mask.shape[-2:]) not in ((L, S), (1, S), (L, 1), (1, 1)):
            _mask_does_not_broadcast(attn_mask, (*q_lead, L, S))
        bias = _four_d(_mask_as_bias(attn_mask, query.dtype).expand(*q_lead, L, S))
    return q, k, v, bias, (*q_lead, L, Ev)


def _mask_does_not_broadcast(mask: Tensor, scores_shape: tuple) -> None:
    raise RuntimeError(
        f"scaled_dot_product_attention: attn_mask of shape {tuple(mask.shape)} does not broadcast to the "
        f"scores' shape {scores_shape}"
    )


def _four_d(t: Tensor) -> Tensor:
    """(..., L, D) as (B, H, L, D): the last leading dimension is H (1 if none), the others B."""
    if t.dim() == 2:
        return t.unsqueeze(0).unsqueeze(0)
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() == 4:
        return t
    return t.reshape(-1, *t.shape[-3:])


def _mask_as_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        # True takes part: 0 added; False: -inf, the key drops out of the softmax.
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)
    if mask.dtype not in (dtype, torch.float32):
        raise RuntimeError(
            "scaled_dot_product_attention: attn_mask must be bool, float32 or of the query's dtype "
            f"({dtype}), got {mask.dtype}"
        )
    return mask.to(dtype)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    # The log-sum-exp is kept in the accumulation type: float32 for half and bfloat16.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _attention_fake(q, k, v, scale=None, causal=False, bias=None, dropout_p=0.0, dropout_rng=None, gqa=False):
    check_same_device("attention", q=q, k=k, v=v, bias=bias)
    torch._check(q.dim() == 4, lambda: "attention: q must be a 4-D tensor")
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
    return out, q.new_empty(q.shape[:3], dtype=_lse_dtype(q.dtype))


def _attention_backward_fake(
    grad_out, q, k, v, out, lse, scale, causal, bias, dropout_p, dropout_rng, gqa, bias_grad
):
    check_same_device("_attention_backward", q=q, k=k, v=v, grad_out=grad_out, out=out, lse=lse, bias=bias)
    # Contiguous gradients in the operands' (full, broadcast) shapes, whatever their strides.
    dbias = q.new_empty((q.shape[0], q.shape[1], q.shape[2], k.shape[2]) if bias_grad else (0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


def _setup_context(ctx, inputs, output):
    q, k, v, scale, causal, bias, dropout_p, dropout_rng, gqa = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, dropout_rng)
    ctx.scale, ctx.causal, ctx.dropout_p, ctx.gqa = scale, causal, dropout_p, gqa
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # no zero-filled grad for lse: backward never reads it


def _backward(namespace, ctx, grad_out, grad_lse):
    if grad_out is None:  # only reachable through lse, which carries no gradient
        return (None,) * 9
    q, k, v, out, lse, bias, dropout_rng = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[5]
    dq, dk, dv, dbias = ops(namespace)._attention_backward.default(
        grad_out.contiguous(),
        q,
        k,
        v,
        out,
        lse,
        ctx.scale,
        ctx.causal,
        bias,
        ctx.dropout_p,
        dropout_rng,
        ctx.gqa,
        bias_grad,
    )
    return dq, dk, dv, None, None, dbias if bias_grad else None, None, None, None


# --- double backward ---------------------------------------------------------------------------
# The backward op's derivatives (gradient penalties, Hessian-vector products) through the plain
# PyTorch formula (cnnext.ops.reference.attention, which materialises the Lq x Lk matrix): the first
# gradients are recomputed there with a graph and differentiated once more. The derivative flows
# to grad_out, q, k and v (and the bias); out and lse are functions of them, and that dependence is
# inside the recomputation, so they get none of their own. Not with dropout: the reference has no
# Philox mask.


def _backward_setup_context(ctx, inputs, output):
    grad_out, q, k, v, _, _, scale, causal, bias, dropout_p, _, gqa, _ = inputs
    ctx.save_for_backward(grad_out, q, k, v, bias)
    ctx.scale, ctx.causal, ctx.dropout_p, ctx.gqa = scale, causal, dropout_p, gqa
    ctx.set_materialize_grads(False)


def _double_backward(ctx, ggq, ggk, ggv, ggbias):
    from .reference import attention as reference_attention

    if ctx.dropout_p > 0.0:
        raise RuntimeError("attention: double backward with dropout_p > 0 is not supported")
    grad_out, q, k, v, bias = ctx.saved_tensors
    with torch.enable_grad():
        grad_out, q, k, v = (t.detach().requires_grad_() for t in (grad_out, q, k, v))
        leaves = [grad_out, q, k, v]
        if bias is not None:
            bias = bias.detach().requires_grad_()
            leaves.append(bias)
        group = q.shape[1] // k.shape[1]
        k_heads, v_heads = (t.repeat_interleave(group, 1) if group > 1 else t for t in (k, v))
        out = reference_attention(q, k_heads, v_heads, ctx.scale, ctx.causal, bias)
        inputs = (q, k, v, bias) if bias is not None else (q, k, v)
        first = torch.autograd.grad(out, inputs, grad_out, create_graph=True)
        pairs = [(g, gg) for g, gg in zip(first, (ggq, ggk, ggv, ggbias), strict=False) if gg is not None]
        if not pairs:
            return (None,) * 13
        second = torch.autograd.grad(
            [g for g, _ in pairs], leaves, [gg for _, gg in pairs], allow_unused=True
        )
    d_grad_out, dq, dk, dv = second[:4]
    dbias = second[4] if bias is not None else None
    return d_grad_out, dq, dk, dv, None, None, None, None, dbias, None, None, None, None


@registration
def _register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::attention")(_attention_fake)
    torch.library.register_fake(f"{namespace}::_attention_backward")(_attention_backward_fake)
    torch.library.register_autograd(
        f"{namespace}::attention", functools.partial(_backward, namespace), setup_context=_setup_context
    )
    torch.library.register_autograd(
        f"{namespace}::_attention_backward", _double_backward, setup_context=_backward_setup_context
    )
