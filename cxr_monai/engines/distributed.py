"""Multi-process training with PyTorch DDP on ``torchrun``: device, backend and wrapping chosen automatically
(NCCL and one GPU per process on CUDA machines, gloo on the CPU), used by the bundles' ``multi_gpu_train.json``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ddp_device", "init_distributed", "wrap_ddp", "is_main_process", "world_size", "unwrap", "any_rank"]


def ddp_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group once (``torchrun`` sets the rendezvous variables): ``nccl`` on
    CUDA, ``gloo`` otherwise. Returns ``(rank, world_size)``."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(ddp_device())
    return dist.get_rank(), dist.get_world_size()


def wrap_ddp(module: nn.Module, device: torch.device | str, sync_batchnorm: bool = True) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` (already on ``device``); on CUDA with ``sync_batchnorm``
    BatchNorm layers are converted to SyncBatchNorm (global batch statistics; not available on the CPU, where
    each process normalises with its own share of the batch)."""
    device = torch.device(device)
    if device.type == "cuda":
        if sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[device])
    return nn.parallel.DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP/DataParallel wrapper (its ``state_dict`` has no ``module.`` prefix)."""
    return module.module if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else module


def is_main_process() -> bool:
    """Rank 0, or no process group at all (single-process run)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (so that a stop decision taken by one rank, e.g. a
    time limit, stops all of them at the same iteration)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
