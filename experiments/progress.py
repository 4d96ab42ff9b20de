"""What a study shows while it runs: one persistent line per finished epoch, a summary table at
the end, and optional TensorBoard event files, all fed by the runner's per-epoch hook."""

from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["EpochReporter", "epoch_line", "summary_table"]


def epoch_line(run: str, entry: dict, epochs: int) -> str:
    """`run` after one epoch: loss, train / test accuracy, learning rate, seconds."""
    width = len(str(epochs))
    return (
        f"{run}  epoch {entry['epoch']:>{width}}/{epochs}  loss {entry['train_loss']:.4f}  "
        f"train {100 * entry['train_accuracy']:6.2f}%  test {100 * entry['test_accuracy']:6.2f}%  "
        f"lr {entry['lr']:.3g}  {entry['epoch_seconds']:.1f} s"
    )


class EpochReporter:
    """Called by the runner after every finished epoch of every run with the run's whole history.

    show: print each new epoch's line (above any progress bar, which tqdm.write keeps intact).
    tensorboard: write the epoch's scalars to <run folder>/tensorboard. The first call of a run in
    this process writes the whole history, dropping what an interrupted process had written from
    that point on (purge_step), so a resumed run's curves have each epoch once.
    """

    def __init__(self, show: bool = True, tensorboard: bool = False):
        self.show, self.tensorboard = show, tensorboard
        self._seen: dict[str, int] = {}
        self._writers: dict[str, object] = {}

    def __call__(self, run: str, folder: Path, epochs: int, history: list[dict]) -> None:
        new = history[self._seen.get(run, 0) :]
        self._seen[run] = len(history)
        if self.show:
            for entry in new:
                tqdm.write(epoch_line(run, entry, epochs))
        if self.tensorboard and new:
            self._write_scalars(run, folder, new)

    def _write_scalars(self, run: str, folder: Path, entries: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if run not in self._writers:
            self._writers[run] = SummaryWriter(str(folder / "tensorboard"), purge_step=entries[0]["epoch"])
        writer = self._writers[run]
        for e in entries:
            step = e["epoch"]
            writer.add_scalars("loss", {"train": e["train_loss"], "test": e["test_loss"]}, step)
            writer.add_scalars("accuracy", {"train": e["train_accuracy"], "test": e["test_accuracy"]}, step)
            writer.add_scalar("lr", e["lr"], step)
            writer.add_scalar("epoch_seconds", e["epoch_seconds"], step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def summary_table(runs) -> str:
    """A plain-text table of a study's runs (experiments.api.RunResult): accuracy and time."""
    header = ("run", "backend", "test acc", "epochs", "s/epoch", "samples/s")
    rows = []
    for r in runs:
        accuracy = "diverged" if r.diverged else f"{100 * r.test_accuracy:.2f}%"
        seconds = "-" if r.epoch_seconds is None else f"{r.epoch_seconds:.1f}"
        rate = "-" if r.samples_per_second is None else f"{r.samples_per_second:,.0f}"
        rows.append((r.name, r.backend, accuracy, str(len(r.history)), seconds, rate))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
