"""The experiments on torch.distributed: one run data-parallel over the processes torchrun starts.

    torchrun --standalone --nproc_per_node=2 -m experiments fc-vs-cnn --dataset mnist

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE; with WORLD_SIZE > 1 the process
group is initialised here (nccl for CUDA, gloo for the CPU), each rank is put on its device
(cuda:LOCAL_RANK), and cnnext.train.fit trains a DistributedDataParallel wrapper. Rank 0 alone
writes files; the others wait at barriers and receive rank 0's decisions and results by broadcast,
so every rank walks the same runs in the same order.

Threads: torchrun sets OMP_NUM_THREADS=1 when it is unset, which leaves all but one core per rank
idle on a CPU job; each CPU rank uses CNNEXT_THREADS_PER_RANK threads if set, else its share of
the machine's cores (cores // LOCAL_WORLD_SIZE, at least 1).
"""

import dataclasses
import os

import torch
import torch.distributed as dist

__all__ = ["Ranks", "current", "setup", "shutdown"]


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files (rank 0, or the only process)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def share(self, value=None):
        """Rank 0's `value` on every rank (pickled; for decisions and small results)."""
        if not self.active:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _from_environment() -> Ranks:
    def number(name: str, default: int) -> int:
        text = os.environ.get(name)
        if text is None:
            return default
        try:
            return int(text)
        except ValueError:
            raise RuntimeError(f"{name}={text!r} is not an integer (set by torchrun?)") from None

    world = number("WORLD_SIZE", 1)
    return Ranks(
        rank=number("RANK", 0),
        local_rank=number("LOCAL_RANK", 0),
        world_size=world,
        local_world_size=number("LOCAL_WORLD_SIZE", world),
    )


def current() -> Ranks:
    """This process's place in the launch (one process when torchrun did not start it)."""
    if dist.is_available() and dist.is_initialized():
        return dataclasses.replace(
            _from_environment(), rank=dist.get_rank(), world_size=dist.get_world_size()
        )
    return _from_environment()


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Initialise the process group when torchrun started several processes; returns this
    process's ranks and the device it trains on."""
    ranks = _from_environment()
    if not ranks.active:
        return ranks, device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    else:
        threads = os.environ.get("CNNEXT_THREADS_PER_RANK")
        torch.set_num_threads(
            int(threads) if threads else max(1, (os.cpu_count() or 1) // ranks.local_world_size)
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current(), device


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun process; a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
