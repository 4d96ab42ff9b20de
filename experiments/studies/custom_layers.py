"""custom-layers: the same models on native ops and on cnnext ops (convolution, pooling,
attention): accuracy parity with the same seed, training and inference time, a per-op profile of
a training step, and a CNN with a SelfAttention2d stage against the same CNN without."""

from dataclasses import replace

from cnnext.backends import BACKENDS

from ..spec import ModelSpec, Preset
from .base import Study, sgd


def _pairs(variants, epochs: int) -> tuple[ModelSpec, ...]:
    return tuple(
        ModelSpec(f"{label} ({backend})", family, config, sgd(epochs), backend=backend)
        for label, family, config in variants
        for backend in BACKENDS
    )


def _variants(width: int, resnet_depth: int):
    return (
        ("CNN", "cnn", {"depth": 3, "width": width}),  # conv + max pooling + global average pooling
        ("CNN+attention", "cnn", {"depth": 3, "width": width, "pooling": "avg", "attention_stages": (2,)}),
        (f"ResNet-{resnet_depth}", "resnet", {"depth": resnet_depth}),
    )


def quick(dataset: str) -> Preset:
    if dataset == "synthetic":
        return Preset("quick", _pairs(_variants(4, 8), epochs=1), batch_size=64)
    if dataset == "cifar10":
        return Preset("quick", _pairs(_variants(16, 8), epochs=3), train_size=5_000, test_size=1_000)
    return Preset(
        "quick", _pairs(_variants(16, 8), epochs=2), batch_size=64, train_size=10_000, test_size=2_000
    )


def standard(dataset: str) -> Preset:
    """The whole training set, three seeds, channels_last (both backends): 21 minutes of training
    on MNIST on the 2-core Intel VM."""
    if dataset == "synthetic":
        return replace(quick(dataset), name="standard", seeds=2, channels_last=True)
    epochs = 4 if dataset == "cifar10" else 5
    measured = {
        "mnist": "measured on MNIST (2-core Intel VM, 3 seeds, 21 minutes of training), native / "
        "cnnext: CNN 98.93 ± 0.03% / 98.90 ± 0.04% (cnnext 1.07x native's training speed), "
        "CNN+attention 99.41 ± 0.06% / 99.34 ± 0.02% (1.02x), ResNet-8 99.45 ± 0.03% / 99.45 ± 0.01% "
        "(0.93x)",
    }
    return Preset(
        "standard",
        _pairs(_variants(16, 8), epochs=epochs),
        batch_size=128 if dataset == "cifar10" else 64,
        seeds=3,
        channels_last=True,
        expected=measured.get(dataset, ""),
    )


def full(dataset: str) -> Preset:
    return Preset("full", _pairs(_variants(32, 20), epochs=30 if dataset == "cifar10" else 10))


# torch.library runs a custom op's kernel inside the autograd.Function it generates for the op,
# through a redispatch that the profiler does not record: the forward kernel's time shows as the
# self time of that Function's row, GeneratedBackwardFor_<namespace>_<op>_<overload>, and the
# op's own <namespace>::<op> row keeps only the dispatch. The Function's backward node is the same
# name plus "Backward"; its self time is the Python of the registered backward.
_AUTOGRAD_WRAPPER = "GeneratedBackwardFor_cnnext_"  # the backend's ops live in torch.ops.cnnext


def profiled_op(key: str) -> str:
    """A profile row's op as a reader needs it (markdown): the kernel its time belongs to."""
    if not key.startswith(_AUTOGRAD_WRAPPER):
        return f"`{key}`"
    rest = key[len(_AUTOGRAD_WRAPPER) :]
    node = rest.endswith("Backward")
    op = rest.removesuffix("Backward").rpartition("_")[0]  # less the overload name
    if node:
        return f"`cnnext::{op}` autograd node (Python)"
    return f"`cnnext::{op}` forward kernel"


