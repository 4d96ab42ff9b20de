"""Memory-layout helpers for the fake (meta) implementations."""

import torch
from torch import Tensor

__all__ = ["suggest_memory_format"]

try:  # torch >= 2.12: mirrors Tensor.suggest_memory_format() on fake tensors, as the kernels use it
    from torch._prims_common import suggest_memory_format
except ImportError:  # pragma: no cover - older torch (e.g. 2.11 on the GPU machines)

    def suggest_memory_format(t: Tensor) -> torch.memory_format:
        channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
        return torch.channels_last if channels_last and not t.is_contiguous() else torch.contiguous_format
