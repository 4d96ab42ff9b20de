"""What the package promises at install time, checked in the checkout (the wheel itself is built,
installed into a fresh venv and smoke-tested by .ci/wheel_smoke.sh in CI)."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def pinned(lines, name):
    return next(re.sub(r"\s*#.*", "", x).strip() for x in lines if re.match(rf"{name}\s*==", x))


def test_the_isolated_build_uses_the_torch_the_project_pins():
    """An isolated build compiles against pyproject's torch; the extension then loads only into that
    release. It must be the one requirements.txt installs for development and tests."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert pinned(build, "torch") == pinned(requirements, "torch")


def test_the_console_script_names_itself_in_its_help():
    code = (
        "import sys; sys.argv = ['cnnext-experiments', '--help']; "
        "from experiments.cli import console_main; console_main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: cnnext-experiments") and "fc-vs-cnn" in out.stdout


def test_typed_packages_ship_their_marker():
    for package in ("cnnext", "experiments"):
        assert (ROOT / package / "py.typed").is_file()
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "recursive-include csrc *.h *.cpp *.cu" in manifest
