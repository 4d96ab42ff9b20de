"""residual-blocks: basic vs bottleneck vs wide residual networks at about the same parameter
budget: parameters, multiply-adds, accuracy mean ± std over seeds (stability), throughput."""

from dataclasses import replace

from ..report import versus_baseline
from ..spec import ModelSpec, Preset
from .base import Study, sgd

# Matched budgets (parameters on 1-channel 28x28 input, measured with count_parameters):
# small: ResNet-14 172k, ResNet-20 bottleneck 177k, WRN-16-1 175k
# large: ResNet-20 269k, ResNet-29 bottleneck 270k, WRN-10-2 303k
SMALL = (
    ("ResNet-14 basic", "resnet", {"depth": 14}),
    ("ResNet-20 bottleneck", "resnet", {"depth": 20, "block": "bottleneck"}),
    ("WRN-16-1", "wrn", {"depth": 16, "widen": 1}),
)
LARGE = (
    ("ResNet-20 basic", "resnet", {"depth": 20}),
    ("ResNet-29 bottleneck", "resnet", {"depth": 29, "block": "bottleneck"}),
    ("WRN-10-2", "wrn", {"depth": 10, "widen": 2}),
)


def _preset(name: str, variants, epochs: int, **sizes) -> Preset:
    return Preset(
        name,
        tuple(ModelSpec(label, family, config, sgd(epochs)) for label, family, config in variants),
        **sizes,
    )


def quick(dataset: str) -> Preset:
    if dataset == "synthetic":
        return _preset("quick", SMALL, epochs=1, batch_size=64)
    if dataset == "cifar10":
        return _preset("quick", SMALL, epochs=3, train_size=4_000, test_size=1_000, seeds=2)
    return _preset("quick", SMALL, epochs=2, batch_size=64, train_size=5_000, test_size=2_000, seeds=2)


def standard(dataset: str) -> Preset:
    """The small matched budget on the whole training set, three seeds (the stability claim needs
    them), channels_last: 34 minutes of training on MNIST, 58 on CIFAR-10, on the 2-core Intel VM."""
    if dataset == "synthetic":
        return replace(quick(dataset), name="standard", seeds=3, channels_last=True)
    epochs = 4 if dataset == "cifar10" else 3
    batch = 128 if dataset == "cifar10" else 64
    preset = _preset("standard", SMALL, epochs=epochs, batch_size=batch, seeds=3)
    measured = {
        "cifar10": "measured on CIFAR-10 (2-core Intel VM, 3 seeds, 58 minutes of training): ResNet-14 "
        "basic 75.69 ± 0.05%, ResNet-20 bottleneck 71.25 ± 0.72%, WRN-16-1 74.79 ± 0.51%",
        "mnist": "measured on MNIST (2-core Intel VM, 3 seeds, 34 minutes of training): ResNet-14 basic "
        "99.56 ± 0.03%, ResNet-20 bottleneck 99.43 ± 0.02%, WRN-16-1 99.55 ± 0.02%",
    }
    return replace(preset, channels_last=True, expected=measured.get(dataset, ""))


def full(dataset: str) -> Preset:
    return _preset("full", LARGE, epochs=160 if dataset == "cifar10" else 15, seeds=3)


RESIDUAL_BLOCKS = Study(
    name="residual-blocks",
    help="basic vs bottleneck vs wide residual networks at matched parameter budgets",
    question=(
        "At about the same number of parameters, do bottleneck blocks keep the accuracy of basic "
        "blocks at fewer multiply-adds, does a wide-and-shallow network beat both, and how stable "
        "is each across seeds?"
    ),
    presets={"quick": quick, "standard": standard, "full": full},
    sections=lambda models, plots: versus_baseline(models),
)
