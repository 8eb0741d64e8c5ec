"""Scale-out: when launched by `torchrun` (WORLD_SIZE > 1 in the environment) training runs under
DistributedDataParallel, NCCL on GPUs and gloo on CPUs; otherwise it is single-process. Each rank trains on
its own shard of the samples (a DistributedSampler in edgeopt.inputs.data.epochs); gradients are averaged by
DDP, so all ranks end with identical weights."""

from __future__ import annotations

import os

import torch
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size), initialising the default process group on first use under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def device_for(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def wrap(module: nn.Module, dev: torch.device, world_size: int) -> nn.Module:
    if world_size <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # broadcast_buffers: BN running statistics follow rank 0, so every rank ends with the same model
    return DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                   broadcast_buffers=True)


def mean_across(value: float, world_size: int) -> float:
    if world_size <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world_size


def broadcast(obj=None):
    """Rank 0's `obj` on every rank (pickled; meant for small messages such as build instructions).
    Other ranks pass nothing and get rank 0's object back."""
    rank, _ = world()
    dev = device_for(rank)  # NCCL sends the pickled bytes from this rank's own GPU
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=dev if dev.type == "cuda" else None)
    return box[0]
