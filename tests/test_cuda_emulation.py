"""The CUDA emulator itself (cnnext.cuda_emulation): built-in variables, shared memory, barriers,
warp collectives and atomics behave as CUDA specifies; broken kernels and bad launches fail with
errors that say what is wrong; the schedules expose the races they are meant to; every kernel in
csrc/ is reached; the emulated library keeps its symbols to itself; and the ThreadSanitizer and
AddressSanitizer passes over every op are clean while catching a deliberate race and overflow.

The emulated twins of the op suites (test_conv2d.py and others, ids "emu_reverse"/"emu_random")
check the kernels' results; this file checks the machine they run on.
"""

import os
import pathlib
import random
import re
import runpy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import cnnext
import cnnext.cuda_emulation as emulation
from benchmarks import cuda_resources

from .conftest import tf32_reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
emu = torch.ops.cnnext_emu


@pytest.fixture(autouse=True)
def forward_schedule():
    with emulation.schedule("forward"):
        yield


# --- built-in variables, shared memory, launch checks ------------------------------------------


def test_every_thread_sees_its_indices_and_the_launch_dims():
    grid, block = (2, 3, 2), (4, 2, 3)
    shared = 100
    result = emu._selftest_indices(list(grid), list(block), shared, 0)
    blocks, threads = 2 * 3 * 2, 4 * 2 * 3
    values = result[: blocks * threads * 12].view(blocks, threads, 12)
    seen = set()
    for b in range(blocks):
        for t in range(threads):
            tx, ty, tz, bx, by, bz, *dims = values[b, t].tolist()
            assert dims == [*block, *grid]
            assert bx + 2 * (by + 3 * bz) == b and tx + 4 * (ty + 2 * tz) == t
            seen.add((tx, ty, tz, bx, by, bz))
    assert len(seen) == blocks * threads
    # Dynamic shared memory is NaN (0xFF bytes) when every block starts, though each dirties it.
    assert result[blocks * threads * 12 :].tolist() == [1] * blocks


@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_blocks_all_run_once_under_every_schedule(schedule):
    with emulation.schedule(schedule, seed=3):
        result = emu._selftest_indices([5, 1, 1], [3, 1, 1], 0, 0)
    block_ids = result[: 15 * 12].view(5, 3, 12)[:, :, 3]
    assert sorted(block_ids[:, 0].tolist()) == list(range(5))


LAUNCH_ERRORS = {
    "1025 threads": ([1, 1, 1], [1025, 1, 1], 0, 0, r"1025 threads per block, more than 1024"),
    "block z 65": ([1, 1, 1], [1, 1, 65], 0, 0, r"exceeds the per-axis limits"),
    "grid y 65536": ([1, 65536, 1], [1, 1, 1], 0, 0, r"grid.y = 65536 exceeds 65535"),
    "grid z 65536": ([1, 1, 65536], [1, 1, 1], 0, 0, r"grid.z = 65536 exceeds 65535"),
    "empty grid": ([0, 1, 1], [32, 1, 1], 0, 0, r"empty grid"),
    "empty block": ([1, 1, 1], [0, 1, 1], 0, 0, r"empty block"),
    "shared over 48 KiB": ([1, 1, 1], [32, 1, 1], 48 * 1024 + 1, 0, r"48 KiB without cudaFuncAttribute"),
    "shared over the opt-in": ([1, 1, 1], [32, 1, 1], 70000, 65536, r"the kernel's cudaFuncAttribute"),
    "opt-in over 227 KiB": ([1, 1, 1], [32, 1, 1], 0, 300000, r"at most 232448 bytes per block"),
}


@pytest.mark.parametrize(
    "grid, block, shared, opt_in, message", LAUNCH_ERRORS.values(), ids=LAUNCH_ERRORS.keys()
)
def test_launches_a_gpu_would_refuse_raise_naming_the_kernel(grid, block, shared, opt_in, message):
    with pytest.raises(RuntimeError, match=message) as error:
        emu._selftest_indices(grid, block, shared, opt_in)
    assert "indices_kernel" in str(error.value)


def test_shared_memory_past_48_kib_runs_with_the_opt_in():
    result = emu._selftest_indices([2, 1, 1], [32, 1, 1], 60000, 65536)
    assert result[-2:].tolist() == [1, 1]


# --- barriers, warp collectives, atomics ----------------------------------------------------------


