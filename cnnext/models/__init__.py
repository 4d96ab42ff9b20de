"""Model families built on either backend: build_model(name, backend="native"|"cnnext", **cfg).

Registered families: "mlp" (fc.py), "cnn" (cnn.py), "resnet" and "wrn" (resnet.py). The backend
decides the Conv2d / pooling / attention classes; linear, batch norm and activations stay native,
so the two backends build the same parameters and state_dict keys.
"""

from . import cnn, fc, resnet  # noqa: F401  (registers the families)
from .registry import build_model, list_models, register
from .stats import count_flops, count_parameters

__all__ = ["build_model", "count_flops", "count_parameters", "list_models", "register"]
