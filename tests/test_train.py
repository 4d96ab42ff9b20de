"""The training engine: it learns, its history is complete, checkpoints are atomic and a resumed
run reproduces an uninterrupted one exactly."""

import json

import pytest
import torch

from cnnext import data
from cnnext.models import build_model
from cnnext.train import TrainConfig, evaluate, fit, set_seed


def loaders(seed=0):
    train = data.synthetic(n=200, channels=1, size=12, classes=4, seed=1)
    test = data.synthetic(n=80, channels=1, size=12, classes=4, seed=2)
    return data.Loader(train, 32, shuffle=True, seed=seed), data.Loader(test, 40)


def small_model(backend="native"):
    set_seed(0)
    return build_model("cnn", depth=3, width=4, in_channels=1, num_classes=4, backend=backend)


CONFIG = TrainConfig(epochs=3, lr=0.05, weight_decay=0.0)


@pytest.mark.parametrize("backend", ["native", "cnnext"])
def test_fit_learns_the_synthetic_set_and_records_history(backend):
    train, test = loaders()
    history = fit(small_model(backend), train, test, TrainConfig(epochs=4, lr=0.05), progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["test_accuracy"] >= 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] < history[0]["lr"]  # cosine schedule
    assert set(history[0]["grad_norms"]) == {n for n, _ in small_model().named_parameters()}
    assert all(h["samples_per_second"] > 0 for h in history)
    json.dumps(history)  # the history is plain data: it serialises as metrics


class InterruptAt(data.Loader):
    """A loader whose iteration raises KeyboardInterrupt once training reaches `epoch` (0-based),
    as a user pressing Ctrl-C in the middle of that epoch would."""

    def __init__(self, loader, epoch):
        self.__dict__.update(loader.__dict__)
        self.interrupt_epoch = epoch

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if self.epoch == self.interrupt_epoch and i == 2:
                raise KeyboardInterrupt
            yield batch


def _without_timing(history):
    return [{k: v for k, v in h.items() if k not in ("epoch_seconds", "samples_per_second")} for h in history]


def test_resume_gives_the_same_history_as_an_uninterrupted_run(tmp_path):
    straight = fit(small_model(), *loaders(), CONFIG, progress=False)

    checkpoint = tmp_path / "run.pt"
    train, test = loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), InterruptAt(train, epoch=2), test, CONFIG, checkpoint=checkpoint, progress=False)
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2  # epochs 1-2 are kept
    resumed = fit(small_model(), *loaders(), CONFIG, checkpoint=checkpoint, progress=False)
    assert _without_timing(resumed) == _without_timing(straight)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    checkpoint = tmp_path / "run.pt"
    fit(small_model(), *loaders(), TrainConfig(epochs=1, lr=0.05), checkpoint=checkpoint, progress=False)
    with pytest.raises(ValueError, match="written with another configuration"):
        fit(small_model(), *loaders(), TrainConfig(epochs=2, lr=0.01), checkpoint=checkpoint, progress=False)


def test_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run.pt"
    train, test = loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), InterruptAt(train, epoch=2), test, CONFIG, checkpoint=checkpoint, progress=False)
    before = checkpoint.read_bytes()

    def failing_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        fit(small_model(), *loaders(), CONFIG, checkpoint=checkpoint, progress=False)
    assert checkpoint.read_bytes() == before  # the epoch-2 checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # and the partial file is removed


def test_evaluate_and_bad_config():
    _, test = loaders()
    result = evaluate(small_model(), test)
    assert 0 <= result["accuracy"] <= 1 and result["predictions"].shape == (80,)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw'"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="schedule must be"):
        TrainConfig(schedule="linear")
