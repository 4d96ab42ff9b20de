"""Build cnnext and its one compiled extension, cnnext._C.

C++ sources (csrc/**/*.cpp) are always built. CUDA sources (csrc/**/*.cu) are built when torch is
a CUDA build and nvcc is found. Environment switches:

  CNNEXT_CUDA=0            never build CUDA sources (CPU-only extension)
  FORCE_CUDA=1             build CUDA sources even if detection says no (fails loudly without nvcc)
  CUDA_HOME=/path          the CUDA toolkit to use (else found from /usr/local/cuda or nvcc on PATH)
  TORCH_CUDA_ARCH_LIST     archs to compile for; default: the visible GPUs, or "8.0;9.0+PTX" when
                           no GPU is visible (enough for A100/H100 and JIT on newer cards)
  MAX_JOBS                 parallel compile jobs (ninja)
"""

import glob
import os
import re
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS_WITHOUT_GPU = "8.0;9.0+PTX"


def _is_toolkit(path):
    """A CUDA toolkit root has nvcc and the runtime headers (a bare nvcc wrapper dir does not)."""
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "bin", "nvcc"))
        and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))
    )


def find_cuda_home():
    """Where the CUDA toolkit lives, or None.

    torch guesses CUDA_HOME from `which nvcc`; when nvcc on PATH is a wrapper script (e.g.
    /usr/local/bin/nvcc) that guess is /usr/local and the link fails for want of libcudart. So an
    explicit CUDA_HOME/CUDA_PATH wins, then the usual install dirs, then nvcc's resolved path.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = ["/usr/local/cuda", "/opt/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((c for c in candidates if _is_toolkit(c)), None)


def _sources(extension):
    """csrc/**/*.<extension>, without csrc/cuda_emulation/ (the test-only CUDA emulator, built by
    cnnext.cuda_emulation as its own extension, never into cnnext._C)."""
    found = glob.glob(f"csrc/**/*.{extension}", recursive=True)
    return sorted(p for p in found if not p.startswith(os.path.join("csrc", "cuda_emulation", "")))


def want_cuda(torch, cuda_home):
    if os.environ.get("CNNEXT_CUDA", "") == "0":
        return False
    if os.environ.get("FORCE_CUDA", "") == "1":
        return True
    return torch.version.cuda is not None and cuda_home is not None


def extensions():
    import torch

    cuda_home = find_cuda_home()
    with_cuda = want_cuda(torch, cuda_home)
    if with_cuda and cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = cuda_home
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS_WITHOUT_GPU
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = _sources("cpp")
    # The C++ standard is chosen by torch (C++20 for 2.14). -fno-trapping-math: we never read FP
    # exception flags, and without it GCC keeps clamps and selects as branches that block vectorising.
    # -g0: Python's CFLAGS carry -g, which doubles the compile time of every torch-including file.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-trapping-math"]
    define_macros = []
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    if with_cuda:
        sources += _sources("cu")
        define_macros.append(("CNNEXT_WITH_CUDA", "1"))
        ext_type = CUDAExtension
        extra = {"cxx": cxx_flags, "nvcc": nvcc_flags}
    else:
        ext_type = CppExtension
        extra = {"cxx": cxx_flags}
    print(
        f"cnnext: building {'CPU + CUDA' if with_cuda else 'CPU only'} "
        f"(CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})"
    )
    ext = ext_type(
        name="cnnext._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def version() -> str:
    """cnnext.__version__, read without importing the package (its import needs the extension)."""
    text = open(os.path.join(ROOT, "cnnext", "__init__.py")).read()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def runtime_requirements() -> list[str]:
    """What an installed cnnext needs at run time.

    torch is pinned to the release this build compiled against: the extension links to that
    torch's C++ ABI, and another release fails to load it (undefined symbols). The local part of
    the version (+cu130, +cpu) is dropped so that either build of that release satisfies pip; a
    CUDA build of cnnext additionally needs a CUDA build of torch, which `cnnext.build_info()` and
    the import error message report.
    """
    import torch

    torch_release = torch.__version__.split("+")[0]
    return [
        f"torch=={torch_release}",
        "torchvision",  # datasets; pip picks the release that matches the pinned torch
        "numpy",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pyyaml>=6",  # --config FILE.yaml
        'tomli>=2; python_version < "3.11"',  # --config FILE.toml (tomllib from 3.11)
    ]


ext_modules, cmdclass = extensions()

setup(
    name="cnnext",
    version=version(),
    description="Hand-written C++/CUDA convolution, pooling and attention operators for PyTorch",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cnnext", "cnnext.*", "experiments", "experiments.*"]),
    package_data={"cnnext": ["py.typed"], "experiments": ["py.typed", "README.md"]},
    python_requires=">=3.10",
    install_requires=runtime_requirements(),
    extras_require={
        "bench": ["pytest>=8", "pytest-benchmark>=5"],
        "tensorboard": ["tensorboard>=2.14"],
        "dev": ["pytest>=8", "pytest-benchmark>=5", "ruff", "build", "clang-format"],
    },
    entry_points={"console_scripts": ["cnnext-experiments = experiments.cli:console_main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
