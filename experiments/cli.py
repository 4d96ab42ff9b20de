"""cnnext-experiments <study> [options] (or python -m experiments): run a study, write its report.

    cnnext-experiments --help
    cnnext-experiments fc-vs-cnn --dataset mnist --preset quick
    cnnext-experiments fc-vs-cnn --dataset cifar10 --preset full --device cuda --seeds 3
    cnnext-experiments fc-vs-cnn --config my-study.yaml --set lr=0.05 --set CNN.width=32
    cnnext-experiments fc-vs-cnn --config results/fc-vs-cnn/<run id>/config.json   # replay

Results go to OUT/<study>/<run-id>/ (OUT: --out, default ./results). The run id is
<dataset>-<preset>-<backend>-<device>-<hash of the resolved configuration>, so the same command
finds the same folder: rerunning it after an interruption resumes (finished runs are kept, the
run in progress continues from its last epoch), and rerunning it with more --seeds adds seeds.
This module only parses arguments: the work is experiments.api's (experiments.run).
"""

import argparse
import os
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

from cnnext.backends import BACKENDS

from . import api, distributed
from .config import ConfigError, parse_assignments
from .runner import RunFilesDamaged
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


def _shard(text: str) -> tuple[int, int]:
    """argparse type: "I/N" with 0 <= I < N, or "N" with I from a job array's environment."""
    import os

    index, sep, count = text.rpartition("/")
    try:
        n = int(count)
        if sep:
            i = int(index)
        elif "SLURM_ARRAY_TASK_ID" in os.environ:
            i = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        elif "JOB_COMPLETION_INDEX" in os.environ:  # a Kubernetes indexed Job
            i = int(os.environ["JOB_COMPLETION_INDEX"])
        else:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give I/N, or N inside a Slurm array or indexed Job (SLURM_ARRAY_TASK_ID, "
                "JOB_COMPLETION_INDEX)"
            )
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: the shard index must be in 0..{n - 1}, got {i}")
    return i, n


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train model families on native and cnnext kernels and write reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data: --data-dir or $CNNEXT_DATA (see cnnext/data.py for the layouts). Configuration "
        "keys: experiments/config.py (or `--set help`). Exit status: 0 done, 2 a study could not run "
        "(a bad option or key, missing data), 3 done but some run diverged (its loss stopped being "
        "finite; the reports leave it out and say so), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY", title="studies")
    every = SimpleNamespace(
        name="all",
        help="every study above, then one combined REPORT.md (results/all/...)",
        question="Run every study on one dataset and write one combined report: Task 1 (FC vs CNN vs "
        "ResNet), Task 2 (kernel size, depth), Task 3 (custom layers, residual blocks), conclusion.",
        presets={"quick": None, "standard": None, "full": None},
    )
    for study in [*STUDIES.values(), every]:
        p = sub.add_parser(study.name, help=study.help, description=study.question)
        # Run keys default to None here: a value given on the command line must be told apart from
        # a default, because it wins over --config while a default does not.
        p.add_argument(
            "--dataset",
            choices=DATASETS,
            help="'synthetic' is a learnable toy set for smoke tests (default: mnist)",
        )
        p.add_argument(
            "--preset",
            choices=list(study.presets),
            help="quick (default): minutes on a 2-core CPU; standard: the whole training set (depth: a 20k "
            "subset), about 1.5 hours per study on a 2-core CPU; full: the literature's budget, for a GPU",
        )
        p.add_argument(
            "--backend",
            choices=BACKENDS,
            help="convolution / pooling / attention from cnnext or from torch (default: cnnext)",
        )
        p.add_argument(
            "--seeds", type=_positive_int, help="seeds per model, 0..N-1 (default: the preset's, 1 or 2)"
        )
        p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when visible)")
        p.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="YAML, TOML or JSON file of configuration keys; a study's recorded config.json replays it",
        )
        p.add_argument(
            "--set",
            dest="assignments",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one key, e.g. lr=0.05, schedule=cosine, CNN.width=32, MLP.hidden=[256,128] "
            "(repeatable; wins over --config)",
        )
        p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: ./results)")
        p.add_argument("--data-dir", default=None, help="dataset root (default: $CNNEXT_DATA, else ./data)")
        p.add_argument("--download", action="store_true", help="download missing datasets (needs internet)")
        p.add_argument(
            "--deterministic",
            action="store_true",
            default=None,
            help="deterministic kernels only (torch.use_deterministic_algorithms)",
        )
        p.add_argument(
            "--fresh", action="store_true", help="delete this study's earlier results and start over"
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines stay)")
        p.add_argument("--quiet", action="store_true", help="no progress bars, epoch lines or summary table")
        p.add_argument(
            "--tensorboard",
            action="store_true",
            help="also write TensorBoard event files (runs/*/tensorboard)",
        )
        scale = p.add_argument_group("running at scale (README: Running at scale)")
        scale.add_argument(
            "--list-runs",
            nargs="?",
            const="text",
            choices=["text", "json"],
            help="print the study's runs with their index and state, train nothing",
        )
        scale.add_argument(
            "--shard",
            type=_shard,
            metavar="I/N",
            help="train the runs whose index is I modulo N; 'N' alone takes I from SLURM_ARRAY_TASK_ID "
            "(minus SLURM_ARRAY_TASK_MIN) or JOB_COMPLETION_INDEX",
        )
        scale.add_argument(
            "--no-report", action="store_true", help="train, but leave the report to a later --report-only"
        )
        scale.add_argument(
            "--report-only",
            action="store_true",
            help="write the report from the finished runs; train nothing",
        )
        scale.add_argument(
            "--sync-bn",
            action="store_true",
            help="under torchrun on GPUs: batch norm over every rank's batch",
        )
        if study.name == "all":
            p.add_argument(
                "--task1-datasets",
                help="comma-separated datasets of the fc-vs-cnn task (default: --dataset only); the "
                "original study's: mnist,cifar10",
            )
            p.add_argument(
                "--studies",
                help="comma-separated studies to run (default: every one), e.g. "
                "fc-vs-cnn,kernel-size,residual-blocks",
            )
        group = p.add_argument_group("shorthands for --set (they change the run id)")
        group.add_argument("--epochs", type=_positive_int, help="epochs of every model (>= 1)")
        group.add_argument("--train-size", type=_positive_int, help="stratified training subset (>= 1 image)")
        group.add_argument("--test-size", type=_positive_int, help="stratified test subset (>= 1 image)")
        group.add_argument("--batch-size", type=_positive_int, help="(>= 1)")
    return parser


