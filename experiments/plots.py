"""The figures of a study report, drawn with matplotlib (Agg: no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cnnext._files import atomic_path  # noqa: E402

__all__ = ["draw_all"]


def _save(fig, path: Path, models) -> Path:
    """Write the figure, titled with what it shows (study, dataset, preset: the models' context)."""
    context = models[0].context if models else ""
    if context:
        fig.suptitle(context, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Title": context} if context else None)
    plt.close(fig)
    return path


def learning_curves(models, path: Path) -> Path:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for m in models:
        epochs = range(1, m.epochs + 1)
        (line,) = loss_ax.plot(epochs, m.curve("train_loss"), marker="o", label=f"{m.label} train")
        loss_ax.plot(
            epochs,
            m.curve("test_loss"),
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{m.label} test",
        )
        acc = [100 * a for a in m.curve("test_accuracy")]
        acc_ax.plot(epochs, acc, marker="o", color=line.get_color(), label=m.label)
        if m.seeds > 1:  # the band of the seeds
            per_seed = [[100 * h["test_accuracy"] for h in r["history"]] for r in m.runs]
            acc_ax.fill_between(
                epochs,
                [min(v) for v in zip(*per_seed, strict=True)],
                [max(v) for v in zip(*per_seed, strict=True)],
                color=line.get_color(),
                alpha=0.2,
            )
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss (mean over seeds)")
    banded = any(m.seeds > 1 for m in models)
    acc_ax.set(
        xlabel="epoch",
        ylabel="test accuracy %",
        title="test accuracy" + (" (band: min-max over seeds)" if banded else f" ({models[0].seeds} seed)"),
    )
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path, models)


def accuracy_vs_parameters(models, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        ax.errorbar(
            m.parameters, m.accuracy, yerr=m.accuracy_std if m.seeds > 1 else None, marker="o", capsize=4
        )
        ax.annotate(m.label, (m.parameters, m.accuracy), textcoords="offset points", xytext=(6, 4))
    ax.set(xscale="log", xlabel="parameters", ylabel="test accuracy %", title="accuracy vs parameters")
    ax.grid(alpha=0.3)
    return _save(fig, path, models)


def confusion_matrices(models, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        counts = m.runs[0]["confusion"]
        rates = [[n / max(sum(row), 1) for n in row] for row in counts]
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        classes = m.runs[0]["classes"]
        ticks = range(len(classes))
        ax.set_xticks(ticks, [c[:5] for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [c[:5] for c in classes], fontsize=7)
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                if i != j and n:
                    ax.text(j, i, n, ha="center", va="center", fontsize=6, color="darkred")
        ax.set(xlabel="predicted", ylabel="true", title=f"{m.label} (seed 0; off-diagonal: counts)")
    return _save(fig, path, models)


def gradient_norms(models, path: Path) -> Path:
    """Per-layer weight-gradient norms, input side on the left: at initialisation (one batch) and
    the root-mean-square over the last epoch's steps. Vanishing gradients show as a slope."""
    fig, (init_ax, last_ax) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for m in models:
        run = m.runs[0]
        weights = [w for w in run["layer_weights"] if w in run["history"][-1]["grad_norms"]]
        (line,) = init_ax.plot([run["grad_norms_init"][w] for w in weights], marker=".", label=m.label)
        last_ax.plot(
            [run["history"][-1]["grad_norms"][w] for w in weights],
            marker=".",
            color=line.get_color(),
            label=m.label,
        )
    init_ax.set(
        title="at initialisation (one batch)",
        xlabel="weight tensor, input -> output",
        ylabel="gradient norm",
        yscale="log",
    )
    last_ax.set(title="last epoch (RMS over steps)", xlabel="weight tensor, input -> output", yscale="log")
    for ax in (init_ax, last_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, models)


def timing(models, path: Path) -> Path:
    fig, (train_ax, infer_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    labels = [m.label for m in models]
    train_ax.bar(labels, [m.epoch_seconds for m in models], color="tab:blue")
    train_ax.set(ylabel="seconds", title="training time per epoch")
    batch = models[0].runs[0]["inference_batch"]
    infer_ax.bar(labels, [m.inference_ms for m in models], color="tab:orange")
    infer_ax.set(ylabel="milliseconds", title=f"inference time per batch of {batch}")
    for ax in (train_ax, infer_ax):
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, models)


def depth_profiles(models, path: Path, depth_of, group_of) -> Path:
    """Per-layer weight-gradient norms against relative position in the network (0: input side,
    1: classifier), one line per depth, one panel per group (e.g. plain / residual) at
    initialisation and after training: vanishing gradients show as lines that fall to the left."""
    groups = list(dict.fromkeys(group_of(m) for m in models))
    fig, axes = plt.subplots(2, len(groups), figsize=(5.5 * len(groups), 7), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    depths = sorted({depth_of(m) for m in models})
    for col, group in enumerate(groups):
        for m in (m for m in models if group_of(m) == group):
            run = m.runs[0]
            weights = [w for w in run["layer_weights"] if w in run["history"][-1]["grad_norms"]]
            x = [i / max(len(weights) - 1, 1) for i in range(len(weights))]
            color = cmap(depths.index(depth_of(m)) / max(len(depths) - 1, 1))
            for row, norms in enumerate((run["grad_norms_init"], run["history"][-1]["grad_norms"])):
                axes[row][col].plot(x, [norms[w] for w in weights], marker=".", color=color, label=m.label)
        for row, when in enumerate(("at initialisation", "last epoch (RMS)")):
            ax = axes[row][col]
            ax.set(
                title=f"{group}: {when}",
                xlabel="relative layer position (0: input)",
                yscale="log",
                ylabel="weight-gradient norm",
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path, models)


def metric_vs(models, path: Path, x_of, group_of, xlabel: str) -> Path:
    """Test accuracy against a numeric property, one line per group: the mean over seeds with
    error bars of one std, cut at 0 and 100 %, and each seed as a faint dot, since a model that
    trains in some seeds and stays at chance in others has a mean that no seed reached."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for group in dict.fromkeys(group_of(m) for m in models):
        members = sorted((m for m in models if group_of(m) == group), key=x_of)
        means = [m.accuracy for m in members]
        below = [min(m.accuracy_std, mean) for m, mean in zip(members, means, strict=True)]
        above = [min(m.accuracy_std, 100 - mean) for m, mean in zip(members, means, strict=True)]
        line = ax.errorbar(
            [x_of(m) for m in members], means, yerr=[below, above], marker="o", capsize=3, label=group
        )
        seeds = [(x_of(m), 100 * r["test_accuracy"]) for m in members for r in m.runs]
        ax.scatter(*zip(*seeds, strict=True), s=12, alpha=0.4, color=line[0].get_color(), zorder=3)
    ax.set_xticks(sorted({x_of(m) for m in models}))
    ax.set(xlabel=xlabel, ylabel="test accuracy %", title=f"accuracy vs {xlabel} (dots: seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, models)


def draw_all(models, folder: Path) -> list[tuple[str, Path]]:
    """Every figure; returns (title, path) pairs in report order."""
    return [
        ("Learning curves", learning_curves(models, folder / "learning_curves.png")),
        ("Accuracy vs parameters", accuracy_vs_parameters(models, folder / "accuracy_vs_parameters.png")),
        ("Confusion matrices", confusion_matrices(models, folder / "confusion_matrices.png")),
        ("Per-layer gradient norms", gradient_norms(models, folder / "gradient_norms.png")),
        ("Time per epoch and per inference batch", timing(models, folder / "timing.png")),
    ]
