"""Model families on both backends: parameter counts and FLOPs from the papers, native/cnnext
parity (logits, gradients, 10 SGD steps), convert() round trips, and bad configurations."""

import copy

import pytest
import torch
import torch.nn.functional as F

import cnnext
from cnnext.models import build_model, count_flops, count_parameters, list_models
from cnnext.models.cnn import ConvUnit

# Small configurations of every registered family (parity runs them on both backends).
FAMILY_CONFIGS = {
    "mlp": dict(in_features=3 * 16 * 16, hidden=(32, 16), batch_norm=True),
    "cnn-residual-attention": dict(depth=4, width=8, residual=True, attention_stages=(1,)),
    "cnn-factorized-avg-k5": dict(depth=5, width=8, kernel_size=5, factorized=True, pooling="avg"),
    "cnn-strided-k7": dict(depth=3, width=8, kernel_size=7, pooling="strided"),
    "cnn-shallow": dict(depth=2, width=8),
    "cnn-deep-plain": dict(depth=20, width=4),
    "cnn-no-norm-factorized": dict(depth=4, width=8, batch_norm=False, factorized=True, residual=True),
    "resnet-basic": dict(depth=8),
    "resnet-bottleneck": dict(depth=11, block="bottleneck"),
    "wrn": dict(depth=10, widen=1),
}


def _family(case: str) -> str:
    return case.split("-")[0]


def test_every_registered_family_has_a_parity_case():
    assert sorted({_family(c) for c in FAMILY_CONFIGS}) == list_models()


def twin_models(case: str, dtype=torch.float64):
    torch.manual_seed(0)
    native = build_model(_family(case), backend="native", **FAMILY_CONFIGS[case]).to(dtype)
    ours = build_model(_family(case), backend="cnnext", **FAMILY_CONFIGS[case]).to(dtype)
    assert ours.state_dict().keys() == native.state_dict().keys()
    ours.load_state_dict(native.state_dict())
    for model in (native, ours):  # SelfAttention2d starts as the identity: open its gate
        for module in model.modules():
            if isinstance(module, cnnext.nn.SelfAttention2d):
                module.gate.data.fill_(0.5)
    return native, ours


def test_cnnext_backend_uses_cnnext_layers():
    _, ours = twin_models("cnn-residual-attention")
    kinds = {type(m) for m in ours.modules()}
    assert cnnext.nn.Conv2d in kinds and cnnext.nn.MaxPool2d in kinds and torch.nn.Conv2d not in kinds


# float64: both backends compute the same sums in different orders; 1e-9 leaves room for that
# over ~10 layers, elementwise, logits and every gradient. float32: logits (O(1)) agree to 1e-4,
# but a gradient element may differ by its whole size where a ReLU input lies within rounding
# distance (~1e-6) of zero and the two backends round it to opposite signs (seen on the bottleneck
# ResNet: one such unit changed a batch-norm bias gradient by 5%). So float32 gradients are compared
# per parameter in norm: within 10% of native's norm, where a wrong kernel is off by ~100%.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(FAMILY_CONFIGS))
def test_backends_give_same_logits_and_gradients(case, dtype):
    native, ours = twin_models(case, dtype)
    x = torch.randn(4, 3, 16, 16, dtype=dtype)
    y = torch.randint(0, 10, (4,))
    logits, logits_native = ours(x), native(x)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(logits, logits_native, rtol=tol, atol=tol)
    F.cross_entropy(logits, y).backward()
    F.cross_entropy(logits_native, y).backward()
    for (name, p), p_native in zip(ours.named_parameters(), native.parameters(), strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(
                p.grad, p_native.grad, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}"
            )
        else:
            error = (p.grad - p_native.grad).norm() / p_native.grad.norm().clamp_min(1e-12)
            assert error < 0.1, f"{name}: gradient differs from native by {error:.1%} in norm"


@pytest.mark.parametrize("backend", ["native", "cnnext"])
@pytest.mark.parametrize("case", [c for c in FAMILY_CONFIGS if _family(c) != "mlp"])
def test_a_channels_last_models_gradients_have_its_parameters_strides(case, backend):
    """What DDP checks before it uses a gradient in place ("grad strides do not match bucket view
    strides" otherwise, and a copy every step); native is the control."""
    torch.manual_seed(0)
    model = build_model(_family(case), backend=backend, **FAMILY_CONFIGS[case]).double()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    mismatched = [
        (n, p.stride(), p.grad.stride()) for n, p in model.named_parameters() if p.grad.stride() != p.stride()
    ]
    assert not mismatched


