"""Static resources of every CUDA kernel instantiation, from ptxas, and the occupancy they allow:
the one performance signal available without a GPU.

    python -m benchmarks.cuda_resources [--arch 80 90] [--out benchmarks/cuda_resources.json]

Each csrc/<op>/*.cu is compiled for each architecture (device code only, `nvcc -cubin`, with the
extension's flags) with `-Xptxas -v`; per kernel: registers per thread, spill stores and loads,
stack frame (local memory per thread), static shared memory. Occupancy is computed from those, the
block size the host code launches the kernel with and its largest dynamic shared memory (LAUNCH
below; tests/test_cuda_resources.py checks that table against the launches the CUDA emulator
records), with the SM limits of sm_80 (A100) and sm_90 (H100/H200). `make bench` writes the JSON
and benchmarks/report.py renders it as the "CUDA resources" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "cuda_resources.json"

# Per SM: registers, shared memory (the largest carve-out), threads, resident blocks; shared memory
# is allocated per block in 128-byte units plus 1 KiB the system reserves per block.
SM_LIMITS = {
    80: dict(registers=65536, shared=164 * 1024, threads=2048, blocks=32),
    90: dict(registers=65536, shared=228 * 1024, threads=2048, blocks=32),
}
RESERVED_SHARED_PER_BLOCK = 1024

# Attention stages key/value (or query/dO) tiles of `rows` x D in acc_t, twice, within 48 KiB
# (tile_rows in csrc/attention/attention_cuda.cu), for D = the instantiation's head-dim bound kD.
ATTENTION_SHARED_BUDGET = 48 * 1024


def attention_shared(name: str) -> int:
    head_dim = int(re.search(r",\s*(\d+)\s*>", name).group(1))
    acc_bytes = 8 if "double" in name else 4
    rows = max(1, min(32, ATTENTION_SHARED_BUDGET // (2 * head_dim * acc_bytes)))
    return 2 * rows * head_dim * acc_bytes


def tensor_core_attention_shared(name: str) -> int:
    """The tensor-core attention kernels' 16-bit tiles, rows padded by 8: the block's 64 own rows
    (Q; Q and dO; K and V) and two staged tiles of 64 (head dim <= 64) or 32 rows, plus the dK/dV
    kernel's per-query lse and delta (the *_shared_bytes functions of csrc/attention/attention_cuda.cu)."""
    head_dim = int(re.search(r"<[^,]+,\s*(\d+)", name).group(1))
    staged = 64 if head_dim <= 64 else 32
    own = 64 if "forward" in name else 128
    extra = 2 * staged * 4 if "dkdv" in name else 0
    return (own + 2 * staged) * (head_dim + 8) * 2 + extra


# Kernel family (the function's base name) -> (threads per block, dynamic shared bytes of an
# instantiation given its demangled name), as the host code in csrc/<op>/*_cuda.cu launches it.
LAUNCH = {
    "implicit_gemm_kernel": (256, lambda name: 0),
    "sum_splits_kernel": (256, lambda name: 0),
    "bias_grad_kernel": (256, lambda name: 0),
    "max_forward_kernel": (256, lambda name: 0),
    "max_backward_kernel": (256, lambda name: 0),
    "avg_forward_kernel": (256, lambda name: 0),
    "avg_backward_kernel": (256, lambda name: 0),
    "max_forward_vec_kernel": (256, lambda name: 0),
    "avg_forward_vec_kernel": (256, lambda name: 0),
    "max_backward_vec_kernel": (256, lambda name: 0),
    "avg_backward_vec_kernel": (256, lambda name: 0),
    "forward_kernel": (64, attention_shared),
    "tensor_core_forward_kernel": (128, tensor_core_attention_shared),
    "tensor_core_dq_kernel": (128, tensor_core_attention_shared),
    "tensor_core_dkdv_kernel": (128, tensor_core_attention_shared),
    "delta_kernel": (256, lambda name: 0),
    "dq_kernel": (64, attention_shared),
    "dkdv_kernel": (64, attention_shared),
}

PTXAS_ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\d+)'")
PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?")


def cuda_home() -> pathlib.Path:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and (pathlib.Path(candidate) / "bin" / "nvcc").is_file():
            return pathlib.Path(candidate)
    raise SystemExit("no CUDA toolkit found (set CUDA_HOME): nvcc is needed for the resource report")


