"""The training engine: it learns, its history is complete, checkpoints are atomic and a resumed
run reproduces an uninterrupted one exactly."""

import copy
import json
import os

import pytest
import torch

from cnnext import data
from cnnext.models import build_model
from cnnext.train import TrainConfig, evaluate, fit, load_checkpoint, lr_factor, set_seed


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
    assert load_checkpoint(checkpoint)["epoch"] == 2  # epochs 1-2 are kept
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

    real_save = torch.save

    def failing_save(obj, path):  # serialising in memory works; writing the file fails half-way
        if not isinstance(path, (str, os.PathLike)):
            return real_save(obj, path)
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        fit(small_model(), *loaders(), CONFIG, checkpoint=checkpoint, progress=False)
    assert checkpoint.read_bytes() == before  # the epoch-2 checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # and the partial file is removed


def test_resume_reads_a_field_missing_from_an_older_checkpoint_as_its_default(tmp_path, monkeypatch):
    """A checkpoint written before a TrainConfig field existed resumes under the default of that
    field, and is refused when the field is set to something else."""
    import cnnext.train as engine

    checkpoint = tmp_path / "run.pt"
    config = TrainConfig(epochs=2, lr=0.05)
    train, test = loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), InterruptAt(train, epoch=1), test, config, checkpoint=checkpoint, progress=False)
    original = engine.load_checkpoint

    def older(path):
        state = original(path)
        del state["config"]["max_grad_norm"]
        return state

    monkeypatch.setattr(engine, "load_checkpoint", older)
    assert len(fit(small_model(), *loaders(), config, checkpoint=checkpoint, progress=False)) == 2
    clipped = TrainConfig(epochs=2, lr=0.05, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="written with another configuration"):
        fit(small_model(), *loaders(), clipped, checkpoint=checkpoint, progress=False)


def test_max_grad_norm_clips_each_step_and_the_history_keeps_the_raw_norms(monkeypatch):
    train, test = loaders()
    applied, original = [], torch.optim.SGD.step

    def step(self, *args, **kwargs):  # the global norm of the gradient each step applies
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        applied.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    fit(small_model(), train, test, TrainConfig(epochs=1, lr=0.05), progress=False)
    assert max(applied) > 0.05  # the unclipped gradients of this model are larger than the cap
    applied.clear()
    clipped = TrainConfig(epochs=1, lr=0.05, max_grad_norm=0.05)
    history = fit(small_model(), train, test, clipped, progress=False)
    assert len(applied) == len(train) and max(applied) <= 0.05 * (1 + 1e-5)
    raw = sum(v**2 for v in history[0]["grad_norms"].values()) ** 0.5
    assert raw > 0.05  # recorded before clipping: the vanishing-gradient plots see the true gradient


def test_evaluate_and_bad_config():
    _, test = loaders()
    result = evaluate(small_model(), test)
    assert 0 <= result["accuracy"] <= 1 and result["predictions"].shape == (80,)
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw'"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="schedule must be"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="warmup must be"):
        TrainConfig(schedule="onecycle", warmup=1.0)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0 or None, got -1"):
        TrainConfig(max_grad_norm=-1)


def test_schedules_have_their_shapes():
    cosine = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cosine, 0) == 1 and lr_factor(cosine, 5) == pytest.approx(0.5)
    assert lr_factor(cosine, 10) == pytest.approx(0, abs=1e-12)
    one = TrainConfig(epochs=10, schedule="onecycle", warmup=0.3)
    assert lr_factor(one, 0) == pytest.approx(1 / 25)
    assert lr_factor(one, 1.5) == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)  # halfway up the warm-up
    assert lr_factor(one, 3) == pytest.approx(1)
    assert lr_factor(one, 10) == pytest.approx(1 / 25e4)
    values = [lr_factor(one, e / 10) for e in range(30, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # annealing never rises
    step = TrainConfig(epochs=10, schedule="step", step_size=3, gamma=0.5)
    assert [lr_factor(step, e) for e in (0, 2.9, 3, 6.5)] == [1, 1, 0.5, 0.25]
    assert lr_factor(TrainConfig(schedule="constant"), 7.3) == 1


def test_lr_changes_every_step_and_history_records_each_epoch_start(monkeypatch):
    train, test = loaders()
    cfg = TrainConfig(epochs=2, lr=0.1, schedule="onecycle", weight_decay=0.0)
    rates, original = [], torch.optim.SGD.step

    def step(self, *args, **kwargs):  # the rate every optimizer step uses
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    history = fit(small_model(), train, test, cfg, progress=False)
    steps = len(train)
    expected = [0.1 * lr_factor(cfg, i / steps) for i in range(2 * steps)]
    assert rates == pytest.approx(expected)
    assert len(set(rates)) == 2 * steps
    assert [h["lr"] for h in history] == pytest.approx([0.1 / 25, 0.1 * lr_factor(cfg, 1)])


def test_biases_and_norms_can_be_left_out_of_weight_decay():
    """decay_biases_and_norms=False: the same SGD step as weight decay on the kernels alone (biases
    and batch-norm parameters move by their gradient only); the default decays every parameter."""
    from cnnext.train import _optimizer

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 1, 6, 6))
    for decay_all in (True, False):
        cfg = TrainConfig(lr=0.5, momentum=0.0, weight_decay=0.1, decay_biases_and_norms=decay_all)
        trained = copy.deepcopy(model)
        before = [p.detach().clone() for p in trained.parameters()]
        optimizer = _optimizer(trained, cfg)
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(before)
        for p in trained.parameters():
            p.grad = torch.zeros_like(p)  # a zero gradient: any movement is weight decay
        optimizer.step()
        for (name, p), old in zip(trained.named_parameters(), before, strict=True):
            decayed = decay_all or p.dim() > 1
            expected = old * (1 - 0.5 * 0.1) if decayed else old
            assert torch.allclose(p, expected), name


def test_deterministic_switch():
    try:
        set_seed(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
        set_seed(1)  # a later reseed (every run of a study does one) keeps the switch
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        set_seed(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
