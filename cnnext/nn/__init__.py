"""torch.nn-compatible modules on cnnext's kernels. Each takes the constructor arguments of its
torch.nn namesake and keeps the same parameters and state_dict keys, so weights load into either."""

from .conv import Conv2d

__all__ = ["Conv2d"]
