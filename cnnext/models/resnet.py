"""ResNets for 28x28 / 32x32 inputs: He et al. 2016 (CIFAR ResNet-6n+2 with basic blocks, and a
bottleneck variant of depth 9n+2) and wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016, depth
6n+4, pre-activation basic blocks, widths 16, 16k, 32k, 64k)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import layers_for
from .registry import register

__all__ = ["ResNet", "WideResNet"]


class ZeroPadShortcut(torch.nn.Module):
    """He et al.'s parameter-free shortcut (option A): subsample by the stride and pad channels."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(torch.nn.Module):
    expansion = 1

    def __init__(self, layers, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = layers.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = layers.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.shortcut = _shortcut(in_channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(torch.nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), as in He et al.'s deeper ImageNet/CIFAR models."""

    expansion = 4

    def __init__(self, layers, in_channels: int, channels: int, stride: int):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = layers.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = layers.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.conv3 = layers.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> torch.nn.Module:
    if stride == 1 and in_channels == out_channels:
        return torch.nn.Identity()
    return ZeroPadShortcut(stride, out_channels - in_channels)


@register("resnet")
class ResNet(torch.nn.Module):
    """CIFAR-style ResNet: a 3x3 stem of 16 channels, three stages of n blocks at 16/32/64 base
    channels (stride 2 between stages), global average pooling and a linear classifier.

    depth: 6n+2 with block="basic" (ResNet-20/32/44/56/110), 9n+2 with block="bottleneck".
    """

    def __init__(
        self,
        depth: int = 20,
        block: str = "basic",
        in_channels: int = 3,
        num_classes: int = 10,
        backend: str = "native",
    ):
        super().__init__()
        blocks = {"basic": (BasicBlock, 6), "bottleneck": (Bottleneck, 9)}
        if block not in blocks:
            raise ValueError(f"block must be one of {sorted(blocks)}, got {block!r}")
        block_cls, per_block = blocks[block]
        if depth < per_block + 2 or (depth - 2) % per_block:
            raise ValueError(
                f"ResNet depth with {block} blocks must be {per_block}n+2 (e.g. "
                f"{', '.join(str(per_block * n + 2) for n in (1, 3, 5, 7, 9))}), got {depth}"
            )
        n = (depth - 2) // per_block
        layers = layers_for(backend)
        self.stem = layers.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        stages, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                stages.append(block_cls(layers, channels, width, stride))
                channels = width * block_cls.expansion
        self.stages = torch.nn.Sequential(*stages)
        self.pool = layers.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        return self.fc(self.pool(self.stages(x)).flatten(1))


class WideBlock(torch.nn.Module):
    """Pre-activation basic block of WRN (BN-ReLU-conv twice), 1x1 conv shortcut on a change."""

    def __init__(self, layers, in_channels: int, channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = torch.nn.BatchNorm2d(in_channels)
        self.conv1 = layers.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.dropout = torch.nn.Dropout(dropout)
        self.conv2 = layers.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = layers.Conv2d(in_channels, channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


@register("wrn")
class WideResNet(torch.nn.Module):
    """WRN-depth-widen: depth 6n+4 (WRN-16-8, WRN-28-10, ...), stage widths 16k, 32k, 64k."""

    def __init__(
        self,
        depth: int = 16,
        widen: int = 4,
        dropout: float = 0.0,
        in_channels: int = 3,
        num_classes: int = 10,
        backend: str = "native",
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 (e.g. 10, 16, 22, 28, 40), got {depth}")
        if widen < 1:
            raise ValueError(f"WRN widen factor must be >= 1, got {widen}")
        n = (depth - 4) // 6
        layers = layers_for(backend)
        self.stem = layers.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, channels = [], 16
        for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range(n):
                blocks.append(WideBlock(layers, channels, width, 2 if stage > 0 and i == 0 else 1, dropout))
                channels = width
        self.stages = torch.nn.Sequential(*blocks)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.pool = layers.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stages(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def _init_weights(model: torch.nn.Module) -> None:
    """He (fan-out) initialisation for convolutions, unit batch norm, as in the papers' code."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
