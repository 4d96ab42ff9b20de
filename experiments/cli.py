"""python -m experiments <study> [options]: run a study and write its report.

    python -m experiments --help
    python -m experiments fc-vs-cnn --dataset mnist --preset quick
    python -m experiments fc-vs-cnn --dataset cifar10 --preset full --device cuda --seeds 3

Results go to OUT/<study>/<run-id>/ (OUT: --out, default ./results). The run id is
<dataset>-<preset>-<backend>-<device>-<hash of the resolved configuration>, so the same command
finds the same folder: rerunning it after an interruption resumes (finished runs are kept, the
run in progress continues from its last epoch), and rerunning it with more --seeds adds seeds.
"""

import argparse
import dataclasses
import platform
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import cnnext
from cnnext import data

from .report import diverged_runs, write_report
from .runner import RunFilesDamaged, git_commit, load_split, run_all, write_json
from .spec import fingerprint
from .studies import STUDIES
from .studies.base import DATASETS


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 and negatives are rejected, never read as "unset")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Train model families on native and cnnext kernels and write reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data: --data-dir or $CNNEXT_DATA (see cnnext/data.py for the layouts). Exit status: 0 "
        "done, 2 a study could not run (e.g. missing data), 3 done but some run diverged (its loss "
        "stopped being finite; the reports leave it out and say so), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY", title="studies")
    every = SimpleNamespace(
        name="all",
        help="every study above, then one combined REPORT.md (results/all/...)",
        question="Run every study on one dataset and write one combined report: Task 1 (FC vs CNN vs "
        "ResNet), Task 2 (kernel size, depth), Task 3 (custom layers, residual blocks), conclusion.",
        presets={"quick": None, "full": None},
    )
    for study in [*STUDIES.values(), every]:
        p = sub.add_parser(study.name, help=study.help, description=study.question)
        p.add_argument(
            "--dataset",
            choices=DATASETS,
            default="mnist",
            help="'synthetic' is a learnable toy set for smoke tests (default: mnist)",
        )
        p.add_argument(
            "--preset",
            choices=list(study.presets),
            default="quick",
            help="quick: minutes on a 2-core CPU; full: the literature's budget, for a GPU",
        )
        p.add_argument(
            "--backend",
            choices=["cnnext", "native"],
            default="cnnext",
            help="convolution / pooling / attention from cnnext or from torch (default: cnnext)",
        )
        p.add_argument(
            "--seeds", type=_positive_int, help="seeds per model, 0..N-1 (default: the preset's, 1 or 2)"
        )
        p.add_argument(
            "--device",
            default="cuda" if torch.cuda.is_available() else "cpu",
            help="cpu or cuda (default: cuda when visible)",
        )
        p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
        p.add_argument("--data-dir", default=None, help="dataset root (default: $CNNEXT_DATA, else ./data)")
        p.add_argument("--download", action="store_true", help="download missing datasets (needs internet)")
        p.add_argument(
            "--deterministic",
            action="store_true",
            help="deterministic kernels only (torch.use_deterministic_algorithms)",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if study.name == "all":
            p.add_argument(
                "--task1-datasets",
                help="comma-separated datasets of the fc-vs-cnn task (default: --dataset only); the "
                "original study's: mnist,cifar10",
            )
        group = p.add_argument_group("overrides of the preset (they change the run id)")
        group.add_argument("--epochs", type=_positive_int, help="epochs of every model (>= 1)")
        group.add_argument("--train-size", type=_positive_int, help="stratified training subset (>= 1 image)")
        group.add_argument("--test-size", type=_positive_int, help="stratified test subset (>= 1 image)")
        group.add_argument("--batch-size", type=_positive_int, help="(>= 1)")
    return parser


def _apply_overrides(preset, args):
    changes = {
        k: getattr(args, k) for k in ("train_size", "test_size", "batch_size") if getattr(args, k) is not None
    }
    if args.epochs is not None:
        models = tuple(
            dataclasses.replace(m, train=dataclasses.replace(m.train, epochs=args.epochs))
            for m in preset.models
        )
        changes["models"] = models
    return dataclasses.replace(preset, **changes)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


EXIT_DIVERGED = 3  # every report was written, but some run's loss stopped being finite


class StudyFailed(Exception):
    """A study could not run (e.g. its data is missing); the message says why."""


def run_study(study, args, command: str, dataset: str) -> tuple[Path, dict, list[dict]]:
    """Plan, run (or resume) and report one study on `dataset`; returns its folder, config and
    results. Raises StudyFailed for missing data and KeyboardInterrupt when interrupted."""
    args = argparse.Namespace(**{**vars(args), "dataset": dataset})
    device = torch.device(args.device)
    preset = _apply_overrides(study.preset(args.preset, args.dataset), args)
    augment_default = args.dataset in data.DATASETS and data.DATASETS[args.dataset].augment
    seeds = args.seeds if args.seeds is not None else preset.seeds
    specs = study.plan(preset, args.dataset, seeds, augment_default, args.backend)
    run_id = f"{args.dataset}-{args.preset}-{args.backend}-{device.type}-" + fingerprint(
        [s for s in specs if s.seed == 0]  # the seed count is not in the id: more seeds extend a run
    )
    out = args.out / study.name / run_id
    try:
        splits = (
            load_split(args.dataset, True, args.data_dir, preset.train_size, args.download),
            load_split(args.dataset, False, args.data_dir, preset.test_size, args.download),
        )
    except (FileNotFoundError, ValueError) as error:  # missing or damaged dataset files
        raise StudyFailed(str(error)) from error
    config = {
        "study": study.name,
        "dataset": args.dataset,
        "preset": args.preset,
        "backend": args.backend,
        "seeds": seeds,
        "device": str(device),
        "machine": _machine(device),
        "command": command,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "cnnext_build": cnnext.build_info(),
        "train_images": len(splits[0]),
        "test_images": len(splits[1]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "expected": preset.expected,
        "runs": [s.to_dict() for s in specs],
    }
    write_json(out / "config.json", config)
    print(f"{study.name}: {len(specs)} runs -> {out}")
    try:
        results = run_all(specs, out, splits, device, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished runs are kept in {out}; run the same command again to resume",
            file=sys.stderr,
        )
        raise
    print(f"report: {write_report(out, study, config, results)}")
    return out, config, results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here")
    from cnnext.train import CheckpointError, set_seed

    set_seed(0, deterministic=args.deterministic)
    command = "python -m experiments " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.study == "all":  # Task 1 also on CIFAR-10, as in the original study
        task1 = args.task1_datasets.split(",") if args.task1_datasets else [args.dataset]
        unknown = [d for d in task1 if d not in DATASETS]
        if unknown:
            raise SystemExit(f"--task1-datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
        plan = [(STUDIES["fc-vs-cnn"], d) for d in task1]
        plan += [(study, args.dataset) for study in STUDIES.values() if study.name != "fc-vs-cnn"]
    else:
        plan = [(STUDIES[args.study], args.dataset)]
    done = []
    try:
        for study, dataset in plan:
            done.append((study, *run_study(study, args, command, dataset)))
    except (StudyFailed, CheckpointError, RunFilesDamaged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.study == "all":
        from .combined import write_combined_report

        out = (
            args.out / "all" / f"{args.dataset}-{args.preset}-{args.backend}-{torch.device(args.device).type}"
        )
        print(f"combined report: {write_combined_report(out, done, command)}")
    diverged = [r["run"] for *_, results in done for r in diverged_runs(results)]
    if diverged:
        print(
            f"warning: {len(diverged)} run(s) diverged (non-finite loss) and are left out of the "
            f"conclusions: {', '.join(diverged)}",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    return 0
