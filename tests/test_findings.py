"""The original study's claims tested against a run's numbers (experiments/findings.py): the gap
test against the seed-to-seed spread, the verdict rules, and the table of the combined report."""

import pytest

from experiments import findings
from experiments.report import conclusions, summarize


def _runs(label, family, accuracies, config=None, *, parameters=1000, flops=10**6, train_gap=0.0, wobble=0.0):
    """result.json-like dicts of one model, one per seed, with what the claims read; the last three
    epochs' test accuracies move by +-wobble points."""
    runs = []
    for seed, accuracy in enumerate(accuracies):
        history = [
            {"test_accuracy": (accuracy + w) / 100, "train_accuracy": (accuracy + train_gap) / 100}
            for w in (-wobble, wobble, 0.0)
        ]
        runs.append(
            {
                "run": f"{label}-seed{seed}",
                "spec": {"model": {"label": label, "family": family, "config": config or {}}},
                "test_accuracy": accuracy / 100,
                "parameters": parameters,
                "flops": flops,
                "epoch_seconds": 1.0,
                "history": history,
            }
        )
    return runs


BOTTLENECK = {"depth": 20, "block": "bottleneck"}


def _models(*groups):
    return summarize([run for group in groups for run in group])


def _by_label(models):
    return {m.label: m for m in models}


def test_a_gap_counts_only_beyond_the_seed_spread():
    m = _by_label(
        _models(
            _runs("A", "cnn", [99.0, 99.1, 99.2]),
            _runs("B", "cnn", [98.0, 98.1, 98.2]),
            _runs("C", "cnn", [98.9, 99.3, 98.8]),
            _runs("one", "cnn", [97.0]),
            _runs("other", "cnn", [99.0]),
        )
    )
    assert findings.more_accurate(m["A"], m["B"]).holds is True
    assert findings.more_accurate(m["B"], m["A"]).holds is False
    assert findings.more_accurate(m["A"], m["C"]).holds is None  # within the spread
    assert findings.as_accurate(m["A"], m["C"]).holds is True
    assert findings.as_accurate(m["A"], m["B"]).holds is False
    assert findings.more_accurate(m["one"], m["other"]).holds is None  # one seed each: untested
    # One seed against three: compared with the three's prediction interval (t(2) = 4.30,
    # std 0.1 -> +-0.50 points): 2 points below is beyond it, 0.3 is not.
    assert findings.more_accurate(m["A"], m["one"]).holds is True
    near = _by_label(_models(_runs("near", "cnn", [98.8]), _runs("A", "cnn", [99.0, 99.1, 99.2])))
    assert findings.more_accurate(near["A"], near["near"]).holds is None


def test_a_claim_is_refuted_by_any_failing_part_and_confirmed_only_by_all():
    assert findings.verdict([findings.Part("a", True), findings.Part("b", True)]) == "confirmed"
    assert findings.verdict([findings.Part("a", True), findings.Part("b", None)]) == "inconclusive"
    assert findings.verdict([findings.Part("a", None), findings.Part("b", False)]) == "refuted"
    assert findings.verdict([]) == "inconclusive"


def _task1(fc, cnn, res, fc_parameters=500_000, cnn_parameters=24_000, gaps=(0.5, 0.1, 0.0)):
    """fc-vs-cnn's three models; gaps: their train - test accuracy (points)."""
    return _models(
        _runs("MLP", "mlp", fc, parameters=fc_parameters, train_gap=gaps[0]),
        _runs("CNN", "cnn", cnn, parameters=cnn_parameters, train_gap=gaps[1]),
        _runs("ResNet-8", "resnet", res, parameters=75_000, train_gap=gaps[2]),
    )


def test_task1_mnist_claims_get_verdicts_from_the_numbers():
    confirmed = _task1([98.0, 98.1, 98.2], [99.3, 99.35, 99.4], [99.6, 99.65, 99.7])
    rows = findings.claims_for("mnist", {("fc-vs-cnn", "mnist"): confirmed})
    mnist = [(claim.statement, verdict) for claim, verdict, on, _ in rows if claim.task == "T1 MNIST"]
    assert [v for _, v in mnist] == ["confirmed"] * 3
    # The FC net ahead of the CNN: the "below the CNN" and "more accurate" claims are refuted.
    refuted = _task1([99.5, 99.6, 99.55], [99.0, 99.1, 99.05], [99.6, 99.65, 99.7])
    rows = findings.claims_for("mnist", {("fc-vs-cnn", "mnist"): refuted})
    verdicts = [v for claim, v, _, _ in rows if claim.task == "T1 MNIST"]
    assert verdicts == ["refuted", "refuted", "confirmed"]
    # One seed each: nothing about accuracy can be decided.
    single = _task1([98.0], [99.3], [99.6])
    rows = findings.claims_for("mnist", {("fc-vs-cnn", "mnist"): single})
    assert {v for claim, v, _, _ in rows if claim.task == "T1 MNIST"} == {"inconclusive"}


