"""conv2d speed: cnnext vs native (oneDNN on CPU, cuDNN on CUDA), forward and forward+backward,
on the shapes of the models in cnnext.models. Run with `make bench` (CPU) or
benchmarks/device_check.sh (GPU); benchmarks/report.py turns the JSON into RESULTS.md.

Each case records its FLOPs (forward+backward: 3x the forward's, two more products of the same
size), so the report shows GFLOP/s and the floor (FLOPs over the measured peak: the FMA loop on a
CPU, the GEMM rate on a GPU).
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext

from .conftest import DEVICE_PRECISIONS, DTYPES, precision_mode, record, record_cpu_variants, synchronize

# (name, batch, in_channels, out_channels, size, kernel, stride): the CIFAR ResNet's stem, stages at
# 32x32 / 16x16 / 8x8, strided downsampling and 1x1 projections; the bottleneck's 1x1 convolutions;
# the MNIST CNN's three layers; the kernel-size study's 5x5 and 7x7; a ResNet-18 style last stage
# at 4x4, whose rows are too narrow for the direct CPU kernels (the GEMM variants: tests/
# test_cpu_variants.py checks that these shapes reach every CPU variant). Then shapes no kernel was
# tuned on: WRN-16-4's wide stages, channel counts that are not powers of two on small planes, and
# a 64x64 map.
SHAPES = [
    ("stem 3->16 32x32 k3", 64, 3, 16, 32, 3, 1),
    ("16->16 32x32 k3", 64, 16, 16, 32, 3, 1),
    ("32->32 16x16 k3", 64, 32, 32, 16, 3, 1),
    ("64->64 8x8 k3", 64, 64, 64, 8, 3, 1),
    ("16->32 32x32 k3 s2", 64, 16, 32, 32, 3, 2),
    ("16->32 32x32 k1 s2", 64, 16, 32, 32, 1, 2),
    ("32->32 16x16 k1", 64, 32, 32, 16, 1, 1),
    ("16->16 32x32 k5", 64, 16, 16, 32, 5, 1),
    ("16->16 32x32 k7", 64, 16, 16, 32, 7, 1),
    ("64->64 8x8 k3 b128", 128, 64, 64, 8, 3, 1),
    ("MNIST 1->16 28x28 k3", 64, 1, 16, 28, 3, 1),
    ("MNIST 16->32 14x14 k3", 64, 16, 32, 14, 3, 1),
    ("MNIST 32->64 7x7 k3", 64, 32, 64, 7, 3, 1),
    ("128->128 4x4 k3", 64, 128, 128, 4, 3, 1),
    ("WRN 64->64 32x32 k3 b32", 32, 64, 64, 32, 3, 1),
    ("WRN 128->128 16x16 k3 b32", 32, 128, 128, 16, 3, 1),
    ("WRN 256->256 8x8 k3 b32", 32, 256, 256, 8, 3, 1),
    ("48->48 12x12 k3", 64, 48, 48, 12, 3, 1),
    ("96->96 6x6 k3", 64, 96, 96, 6, 3, 1),
    ("24->24 64x64 k3 b16", 16, 24, 24, 64, 3, 1),
]
IMPLEMENTATIONS = {"native": F.conv2d, "cnnext": cnnext.ops.conv2d}


def conv_flops(batch, cin, cout, size, kernel, stride):
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return 2 * batch * cout * out * out * cin * kernel * kernel


# (device, precision, (shape, memory format)): the CPU runs both layouts (native is fastest in
# channels_last there, and a model in channels_last is what a user would compare); on CUDA the
# tensor-core precisions also run channels_last, the layout cuDNN's tensor-core kernels prefer and
# cnnext's cp.async forward takes. channels_last shapes get " NHWC" in the report. The layout rides
# in the shape parameter: every suite names its parameters alike (tests/test_benchmark_report.py).
CASES = [
    (device, precision, (shape, layout))
    for device, precision in DEVICE_PRECISIONS
    for layout in (
        ["contiguous"] if device == "cuda" and precision == "float32" else ["contiguous", "channels_last"]
    )
    for shape in SHAPES
]


def _case_id(device, precision, shape_and_layout):
    shape, layout = shape_and_layout
    return "-".join(
        [device, precision, shape[0].replace(" ", "_")] + (["NHWC"] if layout == "channels_last" else [])
    )


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("device, precision, shape", CASES, ids=[_case_id(*c) for c in CASES])
def test_conv2d_speed(benchmark, shape, direction, impl, device, precision):
    (name, batch, cin, cout, size, kernel, stride), layout = shape
    conv = IMPLEMENTATIONS[impl]
    backward = direction == "forward+backward"
    options = dict(device=device, dtype=DTYPES[precision])
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(batch, cin, size, size, **options).contiguous(memory_format=memory_format)
    x.requires_grad_(backward)
    w = torch.randn(cout, cin, kernel, kernel, **options).contiguous(memory_format=memory_format)
    w.requires_grad_(backward)
    if layout == "channels_last":
        name += " NHWC"
    b = torch.randn(cout, **options, requires_grad=backward)
    grad = torch.randn_like(conv(x, w, b, stride=stride, padding=kernel // 2)) if backward else None

    def step():
        out = conv(x, w, b, stride=stride, padding=kernel // 2)
        if backward:
            torch.autograd.grad(out, (x, w, b), grad)
        synchronize(device)  # time the work, not the launch

    flops = conv_flops(batch, cin, cout, size, kernel, stride) * (3 if backward else 1)
    record(
        benchmark,
        op="conv2d",
        shape=name,
        direction=direction,
        impl=impl,
        device=device,
        flops=flops,
        precision=precision,
    )
    rounds = 20 if device == "cuda" else 15
    with precision_mode(precision):
        if impl == "cnnext":
            record_cpu_variants(benchmark, step, device)
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
