"""cnnext.ops.conv2d: 2-D convolution on cnnext's kernels, a drop-in for F.conv2d.

The operator ``torch.ops.cnnext.conv2d`` takes explicit int[2] stride/padding/dilation; this
wrapper adds what F.conv2d accepts on top (ints or pairs, padding="same"/"valid", unbatched
(C, H, W) inputs). The backward is ``torch.ops.cnnext._conv2d_backward``.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ._args import pair
from ._layout import suggest_memory_format
from ._library import check_same_device, ops, registration

__all__ = ["conv2d", "conv2d_output_size"]


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """Same arguments and result as :func:`torch.nn.functional.conv2d`, on cnnext's kernels.

    Args:
        input: (N, C, H, W) or unbatched (C, H, W); float32/float64 (plus float16/bfloat16 on CUDA),
            any memory layout (channels_last in, or a channels_last weight, gives channels_last
            out, as in F.conv2d).
        weight: (Cout, C / groups, kh, kw).
        bias: (Cout) or None.
        stride, dilation: int or (h, w), each >= 1.
        padding: int or (h, w) >= 0 of zero padding, or "valid" (none) or "same" (output size =
            input size; stride must be 1; an odd total padding puts the extra row/column at the
            bottom/right, as F.conv2d does).
        groups: number of channel groups; must divide C and Cout.
    """
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if isinstance(padding, str):
        input, padding = _string_padding(input, weight, padding, stride, dilation)
    else:
        padding = pair(padding, "padding")
    out = torch.ops.cnnext.conv2d.default(input, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def _string_padding(input: Tensor, weight: Tensor, padding: str, stride, dilation):
    """Resolve padding="valid"/"same" to symmetric padding, pre-padding the input when "same" needs
    one more row/column on the bottom/right than on the top/left."""
    if padding == "valid":
        return input, [0, 0]
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    if stride != [1, 1]:
        raise ValueError("padding='same' is not supported for strided convolutions")
    if weight.dim() != 4:
        raise RuntimeError(f"conv2d: weight must be a 4-D tensor, got {weight.dim()}-D")
    totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
    symmetric = [t // 2 for t in totals]
    extra_h, extra_w = (t - 2 * s for t, s in zip(totals, symmetric, strict=True))
    if extra_h or extra_w:
        input = F.pad(input, (0, extra_w, 0, extra_h))
    return input, symmetric


def conv2d_output_size(in_size, kernel, stride, padding, dilation):
    """Output length along one axis, as F.conv2d computes it (works on SymInts)."""
    return (in_size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    check_same_device("conv2d", input=input, weight=weight, bias=bias)
    out_hw = [
        conv2d_output_size(input.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i])
        for i in range(2)
    ]
    torch._check(
        out_hw[0] >= 1 and out_hw[1] >= 1,
        lambda: "conv2d: kernel size (dilated) is larger than the padded input",
    )
    out = input.new_empty((input.shape[0], weight.shape[0], *out_hw))
    return out.contiguous(memory_format=_result_format(input, weight))


def _result_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The kernels' rule (conv2d.h, conv2d_output_format), native's: channels_last where the input
    or the weight is."""
    formats = (suggest_memory_format(input), suggest_memory_format(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    check_same_device("_conv2d_backward", input=input, grad_output=grad_output, weight=weight)
    need_input, need_weight, need_bias = output_mask
    grad_input = input.new_empty(input.shape).contiguous(memory_format=_result_format(input, weight))
    return (
        grad_input if need_input else None,
        torch.empty_like(weight) if need_weight else None,  # the weight's layout (in_layout_of_weight)
        weight.new_empty((weight.shape[0],)) if need_bias else None,
    )


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(namespace, ctx, grad_output):
    input, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    output_mask = [need_input, need_weight, need_bias and ctx.has_bias]
    grad_input, grad_weight, grad_bias = ops(namespace)._conv2d_backward.default(
        grad_output, input, weight, *ctx.conv_args, output_mask
    )
    return grad_input, grad_weight, grad_bias, None, None, None, None


# --- double backward: the backward op's own derivatives, through the same ops ------------------
# With g = grad_output: grad_input = conv_transpose(g, w), grad_weight = corr(x, g), grad_bias =
# sum(g), each linear in g and in one of x, w. So for upstream gradients (ggi, ggw, ggb):
#   d g = conv2d(ggi, w) + conv2d(x, ggw) + ggb,   d x = input grad of conv2d(x, ggw) at g,
#   d w = weight grad of conv2d(ggi, w) at g.


def _backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, stride, padding, dilation, groups, _ = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.set_materialize_grads(False)


def _double_backward(namespace, ctx, ggi, ggw, ggb):
    grad_output, input, weight = ctx.saved_tensors
    conv, conv_backward = ops(namespace).conv2d.default, ops(namespace)._conv2d_backward.default
    need_grad_output, need_input, need_weight = ctx.needs_input_grad[:3]
    d_grad_output = d_input = d_weight = None
    if need_grad_output:
        terms = []
        if ggi is not None:
            terms.append(conv(ggi, weight, ggb, *ctx.conv_args))
        elif ggb is not None:
            terms.append(ggb.view(1, -1, 1, 1).expand_as(grad_output))
        if ggw is not None:
            terms.append(conv(input, ggw, None, *ctx.conv_args))
        d_grad_output = sum(terms[1:], terms[0]) if terms else None
    if need_input and ggw is not None:
        d_input = conv_backward(grad_output, input, ggw, *ctx.conv_args, [True, False, False])[0]
    if need_weight and ggi is not None:
        d_weight = conv_backward(grad_output, ggi, weight, *ctx.conv_args, [False, True, False])[1]
    return d_grad_output, d_input, d_weight, None, None, None, None, None


@registration
def _register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::conv2d")(_conv2d_fake)
    torch.library.register_fake(f"{namespace}::_conv2d_backward")(_conv2d_backward_fake)
    torch.library.register_autograd(
        f"{namespace}::conv2d", functools.partial(_backward, namespace), setup_context=_setup_context
    )
    torch.library.register_autograd(
        f"{namespace}::_conv2d_backward",
        functools.partial(_double_backward, namespace),
        setup_context=_backward_setup_context,
    )
