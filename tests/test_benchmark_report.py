"""benchmarks/report.py: the tables, rates and README block it generates from pytest-benchmark JSON."""

import json

from benchmarks import report


def bench(op, shape, direction, impl, median, **work):
    info = dict(
        op=op, shape=shape, direction=direction, impl=impl, device="cpu", peak_gflops=100.0, copy_gbps=20.0
    )
    return {"extra_info": {**info, **work}, "stats": {"median": median}}


def write_run(path, benchmarks, date="2026-11-28T10:00:00"):
    """One pytest-benchmark JSON file holding `benchmarks` (entries from bench())."""
    data = {"benchmarks": benchmarks, "datetime": date, "machine_info": {}, "commit_info": {}}
    path.write_text(json.dumps(data))


def write_json(path):
    benchmarks = [
        bench("conv2d", "a", "forward", "native", 0.002, flops=1e8),
        bench("conv2d", "a", "forward", "cnnext", 0.001, flops=1e8),
        bench("conv2d", "b", "forward", "native", 0.001, flops=1e8),
        bench("conv2d", "b", "forward", "cnnext", 0.004, flops=1e8),
        bench("pool2d", "p", "forward+backward", "native", 0.003, bytes=6e7),
        bench("pool2d", "p", "forward+backward", "cnnext", 0.001, bytes=6e7),
    ]
    write_run(path, benchmarks)


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


def test_the_fma_loop_is_the_cpu_yardstick_when_recorded(tmp_path):
    """A case recorded with fma_peak_gflops is judged against it (rate, "of peak", floor); the
    machine lines name every peak measured."""
    benchmarks = [
        bench("conv2d", "a", "forward", "cnnext", 0.001, flops=1e8, fma_peak_gflops=400.0),
        bench("conv2d", "a", "forward", "native", 0.002, flops=1e8, fma_peak_gflops=400.0),
    ]
    write_run(tmp_path / "cpu.json", benchmarks)
    cases, runs = report.load([tmp_path / "cpu.json"])
    case = cases[("conv2d", "cpu", "forward", "a")]
    assert case.peak == 400.0 and case.floor == 1e8 / 400e9
    text = report.results_markdown(list(cases.values()), runs, "chart.png")
    assert "| forward | a | 2.000 | 1.000 | **2.00** | 100.0 | 25% | 50.0 | 12% | 0.250 |" in text
    assert "float32 FMA loop 400 GFLOP/s, float32 GEMM 100 GFLOP/s, copy 20.0 GB/s" in text


def test_training_steps_get_each_backends_best_layout_against_the_others(tmp_path):
    """Native fastest in NCHW, cnnext in channels_last: the extra table sets those two side by side."""
    benchmarks = [
        bench("training", "Net", "training step", "native", 0.010, flops=1e9),
        bench("training", "Net", "training step", "cnnext", 0.012, flops=1e9),
        bench("training", "Net NHWC", "training step", "native", 0.011, flops=1e9),
        bench("training", "Net NHWC", "training step", "cnnext", 0.008, flops=1e9),
        bench("training", "Other", "training step", "native", 0.010, flops=1e9),  # one layout only
        bench("training", "Other", "training step", "cnnext", 0.010, flops=1e9),
    ]
    write_run(tmp_path / "cpu.json", benchmarks)
    cases, runs = report.load([tmp_path / "cpu.json"])
    (best,) = report.best_layout_cases(list(cases.values()))
    assert best.shape == "Net: native NCHW, cnnext channels_last"
    assert best.times == {"native": 0.010, "cnnext": 0.008} and best.ratio("native") == 1.25
    text = report.results_markdown(list(cases.values()), runs, "chart.png")
    assert "Each backend in its faster memory format (cpu):" in text
    assert "| training step | Net: native NCHW, cnnext channels_last | 10.000 | 8.000 | **1.25** |" in text


# --- the CUDA resources table (benchmarks/cuda_resources.py, rendered by report.py) ---------------

PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6cnnext12_GLOBAL__N_111dkdv_kernelIfLi64EEEvPKT_S4_' for 'sm_90'
ptxas info    : Function properties for _ZN6cnnext12_GLOBAL__N_111dkdv_kernelIfLi64EEEvPKT_S4_
    1024 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 56 registers, used 1 barriers, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN6cnnext12_GLOBAL__N_114bias_grad_kernelIffEEvPKT_' for 'sm_90'
