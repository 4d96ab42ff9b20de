"""Regression tests for the ways cnnext once gave a wrong answer without an error, or failed without
saying why (issue 15): second derivatives, compiled backward passes on permuted inputs, diverged
runs, CLI values of 0, and reports that showed another dataset's pictures. Each test failed on the
code before its fix."""

import csv
import dataclasses
import json
import re
import struct

import pytest
import torch
import torch.nn.functional as F

import cnnext
from experiments import cli
from experiments.export import export
from experiments.studies import STUDIES

SMOKE = ["--train-size", "60", "--test-size", "30", "--epochs", "1", "--no-progress"]


# --- 1. second derivatives are real, never a silent zero ----------------------------------------

PENALTY_CASES = {
    "conv2d": (lambda x: cnnext.ops.conv2d(x, W, padding=1), lambda x: F.conv2d(x, W, padding=1)),
    "max_pool2d": (lambda x: cnnext.ops.max_pool2d(x * x, 3, 2, 1), lambda x: F.max_pool2d(x * x, 3, 2, 1)),
    "avg_pool2d": (lambda x: cnnext.ops.avg_pool2d(x * x, 3, 2, 1), lambda x: F.avg_pool2d(x * x, 3, 2, 1)),
    "adaptive_avg_pool2d": (
        lambda x: cnnext.ops.adaptive_avg_pool2d(x * x, 3),
        lambda x: F.adaptive_avg_pool2d(x * x, 3),
    ),
    # native SDPA's CPU kernel has no double backward at all; its math formula does
    "attention": (
        lambda x: cnnext.ops.attention(x.flatten(2), x.flatten(2), x.flatten(2)),
        lambda x: cnnext.ops.reference.attention(x.flatten(2), x.flatten(2), x.flatten(2)),
    ),
}
W = torch.randn(4, 3, 3, 3, dtype=torch.float64)


@pytest.mark.parametrize("op", list(PENALTY_CASES))
def test_gradient_penalty_second_derivative_matches_native(op):
    """d/dx of ||d out / d x||^2: needs the backward op's own derivative (once 0.0 for every op)."""
    ours_fn, native_fn = PENALTY_CASES[op]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)

    def penalty_gradient(fn):
        leaf = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(leaf).square().sum(), leaf, create_graph=True)
        return torch.autograd.grad(g.square().sum(), leaf)[0]

    ours, native = penalty_gradient(ours_fn), penalty_gradient(native_fn)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, native, rtol=1e-8, atol=1e-8)


# --- 2. compiled forward and backward on permuted and channels_last inputs -----------------------

COMPILED = {
    "conv2d": lambda x: cnnext.ops.conv2d(x, x.new_ones(5, 3, 3, 3), padding=1),
    "max_pool2d": lambda x: cnnext.ops.max_pool2d(x, 3, 2, 1),
    "avg_pool2d": lambda x: cnnext.ops.avg_pool2d(x, 2),
    "adaptive_avg_pool2d": lambda x: cnnext.ops.adaptive_avg_pool2d(x, 3),
    # q, k, v as permuted views, as SelfAttention2d makes them
    "attention": lambda x: cnnext.ops.attention(*[x.flatten(2).transpose(-1, -2)] * 3),
}


