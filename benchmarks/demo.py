"""What `make demo` runs until the experiment runner lands: cnnext's conv2d beside native on a
few model-sized layers: largest difference of outputs and gradients, and forward+backward time.

    python -m benchmarks.demo [--device cuda]
"""

import argparse
import time

import torch
import torch.nn.functional as F

import cnnext

from .bench_conv2d import SHAPES
from .conftest import synchronize


def forward_backward(conv, x, w, b, stride, padding):
    out = conv(x, w, b, stride=stride, padding=padding)
    grads = torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
    return out, grads


def median_seconds(fn, device, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"cnnext {cnnext.__version__} on {args.device}: {cnnext.build_info()}\n")
    print(
        f"{'layer (batch 64)':<24}{'max |diff|':>12}{'native ms':>12}{'cnnext ms':>12}{'native/cnnext':>15}"
    )
    for name, batch, cin, cout, size, kernel, stride in SHAPES[:5]:
        x = torch.randn(batch, cin, size, size, device=args.device, requires_grad=True)
        w = torch.randn(cout, cin, kernel, kernel, device=args.device, requires_grad=True)
        b = torch.randn(cout, device=args.device, requires_grad=True)
        conv_args = (x, w, b, stride, kernel // 2)
        ours, native = forward_backward(cnnext.ops.conv2d, *conv_args), forward_backward(F.conv2d, *conv_args)
        pairs = zip([ours[0], *ours[1]], [native[0], *native[1]], strict=True)
        diff = max((o - n).abs().max().item() for o, n in pairs)
        t_native = median_seconds(lambda: forward_backward(F.conv2d, *conv_args), args.device)
        t_ours = median_seconds(lambda: forward_backward(cnnext.ops.conv2d, *conv_args), args.device)
        print(
            f"{name:<24}{diff:>12.2e}{t_native * 1e3:>12.2f}{t_ours * 1e3:>12.2f}{t_native / t_ours:>15.2f}"
        )


if __name__ == "__main__":
    main()
