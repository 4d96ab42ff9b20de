"""The experiments as a Python API; the command line (experiments/cli.py) is a thin layer over it.

    import experiments
    study = experiments.run("fc-vs-cnn", dataset="synthetic", epochs=1, lr=0.05, **{"CNN.width": 8})
    study.report                                   # Path of REPORT.md
    [(r.model, r.seed, r.test_accuracy) for r in study.runs]

Keyword overrides take the keys of experiments/config.py (a preset field, a training field for
every model, or "<model>.<field>" for one model); `config=` reads a YAML / TOML / JSON file of the
same keys, or a study's recorded config.json to replay it.
"""

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

import cnnext
from cnnext import data

from . import distributed
from .config import ConfigError, Settings, check_device, load_file, resolve
from .progress import EpochReporter, summary_table
from .report import write_report
from .runner import collect_results, git_commit, load_split, train_runs, write_json
from .spec import Preset, RunSpec, fingerprint
from .studies import STUDIES
from .studies.base import Study

__all__ = [
    "CombinedResult",
    "ConfigError",
    "Plan",
    "RunResult",
    "StudyFailed",
    "StudyResult",
    "diverged",
    "plan",
    "run",
    "run_every_study",
]


class StudyFailed(Exception):
    """A study could not run (e.g. its data is missing); the message says why."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One trained (or diverged) model of a study, read from its result.json."""

    name: str  # run folder name, "<model>-seed<k>"
    model: str  # the model's label in the study
    seed: int
    backend: str
    folder: Path
    test_accuracy: float | None  # None when the run diverged
    diverged: dict | None  # epoch, last_finite_loss, message
    history: list[dict]  # one entry per epoch (losses, accuracies, lr, seconds, gradient norms)
    epoch_seconds: float | None
    samples_per_second: float | None
    inference_ms: float | None
    parameters: int
    result: dict  # the whole result.json

    @classmethod
    def from_result(cls, result: dict, folder: Path) -> "RunResult":
        spec = result["spec"]
        return cls(
            name=result["run"],
            model=spec["model"]["label"],
            seed=spec["seed"],
            backend=result["backend"],
            folder=folder,
            test_accuracy=result.get("test_accuracy"),
            diverged=result.get("diverged"),
            history=result["history"],
            epoch_seconds=result.get("epoch_seconds"),
            samples_per_second=result.get("samples_per_second"),
            inference_ms=result.get("inference_ms"),
            parameters=result["parameters"],
            result=result,
        )


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """A finished study: its folder (results/<study>/<run id>), REPORT.md, the resolved
    configuration (config.json) and every run."""

    study: str
    dataset: str
    run_id: str
    folder: Path
    report: Path
    config: dict
    runs: list[RunResult]  # the finished runs
    missing: list[str] = dataclasses.field(default_factory=list)  # runs not finished (other shards)

    @property
    def diverged(self) -> list[RunResult]:
        return [r for r in self.runs if r.diverged]


@dataclasses.dataclass(frozen=True)
class CombinedResult:
    """`run_every_study`'s studies and the combined REPORT.md."""

    studies: list[StudyResult]
    report: Path


class Plan(NamedTuple):
    study: Study
    settings: Settings  # dataset, preset, backend, seeds, device, deterministic after precedence
    preset: Preset  # the preset with the file's and the overrides' keys applied
    specs: list[RunSpec]  # every (model, seed) run
    run_id: str  # the folder name under out/<study>/


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def _check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "tensorboard: the tensorboard package is not installed (pip install tensorboard, or "
            "cnnext[tensorboard])"
        ) from None


def plan(
    study: str,
    *,
    dataset=None,
    preset=None,
    seeds=None,
    backend=None,
    device=None,
    config=None,
    deterministic=None,
    **overrides,
):
    """What run() would run, every key checked, nothing written: a Plan (study, settings, preset,
    specs, run_id). Takes run()'s configuration arguments."""
    if study not in STUDIES:
        raise ConfigError(f"study: unknown {study!r}; choose from {', '.join(STUDIES)}")
    chosen = STUDIES[study]
    defaults = {
        "dataset": "mnist",
        "preset": "quick",
        "backend": "cnnext",
        "device": _default_device(),
        "deterministic": False,
    }
    explicit = {
        k: v
        for k, v in dict(
            dataset=dataset,
            preset=preset,
            seeds=seeds,
            backend=backend,
            device=device,
            deterministic=deterministic,
        ).items()
        if v is not None
    }
    file = load_file(config) if config is not None else None
    settings, resolved = resolve(chosen, defaults, file, explicit, overrides)
    augment_default = settings.dataset in data.DATASETS and data.DATASETS[settings.dataset].augment
    count = settings.seeds if settings.seeds is not None else resolved.seeds
    specs = chosen.plan(resolved, settings.dataset, count, augment_default, settings.backend)
    device_type = torch.device(settings.device).type
    run_id = f"{settings.dataset}-{settings.preset}-{settings.backend}-{device_type}-" + fingerprint(
        [s for s in specs if s.seed == 0]  # the seed count is not in the id: more seeds extend a run
    )
    return Plan(chosen, settings, resolved, specs, run_id)


