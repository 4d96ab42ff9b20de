"""Configuration without code edits (--config FILE, --set key=value), replay of a recorded
config.json, the Python API (experiments.run, cnnext.load_run), what a run shows on screen,
--fresh, TensorBoard, and every bad input failing clearly before anything is written."""

import json
import random

import pytest
import torch

import cnnext
import experiments
from cnnext import data, train
from experiments import cli
from experiments.config import ConfigError

TINY = {"dataset": "synthetic", "train_size": 60, "test_size": 20, "epochs": 1, "device": "cpu"}
TINY_ARGS = ["--dataset", "synthetic", "--train-size", "60", "--test-size", "20", "--epochs", "1"]
TIMING = {"epoch_seconds", "samples_per_second"}


def untimed(history):
    return [{k: v for k, v in epoch.items() if k not in TIMING} for epoch in history]


def models_of(specs):
    return {s.model.label: s.model for s in specs if s.seed == 0}


@pytest.fixture(scope="module")
def api_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    return experiments.run(
        "fc-vs-cnn", out=out, progress=False, quiet=True, lr=0.05, **TINY, **{"CNN.width": 6}
    )


CONFIG_FILES = {
    "yaml": "dataset: synthetic\ntrain_size: 60\nlr: 0.02\nCNN:\n  width: 6\n  lr: 0.01\n"
    "MLP.hidden: [16, 8]\n",
    "toml": 'dataset = "synthetic"\ntrain_size = 60\nlr = 0.02\n"MLP.hidden" = [16, 8]\n'
    "[CNN]\nwidth = 6\nlr = 0.01\n",
    "json": '{"dataset": "synthetic", "train_size": 60, "lr": 0.02, "CNN": {"width": 6, "lr": 0.01}, '
    '"MLP.hidden": [16, 8]}',
}


@pytest.mark.parametrize("suffix", sorted(CONFIG_FILES))
def test_a_yaml_toml_or_json_file_sets_preset_training_and_model_keys(suffix, tmp_path):
    path = tmp_path / f"study.{suffix}"
    path.write_text(CONFIG_FILES[suffix])
    _, settings, preset, specs, run_id = experiments.plan("fc-vs-cnn", config=path, device="cpu")
    models = models_of(specs)
    assert settings.dataset == "synthetic" and preset.train_size == 60
    assert models["CNN"].config["width"] == 6 and models["CNN"].train.lr == 0.01  # the model's own key wins
    assert models["MLP"].config["hidden"] == (16, 8) and models["MLP"].train.lr == 0.02
    assert models["ResNet-8"].train.lr == 0.02
    default = experiments.plan("fc-vs-cnn", dataset="synthetic", device="cpu")[4]
    assert run_id != default  # the run id follows the resolved configuration