EXIT_FAILED = 2  # a study could not run: bad configuration, missing or damaged files
EXIT_DIVERGED = 3  # every report was written, but some run's loss stopped being finite


def _options(args) -> dict:
    """experiments.run's keyword arguments from the parsed command line."""
    overrides = {k: getattr(args, k) for k in ("epochs", "train_size", "test_size", "batch_size")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(parse_assignments(args.assignments))
    return dict(
        preset=args.preset,
        seeds=args.seeds,
        backend=args.backend,
        device=args.device,
        config=args.config,
        deterministic=args.deterministic,
        out=args.out,
        data_dir=args.data_dir,
        download=args.download,
        fresh=args.fresh,
        progress=not args.no_progress,
        quiet=args.quiet,
        tensorboard=args.tensorboard,
        shard=args.shard,
        report=not args.no_report,
        report_only=args.report_only,
        sync_bn=args.sync_bn,
        **overrides,
    )


def main(argv: list[str] | None = None, prog: str = "python -m experiments") -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    args = _parser(prog).parse_args(argv)
    command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else argv)
    from cnnext.train import CheckpointError

    try:
        options = {**_options(args), "command": command}
        if args.list_runs:
            if args.study == "all":
                raise ConfigError("--list-runs: list one study's runs (all runs every study in turn)")
            return _list_runs(args, options)
        if args.study == "all":
            task1 = args.task1_datasets.split(",") if args.task1_datasets else None
            chosen = args.studies.split(",") if args.studies else None
            combined = api.run_every_study(args.dataset or "mnist", task1, studies=chosen, **options)
            if combined.report.exists() and not args.no_report and distributed.current().main:
                print(f"combined report: {combined.report}")
            studies = combined.studies
        else:
            studies = [api.run(args.study, dataset=args.dataset, **options)]
            if studies[0].report.exists() and not args.no_report and distributed.current().main:
                print(f"report: {studies[0].report}")
    except (ConfigError, api.StudyFailed, CheckpointError, RunFilesDamaged) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # experiments.run has said where the finished runs are
        return 130
    finally:
        distributed.shutdown()
    diverged = [r.name for s in studies for r in s.diverged]
    if diverged:
        print(
            f"warning: {len(diverged)} run(s) diverged (non-finite loss) and are left out of the "
            f"conclusions: {', '.join(diverged)}",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    return 0


def _list_runs(args, options: dict) -> int:
    """Print the study's runs: index (what --shard divides), name, state, folder."""
    import json

    keys = {k: v for k, v in options.items() if k not in api._RUN_ONLY}
    planned = api.plan(args.study, dataset=args.dataset, **keys)
    folder = Path(args.out) / planned.study.name / planned.run_id
    runs = []
    for index, spec in enumerate(planned.specs):
        run_folder = folder / "runs" / spec.name  # looked at only: listing changes nothing
        if (run_folder / "result.json").exists():
            state = "finished"
        elif (run_folder / "claim.json").exists():
            state = "claimed"
        else:
            state = "started" if run_folder.exists() else "new"
        runs.append({"index": index, "run": spec.name, "state": state, "folder": str(run_folder)})
    if args.list_runs == "json":
        print(
            json.dumps(
                {"study": planned.study.name, "run_id": planned.run_id, "folder": str(folder), "runs": runs},
                indent=1,
            )
        )
    else:
        print(f"{planned.study.name} {planned.run_id}: {len(runs)} runs in {folder}")
        for r in runs:
            print(f"{r['index']:>4}  {r['run']:<40} {r['state']}")
    return 0


def console_main() -> None:
    """Entry point of the `cnnext-experiments` console script."""
    sys.exit(main(prog=os.path.basename(sys.argv[0]) or "cnnext-experiments"))
