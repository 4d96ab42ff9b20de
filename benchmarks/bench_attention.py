"""Attention speed: cnnext vs F.scaled_dot_product_attention vs the naive matmul-softmax-matmul,
forward and forward+backward, L from 64 to 4096 (batch shrinks as L grows to keep runs short).
Each case records its FLOPs (4 * B * H * Lq * Lk * D forward, 2.5x that for backward) so the
report shows GFLOP/s and the floor against the machine's measured GEMM rate. Peak memory: attention_memory.py.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext.ops import reference

from .conftest import DEVICES, record, synchronize

SHAPES = [(32, 4, 64, 32), (32, 4, 256, 32), (4, 4, 1024, 32), (1, 4, 4096, 32)]  # (B, H, L, D)
IMPLEMENTATIONS = {
    "native": F.scaled_dot_product_attention,  # the summary's "native" column: SDPA
    "naive": reference.attention,
    "cnnext": cnnext.ops.attention,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-H{}-L{}-D{}".format(*s) for s in SHAPES])
def test_attention_speed(benchmark, shape, direction, impl, device):
    batch, heads, length, dim = shape
    attend = IMPLEMENTATIONS[impl]
    backward = direction == "forward+backward"
    q, k, v = (
        torch.randn(batch, heads, length, dim, device=device, requires_grad=backward) for _ in range(3)
    )
    grad = torch.randn(batch, heads, length, dim, device=device) if backward else None

    def step():
        out = attend(q, k, v)
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)
        synchronize(device)

    flops = 4 * batch * heads * length * length * dim * (3.5 if backward else 1)
    shape_name = f"B{batch} H{heads} L{length} D{dim}"
    record(
        benchmark,
        op="attention",
        shape=shape_name,
        direction=direction,
        impl=impl,
        device=device,
        flops=flops,
    )
    benchmark.pedantic(step, rounds=10 if device == "cpu" else 30, iterations=1, warmup_rounds=1)