def test_set_wins_over_the_file_and_explicit_flags_over_the_files_run_keys(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("dataset: synthetic\nbackend: native\nlr: 0.02\n")
    _, settings, _, specs, _ = experiments.plan(
        "fc-vs-cnn", config=path, backend="cnnext", device="cpu", lr=0.3, **{"ResNet-8.depth": 14}
    )
    models = models_of(specs)
    assert settings.backend == "cnnext" and {s.backend for s in specs} == {"cnnext"}
    assert models["CNN"].train.lr == 0.3 and models["ResNet-8"].config["depth"] == 14


def test_the_standard_preset_caps_slow_models_seeds_and_trains_channels_last():
    """fc-vs-cnn's standard CIFAR-10 preset: three seeds of MLP and CNN, one of ResNet-20 (its
    max_seeds), every run channels_last; `<model>.max_seeds` and `channels_last` override that."""
    _, _, preset, specs, _ = experiments.plan("fc-vs-cnn", dataset="cifar10", preset="standard", device="cpu")
    runs = sorted((s.model.label, s.seed) for s in specs)
    assert runs == sorted([(m, k) for m in ("MLP", "CNN") for k in range(3)] + [("ResNet-20", 0)])
    assert preset.train_size is None and all(s.channels_last for s in specs)
    assert models_of(specs)["ResNet-20"].train.label_smoothing == 0.1
    specs = experiments.plan(
        "fc-vs-cnn",
        dataset="cifar10",
        preset="standard",
        device="cpu",
        seeds=2,
        channels_last=False,
        **{"ResNet-20.max_seeds": None, "MLP.max_seeds": 1},
    )[3]
    runs = sorted((s.model.label, s.seed) for s in specs)
    assert runs == sorted([("MLP", 0), ("CNN", 0), ("CNN", 1), ("ResNet-20", 0), ("ResNet-20", 1)])
    assert not any(s.channels_last for s in specs)
    with pytest.raises(ConfigError, match="MLP.max_seeds: must be >= 1"):
        experiments.plan("fc-vs-cnn", dataset="synthetic", device="cpu", **{"MLP.max_seeds": 0})


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("study", sorted(experiments.STUDIES))
def test_every_study_has_a_standard_preset_on_the_whole_training_set_with_three_seeds(study, dataset):
    """What issue 22 asks of `standard`: the full training sets, three seeds (a model too slow for
    them says so: max_seeds), in channels_last, and more epochs than quick."""
    _, _, preset, specs, _ = experiments.plan(study, dataset=dataset, preset="standard", device="cpu")
    _, _, quick, quick_specs, _ = experiments.plan(study, dataset=dataset, preset="quick", device="cpu")
    assert preset.seeds == 3 and all(s.channels_last for s in specs)
    assert preset.train_size is None
    capped = [m.label for m in preset.models if m.max_seeds is not None]
    assert capped == (["ResNet-20"] if (study, dataset) == ("fc-vs-cnn", "cifar10") else [])
    assert max(s.model.train.epochs for s in specs) > max(s.model.train.epochs for s in quick_specs)


def test_the_depth_standard_clips_every_models_gradient_alike():
    """Plain and residual nets share one recipe, so the study compares architectures: clipped to
    norm 1 in standard (residual 12-20 died at the peak lr without it), unclipped in quick."""
    for preset, clip in (("standard", 1.0), ("quick", None)):
        specs = experiments.plan("depth", dataset="mnist", preset=preset, device="cpu").specs
        assert {s.model.train.max_grad_norm for s in specs} == {clip}
        assert all(s.model.train == specs[0].model.train for s in specs)


def test_set_values_are_read_as_yaml_scalars_and_checked_against_the_key(tmp_path):
    args = cli._parser("test").parse_args(
        ["fc-vs-cnn", "--set", "lr=5e-2", "--set", "nesterov=false", "--set", "MLP.hidden=[32, 16]"]
    )
    options = cli._options(args)
    assert options["lr"] == 0.05 and options["nesterov"] is False and options["MLP.hidden"] == [32, 16]
    specs = experiments.plan("fc-vs-cnn", dataset="synthetic", device="cpu", **{"MLP.hidden": [32, 16]})[3]
    assert models_of(specs)["MLP"].config["hidden"] == (32, 16)


def test_the_python_api_returns_the_studys_results_as_data(api_study):
    assert api_study.report.is_file() and api_study.folder.name == api_study.run_id
    assert [(r.model, r.seed) for r in api_study.runs] == [("MLP", 0), ("CNN", 0), ("ResNet-8", 0)]
    recorded = json.loads((api_study.folder / "config.json").read_text())
    assert recorded["overrides"] == {
        "lr": 0.05,
        "CNN.width": 6,
        "train_size": 60,
        "test_size": 20,
        "epochs": 1,
    }
    for run in api_study.runs:
        result = json.loads((run.folder / "result.json").read_text())
        assert run.test_accuracy == result["test_accuracy"] and run.diverged is None
        assert len(run.history) == 1 and run.epoch_seconds > 0 and run.parameters == result["parameters"]
        assert run.history[0]["lr"] == pytest.approx(0.05 / 25)  # the one-cycle schedule starts at lr / 25


def test_load_run_gives_back_the_trained_model_and_its_config(api_study):
    from experiments.runner import load_split

    run = next(r for r in api_study.runs if r.model == "CNN")
    model, config = cnnext.load_run(run.folder)
    assert config["arguments"]["width"] == 6 and config["backend"] == "cnnext" and config["finished"]
    assert config["train"]["lr"] == 0.05 and config["epochs_done"] == 1 and not model.training
    test = data.Loader(load_split("synthetic", False, None, 20, False), 256)
    assert train.evaluate(model, test)["accuracy"] == run.test_accuracy
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        cnnext.load_run(api_study.folder)


def test_a_recorded_config_json_replays_the_study_exactly(api_study, tmp_path, capsys):
    recorded = api_study.folder / "config.json"
    assert cli.main(["fc-vs-cnn", "--config", str(recorded), "--out", str(tmp_path), "--quiet"]) == 0
    (replayed,) = (tmp_path / "fc-vs-cnn").iterdir()
    assert replayed.name == api_study.run_id  # same resolved configuration, same run id
    again = json.loads((replayed / "config.json").read_text())
    assert again["runs"] == json.loads(recorded.read_text())["runs"]
    for run in api_study.runs:
        result = json.loads((replayed / "runs" / run.name / "result.json").read_text())
        assert (
            untimed(result["history"]) == untimed(run.history)
            and result["confusion"] == run.result["confusion"]
        )


def test_epoch_lines_and_a_summary_table_on_screen_and_quiet_silences_them(tmp_path, capsys):
    assert cli.main(["fc-vs-cnn", *TINY_ARGS, "--epochs", "2", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("MLP", "CNN", "ResNet-8"):
        for epoch in (1, 2):
            line = next(x for x in out.splitlines() if x.startswith(f"{label}-seed0  epoch {epoch}/2"))
            for part in ("loss ", "train ", "test ", "lr ", " s"):
                assert part in line, line
    assert "run " in out and "test acc" in out and "s/epoch" in out
    assert cli.main(["fc-vs-cnn", *TINY_ARGS, "--quiet", "--fresh", "--out", str(tmp_path)]) == 0
    quiet = capsys.readouterr().out.strip().splitlines()
    assert len(quiet) == 1 and quiet[0].startswith("report: ")


def test_fresh_discards_earlier_results(tmp_path):
    args = ["fc-vs-cnn", *TINY_ARGS, "--quiet", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    (folder,) = (tmp_path / "fc-vs-cnn").iterdir()
    stray = folder / "runs" / "stray-seed0"
    stray.mkdir()
    first = (folder / "runs" / "MLP-seed0" / "result.json").stat().st_mtime_ns
    assert cli.main(args) == 0 and stray.exists()  # resumed: nothing retrained
    assert (folder / "runs" / "MLP-seed0" / "result.json").stat().st_mtime_ns == first
    assert cli.main([*args, "--fresh"]) == 0
    assert not stray.exists() and (folder / "runs" / "MLP-seed0" / "result.json").stat().st_mtime_ns != first


def test_tensorboard_event_files_hold_every_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (
        cli.main(
            ["fc-vs-cnn", *TINY_ARGS, "--epochs", "2", "--quiet", "--tensorboard", "--out", str(tmp_path)]
        )
        == 0
    )
    (logs,) = (tmp_path / "fc-vs-cnn").glob("*/runs/CNN-seed0/tensorboard")
    events = EventAccumulator(str(logs)).Reload()
    assert [e.step for e in events.Scalars("lr")] == [1, 2]
    result = json.loads((logs.parent / "result.json").read_text())
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([h["lr"] for h in result["history"]])


def write_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "unknown key": (["--set", "learning_rate=0.1"], "unknown key 'learning_rate'; keys: dataset"),
    "unknown model": (
        ["--set", "Tree.depth=3"],
        "Tree.depth: no model 'Tree' in this study; its models: MLP",
    ),
    "unknown model setting": (["--set", "CNN.widht=3"], "CNN.widht: 'cnn' models have no setting 'widht'"),
    "wrong type": (["--set", "lr=fast"], "lr: expected a number, got 'fast' (str)"),
    "bool for an int": (["--set", "CNN.width=true"], "CNN.width: expected an integer, got True"),
    "wrong element type": (["--set", "MLP.hidden=[8, wide]"], r"MLP.hidden\[1\]: expected an integer"),
    "out of range": (["--set", "epochs=0"], "epochs: epochs must be >= 1, got 0"),
    "bad choice": (["--set", "schedule=linear"], "schedule: schedule must be one of"),
    "no clipping norm": (["--set", "max_grad_norm=0"], "max_grad_norm: max_grad_norm must be > 0 or None"),
    "negative size": (["--set", "train_size=-5"], "train_size: must be >= 1, got -5"),
    "not key=value": (["--set", "lr"], "--set 'lr': expected key=value"),
    "unsupported device": (
        ["--device", "mps"],
        "device: cnnext's kernels run on cpu and cuda, not 'mps'; available here: cpu",
    ),
    "not a device": (["--device", "gpu0"], "device: 'gpu0' is not a device name; available here: cpu"),
    "missing file": (["--config", "{tmp}/nowhere.yaml"], "--config .*nowhere.yaml: cannot be read"),
    "bad suffix": (["--config", "{tmp}/study.ini"], "expected a .yaml, .yml, .toml or .json file"),
    "file does not parse": (["--config", "{tmp}/broken.yaml"], "broken.yaml does not parse"),
    "unknown key in a file": (["--config", "{tmp}/typo.toml"], "unknown key 'CNN_width'"),
    "another study's file": (
        ["--config", "{tmp}/depth.json"],
        "study: the configuration is of study 'depth'",
    ),
    "record-only key": (["--config", "{tmp}/machine.json"], "machine: only a recorded config.json"),
}
if torch.cuda.is_available():  # pragma: no cover - with a GPU: an index past the last device
    BAD_INPUTS["no such gpu"] = (["--device", "cuda:99"], "device: 'cuda:99', but there are")
else:
    BAD_INPUTS["no gpu"] = (
        ["--device", "cuda"],
        "device: 'cuda', but torch sees no CUDA device; available here: cpu",
    )


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_writes_nothing(case, tmp_path, capsys):
    import re

    args, message = BAD_INPUTS[case]
    write_file(tmp_path, "study.ini", "[x]\n")
    write_file(tmp_path, "broken.yaml", "lr: [0.1\n")
    write_file(tmp_path, "typo.toml", "CNN_width = 3\n")
    write_file(tmp_path, "depth.json", json.dumps({"study": "depth", "dataset": "synthetic"}))
    write_file(tmp_path, "machine.json", json.dumps({"machine": "mine"}))
    out = tmp_path / "results"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(["fc-vs-cnn", "--dataset", "synthetic", *args, "--out", str(out)]) == cli.EXIT_FAILED
    error = capsys.readouterr().err
    assert re.search(message, error) or message in error, error
    assert not out.exists()


def test_a_knob_at_its_default_leaves_run_ids_as_recorded():
    """Fields marked run_id_omits_default (added after studies were recorded) change a study's run
    id only when set, so a study recorded before them resumes in its own folder."""
    from dataclasses import asdict

    from experiments.spec import fingerprint

    default = train.TrainConfig()
    without_field = {k: v for k, v in asdict(default).items() if k != "max_grad_norm"}
    assert fingerprint(default) == fingerprint(without_field)
    assert fingerprint(train.TrainConfig(max_grad_norm=1.0)) != fingerprint(default)
    plain = experiments.plan("depth", dataset="synthetic", preset="quick")
    clipped = experiments.plan("depth", dataset="synthetic", preset="quick", max_grad_norm=1.0)
    assert plain.run_id != clipped.run_id
    assert {s.model.train.max_grad_norm for s in clipped.specs} == {1.0}


def test_api_errors_are_exceptions_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'widht'"):
        experiments.run("fc-vs-cnn", dataset="synthetic", out=tmp_path, widht=3)
    with pytest.raises(ConfigError, match="study: unknown 'fc-vs-rnn'"):
        experiments.run("fc-vs-rnn", out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_checkpoints_load_with_weights_only(tmp_path):
    import argparse

    path = tmp_path / "checkpoint.pt"  # an arbitrary object: unpickling it could run code
    train._save_atomically({"model": {}, "extra": argparse.Namespace(a=1)}, path)
    with pytest.raises(train.CheckpointError, match="Weights only load failed"):
        train.load_checkpoint(path)
    train._save_atomically({"model": {"w": torch.ones(2)}, **train._rng_state()}, path)
    state = train.load_checkpoint(path, map_location="meta")
    assert state["model"]["w"].device.type == "meta" and isinstance(state["python_rng"], tuple)


def test_cuda_generators_are_saved_and_restored_per_device(monkeypatch):
    """Two fake CUDA devices: each generator's state goes into the checkpoint and back to the
    device of the same index, and a machine with one device restores the one it has."""
    states = {0: torch.tensor([1], dtype=torch.uint8), 1: torch.tensor([2], dtype=torch.uint8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i: states[i].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.__setitem__(i, s))
    saved = train._rng_state()
    assert set(saved["cuda_rng"]) == {0, 1}
    random.random()  # move Python's generator; restoring must bring it back
    train._restore_rng(saved)
    assert random.getstate() == saved["python_rng"]
    assert {i: s.item() for i, s in restored.items()} == {0: 1, 1: 2}
    restored.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    train._restore_rng(saved)
    assert list(restored) == [0]
