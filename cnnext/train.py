"""Training engine: fit / evaluate with SGD or AdamW, LR schedules, per-epoch history (losses,
accuracies, LR, time, samples/s, per-layer gradient norms), atomic checkpoints and resume.

A run interrupted at any point and started again with the same arguments continues from its last
finished epoch and produces the same history as an uninterrupted run (model, optimizer, schedule
and RNG states are checkpointed; the data order depends only on seed and epoch).
"""

import hashlib
import io
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ._files import atomic_path
from .data import Loader

__all__ = [
    "SCHEDULES",
    "CheckpointError",
    "Diverged",
    "TrainConfig",
    "evaluate",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "set_seed",
    "synchronize",
]


class Diverged(RuntimeError):
    """Training produced a non-finite loss: the run cannot continue meaningfully.

    Attributes: epoch (1-based, the first epoch whose train or test loss was not finite),
    last_finite_loss (the last finite epoch train loss, or None), history (every epoch, the
    diverged one included)."""

    def __init__(self, epoch: int, last_finite_loss: float | None, history: list[dict]):
        self.epoch, self.last_finite_loss, self.history = epoch, last_finite_loss, history
        last = (
            "no epoch before it had one"
            if last_finite_loss is None
            else f"the last finite one was {last_finite_loss:.4g}"
        )
        entry = history[-1]
        super().__init__(
            f"training diverged in epoch {epoch}: train loss {entry['train_loss']}, test loss "
            f"{entry['test_loss']} ({last}); lower the learning rate or check the inputs for NaN"
        )


SCHEDULES = ("cosine", "onecycle", "step", "constant")


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" | "onecycle" | "step" | "constant"
    step_size: int = 30  # epochs between LR drops for "step"
    gamma: float = 0.1
    warmup: float = 0.3  # "onecycle": fraction of training spent rising from lr / 25 to lr
    label_smoothing: float = 0.0
    # False: weight decay only on weight matrices and kernels, not on biases or normalisation
    # scales and shifts (one-dimensional parameters), which short schedules of small nets fit better.
    decay_biases_and_norms: bool = True
    # Largest global L2 norm of a step's gradient (torch.nn.utils.clip_grad_norm_); None: no
    # clipping. Deep networks without normalisation need it at the learning rates that train their
    # shallow peers: one oversized step at the peak of the schedule can kill every ReLU for good.
    max_grad_norm: float | None = field(default=None, metadata={"run_id_omits_default": True})

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.warmup < 1:
            raise ValueError(f"warmup must be a fraction in (0, 1), got {self.warmup}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


def set_seed(seed: int, deterministic: bool | None = None) -> None:
    """Seed Python's and torch's generators. deterministic=True also makes torch refuse
    nondeterministic kernels and turns off cuDNN's autotuner (same seed -> same bits on GPU too,
    at some speed), False turns both back, None leaves them as they are. cnnext's own kernels are
    deterministic either way."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic is None:
        return
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): wall-clock timings need it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: one with cfg.weight_decay, and unless
    cfg.decay_biases_and_norms, a second one of the one-dimensional parameters (biases, batch-norm
    scales and shifts) without weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_biases_and_norms:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decayed = [p for p in params if p.dim() > 1]
    kept = [p for p in params if p.dim() <= 1]
    groups = ({"params": decayed, "weight_decay": cfg.weight_decay}, {"params": kept, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, progress: float) -> float:
    """The learning rate over cfg.lr at `progress` epochs into training (fractional: the schedule
    is applied every step). cosine: from 1 down to 0; onecycle: linear warm-up from 1/25 to 1 over
    the first `warmup` of training, then cosine down to 1/25e4 (OneCycleLR's shape); step: times
    gamma every step_size epochs."""
    fraction = min(progress / cfg.epochs, 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * fraction))
    if cfg.schedule == "onecycle":
        start, end = 1 / 25, 1 / 25e4
        if fraction < cfg.warmup:
            return start + (1 - start) * fraction / cfg.warmup
        anneal = (fraction - cfg.warmup) / (1 - cfg.warmup)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * anneal))
    if cfg.schedule == "step":
        return cfg.gamma ** (int(progress) // cfg.step_size)
    return 1.0


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Loader) -> dict:
    """Mean loss, accuracy and the predictions over a loader (model in eval mode meanwhile)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count, predictions = 0.0, 0, 0, []
    for images, labels in loader:
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(1)
        correct += (predicted == labels).sum().item()
        count += labels.numel()
        predictions.append(predicted.cpu())
    model.train(was_training)
    return {
        "loss": total_loss / max(count, 1),
        "accuracy": correct / max(count, 1),
        "predictions": torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long),
    }


CHECKPOINT_FORMAT = "cnnext-checkpoint-1"


def _save_atomically(state: dict, path: Path) -> None:
    """The state, serialised, with the SHA-256 of those bytes: a damaged file is detected on load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    with atomic_path(path) as tmp:  # a crash leaves the previous checkpoint intact, never a partial one
        torch.save(
            {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "state": payload},
            tmp,
        )


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (unreadable, truncated or altered); the message names the
    file and the way out."""


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """The state saved by fit, after checking its checksum; tensors go to `map_location`.

    Loaded with weights_only=True: a checkpoint holds tensors and plain Python values only, so
    unpickling cannot run code from a file someone handed you."""
    way_out = f"; delete {path} (or rerun the study with --fresh) to train that run again from the start"
    try:
        wrapper = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(wrapper, dict) and wrapper.get("format") == CHECKPOINT_FORMAT):
            raise ValueError("it is not a cnnext checkpoint")
        if hashlib.sha256(wrapper["state"]).hexdigest() != wrapper["sha256"]:
            raise ValueError("its contents do not match their checksum (the file was altered or damaged)")
        return torch.load(io.BytesIO(wrapper["state"]), map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} cannot be used: {error}{way_out}") from error


