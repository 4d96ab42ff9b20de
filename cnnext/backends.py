"""The implementations a cnnext layer, model or experiment runs on: its own kernels or native torch."""

BACKENDS = ("native", "cnnext")


def check_backend(backend: str, name: str = "backend") -> str:
    """`backend` itself if it is one of BACKENDS, else a ValueError naming the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {BACKENDS}, got {backend!r}")
    return backend
