"""Pooling speed: cnnext vs native, forward and forward+backward, NCHW and channels_last.

The headline case is the issue's: float32 128x64x32x32, 2x2 window, stride 2. Each case records
the bytes it must move at least (read the input, write the output; for max with a gradient also
the argmax, a byte per output as cnnext saves it (native saves int64, eight); backward: read
grad_output (+ argmax), write grad_input) so the summary can show GB/s and the floor: bytes /
the machine's measured copy rate.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext

from .conftest import DEVICES, record, record_cpu_variants, synchronize

N, C, H, W = 128, 64, 32, 32
CASES = {  # name: (cnnext op, native op, output H x W)
    "max 2x2 s2": (lambda x: cnnext.ops.max_pool2d(x, 2, 2), lambda x: F.max_pool2d(x, 2, 2), 16),
    "max 3x3 s2 p1": (lambda x: cnnext.ops.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), 16),
    "avg 2x2 s2": (lambda x: cnnext.ops.avg_pool2d(x, 2, 2), lambda x: F.avg_pool2d(x, 2, 2), 16),
    "avg 3x3 s2 p1": (lambda x: cnnext.ops.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1), 16),
    "global avg": (lambda x: cnnext.ops.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1), 1),
    # The remaining variants (tests/test_cpu_variants.py checks that these cases reach them all):
    # int64 indices as users ask for them, and adaptive windows other than global.
    "max 3x3 s2 p1 indices": (
        lambda x: cnnext.ops.max_pool2d(x, 3, 2, 1, return_indices=True)[0],
        lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True)[0],
        16,
    ),
    "adaptive avg 5x5": (
        lambda x: cnnext.ops.adaptive_avg_pool2d(x, 5),
        lambda x: F.adaptive_avg_pool2d(x, 5),
        5,
    ),
}


def bytes_moved(case, out_hw, backward):
    element = 4
    inp, out = N * C * H * W * element, N * C * out_hw * out_hw * element
    if case.endswith("indices"):
        indices = 2 * out  # int64 positions, written in forward whether or not backward follows
    else:
        indices = out // 4 if case.startswith("max") and backward else 0  # uint8 window taps
    total = inp + out + indices
    if backward:
        total += out + indices + inp  # read grad_output and indices, write grad_input
    return total


# Every suite names its parameters shape, direction, impl, device (pytest-benchmark's --group-by
# param:NAME and `compare` need the same names across files): a pooling shape is case + layout.
SHAPES = [(case, layout) for case in CASES for layout in ("nchw", "channels_last")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["float32"])  # every suite has the same parameter names
@pytest.mark.parametrize("impl", ["native", "cnnext"])
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{c.replace(' ', '_')}-{layout}" for c, layout in SHAPES])
def test_pool2d_speed(benchmark, shape, direction, impl, device, precision):
    case, layout = shape
    ours, native, out_hw = CASES[case]
    pool = ours if impl == "cnnext" else native
    backward = direction == "forward+backward"
    x = torch.randn(N, C, H, W, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    grad = torch.randn_like(pool(x)) if backward else None

    def step():
        out = pool(x)
        if backward:
            torch.autograd.grad(out, x, grad)
        synchronize(device)

    record(
        benchmark,
        op="pool2d",
        shape=f"{case} {layout}",
        direction=direction,
        impl=impl,
        device=device,
        precision=precision,
        bytes=bytes_moved(case, out_hw, backward),
    )
    if impl == "cnnext":
        record_cpu_variants(benchmark, step, device)
    # Warm-up 20: on this VM the first ~12 CPU backward rounds after a pause (here: the other
    # implementation's case) take ~45 ms instead of 3-4 ms, because the huge pages of the fresh
    # 33.5 MB grad_input come from memory the VM has handed back to its host and that the host
    # must fault in again (measured in one process: 12 calls at 42-75 ms, then 3.2-5.2 ms; see
    # benchmarks/NOTES.md). A training loop reuses that memory every step; its steady state is
    # what these rounds measure.
    benchmark.pedantic(step, rounds=30 if device == "cuda" else 15, iterations=1, warmup_rounds=20)
