"""cnnext.ops max_pool2d / avg_pool2d / adaptive_avg_pool2d against their F.* namesakes: values,
indices and gradients over a grid of windows, layouts, batches and dtypes; gradcheck, opcheck,
torch.compile, NaN propagation, and bad inputs that must raise clear errors."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import cnnext

from .conftest import (
    DEVICES,
    FULL_PRECISION,
    LOW_PRECISION,
    distinct_values,
    make_layout,
    run_with_cpu_isa,
)

TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}
LAYOUTS = ["contiguous", "channels_last", "strided"]


def window_grid():
    """(kernel, stride, padding) with every padding from 0 to kernel // 2 (the legal range)."""
    for kernel, stride in itertools.product([1, 2, 3, 5], [1, 2, 3]):
        for padding in range(kernel // 2 + 1):
            yield kernel, stride, padding


WINDOWS = list(window_grid())


def _window_id(w):
    return "k{}-s{}-p{}".format(*w)


def compare(ours_fn, native_fn, x, dtype, tol=None):
    """Outputs and input gradients of ours vs native, native run in float64."""
    tol = tol or TOLERANCES[dtype]
    x_ours = x.detach().requires_grad_()
    x_native = x.detach().double().requires_grad_()
    out, out_native = ours_fn(x_ours), native_fn(x_native)
    out_t = out[0] if isinstance(out, tuple) else out
    out_native_t = out_native[0] if isinstance(out_native, tuple) else out_native
    assert out_t.shape == out_native_t.shape and out_t.dtype == dtype
    torch.testing.assert_close(out_t.double(), out_native_t, **tol)
    grad = torch.randn_like(out_native_t)
    (g_ours,) = torch.autograd.grad(out_t, x_ours, grad.to(dtype))
    (g_native,) = torch.autograd.grad(out_native_t, x_native, grad)
    torch.testing.assert_close(g_ours.double(), g_native, **tol)
    return out, out_native


def taps_to_positions(taps, kernel_size, stride, padding, dilation, width):
    """uint8 window taps t * kw + u (what autograd saves) as int64 plane positions ih * W + iw (what
    native returns), computed independently of the kernels."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair_of(a) for a in (kernel_size, stride, padding, dilation))
    oh = torch.arange(taps.shape[-2], device=taps.device).view(-1, 1)
    ow = torch.arange(taps.shape[-1], device=taps.device).view(1, -1)
    t, u = taps.long() // kw, taps.long() % kw
    return (oh * sh - ph + t * dh) * width + (ow * sw - pw + u * dw)


def pair_of(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("window", WINDOWS, ids=_window_id)
def test_max_pool2d_matches_native(window, dilation, ceil_mode, layout, device, dtype):
    """Both argmax encodings: int64 indices (return_indices=True) and the uint8 window taps
    autograd saves otherwise; values, argmax and the gradient through each."""
    kernel, stride, padding = window  # padding <= kernel // 2, so also legal for dilation 2
    args = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    x = make_layout(distinct_values((2, 3, 11, 10), dtype, device), layout)
    (out, idx), (out_native, idx_native) = compare(
        lambda t: cnnext.ops.max_pool2d(t, **args, return_indices=True),
        lambda t: F.max_pool2d(t, **args, return_indices=True),
        x,
        dtype,
    )
    assert torch.equal(idx, idx_native)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)

    compare(lambda t: cnnext.ops.max_pool2d(t, **args), lambda t: F.max_pool2d(t, **args), x, dtype)
    explicit = [pair_of(args[k]) for k in ("kernel_size", "stride", "padding", "dilation")]
    out_taps, taps = torch.ops.cnnext._max_pool2d_with_taps(x, *explicit, ceil_mode)
    assert taps.dtype == torch.uint8 and torch.equal(out_taps, out)
    assert torch.equal(taps_to_positions(taps, *explicit, x.shape[-1]), idx_native)


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "ceil_mode, count_include_pad, divisor_override",
    [(False, True, None), (True, True, None), (False, False, None), (True, False, None), (True, True, 3)],
    ids=["floor", "ceil", "floor-exclude_pad", "ceil-exclude_pad", "ceil-divisor3"],
)
@pytest.mark.parametrize("window", WINDOWS, ids=_window_id)
def test_avg_pool2d_matches_native(
    window, ceil_mode, count_include_pad, divisor_override, layout, device, dtype
):
    kernel, stride, padding = window
    args = dict(
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
    )
    x = make_layout(torch.randn(2, 3, 11, 10, dtype=dtype, device=device), layout)
    out, _ = compare(lambda t: cnnext.ops.avg_pool2d(t, **args), lambda t: F.avg_pool2d(t, **args), x, dtype)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("output_size", [1, (1, 1), (3, 4), (5, 5), (11, 10), (7, None), (13, 17)])
def test_adaptive_avg_pool2d_matches_native(output_size, layout, device, dtype):
    """Global (1x1, every ResNet head), shrinking, identity, uneven and growing output sizes."""
    x = make_layout(torch.randn(2, 3, 11, 10, dtype=dtype, device=device), layout)
    compare(
        lambda t: cnnext.ops.adaptive_avg_pool2d(t, output_size),
        lambda t: F.adaptive_avg_pool2d(t, output_size),
        x,
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [(32, 32), (7, 9)])
def test_global_average_pooling_over_many_planes(size, layout, dtype):
    """The global paths sum four planes (NCHW) or four quarters of a sample (channels_last) at a
    time: 35 planes split over threads leave remainders of planes, of columns (7 x 9 = 63 per
    plane) and of quarters."""
    x = make_layout(torch.randn(5, 7, *size, dtype=dtype), layout)
    compare(lambda t: cnnext.ops.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1), x, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [0, 1, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batches_including_empty(batch, layout, device):
    x = make_layout(distinct_values((batch, 4, 9, 9), torch.float64, device), layout)
    for ours, native in [
        (lambda t: cnnext.ops.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
        (lambda t: cnnext.ops.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1)),
        (lambda t: cnnext.ops.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
    ]:
        compare(ours, native, x, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input(device):
    x = distinct_values((3, 8, 7), torch.float64, device)
    out, idx = cnnext.ops.max_pool2d(x, 2, return_indices=True)
    out_native, idx_native = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, out_native) and torch.equal(idx, idx_native)
    torch.testing.assert_close(cnnext.ops.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 1, 1))
    torch.testing.assert_close(cnnext.ops.adaptive_avg_pool2d(x, (2, 3)), F.adaptive_avg_pool2d(x, (2, 3)))


@pytest.mark.parametrize("device, dtype", FULL_PRECISION + LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0)], ids=_window_id)
def test_max_pool2d_propagates_nan_like_native(window, layout, device, dtype):
    x = torch.randn(2, 3, 8, 8, device=device).to(dtype)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 0] = float("nan")  # two NaNs in one window: native reports the last one
    x[1, 2, 5, 6] = float("nan")
    x[1, 1, 6, 6] = float("-inf")
    x = make_layout(x, layout)
    out, idx = cnnext.ops.max_pool2d(x, *window, return_indices=True)
    out_native, idx_native = F.max_pool2d(x, *window, return_indices=True)
    torch.testing.assert_close(out, out_native, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(idx, idx_native)
    explicit = [pair_of(a) for a in window] + [(1, 1)]
    out_taps, taps = torch.ops.cnnext._max_pool2d_with_taps(x, *explicit, False)
    torch.testing.assert_close(out_taps, out_native, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(taps_to_positions(taps, *explicit, 8), idx_native)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [(9, 8), (8, 6)], ids=["odd", "even"])  # 2x2 windows tile even sizes
@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0)], ids=_window_id)
def test_max_pool2d_ties_and_infinities_like_native(window, size, layout, device):
    """Ties keep the first maximum, windows of -inf their first tap inside the input, and an infinite
    gradient reaches only the argmax (no inf * 0 = NaN in the other taps): values, both argmax
    encodings and gradients against native."""
    x = torch.randint(0, 3, (2, 3, *size), device=device).double()  # many ties
    x[0, 1] = float("-inf")
    x[1, 0, :4] = float("inf")
    x = make_layout(x, layout)
    for return_indices in (True, False):
        x_ours, x_native = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = cnnext.ops.max_pool2d(x_ours, *window, return_indices=return_indices)
        native = F.max_pool2d(x_native, *window, return_indices=return_indices)
        if return_indices:
            assert torch.equal(ours[1], native[1])
            ours, native = ours[0], native[0]
        assert torch.equal(ours, native)
        grad = torch.randn_like(native)
        grad[0, 0, 0, 0] = float("inf")
        (g_ours,) = torch.autograd.grad(ours, x_ours, grad)
        (g_native,) = torch.autograd.grad(native, x_native, grad)
        assert torch.equal(g_ours, g_native)


@pytest.mark.parametrize("device, dtype", LOW_PRECISION)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_matches_native(layout, device, dtype):
    x = make_layout(torch.randn(2, 8, 13, 12, device=device).to(dtype), layout)
    tol = dict(rtol=1e-2, atol=1e-2)
    compare(lambda t: cnnext.ops.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), x, dtype, tol)
    compare(lambda t: cnnext.ops.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1), x, dtype, tol)
    compare(
        lambda t: cnnext.ops.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1), x, dtype, tol
    )


@pytest.mark.parametrize("device, dtype", FULL_PRECISION + LOW_PRECISION)
def test_channels_last_with_whole_channel_blocks_match_native(device, dtype, launched_kernels):
    """channels_last with 16 channels: the CUDA kernels take their vectorised variants (16-byte
    channel blocks per thread: 2 doubles, 4 floats, 8 halves), forward and backward. Max (both
    argmax encodings, NaN and -inf planted, dilation, ceil mode; its gradient summed where our
    argmax points, which equals native's), average (padding excluded, divisor override) and
    adaptive average against native; all 17 channels (not whole blocks) take the per-element
    kernels and must agree too."""
    x = distinct_values((2, 17, 9, 10), torch.float64, device)
    x[0, 3, 2, 2] = x[1, 8, 4, 5] = float("nan")
    x[1, 12, :3, :3] = float("-inf")
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    explicit = [(3, 3), (2, 2), (1, 1), (1, 2)]
    for view in (x[:, :16], x):  # whole 16-byte blocks of channels / 17 channels
        out, idx = cnnext.ops.max_pool2d(view, *explicit, ceil_mode=True, return_indices=True)
        out_native, idx_native = F.max_pool2d(view, *explicit, ceil_mode=True, return_indices=True)
        torch.testing.assert_close(out, out_native, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(idx, idx_native)
        out_taps, taps = torch.ops.cnnext._max_pool2d_with_taps(view, *explicit, True)
        torch.testing.assert_close(out_taps, out_native, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(taps_to_positions(taps, *explicit, view.shape[-1]), idx_native)
        # Backward through both encodings: each output's gradient lands on its argmax.
        grad = torch.randn(out.shape, dtype=torch.float64, device=device).to(dtype)
        n, c, h, w = view.shape
        want = torch.zeros(n * c, h * w, dtype=torch.float64, device=device)
        want.scatter_add_(1, idx_native.reshape(n * c, -1), grad.double().reshape(n * c, -1))
        tol = TOLERANCES.get(dtype, dict(rtol=1e-2, atol=1e-2))
        for encoding, saved in (("positions", idx), ("taps", taps)):
            got = torch.ops.cnnext._max_pool2d_backward(grad, view, saved, *explicit, True)
            got = got.double().reshape(n * c, -1)
            torch.testing.assert_close(got, want, **tol, msg=lambda m, e=encoding: f"{e}: {m}")
        finite = torch.nan_to_num(view, nan=0.0, neginf=0.0)
        averages = [
            (
                lambda t: cnnext.ops.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
                lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
            ),
            (
                lambda t: cnnext.ops.avg_pool2d(t, 2, 1, divisor_override=3),
                lambda t: F.avg_pool2d(t, 2, 1, divisor_override=3),
            ),
            (lambda t: cnnext.ops.adaptive_avg_pool2d(t, (4, 3)), lambda t: F.adaptive_avg_pool2d(t, (4, 3))),
        ]
        tol = TOLERANCES.get(dtype, dict(rtol=1e-2, atol=1e-2))
        for ours, native in averages:
            compare(ours, native, finite, dtype, tol)
    if launched_kernels is not None:  # emulated: the launches name the kernels
        launched = launched_kernels()
        names = {torch.float16: "c10::Half", torch.bfloat16: "c10::BFloat16", torch.float32: "float"}
        name = names.get(dtype, "double")
        for kernel in ("max_forward", "avg_forward", "max_backward", "avg_backward"):
            assert f"{kernel}_vec_kernel<{name}" in launched, kernel
            assert f"{kernel}_kernel<{name}" in launched, kernel  # 17 channels


POOLS = {
    "max": lambda t: cnnext.ops.max_pool2d(t, 3, 2, 1, dilation=(1, 2), ceil_mode=True),
    "max_int64_indices": lambda t: cnnext.ops.max_pool2d(t, 3, 2, 1, dilation=(1, 2), return_indices=True)[0],
    "max_2x2": lambda t: cnnext.ops.max_pool2d(t, 2),
    "avg": lambda t: cnnext.ops.avg_pool2d(t, (3, 2), 2, (1, 0), ceil_mode=True, count_include_pad=False),
    "avg_divisor": lambda t: cnnext.ops.avg_pool2d(t, 2, 1, divisor_override=3),
    "adaptive": lambda t: cnnext.ops.adaptive_avg_pool2d(t, (3, 4)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_gradcheck_float64(pool, layout, device):
    x = make_layout(distinct_values((2, 3, 7, 9), torch.float64, device), layout).requires_grad_()
    assert torch.autograd.gradcheck(POOLS[pool], (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_gradgradcheck_float64(pool, layout, device):
    """Second derivatives (create_graph=True): each backward op has its own derivative (the adjoint
    of the backward applied to the upstream gradient), not PyTorch's silent zero."""
    x = make_layout(distinct_values((2, 3, 7, 9), torch.float64, device), layout).requires_grad_()
    assert torch.autograd.gradgradcheck(POOLS[pool], (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, ops):
    x = distinct_values((2, 3, 7, 9), torch.float64, device).requires_grad_()
    torch.library.opcheck(ops.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 2], True))
    for args in ([3, 3], [2, 2], [1, 1], [1, 2], True), ([2, 2], [2, 2], [0, 0], [1, 1], False):
        torch.library.opcheck(ops._max_pool2d_with_taps.default, (x, *args))
    torch.library.opcheck(ops.avg_pool2d.default, (x, [3, 2], [2, 2], [1, 0], True, False, None))
    torch.library.opcheck(ops.avg_pool2d.default, (x, [2, 2], [1, 1], [0, 0], False, True, 3))
    torch.library.opcheck(ops.adaptive_avg_pool2d.default, (x, [3, 4]))


def test_torch_compile_fullgraph_matches_eager():
    def head(x):
        x = cnnext.ops.max_pool2d(x, 3, 2, 1)
        x = cnnext.ops.avg_pool2d(x, 2)
        return cnnext.ops.adaptive_avg_pool2d(x, 1).flatten(1)

    x = torch.randn(4, 8, 16, 16)
    torch.testing.assert_close(torch.compile(head, fullgraph=True)(x), head(x))


@pytest.mark.parametrize("window", [(2, 2, 0), (3, 2, 1)], ids=_window_id)
def test_torch_compile_fullgraph_backward_through_window_taps(window):
    """With a gradient, max pooling saves uint8 window taps: the compiled graph's forward and
    backward match eager's."""

    def loss_of(t):
        return cnnext.ops.max_pool2d(t, *window).square().sum()

    x = distinct_values((2, 4, 9, 8), torch.float32, "cpu")
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager, compiled = loss_of(x_eager), torch.compile(loss_of, fullgraph=True)(x_compiled)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


# --- bad input ------------------------------------------------------------------------------

X = torch.randn(2, 3, 8, 8)
BAD_INPUTS = {
    "max padding beyond half kernel": (
        lambda: cnnext.ops.max_pool2d(X, 2, padding=2),
        RuntimeError,
        r"padding must be at most half of the \(dilated\) kernel size",
    ),
    "avg padding beyond half kernel": (
        lambda: cnnext.ops.avg_pool2d(X, 3, padding=2),
        RuntimeError,
        "padding must be at most half",
    ),
    "max stride 0": (lambda: cnnext.ops.max_pool2d(X, 2, stride=0), RuntimeError, "stride must be >= 1"),
    "avg stride 0": (lambda: cnnext.ops.avg_pool2d(X, 2, stride=0), RuntimeError, "stride must be >= 1"),
    "kernel 0": (lambda: cnnext.ops.max_pool2d(X, 0), RuntimeError, "kernel_size must be >= 1"),
    "dilation 0": (lambda: cnnext.ops.max_pool2d(X, 2, dilation=0), RuntimeError, "dilation must be >= 1"),
    "negative padding": (
        lambda: cnnext.ops.avg_pool2d(X, 2, padding=-1),
        RuntimeError,
        "padding must be >= 0",
    ),
    "max kernel larger than padded input": (
        lambda: cnnext.ops.max_pool2d(X, 9),
        RuntimeError,
        "the output would be empty: input 8x8",
    ),
    "avg kernel larger than input": (
        lambda: cnnext.ops.avg_pool2d(torch.randn(1, 1, 3, 8), (4, 2)),
        RuntimeError,
        "would be empty",
    ),
    "dilated kernel larger than input": (
        lambda: cnnext.ops.max_pool2d(X, 3, dilation=4),
        RuntimeError,
        "would be empty",
    ),
    "adaptive output size 0": (
        lambda: cnnext.ops.adaptive_avg_pool2d(X, 0),
        RuntimeError,
        "output_size must be >= 1",
    ),
    "adaptive negative output": (
        lambda: cnnext.ops.adaptive_avg_pool2d(X, (2, -1)),
        RuntimeError,
        "output_size must be >= 1",
    ),
    "input 2-D": (lambda: cnnext.ops.max_pool2d(torch.randn(8, 8), 2), RuntimeError, "must be a 4-D"),
    "input 5-D": (
        lambda: cnnext.ops.avg_pool2d(torch.randn(1, 1, 1, 8, 8), 2),
        RuntimeError,
        "must be a 4-D",
    ),
    "zero-size plane": (
        lambda: cnnext.ops.adaptive_avg_pool2d(torch.randn(1, 3, 0, 8), 1),
        RuntimeError,
        "non-zero channels",
    ),
    "integer input max": (
        lambda: cnnext.ops.max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2),
        RuntimeError,
        "input must be a floating-point tensor, got Long",
    ),
    "integer input avg": (
        lambda: cnnext.ops.avg_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int32), 2),
        RuntimeError,
        "floating-point",
    ),
    "divisor 0": (
        lambda: cnnext.ops.avg_pool2d(X, 2, divisor_override=0),
        RuntimeError,
        "divisor_override must be nonzero",
    ),
    "kernel triple": (
        lambda: cnnext.ops.max_pool2d(X, (2, 2, 2)),
        TypeError,
        "kernel_size must be an int or a pair",
    ),
}


