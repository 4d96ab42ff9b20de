"""Attention speed: cnnext vs F.scaled_dot_product_attention vs the naive matmul-softmax-matmul,
forward and forward+backward, L from 64 to 4096 (batch shrinks as L grows to keep runs short).
On CUDA also in float16 and bfloat16, where native is SDPA's FlashAttention backend (forced, so a
fallback cannot hide), and on head dims 64 and 128.
Each case records its FLOPs (4 * B * H * Lq * Lk * D forward, 2.5x that for backward) so the
report shows GFLOP/s and the floor against the machine's measured GEMM rate. Peak memory: attention_memory.py.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext.ops import reference

from .conftest import DEVICES, DTYPES, record, synchronize

SHAPES = [(32, 4, 64, 32), (32, 4, 256, 32), (4, 4, 1024, 32), (1, 4, 4096, 32)]  # (B, H, L, D)
CUDA_SHAPES = [(8, 16, 1024, 64), (4, 16, 2048, 128)]  # FlashAttention's usual head dims
# conftest's PRECISIONS without "tf32": the attention kernels have no TF32 path.
ATTENTION_PRECISIONS = {"cpu": ["float32"], "cuda": ["float32", "float16", "bfloat16"]}
CASES = [
    (device, precision, shape)
    for device in DEVICES
    for precision in ATTENTION_PRECISIONS[device]
    for shape in SHAPES + (CUDA_SHAPES if device == "cuda" else [])
]


def sdpa(q, k, v):
    """The summary's "native" column: SDPA; its FlashAttention backend for 16-bit CUDA tensors."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


IMPLEMENTATIONS = {"native": sdpa, "naive": reference.attention, "cnnext": cnnext.ops.attention}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize(
    "device, precision, shape", CASES, ids=["{}-{}-B{}-H{}-L{}-D{}".format(d, p, *s) for d, p, s in CASES]
)
def test_attention_speed(benchmark, shape, precision, direction, impl, device):
    batch, heads, length, dim = shape
    attend = IMPLEMENTATIONS[impl]
    backward = direction == "forward+backward"
    options = dict(device=device, dtype=DTYPES[precision])
    q, k, v = (torch.randn(batch, heads, length, dim, **options, requires_grad=backward) for _ in range(3))
    grad = torch.randn(batch, heads, length, dim, **options) if backward else None

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
        precision=precision,
    )
    benchmark.pedantic(step, rounds=10 if device == "cpu" else 30, iterations=1, warmup_rounds=1)
