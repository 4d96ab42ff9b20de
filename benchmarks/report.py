"""Regenerate benchmarks/RESULTS.md, the ratio chart benchmarks/ratios.png and the speed summary in
README.md from pytest-benchmark JSON files (`make bench` writes benchmarks/results/cpu.json;
benchmarks/device_check.sh writes cuda.json on a GPU machine, to be copied beside it).

    python -m benchmarks.report [JSON ...]     (default: every benchmarks/results/*.json)

Per case: each implementation's median time, native/cnnext (above 1: cnnext is faster), the
achieved rate of cnnext and native (GFLOP/s for arithmetic-bound ops, GB/s for memory-bound ones)
with its fraction of the peak measured in the same run, and the floor: the work over that peak.
The arithmetic peak is the float32 FMA loop's on a CPU (cnnext.cpu_fma_peak: what the cores can
do at all), the float32 GEMM rate on a GPU (and in runs recorded before the loop existed); the
memory peak is the copy rate. Then the geometric mean of the ratios per op, device and pass, and
for the training steps each backend's best memory format against the other's.
"""

import argparse
import dataclasses
import json
import math
import pathlib
import re
import warnings
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
OPS = {  # op: (title, what the baseline columns are)
    "conv2d": ("conv2d", "native = F.conv2d (oneDNN on CPU, cuDNN on CUDA)"),
    "pool2d": ("Pooling", "native = F.max_pool2d / F.avg_pool2d / F.adaptive_avg_pool2d"),
    "attention": (
        "Attention",
        "native = F.scaled_dot_product_attention; naive = matmul-softmax-matmul (cnnext.ops.reference)",
    ),
    "training": (
        "End-to-end training step",
        "one SGD step (forward, backward, momentum update), same weights",
    ),
}
PASSES = ["forward", "forward+backward", "training step"]
README_BEGIN, README_END = "<!-- speed-summary:begin -->", "<!-- speed-summary:end -->"


@dataclasses.dataclass
class Case:
    op: str
    device: str
    direction: str
    shape: str
    work: float  # FLOPs or bytes
    unit: str  # "GFLOP/s" or "GB/s"
    peak: float  # in `unit`: the yardstick of "of peak" and the floor
    peaks: dict = dataclasses.field(default_factory=dict)  # every peak measured beside it: name -> text
    times: dict = dataclasses.field(default_factory=dict)  # impl -> median seconds

    def rate(self, impl):
        return self.work / self.times[impl] / 1e9

    @property
    def floor(self):
        return self.work / (self.peak * 1e9)

    def ratio(self, baseline):
        return self.times[baseline] / self.times["cnnext"]


@dataclasses.dataclass
class Run:
    path: pathlib.Path
    date: str
    commit: str
    machine: dict


def load(paths):
    """Cases keyed by (op, device, direction, shape), and one Run per file. A case measured in two
    files keeps the later file's time, with a warning naming both (two runs of one machine, or a
    CUDA file copied in twice, would otherwise mix silently)."""
    cases, runs, seen, duplicates = {}, [], {}, defaultdict(list)
    for path in paths:
        data = json.loads(path.read_text())
        commit = data.get("commit_info", {})
        runs.append(
            Run(
                path,
                data.get("datetime", "?")[:16].replace("T", " "),
                commit.get("id", "?")[:10] + (" (uncommitted changes)" if commit.get("dirty") else ""),
                data.get("machine_info", {}),
            )
        )
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            key = (info["op"], info["device"], info["direction"], info["shape"])
            if key not in cases:
                flops = "flops" in info
                arithmetic_peak = info.get("fma_peak_gflops") or info["peak_gflops"]
                cases[key] = Case(
                    *key,
                    work=info["flops"] if flops else info["bytes"],
                    unit="GFLOP/s" if flops else "GB/s",
                    peak=arithmetic_peak if flops else info["copy_gbps"],
                    peaks=measured_peaks(info),
                )
            measured = (*key, info["impl"])
            if measured in seen and seen[measured] != path:
                duplicates[(seen[measured], path)].append(" / ".join(measured))
            seen[measured] = path
            cases[key].times[info["impl"]] = bench["stats"]["median"]
    for (earlier, later), names in duplicates.items():
        warnings.warn(
            f"{len(names)} case(s) are in both {earlier} and {later} (e.g. {names[0]}); using {later}",
            stacklevel=2,
        )
    return cases, runs


