"""cnnext.nn.Conv2d: torch.nn.Conv2d running on cnnext's conv2d kernels."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops

__all__ = ["Conv2d"]


class Conv2d(torch.nn.Conv2d):
    """Drop-in for :class:`torch.nn.Conv2d` whose convolution runs on ``cnnext.ops.conv2d``.

    Constructor arguments, parameter initialisation (``reset_parameters``), ``extra_repr`` and
    ``state_dict`` keys are torch.nn.Conv2d's own (this class inherits them), so a state_dict
    moves between the two unchanged. ``padding_mode`` other than "zeros" pads with the native
    F.pad first, exactly as torch.nn.Conv2d does, then convolves with cnnext.

    Being a subclass, ``isinstance(m, torch.nn.Conv2d)`` holds; tell the two apart with
    ``type(m)``.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return ops.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return ops.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