def _rng_state() -> dict:
    """Every generator a training step draws from: Python's, torch's CPU one and, when CUDA is
    initialised, each CUDA device's (dropout on a GPU draws from its device's generator)."""
    state = {"rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = {i: torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())}
    return state


def _restore_rng(state: dict) -> None:
    """Put back what _rng_state saved. A CUDA generator is restored on the device of the same
    index; a checkpoint from a machine with more devices than this one restores those it can."""
    torch.set_rng_state(state["rng"].cpu())
    random.setstate(state["python_rng"])
    for index, cuda_state in state.get("cuda_rng", {}).items():
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


class _DataParallel:
    """fit's view of torch.distributed: a no-op with one process, DDP and collectives with more."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.device = device
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.net = model
        if self.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = None  # CPU: DDP runs on the module's device
            if device.type == "cuda":
                ids = [device.index if device.index is not None else torch.cuda.current_device()]
            self.net = DistributedDataParallel(model, device_ids=ids)

    def sum(self, *values: torch.Tensor) -> tuple:
        """Each tensor summed over the ranks (in place on a copy)."""
        if not self.active:
            return values
        summed = []
        for value in values:
            value = value.clone()
            self.dist.all_reduce(value)
            summed.append(value)
        return tuple(summed)

    def from_rank0(self, compute: Callable[[], dict]) -> dict:
        """compute() on rank 0, its scalar results on every rank (others wait meanwhile)."""
        if not self.active:
            return compute()
        box = [None]
        if self.rank == 0:
            result = compute()
            box = [{k: v for k, v in result.items() if k != "predictions"}]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def every_rank_rng(self) -> dict:
        """This process's generator states, plus every rank's under "rank_rng" when distributed."""
        state = _rng_state()
        if self.active:
            every = [None] * self.world_size
            self.dist.all_gather_object(every, state)
            state["rank_rng"] = every
        return state

    def own_rng(self, state: dict) -> dict:
        """The generator states this rank saved (rank 0's are the checkpoint's top level)."""
        ranks = state.get("rank_rng")
        if self.active and ranks is not None and len(ranks) == self.world_size:
            return ranks[self.rank]
        if self.active and self.rank > 0:
            raise RuntimeError(
                f"the checkpoint was written by {len(ranks) if ranks else 1} process(es), not "
                f"{self.world_size}: resume with the same number of ranks (or start over)"
            )
        return state

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()


def fit(
    model: torch.nn.Module,
    train: Loader,
    test: Loader,
    cfg: TrainConfig,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Train for cfg.epochs, evaluating on `test` after every epoch; returns the history (one dict
    per epoch; "lr" is the rate at the epoch's first step). An epoch whose train or test loss is
    not finite raises Diverged (no checkpoint is written for it). With `checkpoint`, state is saved
    there after every epoch and a run whose checkpoint exists resumes from it. `on_epoch(history)`
    is called after each epoch's checkpoint (e.g. to write metrics as they come).

    Data-parallel: when a torch.distributed process group of more than one rank is initialised,
    fit trains a DistributedDataParallel wrapper of `model` (give each rank its Loader share:
    Loader(rank=, world_size=)). Loss and accuracy sums are all-reduced, so every rank's history
    holds the global figures; rank 0 alone evaluates (and broadcasts the result) and writes the
    checkpoint, with every rank's random-generator state, which each rank restores on resume.
    on_epoch is called on every rank (write files from rank 0 only)."""
    device = next(model.parameters()).device
    group = _DataParallel(model, device)
    optimizer = _optimizer(model, cfg)
    checkpoint = Path(checkpoint) if checkpoint else None
    history, start_epoch = _resume(checkpoint, cfg, model, optimizer, group)
    if start_epoch > 0 and on_epoch is not None:
        on_epoch(history)  # a kill between the checkpoint and on_epoch left its files one epoch short

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    for epoch in range(start_epoch, cfg.epochs):
        train.set_epoch(epoch)
        sums = _train_epoch(group, optimizer, train, cfg, epoch, named, progress)
        history.append(_epoch_record(group, model, test, cfg, epoch, named, sums))
        if not (math.isfinite(history[-1]["train_loss"]) and math.isfinite(history[-1]["test_loss"])):
            finite = [h["train_loss"] for h in history[:-1] if math.isfinite(h["train_loss"])]
            raise Diverged(epoch + 1, finite[-1] if finite else None, history)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, cfg, model, optimizer, group, history)
        if on_epoch is not None:
            on_epoch(history)
    return history


