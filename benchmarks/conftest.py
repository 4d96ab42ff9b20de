"""Shared benchmark helpers: the devices to run on, device synchronisation, the machine's measured
peaks (float32 FMA loop on the CPU, float32 GEMM rate, copy rate) and `record`, which files a
case's description in the pytest-benchmark JSON for benchmarks/report.py."""

import contextlib
import functools
import time

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Precisions of the arithmetic-bound ops: float32 everywhere; on CUDA also float32 through TF32
# tensor cores (torch.backends.cudnn.allow_tf32, which native's cuDNN and cnnext's implicit GEMM
# both obey) and the 16-bit types. A case in another precision than float32 is reported under the
# device label "cuda tf32", "cuda float16", ...: its own table, chart panel and geometric mean.
PRECISIONS = {"cpu": ["float32"], "cuda": ["float32", "tf32", "float16", "bfloat16"]}
DEVICE_PRECISIONS = [(device, precision) for device in DEVICES for precision in PRECISIONS[device]]
DTYPES = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@contextlib.contextmanager
def precision_mode(precision: str):
    """TF32 allowed for cuDNN convolutions and cuBLAS matmuls inside, for precision "tf32" only."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# cuDNN (and cnnext's CUDA implicit GEMM) run float32 convolutions on TF32 tensor cores when
# allow_tf32 is on, PyTorch's default: plain float32 cases hold both to full float32, as the GEMM
# peak is; the "tf32" precision turns it on for its cases only (precision_mode).
torch.backends.cudnn.allow_tf32 = False


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@functools.cache
def measured_peak_gflops(device: str, precision: str = "float32") -> float:
    """Matrix-product rate of this machine through torch in `precision` (the practical arithmetic
    peak), measured once per session: the floor of a convolution is its FLOPs over this rate."""
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    with precision_mode(precision):
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
def measured_fma_peak_gflops(device: str) -> float | None:
    """The CPU's float32 multiply-add peak on torch's threads (cnnext.cpu_fma_peak: register-only
    FMA chains at the widest vectors it runs), measured once per session: the yardstick of "of
    peak" for the CPU's arithmetic-bound cases. None on a GPU, where the GEMM rate stands in."""
    if device != "cpu":
        return None
    import cnnext

    return cnnext.cpu_fma_peak(trials=5, trial_seconds=0.1)["gflops"]


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


def record(benchmark, *, op, shape, direction, impl, device, flops=None, bytes=None, precision="float32"):
    """Describe a case for the report: which op, shape, pass ("forward", "forward+backward",
    "training step") and implementation, and the work it must do, FLOPs (arithmetic-bound ops) or
    bytes moved (memory-bound ops), with the device's measured peaks beside it (GEMM rate, FMA
    loop on the CPU, copy rate), so the report can give achieved GFLOP/s or GB/s, their fraction of
    the peak, and the floor time. A precision
    other than float32 labels the device "<device> <precision>" and measures the peak in it."""
    if (flops is None) == (bytes is None):
        raise ValueError("give exactly one of flops and bytes")
    label = device if precision == "float32" else f"{device} {precision}"
    # One pytest-benchmark group per op, pass, shape and device: its tables then set native and
    # cnnext of the same case side by side, and `--benchmark-compare` matches like with like.
    benchmark.group = f"{op} {direction} {shape} {label}"
    benchmark.extra_info.update(
        op=op,
        shape=shape,
        direction=direction,
        impl=impl,
        device=label,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        peak_gflops=measured_peak_gflops(device, precision),
        fma_peak_gflops=measured_fma_peak_gflops(device),
        copy_gbps=measured_copy_gbps(device),
    )
    benchmark.extra_info.update({"flops": flops} if flops is not None else {"bytes": bytes})


def record_cpu_variants(benchmark, step, device):
    """Runs step() once and records which CPU kernel variants it reached (cnnext.cpu_variants_used)
    as extra_info["cpu_variants"], "op: variant" strings, so each case says what it measures."""
    import cnnext

    if device != "cpu":
        return
    with cnnext.cpu_variants_used() as used:
        step()
    benchmark.extra_info["cpu_variants"] = sorted(f"{op}: {variant}" for op, variant in used)


def pytest_benchmark_update_machine_info(config, machine_info):
    """What the report states about each run besides pytest-benchmark's own CPU description."""
    import cnnext

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    machine_info["cnnext"] = {"torch": torch.__version__, "device": gpu, "build": cnnext.build_info()}