@pytest.mark.parametrize("call, error, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_max_pool2d_backward_rejects_out_of_range_indices():
    x = torch.randn(1, 1, 4, 4)
    grad, bad_indices = torch.randn(1, 1, 2, 2), torch.full((1, 1, 2, 2), 16, dtype=torch.long)
    with pytest.raises(RuntimeError, match="index 16 is outside the input plane of 16 elements"):
        torch.ops.cnnext._max_pool2d_backward(grad, x, bad_indices, [2, 2], [2, 2], [0, 0], [1, 1], False)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "window, tap, message",
    [
        ((2, 2, 0), 4, "window tap 4 .*is outside the"),  # the 2x2 tiling paths
        ((3, 2, 1), 9, "window tap 9 of the 3x3 window at .* is outside the kernel"),
        ((3, 2, 1), 0, r"tap 0 of the 3x3 window at \(-1, -1\) is outside the kernel or the 6x6 input"),
    ],
    ids=["2x2-past-kernel", "3x3-past-kernel", "3x3-in-padding"],
)
def test_max_pool2d_backward_rejects_bad_window_taps(window, tap, message, layout):
    """Window taps that forward cannot have written (outside the kernel, or in the padding) are
    reported, not turned into stray writes (CPU; the CUDA gather ignores them)."""
    kernel, stride, padding = window
    x = make_layout(torch.randn(1, 2, 6, 6), layout)  # 2x2 windows tile it
    explicit = [[kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], False]
    out, taps = torch.ops.cnnext._max_pool2d_with_taps(x, *explicit)
    taps = taps.clone()
    taps[0, 1, 0, 0] = tap
    with pytest.raises(RuntimeError, match=message):
        torch.ops.cnnext._max_pool2d_backward(torch.ones_like(out), x, taps, *explicit)


