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
from experiments import cli, findings
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
    # q, k, v as permuted (N, heads, L, D) views of (N, heads, D, L) ones, as SelfAttention2d makes them
    "attention": lambda x: cnnext.ops.attention(*[x.flatten(2).unsqueeze(1).transpose(-1, -2)] * 3),
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


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiled_self_attention2d_forward_and_backward(layout):
    """Once "incorrect fake (aka meta) kernel": the fake of _attention_backward gave q's permuted
    strides to gradients the kernels return contiguous."""
    torch.manual_seed(0)
    module = cnnext.nn.SelfAttention2d(8, heads=2)
    module.gate.data.fill_(0.5)
    x = torch.randn(2, 8, 5, 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)

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


def test_all_on_chosen_studies_tests_their_claims_and_says_the_others_did_not_run(tmp_path):
    """`all --studies`: only those studies run; the combined report's claims table has a row per
    claim of the original study, verdicts for the ones these studies test, "not run" for the rest."""
    results = tmp_path / "results"
    args = ["all", "--dataset", "synthetic", "--studies", "kernel-size,residual-blocks", *SMOKE]
    assert cli.main([*args, "--out", str(results)]) == 0
    assert sorted(p.name for p in results.iterdir()) == ["all", "kernel-size", "residual-blocks"]
    (combined,) = (results / "all").iterdir()
    text = (combined / "REPORT.md").read_text()
    table = text.split("## The original study's claims, tested", 1)[1].split("## Conclusion", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| T")]
    assert len(rows) == len(findings.CLAIMS)
    for row in rows:
        tested = row.startswith(("| T2 kernel size", "| T3 residual blocks"))
        verdict = row.rsplit("| **", 1)[1].split("**", 1)[0]
        assert (verdict != "not run") == tested, row
        if tested:  # one seed per model (SMOKE): accuracy gaps untested, costs measured
            assert "kernel-size on synthetic: " in row or "residual-blocks on synthetic: " in row
    assert "| T1 MNIST | The FC net is acceptable but below the CNN. | fc-vs-cnn did not run on mnist" in (
        table
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


# --- 7. ops at the edges ------------------------------------------------------------------------

HUGE_WINDOWS = {
    "max-65536": (F.max_pool2d, cnnext.ops.max_pool2d, dict(kernel_size=65536, padding=32768)),
    "max-1x2^24": (F.max_pool2d, cnnext.ops.max_pool2d, dict(kernel_size=(1, 2**24), padding=(0, 2**23))),
    "max-stride1-ceil": (
        F.max_pool2d,
        cnnext.ops.max_pool2d,
        dict(kernel_size=(3, 4097), stride=1, padding=(1, 2048), ceil_mode=True),
    ),
    "avg-65536": (F.avg_pool2d, cnnext.ops.avg_pool2d, dict(kernel_size=65536, padding=32768)),
    "avg-stride1-include-pad": (
        F.avg_pool2d,
        cnnext.ops.avg_pool2d,
        dict(kernel_size=(3, 4097), stride=1, padding=(1, 2048)),
    ),
    "avg-stride1-exclude-pad": (
        F.avg_pool2d,
        cnnext.ops.avg_pool2d,
        dict(kernel_size=(4097, 3), stride=1, padding=(2048, 1), count_include_pad=False),
    ),
    "avg-divisor": (F.avg_pool2d, cnnext.ops.avg_pool2d, dict(kernel_size=9, padding=4, divisor_override=7)),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", list(HUGE_WINDOWS))
def test_windows_larger_than_the_input_are_served_like_native(case, layout):
    """Once a crash (kernel 2**32), std::bad_alloc (65536) or minutes of work (1 x 2**24): every
    window covers the whole input, which is one global reduction, answered as fast as native."""
    native_fn, ours_fn, args = HUGE_WINDOWS[case]
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(native_fn(x, **args))
    results = []
    for fn in (ours_fn, native_fn):
        leaf = x.clone().requires_grad_()
        out = fn(leaf, **args)
        results.append((out, torch.autograd.grad(out, leaf, grad)[0]))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_window_of_2_to_the_32_is_a_global_max_not_a_crash():
    x = torch.randn(1, 2, 4, 4)
    out, indices = cnnext.ops.max_pool2d(x, 2**32, padding=2**31, return_indices=True)
    torch.testing.assert_close(out, x.amax(dim=(2, 3), keepdim=True))
    assert torch.equal(indices, x.flatten(2).argmax(2).view(1, 2, 1, 1))
    # Called directly, the operator refuses such a window with a clear error instead.
    with pytest.raises(RuntimeError, match="window has more than 2\\^31 - 1 taps"):
        torch.ops.cnnext.max_pool2d(x, [2**32, 2**32], [1, 1], [2**31, 2**31], [1, 1], False)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: cnnext.ops.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), padding=2**62),
            "overflows",
        ),
        (
            lambda: torch.ops.cnnext.max_pool2d(
                torch.randn(1, 1, 4, 4), [3, 3], [1, 1], [1, 1], [2**62, 1], False
            ),
            "overflows",
        ),
    ],
    ids=["conv2d padding 2^62", "max_pool2d dilation 2^62"],
)
def test_size_arithmetic_overflow_is_a_clear_error(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


META = {
    "attention": lambda m: cnnext.ops.attention(torch.randn(1, 1, 2, 4), m(1, 1, 2, 4), m(1, 1, 2, 4)),
    "conv2d": lambda m: cnnext.ops.conv2d(torch.randn(1, 2, 5, 5), m(3, 2, 3, 3)),
    "max_pool2d backward": lambda m: torch.ops.cnnext._max_pool2d_backward(
        m(1, 1, 2, 2),
        torch.randn(1, 1, 4, 4),
        torch.zeros(1, 1, 2, 2, dtype=torch.long),
        [2, 2],
        [2, 2],
        [0, 0],
        [1, 1],
        False,
    ),
}


@pytest.mark.parametrize("op", list(META))
def test_a_meta_tensor_among_cpu_ones_is_a_device_error(op):
    """Once: uninitialised CPU memory returned as the result (the meta tensor routed the call to
    the fake impl). SDPA raises here too."""
    with pytest.raises(RuntimeError, match="to be on the device of .* got meta"):
        META[op](lambda *shape: torch.randn(*shape, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["query", "key"])
def test_nan_propagates_in_attention_as_in_sdpa_math_path(where, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (
        torch.randn(1, 2, 3, 4, dtype=dtype),
        torch.randn(1, 2, 70, 4, dtype=dtype),
        torch.randn(1, 2, 70, 4, dtype=dtype),
    )
    (q if where == "query" else k)[0, 1, 1, 2] = float("nan")
    with sdpa_kernel(SDPBackend.MATH):
        want = F.scaled_dot_product_attention(q, k, v)
    got = cnnext.ops.attention(q, k, v)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = ~torch.isnan(want)
    torch.testing.assert_close(got[finite], want[finite])


# --- 4. caches keyed on content ---------------------------------------------------------------


def _image_folder(root, images_per_class=2):
    from PIL import Image

    folder = root / "cifar-10-images" / "train"
    generator = torch.Generator().manual_seed(0)
    for c in ("airplane", "automobile"):
        (folder / c).mkdir(parents=True)
        for i in range(images_per_class):
            pixels = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8, generator=generator).numpy()
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
    return folder


def test_image_cache_follows_edits_and_moves_and_survives_damage(tmp_path, monkeypatch):
    from cnnext import data

    monkeypatch.setenv("CNNEXT_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "data")
    first = data.load("cifar10", train=True, root=tmp_path / "data")
    # Editing an image that is not the last one (the old key looked at the last file only).
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "airplane" / "0.png")
    edited = data.load("cifar10", train=True, root=tmp_path / "data")
    assert not torch.equal(edited.images, first.images) and edited.images[0, 0, 0, 0] == 255
    # Moving an image to another class changes the labels (file count and last file unchanged).
    (folder / "airplane" / "1.png").rename(folder / "automobile" / "1b.png")
    moved = data.load("cifar10", train=True, root=tmp_path / "data")
    assert moved.labels.tolist() == [0, 1, 1, 1]
    # A damaged cache entry is rebuilt, with a warning naming it.
    cache = max((tmp_path / "cache").glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)  # the current entry
    cache.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match=f"cache {re.escape(str(cache))} is damaged"):
        again = data.load("cifar10", train=True, root=tmp_path / "data")
    assert torch.equal(again.images, moved.images)


# --- 5. damaged files ---------------------------------------------------------------------------


@pytest.fixture
def trained_run(tmp_path):
    """A finished two-epoch fc-vs-cnn run (MLP only kept interesting) on the synthetic set."""
    args = ["fc-vs-cnn", "--dataset", "synthetic", *SMOKE, "--epochs", "2", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    (folder,) = (tmp_path / "fc-vs-cnn").iterdir()
    return args, folder, folder / "runs" / "MLP-seed0"


def test_a_bit_flipped_checkpoint_is_refused_naming_the_file(trained_run, capsys):
    args, _, run = trained_run
    checkpoint = run / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x10
    checkpoint.write_bytes(bytes(data))
    (run / "result.json").unlink()  # make the run resume from the checkpoint
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert f"checkpoint {checkpoint} cannot be used" in error and f"delete {checkpoint}" in error


def test_a_truncated_checkpoint_is_refused_naming_the_file(trained_run, capsys):
    args, _, run = trained_run
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    (run / "result.json").unlink()
    assert cli.main(args) == 2
    assert f"checkpoint {checkpoint} cannot be used" in capsys.readouterr().err


def test_an_empty_result_is_rebuilt_from_the_checkpoint(trained_run):
    args, folder, run = trained_run
    before = _strict_json(run / "result.json")
    (run / "result.json").write_text("")
    assert cli.main(args) == 0
    after = _strict_json(run / "result.json")
    assert after["test_accuracy"] == before["test_accuracy"] and len(after["history"]) == 2


def test_metrics_are_rederived_after_a_kill_between_checkpoint_and_metrics(trained_run):
    args, _, run = trained_run
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # as if killed before the last write
    (run / "result.json").unlink()
    (run / ".metrics.jsonl.tmp999999999").write_text("{")  # a killed writer's leftover
    assert cli.main(args) == 0
    assert len(metrics.read_text().splitlines()) == 2
    assert not list(run.glob(".*.tmp*"))


def test_a_full_disk_is_reported_as_such(tmp_path, monkeypatch):
    import shutil

    from cnnext._files import atomic_path

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match=r"no space left on the device while writing .*checkpoint.pt"):
        with atomic_path(tmp_path / "checkpoint.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("random", "is not a valid idx file: expected magic 2051"),
        ("truncated", "is damaged: its header announces 100 items"),
        ("labels", "holds 100 images but .* holds 60 labels"),
    ],
)
def test_damaged_mnist_files_are_named_with_the_way_out(tmp_path, damage, message, capsys):
    _write_fake_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if damage == "random":
        images.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-5])
    else:  # labels of another split: counts disagree
        (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 60) + bytes(60))
    args = [
        "fc-vs-cnn",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path),
        *SMOKE,
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and "replace the file" in error


def test_a_damaged_file_that_cannot_be_rebuilt_is_named_with_the_way_out(trained_run, capsys):
    args, _, run = trained_run
    (run / "grad_norms_init.json").write_text("{not json")
    (run / "result.json").unlink()
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert f"{run / 'grad_norms_init.json'} is damaged" in error and f"delete {run}" in error
