"""Functional API of cnnext's operators; each mirrors its torch.nn.functional counterpart.

Every op is a real PyTorch operator (``torch.ops.cnnext.*``) whose backward is its own private
op, joined here with ``torch.library.register_autograd``; ``torch.library.register_fake`` makes
each traceable by ``torch.compile`` without graph breaks.
"""

from . import reference
from .attention import attention, scaled_dot_product_attention
from .conv2d import conv2d
from .pool2d import adaptive_avg_pool2d, avg_pool2d, max_pool2d

__all__ = [
    "adaptive_avg_pool2d",
    "attention",
    "avg_pool2d",
    "conv2d",
    "max_pool2d",
    "reference",
    "scaled_dot_product_attention",
]
