"""The original study's claims, each tested against one combined run's numbers.

Every claim is split into parts a measurement can decide; each part gets an outcome from the
numbers alone:

- accuracy differences ("A is more accurate than B", "A matches B") by the gap against the
  seed-to-seed spread: a gap counts when it exceeds the sum of the two seed stds and two standard
  errors (report.compare's rule). With one seed of one model and three or more of the other, the
  one-seed run is compared with the other's prediction interval (the spread of a single new seed
  of that model, t quantile at 95%), assuming both models vary alike from seed to seed; with one
  seed on both sides nothing is tested.
- costs (parameters, multiply-adds, seconds per epoch) and gradient ratios directly.

A claim is confirmed when every part is, refuted when any part is refuted, inconclusive otherwise
(a gap within the spread, or too few seeds), and "not run" when its study is not in the report.
The verdicts are never written by hand: findings_section turns the results into the table.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from .report import ModelSummary

__all__ = ["Part", "claims_for", "findings_section"]

CONFIRMED, REFUTED, INCONCLUSIVE, NOT_RUN = "confirmed", "refuted", "inconclusive", "not run"

# Two-sided 95% quantiles of Student's t by degrees of freedom (a prediction interval for one more
# seed of a model measured on n seeds has n - 1).
_T95 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Part:
    """One measurable piece of a claim: what was measured, and True (holds), False (fails) or None
    (cannot tell)."""

    text: str
    holds: bool | None


def _gap_counts(a: ModelSummary, b: ModelSummary) -> bool | None:
    """Whether the accuracy gap between a and b exceeds the seed-to-seed spread (None: too few
    seeds to tell)."""
    gap = abs(a.accuracy - b.accuracy)
    if a.seeds >= 2 and b.seeds >= 2:
        se = math.sqrt(a.accuracy_std**2 / a.seeds + b.accuracy_std**2 / b.seeds)
        return gap > a.accuracy_std + b.accuracy_std and (se == 0 or gap / se > 2)
    single, several = (a, b) if a.seeds == 1 else (b, a)
    if single.seeds == 1 and several.seeds >= 3:
        t = _T95.get(several.seeds - 1, 1.96)
        return gap > t * several.accuracy_std * math.sqrt(1 + 1 / several.seeds)
    return None


def _seeds(m: ModelSummary) -> str:
    return f"{m.seeds} seed{'s' if m.seeds > 1 else ''}"


def _acc(m: ModelSummary) -> str:
    std = f" ± {m.accuracy_std:.2f}" if m.seeds > 1 else ""
    return f"{m.label} {m.accuracy:.2f}%{std} ({_seeds(m)})"


def more_accurate(a: ModelSummary, b: ModelSummary) -> Part:
    """a is more accurate than b."""
    counts = _gap_counts(a, b)
    gap = a.accuracy - b.accuracy
    if counts is None:
        holds, how = None, "too few seeds to test the gap"
    elif not counts:
        holds, how = None, "gap within the seed-to-seed spread"
    else:
        holds, how = gap > 0, "gap beyond the seed-to-seed spread"
    return Part(f"{_acc(a)} vs {_acc(b)}: {gap:+.2f} points, {how}", holds)


def as_accurate(a: ModelSummary, b: ModelSummary) -> Part:
    """a is as accurate as b (no gap beyond the spread)."""
    counts = _gap_counts(a, b)
    gap = a.accuracy - b.accuracy
    if counts is None:
        return Part(f"{_acc(a)} vs {_acc(b)}: {gap:+.2f} points, too few seeds to test the gap", None)
    how = "beyond" if counts else "within"
    return Part(f"{_acc(a)} vs {_acc(b)}: {gap:+.2f} points, {how} the seed-to-seed spread", not counts)


Measure = Callable[[ModelSummary], float]


def less(what: str, a: ModelSummary, b: ModelSummary, value: Measure, fmt: str) -> Part:
    """a's `what` (value(m), written with format `fmt`) is smaller than b's."""
    va, vb = value(a), value(b)
    return Part(f"{what}: {a.label} {va:{fmt}} vs {b.label} {vb:{fmt}}", va < vb)


def parameters(m: ModelSummary) -> float:
    return m.parameters


def flops(m: ModelSummary) -> float:
    return m.flops


def epoch_seconds(m: ModelSummary) -> float:
    return m.epoch_seconds


def generalisation_gap(m: ModelSummary) -> float:
    return m.generalisation_gap


def verdict(parts: list[Part]) -> str:
    if any(p.holds is False for p in parts):
        return REFUTED
    if parts and all(p.holds is True for p in parts):
        return CONFIRMED
    return INCONCLUSIVE


@dataclass(frozen=True)
class Claim:
    task: str
    statement: str
    study: str  # the study whose models test it
    datasets: tuple[str, ...] | None  # the datasets it is about; None: the report's own dataset
    test: Callable[[dict[str, list[ModelSummary]]], list[Part]]  # study name -> its models


# ---- How each study's models are found (labels differ between presets; roles do not).


def _family(models: list[ModelSummary], family: str, **config) -> ModelSummary:
    for m in models:
        spec = m.runs[0]["spec"]["model"]
        if spec["family"] == family and all(spec["config"].get(k) == v for k, v in config.items()):
            return m
    raise LookupError(f"no {family} model with {config}")


def _label(models: list[ModelSummary], label: str) -> ModelSummary:
    for m in models:
        if m.label == label:
            return m
    raise LookupError(f"no model {label!r}")


def _fc_cnn_res(models):
    return _family(models, "mlp"), _family(models, "cnn"), _family(models, "resnet")


def _t1_mnist_fc(models):
    fc, cnn, _ = _fc_cnn_res(models["fc-vs-cnn"])
    return [Part(f"{_acc(fc)}: acceptable means >= 97%", fc.accuracy >= 97), more_accurate(cnn, fc)]


def _t1_mnist_cnn(models):
    fc, cnn, _ = _fc_cnn_res(models["fc-vs-cnn"])
    return [more_accurate(cnn, fc), less("parameters", cnn, fc, parameters, ",.0f")]


def _t1_residual(models):
    _, cnn, res = _fc_cnn_res(models["fc-vs-cnn"])
    return [more_accurate(res, cnn)]


def _t1_cifar_fc(models):
    fc, cnn, _ = _fc_cnn_res(models["fc-vs-cnn"])
    return [
        more_accurate(cnn, fc),
        less("train − test accuracy (points, over-fitting)", cnn, fc, generalisation_gap, "+.2f"),
    ]


def _t1_cifar_cnn(models):
    fc, cnn, res = _fc_cnn_res(models["fc-vs-cnn"])
    return [more_accurate(cnn, fc), more_accurate(res, cnn)]


def _t1_cifar_residual(models):
    _, cnn, res = _fc_cnn_res(models["fc-vs-cnn"])
    return [
        more_accurate(res, cnn),
        less("train − test accuracy (points)", res, cnn, generalisation_gap, "+.2f"),
    ]


def _kernels(models):
    ms = models["kernel-size"]
    return (_label(ms, "CNN 3x3"), _label(ms, "CNN 5x5"), _label(ms, "CNN 7x7"), _label(ms, "CNN 1x1+3x3"))


def _t2_balance(models):
    k3, k5, k7, _ = _kernels(models)
    parts = [less("multiply-adds", k3, k, flops, ",.0f") for k in (k5, k7)]
    for k in (k5, k7):  # holds unless the wider kernel is more accurate beyond the seed spread
        tested = more_accurate(k, k3)
        counts = _gap_counts(k, k3)
        parts.append(Part(tested.text, None if counts is None else not (counts and k.accuracy > k3.accuracy)))
    return parts


def _t2_wide_kernels(models):
    k3, k5, k7, _ = _kernels(models)
    parts = [less("s / epoch", k3, k, epoch_seconds, ".1f") for k in (k5, k7)]
    worse = [more_accurate(k3, k) for k in (k5, k7)]
    sometimes = (
        True
        if any(p.holds is True for p in worse)
        else False
        if all(p.holds is False for p in worse)
        else None
    )
    return [*parts, Part("sometimes worse: " + "; ".join(p.text for p in worse), sometimes)]


def _t2_factorised(models):
    k3, _, _, factorised = _kernels(models)
    return [less("parameters", factorised, k3, parameters, ",.0f"), as_accurate(factorised, k3)]


def _depth_of(m: ModelSummary) -> int:
    return m.runs[0]["spec"]["model"]["config"]["depth"]


def _by_kind(models, kind: str) -> list[ModelSummary]:
    return sorted((m for m in models["depth"] if m.label.startswith(kind)), key=_depth_of)


def _first_to_last(m: ModelSummary) -> float:
    """First conv layer's gradient norm at initialisation over the classifier's (seed 0)."""
    run = m.runs[0]
    norms = run["grad_norms_init"]
    layers = [w for w in run["layer_weights"] if w in norms]
    return norms[layers[0]] / max(norms[layers[-1]], 1e-30)


def _t2_shallow(models):
    plain = _by_kind(models, "plain")
    shallow, deep = plain[0], [m for m in plain if _depth_of(m) >= 6]
    best = max(deep, key=lambda m: m.accuracy)
    return [less("s / epoch", shallow, best, epoch_seconds, ".1f"), more_accurate(best, shallow)]


def _t2_vanishing(models):
    plain, residual = _by_kind(models, "plain"), _by_kind(models, "residual")
    shallow, deepest, res_deepest = plain[0], plain[-1], residual[-1]
    best = max((m for m in plain if _depth_of(m) >= 6), key=lambda m: m.accuracy)
    ratio = _first_to_last(deepest) / _first_to_last(shallow)
    return [
        more_accurate(best, shallow),
        Part(
            f"first/last gradient ratio at initialisation: {deepest.label} {_first_to_last(deepest):.3g}, "
            f"{shallow.label} {_first_to_last(shallow):.3g} (vanishing: below a tenth of it)",
            ratio < 0.1,
        ),
        Part(
            f"... {res_deepest.label} {_first_to_last(res_deepest):.3g} (above {deepest.label}'s)",
            _first_to_last(res_deepest) > _first_to_last(deepest),
        ),
    ]


def _t2_residual(models):
    plain, residual = _by_kind(models, "plain"), _by_kind(models, "residual")
    return [more_accurate(residual[-1], plain[-1])]


def _t3_parity(models):
    ms = models["custom-layers"]
    parts = []
    for native in (m for m in ms if m.label.endswith("(native)")):
        ours = _label(ms, native.label.replace("(native)", "(cnnext)"))
        tested = as_accurate(ours, native)
        speed = native.epoch_seconds / ours.epoch_seconds
        parts.append(Part(f"{tested.text}; cnnext trains at {speed:.2f}x native's speed", tested.holds))
    return parts


def _blocks(models):
    ms = models["residual-blocks"]
    basic = next(
        m
        for m in ms
        if m.runs[0]["spec"]["model"]["family"] == "resnet"
        and m.runs[0]["spec"]["model"]["config"].get("block", "basic") == "basic"
    )
    return basic, _family(ms, "resnet", block="bottleneck"), _family(ms, "wrn")


def _per_layer(m: ModelSummary) -> float:
    return m.parameters / _depth_of(m)


def _t3_basic(models):
    basic, bottleneck, _ = _blocks(models)
    return [less("parameters per layer", bottleneck, basic, _per_layer, ",.0f")]


def _t3_bottleneck(models):
    basic, bottleneck, _ = _blocks(models)
    return [less("multiply-adds", bottleneck, basic, flops, ",.0f"), as_accurate(bottleneck, basic)]


def _t3_wide(models):
    basic, bottleneck, wide = _blocks(models)
    if min(m.seeds for m in (basic, bottleneck, wide)) < 3:
        return [Part("seed-to-seed spread needs three seeds of each model", None)]
    parts = []
    for what, value in (
        ("seed-to-seed std (points)", lambda m: m.accuracy_std),
        ("largest epoch-to-epoch fall of the test accuracy, second half (points)", lambda m: m.late_fall),
    ):
        smaller = [value(wide) < value(m) for m in (basic, bottleneck)]
        larger = [value(wide) > value(m) for m in (basic, bottleneck)]
        holds = True if all(smaller) else False if all(larger) else None
        values = ", ".join(f"{m.label} {value(m):.2f}" for m in (wide, basic, bottleneck))
        parts.append(Part(f"{what}: {values}", holds))
    return parts


CLAIMS = (
    Claim("T1 MNIST", "The FC net is acceptable but below the CNN.", "fc-vs-cnn", ("mnist",), _t1_mnist_fc),
    Claim(
        "T1 MNIST",
        "The simple CNN is more accurate with fewer parameters.",
        "fc-vs-cnn",
        ("mnist",),
        _t1_mnist_cnn,
    ),
    Claim("T1 MNIST", "The residual CNN improves further.", "fc-vs-cnn", ("mnist",), _t1_residual),
    Claim("T1 CIFAR-10", "The FC net is weak and over-fits.", "fc-vs-cnn", ("cifar10",), _t1_cifar_fc),
    Claim(
        "T1 CIFAR-10",
        "The simple CNN is better, but not enough.",
        "fc-vs-cnn",
        ("cifar10",),
        _t1_cifar_cnn,
    ),
    Claim(
        "T1 CIFAR-10",
        "The residual CNN is clearly more accurate and generalises better.",
        "fc-vs-cnn",
        ("cifar10",),
        _t1_cifar_residual,
    ),
    Claim("T2 kernel size", "3x3 is the best accuracy / compute balance.", "kernel-size", None, _t2_balance),
    Claim(
        "T2 kernel size",
        "5x5 and 7x7 train slower and are sometimes worse.",
        "kernel-size",
        None,
        _t2_wide_kernels,
    ),
    Claim("T2 kernel size", "1x1+3x3 cuts parameters at equal quality.", "kernel-size", None, _t2_factorised),
    Claim("T2 depth", "2-layer nets are fast but less accurate.", "depth", None, _t2_shallow),
    Claim(
        "T2 depth",
        "Deeper (6+) nets are better, but without residual connections suffer vanishing gradients.",
        "depth",
        None,
        _t2_vanishing,
    ),
    Claim(
        "T2 depth",
        "Residual connections let deep nets train and improve accuracy.",
        "depth",
        None,
        _t2_residual,
    ),
    Claim(
        "T3 custom layers",
        "cnnext's own convolution, attention and pooling layers train like native ones (parity), at "
        "the stated speed.",
        "custom-layers",
        None,
        _t3_parity,
    ),
    Claim(
        "T3 residual blocks",
        "The basic block adds parameters (it helps deep nets train: T2 depth's last claim).",
        "residual-blocks",
        None,
        _t3_basic,
    ),
    Claim(
        "T3 residual blocks",
        "The bottleneck block cuts compute at equal accuracy.",
        "residual-blocks",
        None,
        _t3_bottleneck,
    ),
    Claim(
        "T3 residual blocks",
        "The wide block improves stability (smaller seed-to-seed and epoch-to-epoch spread).",
        "residual-blocks",
        None,
        _t3_wide,
    ),
)


def claims_for(
    dataset: str, models: dict[tuple[str, str], list[ModelSummary]]
) -> list[tuple[Claim, str, str | None, list[Part]]]:
    """(claim, verdict, dataset tested on, parts) for every claim; `models`: (study name, dataset)
    -> its summarised models. Claims about one dataset (Task 1) are tested on it, the others on the
    report's own `dataset`; a claim whose study did not run there is "not run"."""
    rows = []
    for claim in CLAIMS:
        wanted = claim.datasets or (dataset,)
        on = next((d for d in wanted if (claim.study, d) in models), None)
        if on is None:
            rows.append((claim, NOT_RUN, None, []))
            continue
        try:
            parts = claim.test({claim.study: models[(claim.study, on)]})
        except (LookupError, StopIteration, ValueError, ZeroDivisionError) as error:  # a model missing
            rows.append((claim, INCONCLUSIVE, on, [Part(f"cannot be measured here: {error}", None)]))
            continue
        rows.append((claim, verdict(parts), on, parts))
    return rows