def measured_peaks(info):
    """The peaks a case was recorded with, as the report names them."""
    peaks = {}
    if info.get("fma_peak_gflops"):
        peaks["FMA"] = f"float32 FMA loop {info['fma_peak_gflops']:.0f} GFLOP/s"
    peaks["GEMM"] = f"float32 GEMM {info['peak_gflops']:.0f} GFLOP/s"
    peaks["copy"] = f"copy {info['copy_gbps']:.1f} GB/s"
    return peaks


def baselines_of(cases):
    found = {impl for c in cases for impl in c.times if impl != "cnnext"}
    return sorted(found, key=lambda impl: (impl != "native", impl))  # native first, then e.g. naive


def sort_key(case):
    return (list(OPS).index(case.op), case.device, PASSES.index(case.direction), case.shape)


def op_table(cases):
    """The Markdown table of one op on one device."""
    baselines = baselines_of(cases)
    unit = cases[0].unit
    header = [
        "pass",
        "shape",
        *(f"{b} ms" for b in baselines),
        "cnnext ms",
        *(f"{b}/cnnext" for b in baselines),
    ]
    header += [f"cnnext {unit}", "of peak", f"native {unit}", "of peak", "floor ms"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for c in sorted(cases, key=sort_key):
        if "cnnext" not in c.times:
            continue
        cells = [c.direction, c.shape]
        cells += [f"{c.times[b] * 1e3:.3f}" if b in c.times else "-" for b in baselines]
        cells.append(f"{c.times['cnnext'] * 1e3:.3f}")
        cells += [
            f"**{c.ratio(b):.2f}**"
            if b == "native" and b in c.times
            else (f"{c.ratio(b):.2f}" if b in c.times else "-")
            for b in baselines
        ]
        for impl in ("cnnext", "native"):
            if impl in c.times:
                cells += [f"{c.rate(impl):.1f}", f"{c.rate(impl) / c.peak:.0%}"]
            else:
                cells += ["-", "-"]
        cells.append(f"{c.floor * 1e3:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary_rows(cases):
    """(op, device, pass, baseline) -> ratios of every case, in report order."""
    groups = defaultdict(list)
    for c in sorted(cases, key=sort_key):
        for b in c.times:
            if b != "cnnext" and "cnnext" in c.times:
                groups[(c.op, c.device, c.direction, b)].append(c.ratio(b))
    return groups


def summary_table(cases):
    lines = [
        "| op | device | pass | ratio | geometric mean | lowest | highest | cases |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for (op, device, direction, baseline), ratios in summary_rows(cases).items():
        lines.append(
            f"| {op} | {device} | {direction} | {baseline}/cnnext | **{geomean(ratios):.2f}** "
            f"| {min(ratios):.2f} | {max(ratios):.2f} | {len(ratios)} |"
        )
    return "\n".join(lines)


def plot(cases, path):
    """One panel per (op, device): native/cnnext per case and pass as bars growing from 1 on a log
    axis (right: cnnext faster, left: slower), the same axis in every panel, values written on."""
    compared = [c for c in cases if {"native", "cnnext"} <= c.times.keys()]
    panels = sorted({(c.op, c.device) for c in compared}, key=lambda k: (list(OPS).index(k[0]), k[1]))
    shape_counts = [len({c.shape for c in compared if (c.op, c.device) == p}) for p in panels]
    ratios = [c.ratio("native") for c in compared]
    ticks = [2.0**e for e in range(-4, 5)]
    low = min([0.5, *ratios]) / 1.3
    high = max([2.0, *ratios]) * 1.6
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 1.0 + 0.34 * sum(shape_counts) + 0.7 * len(panels)),
        gridspec_kw={"height_ratios": shape_counts},
        squeeze=False,
    )
    colors = {"forward": "#4c72b0", "forward+backward": "#dd8452", "training step": "#55a868"}
    for ax, (op, device) in zip(axes[:, 0], panels, strict=True):
        mine = [c for c in compared if (c.op, c.device) == (op, device)]
        shapes = sorted({c.shape for c in mine})
        directions = [d for d in PASSES if any(c.direction == d for c in mine)]
        bar = 0.8 / len(directions)
        for i, direction in enumerate(directions):
            for c in (c for c in mine if c.direction == direction):
                y = shapes.index(c.shape) + (i - (len(directions) - 1) / 2) * bar
                ratio = c.ratio("native")
                ax.barh(y, ratio - 1, left=1, height=bar, color=colors[direction])
                ax.text(
                    ratio * (1.03 if ratio >= 1 else 0.97),
                    y,
                    f"{ratio:.2f}",
                    va="center",
                    ha="left" if ratio >= 1 else "right",
                    fontsize=6.5,
                )
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_xticks([t for t in ticks if low <= t <= high], [f"{t:g}" for t in ticks if low <= t <= high])
        ax.minorticks_off()
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_yticks(range(len(shapes)), shapes, fontsize=8)
        ax.set_ylim(len(shapes) - 0.5, -0.5)
        ax.set_title(f"{OPS[op][0]} ({device}): native time / cnnext time (> 1: cnnext faster)", fontsize=9)
        handles = [Patch(color=colors[d], label=d) for d in directions]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_layout_cases(cases):
    """Training steps: per model, native's faster memory format against cnnext's faster one (shapes
    measured in both, " NHWC" marking channels_last), as Cases for a table of their own."""
    by_model = defaultdict(list)
    for c in cases:
        if c.op == "training" and {"native", "cnnext"} <= c.times.keys():
            by_model[(c.device, c.direction, c.shape.removesuffix(" NHWC"))].append(c)
    best = []
    for (device, direction, model), measured in by_model.items():
        if len(measured) < 2:
            continue

        def fastest(impl, measured=measured):
            winner = min(measured, key=lambda c: c.times[impl])
            return winner.times[impl], "channels_last" if winner.shape.endswith(" NHWC") else "NCHW"

        (native_time, native_layout), (ours_time, our_layout) = fastest("native"), fastest("cnnext")
        first = measured[0]
        best.append(
            Case(
                first.op,
                device,
                direction,
                f"{model}: native {native_layout}, cnnext {our_layout}",
                first.work,
                first.unit,
                first.peak,
                first.peaks,
                {"native": native_time, "cnnext": ours_time},
            )
        )
    return best


def machine_lines(runs, cases):
    lines = []
    peaks = {}
    for c in cases:
        peaks.setdefault(c.device, {}).update(c.peaks)
    for run in runs:
        m = run.machine
        cpu = m.get("cpu", {})
        extra = m.get("cnnext", {})
        lines.append(
            f"- `{run.path.name}`: {run.date} UTC, commit {run.commit}; {extra.get('device', '?')}; "
            f"CPU {cpu.get('brand_raw', '?')} ({cpu.get('count', '?')} logical cores); "
            f"torch {extra.get('torch', '?')}, Python {m.get('python_version', '?')}"
        )
    for device, by_name in sorted(peaks.items()):
        lines.append(f"- measured peaks on {device}: {', '.join(by_name.values())}")
    return lines


def results_markdown(cases, runs, chart_name):
    out = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`python -m benchmarks.report`) from the pytest-benchmark JSON in",
        "`benchmarks/results/`; do not edit by hand (commentary, history and analysis: "
        "[NOTES.md](NOTES.md)).",
        "",
        "Medians of each case, cnnext and its baselines interleaved in the same run; "
        "**native/cnnext** above 1 means cnnext is faster. Rates are the work (FLOPs of the "
        'products, or bytes that must move) over the median; "of peak" divides by the peak measured '
        "in the same run (arithmetic: the float32 FMA loop on a CPU, the float32 GEMM rate on a GPU; "
        "memory: the copy rate), and the floor is the work at that peak.",
        "",
        "Runs:",
        *machine_lines(runs, cases),
        "",
        "## Summary",
        "",
        summary_table(cases),
        "",
        f"![native/cnnext per case]({chart_name})",
    ]
    for op, (title, baseline_text) in OPS.items():
        for device in sorted({c.device for c in cases if c.op == op}):
            mine = [c for c in cases if (c.op, c.device) == (op, device)]
            out += ["", f"## {title}, {device}", "", baseline_text + ".", "", op_table(mine)]
            best = best_layout_cases(mine)
            if best:
                out += [
                    "",
                    f"Each backend in its faster memory format ({device}):",
                    "",
                    op_table(best),
                ]
    return "\n".join(out) + "\n"


