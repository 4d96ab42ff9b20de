"""cnnext.ops.attention: fused scaled-dot-product attention on cnnext's kernels.

softmax(q k^T * scale) v for (B, H, L, D) or (B, L, D) tensors, matching
torch.nn.functional.scaled_dot_product_attention (is_causal: top-left aligned, query i sees keys
j <= i). The Lq x Lk matrix is never materialised: the forward keeps a running max and sum per
query row and saves only the output and the per-row log-sum-exp; the backward op
(``cnnext::_attention_backward``) recomputes the probabilities tile by tile.
"""

import functools

import torch
from torch import Tensor

from ._library import check_same_device, ops, registration

__all__ = ["attention"]


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


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    # The log-sum-exp is kept in the accumulation type: float32 for half and bfloat16.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _attention_fake(q, k, v, scale, causal):
    check_same_device("attention", q=q, k=k, v=v)
    torch._check(q.dim() == 4, lambda: "attention: q must be a 4-D tensor")
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], q.shape[3]))
    return out, q.new_empty(q.shape[:3], dtype=_lse_dtype(q.dtype))


def _attention_backward_fake(grad_out, q, k, v, out, lse, scale, causal):
    check_same_device("_attention_backward", q=q, k=k, v=v, grad_out=grad_out, out=out, lse=lse)
    # The kernels return contiguous gradients whatever q, k, v's strides (a permuted view included).
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale, ctx.causal = scale, causal
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # no zero-filled grad for lse: backward never reads it


def _backward(namespace, ctx, grad_out, grad_lse):
    if grad_out is None:  # only reachable through lse, which carries no gradient
        return None, None, None, None, None
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = ops(namespace)._attention_backward.default(
        grad_out.contiguous(), q, k, v, out, lse, ctx.scale, ctx.causal
    )
    return dq, dk, dv, None, None


# --- double backward ---------------------------------------------------------------------------
# The backward op's derivatives (gradient penalties, Hessian-vector products) through the plain
# PyTorch formula (cnnext.ops.reference.attention, which materialises the Lq x Lk matrix): the first
# gradients are recomputed there with a graph and differentiated once more. The derivative flows
# to grad_out, q, k and v; out and lse are functions of q, k, v, and that dependence is inside the
# recomputation, so they get none of their own.


def _backward_setup_context(ctx, inputs, output):
    grad_out, q, k, v, _, _, scale, causal = inputs
    ctx.save_for_backward(grad_out, q, k, v)
    ctx.scale, ctx.causal = scale, causal
    ctx.set_materialize_grads(False)


def _double_backward(ctx, ggq, ggk, ggv):
    from .reference import attention as reference_attention

    saved = ctx.saved_tensors
    with torch.enable_grad():
        grad_out, q, k, v = (t.detach().requires_grad_() for t in saved)
        out = reference_attention(q, k, v, ctx.scale, ctx.causal)
        first = torch.autograd.grad(out, (q, k, v), grad_out, create_graph=True)
        pairs = [(g, gg) for g, gg in zip(first, (ggq, ggk, ggv), strict=True) if gg is not None]
        if not pairs:
            return (None,) * 8
        second = torch.autograd.grad(
            [g for g, _ in pairs], (grad_out, q, k, v), [gg for _, gg in pairs], allow_unused=True
        )
    return (*second, None, None, None, None)


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
