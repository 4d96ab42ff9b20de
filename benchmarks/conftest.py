"""Shared benchmark helpers: device synchronisation and the machine's measured GEMM peak."""

import functools
import time

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@functools.cache
def measured_peak_gflops(device: str, dtype=torch.float32) -> float:
    """Float32 matrix-product rate of this machine through torch (the practical arithmetic peak),
    measured once per session: the floor of a convolution is its FLOPs over this rate."""
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


@functools.cache
def measured_copy_gbps(device: str) -> float:
    """Device memory copy rate (bytes read + written per second, GB/s) into a preallocated buffer,
    measured once per session: the floor of a memory-bound op is its bytes over this rate."""
    numel = (64 << 20) if device == "cpu" else (1 << 30)  # 256 MB / 4 GB of float32: past every cache
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best / 1e9
