"""Worker of tests/test_distributed.py, started by torchrun (gloo, CPU):

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py train OUT [--stop-after-epoch K]
    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py grads OUT
    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py compile OUT

train: an MLP and a cnnext CNN trained by cnnext.train.fit under DDP on the synthetic set; every
rank saves its final parameters, rank 0 the histories (with --stop-after-epoch every rank stops
after that epoch, as an interruption would, and a second launch resumes from the checkpoint).
grads: one DDP backward of the same model built on native and on cnnext ops, NCHW and
channels_last; every rank saves its averaged gradients.
compile: a torch.compile'd cnnext CNN under DDP, two steps; rank 0 saves the losses and those of
the same steps in eager mode.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import cnnext  # noqa: F401  (registers the ops)
from cnnext import data
from cnnext.models import build_model
from cnnext.train import TrainConfig, fit

mode, out = sys.argv[1], Path(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
images = data.synthetic(n=96, seed=0)
test = data.Loader(data.synthetic(n=40, seed=1), 40)
MODELS = {  # name: (family, configuration on 1x28x28 images)
    "mlp": ("mlp", {"in_features": 28 * 28, "hidden": (32,)}),
    "cnn": ("cnn", {"in_channels": 1, "depth": 2, "width": 4}),
}


def build(name: str, backend: str = "cnnext") -> torch.nn.Module:
    family, config = MODELS[name]
    torch.manual_seed(0)
    return build_model(family, backend=backend, num_classes=10, **config)


class Stop(Exception):
    pass


if mode == "train":
    stop = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--stop-after-epoch" else None

    def on_epoch(history):
        if stop is not None and len(history) == stop:
            raise Stop  # every rank at the same point, as a kill between epochs would leave it

    for name in MODELS:
        model = build(name)
        train = data.Loader(images, 32, shuffle=True, seed=0, rank=rank, world_size=world)
        cfg = TrainConfig(epochs=3, lr=0.05)
        try:
            history = fit(
                model, train, test, cfg, checkpoint=out / f"{name}.pt", progress=False, on_epoch=on_epoch
            )
        except Stop:
            # Shut the process group down as the normal end does: a rank leaving with it open can
            # take the other down mid-teardown (seen once in CI: SIGABRT, "terminate called
            # without an active exception", in the rank still inside gloo).
            dist.barrier()
            dist.destroy_process_group()
            sys.exit(0)
        torch.save(model.state_dict(), out / f"rank{rank}-{name}-params.pt")
        if rank == 0:
            torch.save(history, out / f"{name}-history.pt")

elif mode == "grads":
    from torch.nn.parallel import DistributedDataParallel

    x_all, y_all = next(iter(data.Loader(images, 32)))
    mine = slice(rank, None, world)
    for layout in ("nchw", "channels_last"):
        for backend in ("native", "cnnext"):
            model = build("cnn", backend).double()
            x = x_all[mine].double()
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            ddp = DistributedDataParallel(model)
            F.cross_entropy(ddp(x), y_all[mine]).backward()
            grads = {n: p.grad for n, p in model.named_parameters()}
            torch.save(grads, out / f"rank{rank}-{backend}-{layout}-grads.pt")

elif mode == "compile":
    from torch.nn.parallel import DistributedDataParallel

    x_all, y_all = next(iter(data.Loader(images, 32)))
    mine = slice(rank, None, world)
    losses = {}
    for compiled in (False, True):
        model = build("cnn")
        ddp = DistributedDataParallel(model)
        net = torch.compile(ddp) if compiled else ddp
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        steps = []
        for _ in range(2):
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x_all[mine]), y_all[mine])
            loss.backward()
            optimizer.step()
            steps.append(loss.item())
        losses["compiled" if compiled else "eager"] = steps
    if rank == 0:
        torch.save(losses, out / "compile-losses.pt")

dist.barrier()
dist.destroy_process_group()
