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
    lines = [
        "| device | pass | shape | native ms | cnnext ms | native/cnnext | floor ms |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    ratios = defaultdict(list)
    for (dev, direction, shape), r in sorted(rows.items()):
        if device and dev != device or "native" not in r or "cnnext" not in r:
            continue
        ratio = r["native"] / r["cnnext"]
        ratios[(dev, direction)].append(ratio)
        lines.append(
            f"| {dev} | {direction} | {shape} | {r['native'] * 1e3:.3f} | {r['cnnext'] * 1e3:.3f} "
            f"| {ratio:.2f} | {r['floor'] * 1e3:.3f} |"
        )
    lines += ["", "| device | pass | geometric mean native/cnnext | shapes |", "|---|---|---:|---:|"]
    for (dev, direction), values in sorted(ratios.items()):
        geomean = math.exp(sum(math.log(v) for v in values) / len(values))
        lines.append(f"| {dev} | {direction} | {geomean:.2f} | {len(values)} |")
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
