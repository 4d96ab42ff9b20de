"""Argument normalisation shared by the functional ops."""

from collections.abc import Sequence


def pair(value, name: str) -> list[int]:
    """An int or a sequence of two ints, as torch.nn.functional accepts, as a list of two ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    if isinstance(value, Sequence) and len(value) == 1 and isinstance(value[0], int):
        return [value[0], value[0]]
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
