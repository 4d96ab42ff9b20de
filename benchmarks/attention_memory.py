"""Peak extra memory of attention forward+backward vs sequence length, on the CPU.

Each (implementation, L) runs in a fresh process: it allocates q, k, v and the output gradient,
then reads the process's peak resident memory before and after one forward+backward; the
difference is the extra memory the attention needed at its peak. cnnext keeps O(L) state (the
output, one log-sum-exp per row, per-thread tiles); the naive version materialises the L x L
scores and probabilities (and their gradients).

    python -m benchmarks.attention_memory [--lengths 256 1024 4096] [--batch 1 --heads 4 --dim 32]
"""

import argparse
import subprocess
import sys

CHILD = """
import resource, sys, torch, torch.nn.functional as F
import cnnext
from cnnext.ops import reference
impl, b, h, l, d = sys.argv[1], *map(int, sys.argv[2:6])
attend = {"cnnext": cnnext.ops.attention, "naive": reference.attention,
          "sdpa": F.scaled_dot_product_attention}[impl]
q, k, v = (torch.randn(b, h, l, d, requires_grad=True) for _ in range(3))
grad = torch.randn(b, h, l, d)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.autograd.grad(attend(q, k, v), (q, k, v), grad)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)  # MiB (ru_maxrss is in KiB on Linux)
"""


def peak_extra_mib(impl: str, batch: int, heads: int, length: int, dim: int) -> float:
    args = [sys.executable, "-c", CHILD, impl, str(batch), str(heads), str(length), str(dim)]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    impls = ["naive", "sdpa", "cnnext"]
    shape = f"B={args.batch}, H={args.heads}, D={args.dim}"
    print(f"peak extra resident memory of one forward+backward, MiB ({shape})")
    print("| L | " + " | ".join(impls) + " | cnnext/naive |")
    print("|---:|" + "---:|" * (len(impls) + 1))
    for length in args.lengths:
        mib = {impl: peak_extra_mib(impl, args.batch, args.heads, length, args.dim) for impl in impls}
        ratio = mib["cnnext"] / mib["naive"] if mib["naive"] > 0 else float("nan")
        print(f"| {length} | " + " | ".join(f"{mib[i]:.1f}" for i in impls) + f" | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