ptxas info    : Function properties for _ZN6cnnext12_GLOBAL__N_114bias_grad_kernelIffEEvPKT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 36 registers, used 1 barriers, 1024 bytes smem, 392 bytes cmem[0]
"""


def test_ptxas_output_is_parsed_per_kernel():
    from benchmarks import cuda_resources

    kernels = cuda_resources.parse_ptxas(PTXAS_OUTPUT)
    assert [
        (k["arch"], k["registers"], k["stack"], k["spill_stores"], k["spill_loads"], k["static_shared"])
        for k in kernels
    ] == [(90, 56, 1024, 8, 12, 0), (90, 36, 0, 0, 0, 1024)]


def test_occupancy_follows_the_sm_limits():
    from benchmarks import cuda_resources

    # 256 threads x 97 registers: 104 per thread after rounding, 26,624 per block: 2 blocks (16 of 64 warps).
    assert cuda_resources.occupancy(97, 8704, 256, 90) == (2, 0.25)
    # 64 threads, 48 KiB + 1 KiB reserved: shared memory allows 4 blocks of 2 warps on sm_90, 3 on sm_80.
    assert cuda_resources.occupancy(48, 49152, 64, 90) == (4, 0.125)
    assert cuda_resources.occupancy(48, 49152, 64, 80) == (3, 0.09375)
    # Light kernels stop at 2048 threads per SM.
    assert cuda_resources.occupancy(29, 0, 256, 80) == (8, 1.0)


def test_attention_shared_memory_follows_the_tile_rule():
    from benchmarks import cuda_resources

    assert cuda_resources.attention_shared("forward_kernel<float, 64>") == 2 * 32 * 64 * 4
    assert cuda_resources.attention_shared("dq_kernel<double, 256>") == 2 * 12 * 256 * 8


def test_resources_section_lists_each_instantiation_once_with_both_archs(tmp_path):
    name = "void cnnext::(anonymous namespace)::dq_kernel<c10::Half, 64>(c10::Half const*, long)"
    record = dict(
        file="csrc/attention/attention_cuda.cu",
        name=name,
        family="dq_kernel",
        registers=59,
        stack=768,
        spill_stores=0,
        spill_loads=0,
        static_shared=0,
        dynamic_shared=32768,
        threads=64,
        blocks_per_sm=4,
        occupancy=0.125,
    )
    path = tmp_path / "resources.json"
    path.write_text(
        json.dumps({"archs": [80, 90], "kernels": [{**record, "arch": 80}, {**record, "arch": 90}]})
    )
    markdown = report.resources_markdown(path)
    rows = [line for line in markdown.splitlines() if line.startswith("| attention_cuda.cu")]
    assert len(rows) == 1
    assert "`dq_kernel<Half, 64>`" in rows[0] and rows[0].count("4 (12%)") == 2
    assert "spills in 0" in markdown and "local memory (per-thread arrays) in 1" in markdown


def test_a_case_in_two_files_is_a_warning_naming_both(tmp_path):
    import pytest

    write_json(tmp_path / "cpu.json")
    write_json(tmp_path / "cpu-again.json")
    with pytest.warns(
        UserWarning, match="6 case.s. are in both .*cpu-again.json and .*cpu.json .e.g. conv2d / cpu"
    ):
        report.load([tmp_path / "cpu-again.json", tmp_path / "cpu.json"])


def test_every_suite_names_its_parameters_alike():
    """pytest-benchmark's --group-by param:NAME and `compare` read each case's parameters by name;
    one suite naming them differently breaks both (KeyError)."""
    from benchmarks import bench_attention, bench_conv2d, bench_pool2d, bench_training

    suites = {
        bench_attention.test_attention_speed,
        bench_conv2d.test_conv2d_speed,
        bench_pool2d.test_pool2d_speed,
        bench_training.test_training_step_speed,
    }
    for test in suites:
        marks = [m.args[0] for m in test.pytestmark if m.name == "parametrize"]
        names = {name.strip() for mark in marks for name in mark.split(",")}
        assert names == {"shape", "direction", "impl", "device", "precision"}, test.__name__


def test_compare_judges_ratios_per_op_and_pass(tmp_path, capsys):
    """Everything twice as slow (a noisy machine) is no regression; cnnext alone slower is."""
    from benchmarks import compare

    def run(path, native, cnnext):
        benchmarks = [bench("conv2d", s, "forward", "native", native, flops=1e8) for s in "ab"]
        benchmarks += [bench("conv2d", s, "forward", "cnnext", cnnext, flops=1e8) for s in "ab"]
        write_run(path, benchmarks)
        return str(path)

    baseline = run(tmp_path / "base.json", 0.002, 0.001)
    assert compare.main([baseline, run(tmp_path / "noisy.json", 0.004, 0.002), "--threshold", "10"]) == 0
    assert compare.main([baseline, run(tmp_path / "slower.json", 0.002, 0.0015), "--threshold", "30"]) == 1
    out = capsys.readouterr().out
    assert "conv2d / cpu / forward" in out and "-33.3%  REGRESSION" in out
    assert compare.main([baseline, str(tmp_path / "slower.json"), "--threshold", "40"]) == 0
