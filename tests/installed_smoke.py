"""Smoke test of an installed cnnext (a wheel in a fresh virtual environment), run from outside the
checkout by .ci/wheel_smoke.sh: the package imports from site-packages, an operator runs forward
and backward against torch, the console script answers, and a tiny study runs through the
Python API and through the command line, configured from a file.

    python installed_smoke.py WORK_DIR
"""

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import cnnext
import experiments

work = Path(sys.argv[1])
for module in (cnnext, experiments):
    where = module.__file__
    assert "site-packages" in where, f"{module.__name__} imported from {where}, not the install"
from importlib.metadata import version  # noqa: E402

assert version("cnnext") == cnnext.__version__, (version("cnnext"), cnnext.__version__)
print("cnnext", cnnext.__version__, cnnext.build_info())

x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
ours = cnnext.ops.conv2d(x, w, None, stride=1, padding=1)
ours.sum().backward()
grads = x.grad.clone(), w.grad.clone()
x.grad = w.grad = None
F.conv2d(x, w, None, stride=1, padding=1).sum().backward()
torch.testing.assert_close(ours, F.conv2d(x, w, None, stride=1, padding=1))
torch.testing.assert_close(grads, (x.grad, w.grad))
print("conv2d forward and gradients match torch")

help_text = subprocess.run(["cnnext-experiments", "--help"], capture_output=True, text=True, check=True)
help_text = help_text.stdout
assert "fc-vs-cnn" in help_text, help_text

result = experiments.run(
    "fc-vs-cnn", dataset="synthetic", device="cpu", out=work / "results", epochs=1, progress=False, quiet=True
)
assert result.report.is_file() and len(result.runs) == 3, result
print("experiments.run:", [(r.model, round(r.test_accuracy, 3)) for r in result.runs])

config = work / "study.yaml"
config.write_text("dataset: synthetic\ndevice: cpu\nepochs: 1\nCNN:\n  width: 8\n")
cli = subprocess.run(
    ["cnnext-experiments", "fc-vs-cnn", "--config", str(config), "--out", str(work / "cli"), "--no-progress"],
    capture_output=True,
    text=True,
)
assert cli.returncode == 0, cli.stdout + cli.stderr
print(cli.stdout.strip().splitlines()[-1])
model, recorded = cnnext.load_run(next((work / "cli").glob("fc-vs-cnn/*/runs/CNN-seed0")))
assert recorded["arguments"]["width"] == 8
print("installed smoke test passed")
