"""Distributed data parallel (DDP) set-up for runs launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them the run is a single process and nothing here does anything. The backend is NCCL
on CUDA and gloo on CPU. Each rank sees its own shard of the data (see
:class:`medsr.data.sampler.EpochBatchSampler`), gradients are averaged by DDP, and only rank 0
writes files.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medsr.utils.device import resolve_device


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Read the torchrun environment (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def select_device(request: str, info: DistInfo) -> torch.device:
    """This rank's training device (:func:`medsr.utils.device.resolve_device`: ``auto`` and ``cuda``
    mean ``cuda:LOCAL_RANK``), made the current CUDA device so NCCL and ``.cuda()`` use it."""
    device = resolve_device(request, "config key 'train.device':", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for a single process or when already joined)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown_distributed() -> None:
    """Leave the process group: free what still holds it, then destroy it.

    DDP wrappers in reference cycles keep the group's C++ object (and gloo's worker threads) alive
    until a garbage collection; if that first happens while the interpreter shuts down, the process
    can die in ``std::terminate`` (a SIGABRT with no traceback). Collecting first frees them while
    Python is still whole.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, info: DistInfo, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when running distributed (the module itself otherwise)."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused)


def all_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over ranks (the loss vector: identical logs and NaN checks on all ranks)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