@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_reducing_barriers(schedule):
    pred = torch.zeros(96, dtype=torch.int32)
    pred[[3, 50, 95]] = 1
    with emulation.schedule(schedule, seed=5):
        assert emu._selftest_barrier_reduce(pred, 0).tolist() == [3] * 96  # __syncthreads_count
        assert emu._selftest_barrier_reduce(pred, 1).tolist() == [0] * 96  # _and
        assert emu._selftest_barrier_reduce(pred, 2).tolist() == [1] * 96  # _or
        assert emu._selftest_barrier_reduce(torch.ones(96, dtype=torch.int32), 1).tolist() == [1] * 96


SHFL, UP, DOWN, XOR, BALLOT, ANY, ALL, ACTIVE, SYNCWARP = range(9)
FULL = 0xFFFFFFFF


def warp_op(x, op, mask=FULL, arg=0, width=32):
    return emu._selftest_warp(x, op, mask, arg, width, x.numel())


@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_shuffle_down_reduction_leaves_each_warps_sum_in_lane_0(schedule):
    x = torch.arange(64, dtype=torch.float32)
    with emulation.schedule(schedule, seed=7):
        for offset in (16, 8, 4, 2, 1):
            x = x + warp_op(x, DOWN, arg=offset)
    assert x[0].item() == sum(range(32)) and x[32].item() == sum(range(32, 64))


