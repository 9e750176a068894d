"""Process-group setup for torchrun (single node or many) and small collective helpers."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment; NCCL on GPU, gloo on CPU. Without torchrun: one process."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def is_main_process() -> bool:
    """Rank 0 of torchrun's processes, or the only process."""
    return os.environ.get("RANK", "0") in ("", "0")


_shared = False


def cleanup(d: Dist):
    if d.enabled and dist.is_initialized() and not _shared:
        dist.destroy_process_group()


@contextlib.contextmanager
def one_group_for_all_runs():
    """Several training runs in one process (`mambaout transfer` under torchrun): the process
    group the first run creates outlives each run and is destroyed at the end (creating it again
    on torchrun's store fails: the second group's handshake meets the first one's keys)."""
    global _shared
    _shared = True
    try:
        yield
    finally:
        _shared = False
        if dist.is_initialized():
            dist.destroy_process_group()
