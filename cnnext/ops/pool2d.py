"""cnnext.ops max_pool2d / avg_pool2d / adaptive_avg_pool2d: pooling on cnnext's kernels, drop-ins
for their torch.nn.functional namesakes (same arguments, output sizes, NaN and index semantics).

The operators take explicit int[2] arguments; these wrappers accept what F.* accepts on top
(ints or pairs, stride=None, unbatched (C, H, W) inputs, None entries in adaptive output sizes).
"""

import functools

import torch
from torch import Tensor

from ._args import pair
from ._layout import suggest_memory_format
from ._library import check_same_device, ops, registration

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "max_pool2d"]

_MAX_WINDOW_TAPS = 256  # the most window taps a uint8 argmax can name (kMaxWindowTaps in pool2d.h)


def _batched(input: Tensor) -> tuple[Tensor, bool]:
    """(C, H, W) inputs run as a batch of one, as F.*_pool2d accepts them."""
    if input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False


def _stride(stride, kernel_size):
    # F.max_pool2d / F.avg_pool2d: stride None (or an empty list) means stride = kernel_size.
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        return kernel_size
    return pair(stride, "stride")


def _whole_axes(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode):
    """Per spatial axis, whether every window covers the whole input axis while being larger than
    it (windows of mostly padding, e.g. kernel 65536 on a 4-wide map): such an axis is one global
    reduction, which the kernels then compute with a window of the input's size instead of
    walking (or tabulating) every tap of the giant one. Returns (whole per axis, output sizes);
    the sizes only where some axis is whole."""
    if kernel_size[0] <= input.shape[2] and kernel_size[1] <= input.shape[3]:
        return [False, False], None  # the usual case, decided without the arithmetic below
    whole, out_sizes = [], []
    for axis in range(2):
        size, k, s, p, d = (
            input.shape[2 + axis],
            kernel_size[axis],
            stride[axis],
            padding[axis],
            dilation[axis],
        )
        if k < 1 or s < 1 or d < 1 or p < 0 or p > (d * (k - 1) + 1) // 2:
            return [False, False], None  # invalid: the operator's checks say why
        extent = d * (k - 1) + 1
        out = pooled_size(size, k, s, p, d, ceil_mode)
        out_sizes.append(out)
        whole.append(
            size >= 1 and d == 1 and extent > size and out >= 1 and (out - 1) * s <= p and extent - p >= size
        )
    return whole, out_sizes


def _global_axes(args, whole):
    """The op arguments (input, kernel, stride, padding, dilation) with each whole axis reduced to
    one window of the input's size (which gives one output along it)."""
    input, kernel_size, stride, padding, dilation = args

    def pick(values, replacement):
        return [replacement[a] if whole[a] else values[a] for a in range(2)]

    return (
        input,
        pick(kernel_size, list(input.shape[2:])),
        pick(stride, [1, 1]),
        pick(padding, [0, 0]),
        pick(dilation, [1, 1]),
    )


def _expand_whole(t: Tensor, whole, out_sizes, unbatched: bool) -> Tensor:
    """The reduced problem's output, repeated along the whole axes to the original output size."""
    shape = [*t.shape[:2], *[out_sizes[a] if whole[a] else t.shape[2 + a] for a in range(2)]]
    t = t.expand(shape).contiguous(memory_format=suggest_memory_format(t))
    return t.squeeze(0) if unbatched else t


