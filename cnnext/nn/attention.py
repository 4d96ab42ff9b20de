"""cnnext.nn.SelfAttention2d: self-attention over the spatial positions of a feature map."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from .conv import Conv2d

__all__ = ["SelfAttention2d"]

BACKENDS = ("cnnext", "native")


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
        backend: "cnnext" (cnnext.ops.attention, cnnext 1x1 convolutions) or "native"
            (F.scaled_dot_product_attention, torch.nn.Conv2d). Both have the same parameters and
            state_dict keys, so weights move between them.
    """

    def __init__(self, channels: int, heads: int = 1, head_dim: int | None = None, backend: str = "cnnext"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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
        if self.backend == "cnnext":
            out = ops.attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, self.heads * self.head_dim, h, w)
        return x + self.gate * self.proj(out)

    def extra_repr(self) -> str:
        heads = f"heads={self.heads}, head_dim={self.head_dim}"
        return f"channels={self.channels}, {heads}, backend={self.backend!r}"