@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tensor_core_mma_computes_a_16x8x16_product_with_the_documented_fragments(dtype, schedule):
    """cuda_tensor_cores.h's mma_m16n8k16 as the emulator runs it: each lane loads the fragments
    the header documents, one warp multiplies, each lane stores its part of D. A layout mistake on
    either side (loads, the emulated instruction, stores) puts values in the wrong places."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(16, 16, generator=generator).to(dtype)
    b = torch.randn(16, 8, generator=generator).to(dtype)
    c = torch.randn(16, 8, generator=generator)
    with emulation.schedule(schedule, seed=11):
        d = emu._selftest_mma(a, b.t().contiguous(), c)
    # Products of two 16-bit numbers are exact in float; only the float sums round.
    torch.testing.assert_close(d, (a.double() @ b.double() + c.double()).float(), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("divisor", [1, 2, 3, 7, 64, 1000, 4097, 65535, 2**30, 2**30 + 1, 2**31 - 1])
def test_fast_divmod_agrees_with_division_over_the_whole_dividend_range(divisor):
    """cuda_fast_divmod.h's multiply-high division, which the conv2d and pooling kernels index
    with: quotient and remainder equal integer division for dividends at both ends of [0, 2^31),
    around every multiple of the divisor there, and at random."""
    top = 2**31 - 1
    edges = [0, 1, 2, divisor - 1, divisor, divisor + 1, top - 1, top]
    multiples = [m * divisor + e for m in (1, 2, 3, top // divisor - 1, top // divisor) for e in (-1, 0, 1)]
    randoms = torch.randint(
        0, top, (20000,), generator=torch.Generator().manual_seed(divisor % 1000)
    ).tolist()
    dividends = torch.tensor(sorted({d for d in edges + multiples + randoms if 0 <= d <= top}))
    got = emu._selftest_fast_divmod(dividends, divisor)
    assert torch.equal(got[:, 0], dividends // divisor)
    assert torch.equal(got[:, 1], dividends % divisor)


@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_tf32_mma_rounds_to_nearest_away_and_computes_a_16x8x8_product(schedule):
    """mma_m16n8k8_tf32 with to_tf32 as the emulator runs them: A and B rounded to TF32 (ties away
    from zero, as cvt.rna does), multiplied with the documented fragment layout. Exact ties are
    planted in A: rounding them toward zero or to even would show."""
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(16, 8, generator=generator)
    b = torch.randn(8, 8, generator=generator)
    c = torch.randn(16, 8, generator=generator)
    # 1 + 2^-11 and 1 + 3 * 2^-11 lie halfway between TF32 neighbours; away from zero means up.
    a[0, :4] = torch.tensor([1 + 2.0**-11, -(1 + 2.0**-11), 1 + 3 * 2.0**-11, 2.5 + 2.0**-10])
    with emulation.schedule(schedule, seed=13):
        d = emu._selftest_mma_tf32(a, b.t().contiguous(), c)
    assert tf32_reference(a[0, :3]).tolist() == [1 + 2.0**-10, -(1 + 2.0**-10), 1 + 2 * 2.0**-10]
    expected = tf32_reference(a) @ tf32_reference(b) + c.double()
    # Products of two TF32 numbers are exact in float; only the float sums round. Unrounded inputs
    # would be off by about 1e-4 relative.
    torch.testing.assert_close(d, expected.float(), rtol=1e-6, atol=1e-5)


def test_xor_butterfly_gives_every_lane_the_sum():
    x = torch.arange(32, dtype=torch.float32)
    for mask in (16, 8, 4, 2, 1):
        x = x + warp_op(x, XOR, arg=mask)
    assert x.tolist() == [float(sum(range(32)))] * 32


def test_shuffle_up_inclusive_scan():
    x = torch.ones(32)
    lane = torch.arange(32)
    for offset in (1, 2, 4, 8, 16):
        x = x + torch.where(lane >= offset, warp_op(x, UP, arg=offset), torch.zeros(32))
    assert x.tolist() == [float(i + 1) for i in range(32)]


def test_shuffle_index_broadcasts_within_each_width_segment():
    x = torch.arange(32, dtype=torch.float32)
    assert warp_op(x, SHFL, arg=3, width=8).tolist() == [float(8 * (i // 8) + 3) for i in range(32)]
    # Lanes past a segment's end (down) or before its start (up) keep their own value.
    assert warp_op(x, DOWN, arg=3, width=8).tolist() == [float(i + 3 if i % 8 < 5 else i) for i in range(32)]
    assert warp_op(x, UP, arg=3, width=8).tolist() == [float(i - 3 if i % 8 >= 3 else i) for i in range(32)]


def test_ballot_any_all_and_active_mask():
    x = -torch.ones(40)
    x[[1, 5, 33]] = 1.0
    assert int(warp_op(x[:32], BALLOT)[0]) == (1 << 1) | (1 << 5)
    assert int(warp_op(x, BALLOT, mask=0xFF)[32]) == 1 << 1  # the partial second warp: 8 lanes
    assert warp_op(x, ANY, mask=0xFF)[32].item() == 1.0
    assert warp_op(x[:32], ALL)[0].item() == 0.0
    assert warp_op(torch.ones(32), ALL)[0].item() == 1.0
    assert int(warp_op(x, ACTIVE, mask=0xFF)[32]) == 0xFF


def test_a_full_mask_over_a_partial_warp_is_an_error():
    with pytest.raises(RuntimeError, match="the mask 0xffffffff names lane 8, which does not exist"):
        warp_op(torch.ones(40), BALLOT)


def test_partial_masks_only_synchronise_their_lanes():
    x = torch.arange(32, dtype=torch.float32)
    out = warp_op(x, SHFL, mask=0x0000FFFF, arg=2)
    assert out[:16].tolist() == [2.0] * 16 and out[16:].tolist() == [-1.0] * 16


def test_atomics_from_every_thread_of_every_block():
    count, sum_f, sum_d, max_index, sum_u64 = emu._selftest_atomics(3, 128).tolist()
    assert (count, sum_f, sum_d, max_index, sum_u64) == (384, 192.0, 192.0, 383, 384)


# --- what the schedules expose ----------------------------------------------------------------------

# race_kernel: 0 = read the lower neighbour's slot, 1 = the upper one's, 2 = a tree sum; without
# the barriers each needs, the result depends on the order threads run between barriers.
CORRECT = {0: [i for i in range(256)], 1: [i + 2 for i in range(255)] + [0], 2: [256]}
HIDES = {0: "forward", 1: "reverse", 2: "reverse"}  # the one order under which each race is invisible


@pytest.mark.parametrize("which", [0, 1, 2], ids=["lower-neighbour", "upper-neighbour", "tree-sum"])
@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_each_race_shows_under_every_schedule_but_the_one_that_hides_it(schedule, which):
    with emulation.schedule(schedule, seed=11):
        fixed = emu._selftest_race(which, 256, True).tolist()
        broken = emu._selftest_race(which, 256, False).tolist()
    result_length = len(CORRECT[which])
    assert fixed[:result_length] == CORRECT[which]
    if schedule == HIDES[which]:
        assert broken[:result_length] == CORRECT[which]
    else:
        assert broken[:result_length] != CORRECT[which]


BROKEN_KERNELS = {
    "divergent barriers": (
        0,
        64,
        r"divergent __syncthreads: threads 0-31 wait at selftest_kernels.cpp:\d+; ",
    ),
    "exited threads at a barrier": (1, 64, r"threads 32-63 exited while threads 0-31 wait at __syncthreads"),
    "mask naming exited lanes": (2, 32, r"(has exited|exited while lane \d+ waits for it)"),
    "mask without the caller": (3, 32, r"the mask 0x1 does not name the calling lane [1-9]"),
    "warp waits while a lane is at a barrier": (4, 32, r"deadlock: threads 1-31 wait at warp collectives"),
    "trap": (7, 4, r"__trap\(\) at selftest_kernels.cpp"),
}


@pytest.mark.parametrize("mode, threads, message", BROKEN_KERNELS.values(), ids=BROKEN_KERNELS.keys())
@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_broken_kernels_fail_with_an_error_saying_why(schedule, mode, threads, message):
    with emulation.schedule(schedule, seed=13), pytest.raises(RuntimeError, match=message) as error:
        emu._selftest_broken(mode, 1, threads)
    assert "broken_kernel block (0, 0, 0)" in str(error.value)


@pytest.mark.parametrize("schedule", emulation.SCHEDULES)
def test_async_copies_land_when_waited_for_by_commit_group(schedule):
    """cuda_async_copy.h as emulated: a copy lands only when wait_copies lets at most N newer groups
    stay in flight (so a kernel reading a stage too early sees stale data here too), whole 16
    bytes, and a copy of 0 source bytes fills zeros."""
    src = torch.randn(64, 4)
    with emulation.schedule(schedule, seed=5):
        out = emu._selftest_async_copy(src)
    after_wait_1_a, after_wait_1_b, after_wait_0_b, zero_fill = out.unbind(1)
    assert torch.equal(after_wait_1_a, src[:32])
    assert torch.equal(after_wait_1_b, torch.full((32, 4), -1.0))  # group 1 still in flight
    assert torch.equal(after_wait_0_b, src[32:])
    assert torch.equal(zero_fill, torch.zeros(32, 4))


@pytest.mark.parametrize(
    "mode, blocks, message",
    [
        (8, 2, r"block \(1, 0, 0\): thread 0: cp.async copies of an earlier block were never waited for"),
        (9, 1, r"cp.async of 16 bytes from or to an address not 16-byte aligned"),
    ],
    ids=["copies left in flight", "misaligned copy"],
)
def test_async_copy_misuse_fails_with_an_error_saying_why(mode, blocks, message):
    with pytest.raises(RuntimeError, match=message):
        emu._selftest_broken(mode, blocks, 32)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="schedule must be one of"):
        emulation.set_schedule("sideways")
    with pytest.raises(RuntimeError, match="multiprocessor count must be >= 1"):
        emulation.set_multiprocessor_count(0)


# --- random shapes -----------------------------------------------------------------------------------


def _random_case(g: random.Random):
    """One random op call: (name, cnnext function, native function, input tensors)."""
    layout = g.choice([torch.contiguous_format, torch.channels_last])
    kind = g.choice(["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "attention"])
    if kind == "attention":
        b, h, lq, lk, d = (
            g.randint(1, 2),
            g.randint(1, 3),
            g.randint(1, 70),
            g.randint(1, 70),
            g.randint(1, 80),
        )
        causal = g.random() < 0.5
        tensors = [torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)]
        return (
            kind,
            lambda *t: cnnext.ops.attention(*t, causal=causal),
            lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal),
            tensors,
        )
    size = (g.randint(5, 20), g.randint(5, 20))
    if kind == "conv2d":
        kernel, stride, dilation = (g.randint(1, 5), g.randint(1, 5)), g.randint(1, 3), g.randint(1, 2)
        padding = g.randint(0, 2)
        if any(s + 2 * padding < dilation * (k - 1) + 1 for s, k in zip(size, kernel, strict=True)):
            padding = max(kernel) * dilation
        groups = g.choice([1, 2, 3])
        cin, cout = groups * g.randint(1, 3), groups * g.randint(1, 3)
        args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        x = torch.randn(g.randint(1, 3), cin, *size).contiguous(memory_format=layout)
        tensors = [x, torch.randn(cout, cin // groups, *kernel), torch.randn(cout)]
        return kind, lambda *t: cnnext.ops.conv2d(*t, **args), lambda *t: F.conv2d(*t, **args), tensors
    x = torch.randn(g.randint(1, 3), g.randint(1, 5), *size).contiguous(memory_format=layout)
    if kind == "adaptive_avg_pool2d":
        out = (g.randint(1, 8), g.randint(1, 8))
        return (
            kind,
            lambda t: cnnext.ops.adaptive_avg_pool2d(t, out),
            lambda t: F.adaptive_avg_pool2d(t, out),
            [x],
        )
    kernel = g.randint(1, 4)
    args = dict(
        kernel_size=kernel,
        stride=g.randint(1, 3),
        padding=g.randint(0, kernel // 2),
        ceil_mode=g.random() < 0.5,
    )
    if kind == "max_pool2d":
        args["dilation"] = g.randint(1, 2)
    return kind, lambda t: getattr(cnnext.ops, kind)(t, **args), lambda t: getattr(F, kind)(t, **args), [x]


LOW_PRECISION_TYPES = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_emulated_ops_match_native_on_random_shapes(seed, dtype):
    """Random geometries of every op, forward and every gradient, both layouts, on the emulated
    kernels under the random schedule: float32/float64 against a float64 reference at the suites'
    tolerances; float16/bfloat16 within twice native's own error (plus 1% of the largest value)."""
    g = random.Random(f"{seed}-{dtype}")
    for _ in range(10):
        kind, ours_fn, native_fn, tensors = _random_case(g)
        tensors = [t.to(dtype) for t in tensors]
        leaves = [t.detach().requires_grad_() for t in tensors]
        with emulation.schedule("random", seed=seed), emulation.routed():
            ours = ours_fn(*leaves)
            grad_out = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
            ours_grads = torch.autograd.grad(ours, leaves, grad_out)
        ref_leaves = [t.detach().double().requires_grad_() for t in tensors]
        ref = native_fn(*ref_leaves)
        ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())
        if dtype in LOW_PRECISION_TYPES:
            native_leaves = [t.detach().requires_grad_() for t in tensors]
            native = native_fn(*native_leaves)
            native_grads = torch.autograd.grad(native, native_leaves, grad_out)
            for got, want, theirs in zip(
                (ours, *ours_grads), (ref, *ref_grads), (native, *native_grads), strict=True
            ):
                err, err_native = (got.double() - want).abs().max(), (theirs.double() - want).abs().max()
                assert err <= 2 * err_native + 1e-2 * want.abs().max(), (
                    f"{kind}: {err} vs native {err_native}"
                )
        else:
            tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
            for got, want in zip((ours, *ours_grads), (ref, *ref_grads), strict=True):
                torch.testing.assert_close(got.double(), want, **tol, msg=lambda m, k=kind: f"{k}: {m}")


