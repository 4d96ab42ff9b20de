"""Proof that the CUDA emulator's tests catch a missing barrier: remove each __syncthreads of every
kernel in turn, rebuild the emulated extension from that copy of csrc/ and run the op's emulated
tests (both schedules); every removal must make at least one test fail. Not run in CI (about a
minute per barrier on two cores).

    python -m benchmarks.barrier_removal [--no-tsan] [--keep WORKDIR]

Each removal is also run through the op's ThreadSanitizer pass (tests/test_cuda_emulation.py),
unless --no-tsan. Prints a Markdown table (barrier, kernel, what the tests and TSan said, the first
failing test) and exits 1 if any removal went unnoticed by both.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BARRIER = re.compile(r"__syncthreads(_count|_and|_or)?\(")
# The emulated tests of the kernels in each op folder.
TESTS = {
    "conv2d": ["tests/test_conv2d.py"],
    "pool2d": ["tests/test_pool2d.py"],
    "attention": ["tests/test_attention.py"],
}


def barriers():
    """(path relative to csrc, line number, kernel name) of every __syncthreads in csrc/**/*.cu."""
    found = []
    for path in sorted((REPO / "csrc").glob("*/*.cu")):
        kernel = "?"
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            m = re.search(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", line)
            if m:
                kernel = m.group(1)
            if BARRIER.search(line) and not line.lstrip().startswith("//"):
                found.append((path.relative_to(REPO / "csrc"), number, kernel))
    return found


def remove_barrier(text: str, number: int) -> str:
    lines = text.splitlines(keepends=True)
    line = lines[number - 1]
    # __syncthreads() -> nothing; the reducing forms -> their predicate's value (as if alone).
    patched = re.sub(r"__syncthreads\(\)", "(void)0", line)
    patched = re.sub(r"__syncthreads_(?:count|and|or)\(", "(", patched)
    assert patched != line, f"no barrier found on line {number}: {line!r}"
    lines[number - 1] = patched
    return "".join(lines)


def run(command, env, log):
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    log.write(f"$ {' '.join(command)}\n{result.stdout[-20000:]}\n{result.stderr[-20000:]}\n")
    return result


def first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return m.group(1).split("::", 1)[-1] if m else "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-tsan", action="store_true", help="skip the ThreadSanitizer pass of each removal"
    )
    parser.add_argument("--keep", type=pathlib.Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)

    work = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="cnnext-barriers-"))
    sources = work / "csrc"
    if sources.exists():
        shutil.rmtree(sources)
    shutil.copytree(REPO / "csrc", sources)
    env = {**os.environ, "CNNEXT_EMU_SOURCES": str(sources), "CNNEXT_EMU_BUILD_DIR": str(work / "build")}
    log_path = work / "barrier_removal.log"
    rows, missed = [], 0
    with log_path.open("w") as log:
        for relative, number, kernel in barriers():
            original = (REPO / "csrc" / relative).read_text()
            (sources / relative).write_text(remove_barrier(original, number))
            start = time.time()
            build = run([sys.executable, "-c", "import cnnext.cuda_emulation"], env, log)
            op = relative.parts[0]
            tests_verdict, tsan_verdict, failing = (
                "build failed",
                "-",
                build.stderr.strip().splitlines()[-1:] or ["?"],
            )
            if build.returncode == 0:
                tests = run(
                    [
                        sys.executable,
                        "-m",
                        "pytest",
                        *TESTS[op],
                        "-q",
                        "-x",
                        "-k",
                        "emu",
                        "-p",
                        "no:cacheprovider",
                    ],
                    env,
                    log,
                )
                tests_verdict = "caught" if tests.returncode != 0 else "missed"
                failing = [first_failure(tests.stdout)] if tests.returncode != 0 else ["-"]
                if not args.no_tsan:  # builds the TSan variant from the same patched copy, beside it
                    tsan = run(
                        [
                            sys.executable,
                            "-m",
                            "pytest",
                            "tests/test_cuda_emulation.py",
                            "-q",
                            "-k",
                            f"sanitizer_pass_is_clean and tsan and {op}",
                            "-p",
                            "no:cacheprovider",
                        ],
                        env,
                        log,
                    )
                    tsan_verdict = "caught" if tsan.returncode != 0 else "missed"
            verdict = "caught" if "caught" in (tests_verdict, tsan_verdict) else "MISSED"
            missed += verdict == "MISSED"
            (sources / relative).write_text(original)
            row = (f"{relative}:{number}", kernel, tests_verdict, tsan_verdict, verdict, failing[0])
            rows.append((*row, f"{time.time() - start:.0f} s"))
            print(" ".join(row), file=sys.stderr, flush=True)
    print("| barrier | kernel | emulated tests | TSan pass | verdict | first failing test | time |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{len(rows) - missed} of {len(rows)} removals caught; log: {log_path}")
    if not args.keep:
        shutil.rmtree(work / "build", ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
