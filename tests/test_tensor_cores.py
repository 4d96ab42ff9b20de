"""csrc/cuda_tensor_cores.h on the real CUDA toolchain: its inline PTX compiles with nvcc for sm_80
and sm_90 and becomes tensor-core instructions (HMMA) in the SASS. The emulated twin of the same
instruction, fragment layout included, is tested in test_cuda_emulation.py."""

import os
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
NVCC = CUDA_HOME / "bin" / "nvcc"
CUOBJDUMP = shutil.which("cuobjdump") or str(
    Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
)

KERNEL = """
#include "cuda_tensor_cores.h"
template <typename T>
__global__ void mma_check(const uint32_t* a, const uint32_t* b, float* d) {
  const int lane = threadIdx.x;
  const uint32_t fa[4] = {a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3]};
  const uint32_t fb[2] = {b[2 * lane], b[2 * lane + 1]};
  const float fc[4] = {0, 0, 0, 0};
  float fd[4];
  cnnext::cuda::mma_m16n8k16<T>(fd, fa, fb, fc);
  for (int i = 0; i < 4; ++i) d[4 * lane + i] = fd[i];
}
template __global__ void mma_check<c10::Half>(const uint32_t*, const uint32_t*, float*);
template __global__ void mma_check<c10::BFloat16>(const uint32_t*, const uint32_t*, float*);
__global__ void mma_check_tf32(const float* a, const float* b, float* d) {
  const int lane = threadIdx.x;
  using cnnext::cuda::to_tf32;
  const uint32_t fa[4] = {to_tf32(a[4 * lane]), to_tf32(a[4 * lane + 1]), to_tf32(a[4 * lane + 2]),
                          to_tf32(a[4 * lane + 3])};
  const uint32_t fb[2] = {to_tf32(b[2 * lane]), to_tf32(b[2 * lane + 1])};
  const float fc[4] = {0, 0, 0, 0};
  float fd[4];
  cnnext::cuda::mma_m16n8k8_tf32(fd, fa, fb, fc);
  for (int i = 0; i < 4; ++i) d[4 * lane + i] = fd[i];
}
"""


@pytest.mark.skipif(not NVCC.is_file(), reason=f"no nvcc at {NVCC}")
def test_mma_becomes_hmma_on_sm80_and_sm90(tmp_path):
    """The half, bfloat16 and TF32 mma of cuda_tensor_cores.h as tensor-core instructions."""
    source = tmp_path / "mma_check.cu"
    source.write_text(KERNEL)
    include = Path(torch.__file__).parent / "include"
    archs = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    includes = [f"-I{ROOT / 'csrc'}", f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}"]
    # Device code only (-fatbin): no host compilation of torch's headers, half the time of -c.
    command = [str(NVCC), "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-fatbin", str(source)]
    subprocess.run(
        [*command, "-o", str(tmp_path / "m.fatbin"), *archs, *includes], check=True, capture_output=True
    )
    sass = subprocess.run(
        [CUOBJDUMP, "-sass", str(tmp_path / "m.fatbin")], check=True, capture_output=True, text=True
    )
    per_arch = sass.stdout.split("arch = ")[1:]
    assert sorted(block.split()[0] for block in per_arch) == ["sm_80", "sm_90"]
    for block in per_arch:
        assert "HMMA.16816.F32.BF16" in block, block[:2000]
        assert "HMMA.1688.F32.TF32" in block, block[:2000]
        assert any(line.split()[1:2] == ["HMMA.16816.F32"] for line in block.splitlines() if "HMMA" in line)


class KernelSass(typing.NamedTuple):
    arch: str
    name: str  # mangled
    body: str


@pytest.fixture(scope="module")
def built_kernels() -> list[KernelSass]:
    """The SASS of every kernel in cnnext._C as built here, per architecture (one cuobjdump run for
    the tests below)."""
    import cnnext

    if not cnnext.build_info()["cuda"]:
        pytest.skip("cnnext._C was built without CUDA kernels")
    sass = subprocess.run(
        [CUOBJDUMP, "-sass", cnnext._C.__file__], check=True, capture_output=True, text=True
    )
    kernels = []
    for arch_block in sass.stdout.split("arch = ")[1:]:
        arch = arch_block.split()[0]
        for block in arch_block.split("Function : ")[1:]:
            name, _, body = block.partition("\n")
            kernels.append(KernelSass(arch, name.strip(), body))
    return kernels


def implicit_gemm_variants(kernels: list[KernelSass], tensor_cores: bool) -> list[KernelSass]:
    # The variant template argument, a tag type whose name the mangled name spells out.
    mark = "17TensorCoreVariantE" if tensor_cores else "10FmaVariantE"
    return [k for k in kernels if "implicit_gemm_kernel" in k.name and mark in k.name]


