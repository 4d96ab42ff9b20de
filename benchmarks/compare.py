"""Did cnnext get slower? Compare two pytest-benchmark runs as ratios, not as times.

    python -m benchmarks.compare BASELINE.json NEW.json [--threshold 20]
    python -m benchmarks.compare --last NEW.json        (BASELINE: the newest run in .benchmarks/)

A case's figure is native/cnnext measured in the same run (the two implementations interleaved,
so both see the same machine). On a shared VM the absolute medians of an unchanged checkout move
by up to 58% between runs minutes apart, native and cnnext alike, and even single cases' ratios
move by 20-60% (pooling most: it is memory-bound; benchmarks/NOTES.md), so the gate is the
geometric mean of the ratio over each op, device and pass: a group regresses when it fell by
more than --threshold percent (exit status 1). Each case's change is printed too, for a person to
look at; cases present in only one run are listed, not judged.
"""

import argparse
import pathlib
import sys

from .report import geomean, load

HERE = pathlib.Path(__file__).resolve().parent
STORAGE = HERE.parent / ".benchmarks"


def ratios(path: pathlib.Path) -> dict[tuple, float]:
    """(op, device, direction, shape) -> native/cnnext of one pytest-benchmark JSON."""
    cases, _ = load([path])
    return {
        key: case.times["native"] / case.times["cnnext"]
        for key, case in cases.items()
        if "native" in case.times and "cnnext" in case.times
    }


def newest_saved(storage: pathlib.Path = STORAGE) -> pathlib.Path:
    saved = sorted(storage.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise SystemExit(f"no saved benchmark run in {storage}: run `make bench` first")
    return saved[-1]


def compare(baseline: pathlib.Path, new: pathlib.Path, threshold: float) -> tuple[list[str], list[str]]:
    """(table lines, regressed groups)."""
    old, now = ratios(baseline), ratios(new)
    common = sorted(old.keys() & now.keys())
    lines = [
        f"native/cnnext: {baseline.name} -> {new.name}",
        f"{'case':<64} {'before':>7} {'now':>7} {'change':>8}",
    ]
    for key in common:
        change = 100 * (now[key] / old[key] - 1)
        lines.append(f"{' / '.join(key):<64} {old[key]:>7.2f} {now[key]:>7.2f} {change:>+7.1f}%")
    for key in sorted(old.keys() ^ now.keys()):
        lines.append(f"{' / '.join(key):<64} only in {'the baseline' if key in old else 'the new run'}")
    groups = {}
    for key in common:
        groups.setdefault(key[:3], []).append(key)
    lines += [
        "",
        f"geometric mean per op / device / pass (a fall of more than {threshold:g}% is a regression)",
    ]
    regressed = []
    for group, keys in sorted(groups.items()):
        before, after = geomean([old[k] for k in keys]), geomean([now[k] for k in keys])
        change = 100 * (after / before - 1)
        name = " / ".join(group)
        flag = "  REGRESSION" if change < -threshold else ""
        if flag:
            regressed.append(name)
        lines.append(f"{name:<64} {before:>7.2f} {after:>7.2f} {change:>+7.1f}%{flag}")
    return lines, regressed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", type=pathlib.Path, help="BASELINE.json NEW.json, or NEW.json with --last"
    )
    parser.add_argument("--last", action="store_true", help="baseline: the newest run saved in .benchmarks/")
    parser.add_argument(
        "--threshold", type=float, default=20.0, help="percent fall of native/cnnext (default 20)"
    )
    args = parser.parse_args(argv)
    if args.last:
        if len(args.runs) != 1:
            parser.error("--last takes one JSON (the new run)")
        baseline, new = newest_saved(), args.runs[0]
    elif len(args.runs) == 2:
        baseline, new = args.runs
    else:
        parser.error("give BASELINE.json NEW.json, or --last NEW.json")
    lines, regressed = compare(baseline, new, args.threshold)
    print("\n".join(lines))
    if regressed:
        print(f"\n{len(regressed)} group(s) regressed beyond {args.threshold:g}%: {', '.join(regressed)}")
        return 1
    print("\nno regression beyond the threshold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
