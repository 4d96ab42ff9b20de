"""The CPU kernel variants (cnnext.cpu_variants): the tables are well formed, every variant is
reached by a case written for it, and each case's results match native PyTorch, so every variant
is checked on its own rather than only where the op's grid happens to land on it."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext import ops

from .conftest import cpu_isas_below_best, run_with_cpu_isa

OPS = {
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "conv2d_forward",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "attention_forward",
    "attention_backward",
}
DIRECT_CONV = cnnext.build_info()["cpu_isa"] != "baseline"  # the direct kernels need AVX2 + FMA
CHANNELS_LAST_CONV = cnnext.build_info()["cpu_isa"] == "avx512"  # the channels_last kernels: AVX-512


def table():
    return {(v["op"], v["variant"]): v for v in cnnext.cpu_variants()}


def test_tables_are_well_formed():
    entries = cnnext.cpu_variants()
    keys = [(v["op"], v["variant"]) for v in entries]
    assert len(keys) == len(set(keys)), "an (op, variant) pair is listed twice"
    assert {op for op, _ in keys} == OPS
    for v in entries:
        assert v["variant"].isidentifier() and len(v["when"]) > 20, v
        assert isinstance(v["calls"], int) and v["calls"] >= 0


def test_variants_used_counts_only_the_block():
    x = torch.randn(1, 2, 8, 8)
    ops.max_pool2d(x, 2)  # outside the block: not counted
    with cnnext.cpu_variants_used() as used:
        ops.max_pool2d(x, 2)
        ops.max_pool2d(x, 2)
    assert used == {("max_pool2d_forward", "nchw_2x2_tiling"): 2}


# --- Pooling: one case per variant. -----------------------------------------------------------
# (case id, layout, input shape, op, op arguments, forward variant, backward variant); the op is
# max ("max_indices": with return_indices=True), avg or adaptive (both avg_pool2d_* variants).
CL = "channels_last"
K3S2P1 = dict(kernel_size=3, stride=2, padding=1)
POOL_CASES = [
    ("max-2x2", "nchw", (2, 3, 8, 8), "max", dict(kernel_size=2), "nchw_2x2_tiling", "nchw_2x2_tiling"),
    ("max-2x2-odd", "nchw", (2, 3, 9, 7), "max", dict(kernel_size=2), "nchw_2x2_tiling", "nchw_2x2_tiling"),
    ("max-3x3", "nchw", (2, 3, 11, 10), "max", K3S2P1, "nchw_plane_fold", "nchw_tap_scatter"),
    ("max-dilated", "nchw", (2, 3, 12, 12), "max", dict(kernel_size=3, padding=1, dilation=2, stride=1),
     "nchw_plane_fold", "nchw_tap_scatter"),
    ("max-indices", "nchw", (2, 3, 11, 10), "max_indices", K3S2P1, "nchw_plane_fold",
     "nchw_position_scatter"),
    ("max-cl", CL, (2, 40, 7, 7), "max", K3S2P1, "channels_last_blocks", "channels_last_tap_gather"),
    ("max-cl-2x2", CL, (2, 40, 8, 8), "max", dict(kernel_size=2), "channels_last_blocks",
     "channels_last_2x2_tiling"),
    ("max-cl-2x2-odd-16ch", CL, (2, 16, 9, 7), "max", dict(kernel_size=2), "channels_last_blocks",
     "channels_last_2x2_tiling"),
    ("max-cl-2x2-ceil", CL, (2, 40, 9, 9), "max", dict(kernel_size=2, ceil_mode=True),
     "channels_last_blocks", "channels_last_tap_gather"),
    ("max-cl-indices", CL, (2, 40, 7, 7), "max_indices", K3S2P1, "channels_last_blocks",
     "channels_last_position_scatter"),
    ("avg-global", "nchw", (3, 5, 7, 9), "adaptive", dict(output_size=1), "nchw_global", "nchw_global"),
    ("avg-cl-global", CL, (3, 40, 7, 9), "adaptive", dict(output_size=1), "channels_last_global",
     "channels_last_global"),
    ("avg-2x2", "nchw", (2, 3, 9, 8), "avg", dict(kernel_size=2), "nchw_2x2_tiling", "nchw_2x2_tiling"),
    ("avg-3x3", "nchw", (2, 3, 11, 10), "avg", K3S2P1, "nchw_separable", "nchw_gather_rows"),
    ("avg-3x3-excluding-pad", "nchw", (2, 3, 11, 10), "avg",
     dict(kernel_size=3, stride=3, padding=1, ceil_mode=True, count_include_pad=False),
     "nchw_separable", "nchw_gather_rows"),
    ("avg-adaptive", "nchw", (2, 3, 11, 10), "adaptive", dict(output_size=(3, 4)), "nchw_adaptive",
     "nchw_adaptive_scatter"),
    ("avg-adaptive-rows", "nchw", (2, 3, 11, 10), "adaptive", dict(output_size=(3, 1)), "nchw_adaptive",
     "nchw_adaptive_scatter"),
    ("avg-cl-2x2", CL, (2, 40, 8, 8), "avg", dict(kernel_size=2), "channels_last_2x2_tiling",
     "channels_last_gather"),
    ("avg-cl-3x3", CL, (2, 40, 7, 7), "avg", K3S2P1, "channels_last_blocks", "channels_last_gather"),
    ("avg-cl-adaptive", CL, (2, 40, 7, 7), "adaptive", dict(output_size=(2, 3)), "channels_last_blocks",
     "channels_last_gather"),
]  # fmt: skip


def pool_expected(case):
    """{op: variant} a pooling case must reach."""
    _, _, _, kind, _, forward, backward = case
    op = "max_pool2d" if kind.startswith("max") else "avg_pool2d"
    return {f"{op}_forward": forward, f"{op}_backward": backward}


def pool_call(kind, kwargs, functional):
    """The op call of a case: cnnext.ops or torch.nn.functional; the first output only."""
    if kind == "max":
        return lambda x: functional.max_pool2d(x, **kwargs)
    if kind == "max_indices":
        return lambda x: functional.max_pool2d(x, **kwargs, return_indices=True)[0]
    if kind == "avg":
        return lambda x: functional.avg_pool2d(x, **kwargs)
    return lambda x: functional.adaptive_avg_pool2d(x, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool2d_variant(case, dtype):
    _, layout, shape, kind, kwargs, _, _ = case
    expected = pool_expected(case)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    # Distinct values: no ties, so the argmax (and with it the max gradient) is unambiguous.
    values = torch.randperm(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape) / 7
    x = values.to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    x_native = values.clone().requires_grad_()
    with cnnext.cpu_variants_used() as used:
        out = pool_call(kind, kwargs, ops)(x)
        grad = torch.randn(out.shape, dtype=torch.float64)
        (dx,) = torch.autograd.grad(out, x, grad.to(dtype))
    assert set(used) == set(expected.items()), f"the case reached {used}"
    out_native = pool_call(kind, kwargs, F)(x_native)
    (dx_native,) = torch.autograd.grad(out_native, x_native, grad)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.double(), out_native, **tol)
    torch.testing.assert_close(dx.double(), dx_native, **tol)
    assert out.is_contiguous(memory_format=memory_format)


def test_pool2d_cases_cover_every_variant():
    covered = {(op, variant) for case in POOL_CASES for op, variant in pool_expected(case).items()}
    listed = {key for key in table() if "pool2d" in key[0]}
    assert covered == listed


# --- conv2d ------------------------------------------------------------------------------------

DIRECT = {"conv2d_forward": "direct", "conv2d_input_grad": "direct_phases", "conv2d_weight_grad": "direct"}
GEMM = {
    "conv2d_forward": "im2col_gemm",
    "conv2d_input_grad": "col2im_gemm",
    "conv2d_weight_grad": "im2col_gemm",
}
CHANNELS_LAST_DIRECT = {
    "conv2d_forward": "channels_last_direct",
    "conv2d_input_grad": "channels_last_direct_phases",
    "conv2d_weight_grad": "channels_last_direct",
}
ROWS = {**CHANNELS_LAST_DIRECT, "conv2d_forward": "channels_last_rows"}
CONV_CASES = [
    # (case id, dtype, layout, input shape, weight shape, conv2d arguments, the variants it must
    # reach on an AVX-512 CPU)
    ("direct", torch.float32, "nchw", (2, 3, 10, 12), (4, 3, 3, 3), dict(padding=1), DIRECT),
    (
        "direct-strided",
        torch.float32,
        "nchw",
        (2, 3, 15, 17),
        (4, 3, 3, 3),
        dict(stride=2, padding=1),
        DIRECT,
    ),
    ("gemm-float64", torch.float64, "nchw", (2, 3, 10, 12), (4, 3, 3, 3), dict(padding=1), GEMM),
    ("gemm-groups", torch.float32, "nchw", (2, 4, 10, 12), (6, 2, 3, 3), dict(padding=1, groups=2), GEMM),
    ("gemm-narrow", torch.float32, "nchw", (2, 3, 10, 5), (4, 3, 3, 3), dict(), GEMM),
    # Channels not whole vectors of 16 (21 outputs: one vector, masked), 70 outputs (five vectors:
    # blocks of 3 + 2), row tiles of uneven width, a stride with dilation (phases whose taps skip)
    # and a flattened 1x1.
    (
        "channels_last",
        torch.float32,
        CL,
        (2, 19, 9, 11),
        (21, 19, 3, 3),
        dict(padding=1),
        CHANNELS_LAST_DIRECT,
    ),
    (
        "channels_last-strided-dilated",
        torch.float32,
        CL,
        (2, 5, 15, 17),
        (70, 5, 3, 3),
        dict(stride=2, padding=2, dilation=2),
        CHANNELS_LAST_DIRECT,
    ),
    ("channels_last-1x1", torch.float32, CL, (3, 40, 6, 7), (33, 40, 1, 1), dict(), CHANNELS_LAST_DIRECT),
    # At most 16 output channels, 3 wide, stride and dilation 1 along rows (strided and dilated
    # along columns): the row tiles; 19 input channels over 21 columns leave tails after the 16 x 16
    # blocks of the planar copy in both directions.
    (
        "channels_last-rows",
        torch.float32,
        CL,
        (2, 19, 11, 21),
        (13, 19, 3, 3),
        dict(stride=(2, 1), padding=1, dilation=(2, 1)),
        ROWS,
    ),
    # The row tiles for 5- and 7-wide kernels (non-square: 3 x 7).
    ("channels_last-rows-5", torch.float32, CL, (2, 6, 8, 19), (16, 6, 5, 5), dict(padding=2), ROWS),
    ("channels_last-rows-3x7", torch.float32, CL, (2, 17, 7, 26), (9, 17, 3, 7), dict(padding=(1, 2)), ROWS),
    # NCHW with enough channels: copied to channels_last and back (results NCHW).
    (
        "channels_last-from-nchw",
        torch.float32,
        "nchw",
        (2, 16, 9, 13),
        (32, 16, 3, 3),
        dict(stride=2, padding=1),
        CHANNELS_LAST_DIRECT,
    ),
]


def conv_expected(case):
    """The variants a case reaches on this CPU: a channels_last case below AVX-512 runs the NCHW
    kernels (its input copied), DIRECT where those run."""
    _, dtype, layout, _, _, _, expected = case
    if expected["conv2d_weight_grad"] == "channels_last_direct" and not CHANNELS_LAST_CONV:
        return DIRECT if DIRECT_CONV else GEMM
    return expected


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv2d_variant(case):
    _, dtype, layout, x_shape, w_shape, kwargs, _ = case
    expected = conv_expected(case)
    if not DIRECT_CONV and "direct" in expected["conv2d_forward"]:
        pytest.skip("the direct conv2d kernels run only on AVX2 + FMA CPUs; this one runs the baseline build")
    memory_format = torch.channels_last if layout == CL else torch.contiguous_format
    x = torch.randn(x_shape, dtype=torch.float64).contiguous(memory_format=memory_format)
    w = torch.randn(w_shape, dtype=torch.float64)
    b = torch.randn(w_shape[0], dtype=torch.float64)
    xs, ws, bs = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    with cnnext.cpu_variants_used() as used:
        out = ops.conv2d(xs, ws, bs, **kwargs)
        grad = torch.randn(out.shape, dtype=torch.float64)
        dx, dw, db = torch.autograd.grad(out, (xs, ws, bs), grad.to(dtype))
    assert set(used) == set(expected.items()), f"the case reached {used}"
    natives = [t.clone().requires_grad_() for t in (x, w, b)]
    out_native = F.conv2d(*natives, **kwargs)
    dx_native, dw_native, db_native = torch.autograd.grad(out_native, natives, grad)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for ours, native in [(out, out_native), (dx, dx_native), (dw, dw_native), (db, db_native)]:
        torch.testing.assert_close(ours.double(), native, **tol)
    assert out.is_contiguous(memory_format=memory_format) and dx.is_contiguous(memory_format=memory_format)


def test_conv2d_cases_cover_every_variant():
    covered = {(op, variant) for case in CONV_CASES for op, variant in case[6].items()}
    assert covered == {key for key in table() if key[0].startswith("conv2d")}


# --- attention ---------------------------------------------------------------------------------


def attention_case(batch, heads, q_len, k_len, poison):
    """q, k, v (float32) of the given sizes; `poison` puts an infinity in one key."""
    q, k, v = (torch.randn(batch, heads, n, 16) for n in (q_len, k_len, k_len))
    if poison:
        k[0, 0, 1, 3] = float("inf")
    return q, k, v


PER_HEAD = {"attention_forward": "tiled", "attention_backward": "key_tiles_per_head"}
IN_CHUNKS = {"attention_forward": "tiled", "attention_backward": "key_tiles_in_chunks"}
ATTENTION_CASES = [
    # (case id, batch, heads, q_len, k_len, an infinite key, threads, the variants it must reach);
    # with 2 threads, one (batch, head) pair of 3 key tiles is split, two pairs are not.
    ("per-head", 2, 2, 40, 300, False, 2, PER_HEAD),
    ("in-chunks", 1, 1, 40, 600, False, 2, IN_CHUNKS),
    ("searching", 2, 2, 40, 300, True, 2, {"attention_forward": "tiled_searching_scores"}),
]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention_variant(case):
    _, batch, heads, q_len, k_len, poison, threads, expected = case
    q, k, v = attention_case(batch, heads, q_len, k_len, poison)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the backward's split depends on the thread count
    try:
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
        with cnnext.cpu_variants_used() as used:
            out = ops.scaled_dot_product_attention(qs, ks, vs)
            if not poison:
                grads = torch.autograd.grad(out, (qs, ks, vs), torch.ones_like(out))
    finally:
        torch.set_num_threads(before)
    assert set(used) == set(expected.items()), f"the case reached {used}"
    native = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    if poison:
        # SDPA's rows that saw the infinite key are NaN: so are ours, and the others match.
        native_nan = native.isnan()
        assert native_nan.any() and torch.equal(out.isnan(), native_nan)
        torch.testing.assert_close(out[~native_nan].double(), native[~native_nan], rtol=1e-4, atol=1e-5)
        return
    torch.testing.assert_close(out.double(), native, rtol=1e-5, atol=1e-5)
    qn, kn, vn = (t.double().requires_grad_() for t in (q, k, v))
    out_native = F.scaled_dot_product_attention(qn, kn, vn)
    for ours, ref in zip(
        grads, torch.autograd.grad(out_native, (qn, kn, vn), torch.ones_like(out_native)), strict=True
    ):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_attention_cases_cover_every_variant():
    covered = {(op, variant) for case in ATTENTION_CASES for op, variant in case[7].items()}
    assert covered == {key for key in table() if key[0].startswith("attention")}


def test_pool2d_benchmarks_reach_every_variant():
    """benchmarks/bench_pool2d.py measures every pooling variant (its cases, on small inputs here)."""
    from benchmarks.bench_pool2d import CASES

    reached = set()
    for ours, _, _ in CASES.values():
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 40, 12, 12).contiguous(memory_format=memory_format)
            for backward in (False, True):
                x.requires_grad_(backward)
                with cnnext.cpu_variants_used() as used:
                    out = ours(x)
                    if backward:
                        torch.autograd.grad(out, x, torch.ones_like(out))
                reached |= set(used)
    assert reached == {key for key in table() if "pool2d" in key[0]}


@pytest.mark.parametrize("isa", cpu_isas_below_best())
def test_every_variant_on_the_lower_isa_builds(isa):
    """A process runs one instruction-set build of the CPU loops (the best its CPU has): every case
    above again, in a process running a lower build."""
    script = """
