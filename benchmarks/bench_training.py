"""End-to-end training speed: one SGD step (forward, backward, optimizer) of whole models built on
native ops and on cnnext ops, same weights, same batch.

Cases: ResNet-20 on a batch of 128 CIFAR-sized images (3x32x32) and the MNIST CNN of the
fc-vs-cnn quick preset on a batch of 64 (1x28x28). The floor is 3x the forward multiply-adds
(forward + the two backward products) x 2 FLOPs over the measured GEMM rate: what the step
would cost if every layer ran at matrix-product speed.
"""

import pytest
import torch
import torch.nn.functional as F

from cnnext.models import build_model, count_flops

from .conftest import DEVICES, record, synchronize

CASES = {  # name: (family, config, batch, (C, H, W))
    "ResNet-20 b128 3x32x32": ("resnet", {"depth": 20}, 128, (3, 32, 32)),
    "MNIST CNN b64 1x28x28": ("cnn", {"depth": 3, "width": 16, "in_channels": 1}, 64, (1, 28, 28)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["float32"])  # every suite has the same parameter names
@pytest.mark.parametrize("impl", ["native", "cnnext"])
@pytest.mark.parametrize("direction", ["training step"])  # every suite has the same parameter names
@pytest.mark.parametrize("shape", list(CASES), ids=[c.replace(" ", "_") for c in CASES])
def test_training_step_speed(benchmark, shape, direction, impl, device, precision):
    case = shape
    family, config, batch, shape = CASES[case]
    torch.manual_seed(0)
    model = build_model(family, backend=impl, **config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        synchronize(device)

    flops = 3 * 2 * count_flops(model, shape) * batch
    record(
        benchmark,
        op="training",
        shape=case,
        direction=direction,
        impl=impl,
        device=device,
        flops=flops,
        precision=precision,
    )
    benchmark.pedantic(step, rounds=20 if device == "cuda" else 8, iterations=1, warmup_rounds=2)
