"""Every CUDA kernel of the named ops, forward and backward, against native PyTorch: the workload
of the sanitizer passes. On the CUDA emulator (default) tests/test_cuda_emulation.py runs it in a
subprocess with ThreadSanitizer or AddressSanitizer preloaded and CNNEXT_EMU_SANITIZER set; on a
GPU (--device cuda) benchmarks/device_check.sh runs it under compute-sanitizer (memcheck,
racecheck). Shapes are small but span several tiles, k-stages, split-K slices and key tiles, so
every barrier is crossed.

    python tests/cuda_kernel_workload.py [--device cuda] conv2d pool2d attention
    python tests/cuda_kernel_workload.py control-race | control-overflow      (emulator only)

Prints "ok" last when every result matched. The control arguments run a deliberately broken
self-test kernel instead (the sanitizer must report it).
"""

import argparse
import contextlib
import os

import torch
import torch.nn.functional as F

import cnnext

DEVICE = "cpu"  # the emulator's tensors; "cuda" with --device cuda


def on_kernels():
    """The context in which cnnext ops run the CUDA kernels: the emulator's routing, or nothing on a GPU."""
    if DEVICE == "cuda":
        return contextlib.nullcontext()
    import cnnext.cuda_emulation as emulation

    return emulation.routed()


def close(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: {m}")


def grads(fn, *tensors, device=None):
    leaves = [t.detach().to(device or DEVICE).requires_grad_() for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
    return out, torch.autograd.grad(out, leaves, g)


def conv2d():
    for layout in (torch.contiguous_format, torch.channels_last):
        for groups, stride in ((1, 1), (2, 2)):
            x = torch.randn(2, 4, 9, 9).contiguous(memory_format=layout)
            w, b = torch.randn(6, 4 // groups, 3, 3), torch.randn(6)
            args = dict(stride=stride, padding=1, groups=groups)
            with on_kernels():
                ours = grads(lambda *t: cnnext.ops.conv2d(*t, **args), x, w, b)
            native = grads(lambda *t: F.conv2d(*t, **args), x, w, b)
            close(ours[0], native[0], "conv2d")
            for got, want in zip(ours[1], native[1], strict=True):
                close(got, want, "conv2d gradient")
    # 16-bit types take a tensor-core variant of the implicit GEMM (sm_80+, and the emulator), float32
    # under torch.backends.cudnn.allow_tf32 its TF32 form: in channels_last with 8 channels, the
    # forward's cp.async one. Each with both block tiles (CNNEXT_CONV2D_TILE).
    x, w = torch.randn(2, 8, 9, 9), torch.randn(16, 8, 3, 3)
    native = grads(lambda *t: F.conv2d(*t, padding=1), x.double(), w.double())
    # Inputs and outputs of ~N(0, 72), float accumulation: half rounds at ~0.004, bfloat16 ~0.03,
    # TF32 operands at 11 significant bits (~5e-4 relative).
    tolerances = {
        torch.float16: dict(rtol=1e-2, atol=2e-2),
        torch.bfloat16: dict(rtol=3e-2, atol=1.5e-1),
        torch.float32: dict(rtol=1e-2, atol=5e-2),
    }
    previous_tile = os.environ.get("CNNEXT_CONV2D_TILE")
    torch.backends.cudnn.allow_tf32 = True
    try:
        for dtype, tol in tolerances.items():
            for layout in (torch.contiguous_format, torch.channels_last):
                for tile in ("64x64", "128x64"):
                    os.environ["CNNEXT_CONV2D_TILE"] = tile
                    x_in = x.to(dtype).contiguous(memory_format=layout)
                    with on_kernels():
                        ours = grads(lambda *t: cnnext.ops.conv2d(*t, padding=1), x_in, w.to(dtype))
                    torch.testing.assert_close(ours[0].double().cpu(), native[0], **tol)
                    for got, want in zip(ours[1], native[1], strict=True):
                        torch.testing.assert_close(got.double().cpu(), want, **tol)
    finally:
        torch.backends.cudnn.allow_tf32 = False
        if previous_tile is None:
            os.environ.pop("CNNEXT_CONV2D_TILE", None)
        else:
            os.environ["CNNEXT_CONV2D_TILE"] = previous_tile


def pool2d():
    # 3 channels: the per-element kernels; 8 channels in channels_last: the vectorised ones (forward
    # and backward).
    layouts = ((torch.contiguous_format, 3), (torch.channels_last, 3), (torch.channels_last, 8))
    for layout, channels in layouts:
        x = torch.randn(2, channels, 9, 10).contiguous(memory_format=layout)
        cases = [
            (lambda t: cnnext.ops.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
            (
                lambda t: cnnext.ops.max_pool2d(t, 2, return_indices=True)[0],
                lambda t: F.max_pool2d(t, 2, return_indices=True)[0],
            ),
            (lambda t: cnnext.ops.avg_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 3, 2, 1)),
            (lambda t: cnnext.ops.adaptive_avg_pool2d(t, (4, 3)), lambda t: F.adaptive_avg_pool2d(t, (4, 3))),
        ]
        for ours_fn, native_fn in cases:
            with on_kernels():
                ours = grads(ours_fn, x)
            native = grads(native_fn, x)
            close(ours[0], native[0], "pooling")
            close(ours[1][0], native[1][0], "pooling gradient")


def attention():
    for causal in (False, True):
        q, k, v = torch.randn(1, 2, 37, 16), torch.randn(1, 2, 41, 16), torch.randn(1, 2, 41, 16)
        with on_kernels():
            ours = grads(lambda *t: cnnext.ops.attention(*t, causal=causal), q, k, v)
        native = grads(lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal), q, k, v)
        close(ours[0], native[0], "attention")
        for got, want in zip(ours[1], native[1], strict=True):
            close(got, want, "attention gradient")
    # 16-bit attention takes the tensor-core kernels (sm_80+, and the emulator): every head-dim
    # bucket, 256 with its two-pass dK/dV.
    for dtype, head_dim in (
        (torch.float16, 24),
        (torch.bfloat16, 64),
        (torch.float16, 100),
        (torch.bfloat16, 256),
    ):
        q, k, v = (
            torch.randn(1, 2, 37, head_dim),
            torch.randn(1, 2, 41, head_dim),
            torch.randn(1, 2, 41, head_dim),
        )
        with on_kernels():
            ours = grads(lambda *t: cnnext.ops.attention(*t, causal=True), *(t.to(dtype) for t in (q, k, v)))
        native = grads(
            lambda *t: F.scaled_dot_product_attention(*t, is_causal=True), q.double(), k.double(), v.double()
        )
        # Outputs and gradients of N(0, 1) inputs: 16-bit rounding of inputs, P, dS and the results.
        for got, want in zip([ours[0], *ours[1]], [native[0], *native[1]], strict=True):
            torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=3e-2, atol=3e-2)
    # SDPA's options on both variants: a float mask with fully masked rows (and its gradient),
    # grouped heads, a value head dim of its own; then dropout, against the same call on the CPU
    # kernels (the same seed gives the same mask there).
    mask = torch.randn(37, 41)
    mask[::6] = float("-inf")
    q, k, v = torch.randn(1, 4, 37, 16), torch.randn(1, 2, 41, 16), torch.randn(1, 2, 41, 24)
    for dtype in (torch.float32, torch.float16):

        def attend(*t):
            return cnnext.ops.scaled_dot_product_attention(*t[:3], attn_mask=t[3], enable_gqa=True)

        inputs = [t.to(dtype) for t in (q, k, v, mask)]
        with on_kernels():
            ours = grads(attend, *inputs)
        reference = grads(
            lambda *t: F.scaled_dot_product_attention(*t[:3], attn_mask=t[3], enable_gqa=True),
            *(t.double() for t in (q, k, v, mask)),
        )
        for got, want in zip([ours[0], *ours[1]], [reference[0], *reference[1]], strict=True):
            torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=3e-2, atol=3e-2)
        rng = torch.tensor([7, 8])

        def dropout(*t):
            return torch.ops.cnnext.attention(*t, None, False, None, 0.2, rng, True)[0]

        with on_kernels():
            dropped = grads(dropout, *inputs[:3])
        on_cpu = grads(dropout, *(t.float() for t in inputs[:3]), device="cpu")  # the CPU kernels
        for got, want in zip([dropped[0], *dropped[1]], [on_cpu[0], *on_cpu[1]], strict=True):
            torch.testing.assert_close(got.double().cpu(), want.double(), rtol=3e-2, atol=3e-2)


CONTROLS = {
    # Every thread writes its slot, then reads its neighbour's with no barrier between.
    "control-race": lambda: torch.ops.cnnext_emu._selftest_race(0, 64, False),
    # Every thread writes one float past the end of its output.
    "control-overflow": lambda: torch.ops.cnnext_emu._selftest_broken(5, 1, 64),
}


WORKLOADS = {"conv2d": conv2d, "pool2d": pool2d, "attention": attention}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["emulator", "cuda"], default="emulator")
    parser.add_argument("names", nargs="+", choices=[*WORKLOADS, *CONTROLS])
    args = parser.parse_args()
    torch.manual_seed(0)
    # float32 in full precision (native's reference and our kernels) except where a case turns TF32 on.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.device == "cuda":
        DEVICE = "cuda"
    else:
        import cnnext.cuda_emulation as emulation

        emulation.set_schedule("random", seed=1)
    for name in args.names:
        if name in CONTROLS:
            CONTROLS[name]()
        else:
            WORKLOADS[name]()
    print("ok")
