"""torch.nn-compatible modules on cnnext's kernels. Each takes the constructor arguments of its
torch.nn namesake and keeps the same parameters and state_dict keys, so weights load into either."""

from .attention import MultiheadAttention, SelfAttention2d
from .conv import Conv2d
from .convert import convert
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "Conv2d",
    "MaxPool2d",
    "MultiheadAttention",
    "SelfAttention2d",
    "convert",
]
