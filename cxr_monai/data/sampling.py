"""Class weights and a class-balanced (oversampling) sampler."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["class_weights", "balanced_sampler", "labels_of"]


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
