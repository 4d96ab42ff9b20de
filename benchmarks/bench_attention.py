"""Attention speed: cnnext vs F.scaled_dot_product_attention vs the naive matmul-softmax-matmul,
forward and forward+backward, L from 64 to 4096 (batch shrinks as L grows to keep runs short).
On CUDA also in float16 and bfloat16, where native is SDPA's FlashAttention backend (forced, so a
fallback cannot hide), and on head dims 64 and 128.
Each case records its FLOPs (4 * B * H * Lq * Lk * D forward, 2.5x that for backward) so the
report shows GFLOP/s and the floor against the machine's measured peak (CPU: the FMA loop, GPU:
the GEMM rate). Peak memory: attention_memory.py.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext.ops import reference

from .conftest import DEVICES, DTYPES, record, record_cpu_variants, synchronize

# (B, H, L, D). One head of 4096: fewer (batch, head) pairs than threads, where the CPU backward
# splits a head's key tiles over threads (its key_tiles_in_chunks variant).
SHAPES = [(32, 4, 64, 32), (32, 4, 256, 32), (4, 4, 1024, 32), (1, 4, 4096, 32), (1, 1, 4096, 32)]
CUDA_SHAPES = [(8, 16, 1024, 64), (4, 16, 2048, 128)]  # FlashAttention's usual head dims
# conftest's PRECISIONS without "tf32": the attention kernels have no TF32 path.
ATTENTION_PRECISIONS = {"cpu": ["float32"], "cuda": ["float32", "float16", "bfloat16"]}


def sdpa(q, k, v, **kwargs):
    """The summary's "native" column: SDPA; its FlashAttention backend for 16-bit CUDA tensors
    (without a mask, which that backend does not take: SDPA picks its memory-efficient one then)."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and kwargs.get("attn_mask") is None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def naive(q, k, v, attn_mask=None):
    """matmul-softmax-matmul, with the bool mask as an additive bias (no dropout: not run there)."""
    bias = None
    if attn_mask is not None:
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~attn_mask, float("-inf")
        )
    return reference.attention(q, k, v, bias=bias)


IMPLEMENTATIONS = {"native": sdpa, "naive": naive, "cnnext": cnnext.ops.scaled_dot_product_attention}
# SDPA's options, each its own case ("" = plain): a key padding mask (the last eighth of every
# sequence padded out) and dropout on the weights (training).
VARIANTS = {"": {}, "padding mask": {"mask": True}, "dropout 0.1": {"dropout_p": 0.1}}
CASES = [
    (device, precision, (*shape, ""), impl)
    for device in DEVICES
    for precision in ATTENTION_PRECISIONS[device]
    for shape in SHAPES + (CUDA_SHAPES if device == "cuda" else [])
    for impl in IMPLEMENTATIONS
]
# Masks and dropout: two shapes on the CPU, one on CUDA in float16 (the naive reference has no
# dropout).
VARIANT_CASES = {
    "cpu": ("float32", [(32, 4, 256, 32), (4, 4, 1024, 32)]),
    "cuda": ("float16", [(8, 16, 1024, 64)]),
}
CASES += [
    (device, VARIANT_CASES[device][0], (*shape, variant), impl)
    for device in DEVICES
    for shape in VARIANT_CASES[device][1]
    for variant in VARIANTS
    if variant
    for impl in IMPLEMENTATIONS
    if not (impl == "naive" and "dropout_p" in VARIANTS[variant])
]


def _case_id(device, precision, shape, impl):
    *dims, variant = shape
    suffix = "-" + variant.replace(" ", "_") if variant else ""
    return "{}-{}-B{}-H{}-L{}-D{}{}-{}".format(device, precision, *dims, suffix, impl)


# shape: (B, H, L, D, variant); the variant rides in the shape parameter, impl beside it (the naive
# reference has no dropout case): every suite names its parameters alike.
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("device, precision, shape, impl", CASES, ids=[_case_id(*c) for c in CASES])
def test_attention_speed(benchmark, shape, precision, direction, impl, device):
    batch, heads, length, dim, variant = shape
    attend = IMPLEMENTATIONS[impl]
    backward = direction == "forward+backward"
    options = dict(device=device, dtype=DTYPES[precision])
    q, k, v = (torch.randn(batch, heads, length, dim, **options, requires_grad=backward) for _ in range(3))
    grad = torch.randn(batch, heads, length, dim, **options) if backward else None
    kwargs = {}
    if VARIANTS[variant].get("mask"):
        kwargs["attn_mask"] = (torch.arange(length, device=device) < length - length // 8).view(1, 1, 1, -1)
    if "dropout_p" in VARIANTS[variant]:
        kwargs["dropout_p"] = VARIANTS[variant]["dropout_p"]

    def step():
        out = attend(q, k, v, **kwargs)
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)
        synchronize(device)

    flops = 4 * batch * heads * length * length * dim * (3.5 if backward else 1)
    shape_name = f"B{batch} H{heads} L{length} D{dim}" + (f" {variant}" if variant else "")
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
    if impl == "cnnext":
        record_cpu_variants(benchmark, step, device)
    benchmark.pedantic(step, rounds=10 if device == "cpu" else 30, iterations=1, warmup_rounds=1)
