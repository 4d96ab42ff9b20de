"""cnnext.ops.attention against a float64 reference and F.scaled_dot_product_attention: outputs and
the three gradients over sequence lengths (tile multiples and not), Lq != Lk, head dims and causal
masking; gradcheck, opcheck, torch.compile, SelfAttention2d against its native twin, bad inputs."""

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext.ops import reference

from .conftest import (
    CPU_ISAS,
    DEVICES,
    FULL_PRECISION,
    LOW_PRECISION,
    assert_within_sdpa_error,
    cpu_isas_below_best,
    run_with_cpu_isa,
)

TOLERANCES = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# (Lq, Lk): single tokens, tile multiples (64/128) and not, Lq < Lk and Lq > Lk.
LENGTHS = [(1, 1), (37, 37), (64, 128), (130, 70), (5, 200), (200, 5), (256, 256)]


def check_against_reference(q, k, v, tol, causal):
    """Output and dq, dk, dv of cnnext vs the naive formula in float64."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = cnnext.ops.attention(*leaves, causal=causal)
    ref = reference.attention(*ref_leaves, causal=causal)
    assert out.shape == ref.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, **tol)
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, **tol, msg=lambda m, n=name: f"d{n}: {m}")


# The CPU forward takes tiles of up to 256 query rows x 512 keys: these lengths need several of
# both, with partial last tiles, so the running max and sum carry across key tiles.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", [(300, 1100), (600, 530), (1030, 40)], ids="Lq{0[0]}-Lk{0[1]}".format)
def test_cpu_matches_reference_over_several_tiles(lengths, causal, dtype):
    lq, lk = lengths
    q = torch.randn(1, 2, lq, 32, dtype=dtype)
    # Keys drift along the sequence so that later tiles hold larger scores: the running max must grow.
    k = torch.randn(1, 2, lk, 32, dtype=dtype) + torch.linspace(0, 2, lk, dtype=dtype).view(1, 1, -1, 1)
    v = torch.randn(1, 2, lk, 32, dtype=dtype)
    check_against_reference(q, k, v, TOLERANCES[dtype], causal)


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda lq_lk: "Lq{}-Lk{}".format(*lq_lk))
def test_matches_reference(lengths, head_dim, causal, device, dtype):
    lq, lk = lengths
    q = torch.randn(2, 3, lq, head_dim, dtype=dtype, device=device)
    k = torch.randn(2, 3, lk, head_dim, dtype=dtype, device=device)
    v = torch.randn(2, 3, lk, head_dim, dtype=dtype, device=device)
    check_against_reference(q, k, v, TOLERANCES[dtype], causal)


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", [(70, 300), (300, 300)], ids=["Lq70-Lk300", "Lq300-Lk300"])
def test_single_head_splits_key_tiles_across_threads(lengths, causal, device, dtype):
    """With fewer (batch, head) pairs than threads the CPU backward splits a head's key tiles into
    chunks with their own dQ copies: their sum must equal the one-task result."""
    lq, lk = lengths
    q = torch.randn(1, 1, lq, 32, dtype=dtype, device=device)
    k, v = (torch.randn(1, 1, lk, 32, dtype=dtype, device=device) for _ in range(2))
    check_against_reference(q, k, v, TOLERANCES[dtype], causal)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_sdpa_including_scale_and_3d(causal, device):
    q, k, v = (torch.randn(2, 4, 50, 32, device=device) for _ in range(3))
    torch.testing.assert_close(
        cnnext.ops.attention(q, k, v, causal=causal),
        F.scaled_dot_product_attention(q, k, v, is_causal=causal),
    )
    torch.testing.assert_close(
        cnnext.ops.attention(q, k, v, scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3)
    )
    q3, k3, v3 = q[:, 0], k[:, 0], v[:, 0]  # (B, L, D)
    torch.testing.assert_close(cnnext.ops.attention(q3, k3, v3), F.scaled_dot_product_attention(q3, k3, v3))


@pytest.mark.parametrize("device, dtype", LOW_PRECISION)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_low_precision_error_is_comparable_to_sdpa(causal, device, dtype):
    q, k, v = (torch.randn(2, 4, 100, 64, device=device).to(dtype) for _ in range(3))
    ref = reference.attention(q.double(), k.double(), v.double(), causal=causal)
    err_ours = (cnnext.ops.attention(q, k, v, causal=causal).double() - ref).abs().max().item()
    err_sdpa = (F.scaled_dot_product_attention(q, k, v, is_causal=causal).double() - ref).abs().max().item()
    assert err_ours <= 2 * err_sdpa + 1e-3


# (Lq, Lk, head_dim): every head-dim bucket of the tensor-core forward (32, 64, 128, 256) with
# remainder rows, keys and head dims, and Lq < Lk, Lq > Lk for the causal alignment.
LOW_PRECISION_CASES = [(1, 1, 8), (37, 41, 24), (130, 70, 64), (64, 128, 100), (40, 70, 256)]


@pytest.mark.parametrize("device, dtype", LOW_PRECISION)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda c: "Lq{}-Lk{}-D{}".format(*c))
def test_low_precision_forward_and_gradients_within_sdpa_error(
    case, causal, device, dtype, monkeypatch, launched_kernels
):
    """float16/bfloat16 in both forward variants (the tensor-core one, FlashAttention-2's split on
    mma.sync, and the per-row one with CNNEXT_CUDA_TENSOR_CORES=0), and the gradients from the
    lse each saves: the error against float64 stays within a small factor of SDPA's own error on
    the same inputs."""
    lq, lk, head_dim = case
    q = torch.randn(1, 2, lq, head_dim, device=device).to(dtype)
    k, v = (torch.randn(1, 2, lk, head_dim, device=device).to(dtype) for _ in range(2))
    grad = torch.randn(1, 2, lq, head_dim, device=device).to(dtype)

    def run(fn, *tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = fn(*leaves)
        return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]

    ref = run(lambda *t: reference.attention(*t, causal=causal), q.double(), k.double(), v.double())
    sdpa = run(lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal), q, k, v)
    # The saved log-sum-exp, which the backward's P = exp(s - lse) rests on: float accumulation of
    # exact 16-bit products, so close to the float64 one.
    scores = q.double() @ k.double().transpose(-1, -2) / head_dim**0.5
    if causal:
        scores = scores.masked_fill(
            torch.ones(lq, lk, dtype=torch.bool, device=device).triu(1), float("-inf")
        )
    want_lse = torch.logsumexp(scores, dim=-1)
    for setting in ("1", "0"):
        monkeypatch.setenv("CNNEXT_CUDA_TENSOR_CORES", setting)
        _, lse = torch.ops.cnnext.attention(q, k, v, None, causal)
        torch.testing.assert_close(
            lse.double(), want_lse, rtol=0, atol=1e-4, msg=lambda m: f"lse ({setting}): {m}"
        )
        ours = run(lambda *t: cnnext.ops.attention(*t, causal=causal), q, k, v)
        assert_within_sdpa_error(("out", "dq", "dk", "dv"), ours, sdpa, ref, dtype, setting)
    if launched_kernels is not None:  # emulated: the launches name the variants
        launched = launched_kernels()
        name = "c10::Half" if dtype == torch.float16 else "c10::BFloat16"
        assert f"tensor_core_forward_kernel<{name}" in launched
        assert f"::forward_kernel<{name}" in launched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradcheck_float64(causal, device):
    q, k, v = (
        torch.randn(1, 2, n, 8, dtype=torch.float64, device=device, requires_grad=True) for n in (9, 7, 7)
    )
    assert torch.autograd.gradcheck(lambda *t: cnnext.ops.attention(*t, causal=causal), (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradgradcheck_float64(causal, device):
    """Second derivatives through the backward op (recomputed by the plain-PyTorch formula)."""
    q, k, v = (
        torch.randn(1, 2, n, 4, dtype=torch.float64, device=device, requires_grad=True) for n in (5, 6, 6)
    )
    assert torch.autograd.gradgradcheck(
        lambda *t: cnnext.ops.attention(*t, scale=0.7, causal=causal), (q, k, v)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, ops):
    q, k, v = (
        torch.randn(2, 2, n, 16, dtype=torch.float64, device=device, requires_grad=True) for n in (9, 7, 7)
    )
    torch.library.opcheck(ops.attention.default, (q, k, v, None, True))
    torch.library.opcheck(ops.attention.default, (q, k, v, 0.5, False))


def test_torch_compile_fullgraph_matches_eager():
    def block(q, k, v):
        return cnnext.ops.attention(q, k, v, causal=True).relu().sum(-1)

    q, k, v = (torch.randn(2, 2, 33, 16) for _ in range(3))
    torch.testing.assert_close(torch.compile(block, fullgraph=True)(q, k, v), block(q, k, v))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_sequences(device):
    q, k, v = (
        torch.randn(2, 1, 0, 8, device=device),
        torch.randn(2, 1, 4, 8, device=device),
        torch.randn(2, 1, 4, 8, device=device),
    )
    assert cnnext.ops.attention(q, k, v).shape == (2, 1, 0, 8)
    q = torch.randn(0, 1, 3, 8, device=device)
    assert cnnext.ops.attention(q, k[:0], v[:0]).shape == (0, 1, 3, 8)


@pytest.mark.parametrize("device", [d for d in DEVICES if d.id != "cpu" and "reverse" not in d.id])
def test_more_batch_heads_than_a_grid_row_holds(device):
    """65,537 (batch, head) pairs: past the 65,535 that grid.y allows, where the CUDA kernels once
    put them (the emulator's launch check caught it); now they are numbered in grid.x."""
    q, k, v = (
        torch.randn(1, 65537, 1, 2, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3)
    )
    out = cnnext.ops.attention(q, k, v)
    ref = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach())
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref_grads = torch.autograd.grad(F.scaled_dot_product_attention(*leaves).sum(), leaves)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 2])
def test_self_attention2d_matches_native_backend(heads, device):
    torch.manual_seed(0)
    ours = cnnext.nn.SelfAttention2d(16, heads=heads, backend="cnnext").double().to(device)
    native = cnnext.nn.SelfAttention2d(16, heads=heads, backend="native").double().to(device)
    assert ours.state_dict().keys() == native.state_dict().keys()
    native.load_state_dict(ours.state_dict())
    with torch.no_grad():  # a zero gate (the initial state) would hide the attention path
        ours.gate.fill_(0.7)
        native.gate.fill_(0.7)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64, device=device)
    out, out_native = ours(x), native(x)
    torch.testing.assert_close(out, out_native)
    out.square().sum().backward()
    out_native.square().sum().backward()
    for (name, p), p_native in zip(ours.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_native.grad, msg=lambda m, n=name: f"{n}: {m}")


