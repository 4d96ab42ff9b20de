"""cnnext.nn.SelfAttention2d (self-attention over the spatial positions of a feature map) and
cnnext.nn.MultiheadAttention (torch.nn.MultiheadAttention with its attention on cnnext's kernels)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..backends import check_backend
from .conv import Conv2d

__all__ = ["MultiheadAttention", "SelfAttention2d"]


class SelfAttention2d(torch.nn.Module):
    """Self-attention across the H*W positions of a (N, C, H, W) map, as in non-local / SAGAN blocks.

    1x1 convolutions project the map to queries, keys and values (``heads`` heads of ``head_dim``
    channels), attention runs over the H*W tokens, a 1x1 convolution projects back to C channels,
    and the result is added to the input through a learnable gate initialised to zero, so the
    block starts as the identity:  y = x + gate * proj(attention(q(x), k(x), v(x))).

    Args:
        channels: C, input and output channels.
        heads: attention heads.
        head_dim: channels per head (default: channels // heads).
        backend: "cnnext" (cnnext.ops.scaled_dot_product_attention, cnnext 1x1 convolutions) or
            "native" (F.scaled_dot_product_attention, torch.nn.Conv2d). Both have the same
            parameters and state_dict keys, so weights move between them.
        dropout: probability of dropping an attention weight in training (0 in eval).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        head_dim: int | None = None,
        backend: str = "cnnext",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_backend(backend)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.dropout = dropout
        if head_dim is None:
            if channels % heads:
                raise ValueError(
                    f"channels ({channels}) must be divisible by heads ({heads}) when head_dim is unset"
                )
            head_dim = channels // heads
        self.channels, self.heads, self.head_dim, self.backend = channels, heads, head_dim, backend
        conv = Conv2d if backend == "cnnext" else torch.nn.Conv2d
        self.qkv = conv(channels, 3 * heads * head_dim, kernel_size=1)
        self.proj = conv(heads * head_dim, channels, kernel_size=1)
        self.gate = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        # (N, 3 * heads * head_dim, H, W) -> 3 x (N, heads, H*W, head_dim)
        q, k, v = self.qkv(x).view(n, 3, self.heads, self.head_dim, h * w).transpose(-1, -2).unbind(1)
        dropout_p = self.dropout if self.training else 0.0
        attend = (
            ops.scaled_dot_product_attention if self.backend == "cnnext" else F.scaled_dot_product_attention
        )
        out = attend(q, k, v, dropout_p=dropout_p)
        out = out.transpose(-1, -2).reshape(n, self.heads * self.head_dim, h, w)
        return x + self.gate * self.proj(out)

    def extra_repr(self) -> str:
        heads = f"heads={self.heads}, head_dim={self.head_dim}"
        dropout = f", dropout={self.dropout}" if self.dropout else ""
        return f"channels={self.channels}, {heads}, backend={self.backend!r}{dropout}"


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention whose attention runs on cnnext.ops.scaled_dot_product_attention:
    the same constructor, parameters, state_dict and call signature (cnnext.nn.convert swaps it in
    for torch's, e.g. in torchvision's VisionTransformer). The projections stay torch's linear
    layers. Masks follow torch's convention (bool True = not allowed to attend; float added), and
    dropout applies to the attention weights in training, as torch's does.

    Calls cnnext's attention cannot serve run torch's own forward: ``need_weights=True`` (the
    attention weights are never materialised here), ``add_bias_kv`` and ``add_zero_attn``.
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if need_weights or self.bias_k is not None or self.add_zero_attn:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first:  # (N, L, E) -> (L, N, E), torch's internal order
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, N, _ = query.shape
        S = key.shape[0]
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads(x, w, b, length):  # (length, N, E) -> (N, heads, length, head_dim)
            return F.linear(x, w, b).view(length, N, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(query, w_q, b_q, L), heads(key, w_k, b_k, S), heads(value, w_v, b_v, S)
        mask = self._additive_mask(attn_mask, key_padding_mask, N, L, S, q.dtype)
        out = ops.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, self.embed_dim))
        if self.batch_first:
            out = out.transpose(0, 1)
        return (out.squeeze(1) if unbatched else out), None

    def _additive_mask(self, attn_mask, key_padding_mask, n, length, keys, dtype):
        """attn_mask ((L, S) or (N * heads, L, S)) and key_padding_mask ((N, S)) in torch's convention
        (bool True: not allowed), as one float mask broadcastable to (N, heads, L, S), or None."""

        def additive(mask):
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    mask, float("-inf")
                )
            return mask.to(dtype)

        total = None
        if attn_mask is not None:
            total = additive(attn_mask)
            if total.dim() == 3:
                total = total.view(n, self.num_heads, length, keys)
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(n, 1, 1, keys)
            total = padding if total is None else total + padding
        return total
