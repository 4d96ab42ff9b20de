"""cnnext.cpu_fma_peak: the measured float32 arithmetic peak the benchmark report divides by."""

import time

import pytest
import torch

import cnnext

from .conftest import run_with_cpu_isa

LEVELS = ["baseline", "avx2", "avx512"]
RUNNABLE = LEVELS[: LEVELS.index(cnnext.build_info()["cpu_isa"]) + 1]
FLOATS = {"baseline": 4, "avx2": 8, "avx512": 16}


@pytest.mark.parametrize("isa", RUNNABLE)
def test_each_build_reports_its_vectors_and_a_rate_a_core_can_reach(isa):
    peak = cnnext.cpu_fma_peak(isa, trials=3, trial_seconds=0.02)
    assert peak["isa"] == isa and peak["vector_floats"] == FLOATS[isa] and peak["chains"] == 12
    assert peak["threads"] == torch.get_num_threads()
    # Below what any core could do (6 GHz, two vector multiply-adds a cycle), above 1 GFLOP/s each.
    ceiling = peak["threads"] * 6e9 * 2 * 2 * peak["vector_floats"] / 1e9
    assert peak["threads"] < peak["gflops"] < ceiling


def test_no_matrix_product_beats_it():
    """torch's float32 GEMM runs on the same multiply-add units: its rate is below the loop's
    (15% allowed for a noisy machine)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    # Interleaved rounds, best of each: a neighbour's burst on the shared machine lands on one
    # round of one side, not on every round of it.
    peak = gemm = 0.0
    for _ in range(6):
        peak = max(peak, cnnext.cpu_fma_peak(trials=2, trial_seconds=0.02)["gflops"])
        for _ in range(4):
            start = time.perf_counter()
            a @ b
            gemm = max(gemm, 2 * 1024**3 / (time.perf_counter() - start) / 1e9)
    assert gemm < 1.15 * peak, (gemm, peak)
    # And the GEMM is not far below it: 57-85% measured on the machines seen (AMD Zen 4, Intel
    # Sapphire Rapids, 2 cores), so a loop counting twice its flops would read over 2x.
    assert peak < 2 * gemm, (gemm, peak)


def test_it_runs_on_the_threads_torch_uses():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cnnext.cpu_fma_peak(trials=1, trial_seconds=0.01)["threads"] == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(isa="sse9"), "isa must be baseline, avx2 or avx512, got 'sse9'"),
        (dict(trials=0), "trials must be in [1, 100], got 0"),
        (dict(trial_seconds=20.0), "trial_seconds must be in [0.001, 10], got 20"),
    ],
)
def test_bad_arguments_are_value_errors_naming_the_argument(arguments, message):
    with pytest.raises(ValueError) as error:
        cnnext.cpu_fma_peak(**arguments)
    assert message in str(error.value) and "Exception raised from" not in str(error.value)


def test_a_build_above_the_running_level_is_refused():
    run_with_cpu_isa(
        "import cnnext\n"
        "try:\n"
        "    cnnext.cpu_fma_peak('avx2')\n"
        "except ValueError as e:\n"
        "    assert 'the avx2 build is above the level this process runs (baseline)' in str(e), e\n"
        "    print('ok')\n",
        "baseline",
    )