def test_self_attention2d_starts_as_identity_and_rejects_bad_config():
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(cnnext.nn.SelfAttention2d(8, heads=2)(x), x)
    with pytest.raises(ValueError, match="backend must be one of"):
        cnnext.nn.SelfAttention2d(8, backend="triton")
    with pytest.raises(ValueError, match="must be divisible by heads"):
        cnnext.nn.SelfAttention2d(10, heads=4)


Q = torch.randn(2, 2, 5, 8)
BAD_INPUTS = {
    "batch mismatch": (Q, torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8), "same batch size"),
    "heads mismatch": (Q, torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), "same number of heads"),
    "head dim mismatch": (Q, torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4), "same head dimension"),
    "k v shape mismatch": (
        Q,
        torch.randn(2, 2, 5, 8),
        torch.randn(2, 2, 6, 8),
        "k and v must agree in all but the last dimension",
    ),
    "wrong ndim": (torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5), "must all be 4-D .* or all 3-D"),
    "mixed ndim": (Q, Q[:, 0], Q[:, 0], "must all be 4-D"),
    "dtype mismatch": (Q, Q.double(), Q.double(), "expected k to have the dtype of q"),
    "integer": (Q.long(), Q.long(), Q.long(), "q must be a floating-point tensor"),
    "head dim too large": (*(torch.randn(1, 1, 2, 300),) * 3, r"head dimension must be in \[1, 256\]"),
}