def _base_label(m) -> str:
    return m.label.rsplit(" (", 1)[0]


def sections(models, plots) -> list[str]:
    from ..report import compare

    by_label = {m.label: m for m in models}
    lines = [
        "### Parity and speed, native vs cnnext (same seeds, same initial weights)",
        "",
        "| model | test accuracy native / cnnext % | largest test-accuracy gap over epochs (points) "
        "| largest train-loss gap (relative) | s / epoch native / cnnext | training speed-up "
        "| inference speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for base in dict.fromkeys(_base_label(m) for m in models):
        native, ours = by_label.get(f"{base} (native)"), by_label.get(f"{base} (cnnext)")
        if not native or not ours:
            continue
        acc_gap = (
            max(
                abs(a - b)
                for a, b in zip(native.curve("test_accuracy"), ours.curve("test_accuracy"), strict=True)
            )
            * 100
        )
        loss_gap = max(
            abs(a - b) / max(abs(a), 1e-12)
            for a, b in zip(native.curve("train_loss"), ours.curve("train_loss"), strict=True)
        )
        lines.append(
            f"| {base} | {native.accuracy:.2f} / {ours.accuracy:.2f} | {acc_gap:.2f} | {loss_gap:.2e} "
            f"| {native.epoch_seconds:.1f} / {ours.epoch_seconds:.1f} "
            f"| {native.epoch_seconds / ours.epoch_seconds:.2f}x "
            f"| {native.inference_ms / ours.inference_ms:.2f}x |"
        )
    lines += [
        "",
        "Speed-up: native time / cnnext time (above 1: cnnext is faster). The two runs of a pair start "
        "from the same weights and see the same batches, so they differ only by floating-point rounding "
        "(other summation orders), which training then amplifies; the gap columns measure how far "
        "apart the curves end up (the test accuracy right after a high-learning-rate epoch is the most "
        "sensitive).",
        "",
    ]
    for backend in BACKENDS:
        plain, attention = by_label.get(f"CNN ({backend})"), by_label.get(f"CNN+attention ({backend})")
        if plain and attention:
            lines.append(
                f"- SelfAttention2d ({backend}): {compare(plain, attention)} "
                f"The attention CNN costs {attention.epoch_seconds / plain.epoch_seconds:.2f}x "
                "the time per epoch."
            )
    lines += ["", "### Where a training step's time goes (torch.profiler, self time per step, seed 0)", ""]
    for m in models:
        profile = m.runs[0].get("profile")
        if not profile:
            continue
        lines += [f"**{m.label}**", "", "| op | ms / step | share | calls / step |", "|---|---:|---:|---:|"]
        lines += [
            f"| {profiled_op(row['op'])} | {row['ms_per_step']:.2f} | {100 * row['share']:.1f}% "
            f"| {row['calls_per_step']:.0f} |"
            for row in profile[:8]
        ]
        lines.append("")
    if any(row["op"].startswith(_AUTOGRAD_WRAPPER) for m in models for row in m.runs[0].get("profile") or ()):
        lines += [
            f"A cnnext op's forward kernel runs inside the autograd function torch.library generates "
            f"for it, and the profiler records its time there (as `{_AUTOGRAD_WRAPPER}<op>_default`, "
            f"named here for the kernel); the op's own `cnnext::<op>` row, when it shows, is the dispatch "
            "alone.",
            "",
        ]
    return lines


CUSTOM_LAYERS = Study(
    name="custom-layers",
    help="the same models on native vs cnnext ops: parity, speed, per-op profile; attention or not",
    question=(
        "Do models built on cnnext's convolution, pooling and attention train like the same models "
        "on native ops (same seed, same curves?), how fast are they, where does a training step's "
        "time go, and does a SelfAttention2d stage help a small CNN?"
    ),
    presets={"quick": quick, "standard": standard, "full": full},
    sections=sections,
    profile=True,
)
