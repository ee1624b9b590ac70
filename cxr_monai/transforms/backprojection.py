"""Iterative back-projection of a super-resolved image onto its low-resolution input (hallucination guard).

``sr <- clamp(sr + step * bicubic_up(lr - degrade(sr)), 0, 1)``, repeated ``iterations`` times, with the
project's degradation model (:func:`~cxr_monai.transforms.degradation.simulate_low_resolution`). It pulls the SR
output towards consistency with its LR input: low-frequency drift the LR does not support is removed, details
above the degradation's cut-off are left alone.

Post-processing for the SR bundle's ``evaluate.json`` / ``inference.json``: :class:`BackProjection` (array) and
:class:`BackProjectiond` (dictionary, the SR output under one key and its LR input under another).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from cxr_monai.transforms.degradation import simulate_low_resolution

__all__ = ["back_project", "BackProjection", "BackProjectiond", "BackProjectionD", "BackProjectionDict"]


def back_project(
    sr: torch.Tensor, lr: torch.Tensor, sigma: float = 1.0, scale: int = 4, iterations: int = 10, step: float = 1.0
) -> torch.Tensor:
    """Iterative back-projection of ``sr`` onto ``lr``; returns a new float tensor in [0, 1].

    Args:
        sr: SR image(s) ``(..., H, W)`` in [0, 1] (e.g. ``(C, H, W)`` or ``(N, C, H, W)``).
        lr: the LR input(s) ``(..., H // scale, W // scale)``.
        sigma: blur sigma of the degradation model (HR px).
        scale: SR factor.
        iterations: number of steps (0 returns ``sr`` as float).
        step: step size.
    """
    if iterations < 0 or step <= 0:
        raise ValueError(f"need iterations >= 0 and step > 0, got {iterations} and {step}.")
    out = sr.float()
    lr = lr.float()
    for _ in range(iterations):
        residual = lr - simulate_low_resolution(out, sigma, scale)
        h, w = residual.shape[-2:]
        up = F.interpolate(residual.reshape(-1, 1, h, w), size=(h * scale, w * scale), mode="bicubic",
                           align_corners=False)
        out = (out + step * up.view_as(out)).clamp(0.0, 1.0)
    return out


class BackProjection(Transform):
    """Back-project an SR image onto its LR input (see :func:`back_project`).

    Args:
        sigma: blur sigma of the degradation model (HR px).
        scale: SR factor.
        iterations: back-projection steps (0 disables it: the input is returned unchanged).
        step: step size.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, sigma: float = 1.0, scale: int = 4, iterations: int = 10, step: float = 1.0) -> None:
        if iterations < 0 or step <= 0 or scale < 1 or sigma < 0:
            raise ValueError("need iterations >= 0, step > 0, scale >= 1 and sigma >= 0.")
        self.sigma, self.scale, self.iterations, self.step = sigma, scale, iterations, step

    def __call__(self, sr: NdarrayOrTensor, lr: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the back-projected ``sr`` (same type; a MetaTensor keeps its meta data)."""
        if self.iterations == 0:
            return sr
        fixed = back_project(torch.as_tensor(sr), torch.as_tensor(lr), self.sigma, self.scale, self.iterations,
                             self.step)
        if hasattr(sr, "copy_meta_from"):  # keep MetaTensor meta
            out = sr.clone()
            out.data = fixed.to(out.dtype)
            return out
        return fixed


class BackProjectiond(MapTransform):
    """Dictionary version of :class:`BackProjection`: the optional hallucination guard of the SR bundle.

    Args:
        keys: keys of the SR outputs (e.g. ``"pred"``).
        lr_key: key of the LR input each output came from.
        sigma: blur sigma of the degradation model (HR px).
        scale: SR factor.
        iterations: back-projection steps (0 disables it).
        step: step size.
        allow_missing_keys: don't raise when a key is absent.
    """

    backend = BackProjection.backend

    def __init__(
        self,
        keys: KeysCollection,
        lr_key: str = "image",
        sigma: float = 1.0,
        scale: int = 4,
        iterations: int = 10,
        step: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.projector = BackProjection(sigma, scale, iterations, step)
        self.lr_key = lr_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.projector.iterations == 0:
            return d
        for key in self.key_iterator(d):
            d[key] = self.projector(d[key], d[self.lr_key])
        return d


BackProjectionD = BackProjectionDict = BackProjectiond
