"""Where this process sits in a torchrun job. ``DistributedContext.from_environment()`` is the one place
that reads torchrun's variables; everything else takes the context (or values from it) as arguments."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """rank -1 and world_size 1 when not distributed."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> DistributedContext:
        return cls(
            rank=int(os.environ.get("RANK", -1)),
            local_rank=int(os.environ.get("LOCAL_RANK", -1)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def init_distributed(context: DistributedContext, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this process's device."""
    if not context.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def main_process_first(context: DistributedContext) -> Iterator[None]:
    """Other ranks wait while rank 0 runs the block (dataset generation, label caches), then run it."""
    if context.distributed and not context.is_main:
        dist.barrier()
    yield
    if context.distributed and context.is_main:
        dist.barrier()


def broadcast_flag(context: DistributedContext, flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. the early-stopping decision)."""
    if not context.distributed:
        return flag
    values = [flag]
    dist.broadcast_object_list(values, src=0)
    return bool(values[0])