@pytest.mark.parametrize("q, k, v, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_clear_error(q, k, v, message):
    with pytest.raises(RuntimeError, match=message):
        cnnext.ops.attention(q, k, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_tensors_on_different_devices_raise():
    with pytest.raises(RuntimeError, match="expected k to be on the device of q"):
        cnnext.ops.attention(Q.cuda(), Q, Q.cuda())


@pytest.mark.parametrize("isa", cpu_isas_below_best())
def test_lower_isa_loops_match_reference(isa):
    """The CPU attention loops are built for every ISA level (baseline, AVX2, AVX-512); a machine
    runs only its best one by default, so each lower build is run here in a process of its own,
    forward and backward, on lengths that leave partial vectors and tiles."""
    run_with_cpu_isa(
        f"""
import torch, cnnext
from tests.test_attention import TOLERANCES, check_against_reference
assert cnnext.build_info()["cpu_isa"] == "{isa}", cnnext.build_info()
for causal in (False, True):
    for dtype in (torch.float32, torch.float64):
        q = torch.randn(2, 3, 70, 32, dtype=dtype)
        k, v = torch.randn(2, 3, 150, 32, dtype=dtype), torch.randn(2, 3, 150, 32, dtype=dtype)
        check_against_reference(q, k, v, TOLERANCES[dtype], causal)
q, k, v = (torch.randn(2, 3, n, 16, requires_grad=True) for n in (70, 600, 600))
mask = torch.rand(2, 1, 70, 600) > 0.3
got = cnnext.ops.scaled_dot_product_attention(q, k, v, attn_mask=mask)
want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
grad = torch.randn_like(got)
for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
    torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])
print("ok")
""",
        isa,
    )


def test_cpu_isa_is_reported_and_bad_names_raise():
    info = cnnext.build_info()
    assert info["cpu_isa"] in CPU_ISAS and info["cpu_isa_supported"] in CPU_ISAS
    assert CPU_ISAS.index(info["cpu_isa"]) <= CPU_ISAS.index(info["cpu_isa_supported"])
    with pytest.raises(AssertionError, match="CNNEXT_CPU_ISA must be baseline, avx2 or avx512, got 'sse9'"):
        run_with_cpu_isa("import cnnext; cnnext.build_info(); print('ok')", "sse9")