@pytest.mark.parametrize("layout", ["channels_last", "permuted"])
@pytest.mark.parametrize("op", list(COMPILED))
def test_compiled_forward_and_backward_match_eager(op, layout):
    fn = COMPILED[op]
    base = torch.randn(2, 8, 8, 3) if layout == "permuted" else torch.randn(2, 3, 8, 8)
    x = (
        base.permute(0, 3, 1, 2)
        if layout == "permuted"
        else base.contiguous(memory_format=torch.channels_last)
    )

    def run(f):  # forward (compiled or not), then the backward AOTAutograd compiled with it
        t = x.detach().requires_grad_()
        out = f(t)
        out.square().sum().backward()
        return out, t.grad

    compiled = torch.compile(lambda t: fn(t).square(), fullgraph=True, backend="inductor")
    got, want = run(lambda t: compiled(t).sqrt()), run(lambda t: fn(t).square().sqrt())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compiled_self_attention2d_forward_and_backward():
    torch.manual_seed(0)
    module = cnnext.nn.SelfAttention2d(8, heads=2)
    module.gate.data.fill_(0.5)
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)

    def run(f):
        module.zero_grad()
        t = x.detach().requires_grad_()
        out = f(t)
        out.square().sum().backward()
        return [out, t.grad, *[p.grad.clone() for p in module.parameters()]]

    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    for got, want in zip(run(compiled), run(module), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --- 3. diverged runs --------------------------------------------------------------------------


def _strict_json(path):
    def forbid(token):
        raise AssertionError(f"{path} holds the non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=forbid)


def test_a_diverged_run_is_marked_and_left_out_of_the_conclusions(tmp_path, monkeypatch):
    study = STUDIES["fc-vs-cnn"]

    def exploding(dataset):  # the quick preset with the MLP's learning rate at 1e6
        preset = study.preset("quick", dataset)
        mlp, *others = preset.models
        mlp = dataclasses.replace(mlp, train=dataclasses.replace(mlp.train, lr=1e6))
        return dataclasses.replace(preset, models=(mlp, *others))

    monkeypatch.setitem(STUDIES, "fc-vs-cnn", dataclasses.replace(study, presets={"quick": exploding}))
    args = ["fc-vs-cnn", "--dataset", "synthetic", *SMOKE, "--batch-size", "10", "--out", str(tmp_path)]
    assert cli.main(args) == cli.EXIT_DIVERGED
    (folder,) = (tmp_path / "fc-vs-cnn").iterdir()
    result = _strict_json(folder / "runs" / "MLP-seed0" / "result.json")
    assert result["diverged"]["epoch"] == 1 and "diverged in epoch 1" in result["diverged"]["message"]
    for path in folder.rglob("*.json*"):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=lambda t: pytest.fail(f"{path}: {t}"))
    report = (folder / "REPORT.md").read_text()
    assert "**MLP-seed0 diverged** in epoch 1" in report
    ranking = next(line for line in report.splitlines() if "Ranking by" in line)
    assert "MLP" not in ranking and "CNN" in ranking
    assert "| MLP |" not in report


def test_nan_weights_diverge_with_a_message_naming_the_epoch():
    from cnnext import data
    from cnnext.train import Diverged, TrainConfig, fit

    images = data.synthetic(n=64, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    loader = data.Loader(images, 32, shuffle=True, seed=0)
    with pytest.raises(Diverged, match=r"diverged in epoch 1: train loss nan.*no epoch before it"):
        fit(model, loader, data.Loader(images, 32), TrainConfig(epochs=2), progress=False)


# --- 6. CLI values are validated, never read as "unset" -------------------------------------------


@pytest.mark.parametrize("flag", ["--epochs", "--train-size", "--test-size", "--batch-size", "--seeds"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_zero_negative_and_non_integer_overrides_are_rejected(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["fc-vs-cnn", "--dataset", "synthetic", flag, value, "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- 8. every study x dataset has its own pictures ----------------------------------------------


def _write_fake_mnist(root, train_count=100, test_count=50):
    """A tiny MNIST in torchvision's layout (idx files), so that a test has a second dataset."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", train_count), ("t10k", test_count)):
        pixels = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.arange(count, dtype=torch.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, count, 28, 28) + pixels.numpy().tobytes()
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + labels.numpy().tobytes()
        )


def test_two_dataset_all_report_links_each_picture_once_and_every_link_resolves(tmp_path):
    """`all` with Task 1 on two datasets: every study runs, one combined report whose numbers are
    the studies' own; no two sections link the same picture, in the report or its export."""
    _write_fake_mnist(tmp_path / "data")
    args = ["all", "--dataset", "synthetic", "--task1-datasets", "synthetic,mnist", *SMOKE]
    results = tmp_path / "results"
    assert cli.main([*args, "--data-dir", str(tmp_path / "data"), "--out", str(results)]) == 0
    assert sorted(p.name for p in results.iterdir()) == sorted([*STUDIES, "all"])
    (combined,) = (results / "all").iterdir()
    text = (combined / "REPORT.md").read_text()
    for heading in ("## Task 1", "## Task 2", "## Task 3", "## Conclusion", "### fc-vs-cnn on mnist"):
        assert heading in text, heading
    for name in STUDIES:
        assert f"### {name} on synthetic" in text, name
        for folder in (results / name).iterdir():  # the combined report's numbers are the studies' own
            for row in csv.DictReader((folder / "summary.csv").open()):
                assert f"| {row['model']} | {float(row['test_accuracy_mean']):.2f} | " in text
    conclusion = text.split("## Conclusion", 1)[1]
    assert (
        all(f"- {name} (synthetic): " in conclusion for name in STUDIES)
        and "- fc-vs-cnn (mnist): " in conclusion
    )
    for report in (combined / "REPORT.md", export(combined / "REPORT.md", tmp_path / "docs")):
        text = report.read_text()
        links = re.findall(r"\]\(([^)]+)\)", text)
        assert links and all((report.parent / link).exists() for link in links), "a broken link"
        images = [link for link in links if link.endswith(".png")]
        assert images and len(images) == len(set(images)), "two sections link the same picture"
    # The pictures say what they show: study, dataset and preset title each one (and its metadata).
    from PIL import Image

    for dataset in ("synthetic", "mnist"):
        (folder,) = (tmp_path / "results" / "fc-vs-cnn").glob(f"{dataset}-quick-*")
        for picture in (folder / "plots").glob("*.png"):
            with Image.open(picture) as image:
                assert image.text.get("Title") == f"fc-vs-cnn · {dataset} · quick preset", picture
