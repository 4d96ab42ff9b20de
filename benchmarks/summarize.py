"""Turn a pytest-benchmark JSON file into the Markdown ratio table of benchmarks/RESULTS.md.

    python benchmarks/summarize.py results.json [--device cpu]

Per (shape, direction, device): native and cnnext medians, the ratio native/cnnext (above 1 means
cnnext is faster), and the floor; then the geometric mean of
the ratios per (device, direction). The floor is FLOPs over the measured float32 GEMM rate
(convolution) or bytes over the measured copy rate (pooling), whichever the benchmark recorded.
"""

import argparse
import json
import math
from collections import defaultdict


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        key = (info["device"], info["direction"], info["shape"])
        rows[key][info["impl"]] = bench["stats"]["median"]
        if "flops" in info:  # arithmetic-bound: FLOPs over the measured GEMM rate
            rows[key]["floor"] = info["flops"] / (info["peak_gflops"] * 1e9)
            rows[key]["peak"] = f"float32 GEMM rate {info['peak_gflops']:.0f} GFLOP/s"
        else:  # memory-bound: bytes over the measured copy rate
            rows[key]["floor"] = info["bytes"] / (info["copy_gbps"] * 1e9)
            rows[key]["peak"] = f"copy rate {info['copy_gbps']:.1f} GB/s"
    return data.get("machine_info", {}), rows


def table(rows, device=None):
    """One row per case: every implementation's time, and each baseline's time over cnnext's."""
    baselines = sorted({impl for r in rows.values() for impl in r if impl not in ("cnnext", "floor", "peak")})
    baselines.sort(key=lambda impl: impl != "native")  # native first, then e.g. naive
    header = "| device | pass | shape | " + " | ".join(f"{b} ms" for b in baselines) + " | cnnext ms | "
    header += " | ".join(f"{b}/cnnext" for b in baselines) + " | floor ms |"
    lines = [header, "|---|---|---|" + "---:|" * (2 * len(baselines) + 2)]
    ratios = defaultdict(list)
    for (dev, direction, shape), r in sorted(rows.items()):
        if device and dev != device or "cnnext" not in r:
            continue
        times = " | ".join(f"{r[b] * 1e3:.3f}" if b in r else "-" for b in baselines)
        relative = []
        for b in baselines:
            if b in r:
                ratios[(dev, direction, b)].append(r[b] / r["cnnext"])
                relative.append(f"{r[b] / r['cnnext']:.2f}")
            else:
                relative.append("-")
        lines.append(
            f"| {dev} | {direction} | {shape} | {times} | {r['cnnext'] * 1e3:.3f} | {' | '.join(relative)} "
            f"| {r['floor'] * 1e3:.3f} |"
        )
    lines += ["", "| device | pass | ratio | geometric mean | shapes |", "|---|---|---|---:|---:|"]
    for (dev, direction, baseline), values in sorted(ratios.items()):
        geomean = math.exp(sum(math.log(v) for v in values) / len(values))
        lines.append(f"| {dev} | {direction} | {baseline}/cnnext | {geomean:.2f} | {len(values)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", help="output of pytest --benchmark-json")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="only this device's rows")
    args = parser.parse_args()
    machine, rows = load(args.json)
    peaks = sorted({(k[0], r["peak"]) for k, r in rows.items()})
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    print(f"machine: {machine.get('node', '?')}, CPU {cpu}, {machine.get('cpu', {}).get('count', '?')} cores")
    for dev, peak in peaks:
        print(f"measured on {dev}: {peak}")
    print()
    print(table(rows, args.device))


if __name__ == "__main__":
    main()
