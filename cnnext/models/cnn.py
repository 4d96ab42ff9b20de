"""Plain CNN family for the design studies: depth, width, kernel size, factorised 1x1+kxk convs,
pooling type, optional residual connections and SelfAttention2d stages."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import layers_for
from .registry import register

__all__ = ["PlainCNN"]

POOLINGS = ("max", "avg", "strided")


class ConvUnit(torch.nn.Module):
    """conv(k x k) + BN + ReLU, or with factorized=True conv(1x1 down to half the smaller of the
    in and out widths) + BN + ReLU then conv(k x k); with residual=True the input is added before
    the last ReLU (1x1 projection when the shape changes). batch_norm=False drops the BNs (the
    convs get biases instead)."""

    def __init__(
        self,
        layers,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        factorized: bool,
        residual: bool,
        batch_norm: bool = True,
    ):
        super().__init__()

        def conv_norm(cin: int, cout: int, k: int, stride: int = 1) -> list[torch.nn.Module]:
            conv = layers.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not batch_norm)
            return [conv, torch.nn.BatchNorm2d(cout)] if batch_norm else [conv]

        convs: list[torch.nn.Module] = []
        if factorized:
            # Half the smaller width, not half of out_ch: a unit that widens (in_ch = out_ch/2,
            # after each downsampling) would otherwise keep its k x k conv's input width and add
            # the 1x1 on top, costing more parameters than the plain unit it replaces.
            mid = max(min(in_ch, out_ch) // 2, 1)
            convs += [*conv_norm(in_ch, mid, 1), torch.nn.ReLU()]
            in_mid = mid
        else:
            in_mid = in_ch
        convs += conv_norm(in_mid, out_ch, kernel, stride)
        self.body = torch.nn.Sequential(*convs)
        self.residual = residual
        self.project = None
        if residual and (stride != 1 or in_ch != out_ch):
            self.project = layers.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.residual:
            out = out + (x if self.project is None else self.project(x))
        return F.relu(out)


@register("cnn")
class PlainCNN(torch.nn.Module):
    """`depth` conv units in three stages (widths width, 2 width, 4 width) with a downsampling
    between stages (max/avg pooling or a stride-2 conv), global average pooling, linear classifier.

    depth: conv units, >= 2, split as evenly as possible over the 3 stages, earlier stages first
        (depth 2 uses the first two stages only).
    batch_norm: False builds the units without batch normalisation (convs with biases), the
        classical setting in which deep plain networks show vanishing gradients.
    attention_stages: indices (0, 1, 2) of stages followed by a SelfAttention2d.
    """

    def __init__(
        self,
        depth: int = 6,
        width: int = 32,
        kernel_size: int = 3,
        factorized: bool = False,
        pooling: str = "max",
        residual: bool = False,
        batch_norm: bool = True,
        attention_stages: tuple[int, ...] = (),
        attention_heads: int = 1,
        in_channels: int = 3,
        num_classes: int = 10,
        backend: str = "native",
    ):
        super().__init__()
        if depth < 2:
            raise ValueError(f"cnn depth must be >= 2 conv units, got {depth}")
        if kernel_size not in (1, 3, 5, 7):
            raise ValueError(f"kernel_size must be one of (1, 3, 5, 7), got {kernel_size}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if any(s not in (0, 1, 2) for s in attention_stages):
            raise ValueError(f"attention_stages must be stage indices in (0, 1, 2), got {attention_stages}")
        layers = layers_for(backend)
        per_stage = [depth // 3 + (1 if s < depth % 3 else 0) for s in range(3)]
        units: list[torch.nn.Module] = []
        channels = in_channels
        for stage, count in enumerate(per_stage):
            out_ch = width * 2**stage
            for i in range(count):
                downsample = stage > 0 and i == 0
                if downsample and pooling != "strided":
                    units.append(layers.MaxPool2d(2) if pooling == "max" else layers.AvgPool2d(2))
                stride = 2 if downsample and pooling == "strided" else 1
                # The first unit reads the image itself: it stays a plain k x k convolution.
                first_unit = stage == 0 and i == 0
                units.append(
                    ConvUnit(
                        layers,
                        channels,
                        out_ch,
                        kernel_size,
                        stride,
                        factorized and not first_unit,
                        residual,
                        batch_norm,
                    )
                )
                channels = out_ch
            if stage in attention_stages and count > 0:
                units.append(layers.SelfAttention2d(channels, heads=attention_heads))
        self.features = torch.nn.Sequential(*units)
        self.pool = layers.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
