"""Runs a study's RunSpecs into results/<study>/<run-id>/runs/<model>-seed<k>/ and resumes.

Per run folder:
    checkpoint.pt   model / optimizer / RNG state after the last finished epoch (cnnext.train)
    metrics.jsonl   one line per finished epoch (rewritten atomically after each)
    result.json     written last, atomically: the run is done (final metrics, confusion matrix,
                    parameters, FLOPs, inference time, gradient norms at initialisation)

Running the same command again skips runs with a result.json and resumes a run in progress from
its checkpoint, so an interrupted study loses at most the epoch it was in.

A run whose loss stops being finite ends there: its result.json says "diverged" (epoch, last finite
loss, the message) instead of final metrics, and reports leave it out of their conclusions.

JSON is written strictly (no NaN / Infinity tokens, which standard JSON lacks): a non-finite number
is written as the string "NaN", "Infinity" or "-Infinity", and read_json turns those back.
"""

import copy
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnext import data
from cnnext._files import atomic_path
from cnnext.models import build_model, count_flops, count_parameters
from cnnext.train import Diverged, evaluate, fit, set_seed, synchronize

from . import claims
from .distributed import Ranks
from .spec import RunSpec

SINGLE = Ranks()  # one process, not launched by torchrun

__all__ = [
    "RunFilesDamaged",
    "collect_results",
    "load_split",
    "read_json",
    "train_runs",
    "write_json",
]

INFERENCE_BATCH = 256


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _strict(value):
    """`value` with every non-finite float replaced by its string name (see the module docstring)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def write_json(path: Path, value, lines: bool = False) -> None:
    """Write strict JSON (or JSON lines) so that readers never see a partial file."""

    def dump(v, **kw):
        return json.dumps(_strict(v), allow_nan=False, **kw)

    text = "".join(dump(v) + "\n" for v in value) if lines else dump(value, indent=1) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path):
    """A file written by write_json, non-finite numbers restored. A file that does not parse raises
    ValueError naming it."""
    try:
        return _decode(json.loads(Path(path).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged: {error}") from error


def git_commit() -> str:
    """The checkout's commit, with "+changes" when tracked files differ from it."""
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_split(dataset: str, train: bool, root, size: int | None, download: bool) -> data.ImageSet:
    """A dataset split, or its stratified subset of `size`; "synthetic" is the learnable toy set
    used by the tests (28x28, 1 channel, 10 classes)."""
    if dataset == "synthetic":
        images = data.synthetic(n=size or (600 if train else 200), seed=0 if train else 1)
    else:
        images = data.load(dataset, train=train, root=root, download=download)
    if size is not None and size < len(images):
        images = data.stratified_subset(images, size, seed=0)
    return images


def _model_arguments(spec: RunSpec, images: data.ImageSet) -> dict:
    """build_model's keyword arguments for `spec` on `images`: the study's model configuration plus
    what the data decides (input channels or features, classes)."""
    channels, height, width = images.images.shape[1:]
    shape_args = (
        {"in_features": channels * height * width}
        if spec.model.family == "mlp"
        else {"in_channels": channels}
    )
    return {"num_classes": len(images.classes), **shape_args, **spec.model.config}


