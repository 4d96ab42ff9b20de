"""Shared test parametrisation: devices, dtypes per device, and poisoning of CUDA memory."""

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
