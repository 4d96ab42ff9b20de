"""cnnext.ops.scaled_dot_product_attention against F.scaled_dot_product_attention: shapes with
broadcast and grouped heads x mask kinds (bool, float with its gradient, padding, fully masked
rows) x causal x dtypes, forward and every gradient; dropout (reproducible, keep rate, unbiased,
backward consistent with forward); gradcheck with masks; opcheck and torch.compile with a mask and
dropout; bad inputs raising where SDPA raises.

The CUDA kernels (and so the emulator) do not take masks, dropout or a value head dimension other
than the query's yet (issue 19): those cases run on the CPU, the others on every device."""

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext.ops import scaled_dot_product_attention as sdpa

from .conftest import DEVICES, FULL_PRECISION, LOW_PRECISION, assert_within_sdpa_error

# name -> (query, key, value shapes, enable_gqa)
SHAPES = {
    "4d": ((2, 3, 37, 16), (2, 3, 53, 16), (2, 3, 53, 16), False),
    "more queries than keys": ((1, 2, 70, 8), (1, 2, 20, 8), (1, 2, 20, 8), False),
    "several tiles": ((1, 2, 150, 32), (1, 2, 300, 32), (1, 2, 300, 32), False),
    "value dim differs": ((2, 2, 19, 16), (2, 2, 23, 16), (2, 2, 23, 24), False),
    "3d": ((3, 19, 8), (3, 23, 8), (3, 23, 8), False),
    "2d": ((19, 8), (23, 8), (23, 8), False),
    "broadcast batch": ((1, 3, 19, 8), (2, 1, 23, 8), (2, 1, 23, 8), False),
    "3d query, 4d key": ((19, 8), (2, 3, 23, 8), (2, 3, 23, 8), False),
    "5d": ((2, 2, 3, 11, 8), (2, 2, 3, 13, 8), (1, 2, 3, 13, 8), False),
    "gqa": ((2, 6, 19, 8), (2, 2, 23, 8), (2, 2, 23, 8), True),
    "gqa, one key head": ((1, 4, 70, 16), (1, 1, 150, 16), (1, 1, 150, 16), True),
    "gqa flag, equal heads": ((2, 2, 19, 8), (2, 2, 23, 8), (2, 2, 23, 8), True),
}


def _mask(kind, q_shape, k_shape, dtype, device):
    """The attn_mask of `kind` for these shapes: None, or a tensor broadcastable to (..., L, S)."""
    L, S = q_shape[-2], k_shape[-2]
    g = torch.Generator().manual_seed(7)
    if kind == "none":
        return None
    if kind == "bool":
        return (torch.rand(L, S, generator=g) > 0.3).to(device)
    if kind == "float":  # per batch, broadcast over heads (2-D inputs: one (L, S) mask); gets a gradient
        lead = (*q_shape[:-3], 1) if len(q_shape) > 2 else ()
        return torch.randn(*lead, L, S, generator=g, dtype=torch.float64).to(device, dtype)
    if kind == "padding":  # the last keys of each sequence padded out
        keep = torch.arange(S) < S - 3
        return keep.view(1, 1, S).expand(L, 1, S).squeeze(1).to(device)
    if kind == "fully masked rows":
        mask = torch.rand(L, S, generator=g) > 0.3
        mask[::5] = False  # every fifth query sees no key
        return mask.to(device)
    if kind == "float -inf rows":
        mask = torch.randn(L, S, generator=g, dtype=torch.float64)
        mask[1::4] = float("-inf")
        return mask.to(device, dtype)
    raise ValueError(kind)