def _resume(checkpoint, cfg, model, optimizer, group) -> tuple[list[dict], int]:
    """(history, first epoch to run): from `checkpoint` when it exists (model, optimizer and this
    rank's random generators restored), else a fresh start."""
    if checkpoint is None or not checkpoint.exists():
        return [], 0
    state = load_checkpoint(checkpoint)
    # A field added to TrainConfig after the checkpoint was written reads as its default there.
    recorded = {**asdict(TrainConfig()), **state["config"]}
    if recorded != asdict(cfg):
        raise ValueError(f"checkpoint {checkpoint} was written with another configuration: {state['config']}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _restore_rng(group.own_rng(state))
    return state["history"], state["epoch"]


@dataclass
class _EpochSums:
    """One epoch's training sums, on the device until the epoch ends."""

    loss: torch.Tensor  # sum over samples of the loss (float64)
    correct: torch.Tensor  # samples classified right
    grad_sq: torch.Tensor  # per parameter, sum over steps of its squared gradient norm (float64)
    count: int  # samples
    steps: int
    seconds: float


def _train_epoch(
    group, optimizer, train: Loader, cfg: TrainConfig, epoch: int, named, progress: bool
) -> _EpochSums:
    """One epoch of training steps, the learning rate following the schedule step by step."""
    from tqdm.auto import tqdm

    device = group.device
    steps_per_epoch = max(len(train), 1)
    group.net.train()
    # Running sums stay on the device and are read once per epoch: an .item() per parameter per
    # step would wait for the device that many times.
    grad_sq = torch.zeros(len(named), dtype=torch.float64, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count, steps = 0, 0
    synchronize(device)
    started = time.perf_counter()
    for images, labels in tqdm(
        train, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress or group.rank > 0
    ):
        for param_group in optimizer.param_groups:
            param_group["lr"] = cfg.lr * lr_factor(cfg, epoch + steps / steps_per_epoch)
        logits = group.net(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for i, (_, p) in enumerate(named):
            if p.grad is not None:
                grad_sq[i] += p.grad.detach().double().pow(2).sum()
        if cfg.max_grad_norm is not None:  # after the norms above: they record the raw gradient
            torch.nn.utils.clip_grad_norm_(group.net.parameters(), cfg.max_grad_norm)
        optimizer.step()
        total_loss += loss.detach().double() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        count += labels.numel()
        steps += 1
    synchronize(device)
    return _EpochSums(total_loss, correct, grad_sq, count, steps, time.perf_counter() - started)


def _epoch_record(group, model, test: Loader, cfg: TrainConfig, epoch: int, named, sums: _EpochSums) -> dict:
    """The history entry of an epoch: the training sums summed over ranks, and the evaluation."""
    total_loss, correct, summed_count = group.sum(
        sums.loss, sums.correct, torch.tensor(sums.count, device=group.device)
    )
    count = int(summed_count.item())
    result = group.from_rank0(lambda: evaluate(model, test))
    return {
        "epoch": epoch + 1,
        "lr": cfg.lr * lr_factor(cfg, epoch),
        "train_loss": total_loss.item() / max(count, 1),
        "train_accuracy": correct.item() / max(count, 1),
        "test_loss": result["loss"],
        "test_accuracy": result["accuracy"],
        "epoch_seconds": sums.seconds,
        "samples_per_second": count / sums.seconds,
        # root-mean-square over the epoch's steps of each parameter's gradient norm
        "grad_norms": {
            name: math.sqrt(value / max(sums.steps, 1))
            for (name, _), value in zip(named, sums.grad_sq.tolist(), strict=True)
        },
    }


def _save_checkpoint(
    checkpoint: Path, cfg: TrainConfig, model, optimizer, group, history: list[dict]
) -> None:
    """Rank 0 writes the state after the last epoch of `history`, with every rank's random state."""
    rng = group.every_rank_rng()
    if group.rank == 0:
        _save_atomically(
            {
                "config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "epoch": history[-1]["epoch"],
                **rng,
            },
            checkpoint,
        )
    group.barrier()  # no rank runs ahead of the checkpoint it would resume from
