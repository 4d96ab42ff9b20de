"""Fully-connected classifier (MLP) on flattened images."""

import torch
from torch import Tensor

from .registry import register

__all__ = ["MLP"]

ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "gelu": torch.nn.GELU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}


@register("mlp")
class MLP(torch.nn.Module):
    """Flatten, then Linear (+ BatchNorm1d) + activation (+ dropout) per hidden width, then a
    linear classifier. Has no convolution or pooling, so both backends build the same network."""

    def __init__(
        self,
        in_features: int = 3 * 32 * 32,
        num_classes: int = 10,
        hidden: tuple[int, ...] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        backend: str = "native",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[torch.nn.Module] = [torch.nn.Flatten()]
        width = in_features
        for h in hidden:
            layers.append(torch.nn.Linear(width, h))
            if batch_norm:
                layers.append(torch.nn.BatchNorm1d(h))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(torch.nn.Dropout(dropout))
            width = h
        layers.append(torch.nn.Linear(width, num_classes))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