def check_against_sdpa(q, k, v, mask=None, tol=None, **kwargs):
    """Forward and the gradients of query, key, value (and a float mask) vs SDPA in float64."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask_grad = mask is not None and mask.is_floating_point()
    ref_mask = mask
    if mask_grad:
        mask = mask.detach().requires_grad_()
        ref_mask = mask.detach().double().requires_grad_()
        leaves.append(mask)
        ref_leaves.append(ref_mask)
    out = sdpa(*leaves[:3], attn_mask=mask, **kwargs)
    ref = F.scaled_dot_product_attention(*ref_leaves[:3], attn_mask=ref_mask, **kwargs)
    assert out.shape == ref.shape and out.dtype == q.dtype
    tol = tol or (dict(rtol=1e-4, atol=1e-5) if q.dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10))
    torch.testing.assert_close(out.double(), ref, **tol)
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    for name, got, want in zip(("query", "key", "value", "mask"), grads, ref_grads, strict=False):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got.double(), want, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


MASK_KINDS = ["none", "bool", "float", "padding", "fully masked rows", "float -inf rows"]


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_sdpa_with_every_mask_kind(shape, mask_kind, device, dtype):
    q_shape, k_shape, v_shape, gqa = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype)
        for s in (q_shape, k_shape, v_shape)
    )
    mask = _mask(mask_kind, q_shape, k_shape, dtype, device)
    check_against_sdpa(q, k, v, mask, enable_gqa=gqa)


@pytest.mark.parametrize("device, dtype", FULL_PRECISION)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_sdpa_causal_and_scaled(shape, device, dtype):
    q_shape, k_shape, v_shape, gqa = shape
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype)
        for s in (q_shape, k_shape, v_shape)
    )
    check_against_sdpa(q, k, v, is_causal=True, enable_gqa=gqa)
    check_against_sdpa(q, k, v, scale=0.3, enable_gqa=gqa)


LOW_PRECISION_SHAPES = {k: SHAPES[k] for k in ("4d", "value dim differs", "gqa", "gqa, one key head", "5d")}


@pytest.mark.parametrize("device, dtype", LOW_PRECISION)
@pytest.mark.parametrize("mask_kind", ["bool", "float", "fully masked rows"])
@pytest.mark.parametrize("shape", LOW_PRECISION_SHAPES.values(), ids=LOW_PRECISION_SHAPES.keys())
def test_low_precision_with_masks_within_sdpa_error(shape, mask_kind, device, dtype, monkeypatch):
    """float16/bfloat16 with masks, grouped heads and a value head dim of its own, on the CUDA
    kernels' tensor-core variant and (CNNEXT_CUDA_TENSOR_CORES=0) the per-row one: output and
    every gradient within a small factor of SDPA's own error on the same 16-bit inputs."""
    q_shape, k_shape, v_shape, gqa = shape
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(s, generator=g).to(device, dtype) for s in (q_shape, k_shape, v_shape))
    mask = _mask(mask_kind, q_shape, k_shape, dtype, device)
    grad = torch.randn(*torch.broadcast_shapes(q_shape[:-1]), v_shape[-1], generator=g).to(device, dtype)

    def run(fn, *tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad.to(out.dtype).expand_as(out))
        return [out, *grads]

    float_mask = mask is not None and mask.is_floating_point()
    inputs = (q, k, v, mask) if float_mask else (q, k, v)

    def with_mask(attend, *t):
        return attend(*t[:3], attn_mask=t[3] if float_mask else mask, enable_gqa=gqa)

    ref = run(lambda *t: with_mask(F.scaled_dot_product_attention, *t), *(t.double() for t in inputs))
    native = run(lambda *t: with_mask(F.scaled_dot_product_attention, *t), *inputs)
    for setting in ("1", "0"):
        monkeypatch.setenv("CNNEXT_CUDA_TENSOR_CORES", setting)
        ours = run(lambda *t: with_mask(sdpa, *t), *inputs)
        names = ("out", "dq", "dk", "dv", "dmask")[: len(ours)]
        assert_within_sdpa_error(names, ours, native, ref, dtype, setting)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64_with_masks_gqa_and_broadcast(device):
    g = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()

    q, k, v = rand(2, 4, 7, 5), rand(1, 2, 9, 5), rand(1, 2, 9, 3)
    mask = rand(2, 1, 7, 9)
    assert torch.autograd.gradcheck(lambda *t: sdpa(*t[:3], attn_mask=t[3], enable_gqa=True), (q, k, v, mask))
    bool_mask = (torch.rand(7, 9, generator=g) > 0.4).to(device)
    bool_mask[2] = False
    assert torch.autograd.gradcheck(lambda *t: sdpa(*t, attn_mask=bool_mask, enable_gqa=True), (q, k, v))
    assert torch.autograd.gradgradcheck(
        lambda *t: sdpa(*t[:3], attn_mask=t[3], enable_gqa=True), (q, k, v, mask)
    )


