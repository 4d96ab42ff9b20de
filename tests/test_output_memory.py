"""The reused memory of large CPU outputs (csrc/cpu_output_memory.h): blocks kept when a tensor is
freed and handed to the next output of the same size, bounded by a limit.

Reused memory is not zeroed the way a fresh mapping is, so every op is run here on memory a
freed, NaN-poisoned output of the same size left behind: a kernel that relied on zero-filled
memory (skipped writing zeros) would show NaN here.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnext

from .conftest import run_with_cpu_isa

MIB = 1 << 20


@pytest.fixture
def cache_limit():
    """Restores the limit a test changes."""
    limit = cnnext.cpu_output_cache()["limit_bytes"]
    yield
    cnnext.set_cpu_output_cache_limit(limit)


def _poisoned_rerun(fn, *inputs):
    """fn(*inputs) twice, the first result's large tensors filled with NaN and freed in between;
    returns the second result and how many large outputs it took from kept blocks."""
    first = fn(*inputs)
    for i in range(len(first)):  # no loop variable left holding a tensor
        first[i].fill_(float("nan"))
    del first
    before = cnnext.cpu_output_cache()["reused"]
    second = fn(*inputs)
    return second, cnnext.cpu_output_cache()["reused"] - before


CASES = {
    "max_pool2d 3x3 s2": (lambda x: cnnext.ops.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
    "max_pool2d 2x2": (lambda x: cnnext.ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
    "avg_pool2d 3x3 s2": (lambda x: cnnext.ops.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1)),
    "adaptive_avg_pool2d 5": (
        lambda x: cnnext.ops.adaptive_avg_pool2d(x, 5),
        lambda x: F.adaptive_avg_pool2d(x, 5),
    ),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_pooling_on_reused_poisoned_memory_matches_native(case, layout, cache_limit):
    cnnext.set_cpu_output_cache_limit(256 * MIB)
    ours, native = CASES[case]
    x = torch.randn(16, 32, 48, 48)  # 4.5 MiB: above the 4 MiB threshold
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(native(x))

    def run(x):
        leaf = x.detach().requires_grad_()
        out = ours(leaf)
        (dx,) = torch.autograd.grad(out, leaf, grad)
        return (dx,)

    (dx,), reused = _poisoned_rerun(run, x)
    assert reused >= 1  # the gradient came from the poisoned block
    leaf = x.detach().double().requires_grad_()
    (dx_native,) = torch.autograd.grad(native(leaf), leaf, grad.double())
    torch.testing.assert_close(dx.double(), dx_native, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv2d_on_reused_poisoned_memory_matches_native(kernel, layout, cache_limit):
    cnnext.set_cpu_output_cache_limit(256 * MIB)
    x = torch.randn(32, 32, 32, 32)  # input, output and their gradients: 4 MiB each
    w, b = torch.randn(32, 32, kernel, kernel) * 0.1, torch.randn(32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(32, 32, 32, 32)

    def run(x):
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        out = cnnext.ops.conv2d(*leaves, padding=kernel // 2)
        return (out.detach(), *torch.autograd.grad(out, leaves, grad))

    result, reused = _poisoned_rerun(run, x)
    assert reused >= 2  # the output and the input gradient
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    out = F.conv2d(*leaves, padding=kernel // 2)
    expected = (out.detach(), *torch.autograd.grad(out, leaves, grad.double()))
    for ours, theirs in zip(result, expected, strict=True):  # dw sums 32K terms: atol by its scale
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


def test_attention_on_reused_poisoned_memory_matches_native(cache_limit):
    cnnext.set_cpu_output_cache_limit(256 * MIB)
    q, k, v = (torch.randn(8, 4, 512, 64) for _ in range(3))  # 4 MiB each, and so are out and the grads
    grad = torch.randn(8, 4, 512, 64)

    def run(*qkv):
        leaves = [t.detach().requires_grad_() for t in qkv]
        out = cnnext.ops.scaled_dot_product_attention(*leaves)
        return (out.detach(), *torch.autograd.grad(out, leaves, grad))

    result, reused = _poisoned_rerun(run, q, k, v)
    assert reused >= 4
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*leaves)
    expected = (out.detach(), *torch.autograd.grad(out, leaves, grad.double()))
    for ours, theirs in zip(result, expected, strict=True):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-5)


def test_freed_blocks_are_kept_up_to_the_limit(cache_limit):
    x = torch.randn(16, 32, 64, 64).requires_grad_()  # its gradient: 8 MiB
    cnnext.empty_cpu_output_cache()
    cnnext.set_cpu_output_cache_limit(64 * MIB)
    y = cnnext.ops.avg_pool2d(x, 2)  # 2 MiB output: below the threshold, torch's allocator
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    first = dx.data_ptr()
    del dx
    assert cnnext.cpu_output_cache()["cached_bytes"] == 8 * MIB
    (dx,) = torch.autograd.grad(cnnext.ops.avg_pool2d(x, 2), x, torch.ones_like(y))
    assert dx.data_ptr() == first  # the same block again
    assert cnnext.cpu_output_cache()["cached_bytes"] == 0  # in use, not kept
    torch.testing.assert_close(dx, torch.full_like(x, 0.25))

    cnnext.set_cpu_output_cache_limit(0)  # keep none: the freed block goes back to the system
    del dx
    assert cnnext.cpu_output_cache()["cached_bytes"] == 0
    cnnext.set_cpu_output_cache_limit(64 * MIB)
    blocks = [torch.autograd.grad(cnnext.ops.avg_pool2d(x, 2), x, torch.ones_like(y))[0] for _ in range(10)]
    del blocks  # ten 8 MiB blocks freed, eight kept: the least recently freed dropped first
    assert cnnext.cpu_output_cache()["cached_bytes"] == 64 * MIB
    cnnext.empty_cpu_output_cache()
    stats = cnnext.cpu_output_cache()
    assert stats["cached_bytes"] == 0 and stats["limit_bytes"] == 64 * MIB


def test_outputs_from_kept_blocks_behave_like_torch_tensors(cache_limit):
    x = torch.randn(16, 32, 64, 64).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = cnnext.ops.max_pool2d(x, 2)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert dx.is_contiguous(memory_format=torch.channels_last) and dx.device.type == "cpu"
    dx.resize_(2 * dx.numel())  # storages stay resizable (through the same allocator)
    assert dx.numel() == 2 * x.numel()
    assert torch.from_numpy(dx.numpy()).data_ptr() == dx.data_ptr()


def test_limit_arguments_are_checked():
    with pytest.raises(ValueError, match="must be >= 0"):
        cnnext.set_cpu_output_cache_limit(-1)
    with pytest.raises(TypeError, match="must be an int"):
        cnnext.set_cpu_output_cache_limit(1.5)


@pytest.mark.parametrize(
    "setting, limit", [(None, 1024 * MIB), ("0", 0), ("300", 300 * MIB)], ids=["default", "zero", "300"]
)
def test_limit_follows_the_environment(setting, limit, monkeypatch):
    if setting is None:
        monkeypatch.delenv("CNNEXT_CPU_CACHE_MB", raising=False)
    else:
        monkeypatch.setenv("CNNEXT_CPU_CACHE_MB", setting)
    run_with_cpu_isa(
        f"import cnnext; assert cnnext.cpu_output_cache()['limit_bytes'] == {limit}; print('ok')"
    )


def test_a_bad_environment_limit_is_reported(monkeypatch):
    monkeypatch.setenv("CNNEXT_CPU_CACHE_MB", "lots")
    with pytest.raises(AssertionError, match="CNNEXT_CPU_CACHE_MB must be a whole number of MiB"):
        run_with_cpu_isa("import cnnext; cnnext.cpu_output_cache(); print('ok')")


@pytest.mark.parametrize("setting, enabled", [(None, True), ("1", True), ("0", False)])
def test_huge_page_advice_follows_its_switch(setting, enabled, monkeypatch):
    """The huge-page advice for large output blocks (on by default) and CNNEXT_HUGE_PAGES=0."""
    if setting is None:
        monkeypatch.delenv("CNNEXT_HUGE_PAGES", raising=False)
    else:
        monkeypatch.setenv("CNNEXT_HUGE_PAGES", setting)
    run_with_cpu_isa(
        f"import cnnext; assert cnnext.build_info()['huge_page_advice'] is {enabled}; print('ok')"
    )