def _gradient_norms(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-parameter gradient norms of one batch: what the first step of training sees. Taken on
    a copy, so the model's batch-norm statistics are not touched."""
    probe = copy.deepcopy(model).train()
    F.cross_entropy(probe(images), labels).backward()
    return {name: p.grad.norm().item() for name, p in probe.named_parameters() if p.grad is not None}


@torch.no_grad()
def _inference_ms(model: torch.nn.Module, images: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time of one eval-mode forward pass over a batch."""
    model.eval()
    device = images.device
    times = []
    for i in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        model(images)
        synchronize(device)
        if i >= 2:  # two warm-ups
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _profile_training_step(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 5, top: int = 12
) -> list[dict]:
    """Where a training step's time goes: the ops with the most self time over `steps` steps
    (forward, backward, SGD) on a copy of the model, per step."""
    from torch.profiler import ProfilerActivity, profile

    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(probe(images), labels).backward()
        optimizer.step()

    step()  # warm-up outside the profile
    cuda = images.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(images.device)
    events = prof.key_averages()
    self_time = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(self_time(e) for e in events) or 1
    rows = sorted(events, key=self_time, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "ms_per_step": self_time(e) / 1e3 / steps,
            "share": self_time(e) / total,
            "calls_per_step": e.count / steps,
        }
        for e in rows
    ]


def _confusion(predictions: torch.Tensor, labels: torch.Tensor, classes: int) -> list[list[int]]:
    index = labels.cpu() * classes + predictions.cpu()
    return torch.bincount(index, minlength=classes * classes).view(classes, classes).tolist()


def run_one(
    spec: RunSpec,
    folder: Path,
    splits: tuple,
    device: torch.device,
    progress: bool,
    reporter: Callable[[str, Path, int, list[dict]], None] | None = None,
    ranks: Ranks = SINGLE,
    sync_bn: bool = False,
) -> dict:
    """Train (or resume) one run and write its result.json; returns the result (on every rank).
    `reporter(run name, folder, epochs, history)` is called after each finished epoch's files are
    written. Under torchrun (`ranks.active`) the run trains data-parallel and rank 0 alone writes."""
    # Other workers training on this host while this run is timed: said in the report.
    co_scheduled = claims.live_claims_on_this_host(folder.parent) - 1 if ranks.main else 0
    train_set, test_set = splits
    set_seed(spec.seed)
    arguments = _model_arguments(spec, train_set)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model = build_model(spec.model.family, backend=spec.backend, **arguments)
    model = model.to(device, memory_format=memory_format)
    if sync_bn and ranks.active:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ranks.main:  # what cnnext.load_run needs to rebuild the model around checkpoint.pt's weights
        write_json(
            folder / "model.json",
            {
                "family": spec.model.family,
                "backend": spec.backend,
                "arguments": arguments,
                "classes": list(train_set.classes),
                "image_shape": list(train_set.images.shape[1:]),
            },
        )
    loader = functools.partial(
        data.Loader,
        train_set,
        spec.batch_size,
        shuffle=True,
        augment=spec.augment,
        device=device,
        seed=spec.seed,
        memory_format=memory_format,
    )
    train = loader(rank=ranks.rank, world_size=ranks.world_size)
    test = data.Loader(test_set, INFERENCE_BATCH, device=device, memory_format=memory_format)
    first_images, first_labels = next(iter(loader()))  # the global first batch, whatever the ranks
    checkpoint = folder / "checkpoint.pt"
    init_norms_file = folder / "grad_norms_init.json"
    if ranks.share(not checkpoint.exists()):  # measured untrained, before any resume could skip it
        if ranks.main:
            write_json(init_norms_file, _gradient_norms(model, first_images, first_labels))
        set_seed(spec.seed)  # training starts from the same RNG state whether or not this ran
    if ranks.rank > 0:  # the model is rank 0's (DDP broadcasts it); dropout masks differ per rank
        torch.manual_seed(spec.seed + 1_000_003 * ranks.rank)

    def on_epoch(folder, history):
        if not ranks.main:
            return
        write_json(folder / "metrics.jsonl", history, lines=True)
        if reporter is not None:
            reporter(spec.name, folder, spec.model.train.epochs, history)

    try:
        history = fit(
            model,
            train,
            test,
            spec.model.train,
            checkpoint=checkpoint,
            progress=progress,
            on_epoch=lambda h: on_epoch(folder, h),
        )
    except Diverged as diverged:
        return ranks.share(
            _diverged_result(spec, folder, model, train_set, device, diverged) if ranks.main else None
        )
    if not ranks.main:
        return ranks.share()  # rank 0 evaluates, measures and writes; its result is every rank's
    final = evaluate(model, test)
    test_images = next(iter(test))[0]
    result = {
        **_run_identity(spec, model, train_set, device),
        "host": claims.HOST,
        "ranks": ranks.world_size,
        "co_scheduled": max(co_scheduled, claims.live_claims_on_this_host(folder.parent) - 1),
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "confusion": _confusion(final["predictions"], test_set.labels, len(test_set.classes)),
        "classes": test_set.classes,
        "epoch_seconds": statistics.mean(h["epoch_seconds"] for h in history),
        "samples_per_second": statistics.mean(h["samples_per_second"] for h in history),
        "inference_ms": _inference_ms(model, test_images),
        "inference_batch": int(test_images.shape[0]),
        "grad_norms_init": _initial_gradient_norms(init_norms_file),
        # conv and linear weights, input side first: the layers of the gradient-norm plots
        "layer_weights": [name for name, p in model.named_parameters() if p.ndim >= 2],
        "profile": _profile_training_step(model, first_images, first_labels) if spec.profile else None,
        "history": history,
    }
    write_json(folder / "result.json", result)
    return ranks.share(result)


class RunFilesDamaged(RuntimeError):
    """A run's file that cannot be rebuilt is damaged; the message names it and the way out."""


def _run_identity(
    spec: RunSpec, model: torch.nn.Module, train_set: data.ImageSet, device: torch.device
) -> dict:
    """The fields of every result.json, finished or diverged: which run, on what code and device, of
    what size."""
    return {
        "run": spec.name,
        "spec": spec.to_dict(),
        "backend": spec.backend,
        "git_commit": git_commit(),  # the code that trained this run (config.json: the latest invocation's)
        "device": str(device),
        "parameters": count_parameters(model),
        "flops": count_flops(model, tuple(train_set.images.shape[1:])),
    }


def _initial_gradient_norms(path: Path) -> dict:
    """grad_norms_init.json, measured on the untrained model: a trained one cannot measure it again."""
    try:
        return read_json(path)
    except (ValueError, OSError) as error:
        raise RunFilesDamaged(
            f"{error}; it was measured before training and cannot be rebuilt: delete {path.parent} "
            "to train that run again (or rerun the study with --fresh)"
        ) from error


def _diverged_result(spec, folder, model, train_set, device, diverged: Diverged) -> dict:
    """result.json of a run whose loss stopped being finite: what it reached, and when it failed."""
    print(f"{spec.name}: {diverged}", file=sys.stderr)
    write_json(folder / "metrics.jsonl", diverged.history, lines=True)
    result = {
        **_run_identity(spec, model, train_set, device),
        "diverged": {
            "epoch": diverged.epoch,
            "last_finite_loss": diverged.last_finite_loss,
            "message": str(diverged),
        },
        "history": diverged.history,
    }
    write_json(folder / "result.json", result)
    return result


def _finished(folder: Path) -> dict | None:
    """The run's result.json, or None; a damaged one is removed (the checkpoint finishes the run
    again)."""
    done = folder / "result.json"
    if not done.exists():
        return None
    try:
        return read_json(done)
    except (ValueError, OSError) as error:
        print(
            f"{done} is damaged ({error}); finishing {folder.name} again from its checkpoint", file=sys.stderr
        )
        done.unlink()
        return None


POLL_SECONDS = 5.0  # how often a worker waiting on other workers' runs looks again


def train_runs(
    specs: list[RunSpec],
    out: Path,
    splits: tuple[data.ImageSet, data.ImageSet],
    device: torch.device,
    progress: bool = True,
    reporter: Callable[[str, Path, int, list[dict]], None] | None = None,
    ranks: Ranks = SINGLE,
    sync_bn: bool = False,
    announce: bool = True,
) -> list[str]:
    """Train (or resume) every unfinished run of `specs` under out/runs, claiming each first
    (experiments/claims.py): runs another live worker holds are waited for, a dead worker's are
    taken over, so this returns when every run of `specs` is finished. Returns the names of the
    runs this worker trained. Under torchrun rank 0 decides and every rank trains with it."""
    from tqdm.auto import tqdm

    pending = list(specs)
    trained = []
    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress or not ranks.main)
    while pending:
        progressed = False
        for spec in list(pending):
            folder = out / "runs" / spec.name
            ownership = None
            if ranks.main:
                ownership = "done" if _finished(folder) is not None else claims.claim(folder) or "busy"
                if isinstance(ownership, claims.Claim) and _finished(folder) is not None:
                    ownership.release()  # its worker finished it between our look and our claim
                    ownership = "done"
            decision = ranks.share(ownership if isinstance(ownership, str) else "mine")
            if decision == "busy":
                continue
            pending.remove(spec)
            bar.update()
            if decision == "done":
                continue
            bar.set_postfix_str(spec.name)
            try:
                if ranks.main and announce:
                    tqdm.write(f"training {spec.name} (worker {claims.HOST}:{os.getpid()})")
                run_one(spec, folder, splits, device, progress, reporter, ranks, sync_bn)
            finally:
                if ranks.main:
                    ownership.release()
            trained.append(spec.name)
            progressed = True
        if pending and not progressed:
            time.sleep(POLL_SECONDS)  # every rank: they all saw "busy"
    bar.close()
    return trained


def collect_results(specs: list[RunSpec], out: Path) -> tuple[list[dict], list[str]]:
    """(results of the finished runs of `specs`, names of the others), in the specs' order."""
    results, missing = [], []
    for spec in specs:
        result = _finished(out / "runs" / spec.name)
        if result is None:
            missing.append(spec.name)
        else:
            results.append(result)
    return results, missing