def test_the_built_conv2d_tensor_core_variants_contain_hmma(built_kernels):
    """In cnnext._C as built here: every tensor-core instantiation of the implicit GEMM (three
    problems x half / bfloat16 / float x two block tiles) has tensor-core instructions in its SASS
    for every architecture built (sm_80+), TF32 ones (HMMA.1688.F32.TF32) for float; none for
    double."""
    variants = implicit_gemm_variants(built_kernels, tensor_cores=True)
    archs = {v.arch for v in variants}
    assert archs and len(variants) == 18 * len(archs), [(v.arch, v.name) for v in variants]
    for v in variants:
        hmma = [line for line in v.body.splitlines() if "HMMA" in line]
        assert hmma, (v.arch, v.name)
        is_float = "IfEE" in v.name
        assert all(("TF32" in line) == is_float for line in hmma), (v.arch, v.name, hmma[:2])
    assert not any("IdEE" in v.name for v in variants)  # double: never


def test_the_built_cp_async_forward_copies_asynchronously_and_multiplies_on_tensor_cores(built_kernels):
    """The CpAsyncVariant (channels_last forward, tap-major) in cnnext._C: for half, bfloat16 and
    float (TF32), both block tiles, every architecture built, its SASS copies global -> shared with
    LDGSTS (cp.async, 128-bit: LDGSTS.E.BYPASS.128 or alike) and multiplies with HMMA; the register
    pipeline variants copy nothing asynchronously."""
    variants = [
        k for k in built_kernels if "implicit_gemm_kernel" in k.name and "14CpAsyncVariantE" in k.name
    ]
    archs = {v.arch for v in variants}
    assert archs and len(variants) == 6 * len(archs), [(v.arch, v.name) for v in variants]
    for v in variants:
        copies = [line for line in v.body.splitlines() if "LDGSTS" in line]
        assert copies and all(".128" in line for line in copies), (v.arch, v.name, copies[:2])
        assert "HMMA" in v.body, (v.arch, v.name)
    others = [*implicit_gemm_variants(built_kernels, True), *implicit_gemm_variants(built_kernels, False)]
    assert others and not any("LDGSTS" in k.body for k in others)


def test_the_built_attention_tensor_core_kernels_contain_hmma(built_kernels):
    """Every tensor-core attention instantiation in cnnext._C (forward, dQ, dK/dV; half and
    bfloat16; head dims 32-256) multiplies with HMMA on every architecture built, and the per-row
    kernels, which serve float32/float64, do not."""
    attention = [k for k in built_kernels if "attention_cuda" in k.name]
    tensor_core = [k for k in attention if "tensor_core_" in k.name]
    per_row = [k for k in attention if "tensor_core_" not in k.name]
    # Per architecture: 2 types x (4 forward + 4 dQ + 5 dK/dV, head dim 256 in two passes) x
    # (with and without SDPA's options, kOptions).
    archs = {k.arch for k in tensor_core}
    assert archs and len(tensor_core) == 52 * len(archs), [k.name for k in tensor_core]
    assert all("HMMA" in k.body for k in tensor_core), [k.name for k in tensor_core if "HMMA" not in k.body]
    assert per_row and not any("HMMA" in k.body for k in per_row)


def test_the_built_implicit_gemm_and_max_pooling_do_no_integer_division(built_kernels):
    """The index arithmetic of every implicit-GEMM instantiation, and of every max-pooling kernel
    (element decode and window arithmetic), is FastDivmod multiply-high (cuda_fast_divmod.h). An
    integer `/` or `%` by a run-time value compiles to a reciprocal estimate: a round-up
    conversion (I2F.U32.RP, or I2F.U64.RP in the 64-bit subroutine) before MUFU.RCP. None of those
    kernels' SASS may contain one; the average-pooling kernels still do (adaptive windows divide
    o * size, which may pass 2^31, in 64 bits), so the pattern is known to show up when present."""

    def divisions(body):
        return [line.split()[1] for line in body.splitlines() if "I2F" in line and ".RP" in line]

    variants = [*implicit_gemm_variants(built_kernels, True), *implicit_gemm_variants(built_kernels, False)]
    max_pooling = [
        k
        for k in built_kernels
        if any(
            f in k.name
            for f in ("max_forward_kernel", "max_backward_kernel", "max_forward_vec", "max_backward_vec")
        )
    ]
    assert variants and len(max_pooling) >= 32, len(max_pooling)
    checked = [*variants, *max_pooling]
    assert not [(v.arch, v.name, divisions(v.body)) for v in checked if divisions(v.body)]
    average = [k for k in built_kernels if "avg_forward_kernel" in k.name]
    assert average and all(divisions(k.body) for k in average)
