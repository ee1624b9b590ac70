"""Pixel losses for super-resolution: L1 / L2 / Charbonnier and the degradation-consistency loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelLoss", "CharbonnierLoss", "DegradationConsistencyLoss"]

_MODES = ("l1", "l2", "charbonnier")
_REDUCTIONS = ("mean", "sum", "none")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


class PixelLoss(nn.Module):
    """Weighted pixel loss between a prediction and its target, optionally ignoring a border.

    Args:
        mode: ``"l1"`` (ESRGAN/Real-ESRGAN), ``"l2"`` or ``"charbonnier"``.
        weight: multiplier of the loss.
        border: pixels ignored on each side (0 keeps the whole image).
        eps: Charbonnier epsilon.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self, mode: str = "l1", weight: float = 1.0, border: int = 0, eps: float = 1e-3, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        if border < 0 or eps <= 0:
            raise ValueError("border must be >= 0 and eps > 0.")
        self.mode, self.weight, self.border, self.eps, self.reduction = mode, float(weight), border, eps, reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
        if self.border:
            b = self.border
            pred, target = pred[..., b:-b, b:-b], target[..., b:-b, b:-b]
        diff = pred - target
        if self.mode == "l1":
            loss = diff.abs()
        elif self.mode == "l2":
            loss = diff.square()
        else:
            loss = torch.sqrt(diff.square() + self.eps**2)
        return self.weight * _reduce(loss, self.reduction)


class CharbonnierLoss(PixelLoss):
    """Charbonnier loss ``sqrt((x - y)^2 + eps^2)``, a smooth L1.

    Args:
        weight: multiplier of the loss.
        eps: smoothing constant.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, weight: float = 1.0, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__("charbonnier", weight=weight, eps=eps, reduction=reduction)


class DegradationConsistencyLoss(nn.Module):
    """L1 between the degraded SR output and the LR input (the hallucination guard as a training loss).

    Args:
        sigma: blur sigma of the degradation (HR px).
        scale: SR factor.
        weight: multiplier of the loss.
    """

    def __init__(self, sigma: float = 1.0, scale: int = 4, weight: float = 1.0) -> None:
        super().__init__()
        if sigma < 0 or scale < 1:
            raise ValueError(f"need sigma >= 0 and scale >= 1, got {sigma}, {scale}.")
        self.sigma, self.scale, self.weight = sigma, scale, float(weight)

    def forward(self, sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        from cxr_monai.transforms.degradation import simulate_low_resolution

        return self.weight * F.l1_loss(simulate_low_resolution(sr, self.sigma, self.scale), lr)
