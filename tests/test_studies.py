"""Every study of `python -m experiments` end to end on the synthetic set with tiny budgets: the
outputs exist, the report's numbers equal the metrics files' numbers, study sections render."""

import csv
import json
import re

import pytest

from experiments.cli import main
from experiments.studies import STUDIES

SMOKE = [
    "--dataset",
    "synthetic",
    "--train-size",
    "60",
    "--test-size",
    "30",
    "--epochs",
    "1",
    "--no-progress",
]


def run_study(name, root, *extra):
    assert main([name, *SMOKE, "--out", str(root), *extra]) == 0
    (folder,) = (root / name).iterdir()
    return folder


@pytest.mark.parametrize("name", [n for n in STUDIES if n != "fc-vs-cnn"])  # fc-vs-cnn: test_experiments.py
def test_study_writes_a_report_whose_numbers_are_the_metrics(name, tmp_path):
    folder = run_study(name, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    labels = [r["model"]["label"] for r in config["runs"]]
    report = (folder / "REPORT.md").read_text()
    rows = {row["model"]: row for row in csv.DictReader((folder / "summary.csv").open())}
    assert list(rows) == labels
    for run in config["runs"]:
        label = run["model"]["label"]
        result_file = folder / "runs" / f"{label}-seed0".replace(" ", "_") / "result.json"
        result = json.loads(result_file.read_text())
        assert result["backend"] == run["backend"]
        accuracy = 100 * result["test_accuracy"]
        assert float(rows[label]["test_accuracy_mean"]) == pytest.approx(accuracy, abs=1e-4)
        table_row = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \| 1 \| ([0-9,]+) \|", report, re.M)
        assert table_row, f"{name}: no table row for {label}"
        assert float(table_row[1]) == pytest.approx(accuracy, abs=0.005)
        assert int(table_row[2].replace(",", "")) == result["parameters"]
    assert "## Study details" in report
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (folder / image).stat().st_size > 1000, image


def test_custom_layers_pairs_backends_and_profiles(tmp_path):
    folder = run_study("custom-layers", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert {r["backend"] for r in config["runs"]} == {"native", "cnnext"}
    report = (folder / "REPORT.md").read_text()
    for base in ("CNN", "CNN+attention", "ResNet-8"):
        native = json.loads((folder / "runs" / f"{base}_(native)-seed0" / "result.json").read_text())
        ours = json.loads((folder / "runs" / f"{base}_(cnnext)-seed0" / "result.json").read_text())
        assert native["grad_norms_init"] == pytest.approx(ours["grad_norms_init"], rel=1e-3)  # same start
        assert ours["profile"] and any("cnnext::" in row["op"] for row in ours["profile"])
        assert not any("cnnext::" in row["op"] for row in native["profile"])
        assert re.search(rf"^\| {re.escape(base)} \| ", report, re.M)
    assert "Where a training step's time goes" in report


def test_profile_rows_name_the_kernel_the_time_belongs_to():
    """The premise of custom_layers.profiled_op, checked on this torch: under autograd a cnnext
    op's forward kernel time lands in the generated wrapper's row, not in cnnext::<op>'s."""
    import torch
    from torch.profiler import profile

    from cnnext import nn as cnn
    from experiments.studies.custom_layers import profiled_op

    assert profiled_op("GeneratedBackwardFor_cnnext_conv2d_default") == "`cnnext::conv2d` forward kernel"
    assert profiled_op("GeneratedBackwardFor_cnnext__max_pool2d_with_taps_defaultBackward") == (
        "`cnnext::_max_pool2d_with_taps` autograd node (Python)"
    )
    assert profiled_op("aten::native_batch_norm") == "`aten::native_batch_norm`"
    conv = cnn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(32, 32, 16, 16, requires_grad=True)
    conv(x)
    with profile() as prof:
        for _ in range(3):
            conv(x)
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    assert self_us["GeneratedBackwardFor_cnnext_conv2d_default"] > 5 * self_us["cnnext::conv2d"]


def test_depth_reports_gradient_ratios(tmp_path):
    folder = run_study("depth", tmp_path)
    report = (folder / "REPORT.md").read_text()
    assert "accuracy_vs_depth.png" in report and "gradient_norms_by_depth.png" in report
    for label in ("plain 2", "plain 6", "residual 2", "residual 6"):
        assert re.search(rf"^\| {label} \| [0-9.e+-]+ \| [0-9.e+-]+ \| ", report, re.M), label


# `all` (every study, one combined report, on two datasets): tests/test_reliability.py,
# test_two_dataset_all_report_links_each_picture_once_and_every_link_resolves.


def test_export_makes_a_self_contained_copy(tmp_path):
    from experiments.export import export

    folder = run_study("kernel-size", tmp_path / "results")
    copy = export(folder / "REPORT.md", tmp_path / "docs")
    text = copy.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.endswith(".png") and (copy.parent / link).exists() for link in links)
    assert "| CNN 3x3 |" in text
    assert not (tmp_path / "docs" / "records").exists()  # only with records=True


def test_exporting_again_removes_what_the_new_report_does_not_show(tmp_path):
    from experiments.export import export

    folder = run_study("kernel-size", tmp_path / "results")
    docs = tmp_path / "docs"
    # What an earlier export of another run id left, and what people keep beside it by hand.
    stale_pictures = docs / "kernel-size" / "synthetic-quick-cnnext-cpu-000000"
    stale_records = docs / "records" / "kernel-size" / "synthetic-quick-cnnext-cpu-000000"
    for path in (stale_pictures / "timing.png", stale_records / "config.json"):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"old")
    kept = [docs / "earlier-recipe" / "runs" / "result.json", docs / "earlier-recipe" / "plots" / "a.png"]
    for path in kept:
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    (docs / "earlier-recipe" / "README.md").write_text("notes")

    copy = export(folder / "REPORT.md", docs, records=True)
    assert not stale_pictures.exists() and not stale_records.exists()
    assert all(path.exists() for path in kept)  # a folder with a README is not a picture folder
    links = re.findall(r"\]\(([^)]+)\)", copy.read_text())
    assert links and all((docs / link).exists() for link in links)
    assert (docs / "records" / "kernel-size" / folder.name / "config.json").exists()


def _table(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| CNN ")]


def test_exported_records_rebuild_the_report_without_training(tmp_path):
    """What docs/<preset>-<dataset>/records is for: copied back under a results root, the runs are
    finished (nothing retrains, no checkpoint travels) and --report-only writes the same table."""
    import shutil

    from experiments.export import export

    folder = run_study("kernel-size", tmp_path / "results")
    export(folder / "REPORT.md", tmp_path / "docs", records=True)
    records = tmp_path / "docs" / "records" / "kernel-size" / folder.name
    assert (records / "config.json").exists()
    assert not list(records.rglob("checkpoint.pt"))
    assert sorted(p.name for p in (records / "runs").iterdir()) == sorted(
        p.name for p in (folder / "runs").iterdir()
    )
    shutil.copytree(tmp_path / "docs" / "records", tmp_path / "again")
    rebuilt = run_study("kernel-size", tmp_path / "again", "--report-only")
    assert rebuilt.name == folder.name
    assert _table((rebuilt / "REPORT.md").read_text()) == _table((folder / "REPORT.md").read_text())
    # Resuming from them: the same command finds every run finished and trains nothing.
    before = {p: p.read_bytes() for p in (rebuilt / "runs").rglob("result.json")}
    run_study("kernel-size", tmp_path / "again")
    assert {p: p.read_bytes() for p in (rebuilt / "runs").rglob("result.json")} == before
    assert not list((rebuilt / "runs").rglob("checkpoint.pt"))
