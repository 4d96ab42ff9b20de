"""Plain-PyTorch versions of cnnext's operators, with the same signatures as the cnnext.ops
functions they mirror. They spell out what each kernel computes; tests and benchmarks use them
as an independent check (they share no code with the kernels or with cuDNN/oneDNN).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import pair

__all__ = ["attention", "conv2d"]


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """Convolution as im2col (F.unfold) followed by one matrix product per group.

    input (N, C, H, W), weight (Cout, C/groups, kh, kw) -> (N, Cout, Ho, Wo); int padding only.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    n, c, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # cols: (N, C*kh*kw, Ho*Wo) -> (N, groups, C/groups*kh*kw, Ho*Wo)
    cols = F.unfold(input, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, groups, cin_g * kh * kw, ho * wo)
    w_g = weight.reshape(groups, cout // groups, cin_g * kh * kw)
    out = torch.einsum("gok,ngkl->ngol", w_g, cols).reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    causal: bool = False,
    bias: Tensor | None = None,
) -> Tensor:
    """Attention the naive way: the full (Lq, Lk) score matrix (plus `bias`, if any), softmax,
    then a product with v."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if causal:
        visible = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