import pytest, torch
from tests import test_cpu_variants as t
for case in t.POOL_CASES:
    for dtype in (torch.float32, torch.float64):
        t.test_pool2d_variant(case, dtype)
for case in t.CONV_CASES:
    try:
        t.test_conv2d_variant(case)
    except pytest.skip.Exception:  # the direct kernels under the baseline build
        pass
for case in t.ATTENTION_CASES:
    t.test_attention_variant(case)
print("ok")
"""
    run_with_cpu_isa(script, isa)


@pytest.mark.skipif(not DIRECT_CONV, reason="the direct conv2d kernels need an AVX2 + FMA CPU")
def test_conv2d_benchmarks_reach_every_variant():
    """benchmarks/bench_conv2d.py's shapes (batch 2 here), in both memory formats, reach every conv2d CPU
    variant this CPU runs on float32 without groups: below AVX-512 all but the channels_last ones
    (the 4x4 stage's narrow rows take the GEMM variants); on AVX-512 all but the GEMM ones, which
    serve only float64, groups and older CPUs there (the cases above reach them)."""
    from benchmarks.bench_conv2d import SHAPES

    reached = set()
    for (_, _, cin, cout, size, kernel, stride), memory_format in itertools.product(
        SHAPES, (torch.contiguous_format, torch.channels_last)
    ):
        x = torch.randn(2, cin, size, size).contiguous(memory_format=memory_format).requires_grad_()
        w = torch.randn(cout, cin, kernel, kernel, requires_grad=True)
        with cnnext.cpu_variants_used() as used:
            out = ops.conv2d(x, w, stride=stride, padding=kernel // 2)
            torch.autograd.grad(out, (x, w), torch.ones_like(out))
        reached |= set(used)
    listed = {key for key in table() if key[0].startswith("conv2d")}
    listed -= set((GEMM if CHANNELS_LAST_CONV else CHANNELS_LAST_DIRECT).items())
    assert reached == listed


def test_attention_benchmarks_reach_every_variant_but_the_score_search():
    """benchmarks/bench_attention.py's CPU shapes (on 2 threads, shorter sequences) reach every
    attention variant except tiled_searching_scores, which serves inputs holding NaN or infinity:
    a correctness path, not one to time."""
    from benchmarks.bench_attention import SHAPES

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    reached = set()
    try:
        for batch, heads, length, dim in SHAPES:
            q, k, v = (torch.randn(batch, heads, min(length, 600), dim, requires_grad=True) for _ in range(3))
            with cnnext.cpu_variants_used() as used:
                out = ops.scaled_dot_product_attention(q, k, v)
                torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
            reached |= set(used)
    finally:
        torch.set_num_threads(before)
    listed = {key for key in table() if key[0].startswith("attention")}
    assert reached == listed - {("attention_forward", "tiled_searching_scores")}
