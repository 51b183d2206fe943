"""torchrun support: one process per GPU, gradients all-reduced by DDP, rank 0 alone reports and checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun described in the environment (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP-wrap a trained module when several processes train; otherwise return it unchanged."""
    if not info.enabled:
        return model
    device_ids = [info.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    assert isinstance(inner, torch.nn.Module)
    return inner


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group cleanly."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