def findings_section(dataset: str, models: dict[tuple[str, str], list[ModelSummary]]) -> list[str]:
    """The combined report's section: one row per claim, with its measurements and verdict."""
    rows = claims_for(dataset, models)
    tally = {v: sum(1 for _, w, _, _ in rows if w == v) for v in (CONFIRMED, REFUTED, INCONCLUSIVE, NOT_RUN)}
    lines = [
        "## The original study's claims, tested",
        "",
        "Each claim of the study this project reproduces, the measurements from this run that test it, "
        "and a verdict generated from them (experiments/findings.py says how): "
        + ", ".join(f"{n} {v}" for v, n in tally.items() if n)
        + ".",
        "",
        "| task | claim | measured (study, dataset) | verdict |",
        "|---|---|---|---|",
    ]
    for claim, result, on, parts in rows:
        where = f"{claim.study} on {on}: " if on else ""
        wanted = ", ".join(claim.datasets or (dataset,))
        measured = (
            where + "<br>".join(_escape(p.text) + _mark(p.holds) for p in parts)
            if on
            else (f"{claim.study} did not run on {wanted} here")
        )
        lines.append(f"| {claim.task} | {claim.statement} | {measured} | **{result}** |")
    return [*lines, ""]


def _mark(holds: bool | None) -> str:
    return {True: " (holds)", False: " (fails)", None: " (undecided)"}[holds]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
