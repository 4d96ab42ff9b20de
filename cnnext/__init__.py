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
__all__ = [
    "build_info",
    "cpu_fma_peak",
    "cpu_output_cache",
    "cpu_variants",
    "cpu_variants_used",
    "empty_cpu_output_cache",
    "load_run",
    "nn",
    "ops",
    "set_cpu_output_cache_limit",
]


def build_info() -> dict:
    """What this install of cnnext was compiled with, and what it can run here.

    Returns a dict with ``cuda`` (CUDA kernels compiled in), ``cuda_archs`` (the SM architectures
    nvcc compiled them for, e.g. ``"800,900"``), ``cuda_runtime_version`` (CUDA runtime the
    kernels were built against, e.g. 13000), ``torch_version`` (torch the extension was compiled
    against), ``cpu_isa`` (which build of the CPU loops runs: ``"baseline"``, ``"avx2"`` or
    ``"avx512"``, the best this CPU supports unless ``CNNEXT_CPU_ISA`` asks for a lower one),
    ``cpu_isa_supported`` (the best this CPU supports), ``l2_cache_bytes`` (one core's L2 as
    the OS reports it, which sizes the conv2d CPU kernels' blocks; ``CNNEXT_L2_CACHE_BYTES``
    overrides it, e.g. ``1M``), ``huge_page_advice`` (whether the memory of large CPU outputs
    is given Linux's transparent huge pages; ``CNNEXT_HUGE_PAGES=0`` turns it off),
    ``torch_runtime_version`` (torch imported now) and ``cuda_available`` (a GPU is visible now).
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


def cpu_output_cache() -> dict:
    """What cnnext keeps of the memory of its large CPU outputs.

    The CPU operators take outputs and gradients of 4 MiB or more from blocks that are kept when
    the tensor is freed and handed to the next output of the same size (rounded up to 2 MiB), so
    a training loop stops paying the page faults of fresh memory every step (torch's allocator
    returns such blocks to the OS on free). Returns a dict with ``cached_bytes`` (kept now, not in
    use), ``limit_bytes`` (the most kept; ``CNNEXT_CPU_CACHE_MB`` sets it at start, default
    1024 MiB, 0 keeps none; :func:`set_cpu_output_cache_limit` changes it), ``reused`` and
    ``fresh`` (large outputs served from a kept block / from new memory, since import).
    """
    return dict(_C.cpu_output_cache())


def set_cpu_output_cache_limit(limit_bytes: int) -> None:
    """Keep at most ``limit_bytes`` of freed CPU output memory for reuse (0: keep none); kept
    blocks beyond the new limit are freed now, the least recently freed first."""
    if not isinstance(limit_bytes, int) or isinstance(limit_bytes, bool):
        kind = type(limit_bytes).__name__
        raise TypeError(f"set_cpu_output_cache_limit: limit_bytes must be an int, got {kind}")
    _C.set_cpu_output_cache_limit(limit_bytes)


def empty_cpu_output_cache() -> None:
    """Free every kept block of CPU output memory (tensors in use are not affected)."""
    _C.empty_cpu_output_cache()


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
