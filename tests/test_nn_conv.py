"""cnnext.nn.Conv2d is torch.nn.Conv2d on other kernels: same arguments, init, repr, state_dict."""

import pytest
import torch

import cnnext

from .conftest import DEVICES

CONFIGS = [
    dict(in_channels=3, out_channels=8, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=2, padding=(1, 2), bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding="same", dilation=2, groups=6),
    dict(in_channels=4, out_channels=4, kernel_size=4, padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2, padding_mode="reflect"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="circular"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=(1, 2), padding_mode="replicate"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_module_matches_torch_nn_with_shared_state_dict(config, device):
    native = torch.nn.Conv2d(**config, dtype=torch.float64, device=device)
    ours = cnnext.nn.Conv2d(**config, dtype=torch.float64, device=device)
    assert ours.state_dict().keys() == native.state_dict().keys()
    assert repr(ours).replace("cnnext.nn.", "") == repr(native)
    ours.load_state_dict(native.state_dict())

    x = torch.randn(2, config["in_channels"], 11, 10, dtype=torch.float64, device=device)
    torch.testing.assert_close(ours(x), native(x))
    ours(x).square().sum().backward()
    native(x).square().sum().backward()
    for (name, p_ours), p_native in zip(ours.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(p_ours.grad, p_native.grad, msg=lambda m, n=name: f"{n}: {m}")


def test_reset_parameters_follows_torch_nn_initialisation():
    """Same RNG stream, same initial weights: the init is torch.nn.Conv2d's own."""
    torch.manual_seed(7)
    native = torch.nn.Conv2d(16, 32, 3)
    torch.manual_seed(7)
    ours = cnnext.nn.Conv2d(16, 32, 3)
    assert torch.equal(ours.weight, native.weight) and torch.equal(ours.bias, native.bias)


def test_module_runs_on_cnnext_operator():
    """The module must not silently fall back to native convolution."""
    conv = cnnext.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with torch.profiler.profile() as prof:
        conv(x)
    names = {event.name for event in prof.events()}
    assert "cnnext::conv2d" in names
    assert not any(name in names for name in ("aten::convolution", "aten::mkldnn_convolution"))


def test_build_info_describes_this_build():
    info = cnnext.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert all(arch.isdigit() for arch in info["cuda_archs"].split(","))
        assert info["cuda_runtime_version"] >= 11000
    if torch.cuda.is_available():
        assert info["cuda"], "a GPU is visible but cnnext was built without CUDA kernels"
