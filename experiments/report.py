"""Summary table, plots and REPORT.md of one study run, from its runs' result.json files only, so
the report can always be rebuilt from what is on disk and its numbers are the metrics' numbers.

Conclusions are generated from the measured numbers: which model won, by how many points, and
whether that gap exceeds the seed-to-seed spread (with one seed the spread is unknown, and the
report says so instead of declaring a winner it cannot back).
"""

import csv
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from cnnext._files import atomic_path

__all__ = ["ModelSummary", "context_of", "diverged_runs", "summarize", "write_report"]


@dataclass
class ModelSummary:
    label: str
    runs: list[dict]
    context: str = ""  # "<study> · <dataset> · <preset> preset": what the plots say they show

    def _values(self, key):
        return [r[key] for r in self.runs]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def accuracy(self) -> float:  # mean final test accuracy over seeds, in percent
        return 100 * statistics.mean(self._values("test_accuracy"))

    @property
    def accuracy_std(self) -> float:  # sample standard deviation over seeds (0 with one seed)
        values = [100 * v for v in self._values("test_accuracy")]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def parameters(self) -> int:
        return self.runs[0]["parameters"]

    @property
    def flops(self) -> int:
        return self.runs[0]["flops"]

    @property
    def epoch_seconds(self) -> float:
        return statistics.mean(self._values("epoch_seconds"))

    @property
    def samples_per_second(self) -> float:
        return statistics.mean(self._values("samples_per_second"))

    @property
    def inference_ms(self) -> float:
        return statistics.mean(self._values("inference_ms"))

    @property
    def epochs(self) -> int:
        return len(self.runs[0]["history"])

    def curve(self, key: str) -> list[float]:
        """Per-epoch mean over seeds of a history field."""
        return [statistics.mean(r["history"][e][key] for r in self.runs) for e in range(self.epochs)]

    @property
    def generalisation_gap(self) -> float:  # final train minus test accuracy, points
        return 100 * (self.curve("train_accuracy")[-1] - self.curve("test_accuracy")[-1])

    @property
    def late_fall(self) -> float:
        """Largest fall (points) of the test accuracy from one epoch to the next over the second
        half of training, mean over seeds; 0 when it only rose. How unsteady training ends, apart
        from how fast it still climbs: the spread of the last epochs' accuracies would count the
        climb, so after a few epochs the slowest learner would read the steadiest."""
        falls = []
        for run in self.runs:
            accuracy = [100 * h["test_accuracy"] for h in run["history"]]
            steps = range(max(1, len(accuracy) // 2), len(accuracy))
            falls.append(max([accuracy[i - 1] - accuracy[i] for i in steps] + [0.0]))
        return statistics.mean(falls)


def summarize(results: list[dict], context: str = "") -> list[ModelSummary]:
    """Results grouped by model label, in the order the study listed the models; diverged runs
    (see diverged_runs) are left out, and a model all of whose runs diverged with them."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        if not result.get("diverged"):
            groups.setdefault(result["spec"]["model"]["label"], []).append(result)
    return [ModelSummary(label, runs, context) for label, runs in groups.items()]


def diverged_runs(results: list[dict]) -> list[dict]:
    """The runs whose training loss stopped being finite (result.json's "diverged")."""
    return [r for r in results if r.get("diverged")]


def diverged_lines(results: list[dict]) -> list[str]:
    """A sentence per diverged run, for the conclusions: they are left out and why."""
    lines = []
    for r in diverged_runs(results):
        d = r["diverged"]
        last = "none" if d["last_finite_loss"] is None else f"{d['last_finite_loss']:.4g}"
        lines.append(
            f"**{r['run']} diverged** in epoch {d['epoch']} (loss not finite; last finite epoch loss: "
            f"{last}) and is left out of every table, plot and comparison above and below."
        )
    return lines


def context_of(study_name: str, config: dict) -> str:
    return f"{study_name} · {config['dataset']} · {config['preset']} preset"


def _pm(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if seeds > 1 else f"{mean:.2f}"


def write_csv(models: list[ModelSummary], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "model",
                "seeds",
                "test_accuracy_mean",
                "test_accuracy_std",
                "parameters",
                "flops",
                "epoch_seconds",
                "samples_per_second",
                "inference_ms_per_batch",
            ]
        )
        for m in models:
            writer.writerow(
                [
                    m.label,
                    m.seeds,
                    f"{m.accuracy:.4f}",
                    f"{m.accuracy_std:.4f}",
                    m.parameters,
                    m.flops,
                    f"{m.epoch_seconds:.3f}",
                    f"{m.samples_per_second:.1f}",
                    f"{m.inference_ms:.3f}",
                ]
            )


def summary_table(models: list[ModelSummary], inference_batch: int) -> str:
    rows = [
        "| model | test accuracy % | seeds | parameters | multiply-adds | s / epoch | samples / s "
        f"| inference ms / {inference_batch} images |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        rows.append(
            f"| {m.label} | {_pm(m.accuracy, m.accuracy_std, m.seeds)} | {m.seeds} | {m.parameters:,} "
            f"| {m.flops / 1e6:.2f} M | {m.epoch_seconds:.1f} | {m.samples_per_second:,.0f} "
            f"| {m.inference_ms:.1f} |"
        )
    return "\n".join(rows)


def compare(first: ModelSummary, second: ModelSummary) -> str:
    """One sentence on the better of two models against the other (a tie keeps the given order):
    the gap in points and whether it beats the spread."""
    a, b = sorted((first, second), key=lambda m: m.accuracy, reverse=True)
    gap = a.accuracy - b.accuracy
    if round(gap, 2) == 0:
        return f"**{a.label}** and **{b.label}** tie at {a.accuracy:.2f}%."
    seeds = min(a.seeds, b.seeds)
    if seeds < 2:
        verdict = (
            "with one seed per model the seed-to-seed spread is unknown, so this gap is not tested "
            "against it (rerun with `--seeds 3` to test it)"
        )
    else:
        spread = a.accuracy_std + b.accuracy_std
        # Welch's t statistic on the seeds' accuracies: a gap of over ~2 standard errors.
        se = math.sqrt(a.accuracy_std**2 / a.seeds + b.accuracy_std**2 / b.seeds)
        if gap > spread and (se == 0 or gap / se > 2):
            verdict = (
                f"larger than the seed-to-seed spread (stds {a.accuracy_std:.2f} and {b.accuracy_std:.2f})"
            )
        else:
            verdict = (
                f"within the seed-to-seed spread (stds {a.accuracy_std:.2f} and {b.accuracy_std:.2f}): "
                "inconclusive"
            )
    scores = f"{a.accuracy:.2f}% vs {b.accuracy:.2f}%"
    return f"**{a.label}** beats **{b.label}** by {gap:.2f} points ({scores}), {verdict}."


def versus_baseline(models: list[ModelSummary]) -> list[str]:
    """A table of every model against the first (the baseline): accuracy difference and cost
    ratios, and one sentence per model on whether the difference beats the spread."""
    base = models[0]
    lines = [
        f"### Against {base.label}",
        "",
        "| model | accuracy − baseline (points) | × parameters | × multiply-adds | × s / epoch "
        "| × inference ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in models[1:]:
        lines.append(
            f"| {m.label} | {m.accuracy - base.accuracy:+.2f} | {m.parameters / base.parameters:.2f} "
            f"| {m.flops / max(base.flops, 1):.2f} | {m.epoch_seconds / base.epoch_seconds:.2f} "
            f"| {m.inference_ms / base.inference_ms:.2f} |"
        )
    lines.append("")
    lines += [f"- {compare(m, base)}" for m in models[1:]]
    return lines + [""]


def conclusions(models: list[ModelSummary]) -> list[str]:
    ranked = sorted(models, key=lambda m: m.accuracy, reverse=True)
    lines = []
    if len(ranked) > 1:
        lines.append(
            "Ranking by mean final test accuracy: "
            + " > ".join(f"{m.label} ({m.accuracy:.2f}%)" for m in ranked)
            + "."
        )
        for better, worse in zip(ranked, ranked[1:], strict=False):
            lines.append(compare(better, worse))
    best, fastest = ranked[0], min(models, key=lambda m: m.epoch_seconds)
    if fastest is not best:
        times = f"{best.epoch_seconds:.1f} s vs {fastest.epoch_seconds:.1f} s"
        lines.append(
            f"Cost of the best: {best.label} takes {best.epoch_seconds / fastest.epoch_seconds:.1f}x the "
            f"training time per epoch of {fastest.label} ({times}) and "
            f"{best.inference_ms / fastest.inference_ms:.1f}x its inference time, with "
            f"{best.parameters / fastest.parameters:.2f}x the parameters and "
            f"{best.flops / max(fastest.flops, 1):.1f}x the multiply-adds."
        )
    smallest = min(models, key=lambda m: m.parameters)
    if smallest is not best:
        lines.append(
            f"Fewest parameters: {smallest.label} ({smallest.parameters:,}), "
            f"{best.accuracy - smallest.accuracy:.2f} points behind {best.label} "
            f"({best.parameters:,} parameters)."
        )
    gaps = ", ".join(f"{m.label} {m.generalisation_gap:+.2f}" for m in models)
    lines.append(
        "Train minus test accuracy in the last epoch (points; train accuracy is the running mean over "
        f"that epoch's batches in training mode, so it reads low after few epochs): {gaps}."
    )
    if all(m.epochs >= 3 for m in models):
        fall = {m.label: m.late_fall for m in models}  # each a pass over every run's history
        falls = ", ".join(f"{label} {value:.2f}" for label, value in fall.items())
        least = min(fall.values())
        steadiest = [label for label, value in fall.items() if value == least]
        verdict = "all alike" if len(steadiest) == len(models) else "steadiest: " + " and ".join(steadiest)
        lines.append(
            "Stability: largest epoch-to-epoch fall of the test accuracy in the second half of "
            f"training (points, mean over seeds; 0: it only rose): {falls}; {verdict}."
        )
    for m in models:
        errors = _hardest_class(m)
        if errors:
            lines.append(f"{m.label}'s most frequent error: {errors}.")
    return lines


def _hardest_class(m: ModelSummary) -> str:
    confusion = m.runs[0]["confusion"]
    classes = m.runs[0]["classes"]
    worst, count = None, 0
    for true, row in enumerate(confusion):
        for predicted, n in enumerate(row):
            if predicted != true and n > count:
                worst, count = (true, predicted), n
    if worst is None:
        return ""
    total = sum(confusion[worst[0]])
    return f"{classes[worst[0]]} taken for {classes[worst[1]]} ({count} of {total} test images, seed 0)"


def study_body(
    out: Path,
    study,
    results: list[dict],
    level: str = "##",
    link_base: Path | None = None,
    context: str = "",
) -> list[str]:
    """The results, conclusions, study details and plots of one study run as markdown, headings at
    `level`; summary.csv and the figures are (re)written under `out`, and image links are made
    relative to `link_base` (default `out`: the study's own REPORT.md). `context` (study, dataset,
    preset) titles every figure. Diverged runs are listed and left out of everything else."""
    from . import plots

    models = summarize(results, context)
    diverged = diverged_lines(results)
    write_csv(models, out / "summary.csv")
    if not models:
        return [
            f"{level} Results",
            "",
            "Every run diverged; nothing to compare.",
            "",
            *[f"- {d}" for d in diverged],
            "",
        ]
    complete = {r["spec"]["model"]["label"] for r in results} == {m.label for m in models}
    figures = plots.draw_all(models, out / "plots")
    # A study's own sections compare its whole model list: only when no model is missing.
    details = study.sections(models, out / "plots") if study.sections and complete else []
    batch = models[0].runs[0]["inference_batch"]
    lines = [
        f"{level} Results",
        "",
        summary_table(models, batch),
        "",
        "Test accuracy: final epoch, mean ± sample std over seeds. Multiply-adds: one forward pass of "
        "one image (convolutions, linear layers). Times: wall clock on the device of the run, training "
        f"epochs including the optimizer step, inference in eval mode on batches of {batch}.",
        "",
        f"{level} Conclusions (generated from the numbers above)",
        "",
        *[f"- {line}" for line in diverged],
        *[f"- {line}" for line in conclusions(models)],
        "",
        *(
            [f"{level} Study details", "", *[line.replace("### ", f"{level}# ") for line in details]]
            if details
            else []
        ),
        f"{level} Plots",
        "",
    ]
    for title, path in figures:
        lines += [f"{level}# {title}", "", f"![{title}]({path.relative_to(out).as_posix()})", ""]
    prefix = relative_link(out, link_base) if link_base else "."
    if prefix != ".":
        lines = [re.sub(r"\]\((plots/[^)]+)\)", lambda m: f"]({prefix}/{m[1]})", line) for line in lines]
    return lines


def relative_link(path: Path, base: Path) -> str:
    """`path` as a markdown link target relative to the folder `base`."""
    return os.path.relpath(path, base).replace(os.sep, "/")


def setup_line(setup: dict) -> str:
    return (
        f"Device: {setup['device']} ({setup['machine']}); torch {setup['torch']}; cnnext commit "
        f"{setup['git_commit']}; {setup['seeds']} seed(s); training set {setup['train_images']:,} images, "
        f"test set {setup['test_images']:,} images."
    )


def write_markdown(path: Path, lines: list[str]) -> Path:
    with atomic_path(path) as tmp:  # readers never see half a report
        tmp.write_text("\n".join(lines))
    return path


def scheduling_lines(results: list[dict]) -> list[str]:
    """What a reader of the timings must know: runs timed while other workers shared their host,
    runs trained data-parallel, runs from several hosts."""
    lines = []
    shared = [r["run"] for r in results if r.get("co_scheduled")]
    if shared:
        lines.append(
            f"**Timings are not comparable**: {', '.join(shared)} trained while other workers ran on "
            "the same host (they shared its cores); compare their speeds only with runs timed alone."
        )
    parallel = sorted({r["ranks"] for r in results if r.get("ranks", 1) > 1})
    if parallel:
        lines.append(f"Some runs trained data-parallel over {', '.join(map(str, parallel))} processes (DDP).")
    hosts = sorted({r["host"] for r in results if r.get("host")})
    if len(hosts) > 1:
        lines.append(
            f"Runs were trained on {len(hosts)} hosts ({', '.join(hosts)}): times compare within a host."
        )
    return [*lines, ""] if lines else []


def write_report(out: Path, study, config: dict, results: list[dict], missing: list[str] = ()) -> Path:
    """summary.csv, the plots and REPORT.md under `out`; returns REPORT.md's path. `missing`: runs
    of the study not finished yet (the report says so and covers the others)."""
    incomplete = (
        [
            f"**Incomplete**: {len(missing)} run(s) of this study are not finished and are not in "
            f"this report: {', '.join(missing)}.",
            "",
        ]
        if missing
        else []
    )
    lines = [
        f"# {study.name}: {config['dataset']} "
        f"({config['preset']} preset, default backend {config['backend']})",
        "",
        study.question,
        "",
        f"Command: `{config['command']}`  ",
        setup_line(config),
        "",
        *incomplete,
        *scheduling_lines(results),
        *study_body(out, study, results, context=context_of(study.name, config)),
        "## Files",
        "",
        "- `config.json`: the resolved configuration of every run, git commit, versions, device.",
        "- `summary.csv`: the table above.",
        "- `runs/<model>-seed<k>/metrics.jsonl`: per-epoch history; `result.json`: final metrics, "
        "confusion matrix, gradient norms at initialisation, the commit that trained it.",
        "",
    ]
    return write_markdown(out / "REPORT.md", lines)
