"""Copy a report and the images it shows into a self-contained folder (e.g. docs/), rewriting the
links; links to files that are not images (the per-study reports, metrics) become plain text.

    python -m experiments.export results/all/mnist-quick-cnnext-cpu docs/quick-mnist
    python -m experiments.export --records results/all/cifar10-standard-cnnext-cpu docs/standard-cifar10

--records also copies the run records of every study the report shows (config.json, and per run
result.json, metrics.jsonl, model.json, grad_norms_init.json; no checkpoints) to
dest/records/<study>/<run-id>/: copied back under a results root, they are finished runs, so the
same command resumes from them and `--report-only` rebuilds the report (a study run over several
sessions, or extended later, starts from what was published).

Exporting again into the same folder replaces what an earlier export put there: picture folders
(dest/<study>/<run-id>/ of a study's name, nothing but .png files) that the new report does not
show are removed, and so are, with --records, the records of study runs it does not show. Anything
else in dest (notes and records kept by hand) is left alone.
"""

import argparse
import re
import shutil
from pathlib import Path

from .studies import STUDIES

# What a run's folder holds besides its checkpoint: enough for --report-only and for resuming.
RUN_RECORDS = ("result.json", "metrics.jsonl", "model.json", "grad_norms_init.json")


def copy_records(study_run: Path, dest: Path) -> None:
    """A study run folder's configuration and its finished runs' records (not their checkpoints)
    to dest/<study>/<run-id>/."""
    target = dest / study_run.parent.name / study_run.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study_run / "config.json", target / "config.json")
    for run in sorted((study_run / "runs").iterdir()):
        if not (run / "result.json").exists():
            continue  # unfinished: its checkpoint, not copied, is what would resume it
        (target / "runs" / run.name).mkdir(parents=True, exist_ok=True)
        for name in RUN_RECORDS:
            if (run / name).exists():
                shutil.copyfile(run / name, target / "runs" / run.name / name)


def _is_picture_folder(folder: Path) -> bool:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return bool(files) and all(p.suffix == ".png" for p in files)


def prune_stale(dest: Path, shown: set[Path], study_runs: set[Path], records: bool) -> list[Path]:
    """Removes what an earlier export left in dest that this one does not show (see the module's
    docstring); returns the removed folders."""
    stale = [
        folder
        for folder in dest.glob("*/*")
        if folder.parent.name in STUDIES
        and folder.is_dir()
        and folder not in shown
        and _is_picture_folder(folder)
    ]
    if records:
        kept = {(run.parent.name, run.name) for run in study_runs}
        stale += [
            folder
            for folder in (dest / "records").glob("*/*")
            if (folder / "config.json").exists() and (folder.parent.name, folder.name) not in kept
        ]
    for folder in stale:
        shutil.rmtree(folder)
    return stale


def export(report: Path, dest: Path, records: bool = False) -> Path:
    source = report.parent
    dest.mkdir(parents=True, exist_ok=True)
    study_runs: set[Path] = set()
    shown: set[Path] = set()  # dest/<study>/<run-id> folders of the pictures written

    def relink(match: re.Match) -> str:
        text, link = match[1], match[2]
        if not link.endswith(".png"):
            return text  # only the report and its pictures travel
        path = (source / link).resolve()
        parts = path.parts
        # <study>/<run-id>/plots/x.png -> <study>/<run-id>/x.png: unique per study and run (the run
        # id names dataset, preset, backend and device), so two datasets of one study never share
        # a picture.
        name = (
            "/".join(parts[-4:-2] + (parts[-1],)) if len(parts) >= 4 and parts[-2] == "plots" else parts[-1]
        )
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / name)
        shown.add((dest / name).parent)
        if parts[-2] == "plots" and (path.parent.parent / "config.json").exists():
            study_runs.add(path.parent.parent)
        return f"[{text}]({name})"

    text = re.sub(r"\[([^\]]*)\]\(([^)]+)\)", relink, report.read_text())
    out = dest / "REPORT.md"
    out.write_text(text)
    if records:
        if (report.parent / "config.json").exists():  # a single study's report
            study_runs.add(report.parent)
        for study_run in sorted(study_runs):
            copy_records(study_run, dest / "records")
    for folder in prune_stale(dest, shown, study_runs, records):
        print(f"removed {folder} (from an earlier export; this report does not show it)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", type=Path, help="a study or `all` run folder (with REPORT.md)")
    parser.add_argument("dest", type=Path)
    parser.add_argument(
        "--records",
        action="store_true",
        help="also copy the shown studies' run records (no checkpoints) to DEST/records/<study>/<run-id>/",
    )
    args = parser.parse_args()
    print(export(args.run / "REPORT.md", args.dest, records=args.records))


if __name__ == "__main__":
    main()