def nvcc_command(source: pathlib.Path, arch: int, out: pathlib.Path) -> list[str]:
    os.environ.setdefault("CUDA_HOME", str(cuda_home()))
    from torch.utils import cpp_extension

    includes = [str(ROOT / "csrc"), *cpp_extension.include_paths(device_type="cuda")]
    return [
        str(cuda_home() / "bin" / "nvcc"),
        "-cubin",
        f"-arch=sm_{arch}",
        "-Xptxas",
        "-v",
        # The extension's own nvcc flags (setup.py) and torch's (COMMON_NVCC_FLAGS).
        "-O3",
        "-std=c++20",
        "-DCNNEXT_WITH_CUDA=1",
        *cpp_extension.COMMON_NVCC_FLAGS,
        *[f"-I{path}" for path in includes],
        str(source),
        "-o",
        str(out),
    ]


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool:
        return {n: n for n in names}
    result = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, result.stdout.splitlines(), strict=True))


def parse_ptxas(text: str) -> list[dict]:
    """One record per (kernel, arch) from `ptxas -v` output."""
    kernels, current = [], None
    for line in text.splitlines():
        if m := PTXAS_ENTRY.search(line):
            current = dict(mangled=m.group(1), arch=int(m.group(2)))
            kernels.append(current)
        elif current is not None and (m := PTXAS_FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := PTXAS_USED.search(line)):
            current.update(registers=int(m.group(1)), static_shared=int(m.group(2) or 0))
    return kernels


def family(name: str) -> str:
    """`implicit_gemm_kernel` from `void cnnext::(anonymous namespace)::implicit_gemm_kernel<...>(...)`."""
    return re.match(r"(?:void\s+)?([\w:() ]*?)(\w+)(?:<|\()", name).group(2)


def occupancy(registers: int, shared: int, threads: int, arch: int) -> tuple[int, float]:
    """Resident blocks per SM and the fraction of the SM's warps they fill."""
    limits = SM_LIMITS[arch]
    warps = math.ceil(threads / 32)
    registers_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_registers = (limits["registers"] // registers_per_warp) // warps
    per_block_shared = math.ceil((shared + RESERVED_SHARED_PER_BLOCK) / 128) * 128
    by_shared = limits["shared"] // per_block_shared
    by_threads = limits["threads"] // (warps * 32)
    blocks = min(by_registers, by_shared, by_threads, limits["blocks"])
    return blocks, blocks * warps / (limits["threads"] // 32)


def collect(archs: list[int]) -> list[dict]:
    sources = sorted(p for p in (ROOT / "csrc").glob("*/*.cu"))
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            for arch in archs:
                print(f"ptxas: {source.relative_to(ROOT)} sm_{arch}", file=sys.stderr, flush=True)
                command = nvcc_command(source, arch, pathlib.Path(tmp) / "out.cubin")
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    raise SystemExit(f"nvcc failed on {source}:\n{result.stderr[-4000:]}")
                for record in parse_ptxas(result.stdout + result.stderr):
                    record["file"] = str(source.relative_to(ROOT))
                    records.append(record)
    names = demangle([r["mangled"] for r in records])
    for record in records:
        record["name"] = names[record["mangled"]]
        record["family"] = family(record["name"])
        if record["family"] not in LAUNCH:
            raise SystemExit(f"{record['name']}: add its launch configuration to LAUNCH in {__file__}")
        threads, dynamic = LAUNCH[record["family"]]
        record["threads"] = threads
        record["dynamic_shared"] = dynamic(record["name"])
        shared = record["static_shared"] + record["dynamic_shared"]
        record["blocks_per_sm"], record["occupancy"] = occupancy(
            record["registers"], shared, threads, record["arch"]
        )
    return sorted(records, key=lambda r: (r["file"], r["family"], r["name"], r["arch"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SM_LIMITS))
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    records = collect(args.arch)
    args.out.write_text(json.dumps({"archs": args.arch, "kernels": records}, indent=1) + "\n")
    spills = [r for r in records if r["spill_stores"] or r["spill_loads"]]
    print(f"{len(records)} kernel instantiations, {len(spills)} with spills; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
