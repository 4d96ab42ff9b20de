"""Parameter counts and forward FLOPs (multiply-adds) of a model for a given input size."""

import torch

from ..nn.attention import SelfAttention2d

__all__ = ["count_flops", "count_parameters"]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on one input of `input_size` (C, H, W) or (features,):
    convolutions (C_in/groups * kh * kw per output element), linear layers and the two products
    of attention (2 * L^2 * D per head); normalisation, activations and pooling are not counted."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    def attention_hook(module, inputs, output):
        nonlocal total
        n, _, h, w = inputs[0].shape
        total += n * module.heads * 2 * (h * w) ** 2 * module.head_dim

    hooks = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, SelfAttention2d):
            hooks.append(module.register_forward_hook(attention_hook))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else torch.float32
        model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total
