"""End-to-end training speed: one SGD step (forward, backward, optimizer) of whole models built on
native ops and on cnnext ops, same weights, same batch, in both memory formats (channels_last
cases get " NHWC" in the report; the report adds each backend's best format against the other's).

Cases: ResNet-20 on 128 CIFAR-sized images (3x32x32), the MNIST CNN of the fc-vs-cnn quick preset
on 64 (1x28x28), WRN-16-4 on 32 CIFAR-sized images, and the CNN+SelfAttention2d of the
custom-layers study (attention after the last stage, on 8x8 tokens) on 64. The floor is 3x the
forward multiply-adds (forward + the two backward products) x 2 FLOPs over the measured peak: what
the step would cost if every layer ran at that peak. benchmarks/profile_step.py splits the same
steps by where their time goes.
"""

import pytest
import torch
import torch.nn.functional as F

from cnnext.models import build_model, count_flops

from .conftest import DEVICES, record, synchronize

# key: (report label, family, config, batch, (C, H, W))
CASES = {
    "resnet20": ("ResNet-20 b128 3x32x32", "resnet", {"depth": 20}, 128, (3, 32, 32)),
    "mnist_cnn": (
        "MNIST CNN b64 1x28x28",
        "cnn",
        {"depth": 3, "width": 16, "in_channels": 1},
        64,
        (1, 28, 28),
    ),
    "wrn16_4": ("WRN-16-4 b32 3x32x32", "wrn", {"depth": 16, "widen": 4}, 32, (3, 32, 32)),
    "cnn_attention": (
        "CNN+SelfAttention2d b64 3x32x32",
        "cnn",
        {"depth": 3, "width": 32, "pooling": "avg", "attention_stages": (2,)},
        64,
        (3, 32, 32),
    ),
}
MODEL_KEYS = tuple(CASES)
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def make_step(model_key, impl, device, memory_format):
    """A closure running one SGD step of case `model_key` on backend `impl`: model, optimizer and
    batch built here (seed 0) in `memory_format`."""
    _, family, config, batch, shape = CASES[model_key]
    torch.manual_seed(0)
    model = build_model(family, backend=impl, **config).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, *shape, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        synchronize(device)

    step.model = model
    return step


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["float32"])  # every suite has the same parameter names
@pytest.mark.parametrize("impl", ["native", "cnnext"])
@pytest.mark.parametrize("direction", ["training step"])  # every suite has the same parameter names
@pytest.mark.parametrize(
    "shape",
    [(key, layout) for key in CASES for layout in LAYOUTS],
    ids=[f"{key}-{'NHWC' if layout == 'channels_last' else 'NCHW'}" for key in CASES for layout in LAYOUTS],
)
def test_training_step_speed(benchmark, shape, direction, impl, device, precision):
    model_key, layout = shape
    label, _, _, batch, image_shape = CASES[model_key]
    step = make_step(model_key, impl, device, LAYOUTS[layout])
    flops = 3 * 2 * count_flops(step.model, image_shape) * batch
    record(
        benchmark,
        op="training",
        shape=label + (" NHWC" if layout == "channels_last" else ""),
        direction=direction,
        impl=impl,
        device=device,
        flops=flops,
        precision=precision,
    )
    benchmark.pedantic(step, rounds=20 if device == "cuda" else 8, iterations=1, warmup_rounds=2)