@pytest.mark.parametrize("case", list(FAMILY_CONFIGS))
def test_ten_sgd_steps_give_same_losses(case):
    native, ours = twin_models(case)
    losses = {}
    for label, model in (("native", native), ("cnnext", ours)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        losses[label] = []
        for _ in range(10):
            x = torch.randn(8, 3, 16, 16, generator=generator, dtype=torch.float64)
            y = torch.randint(0, 10, (8,), generator=generator)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[label].append(loss.item())
    torch.testing.assert_close(losses["cnnext"], losses["native"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "name, cfg, millions",
    [
        ("resnet", dict(depth=20), 0.27),
        ("resnet", dict(depth=56), 0.85),
        ("resnet", dict(depth=110), 1.7),
        ("wrn", dict(depth=16, widen=8), 11.0),
        ("wrn", dict(depth=28, widen=10), 36.5),
    ],
    ids=["resnet20", "resnet56", "resnet110", "wrn-16-8", "wrn-28-10"],
)
def test_parameter_counts_match_the_papers(name, cfg, millions):
    # The papers round to 2-3 significant digits.
    assert round(count_parameters(build_model(name, **cfg)) / 1e6, 2 if millions < 1 else 1) == millions


def test_cnn_depth_counts_conv_layers():
    for depth in (2, 7, 20):
        convs = [m for m in build_model("cnn", depth=depth).modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == depth


@pytest.mark.parametrize("depth, width", [(4, 16), (6, 16), (9, 32)])
def test_factorised_cnn_has_fewer_parameters_and_flops_than_the_plain_one(depth, width):
    # The point of a 1x1+3x3 pair is to cut parameters; widening units (after each downsampling)
    # are where a badly sized 1x1 adds them instead.
    plain = build_model("cnn", depth=depth, width=width)
    factorised = build_model("cnn", depth=depth, width=width, factorized=True)
    assert count_parameters(factorised) < count_parameters(plain)
    assert count_flops(factorised, (3, 32, 32)) < count_flops(plain, (3, 32, 32))
    units = [m for m in factorised.modules() if isinstance(m, ConvUnit)]
    reduces = [u.body[0] for u in units if u.body[0].kernel_size == (1, 1)]
    assert len(reduces) == depth - 1  # every unit but the one reading the image
    for unit, reduce in zip(units[1:], reduces, strict=True):
        assert reduce.out_channels == min(reduce.in_channels, unit.body[-2].out_channels) // 2


def test_resnet20_flops():
    flops = count_flops(build_model("resnet", depth=20), (3, 32, 32))
    assert 40e6 <= flops <= 42e6  # He et al.: about 41M multiply-adds


def test_convert_round_trip_is_bit_identical():
    torch.manual_seed(0)
    model = build_model("cnn", depth=4, width=8, residual=True, attention_stages=(2,))
    before = copy.deepcopy(model.state_dict())
    cnnext.nn.convert(model, to="cnnext")
    assert all(type(m) is not torch.nn.Conv2d for m in model.modules())
    assert all(m.backend == "cnnext" for m in model.modules() if isinstance(m, cnnext.nn.SelfAttention2d))
    cnnext.nn.convert(model, to="native")
    assert all(type(m) is not cnnext.nn.Conv2d for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_convert_keeps_mode_and_copies_when_asked():
    model = build_model("resnet", depth=8).eval()
    converted = cnnext.nn.convert(model, to="cnnext", inplace=False)
    assert converted is not model and not converted.training
    assert any(type(m) is cnnext.nn.Conv2d for m in converted.modules())
    assert all(type(m) is not cnnext.nn.Conv2d for m in model.modules())  # original untouched


def test_torchvision_resnet18_converts_and_matches():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        converted = cnnext.nn.convert(model, to="cnnext", inplace=False)
        got = converted(x)
    assert sum(type(m) is cnnext.nn.Conv2d for m in converted.modules()) == 20
    assert (
        type(converted.maxpool) is cnnext.nn.MaxPool2d
        and type(converted.avgpool) is cnnext.nn.AdaptiveAvgPool2d
    )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_convert_leaves_unsupported_layers_native_and_says_so():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3).half(), torch.nn.Conv2d(4, 4, 3))
    with pytest.warns(UserWarning, match=r"left these layers native: 0: dtype torch.float16 on CPU"):
        cnnext.nn.convert(model, to="cnnext")
    assert type(model[0]) is torch.nn.Conv2d and type(model[1]) is cnnext.nn.Conv2d


BAD_CONFIGS = {
    "unknown model": (dict(name="vgg16"), "unknown model 'vgg16'; registered models: cnn, mlp, resnet, wrn"),
    "resnet depth": (dict(name="resnet", depth=21), r"must be 6n\+2 \(e.g. 8, 20, 32, 44, 56\), got 21"),
    "bottleneck depth": (
        dict(name="resnet", depth=21, block="bottleneck"),
        r"must be 9n\+2 \(e.g. 11, 29, 47",
    ),
    "resnet block": (dict(name="resnet", block="dense"), "block must be one of"),
    "wrn depth": (dict(name="wrn", depth=20), r"WRN depth must be 6n\+4"),
    "cnn depth": (dict(name="cnn", depth=1), "cnn depth must be >= 2"),
    "cnn kernel": (dict(name="cnn", kernel_size=4), r"kernel_size must be one of \(1, 3, 5, 7\)"),
    "cnn pooling": (dict(name="cnn", pooling="lp"), "pooling must be one of"),
    "backend": (dict(name="mlp", backend="jax"), "backend must be one of"),
    "activation": (dict(name="mlp", activation="swish"), "activation must be one of"),
}


@pytest.mark.parametrize("cfg, message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configuration_lists_what_is_valid(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_model(**cfg)


def test_cnn_without_batch_norm_has_conv_biases_and_no_norm_layers():
    model = build_model("cnn", depth=6, width=4, batch_norm=False, in_channels=1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and all(c.bias is not None for c in convs)
    assert all(
        c.bias is None
        for c in build_model("cnn", depth=6, width=4).modules()
        if isinstance(c, torch.nn.Conv2d)
    )
