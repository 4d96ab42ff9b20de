# cnnext developer commands. `make test` and `make demo` work on a fresh clone: they create .venv,
# install the pinned requirements, build the extension and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two cores here: two compile jobs. setup.py finds CUDA_HOME and picks a small arch list itself.
export MAX_JOBS ?= 2

.PHONY: setup build emulator test demo bench bench-compare wheel-smoke lint format clean device-check barrier-removal

$(VENV)/.requirements: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -r requirements.txt
	touch $@

setup: $(VENV)/.requirements

# First build: an editable install (pip compiles everything), again whenever setup.py changes (its
# packages and console scripts are installed then). Later builds: ninja recompiles only what changed.
build: setup
	@if [ -f $(VENV)/.cnnext-editable ] && [ $(VENV)/.cnnext-editable -nt setup.py ]; then \
		$(PY) setup.py build_ext --inplace; \
	else \
		$(PY) -m pip install --no-build-isolation --no-deps -e . && touch $(VENV)/.cnnext-editable; \
	fi
	$(PY) -c "import cnnext; print('cnnext build:', cnnext.build_info())"

# The CUDA emulator: csrc/**/*.cu compiled with g++ for the CPU as a test-only extension
# (torch.ops.cnnext_emu), so that every CUDA test runs here too. Built in build/cuda_emulation/.
emulator: build
	$(PY) -c "import cnnext.cuda_emulation"

test: build emulator
	$(PY) -m pytest tests -q

# The quick FC vs CNN vs ResNet study on MNIST (data from $$CNNEXT_DATA, else ./data, downloaded
# there when missing and online); prints where its REPORT.md is.
demo: build
	$(PY) -m experiments fc-vs-cnn --dataset mnist --preset quick --download

# Every op's pytest-benchmark suite on the CPU into benchmarks/results/cpu.json, and on the GPU into
# cuda.json where one is visible; then RESULTS.md, ratios.png and the README's speed summary are
# regenerated from every JSON in benchmarks/results/.
BENCH := $(PY) -m pytest benchmarks/bench_conv2d.py benchmarks/bench_pool2d.py benchmarks/bench_attention.py \
	benchmarks/bench_training.py -q -p no:cacheprovider
bench: build
	mkdir -p benchmarks/results
	@if [ -x "$${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then $(PY) -m benchmarks.cuda_resources; \
	else echo "no nvcc: the CUDA resources table (benchmarks/cuda_resources.json) is left as it is"; fi
	$(BENCH) -k cpu --benchmark-autosave --benchmark-json=benchmarks/results/cpu.json
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(BENCH) -k cuda --benchmark-json=benchmarks/results/cuda.json; \
	fi
	$(PY) -m benchmarks.report

# Every `make bench` is also saved in pytest-benchmark's history (.benchmarks/<machine>/, not
# committed). bench-compare reruns the CPU suite, shows pytest-benchmark's table against the last
# saved run, then judges by ratios (benchmarks/compare.py): it fails when the geometric mean of
# native/cnnext over an op's pass fell by more than BENCH_THRESHOLD percent. 30: between two runs
# of an unchanged checkout on this 2-core VM those means moved by -13% to +27% (single cases by
# -60% to +214%; benchmarks/NOTES.md); use a smaller threshold on a quiet machine.
BENCH_THRESHOLD ?= 30
bench-compare: build
	@ls .benchmarks/*/*.json >/dev/null 2>&1 || { echo "no saved benchmark run to compare with: run make bench first"; exit 2; }
	$(BENCH) -k cpu --benchmark-compare --benchmark-columns=median,iqr,rounds \
		--benchmark-json=.benchmarks/compare-latest.json
	$(PY) -m benchmarks.compare --last .benchmarks/compare-latest.json --threshold $(BENCH_THRESHOLD)

# The package as a user installs it: sdist, wheel built from it in isolation, fresh venv, smoke test.
wheel-smoke: setup
	bash .ci/wheel_smoke.sh

device-check:
	bash benchmarks/device_check.sh

# Proof that the emulated tests catch a missing barrier: each __syncthreads removed in turn (~10 min).
barrier-removal: emulator
	$(PY) -m benchmarks.barrier_removal

# Python: ruff (lint + format); C++ / CUDA: clang-format (.clang-format, 110 columns) in check mode.
CXX_SOURCES = $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' | sort)
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

clean:
	rm -rf build dist *.egg-info cnnext/*.so .pytest_cache .ruff_cache .benchmarks
	rm -f $(VENV)/.cnnext-editable
