"""The lung-field network: a small MONAI U-Net that finds the lungs on a whole chest radiograph.

It reads the whole film resized to a fixed square (:data:`LUNG_INPUT_SIZE`), intensity-normalised as the
classifier's input is, and returns one logit per pixel (> 0: lung). The classifier, its scope gate and Grad-CAM
read the view that this mask defines (:mod:`cxr_monai.transforms.lung_field`), so that collimation, zoom and
patient size change what they see as little as possible.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

__all__ = ["LUNG_INPUT_SIZE", "LungFieldNet", "lung_field_net"]

LUNG_INPUT_SIZE = 128
"""Side of the square whole-film input the lung-field network reads."""


class LungFieldNet(nn.Module):
    """A 2-D U-Net (MONAI ``UNet``, residual units, instance norm) with one output channel of lung logits.

    Args:
        channels: feature channels per level (each level halves the side).
        num_res_units: residual units per level.
        dropout: dropout probability inside the U-Net.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128, 192), num_res_units: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"need at least two levels, got channels={channels!r}")
        self.unet = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(int(c) for c in channels),
                         strides=tuple([2] * (len(channels) - 1)), num_res_units=int(num_res_units),
                         norm="instance", dropout=float(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` normalised whole films -> ``(N, 1, S, S)`` lung logits."""
        return self.unet(x)


def lung_field_net(preset: str = "small", **kwargs) -> LungFieldNet:
    """Presets: ``small`` (16-192 channels, ~1.0 M parameters, the shipped one) and ``tiny`` (8-64, for tests)."""
    presets = {"small": {"channels": (16, 32, 64, 128, 192)}, "tiny": {"channels": (8, 16, 32, 64)}}
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    return LungFieldNet(**{**presets[preset], **kwargs})