def max_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """Same arguments and result as :func:`torch.nn.functional.max_pool2d`.

    Returns the pooled tensor, or (pooled, indices) with ``return_indices=True``; indices are
    int64 positions ``ih * W + iw`` within each (n, c) plane, as native returns them. Without
    indices, autograd saves each window's argmax as a uint8 tap instead (windows of up to 256
    taps): an eighth of the memory, and less to write and read back.
    """
    kernel_size = pair(kernel_size, "kernel_size")
    input, unbatched = _batched(input)
    args = (
        input,
        kernel_size,
        _stride(stride, kernel_size),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    whole, out_sizes = (
        _whole_axes(input, *args[1:], ceil_mode) if input.dim() == 4 else ([False, False], None)
    )
    if any(whole):
        result = max_pool2d(*_global_axes(args, whole), ceil_mode=ceil_mode, return_indices=return_indices)
        if return_indices:
            return tuple(_expand_whole(t, whole, out_sizes, unbatched) for t in result)
        return _expand_whole(result, whole, out_sizes, unbatched)
    if not return_indices:
        if not (torch.is_grad_enabled() and input.requires_grad):
            # Nothing will need the argmax: the inference op skips computing and storing it.
            out = torch.ops.cnnext._max_pool2d_values.default(*args, ceil_mode)
        elif kernel_size[0] * kernel_size[1] <= _MAX_WINDOW_TAPS:
            # Only backward needs the argmax: saved as uint8 window taps, 1/8 of int64's bytes.
            out, _ = torch.ops.cnnext._max_pool2d_with_taps.default(*args, ceil_mode)
        else:
            out, _ = torch.ops.cnnext.max_pool2d.default(*args, ceil_mode)
        return out.squeeze(0) if unbatched else out
    out, indices = torch.ops.cnnext.max_pool2d.default(*args, ceil_mode)
    if unbatched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


def avg_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """Same arguments and result as :func:`torch.nn.functional.avg_pool2d`."""
    kernel_size = pair(kernel_size, "kernel_size")
    input, unbatched = _batched(input)
    args = (input, kernel_size, _stride(stride, kernel_size), pair(padding, "padding"), [1, 1])
    whole, out_sizes = (
        _whole_axes(input, *args[1:], ceil_mode) if input.dim() == 4 else ([False, False], None)
    )
    if any(whole):
        # Each whole axis sums the entire input axis; only the divisor can differ between its
        # outputs: with count_include_pad, window o counts min(start + kernel, size + pad) - start
        # positions (start = o * stride - pad), where the reduced window counts `size`.
        reduced = _global_axes(args, whole)[:4]
        out = torch.ops.cnnext.avg_pool2d.default(*reduced, ceil_mode, count_include_pad, divisor_override)
        for a in range(2):
            if whole[a] and count_include_pad and divisor_override is None:
                size, start = input.shape[2 + a], torch.arange(out_sizes[a]) * args[2][a] - args[3][a]
                counted = torch.minimum(start + kernel_size[a], torch.tensor(size + args[3][a])) - start
                scale = (size / counted).to(out.dtype).to(out.device)
                out = out * scale.view(-1, 1) if a == 0 else out * scale
        return _expand_whole(out, whole, out_sizes, unbatched)
    out = torch.ops.cnnext.avg_pool2d.default(*args[:4], ceil_mode, count_include_pad, divisor_override)
    return out.squeeze(0) if unbatched else out


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Same arguments and result as :func:`torch.nn.functional.adaptive_avg_pool2d`; an entry of
    ``output_size`` may be None to keep that input size."""
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise TypeError(f"output_size must be an int or a pair, got {output_size!r}")
    sizes = [input.shape[-2 + i] if s is None else s for i, s in enumerate(output_size)]
    input, unbatched = _batched(input)
    out = torch.ops.cnnext.adaptive_avg_pool2d.default(input, pair(tuple(sizes), "output_size"))
    return out.squeeze(0) if unbatched else out


# --- fake (meta) implementations: shapes and layouts only ------------------------------------


def pooled_size(size, kernel, stride, pad, dilation, ceil_mode):
    """Output length along one axis, as native pooling computes it (works on SymInts)."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * pad - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def _empty_output(input, out_hw, dtype=None):
    out = input.new_empty((input.shape[0], input.shape[1], *out_hw), dtype=dtype)
    return out.contiguous(memory_format=suggest_memory_format(input))


def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    out_hw = [
        pooled_size(input.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
        for i in range(2)
    ]
    torch._check(out_hw[0] >= 1 and out_hw[1] >= 1, lambda: "max_pool2d: the output would be empty")
    return _empty_output(input, out_hw), _empty_output(input, out_hw, dtype=torch.long)


def _max_pool2d_with_taps_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(
        kernel_size[0] * kernel_size[1] <= _MAX_WINDOW_TAPS,
        lambda: f"_max_pool2d_with_taps: uint8 window taps name at most {_MAX_WINDOW_TAPS} taps",
    )
    out, indices = _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode)
    return out, indices.to(torch.uint8)


def _max_pool2d_values_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    return _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode)[0]


def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    out_hw = [
        pooled_size(input.shape[2 + i], kernel_size[i], stride[i], padding[i], 1, ceil_mode) for i in range(2)
    ]
    torch._check(out_hw[0] >= 1 and out_hw[1] >= 1, lambda: "avg_pool2d: the output would be empty")
    return _empty_output(input, out_hw)


