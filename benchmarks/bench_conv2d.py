"""conv2d speed: cnnext vs native (oneDNN on CPU, cuDNN on CUDA), forward and forward+backward,
on the shapes the models use. Run with `make bench` (CPU) or benchmarks/device_check.sh (GPU);
benchmarks/summarize.py turns the JSON into the ratio table of RESULTS.md.

Each case records its FLOPs and the machine's measured float32 GEMM rate in extra_info, so the
summary can show the floor (FLOPs / peak) beside each time.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext

from .conftest import measured_peak_gflops, synchronize

# (name, batch, in_channels, out_channels, size, kernel, stride): CIFAR-style stems, ResNet stages
# at 32x32 / 16x16 / 8x8, strided downsampling, 1x1 projections and bottlenecks, wide kernels.
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
]
IMPLEMENTATIONS = {"native": F.conv2d, "cnnext": cnnext.ops.conv2d}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def conv_flops(batch, cin, cout, size, kernel, stride):
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return 2 * batch * cout * out * out * cin * kernel * kernel


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0].replace(" ", "_") for s in SHAPES])
def test_conv2d_speed(benchmark, shape, direction, impl, device):
    name, batch, cin, cout, size, kernel, stride = shape
    conv = IMPLEMENTATIONS[impl]
    backward = direction == "forward+backward"
    x = torch.randn(batch, cin, size, size, device=device, requires_grad=backward)
    w = torch.randn(cout, cin, kernel, kernel, device=device, requires_grad=backward)
    b = torch.randn(cout, device=device, requires_grad=backward)
    grad = torch.randn_like(conv(x, w, b, stride=stride, padding=kernel // 2)) if backward else None

    def step():
        out = conv(x, w, b, stride=stride, padding=kernel // 2)
        if backward:
            torch.autograd.grad(out, (x, w, b), grad)
        synchronize(device)  # time the work, not the launch

    flops = conv_flops(batch, cin, cout, size, kernel, stride) * (3 if backward else 1)
    benchmark.extra_info.update(
        shape=name,
        direction=direction,
        impl=impl,
        device=device,
        flops=flops,
        peak_gflops=measured_peak_gflops(device),
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
    )
    rounds = 20 if device == "cuda" else 15
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