# --- the emulated library ---------------------------------------------------------------------------


def _emulated_kernel_names():
    """Every __global__ kernel defined in csrc/<op>/*.cu."""
    names = set()
    for path in (ROOT / "csrc").glob("*/*.cu"):
        names.update(
            re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", path.read_text())
        )
    return names


def test_every_cuda_kernel_is_reached_by_the_emulated_workload():
    """A kernel no emulated test reaches is an untested kernel: run the sanitizer workload here and
    check that every __global__ function in csrc/ was launched."""
    workload = runpy.run_path(str(ROOT / "tests" / "cuda_kernel_workload.py"))
    for op in ("conv2d", "pool2d", "attention"):
        workload[op]()
    launches = [line.split("\t") for line in emu._launched_kernels()]
    launched = {name.split("<")[0].split("::")[-1] for name, _, _ in launches}
    assert _emulated_kernel_names() <= launched, _emulated_kernel_names() - launched
    # Both argmax encodings of max pooling and both layouts were launched.
    full_names = " ".join(name for name, _, _ in launches)
    assert "unsigned char, true" in full_names and "long int, false" in full_names
    # The tensor-core variants of the implicit GEMM, for both 16-bit types and TF32, all three
    # problems (and the cp.async forward), both block tiles.
    for dtype in ("c10::Half", "c10::BFloat16", "float"):
        for tile in ("BlockTile<64, 64, ", "BlockTile<128, 64, "):
            for problem in ("ForwardProblem", "GradInputProblem", "GradWeightProblem"):
                name = f"implicit_gemm_kernel<{problem}<{dtype}>, TensorCoreVariant, {tile}"
                assert name in full_names, name
            name = f"implicit_gemm_kernel<TapMajorForwardProblem<{dtype}>, CpAsyncVariant, {tile}"
            assert name in full_names, name
    # The resource report's launch table (threads per block, largest dynamic shared memory) holds
    # for every launch the host code made.
    for name, threads, shared in launches:
        if "cnnext_emu_selftest" in name:
            continue
        family = name.split("<")[0].split("::")[-1]
        expected_threads, largest_shared = cuda_resources.LAUNCH[family]
        assert int(threads) == expected_threads, name
        assert int(shared) <= largest_shared(name), name
    assert set(cuda_resources.LAUNCH) == _emulated_kernel_names()


