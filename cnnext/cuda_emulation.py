"""cnnext's CUDA kernels, run on the CPU by the project's CUDA execution-model emulator.

Importing this module builds (first time, about a minute; later only what changed) and loads a
test-only extension in which every ``.cu`` file of csrc/ is compiled with g++ against
``csrc/cuda_emulation/emulator.h``. It registers every cnnext operator a second time, as
``torch.ops.cnnext_emu.<op>``: the same schemas as ``torch.ops.cnnext.<op>``, on CPU tensors, served
by the CUDA implementations (host code and kernels unchanged), with cnnext's fake impls and
autograd formulas. So::

    import cnnext.cuda_emulation as emu
    out, lse = torch.ops.cnnext_emu.attention(q, k, v, None, False)   # q, k, v on the CPU
    with emu.routed():                   # every torch.ops.cnnext call goes to cnnext_emu instead
        loss = model(x).sum()            # a cnnext model: forward and backward on the CUDA kernels
        loss.backward()

Each CUDA thread is a fiber; between barriers a block's threads run in the order of the schedule
(``forward``, ``reverse`` or ``random``; :func:`set_schedule`, or CNNEXT_EMU_SCHEDULE and
CNNEXT_EMU_SEED), and launches are checked as the driver checks them. The emulator cannot see
performance, the GPU's weak memory model, register or local-memory limits, or races between
blocks (README, "Testing the CUDA code without a GPU").

Environment: CNNEXT_EMU_SANITIZER=thread|address selects a ThreadSanitizer / AddressSanitizer
build (the process must have libtsan / libasan preloaded: tests/test_cuda_emulation.py shows how);
CNNEXT_EMU_SOURCES and CNNEXT_EMU_BUILD_DIR build from another copy of csrc/ into another folder
(benchmarks/barrier_removal.py uses them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cnnext  # noqa: F401  (registers torch.ops.cnnext, whose Python registrations we reuse)

from .ops._library import register_namespace

__all__ = [
    "NAMESPACE",
    "SCHEDULES",
    "build_directory",
    "get_schedule",
    "routed",
    "schedule",
    "set_multiprocessor_count",
    "set_schedule",
]

NAMESPACE = "cnnext_emu"
SCHEDULES = ("forward", "reverse", "random")

_REPO = pathlib.Path(__file__).resolve().parent.parent
_SANITIZERS = {
    "": dict(cflags=["-O2", "-g0"], ldflags=[]),
    "thread": dict(
        cflags=["-O1", "-g1", "-fsanitize=thread", "-DCNNEXT_EMU_TSAN"], ldflags=["-fsanitize=thread"]
    ),
    "address": dict(
        cflags=["-O1", "-g1", "-fsanitize=address", "-fno-omit-frame-pointer"], ldflags=["-fsanitize=address"]
    ),
}


def _sources_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CNNEXT_EMU_SOURCES") or _REPO / "csrc").resolve()


def _sanitizer() -> str:
    name = os.environ.get("CNNEXT_EMU_SANITIZER", "")
    if name not in _SANITIZERS:
        raise ValueError(f"CNNEXT_EMU_SANITIZER must be one of 'thread', 'address' or empty, got {name!r}")
    return name


def build_directory() -> pathlib.Path:
    """Where the emulated extension is built: ``<root>/<variant>``, the root being
    CNNEXT_EMU_BUILD_DIR or ``build/cuda_emulation`` in the checkout, the variant ``plain``,
    ``thread`` or ``address``."""
    root = os.environ.get("CNNEXT_EMU_BUILD_DIR") or _REPO / "build" / "cuda_emulation"
    return pathlib.Path(root).resolve() / (_sanitizer() or "plain")


def _load() -> None:
    # Importing cpp_extension warns that no CUDA runtime is found; the emulator needs none.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)

    csrc = _sources_root()
    if not (csrc / "cuda_emulation" / "emulator.h").is_file():
        raise ImportError(
            f"cnnext.cuda_emulation needs cnnext's C++/CUDA sources (looked in {csrc}); it is a test tool "
            "for a source checkout, not part of an installed wheel"
        )
    sources = sorted(str(p) for p in (csrc / "cuda_emulation").glob("*.cpp"))
    # The host-side code the .cu files call (argument checks, geometry), compiled in again here.
    sources += sorted(str(p) for p in csrc.glob("*/*_geometry.cpp"))
    flags = _SANITIZERS[_sanitizer()]
    build = build_directory()
    build.mkdir(parents=True, exist_ok=True)
    name = "cnnext_cuda_emulation_" + (_sanitizer() or "plain")
    if not (build / f"{name}.so").exists():
        print(
            f"cnnext.cuda_emulation: building the emulated CUDA kernels in {build} (first use)",
            file=sys.stderr,
        )
    # A sanitizer pass runs with the sanitizer's runtime preloaded; the compiler must not inherit it.
    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        _build_and_load(cpp_extension, name, sources, csrc, flags, build)
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload
    register_namespace(NAMESPACE)


def _build_and_load(cpp_extension, name, sources, csrc, flags, build) -> None:
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_include_paths=[str(csrc)],
        # Hidden symbols: the emulated kernels share names with cnnext._C's and must never bind to them.
        extra_cflags=[
            *flags["cflags"],
            "-fvisibility=hidden",
            "-DCNNEXT_CUDA_EMULATION",
            "-DCNNEXT_WITH_CUDA",
        ],
        extra_ldflags=flags["ldflags"],
        build_directory=str(build),
        is_python_module=False,
        verbose=os.environ.get("CNNEXT_EMU_VERBOSE_BUILD") == "1",
    )


def set_schedule(name: str, seed: int = 0) -> None:
    """Order in which a block's ready threads run between barriers: ``forward`` (thread 0 first),
    ``reverse`` or ``random`` (a fresh permutation each time, blocks shuffled too, from ``seed``)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    torch.ops.cnnext_emu._set_schedule(name, seed)


def get_schedule() -> str:
    """The schedule now in force."""
    return torch.ops.cnnext_emu._get_schedule()


@contextlib.contextmanager
def schedule(name: str, seed: int = 0):
    """:func:`set_schedule` for the duration of a ``with`` block."""
    previous = get_schedule()
    set_schedule(name, seed)
    try:
        yield
    finally:
        set_schedule(previous)


def set_multiprocessor_count(count: int) -> None:
    """The SM count the kernels are told (they size split-K and grid-stride loops from it)."""
    torch.ops.cnnext_emu._set_multiprocessor_count(count)


class _Route(TorchDispatchMode):
    """Sends every torch.ops.cnnext call to the op of the same name in torch.ops.cnnext_emu."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "cnnext":
            packet = getattr(torch.ops.cnnext_emu, func._schema.name.split("::", 1)[1])
            func = getattr(packet, func._overloadname)
        return func(*args, **kwargs)


@contextlib.contextmanager
def routed():
    """Within the block, cnnext's operators (cnnext.ops, cnnext.nn, models) run on the emulated
    CUDA kernels: calls to torch.ops.cnnext go to torch.ops.cnnext_emu, on CPU tensors."""
    with _Route():
        yield


_load()
