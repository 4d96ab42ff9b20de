#!/usr/bin/env bash
# cnnext as a user gets it: an sdist, a wheel built from that sdist by an isolated build (the build
# requirements of pyproject.toml, not this checkout's .venv: this also proves `pip install .`),
# installed with its dependencies into a fresh virtual environment outside the checkout, and
# tests/installed_smoke.py run there from / (import, an op and its gradients against torch,
# cnnext-experiments --help, a tiny study through the Python API and the console script).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
BASE_PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cnnext-wheel-smoke.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { echo "== wheel smoke: $* ($(date +%T))"; }

step "sdist"
"$PY" -m build --sdist --no-isolation --outdir "$WORK/dist" . >"$WORK/sdist.log" 2>&1 || { tail -30 "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/cnnext-*.tar.gz)
if git rev-parse --git-dir >/dev/null 2>&1; then  # every tracked build source is in the sdist
  tar tzf "$SDIST" | sed 's|^[^/]*/||' | sort >"$WORK/sdist-files"
  missing=$(git ls-files csrc cnnext experiments setup.py pyproject.toml MANIFEST.in | sort | comm -23 - "$WORK/sdist-files")
  if [ -n "$missing" ]; then echo "missing from the sdist:"; echo "$missing"; exit 1; fi
fi

step "wheel from the sdist, isolated build"
# One GPU architecture is enough to prove that the sdist's .cu files compile (make build compiles
# the default list); it halves nvcc's share of this build.
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} "$PY" -m pip wheel --no-deps --wheel-dir "$WORK/dist" "$SDIST" >"$WORK/wheel.log" 2>&1 || { tail -40 "$WORK/wheel.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/cnnext-*.whl)
echo "$(basename "$WHEEL"): $(du -h "$WHEEL" | cut -f1)"

step "fresh virtual environment"
"$BASE_PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install "$WHEEL" >"$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; exit 1; }
grep -E "^Successfully installed" "$WORK/install.log" | cut -c1-300

step "smoke test from /"
cd /
PATH="$WORK/venv/bin:$PATH" "$WORK/venv/bin/python" "$ROOT/tests/installed_smoke.py" "$WORK"
(cd / && PATH="$WORK/venv/bin:$PATH" cnnext-experiments --help | head -3)
step "done"
