"""The layer classes a backend supplies to the model families."""

from dataclasses import dataclass

import torch

from .. import nn as cnnext_nn


@dataclass(frozen=True)
class Layers:
    """Convolution, pooling and attention classes of one backend."""

    backend: str
    Conv2d: type
    MaxPool2d: type
    AvgPool2d: type
    AdaptiveAvgPool2d: type

    def SelfAttention2d(self, channels: int, heads: int = 1) -> torch.nn.Module:  # noqa: N802 (a layer factory)
        return cnnext_nn.SelfAttention2d(channels, heads=heads, backend=self.backend)


def layers_for(backend: str) -> Layers:
    if backend == "cnnext":
        return Layers(
            "cnnext", cnnext_nn.Conv2d, cnnext_nn.MaxPool2d, cnnext_nn.AvgPool2d, cnnext_nn.AdaptiveAvgPool2d
        )
    if backend == "native":
        nn = torch.nn
        return Layers("native", nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    raise ValueError(f"backend must be 'native' or 'cnnext', got {backend!r}")