def test_window_taps_limited_to_uint8():
    x = torch.randn(1, 1, 20, 20, requires_grad=True)
    big = ([17, 16], [1, 1], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="window taps name at most 256 taps, the kernel 17x16 has 272"):
        torch.ops.cnnext._max_pool2d_with_taps(x, *big)
    taps = torch.zeros(1, 1, 4, 5, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="uint8 window taps name at most 256 taps"):
        torch.ops.cnnext._max_pool2d_backward(torch.ones(1, 1, 4, 5), x, taps, *big)
    with pytest.raises(RuntimeError, match="must be int64 plane positions or uint8 window taps, got Int"):
        torch.ops.cnnext._max_pool2d_backward(torch.ones(1, 1, 4, 5), x, taps.int(), *big)
    # A window too large for uint8 taps: autograd saves int64 indices instead; the gradient is native's.
    kernel = big[0]
    ours, native = (lambda t: cnnext.ops.max_pool2d(t, kernel)), (lambda t: F.max_pool2d(t, kernel))
    compare(ours, native, x.detach(), torch.float32)


def test_baseline_isa_loops_match_native():
    """The CPU loops are built twice (baseline x86-64 and AVX2) and AVX2 machines only ever run the
    AVX2 build; run a representative set on the baseline build in a fresh process."""
    script = """
import torch, torch.nn.functional as F, cnnext
from tests.conftest import distinct_values, make_layout
from tests.test_pool2d import compare
CASES = [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("max_pool2d", dict(kernel_size=2, dilation=2, ceil_mode=True)),
    ("max_pool2d", dict(kernel_size=2)),
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 4))),
    ("adaptive_avg_pool2d", dict(output_size=1)),
]
for layout in ["contiguous", "channels_last"]:
    x = make_layout(distinct_values((2, 5, 11, 10), torch.float64, "cpu"), layout)
    for name, kwargs in CASES:
        ours, native = getattr(cnnext.ops, name), getattr(F, name)
        compare(lambda t: ours(t, **kwargs), lambda t: native(t, **kwargs), x, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(cnnext.ops.max_pool2d(x.float(), 2), F.max_pool2d(x.float(), 2))
print("ok")
"""
    run_with_cpu_isa(script)