def test_claims_of_studies_or_datasets_not_run_say_so_and_the_table_has_a_row_per_claim():
    cifar = _task1([50.0, 51.0, 50.5], [70.0, 70.5, 71.0], [88.0], 1_700_000, 95_000, gaps=(8.0, 2.0, 5.0))
    models = {("fc-vs-cnn", "cifar10"): cifar}
    rows = findings.claims_for("cifar10", models)
    assert len(rows) == len(findings.CLAIMS)
    by_task = {}
    for claim, verdict, on, _ in rows:
        by_task.setdefault(claim.task, []).append((verdict, on))
    assert by_task["T1 MNIST"] == [("not run", None)] * 3
    assert all(v == "not run" for v, _ in by_task["T2 depth"] + by_task["T3 residual blocks"])
    # CIFAR-10: the FC net over-fits more (train - test 8.0 vs 2.0) and is far below the CNN;
    # the residual net's one seed is far above the CNN's prediction interval (t(2) 4.30 x std 0.5
    # x sqrt(4/3) = 2.5 points) but its train - test gap (5.0) is larger: "generalises better" fails.
    assert [v for v, _ in by_task["T1 CIFAR-10"]] == ["confirmed", "confirmed", "refuted"]
    section = "\n".join(findings.findings_section("cifar10", models))
    assert section.count("\n| T") == len(findings.CLAIMS)
    assert "fc-vs-cnn did not run on mnist here" in section and "**refuted**" in section


def test_the_residual_generalises_better_part_reads_the_train_test_gap():
    models = _task1([50.0, 51.0, 50.5], [70.0, 70.5, 71.0], [88.0, 88.5, 88.2], gaps=(8.0, 2.0, 0.0))
    cnn = _by_label(models)["CNN"]
    res = _by_label(models)["ResNet-8"]
    part = findings.less("train − test accuracy (points)", res, cnn, findings.generalisation_gap, "+.2f")
    assert part.holds is True and "ResNet-8 +0.00 vs CNN +2.00" in part.text


def _with_curves(label, curves):
    """One run per test-accuracy curve (points per epoch)."""
    runs = _runs(label, "resnet", [curve[-1] for curve in curves], {"depth": 14})
    for run, curve in zip(runs, curves, strict=True):
        run["history"] = [{"test_accuracy": a / 100, "train_accuracy": a / 100} for a in curve]
        run.update(confusion=[[1, 0], [0, 1]], classes=["a", "b"])  # conclusions() reads these too
    return runs


def test_stability_reads_falls_in_the_second_half_not_the_climb():
    (climbing, slow, falling) = _models(
        _with_curves("climbing", [[40, 60, 70, 75], [40, 55, 70, 80]]),  # steep but steady
        _with_curves("slow", [[40, 42, 43, 44], [40, 41, 42, 43]]),
        # falls of 3 and 1 in the second half (the 10-point fall in the first half does not count)
        _with_curves("falling", [[50, 40, 70, 67], [50, 40, 70, 69]]),
    )
    assert climbing.late_fall == slow.late_fall == 0.0
    assert falling.late_fall == pytest.approx(2.0)
    (line,) = [line for line in conclusions([climbing, slow, falling]) if line.startswith("Stability")]
    assert "climbing 0.00, slow 0.00, falling 2.00; steadiest: climbing and slow." in line
    (line,) = [line for line in conclusions([climbing, slow]) if line.startswith("Stability")]
    assert line.endswith("climbing 0.00, slow 0.00; all alike.")


@pytest.mark.parametrize(
    "stds, wobbles, expected",
    [
        ((0.05, 0.3, 0.3), (0.0, 0.5, 0.5), "confirmed"),  # steadier on both counts
        ((0.5, 0.1, 0.1), (0.5, 0.1, 0.1), "refuted"),  # less steady on both
        ((0.2, 0.1, 0.3), (0.1, 0.1, 0.1), "inconclusive"),  # between the two; ties
    ],
)
def test_the_wide_block_stability_claim_compares_spreads(stds, wobbles, expected):
    def seeds(mean, std):
        return [mean - std, mean, mean + std]

    models = _models(
        _runs("WRN", "wrn", seeds(90, stds[0]), {"depth": 16, "widen": 1}, wobble=wobbles[0]),
        _runs("basic", "resnet", seeds(90, stds[1]), {"depth": 14}, wobble=wobbles[1]),
        _runs("bottle", "resnet", seeds(90, stds[2]), BOTTLENECK, wobble=wobbles[2]),
    )
    rows = findings.claims_for("mnist", {("residual-blocks", "mnist"): models})
    (wide,) = [v for claim, v, _, _ in rows if claim.statement.startswith("The wide block")]
    assert wide == expected


@pytest.mark.parametrize(
    "wide_kernels, expected",
    [
        ((99.0, 99.05), "confirmed"),  # as accurate as 3x3 (within the spread) at more compute
        ((99.6, 99.0), "refuted"),  # 5x5 beyond the spread: 3x3 is not the best balance
        ((None, None), "inconclusive"),  # one seed of each: untested
    ],
)
def test_the_3x3_balance_claim_holds_when_no_wider_kernel_is_clearly_more_accurate(wide_kernels, expected):
    def seeds(mean):
        return [mean - 0.1, mean, mean + 0.1] if mean is not None else [99.0]

    k3 = [99.0] if wide_kernels[0] is None else seeds(99.0)
    models = _models(
        _runs("CNN 3x3", "cnn", k3, flops=1),
        _runs("CNN 5x5", "cnn", seeds(wide_kernels[0]), flops=3),
        _runs("CNN 7x7", "cnn", seeds(wide_kernels[1]), flops=5),
        _runs("CNN 1x1+3x3", "cnn", k3, flops=1),
    )
    rows = findings.claims_for("mnist", {("kernel-size", "mnist"): models})
    (balance,) = [v for claim, v, _, _ in rows if claim.statement.startswith("3x3")]
    assert balance == expected
