"""Model registry: build_model(name, backend, **cfg) and list_models()."""

from collections.abc import Callable

import torch

from ..backends import check_backend

__all__ = ["build_model", "list_models", "model_builder", "register"]

_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def register(name: str):
    """Class or function decorator adding a model family under `name`; the builder takes
    `backend=` and the family's own keyword configuration."""

    def add(builder):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def model_builder(name: str) -> Callable[..., torch.nn.Module]:
    """The class or function registered as `name` (its signature lists the family's settings)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _BUILDERS[name]


def build_model(name: str, backend: str = "native", **cfg) -> torch.nn.Module:
    """Build model family `name` on `backend` ("native": torch.nn layers, "cnnext": cnnext's
    convolution, pooling and attention; linear, batch norm and activations stay native)."""
    builder = model_builder(name)
    check_backend(backend)
    return builder(backend=backend, **cfg)