# --- dropout ------------------------------------------------------------------------------------


def _keep_indicator(p, L=256, S=256, seed=0):
    """With equal scores and v the identity, out[i, j] = kept(i, j) / (S (1 - p)): the mask itself."""
    q, k = torch.zeros(1, 1, L, 8, dtype=torch.float64), torch.zeros(1, 1, S, 8, dtype=torch.float64)
    v = torch.eye(S, dtype=torch.float64).view(1, 1, S, S)
    torch.manual_seed(seed)
    return sdpa(q, k, v, dropout_p=p)[0, 0] * S * (1 - p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_each_weight_with_probability_one_minus_p(p):
    kept = _keep_indicator(p)
    assert torch.all((kept - kept.round()).abs() < 1e-9) and set(kept.round().unique().tolist()) <= {0.0, 1.0}
    n = kept.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.mean().item() - (1 - p)) < 5 * sigma
    # Rows and columns alike (no pattern along either axis): per-row keep rates spread binomially.
    rows = kept.mean(dim=1)
    assert rows.std().item() < 2 * (p * (1 - p) / kept.shape[1]) ** 0.5


def test_dropout_is_reproducible_from_the_seed_and_differs_between_seeds():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g, requires_grad=True) for _ in range(3))
    runs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        out = sdpa(q, k, v, dropout_p=0.3)
        runs.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not torch.equal(runs[0][0], runs[2][0])


def test_dropout_is_unbiased():
    """E[dropout attention] = attention: the mean over 400 seeds is within 5 standard errors."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 16, 8, generator=g, dtype=torch.float64) for _ in range(3))
    samples = []
    for seed in range(400):
        torch.manual_seed(seed)
        samples.append(sdpa(q, k, v, dropout_p=0.4))
    samples = torch.stack(samples)
    error = (samples.mean(0) - sdpa(q, k, v)).abs()
    standard_error = samples.std(0) / len(samples) ** 0.5
    assert torch.all(error < 5 * standard_error + 1e-12), (error / standard_error).max()


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_backward_matches_its_forward_mask(device):
    """With the mask fixed (an explicit (seed, offset)), the op is a deterministic function whose
    gradient gradcheck verifies: backward regenerates exactly the forward's mask (here with a bias,
    grouped heads and a value head dim of its own)."""
    g = torch.Generator().manual_seed(6)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()

    q, k, v, bias = rand(1, 4, 9, 4), rand(1, 2, 11, 4), rand(1, 2, 11, 6), rand(1, 4, 9, 11)
    rng = torch.tensor([1234, 5678])

    def op(q, k, v, bias):
        return torch.ops.cnnext.attention(q, k, v, None, False, bias, 0.35, rng, True)[0]

    assert torch.autograd.gradcheck(op, (q, k, v, bias))


@pytest.mark.parametrize("device, dtype", LOW_PRECISION)
def test_low_precision_dropout_matches_float64_with_the_same_mask(device, dtype, monkeypatch):
    """16-bit dropout forward and backward (a bias, grouped heads, Ev != E too) on both CUDA
    variants against the float64 kernels with the same (seed, offset): the same weights dropped,
    so the results differ only by 16-bit rounding (float64 is what gradcheck verifies above)."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (
        torch.randn(s, generator=g, dtype=torch.float64)
        for s in ((1, 4, 37, 16), (1, 2, 45, 16), (1, 2, 45, 24))
    )
    bias = torch.randn(1, 4, 37, 45, generator=g, dtype=torch.float64)
    grad = torch.randn(1, 4, 37, 24, generator=g, dtype=torch.float64)
    rng = torch.tensor([99, 100])

    def run(dtype):
        leaves = [t.to(device, dtype).requires_grad_() for t in (q, k, v, bias)]
        out = torch.ops.cnnext.attention(*leaves[:3], None, False, leaves[3], 0.3, rng, True)[0]
        return [out, *torch.autograd.grad(out, leaves, grad.to(device, dtype))]

    want = run(torch.float64)
    for tensor_cores in ("1", "0"):
        monkeypatch.setenv("CNNEXT_CUDA_TENSOR_CORES", tensor_cores)
        for name, got, expected in zip(("out", "dq", "dk", "dv", "dbias"), run(dtype), want, strict=True):
            error = (got.double() - expected).abs().max().item()
            assert error <= 3e-2 * expected.abs().max().item(), (tensor_cores, name, error)


