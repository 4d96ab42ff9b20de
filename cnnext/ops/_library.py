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


def check_same_device(op: str, **tensors) -> None:
    """In a fake impl: every tensor argument on the first one's device (the kernels' own check). A
    meta tensor among real ones dispatches to the fake impl, which would otherwise allocate a
    result on the real device and return it uninitialised."""
    (first_name, first), *rest = [(n, t) for n, t in tensors.items() if t is not None]
    for name, t in rest:
        torch._check(
            t.device == first.device,
            lambda n=name, t=t: (
                f"{op}: expected {n} to be on the device of {first_name} ({first.device}), got {t.device}"
            ),
        )


def ops(namespace: str):
    """``torch.ops.<namespace>``."""
    return getattr(torch.ops, namespace)