def test_the_emulated_library_exports_no_cnnext_symbols():
    """The emulated kernels share C++ names with cnnext._C's; hidden visibility keeps them apart."""
    library = next(emulation.build_directory().glob("*.so"))
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", "-C", str(library)], capture_output=True, text=True
    )
    assert symbols.returncode == 0, symbols.stderr
    assert not [line for line in symbols.stdout.splitlines() if "cnnext::" in line]


def test_emulated_ops_have_the_schemas_of_the_real_ones():
    for name in (
        "conv2d",
        "_conv2d_backward",
        "max_pool2d",
        "_max_pool2d_with_taps",
        "_max_pool2d_values",
        "_max_pool2d_backward",
        "avg_pool2d",
        "_avg_pool2d_backward",
        "adaptive_avg_pool2d",
        "_adaptive_avg_pool2d_backward",
        "attention",
        "_attention_backward",
    ):
        real, emulated = getattr(torch.ops.cnnext, name).default, getattr(emu, name).default
        assert str(real._schema).removeprefix("cnnext::") == str(emulated._schema).removeprefix(
            "cnnext_emu::"
        )


# --- sanitizer passes -------------------------------------------------------------------------------

SANITIZERS = {
    "thread": dict(
        library="libtsan.so",
        options="TSAN_OPTIONS",
        report="WARNING: ThreadSanitizer",
        control="control-race",
    ),
    "address": dict(
        library="libasan.so",
        options="ASAN_OPTIONS",
        report="ERROR: AddressSanitizer",
        control="control-overflow",
    ),
}