def _adaptive_avg_pool2d_fake(input, output_size):
    return _empty_output(input, output_size)


def _grad_input_fake(grad_output, input, *args):
    indices = args[0] if args and isinstance(args[0], Tensor) else None
    check_same_device("pooling backward", input=input, grad_output=grad_output, indices=indices)
    return input.new_empty(input.shape).contiguous(memory_format=suggest_memory_format(input))


# --- autograd ----------------------------------------------------------------------------------


def _max_setup(ctx, inputs, output):
    input, *params = inputs
    ctx.save_for_backward(input, output[1])
    ctx.params = params
    ctx.mark_non_differentiable(output[1])
    # Otherwise autograd hands backward a zero-filled grad for the indices, as large as the output:
    # a third of the whole backward's time on the 2x2 case.
    ctx.set_materialize_grads(False)


def _max_backward(namespace, ctx, grad_output, grad_indices):
    if grad_output is None:  # only reachable through the indices, which carry no gradient
        return None, None, None, None, None, None
    input, indices = ctx.saved_tensors
    grad = ops(namespace)._max_pool2d_backward.default(grad_output, input, indices, *ctx.params)
    return grad, None, None, None, None, None


def _avg_setup(ctx, inputs, output):
    input, *params = inputs
    ctx.save_for_backward(input)
    ctx.params = params


def _avg_backward(namespace, ctx, grad_output):
    (input,) = ctx.saved_tensors
    grad = ops(namespace)._avg_pool2d_backward.default(grad_output, input, *ctx.params)
    return grad, None, None, None, None, None, None


def _adaptive_backward(namespace, ctx, grad_output):
    (input,) = ctx.saved_tensors
    return ops(namespace)._adaptive_avg_pool2d_backward.default(grad_output, input), None


# --- double backward: each pooling backward is linear in grad_output, and its derivative in the
# input is zero (max: almost everywhere), so only d grad_output is nonzero: the adjoint of the
# backward, applied to the upstream gradient ggi.


def _pool_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*[t for t in inputs[:3] if isinstance(t, torch.Tensor)])
    ctx.params = [a for a in inputs[2:] if not isinstance(a, torch.Tensor)]


def _max_double_backward(namespace, ctx, ggi):
    # backward scatters grad_output[o] to its window's argmax; the adjoint gathers ggi there.
    grad_output, input, indices = ctx.saved_tensors
    if indices.dtype == torch.uint8:  # window taps: the same argmax as plane positions (int64)
        indices = ops(namespace).max_pool2d.default(input.detach(), *ctx.params)[1]
    planes = ggi.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    return planes.contiguous(memory_format=suggest_memory_format(grad_output)), None, None, *[None] * 5


def _avg_double_backward(namespace, ctx, ggi):
    (grad_output, _) = ctx.saved_tensors
    return ops(namespace).avg_pool2d.default(ggi, *ctx.params), None, *[None] * 6


def _adaptive_double_backward(namespace, ctx, ggi):
    (grad_output, _) = ctx.saved_tensors
    return ops(namespace).adaptive_avg_pool2d.default(ggi, list(grad_output.shape[-2:])), None


_FAKES = {
    "max_pool2d": _max_pool2d_fake,
    "_max_pool2d_with_taps": _max_pool2d_with_taps_fake,
    "_max_pool2d_values": _max_pool2d_values_fake,
    "avg_pool2d": _avg_pool2d_fake,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d_fake,
    "_max_pool2d_backward": _grad_input_fake,
    "_avg_pool2d_backward": _grad_input_fake,
    "_adaptive_avg_pool2d_backward": _grad_input_fake,
}
_AUTOGRAD = {
    "max_pool2d": (_max_backward, _max_setup),
    "_max_pool2d_with_taps": (_max_backward, _max_setup),
    "avg_pool2d": (_avg_backward, _avg_setup),
    "adaptive_avg_pool2d": (_adaptive_backward, _avg_setup),
    "_max_pool2d_backward": (_max_double_backward, _pool_backward_setup),
    "_avg_pool2d_backward": (_avg_double_backward, _pool_backward_setup),
    "_adaptive_avg_pool2d_backward": (_adaptive_double_backward, _pool_backward_setup),
}


@registration
def _register(namespace: str) -> None:
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}")(fake)
    for name, (backward, setup) in _AUTOGRAD.items():
        torch.library.register_autograd(
            f"{namespace}::{name}", functools.partial(backward, namespace), setup_context=setup
        )
