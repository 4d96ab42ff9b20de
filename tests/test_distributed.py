"""Scale-out on torch.distributed, on this CPU with gloo: DDP under torchrun (identical ranks, the
same result as one process, resume, rank 0 alone writing, cnnext's gradients averaged as native's,
torch.compile), and a study's runs spread over workers (shards, claims, a SIGKILLed worker)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnext import data
from cnnext.models import build_model
from cnnext.train import TrainConfig, fit
from experiments import cli
from experiments.report import scheduling_lines

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMING = {"epoch_seconds", "samples_per_second"}
STUDY = ["fc-vs-cnn", "--dataset", "synthetic", "--train-size", "128", "--test-size", "40", "--epochs", "2"]
# Other processes write nothing: rank > 0 logs every file it would put in place (os.replace is how
# every file of a study is written, cnnext._files.atomic_path) or create (os.open).
WRITE_GUARD = """
import os
if os.environ.get("RANK", "0") != "0":
    _replace, _open = os.replace, os.open
    def _log(path):
        with open(os.environ["CNNEXT_TEST_WRITE_LOG"], "a") as log:
            log.write(f"rank {os.environ['RANK']}: {path}\\n")
    def replace(src, dst, *args, **kwargs):
        _log(dst)
        return _replace(src, dst, *args, **kwargs)
    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            _log(path)
        return _open(path, flags, *args, **kwargs)
    os.replace, os.open = replace, open_
