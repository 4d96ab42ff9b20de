"""cnnext.nn pooling modules behave as their torch.nn namesakes: arguments, repr, 3-D and 4-D
inputs, outputs and gradients; and they run on cnnext's operators."""

import pytest
import torch

import cnnext

from .conftest import DEVICES, distinct_values

MODULES = [
    ("MaxPool2d", dict(kernel_size=2)),
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)),
    ("MaxPool2d", dict(kernel_size=(3, 2), stride=(2, 1), return_indices=True)),
    ("AvgPool2d", dict(kernel_size=2)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=2, stride=1, divisor_override=3)),
    ("AdaptiveAvgPool2d", dict(output_size=1)),
    ("AdaptiveAvgPool2d", dict(output_size=(3, None))),
]


def _id(case):
    name, kwargs = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (3, 9, 8)], ids=["4d", "3d"])
@pytest.mark.parametrize("case", MODULES, ids=_id)
def test_module_matches_torch_nn(case, shape, device):
    name, kwargs = case
    ours, native = getattr(cnnext.nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert repr(ours) == repr(native)
    assert ours.state_dict().keys() == native.state_dict().keys()
    x_ours = distinct_values(shape, torch.float64, device).requires_grad_()
    x_native = x_ours.detach().clone().requires_grad_()
    out, out_native = ours(x_ours), native(x_native)
    if kwargs.get("return_indices"):
        assert torch.equal(out[1], out_native[1])
        out, out_native = out[0], out_native[0]
    torch.testing.assert_close(out, out_native)
    out.square().sum().backward()
    out_native.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_native.grad)


@pytest.mark.parametrize("name", ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"])
def test_module_runs_on_cnnext_operator(name):
    module = getattr(cnnext.nn, name)(2)
    with torch.profiler.profile() as prof:
        module(torch.randn(1, 2, 8, 8, requires_grad=True))
    names = {event.name for event in prof.events()}
    assert any(n.startswith("cnnext::") for n in names)
    assert not any(n.startswith("aten::") and "pool" in n for n in names)
