"""kernel-size: the same CNN with 3x3, 5x5, 7x7 and factorised 1x1+3x3 convolutions at the same
depth and width: does a wider kernel pay for its parameters, FLOPs and time?"""

from dataclasses import replace

from ..report import versus_baseline
from ..spec import ModelSpec, Preset
from .base import Study, sgd

VARIANTS = (
    ("3x3", {"kernel_size": 3}),
    ("5x5", {"kernel_size": 5}),
    ("7x7", {"kernel_size": 7}),
    ("1x1+3x3", {"kernel_size": 3, "factorized": True}),
)


def _preset(name: str, depth: int, width: int, epochs: int, **sizes) -> Preset:
    models = tuple(
        ModelSpec(f"CNN {label}", "cnn", {"depth": depth, "width": width, **config}, sgd(epochs))
        for label, config in VARIANTS
    )
    return Preset(name, models, **sizes)


def quick(dataset: str) -> Preset:
    if dataset == "synthetic":
        return _preset("quick", depth=2, width=4, epochs=1, batch_size=64)
    if dataset == "cifar10":
        return _preset("quick", depth=4, width=16, epochs=4, train_size=5_000, test_size=1_000)
    return _preset("quick", depth=4, width=16, epochs=3, batch_size=64, train_size=10_000, test_size=2_000)


def standard(dataset: str) -> Preset:
    """The whole training set, three seeds, channels_last: about 40 minutes on the 2-core CPU
    (the 7x7 network costs half of it)."""
    if dataset == "synthetic":
        return replace(quick(dataset), name="standard", seeds=2, channels_last=True)
    epochs = 6 if dataset == "cifar10" else 5
    batch = 128 if dataset == "cifar10" else 64
    preset = _preset("standard", depth=4, width=16, epochs=epochs, batch_size=batch)
    measured = {
        "cifar10": "measured on CIFAR-10 (2-core Intel VM, 3 seeds, 32 minutes of training): 3x3 69.15 ± "
        "0.67%, 5x5 73.51 ± 0.61%, 7x7 75.29 ± 0.25%, 1x1+3x3 65.46 ± 0.34%",
        "mnist": "measured on MNIST (2-core Intel VM, 3 seeds, 19 minutes of training): 3x3 99.08 ± 0.07%, "
        "5x5 99.48 ± 0.02%, 7x7 99.54 ± 0.01%, 1x1+3x3 99.04 ± 0.05%",
    }
    return replace(preset, seeds=3, channels_last=True, expected=measured.get(dataset, ""))


def full(dataset: str) -> Preset:
    return _preset("full", depth=9, width=32, epochs=30 if dataset == "cifar10" else 15)


KERNEL_SIZE = Study(
    name="kernel-size",
    help="3x3 vs 5x5 vs 7x7 vs factorised 1x1+3x3 convolutions in the same CNN",
    question=(
        "Do wider convolution kernels (5x5, 7x7) or a factorised 1x1+3x3 pair buy accuracy over "
        "plain 3x3 kernels at the same depth and width, and what do they cost in parameters, "
        "multiply-adds, training and inference time?"
    ),
    presets={"quick": quick, "standard": standard, "full": full},
    sections=lambda models, plots: versus_baseline(models),
)