"""


def untimed(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def torchrun(*args, env=None, cwd=None, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def study(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "experiments", *STUDY, "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def results_of(folder: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("runs/*/result.json")}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-process")
    assert cli.main([*STUDY, "--quiet", "--out", str(out)]) == 0
    (folder,) = (out / "fc-vs-cnn").iterdir()
    return folder


def test_a_study_under_torchrun_matches_one_process_and_only_rank_0_writes(tmp_path, one_process):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(WRITE_GUARD)
    log = tmp_path / "writes-by-other-ranks.log"
    env = {"PYTHONPATH": f"{guard}{os.pathsep}{ROOT}", "CNNEXT_TEST_WRITE_LOG": str(log)}
    out = tmp_path / "results"
    torchrun("-m", "experiments", *STUDY, "--quiet", "--out", str(out), env=env, cwd=tmp_path)
    (folder,) = (out / "fc-vs-cnn").iterdir()
    assert folder.name == one_process.name  # the number of processes is not part of the run id
    written = [line for line in (log.read_text().splitlines() if log.exists() else []) if str(out) in line]
    assert not written, written
    ddp, single = results_of(folder), results_of(one_process)
    assert set(ddp) == set(single) == {"MLP-seed0", "CNN-seed0", "ResNet-8-seed0"}
    assert ddp["MLP-seed0"]["ranks"] == 2 and json.loads((folder / "config.json").read_text())["ranks"] == 2
    # No batch norm in the MLP: the same global batches give the same training up to the order in
    # which two ranks' gradients are summed (float32).
    for got, want in zip(ddp["MLP-seed0"]["history"], single["MLP-seed0"]["history"], strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-5)
        assert got["test_accuracy"] == want["test_accuracy"]
    assert "data-parallel over 2 processes" in (folder / "REPORT.md").read_text()


@pytest.fixture(scope="module")
def ddp_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-train")
    torchrun(str(HERE / "ddp_worker.py"), "train", str(out))
    return out


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ranks_end_with_identical_parameters(ddp_trained, name):
    rank0, rank1 = (torch.load(ddp_trained / f"rank{r}-{name}-params.pt") for r in (0, 1))
    for key in rank0:
        if "running" in key or "num_batches" in key:
            continue  # batch-norm statistics are per rank (plain BN), parameters are not
        assert torch.equal(rank0[key], rank1[key]), key


def test_ddp_mlp_matches_one_process_with_the_same_global_batch(ddp_trained):
    torch.manual_seed(0)
    model = build_model("mlp", backend="cnnext", num_classes=10, in_features=28 * 28, hidden=(32,))
    train = data.Loader(data.synthetic(n=96, seed=0), 32, shuffle=True, seed=0)
    test = data.Loader(data.synthetic(n=40, seed=1), 40)
    history = fit(model, train, test, TrainConfig(epochs=3, lr=0.05), progress=False)
    ddp = torch.load(ddp_trained / "rank0-mlp-params.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6, msg=key)  # float32 sum order
    ddp_history = torch.load(ddp_trained / "mlp-history.pt")
    for got, want in zip(ddp_history, history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)


def test_an_interrupted_ddp_run_resumes_to_the_same_history(ddp_trained, tmp_path):
    torchrun(str(HERE / "ddp_worker.py"), "train", str(tmp_path), "--stop-after-epoch", "1")
    first = torch.load(tmp_path / "mlp.pt", weights_only=False)  # the checkpoint after epoch 1
    assert first["format"] == "cnnext-checkpoint-1" and not (tmp_path / "mlp-history.pt").exists()
    torchrun(str(HERE / "ddp_worker.py"), "train", str(tmp_path))
    for name in ("mlp", "cnn"):
        resumed = torch.load(tmp_path / f"{name}-history.pt")
        straight = torch.load(ddp_trained / f"{name}-history.pt")
        assert untimed(resumed) == untimed(straight), name
        for rank in (0, 1):
            a = torch.load(tmp_path / f"rank{rank}-{name}-params.pt")
            b = torch.load(ddp_trained / f"rank{rank}-{name}-params.pt")
            assert all(torch.equal(a[k], b[k]) for k in a), (name, rank)


def test_cnnext_gradients_are_averaged_like_native_ones_in_both_layouts(tmp_path):
    done = torchrun(str(HERE / "ddp_worker.py"), "grads", str(tmp_path))
    assert "grad strides do not match" not in (done.stdout + done.stderr).lower()
    for layout in ("nchw", "channels_last"):
        native = torch.load(tmp_path / f"rank0-native-{layout}-grads.pt")
        for rank in (0, 1):
            ours = torch.load(tmp_path / f"rank{rank}-cnnext-{layout}-grads.pt")
            for key, value in native.items():
                torch.testing.assert_close(ours[key], value, rtol=1e-9, atol=1e-12, msg=f"{layout} {key}")
                assert ours[key].stride() == value.stride(), (layout, key)


def test_torch_compile_of_a_cnnext_model_under_ddp_matches_eager(tmp_path):
    torchrun(str(HERE / "ddp_worker.py"), "compile", str(tmp_path))
    losses = torch.load(tmp_path / "compile-losses.pt")
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)


def test_shards_then_report_only_give_the_results_of_one_sequential_run(tmp_path, one_process):
    out = ["--out", str(tmp_path)]
    for shard in ("0/2", "1/2"):
        done = study("--shard", shard, "--no-report", *out)
        assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "fc-vs-cnn").iterdir()
    assert not (folder / "REPORT.md").exists()
    done = study("--report-only", *out)
    assert done.returncode == 0 and (folder / "REPORT.md").exists(), done.stderr
    sharded, single = results_of(folder), results_of(one_process)
    assert set(sharded) == set(single)
    for run in single:
        assert untimed(sharded[run]["history"]) == untimed(single[run]["history"]), run
        assert sharded[run]["confusion"] == single[run]["confusion"]


def test_report_only_names_the_runs_not_finished(tmp_path):
    assert study("--shard", "1/3", "--no-report", "--out", str(tmp_path)).returncode == 0
    done = study("--report-only", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "2 run(s) not finished: MLP-seed0, ResNet-8-seed0" in done.stderr
    (report,) = tmp_path.glob("fc-vs-cnn/*/REPORT.md")
    assert "**Incomplete**: 2 run(s)" in report.read_text()


def test_list_runs_gives_each_run_its_index_and_state(tmp_path, capsys):
    assert study("--shard", "0/3", "--no-report", "--out", str(tmp_path)).returncode == 0
    assert cli.main([*STUDY, "--list-runs", "json", "--out", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["index"], r["run"], r["state"]) for r in listed["runs"]] == [
        (0, "MLP-seed0", "finished"),
        (1, "CNN-seed0", "new"),
        (2, "ResNet-8-seed0", "new"),
    ]
    assert cli.main([*STUDY, "--list-runs", "--out", str(tmp_path)]) == 0
    assert "   1  CNN-seed0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, message",
    [
        ("2/2", "the shard index must be in 0..1, got 2"),
        ("a/2", "expected I/N"),
        ("3", "give I/N, or N inside"),
    ],
)
def test_bad_shards_are_refused(value, message, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    with pytest.raises(SystemExit):
        cli.main([*STUDY, "--shard", value])
    assert message in capsys.readouterr().err


def test_a_slurm_array_index_picks_the_shard(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    assert cli._shard("3") == (1, 3)


def trained_by(outputs: list[str]) -> list[str]:
    return [line.split()[1] for text in outputs for line in text.splitlines() if line.startswith("training ")]


def test_two_workers_on_one_folder_train_every_run_exactly_once(tmp_path):
    command = [
        sys.executable,
        "-m",
        "experiments",
        *STUDY,
        "--seeds",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    workers = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outputs]
    trained = trained_by([o[0] for o in outputs])
    expected = {f"{m}-seed{s}" for m in ("MLP", "CNN", "ResNet-8") for s in (0, 1)}
    assert sorted(trained) == sorted(expected)  # each once, none lost
    assert all(len(trained_by([o[0]])) > 0 for o in outputs)  # both worked
    (folder,) = (tmp_path / "fc-vs-cnn").iterdir()
    results = results_of(folder)
    assert set(results) == expected and not list(folder.glob("runs/*/claim.json"))
    if any(r["co_scheduled"] for r in results.values()):
        assert "Timings are not comparable" in (folder / "REPORT.md").read_text()


def test_a_killed_workers_claim_is_taken_over_and_its_run_finished(tmp_path):
    slow = [*STUDY[:-1], "6", "--train-size", "600"]  # a few seconds per run: time to kill one
    command = [sys.executable, "-m", "experiments", *slow, "--no-progress", "--out", str(tmp_path)]
    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    claim = None

    def in_a_run(path):
        """A claim of the victim's run that has trained an epoch and not finished."""
        try:
            held = json.loads(path.read_text())["pid"] == victim.pid
        except (OSError, ValueError, KeyError):
            return False
        return (
            held and (path.parent / "metrics.jsonl").exists() and not (path.parent / "result.json").exists()
        )

    while time.time() < deadline and claim is None:
        for path in tmp_path.glob("fc-vs-cnn/*/runs/*/claim.json"):
            if not in_a_run(path):
                continue
            # Frozen first, then checked again: a run can finish between a look and a kill (an MLP
            # epoch on 600 samples takes milliseconds), and the test needs the kill mid-run.
            victim.send_signal(signal.SIGSTOP)
            if in_a_run(path):
                claim = path
                break
            victim.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    assert claim is not None, "the first worker never got into a run"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert claim.exists() and json.loads(claim.read_text())["pid"] == victim.pid
    finisher = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finisher.returncode == 0, finisher.stderr[-2000:]
    assert claim.parent.name in trained_by([finisher.stdout])
    result = json.loads((claim.parent / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == list(range(1, 7))  # resumed, not restarted short
    assert not claim.exists()


def test_the_report_says_when_timings_shared_a_host():
    results = [
        {"run": "A", "co_scheduled": 1, "ranks": 1, "host": "h1"},
        {"run": "B", "co_scheduled": 0, "host": "h2"},
    ]
    text = " ".join(scheduling_lines(results))
    assert "A trained while other workers ran on the same host" in text and "2 hosts (h1, h2)" in text
    assert scheduling_lines([{"run": "A", "co_scheduled": 0, "ranks": 1, "host": "h"}]) == []


def test_sync_bn_on_the_cpu_is_refused_before_anything_is_written(tmp_path, capsys):
    assert cli.main([*STUDY, "--sync-bn", "--device", "cpu", "--out", str(tmp_path / "r")]) == cli.EXIT_FAILED
    assert "sync_bn: SyncBatchNorm runs on CUDA only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