def _keep_first_start(path: Path, recorded: dict) -> dict:
    """The record of a study invoked again (resumed, extended by seeds, or run inside `all`): its
    first start and command stay, and this invocation is appended to "resumed", so the report
    says when and how the study began, not when it was last touched."""
    keys = ("started", "command", "git_commit")
    try:
        earlier = json.loads(path.read_text())
        first = {key: earlier[key] for key in keys}
        resumed = list(earlier.get("resumed", []))
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: this is the first
        return recorded
    return {**recorded, **first, "resumed": [*resumed, {key: recorded[key] for key in keys}]}


def run(
    study: str,
    *,
    dataset: str | None = None,
    preset: str | None = None,
    seeds: int | None = None,
    backend: str | None = None,
    device: str | None = None,
    out: str | Path = "results",
    config: str | Path | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    deterministic: bool | None = None,
    fresh: bool = False,
    progress: bool = True,
    quiet: bool = False,
    tensorboard: bool = False,
    shard: tuple[int, int] | None = None,
    report: bool = True,
    report_only: bool = False,
    sync_bn: bool = False,
    command: str | None = None,
    **overrides,
) -> StudyResult:
    """Plan, run (or resume) and report one study; returns its results.

    study: a name of experiments.STUDIES ("fc-vs-cnn", "kernel-size", "depth", "custom-layers",
        "residual-blocks").
    dataset, preset, seeds, backend, device, deterministic: the run keys (defaults: mnist, quick,
        the preset's seeds, cnnext, cuda when visible else cpu, False); they override `config`.
    out: results root; the study's folder is out/<study>/<run id>, the run id derived from the
        resolved configuration, so the same call finds the same folder and resumes it.
    config: a YAML / TOML / JSON file of keys, or a recorded config.json (replays that study).
    data_dir, download: where the dataset is (default $CNNEXT_DATA, else ./data), and whether to
        download it when missing.
    fresh: delete the study's earlier results in its folder first, instead of resuming them.
    progress, quiet: progress bars; quiet also drops the per-epoch lines and the summary table.
    tensorboard: also write TensorBoard event files per run (needs the tensorboard package).
    shard: (i, n): train only the runs whose index (plan order, see --list-runs) is i modulo n;
        the report then covers whatever runs are finished and names the missing ones.
    report: False trains without writing the report (for workers of a sweep).
    report_only: train nothing: write the report from the finished runs, naming the missing ones.
    sync_bn: under torchrun, batch-norm statistics over every rank (SyncBatchNorm; CUDA only).
    overrides: any preset, training or "<model>.<field>" key (see experiments/config.py).

    Raises ConfigError (a bad key or value, a device that is not here) before anything is written,
    StudyFailed when the data is missing or damaged, KeyboardInterrupt when interrupted (finished
    runs and the last finished epoch of the run in progress are kept).
    """
    from cnnext.train import set_seed

    chosen, settings, resolved, specs, run_id = plan(
        study,
        dataset=dataset,
        preset=preset,
        seeds=seeds,
        backend=backend,
        device=device,
        config=config,
        deterministic=deterministic,
        **overrides,
    )
    if tensorboard:
        _check_tensorboard()
    if shard is not None and not (isinstance(shard, tuple) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"shard: expected (i, n) with 0 <= i < n, got {shard!r}")
    torch_device = check_device(settings.device)
    if sync_bn and torch_device.type != "cuda":
        raise ConfigError(
            "sync_bn: SyncBatchNorm runs on CUDA only; on the CPU each rank keeps its own statistics"
        )
    ranks, torch_device = distributed.setup(torch_device)
    if resolved.batch_size % ranks.world_size:
        raise ConfigError(
            f"batch_size: the global batch {resolved.batch_size} does not divide over "
            f"{ranks.world_size} ranks"
        )
    set_seed(0, deterministic=settings.deterministic)
    folder = Path(out) / chosen.name / run_id
    try:
        splits = (
            load_split(settings.dataset, True, data_dir, resolved.train_size, download),
            load_split(settings.dataset, False, data_dir, resolved.test_size, download),
        )
    except (FileNotFoundError, ValueError) as error:  # missing or damaged dataset files
        raise StudyFailed(str(error)) from error
    if fresh and folder.exists() and ranks.main and not report_only:
        shutil.rmtree(folder)
    ranks.barrier()
    recorded = {
        "study": chosen.name,
        "dataset": settings.dataset,
        "preset": settings.preset,
        "backend": settings.backend,
        "seeds": max(s.seed for s in specs) + 1,
        "device": settings.device,
        "deterministic": settings.deterministic,
        "overrides": overrides,
        "machine": _machine(torch_device),
        "command": command or f"experiments.run({chosen.name!r}, ...)",
        "git_commit": git_commit(),
        "cnnext_version": cnnext.__version__,
        "torch": torch.__version__,
        "cnnext_build": cnnext.build_info(),
        "train_images": len(splits[0]),
        "test_images": len(splits[1]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "expected": resolved.expected,
        "runs": [s.to_dict() for s in specs],
        "ranks": ranks.world_size,
        "sync_bn": sync_bn,
    }
    mine = specs if shard is None else [s for i, s in enumerate(specs) if i % shard[1] == shard[0]]
    if ranks.main and not report_only:
        write_json(folder / "config.json", _keep_first_start(folder / "config.json", recorded))
    show = not quiet and ranks.main
    if show:
        share = "" if shard is None else f" (shard {shard[0]}/{shard[1]}: {len(mine)} of them)"
        print(f"{chosen.name}: {len(specs)} runs{share} -> {folder}")
    reporter = EpochReporter(show=show, tensorboard=tensorboard)
    try:
        if not report_only:
            train_runs(
                mine,
                folder,
                splits,
                torch_device,
                progress and show,
                reporter,
                ranks=ranks,
                sync_bn=sync_bn,
                announce=show,
            )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished runs are kept in {folder}; run the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        reporter.close()
    results, missing = collect_results(specs, folder)
    if report_only and not (folder / "config.json").exists():
        raise StudyFailed(f"{folder} holds no study (no config.json): nothing to report")
    path = folder / "REPORT.md"
    if (report or report_only) and ranks.main:
        if missing:
            print(f"warning: {len(missing)} run(s) not finished: {', '.join(missing)}", file=sys.stderr)
        if results:
            path = write_report(folder, chosen, recorded, results, missing)
        else:
            print("no finished run: no report written", file=sys.stderr)
    ranks.barrier()
    runs = [RunResult.from_result(r, folder / "runs" / r["run"]) for r in results]
    if show:
        print(summary_table(runs))
    return StudyResult(chosen.name, settings.dataset, run_id, folder, path, recorded, runs, missing)


def run_every_study(
    dataset: str = "mnist",
    task1_datasets: list[str] | None = None,
    out: str | Path = "results",
    studies: list[str] | None = None,
    **options,
) -> CombinedResult:
    """Every study on `dataset` (fc-vs-cnn also on each of `task1_datasets`, as in the original
    study), or only `studies` (names, in the usual order), then one combined REPORT.md under
    out/all/, whose claims table says "not run" for the studies left out. `options` are run()'s."""
    from .combined import write_combined_report
    from .studies.base import DATASETS

    task1 = task1_datasets or [dataset]
    unknown = [d for d in task1 if d not in DATASETS]
    if unknown:
        raise ConfigError(f"task1_datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
    chosen = list(STUDIES) if studies is None else studies
    unknown = [name for name in chosen if name not in STUDIES]
    if unknown or not chosen:
        raise ConfigError(f"studies: unknown {unknown or 'none given'}; choose from {', '.join(STUDIES)}")
    order = [("fc-vs-cnn", d) for d in task1 if "fc-vs-cnn" in chosen]
    order += [(name, dataset) for name in STUDIES if name != "fc-vs-cnn" and name in chosen]
    for name, d in order:  # every study's configuration checked before the first one runs
        plan(name, dataset=d, **{k: v for k, v in options.items() if k not in _RUN_ONLY})
    done = [run(name, dataset=d, out=out, **options) for name, d in order]
    first = done[0].config
    combined = (
        Path(out)
        / "all"
        / (f"{dataset}-{first['preset']}-{first['backend']}-{torch.device(first['device']).type}")
    )
    report = combined / "REPORT.md"
    wanted = options.get("report", True) or options.get("report_only", False)
    if wanted and distributed.current().main and all(s.runs for s in done):
        studies = [(STUDIES[s.study], s.folder, s.config, [r.result for r in s.runs]) for s in done]
        command = options.get("command") or "experiments.run_every_study(...)"
        report = write_combined_report(combined, studies, command)
    return CombinedResult(done, report)


# run()'s options that are not configuration keys (plan() does not take them)
_RUN_ONLY = {
    "out",
    "data_dir",
    "download",
    "fresh",
    "progress",
    "quiet",
    "tensorboard",
    "command",
    "shard",
    "report",
    "report_only",
    "sync_bn",
}


def diverged(results: StudyResult | CombinedResult) -> list[RunResult]:
    """Every diverged run of a study or of every study."""
    studies = results.studies if isinstance(results, CombinedResult) else [results]
    return [r for s in studies for r in s.runs if r.diverged]
