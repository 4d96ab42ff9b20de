"""The Python half of every operator's registration (fake impls and autograd formulas), per op
namespace.

The schemas are defined in C++ (csrc/operator_schemas.h) for ``torch.ops.cnnext`` and, by the CUDA
emulator's test-only extension, for ``torch.ops.cnnext_emu`` too. Each op module declares its
registrations once as a function of the namespace (decorated with :func:`registration`); they run
for ``cnnext`` at import and for any other namespace through :func:`register_namespace`.
"""

from collections.abc import Callable

import torch

NAMESPACE = "cnnext"

_registrations: list[Callable[[str], None]] = []
_registered: set[str] = {NAMESPACE}


def registration(register: Callable[[str], None]) -> Callable[[str], None]:
    """Decorator: ``register(namespace)`` registers fake impls and autograd for one namespace. It
    runs now for ``cnnext`` and later for every namespace passed to :func:`register_namespace`."""
    _registrations.append(register)
    for namespace in sorted(_registered):
        register(namespace)
    return register


def register_namespace(namespace: str) -> None:
    """Give the ops of ``namespace`` (which must define cnnext's schemas) cnnext's fake impls and
    autograd formulas. Idempotent."""
    if namespace in _registered:
        return
    _registered.add(namespace)
    for register in _registrations:
        register(namespace)


def ops(namespace: str):
    """``torch.ops.<namespace>``."""
    return getattr(torch.ops, namespace)
