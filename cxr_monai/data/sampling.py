"""Class weights and a class-balanced (oversampling) sampler."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.utils.data.distributed
from torch.utils.data import WeightedRandomSampler

__all__ = ["class_weights", "balanced_sampler", "labels_of", "DistributedBalancedSampler"]


def labels_of(datalist: Sequence[dict], key: str = "label") -> np.ndarray:
    """Integer labels of a datalist."""
    return np.asarray([int(item[key]) for item in datalist], dtype=np.int64)


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> torch.Tensor:
    """Inverse-frequency class weights, normalised so that ``sum(w_c * n_c) == N``.

    Args:
        labels: integer labels.
        num_classes: number of classes (default: ``max(labels) + 1``); an absent class gets weight 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("class_weights needs at least one label")
    counts = np.bincount(labels, minlength=num_classes or int(labels.max()) + 1).astype(np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = labels.size / (present.sum() * counts[present])
    return torch.as_tensor(w, dtype=torch.float32)


def balanced_sampler(labels: Sequence[int] | np.ndarray, seed: int = 0, num_samples: int | None = None) -> WeightedRandomSampler:
    """Sampler drawing every class equally often (minority oversampled, with replacement).

    Args:
        labels: integer labels of the dataset, in dataset order.
        seed: generator seed, for reproducible epochs.
        num_samples: draws per epoch (default: the dataset length).
    """
    labels = np.asarray(labels, dtype=np.int64)
    per_item = class_weights(labels)[torch.as_tensor(labels)].double()
    gen = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(per_item, num_samples or len(labels), replacement=True, generator=gen)


class DistributedBalancedSampler(torch.utils.data.distributed.DistributedSampler):
    """Class-balanced sampling for multi-process training: every epoch one balanced epoch of ``num_samples``
    indices is drawn with replacement (weights ``1 / class count``, ``torch.Generator`` seeded with
    ``seed + epoch``, the same on every rank), and rank ``r`` of ``W`` takes the disjoint share ``[r::W]``.

    With ``num_replicas=1`` it is the single-process sampler drawing the same sequence, so a run on ``W``
    processes with per-process batch ``b`` sees, step by step, the same samples as one process with batch
    ``W * b``. A subclass of ``DistributedSampler``, so MONAI's workflows call :meth:`set_epoch` each epoch.

    Args:
        labels: class index of every dataset item.
        seed: base seed.
        num_samples: indices per epoch over all ranks (default ``len(labels)``, rounded up to a multiple of
            the number of replicas).
        num_replicas: number of processes (default: the process group's world size, 1 without one).
        rank: this process's rank (default: from the process group, 0 without one).
    """

    def __init__(self, labels, seed: int = 0, num_samples: int | None = None, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        import torch.distributed as dist

        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1D sequence of class indices")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.weights = torch.as_tensor(1.0 / np.bincount(labels)[labels], dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = int(num_replicas), int(rank), int(seed), 0
        total = int(num_samples or labels.size)
        self.total_size = -(-total // self.num_replicas) * self.num_replicas
        self.num_samples = self.total_size // self.num_replicas
        self.shuffle, self.drop_last = True, False

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return iter(indices[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
