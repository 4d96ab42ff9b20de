"""Shared test parametrisation: devices, dtypes per device, poisoning of CUDA memory, and the
emulated twin of every CUDA case.

A CUDA case runs three ways: on a real GPU ("cuda", skipped without one) and twice on the CPU
through the CUDA emulator ("emu_reverse", "emu_random": cnnext.cuda_emulation, the CUDA kernels
compiled for the CPU, under the reverse and the random thread schedule). An emulated case gets
CPU tensors ("cpu" as its device) and the `cuda_emulation` marker; the autouse fixture below then
routes every torch.ops.cnnext call of the test to torch.ops.cnnext_emu. Tests that name an
operator object directly (opcheck) take it from the `ops` fixture.
"""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zlib

import pytest
import torch

import cnnext  # noqa: F401  (registers torch.ops.cnnext)

# torch.compile's on-disk caches are keyed without the cnnext operators' schemas: a graph compiled
# against an older schema is reused and calls the new operator with the old arguments (seen when
# _attention_backward gained arguments). Each test session compiles into a fresh cache directory.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnext-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")

# The emulated twins of a CUDA case: reverse order hides races where a thread reads a higher
# neighbour's slot, forward a lower one's; random catches both (and shuffles blocks).
EMULATED_SCHEDULES = ("reverse", "random")
EMULATED = [f"emu_{schedule}" for schedule in EMULATED_SCHEDULES]


def _device_param(device, *values):
    """pytest.param for `device` ("cpu", "cuda" or "emu_<schedule>"), with `values` after it."""
    suffix = "".join(f"-{str(v).removeprefix('torch.')}" for v in values)
    if device == "cuda":
        return pytest.param(device, *values, id=f"cuda{suffix}", marks=[needs_cuda])
    if device.startswith("emu_"):
        marks = [pytest.mark.cuda_emulation(device.removeprefix("emu_"))]
        return pytest.param("cpu", *values, id=f"{device}{suffix}", marks=marks)
    return pytest.param(device, *values, id=f"{device}{suffix}")


# float32/float64 on every device; float16/bfloat16 on CUDA (real or emulated) only.
FULL_PRECISION = [
    _device_param(d, t) for d in ("cpu", "cuda", *EMULATED) for t in (torch.float32, torch.float64)
]
LOW_PRECISION = [_device_param(d, t) for d in ("cuda", *EMULATED) for t in (torch.float16, torch.bfloat16)]
DEVICES = [_device_param(d) for d in ("cpu", "cuda", *EMULATED)]
# Cases whose inputs are built on the CPU (bad-input tables): the CPU kernels and the emulated CUDA ones.
CPU_AND_EMULATED = [_device_param(d) for d in ("cpu", *EMULATED)]


@pytest.fixture(autouse=True)
def cuda_emulation(request, fresh_seed):
    """For a case marked cuda_emulation(schedule): the emulator with that schedule (seeded per test)
    and every torch.ops.cnnext call routed to torch.ops.cnnext_emu; None otherwise."""
    marker = request.node.get_closest_marker("cuda_emulation")
    if marker is None:
        yield None
        return
    import cnnext.cuda_emulation as emulation

    with emulation.schedule(marker.args[0], seed=fresh_seed), emulation.routed():
        yield emulation


@pytest.fixture
def ops(cuda_emulation):
    """The operator namespace a case exercises: torch.ops.cnnext_emu when emulated, else torch.ops.cnnext."""
    return torch.ops.cnnext_emu if cuda_emulation is not None else torch.ops.cnnext


@pytest.fixture
def launched_kernels(cuda_emulation):
    """For an emulated case: a function returning, as one string, every kernel (with its template
    arguments) this test has launched so far; None on other devices. Tests that assert which
    kernel variant ran use it (the emulator's record is cleared when the fixture starts)."""
    if cuda_emulation is None:
        return None
    torch.ops.cnnext_emu._forget_launched_kernels()
    return lambda: " ".join(torch.ops.cnnext_emu._launched_kernels())


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
def full_float32():
    """float32 in full precision unless a test turns TF32 on. torch.backends.cudnn.allow_tf32 (True
    by PyTorch's default) lets native cuDNN convolutions and cnnext's CUDA implicit GEMM (emulated
    too) multiply float32 as TF32, with a 10-bit mantissa the float32 tolerances are not made for;
    the TF32 tests set it themselves."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


def tf32_reference(x: torch.Tensor) -> torch.Tensor:
    """x rounded to TF32 (11 significant bits), to nearest with ties away from zero (cvt.rna), in
    float64 from frexp: independent of the bit trick the kernels use."""
    mantissa, exponent = torch.frexp(x.double())  # |mantissa| in [0.5, 1)
    scaled = mantissa * 2.0**11
    rounded = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return torch.ldexp(rounded / 2.0**11, exponent)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs per test, reproducible per test id (printed on failure)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    yield seed


def assert_within_sdpa_error(names, ours, sdpa, reference, dtype, context) -> None:
    """Each low-precision result of ours is within twice SDPA's own error on the same inputs (plus
    1% of the reference's largest magnitude), both measured against a float64 reference."""
    for name, got, native, want in zip(names, ours, sdpa, reference, strict=True):
        assert got.dtype == dtype
        err_ours = (got.double() - want).abs().max().item()
        err_sdpa = (native.double() - want).abs().max().item()
        assert err_ours <= 2 * err_sdpa + 1e-2 * want.abs().max().item(), (context, name, err_ours, err_sdpa)


CPU_ISAS = ["baseline", "avx2", "avx512"]  # CNNEXT_CPU_ISA's levels, lowest first


def cpu_isas_below_best() -> list[str]:
    """The CPU loop builds this machine supports other than the one it runs by default: a process
    only ever runs one build, so each of these needs a process of its own (run_with_cpu_isa)."""
    best = cnnext.build_info()["cpu_isa_supported"]
    return CPU_ISAS[: CPU_ISAS.index(best)]


def run_with_cpu_isa(script: str, isa: str = "baseline", env: dict | None = None) -> None:
    """Run `script` in a fresh process whose CPU loops use the `isa` build (CNNEXT_CPU_ISA), with
    `env` added to its environment. The script must print "ok" last."""
    env = {**os.environ, "CNNEXT_CPU_ISA": isa, **(env or {})}
    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout[-1000:]


def make_layout(x, layout):
    """The same values in another memory layout."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor: no layout fits it
        wide = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def distinct_values(shape, dtype, device):
    """A random permutation of distinct values: no ties, so argmax and gradients are unambiguous
    (and finite differences in gradcheck cannot flip a maximum)."""
    values = torch.randperm(int(torch.tensor(shape).prod()), dtype=torch.float64) / 7.0
    return values.reshape(shape).to(dtype=dtype, device=device)
