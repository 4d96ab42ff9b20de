"""benchmarks/report.py: the tables, rates and README block it generates from pytest-benchmark JSON."""

import json

from benchmarks import report


def bench(op, shape, direction, impl, median, **work):
    info = dict(
        op=op, shape=shape, direction=direction, impl=impl, device="cpu", peak_gflops=100.0, copy_gbps=20.0
    )
    return {"extra_info": {**info, **work}, "stats": {"median": median}}


def write_json(path):
    benchmarks = [
        bench("conv2d", "a", "forward", "native", 0.002, flops=1e8),
        bench("conv2d", "a", "forward", "cnnext", 0.001, flops=1e8),
        bench("conv2d", "b", "forward", "native", 0.001, flops=1e8),
        bench("conv2d", "b", "forward", "cnnext", 0.004, flops=1e8),
        bench("pool2d", "p", "forward+backward", "native", 0.003, bytes=6e7),
        bench("pool2d", "p", "forward+backward", "cnnext", 0.001, bytes=6e7),
    ]
    data = {
        "benchmarks": benchmarks,
        "datetime": "2026-11-28T10:00:00",
        "machine_info": {},
        "commit_info": {},
    }
    path.write_text(json.dumps(data))


def test_rates_ratios_and_floor(tmp_path):
    write_json(tmp_path / "cpu.json")
    cases, runs = report.load([tmp_path / "cpu.json"])
    fast = cases[("conv2d", "cpu", "forward", "a")]
    assert fast.ratio("native") == 2.0
    assert fast.rate("cnnext") == 100.0  # 1e8 FLOPs in 1 ms
    assert fast.floor == 1e8 / 100e9
    pool = cases[("pool2d", "cpu", "forward+backward", "p")]
    assert pool.unit == "GB/s" and pool.rate("cnnext") == 60.0 and pool.peak == 20.0
    # geometric mean of 2.0 and 0.25 is sqrt(0.5)
    rows = report.summary_rows(list(cases.values()))
    assert rows[("conv2d", "cpu", "forward", "native")] == [2.0, 0.25]
    assert abs(report.geomean(rows[("conv2d", "cpu", "forward", "native")]) - 0.5**0.5) < 1e-12


def test_command_writes_results_chart_and_readme_block(tmp_path, monkeypatch):
    write_json(tmp_path / "cpu.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\nrest\n")
    out, chart = tmp_path / "RESULTS.md", tmp_path / "ratios.png"
    argv = [
        "report",
        str(tmp_path / "cpu.json"),
        "--out",
        str(out),
        "--chart",
        str(chart),
        "--readme",
        str(readme),
    ]
    monkeypatch.setattr("sys.argv", argv)
    report.main()
    results = out.read_text()
    assert "| forward | a | 2.000 | 1.000 | **2.00** | 100.0 | 100% | 50.0 | 50% | 1.000 |" in results
    assert "| conv2d | cpu | forward | native/cnnext | **0.71** | 0.25 | 2.00 | 2 |" in results
    assert chart.stat().st_size > 10_000
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert "| pool2d | cpu | forward+backward | 3.00 | 3.00-3.00 | 1 |" in text
