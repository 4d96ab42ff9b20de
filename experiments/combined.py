"""The combined report of `python -m experiments all`: every study's results in the structure of
the original study (Task 1: FC vs CNN vs ResNet; Task 2: kernel size and depth; Task 3: custom
layers and residual blocks), the original study's claims each tested against the numbers
(findings.py), and a conclusion drawn from the numbers, in one REPORT.md whose images point into
the studies' own folders."""

from pathlib import Path

from .findings import findings_section
from .report import (
    ModelSummary,
    compare,
    context_of,
    diverged_runs,
    relative_link,
    setup_line,
    study_body,
    summarize,
    write_markdown,
)

TASKS = (
    ("Task 1: fully-connected vs convolutional vs residual networks", ("fc-vs-cnn",)),
    ("Task 2: CNN design: kernel size and depth", ("kernel-size", "depth")),
    ("Task 3: cnnext's own layers, and residual block designs", ("custom-layers", "residual-blocks")),
)


def _headline(name: str, models: list[ModelSummary], diverged: int) -> str:
    left_out = f" ({diverged} diverged run(s) left out)" if diverged else ""
    ranked = sorted(models, key=lambda m: m.accuracy, reverse=True)
    if not ranked:
        return f"{name}: every run diverged."
    if len(ranked) < 2:
        return f"{name}: {ranked[0].label} {ranked[0].accuracy:.2f}%{left_out}."
    return f"{name}{left_out}: best {compare(ranked[0], ranked[1])}"


def write_combined_report(out: Path, done: list[tuple], command: str) -> Path:
    """done: (study, folder, config, results) per study, in run order."""
    out.mkdir(parents=True, exist_ok=True)
    first_config = done[0][2]
    lines = [
        f"# cnnext studies: {first_config['dataset']} ({first_config['preset']} preset)",
        "",
        f"Command: `{command}`  ",
        setup_line(first_config).split("; training set")[0].rsplit("; ", 1)[0]
        + " (seeds and data sizes per study below).",
        "",
        "Every number below comes from this run's metrics files; every gap is compared with the "
        "seed-to-seed spread, and called inconclusive when it does not exceed it (or untested with "
        "one seed).",
        "",
    ]
    summary = []
    for title, names in TASKS:
        present = [run for name in names for run in done if run[0].name == name]
        if not present:
            continue
        lines += [f"## {title}", ""]
        for study, folder, config, results in present:
            name = study.name
            lines += [
                f"### {name} on {config['dataset']}",
                "",
                study.question,
                "",
                f"{config['train_images']:,} training / {config['test_images']:,} test images, "
                f"{config['seeds']} seed(s); full study report: "
                f"[{name}]({relative_link(folder, out)}/REPORT.md).",
                "",
                *study_body(
                    folder, study, results, level="####", link_base=out, context=context_of(name, config)
                ),
            ]
            summary.append(
                _headline(f"{name} ({config['dataset']})", summarize(results), len(diverged_runs(results)))
            )
    models = {(study.name, config["dataset"]): summarize(results) for study, _, config, results in done}
    lines += findings_section(first_config["dataset"], models)
    lines += ["## Conclusion", "", *[f"- {line}" for line in summary], ""]
    return write_markdown(out / "REPORT.md", lines)
