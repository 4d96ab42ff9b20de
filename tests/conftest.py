"""Shared test parametrisation: devices, dtypes per device, and poisoning of CUDA memory."""

import os
import pathlib
import subprocess
import sys
import zlib

import pytest
import torch

import cnnext  # noqa: F401  (registers torch.ops.cnnext)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")


def _case(device, dtype):
    marks = [needs_cuda] if device == "cuda" else []
    return pytest.param(device, dtype, id=f"{device}-{str(dtype).removeprefix('torch.')}", marks=marks)


# float32/float64 on every device; float16/bfloat16 on CUDA only.
FULL_PRECISION = [_case(d, t) for d in ("cpu", "cuda") for t in (torch.float32, torch.float64)]
LOW_PRECISION = [_case("cuda", t) for t in (torch.float16, torch.bfloat16)]
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=[needs_cuda])]


@pytest.fixture(autouse=True)
def poison_cuda_memory():
    """Fill the CUDA caching allocator's free blocks with NaN before each test, so an output
    element a kernel forgets to write shows up as NaN instead of as a stale plausible number.
    Both pools are poisoned: tensors up to 1 MB come from the small-block pool, larger ones from
    the large-block pool."""
    if HAS_CUDA:
        nan = float("nan")
        small = [torch.full((1 << 18,), nan, device="cuda") for _ in range(32)]  # 32 x 1 MB
        large = torch.full((64 << 20,), nan, device="cuda")  # 256 MB
        torch.cuda.synchronize()
        del small, large  # the blocks return to the cache, still holding NaN
    yield


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs per test, reproducible per test id (printed on failure)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    yield seed


def run_with_baseline_isa(script: str) -> None:
    """Run `script` in a fresh process whose CPU loops use the baseline (SSE2) build: AVX2 machines
    otherwise only ever run the AVX2 build of the pooling and attention loops. The script must
    print "ok" last."""
    env = {**os.environ, "CNNEXT_CPU_ISA": "baseline"}
    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout[-1000:]