def _run_under(sanitizer, *workload):
    spec = SANITIZERS[sanitizer]
    # The sanitizer's runtime, and libstdc++ so that its C++ exception interceptors find their target
    # (python itself does not link libstdc++).
    preload = []
    for name in (spec["library"], "libstdc++.so.6"):
        found = subprocess.run(
            ["gcc", f"-print-file-name={name}"], capture_output=True, text=True
        ).stdout.strip()
        if not os.path.isabs(found):
            pytest.fail(f"{name} not found (gcc -print-file-name): the sanitizer pass cannot run")
        preload.append(found)
    env = {
        **os.environ,
        "LD_PRELOAD": " ".join(preload),
        "CNNEXT_EMU_SANITIZER": sanitizer,
        "OMP_NUM_THREADS": "1",
        spec["options"]: "detect_leaks=0 exitcode=66 halt_on_error=0"
        if sanitizer == "address"
        else "exitcode=66",
    }
    command = [sys.executable, str(ROOT / "tests" / "cuda_kernel_workload.py"), *workload]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.mark.parametrize("op", ["conv2d", "pool2d", "attention"])
@pytest.mark.parametrize("sanitizer", list(SANITIZERS), ids=["tsan", "asan"])
def test_sanitizer_pass_is_clean(sanitizer, op):
    result = _run_under(sanitizer, op)
    report = SANITIZERS[sanitizer]["report"]
    assert report not in result.stderr, result.stderr[-6000:]
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]


@pytest.mark.parametrize("sanitizer", list(SANITIZERS), ids=["tsan", "asan"])
def test_sanitizer_pass_catches_a_deliberate_bug(sanitizer):
    """The passes above are not vacuous: a race between two threads of a block (TSan) and a write
    past the end of a buffer (ASan) in a self-test kernel are reported."""
    result = _run_under(sanitizer, SANITIZERS[sanitizer]["control"])
    assert SANITIZERS[sanitizer]["report"] in result.stderr, result.stderr[-4000:]
    assert "selftest_kernels.cpp" in result.stderr
