"""Where a training step's time goes, native vs cnnext, in each memory format: the models of
bench_training.py, a few SGD steps under torch.profiler, each op's self CPU time put in a category
(the ops cnnext replaces, batch norm, activations and adds, layout copies, allocation and fills,
the optimizer, the rest), and what is left of the step's wall time outside every op: Python,
module calls and the autograd engine's bookkeeping. Beside it the step's wall time without the
profiler, which is what bench_training.py measures.

    python -m benchmarks.profile_step [--models resnet20 mnist_cnn ...]
        [--layouts contiguous channels_last] [--steps 5] [--json out.json]

Prints one Markdown table per model (ms per step), for benchmarks/NOTES.md. CPU only: on a GPU the
profiler's CPU self times say little about where the device's time goes.
"""

import argparse
import json
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from .bench_training import CASES, LAYOUTS, MODEL_KEYS, make_step

# (category, substrings of profiler op names), first match wins; checked against lower-case names.
CATEGORIES = [
    ("conv2d", ("cnnext::conv2d", "cnnext::_conv2d_backward", "convolution", "conv2d")),
    ("pooling", ("pool2d", "pool_2d")),
    ("attention", ("cnnext::attention", "cnnext::_attention_backward", "scaled_dot_product", "attention")),
    ("batch norm", ("batch_norm",)),
    ("activations, adds", ("relu", "threshold", "aten::add", "aten::add_")),
    ("layout copies", ("copy_", "contiguous", "aten::to", "_to_copy", "clone", "aten::as_strided")),
    ("allocation, fills", ("empty", "zeros", "zero_", "fill_", "resize_", "ones")),
    ("optimizer", ("optimizer", "_foreach", "sgd")),
    ("loss, linear", ("cross_entropy", "log_softmax", "nll_loss", "linear", "addmm", "aten::mm", "aten::t")),
]


def category(name: str) -> str:
    # The autograd engine's own events and the nodes' wrappers ("ConvolutionBackward0") first: their
    # self time is bookkeeping around the backward ops, whatever op they name.
    if name.startswith("autograd::engine"):
        return "autograd engine"
    if name.endswith(("Backward0", "Backward1", "BackwardCFunction")) or "CppNode" in name:
        return "autograd nodes"
    lowered = name.lower()
    for label, patterns in CATEGORIES:
        if any(p in lowered for p in patterns):
            return label
    return "other ops"


def wall_ms_per_step(step, steps: int) -> float:
    """Median wall time of one step without the profiler (after two warm-ups)."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def profile_case(model_key: str, impl: str, memory_format, steps: int) -> dict:
    """ms per step by category, the profiled wall time, the part outside ops, the unprofiled wall time."""
    step = make_step(model_key, impl, "cpu", memory_format)
    wall = wall_ms_per_step(step, steps)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        profiled_wall = 1e3 * (time.perf_counter() - start) / steps
    by_category = defaultdict(float)
    top_level = 0.0
    for event in prof.events():
        by_category[category(event.name)] += event.self_cpu_time_total / 1e3 / steps
    # Ops on the main thread that are not inside another op: their total time is the time spent in
    # ops at all; the rest of the wall time is Python and the autograd engine between ops.
    main_thread = min(e.thread for e in prof.events())
    for event in prof.events():
        if event.thread == main_thread and event.cpu_parent is None:
            top_level += event.cpu_time_total / 1e3 / steps
    return {
        "categories": dict(by_category),
        "in_ops": top_level,
        "outside_ops": max(0.0, profiled_wall - top_level),
        "profiled_wall": profiled_wall,
        "wall": wall,
    }


def markdown(model_key: str, results: dict) -> str:
    columns = list(results)  # (impl, format) pairs
    order = [label for label, _ in CATEGORIES] + ["autograd nodes", "autograd engine", "other ops"]
    labels = [c for c in order if any(c in r["categories"] for r in results.values())]
    header = "| ms per step | " + " | ".join(f"{impl} {layout}" for impl, layout in columns) + " |"
    lines = [f"**{CASES[model_key][0]}**", "", header, "|---|" + "---:|" * len(columns)]
    for label in labels:
        cells = [f"{results[c]['categories'].get(label, 0.0):.2f}" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (
        ("in_ops", "all ops (top level)"),
        ("outside_ops", "outside ops (Python, autograd engine)"),
        ("profiled_wall", "step, profiled"),
        ("wall", "**step, not profiled**"),
    ):
        lines.append(f"| {label} | " + " | ".join(f"{results[c][key]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODEL_KEYS), default=list(MODEL_KEYS))
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per case (default 5)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    everything = {}
    for model_key in args.models:
        results = {}
        for layout in args.layouts:
            for impl in ("native", "cnnext"):
                print(f"profiling {model_key} {impl} {layout} ...", file=sys.stderr, flush=True)
                results[(impl, layout)] = profile_case(model_key, impl, LAYOUTS[layout], args.steps)
        print(markdown(model_key, results) + "\n", flush=True)
        everything[model_key] = {f"{impl} {layout}": r for (impl, layout), r in results.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
