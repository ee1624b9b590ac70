"""Small building blocks shared by the project's networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatialAttention"]


class SpatialAttention(nn.Module):
    """CBAM-style spatial attention gate.

    The channel-wise mean and max maps are stacked, convolved with a ``kernel_size`` x ``kernel_size``
    kernel and squashed by a sigmoid into a per-pixel gate that multiplies the input.

    Args:
        kernel_size: odd size of the convolution over the (mean, max) maps; 7 as in CBAM.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, H, W) attention map in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