@pytest.mark.parametrize("device", [d for d in DEVICES if d.id.startswith("emu")])
def test_tensor_core_kernels_read_options_only_when_there_are_some(device):
    """The tensor-core kernels are built twice: without a bias or dropout the launch takes the
    instantiation that reads neither (kOptions = false), with either it takes the one that does."""
    q = torch.randn(1, 2, 5, 8).half()
    mask = torch.ones(5, 5, dtype=torch.bool)
    for kwargs, reads in (({}, "false"), (dict(attn_mask=mask), "true"), (dict(dropout_p=0.5), "true")):
        torch.ops.cnnext_emu._forget_launched_kernels()
        sdpa(q, q, q, **kwargs)
        launched = " ".join(torch.ops.cnnext_emu._launched_kernels())
        assert f"tensor_core_forward_kernel<c10::Half, 32, {reads}>" in launched, (kwargs, launched)


def _philox4x32_10(counter_lo, counter_hi, key):
    """Philox-4x32-10 (Salmon et al., SC 2011) on numpy uint64 arrays holding 32-bit words, written
    from the paper, independently of csrc/philox.h: the four output words for each counter."""
    import numpy as np

    low = np.uint64(0xFFFFFFFF)
    c = [counter_lo & low, counter_lo >> np.uint64(32), counter_hi & low, counter_hi >> np.uint64(32)]
    k0, k1 = key & low, key >> np.uint64(32)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [
            ((p1 >> np.uint64(32)) ^ c[1] ^ k0) & low,
            p1 & low,
            ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & low,
            p0 & low,
        ]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & low, (k1 + np.uint64(0xBB67AE85)) & low
    return np.stack(c)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_mask_is_philox_on_every_device(device, monkeypatch):
    """Weight (b, h, i, j) is kept iff word e % 4 of Philox at counter (e / 4, offset), key seed, with
    e = ((b H + h) L + i) S + j, has its top 24 bits >= p 2^24: checked for every weight on every
    device (so the CPU, the emulated CUDA kernels and a GPU drop the same weights), both kernel
    variants of the 16-bit types included."""
    import numpy as np

    p, H, L, S = 0.3, 2, 33, 45
    seed, offset = -(2**61) + 12345, 2**40 + 7  # negative: the kernels read the bits as unsigned
    rng = torch.tensor([seed, offset])
    # (dtype, CNNEXT_CUDA_TENSOR_CORES): float16 through both CUDA variants.
    settings = [(torch.float64, "1")] + (
        [] if device == "cpu" else [(torch.float16, "1"), (torch.float16, "0")]
    )
    index = np.arange(H * L * S, dtype=np.uint64)
    words = _philox4x32_10(index // np.uint64(4), np.full_like(index, offset), np.uint64(seed % 2**64))
    word = words[(index % np.uint64(4)).astype(np.int64), np.arange(index.size)]
    want = torch.from_numpy((word >> np.uint64(8)) >= np.uint64(round(p * 2**24))).view(H, L, S)
    for dtype, tensor_cores in settings:
        monkeypatch.setenv("CNNEXT_CUDA_TENSOR_CORES", tensor_cores)
        # Equal scores and v the identity: out[i, j] = kept(i, j) / (S (1 - p)).
        q, k = (
            torch.zeros(1, H, L, 8, dtype=dtype, device=device),
            torch.zeros(1, H, S, 8, dtype=dtype, device=device),
        )
        v = torch.eye(S, dtype=dtype, device=device).expand(1, H, S, S)
        out = torch.ops.cnnext.attention(q, k, v, None, False, None, p, rng, False)[0][0]
        assert torch.equal(out.cpu() != 0, want), (dtype, tensor_cores)
        assert abs(want.float().mean().item() - (1 - p)) < 0.03


def test_dropout_one_zeroes_everything():
    q = torch.randn(1, 1, 5, 4, requires_grad=True)
    out = sdpa(q, q, q, dropout_p=1.0)
    assert torch.equal(out, torch.zeros_like(out))


# --- the operator: opcheck, compile -----------------------------------------------------------


def test_opcheck_with_mask_dropout_and_gqa(ops):
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 7, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 8, generator=g, requires_grad=True) for _ in range(2))
    bias = torch.randn(2, 4, 7, 9, generator=g, requires_grad=True)
    rng = torch.tensor([3, 4])
    torch.library.opcheck(ops.attention.default, (q, k, v, None, False, bias, 0.2, rng, True))
    torch.library.opcheck(ops.attention.default, (q, k, v, 0.5, True, None, 0.0, None, True))


