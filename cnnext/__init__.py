"""cnnext: hand-written C++ / CUDA convolution, pooling and attention operators for PyTorch.

Importing cnnext loads the compiled extension ``cnnext._C``, which registers the operators under
``torch.ops.cnnext``; :mod:`cnnext.ops` holds their functional API (with autograd and
``torch.compile`` support) and :mod:`cnnext.nn` the ``torch.nn``-compatible modules.
"""

import contextlib
from collections.abc import Iterator

import torch

try:
    from . import _C
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "cnnext's compiled extension (cnnext._C) could not be loaded. Build it with `make build` "
        "(or `pip install --no-build-isolation -e .`) against the torch you are importing; "
        f"the loader said: {error}"
    ) from error

from . import nn, ops  # noqa: E402  (the operators must be registered first)
from .runs import load_run  # noqa: E402

__version__ = "0.1.0"
__all__ = ["build_info", "cpu_fma_peak", "cpu_variants", "cpu_variants_used", "load_run", "nn", "ops"]


def build_info() -> dict:
    """What this install of cnnext was compiled with, and what it can run here.

    Returns a dict with ``cuda`` (CUDA kernels compiled in), ``cuda_archs`` (the SM architectures
    nvcc compiled them for, e.g. ``"800,900"``), ``cuda_runtime_version`` (CUDA runtime the
    kernels were built against, e.g. 13000), ``torch_version`` (torch the extension was compiled
    against), ``cpu_isa`` (which build of the CPU loops runs: ``"baseline"``, ``"avx2"`` or
    ``"avx512"``, the best this CPU supports unless ``CNNEXT_CPU_ISA`` asks for a lower one),
    ``cpu_isa_supported`` (the best this CPU supports), ``l2_cache_bytes`` (one core's L2 as
    the OS reports it, which sizes the conv2d CPU kernels' blocks; ``CNNEXT_L2_CACHE_BYTES``
    overrides it, e.g. ``1M``), ``huge_page_advice`` (whether large fresh
    CPU gradients are given Linux's transparent huge pages; ``CNNEXT_HUGE_PAGES=0`` turns it
    off), ``torch_runtime_version`` (torch imported now) and ``cuda_available`` (a GPU is visible
    now).
    """
    info = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info


def cpu_fma_peak(isa: str | None = None, trials: int = 5, trial_seconds: float = 0.05) -> dict:
    """This CPU's float32 arithmetic peak, measured: GFLOP/s of chains of independent multiply-adds
    on registers, on every thread torch uses (``torch.get_num_threads()``), best of ``trials`` runs
    of about ``trial_seconds`` each. The yardstick of the benchmark report's "of peak" columns: no
    float32 kernel on these threads can run faster.

    ``isa`` picks the build of the loop (``"baseline"``, ``"avx2"`` or ``"avx512"``, at most
    :func:`build_info`'s ``cpu_isa``; default: that one). Returns a dict with ``gflops``,
    ``threads``, ``isa``, ``vector_floats`` (floats per vector instruction) and ``chains``
    (independent accumulators per thread). Raises ValueError for an unknown or unsupported
    ``isa``, ``trials`` outside [1, 100] or ``trial_seconds`` outside [0.001, 10].
    """
    return dict(_C.fma_peak(isa, trials, trial_seconds))


def cpu_variants() -> list[dict]:
    """The kernel variants the CPU operators choose among, and how often each ran in this process.

    Every CPU op (pooling, conv2d, attention) picks one variant per call from an explicit table:
    the layout, window shape, dtype and CPU decide which (the C++ tables are
    ``csrc/pool2d/cpu/variants.cpp``, ``csrc/conv2d/conv2d_cpu_variants.cpp`` and
    ``csrc/attention/attention_cpu_variants.cpp``). Each entry is a dict with ``op`` (e.g.
    ``"max_pool2d_forward"``), ``variant`` (e.g. ``"nchw_2x2_tiling"``), ``when`` (the condition
    under which it is chosen, in words) and ``calls`` (calls it served since cnnext was imported).
    :func:`cpu_variants_used` tells which variants served a block of code.
    """
    return [
        {"op": op, "variant": name, "when": when, "calls": calls}
        for op, name, when, calls in _C.cpu_variants()
    ]


@contextlib.contextmanager
def cpu_variants_used() -> Iterator[dict]:
    """Which CPU kernel variants served the calls made inside the ``with`` block.

    Yields a dict, filled when the block ends, from ``(op, variant)`` to the number of calls it
    served there (variants not used are absent)::

        with cnnext.cpu_variants_used() as used:
            cnnext.ops.max_pool2d(x, 2)
        # used == {("max_pool2d_forward", "nchw_2x2_tiling"): 1}

    Counts are per process, not per thread: calls from other threads in the meantime count too.
    """

    def counts() -> dict:
        return {(v["op"], v["variant"]): v["calls"] for v in cpu_variants()}

    used: dict = {}
    before = counts()
    try:
        yield used
    finally:
        used.update({key: calls - before[key] for key, calls in counts().items() if calls > before[key]})
