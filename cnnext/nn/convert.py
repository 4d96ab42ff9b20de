"""cnnext.nn.convert: swap a model's convolution, pooling and attention layers between torch.nn
and cnnext, keeping parameters, buffers, hooks, train/eval mode and device."""

import copy
import warnings

import torch

from ..backends import check_backend
from .attention import MultiheadAttention, SelfAttention2d
from .conv import Conv2d
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["convert"]

# torch.nn class -> its cnnext twin (a subclass with the same attributes and state_dict).
CNNEXT_OF = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    torch.nn.MultiheadAttention: MultiheadAttention,
}
NATIVE_OF = {cnnext_cls: native_cls for native_cls, cnnext_cls in CNNEXT_OF.items()}
CPU_DTYPES = (torch.float32, torch.float64)


def _unsupported(module: torch.nn.Module) -> str | None:
    """Why cnnext cannot run this layer as configured (None: it can)."""
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if tensor.device.type == "cpu" and tensor.dtype not in CPU_DTYPES:
            return f"dtype {tensor.dtype} on CPU (cnnext's CPU kernels take float32/float64)"
        if tensor.device.type not in ("cpu", "cuda"):
            return f"device {tensor.device}"
    return None


def convert(model: torch.nn.Module, to: str = "cnnext", inplace: bool = True) -> torch.nn.Module:
    """Swap every Conv2d / MaxPool2d / AvgPool2d / AdaptiveAvgPool2d / MultiheadAttention (and the
    attention backend of SelfAttention2d) to cnnext's (``to="cnnext"``) or torch's (``to="native"``)
    implementation.

    The swapped module keeps the same parameter and buffer tensors, hooks, attributes and mode, so
    outputs match up to kernel rounding and state_dicts stay identical. With ``inplace=False`` a
    deep copy is converted and the original is left alone. A layer cnnext cannot run as configured
    stays native and is listed in a UserWarning. Returns the converted model (the argument itself
    when ``inplace``; a module that is itself a swappable layer is returned as its replacement).
    """
    check_backend(to, "to")
    if not inplace:
        model = copy.deepcopy(model)
    mapping = CNNEXT_OF if to == "cnnext" else NATIVE_OF
    left_native = []

    def swap(module: torch.nn.Module, name: str) -> torch.nn.Module:
        if isinstance(module, SelfAttention2d):
            module.backend = to
        target = mapping.get(type(module))  # exact type: subclasses of our own are left alone
        if target is None:
            return module
        if to == "cnnext" and (reason := _unsupported(module)) is not None:
            left_native.append(f"{name or type(module).__name__}: {reason}")
            return module
        replacement = target.__new__(target)
        replacement.__dict__ = module.__dict__  # same parameters, buffers, hooks, training flag
        return replacement

    def visit(parent: torch.nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            full_name = f"{prefix}.{child_name}" if prefix else child_name
            replacement = swap(child, full_name)
            if replacement is not child:
                setattr(parent, child_name, replacement)
            visit(replacement, full_name)

    model = swap(model, "")
    visit(model, "")
    if left_native:
        warnings.warn("cnnext.nn.convert left these layers native: " + "; ".join(left_native), stacklevel=2)
    return model