def test_torch_compile_fullgraph_with_mask_and_dropout():
    import torch._inductor.config as inductor_config

    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g) for _ in range(3))
    mask = torch.rand(16, 16, generator=g) > 0.2

    def block(q, k, v):
        return sdpa(q, k, v, attn_mask=mask, dropout_p=0.25)

    torch.manual_seed(0)
    eager = block(q, k, v)
    # fallback_random: the compiled graph draws eager's random numbers (config.patch restores it;
    # monkeypatch would delete the setting on undo).
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        compiled = torch.compile(block, fullgraph=True)(q, k, v)
    torch.testing.assert_close(compiled, eager)


# --- bad inputs ---------------------------------------------------------------------------------

Q = torch.randn(2, 2, 5, 8)
BAD_INPUTS = {
    "mask with causal": (
        dict(attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True),
        "should not be set",
    ),
    "integer mask": (dict(attn_mask=torch.ones(5, 5, dtype=torch.long)), "attn_mask must be bool, float32"),
    "mask shape": (dict(attn_mask=torch.ones(3, 5, dtype=torch.bool)), "does not broadcast"),
    "mask enlarging the scores": (dict(attn_mask=torch.zeros(3, 2, 2, 5, 5)), "does not broadcast"),
    "dropout above one": (dict(dropout_p=1.5), "between 0 and 1"),
}


@pytest.mark.parametrize("kwargs, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_arguments_raise_where_sdpa_raises(kwargs, message):
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(Q, Q, Q, **kwargs)
    with pytest.raises(RuntimeError, match=message):
        sdpa(Q, Q, Q, **kwargs)


BAD_SHAPES = {
    "one dimension": ((8,), (8,), (8,), False, "at least 2 dimensions"),
    "query and key dims": ((2, 5, 8), (2, 5, 4), (2, 5, 4), False, "same last dimension"),
    "heads without gqa": ((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8), False, "same number of heads|broadcast"),
    "gqa heads not dividing": (
        (2, 6, 5, 8),
        (2, 4, 5, 8),
        (2, 4, 5, 8),
        True,
        "must divide the number of heads",
    ),
    "batch not broadcasting": ((2, 2, 5, 8), (3, 2, 5, 8), (3, 2, 5, 8), False, "broadcast|shape"),
}


@pytest.mark.parametrize("q, k, v, gqa, message", BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
def test_bad_shapes_raise_where_sdpa_raises(q, k, v, gqa, message):
    q, k, v = torch.randn(q), torch.randn(k), torch.randn(v)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    with pytest.raises(RuntimeError, match=message):
        sdpa(q, k, v, enable_gqa=gqa)


def test_key_and_value_lengths_must_agree():
    """SDPA's CPU path here returns a result for 5 keys and 6 values (it reads 5 of them); a length
    mismatch is a caller's error, raised as such."""
    with pytest.raises(RuntimeError, match="same number of keys"):
        sdpa(torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 6, 8))


def test_dtype_mismatch_raises():
    with pytest.raises(RuntimeError, match="same dtype"):
        sdpa(Q, Q.double(), Q)


def test_short_form_is_the_plain_case():
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(2, 3, 11, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(cnnext.ops.attention(q, k, v, causal=True), sdpa(q, k, v, is_causal=True))
