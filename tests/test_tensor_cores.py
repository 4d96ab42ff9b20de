"""csrc/cuda_tensor_cores.h on the real CUDA toolchain: its inline PTX compiles with nvcc for sm_80
and sm_90 and becomes tensor-core instructions (HMMA) in the SASS. The emulated twin of the same
instruction, fragment layout included, is tested in test_cuda_emulation.py."""

import os
import shutil
import subprocess
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
"""


@pytest.mark.skipif(not NVCC.is_file(), reason=f"no nvcc at {NVCC}")
def test_mma_becomes_hmma_on_sm80_and_sm90(tmp_path):
    source = tmp_path / "mma_check.cu"
    source.write_text(KERNEL)
    include = Path(torch.__file__).parent / "include"
    archs = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    includes = [f"-I{ROOT / 'csrc'}", f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}"]
    command = [str(NVCC), "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-c", str(source)]
    subprocess.run(
        [*command, "-o", str(tmp_path / "m.o"), *archs, *includes], check=True, capture_output=True
    )
    sass = subprocess.run(
        [CUOBJDUMP, "-sass", str(tmp_path / "m.o")], check=True, capture_output=True, text=True
    )
    per_arch = sass.stdout.split("arch = ")[1:]
    assert sorted(block.split()[0] for block in per_arch) == ["sm_80", "sm_90"]
    for block in per_arch:
        assert "HMMA.16816.F32.BF16" in block, block[:2000]
        assert any(line.split()[1:2] == ["HMMA.16816.F32"] for line in block.splitlines() if "HMMA" in line)


def test_the_built_conv2d_tensor_core_variants_contain_hmma():
    """In cnnext._C as built here: every tensor-core instantiation of the implicit GEMM (three
    problems x half / bfloat16) has tensor-core instructions in its SASS for every architecture
    built (sm_80+), and no float instantiation claims to be one."""
    import cnnext

    if not cnnext.build_info()["cuda"]:
        pytest.skip("cnnext._C was built without CUDA kernels")
    sass = subprocess.run(
        [CUOBJDUMP, "-sass", cnnext._C.__file__], check=True, capture_output=True, text=True
    )
    variants = []  # (architecture, kernel, HMMA count)
    for arch_block in sass.stdout.split("arch = ")[1:]:
        arch = arch_block.split()[0]
        for block in arch_block.split("Function : ")[1:]:
            name, _, body = block.partition("\n")
            if "implicit_gemm_kernel" in name and name.strip().endswith("Lb1EEEvT_l"):
                variants.append((arch, name.strip(), body.count("HMMA")))
    archs = {arch for arch, _, _ in variants}
    assert archs and len(variants) == 6 * len(archs), variants
    assert all(hmma > 0 for _, _, hmma in variants), variants
    assert not any("IfEE" in name or "IdEE" in name for _, name, _ in variants)  # float / double: never
