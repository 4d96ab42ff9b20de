"""cnnext: hand-written C++ / CUDA convolution, pooling and attention operators for PyTorch.

Importing cnnext loads the compiled extension ``cnnext._C``, which registers the operators under
``torch.ops.cnnext``; :mod:`cnnext.ops` holds their functional API (with autograd and
``torch.compile`` support) and :mod:`cnnext.nn` the ``torch.nn``-compatible modules.
"""

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
__all__ = ["build_info", "load_run", "nn", "ops"]


def build_info() -> dict:
    """What this install of cnnext was compiled with, and what it can run here.

    Returns a dict with ``cuda`` (CUDA kernels compiled in), ``cuda_archs`` (the SM architectures
    nvcc compiled them for, e.g. ``"800,900"``), ``cuda_runtime_version`` (CUDA runtime the
    kernels were built against, e.g. 13000), ``torch_version`` (torch the extension was compiled
    against), ``cpu_isa`` (which build of the CPU loops runs: ``"baseline"``, ``"avx2"`` or
    ``"avx512"``, the best this CPU supports unless ``CNNEXT_CPU_ISA`` asks for a lower one),
    ``cpu_isa_supported`` (the best this CPU supports), ``huge_page_advice`` (whether large fresh
    CPU gradients are given Linux's transparent huge pages; ``CNNEXT_HUGE_PAGES=0`` turns it
    off), ``torch_runtime_version`` (torch imported now) and ``cuda_available`` (a GPU is visible
    now).
    """
    info = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info
