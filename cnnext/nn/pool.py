"""cnnext.nn pooling modules: torch.nn.MaxPool2d / AvgPool2d / AdaptiveAvgPool2d on cnnext's kernels.

Each subclasses its torch.nn namesake, so constructor arguments, attributes, ``extra_repr`` and
(empty) state_dicts are torch's own; only ``forward`` changes. ``isinstance`` therefore holds for
the torch.nn class too; use ``type(m)`` to tell them apart.
"""

import torch
from torch import Tensor

from .. import ops

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d"]


class MaxPool2d(torch.nn.MaxPool2d):
    """Drop-in for :class:`torch.nn.MaxPool2d` (incl. dilation, ceil_mode, return_indices)."""

    def forward(self, input: Tensor):
        return ops.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class AvgPool2d(torch.nn.AvgPool2d):
    """Drop-in for :class:`torch.nn.AvgPool2d` (incl. ceil_mode, count_include_pad, divisor_override)."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """Drop-in for :class:`torch.nn.AdaptiveAvgPool2d`; ``AdaptiveAvgPool2d(1)`` is the global
    average pooling of ResNet heads."""

    def forward(self, input: Tensor) -> Tensor:
        return ops.adaptive_avg_pool2d(input, self.output_size)
