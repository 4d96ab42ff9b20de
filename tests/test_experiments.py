"""The experiment CLI end to end on the synthetic set: outputs exist and parse, the report's
numbers are the metrics' numbers, an interrupted study resumes to the same results, bad usage
fails clearly."""

import csv
import json
import re
import subprocess
import sys

import pytest

from experiments import runner
from experiments.cli import main

TIMING = {"epoch_seconds", "samples_per_second"}
# Tiny budget: every model of the study for 2 epochs on 100 synthetic images.
ARGS = [
    "fc-vs-cnn",
    "--dataset",
    "synthetic",
    "--train-size",
    "100",
    "--test-size",
    "50",
    "--epochs",
    "2",
    "--no-progress",
]


def run_dir(root):
    (folder,) = (root / "fc-vs-cnn").iterdir()
    return folder


def untimed(history):
    return [{k: v for k, v in epoch.items() if k not in TIMING} for epoch in history]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    assert main([*ARGS, "--out", str(root)]) == 0
    return run_dir(root)


def test_outputs_exist_and_parse(finished):
    config = json.loads((finished / "config.json").read_text())
    assert config["study"] == "fc-vs-cnn" and config["train_images"] == 100 and config["test_images"] == 50
    assert config["git_commit"] and config["torch"]
    labels = [r["model"]["label"] for r in config["runs"]]
    assert labels == ["MLP", "CNN", "ResNet-8"]
    for label in labels:
        run = finished / "runs" / f"{label}-seed0"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [1, 2]
        result = json.loads((run / "result.json").read_text())
        assert untimed(result["history"]) == untimed(metrics)
        assert sum(map(sum, result["confusion"])) == 50
        assert result["parameters"] > 0 and result["flops"] > 0 and result["inference_ms"] > 0
    for name in (
        "learning_curves",
        "accuracy_vs_parameters",
        "confusion_matrices",
        "gradient_norms",
        "timing",
    ):
        assert (finished / "plots" / f"{name}.png").stat().st_size > 1000
    assert not list(finished.rglob(".*tmp*")), "temporary files left behind"


def test_report_numbers_are_the_metrics_numbers(finished):
    report = (finished / "REPORT.md").read_text()
    rows = {row["model"]: row for row in csv.DictReader((finished / "summary.csv").open())}
    for label, row in rows.items():
        result = json.loads((finished / "runs" / f"{label}-seed0" / "result.json").read_text())
        assert float(row["test_accuracy_mean"]) == pytest.approx(100 * result["test_accuracy"], abs=1e-4)
        assert int(row["parameters"]) == result["parameters"]
        table_row = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \| 1 \| ([0-9,]+) \|", report, re.M)
        assert table_row, f"no table row for {label}"
        assert float(table_row[1]) == pytest.approx(100 * result["test_accuracy"], abs=0.005)
        assert int(table_row[2].replace(",", "")) == result["parameters"]
    assert "Ranking by mean final test accuracy" in report
    assert "with one seed per model the seed-to-seed spread is unknown" in report
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (finished / image).exists()


def test_interrupted_study_resumes_to_the_same_results(tmp_path, monkeypatch, finished):
    real_fit = runner.fit

    def fit_interrupted_in_cnn(model, train, test, cfg, checkpoint, progress, on_epoch):
        def stop_after_first_epoch(history):
            on_epoch(history)
            if "CNN" in str(checkpoint):
                raise KeyboardInterrupt

        return real_fit(
            model, train, test, cfg, checkpoint=checkpoint, progress=progress, on_epoch=stop_after_first_epoch
        )

    monkeypatch.setattr(runner, "fit", fit_interrupted_in_cnn)
    assert main([*ARGS, "--out", str(tmp_path)]) == 130
    folder = run_dir(tmp_path)
    assert (folder / "runs" / "MLP-seed0" / "result.json").exists()
    assert not (folder / "runs" / "CNN-seed0" / "result.json").exists()
    assert len((folder / "runs" / "CNN-seed0" / "metrics.jsonl").read_text().splitlines()) == 1
    mlp_written = (folder / "runs" / "MLP-seed0" / "result.json").stat().st_mtime_ns
    first_record = json.loads((folder / "config.json").read_text())
    assert "resumed" not in first_record

    monkeypatch.setattr(runner, "fit", real_fit)
    assert main([*ARGS, "--out", str(tmp_path)]) == 0
    assert folder.name == finished.name  # the same command finds the same run folder
    assert (folder / "runs" / "MLP-seed0" / "result.json").stat().st_mtime_ns == mlp_written  # not redone
    # The record keeps when and how the study began and lists the invocation that resumed it.
    record = json.loads((folder / "config.json").read_text())
    assert (record["started"], record["command"]) == (first_record["started"], first_record["command"])
    assert len(record["resumed"]) == 1 and record["resumed"][0]["started"] >= first_record["started"]
    for label in ("MLP", "CNN", "ResNet-8"):
        resumed = json.loads((folder / "runs" / f"{label}-seed0" / "result.json").read_text())
        straight = json.loads((finished / "runs" / f"{label}-seed0" / "result.json").read_text())
        assert untimed(resumed["history"]) == untimed(straight["history"]), label
        assert resumed["confusion"] == straight["confusion"]
        assert resumed["grad_norms_init"] == straight["grad_norms_init"]


def test_more_seeds_extend_the_same_run(tmp_path, finished):
    # seed 0 of every model copied from the finished study: only seed 1 has to train
    import shutil

    target = tmp_path / "fc-vs-cnn" / finished.name
    shutil.copytree(finished, target)
    assert main([*ARGS, "--out", str(tmp_path), "--seeds", "2"]) == 0
    assert sorted(p.name for p in (target / "runs").iterdir()) == sorted(
        f"{label}-seed{s}" for label in ("MLP", "CNN", "ResNet-8") for s in (0, 1)
    )
    report = (target / "REPORT.md").read_text()
    assert "2 seed(s)" in report and " ± " in report


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["fc-vs-cnn", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2
    assert "mnist not found under" in capsys.readouterr().err


def test_bad_usage(capsys):
    with pytest.raises(SystemExit):
        main(["fc-vs-cnn", "--preset", "huge"])
    with pytest.raises(SystemExit):
        main([*ARGS, "--seeds", "0"])
    assert "argument --seeds: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["all", "--task1-datasets", "mnist,imagenet"]) == 2
    assert "task1_datasets: unknown ['imagenet']" in capsys.readouterr().err
    assert main(["all", "--studies", "fc-vs-cnn,depht"]) == 2
    assert "studies: unknown ['depht']; choose from fc-vs-cnn, " in capsys.readouterr().err


def test_help_lists_the_studies():
    out = subprocess.run(
        [sys.executable, "-m", "experiments", "--help"], capture_output=True, text=True, check=True
    )
    assert "fc-vs-cnn" in out.stdout