def short_kernel_name(name):
    """`implicit_gemm_kernel<ForwardProblem<Half>>` from ptxas' demangled `void cnnext::(anonymous
    namespace)::implicit_gemm_kernel<...>(parameters)`."""
    name = re.sub(r"^void\s+", "", name)
    name = name.replace("cnnext::(anonymous namespace)::", "").replace("c10::", "")
    depth, end = 0, len(name)
    for i, ch in enumerate(name):  # cut the parameter list: the first "(" outside template brackets
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            end = i
            break
    return name[:end].replace(" >", ">").replace("unsigned char", "uint8").replace("long", "int64")


def resources_markdown(path):
    """The "CUDA resources" section from benchmarks/cuda_resources.json (python -m
    benchmarks.cuda_resources): one row per kernel instantiation, sm_80 and sm_90 side by side."""
    data = json.loads(path.read_text())
    archs = data["archs"]
    rows = defaultdict(dict)
    for k in data["kernels"]:
        rows[(k["file"], short_kernel_name(k["name"]))][k["arch"]] = k
    spilling = sorted(
        {
            name
            for (_, name), per in rows.items()
            if any(r["spill_stores"] + r["spill_loads"] for r in per.values())
        }
    )
    local = sorted({name for (_, name), per in rows.items() if any(r["stack"] for r in per.values())})
    lines = [
        "",
        "## CUDA resources",
        "",
        "From ptxas (`-Xptxas -v`, written by `python -m benchmarks.cuda_resources`) for "
        + ", ".join(f"sm_{a}" for a in archs)
        + ": registers per thread, spill stores/loads (bytes), stack frame (local memory per thread, "
        "bytes), static and dynamic shared memory per block (dynamic: the largest the host code "
        "launches that instantiation with), threads per block, and the theoretical occupancy those "
        "allow (resident blocks per SM, and the fraction of the SM's 64 warps). No GPU measured these: "
        "they are the static signal until one is lent.",
        "",
        f"{len(rows)} instantiations; spills in {len(spilling)}"
        + (f" ({', '.join(spilling)})" if spilling else "")
        + f"; local memory (per-thread arrays) in {len(local)}.",
        "",
        "| file | kernel | threads | static + dynamic smem | "
        + " | ".join(
            f"sm_{a} regs | sm_{a} spill st/ld | sm_{a} stack | sm_{a} blocks/SM (occupancy)" for a in archs
        )
        + " |",
        "|---|---|---:|---:|" + "---:|" * (4 * len(archs)),
    ]
    for (file, name), per in sorted(rows.items()):
        first = next(iter(per.values()))
        cells = [
            pathlib.Path(file).name,
            f"`{name}`",
            str(first["threads"]),
            f"{first['static_shared']} + {first['dynamic_shared']}",
        ]
        for a in archs:
            r = per.get(a)
            if r is None:
                cells += ["-"] * 4
                continue
            cells += [
                str(r["registers"]),
                f"{r['spill_stores']}/{r['spill_loads']}",
                str(r["stack"]),
                f"{r['blocks_per_sm']} ({r['occupancy']:.0%})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_summary(cases):
    """The README block: geometric means, with the range, per op, device and pass."""
    lines = [
        README_BEGIN,
        "| op | device | pass | native/cnnext, geometric mean | range | cases |",
        "|---|---|---|---:|---|---:|",
    ]
    for (op, device, direction, baseline), ratios in summary_rows(cases).items():
        if baseline == "native":
            lines.append(
                f"| {op} | {device} | {direction} | {geomean(ratios):.2f} "
                f"| {min(ratios):.2f}-{max(ratios):.2f} | {len(ratios)} |"
            )
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme, cases):
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {README_BEGIN} ... {README_END} block to update")
    readme.write_text(pattern.sub(lambda _: readme_summary(cases), text))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", nargs="*", type=pathlib.Path, help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "RESULTS.md")
    parser.add_argument("--chart", type=pathlib.Path, default=HERE / "ratios.png")
    parser.add_argument(
        "--resources",
        type=pathlib.Path,
        default=HERE / "cuda_resources.json",
        help="ptxas resource JSON (python -m benchmarks.cuda_resources) for the CUDA resources section",
    )
    parser.add_argument(
        "--readme",
        default=str(HERE.parent / "README.md"),
        help="README whose speed-summary block is rewritten ('' to leave it alone)",
    )
    args = parser.parse_args()
    paths = args.json or sorted((HERE / "results").glob("*.json"))
    if not paths:
        raise SystemExit("no benchmark JSON: run `make bench` first")
    cases_by_key, runs = load(paths)
    cases = list(cases_by_key.values())
    if not cases:
        raise SystemExit(f"no benchmark cases in {', '.join(map(str, paths))}")
    plot(cases, args.chart)
    markdown = results_markdown(cases, runs, args.chart.name)
    if args.resources.is_file():
        markdown += resources_markdown(args.resources)
    args.out.write_text(markdown)
    if args.readme:
        update_readme(pathlib.Path(args.readme), cases)
    print(summary_table(cases))
    print(f"\nwrote {args.out} and {args.chart}" + (f", updated {args.readme}" if args.readme else ""))


if __name__ == "__main__":
    main()
