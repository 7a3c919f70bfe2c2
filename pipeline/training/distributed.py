"""Several training processes (``torchrun``): rank, world size, process group, reductions.

Everything here is the identity on a single process, so the trainer calls it unconditionally.

Must not: choose devices or precisions (:mod:`pipeline.model.runtime`), or know about models beyond
their buffers.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from pipeline.model.runtime import resolve_device


def rank() -> int:
    """This process's rank (``RANK`` before the group is joined; 0 alone)."""
    dist = torch.distributed
    return (
        dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    )


def world_size() -> int:
    """Number of processes in the group (1 alone)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_distributed(device_name: str) -> bool:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity on one process)."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (batch-norm statistics) over processes.

    DistributedDataParallel keeps parameters identical but each process updates its running
    statistics on its own batches; averaging them at the end of an epoch gives every process the
    same model (for sharded validation and the checkpoint).
    """
    world = world_size()
    if world == 1:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)
            buf.div_(world)
