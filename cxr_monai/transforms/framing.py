"""Re-framing a film as sites and users change it: central crops (collimation), a zoomed-out film with a border,
rotations, upside down. Used to train and check the lung-field view and the scope gate, and by the framing study
(:mod:`cxr_monai.studies.framing`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FRAMINGS", "reframe"]

FRAMINGS = ("whole", "crop:0.85", "crop:0.7", "crop:0.6", "crop:0.5", "pad:1.3", "rot:10", "rot:-10", "rot:90",
            "rot:180")
"""The framings of the study: ``crop:f`` keeps the central ``f`` of each side (collimation), ``pad:s`` zooms out
by ``s`` with a black border, ``rot:d`` rotates by ``d`` degrees (``rot:180``: upside down). Also (not in the
default study): ``frameblack:f`` / ``framewhite:f`` set the outer ``f`` of each side to black (an electronic
shutter) or white (an electronic shutter on a display-inverted film, or unexposed film under a collimator blade),
``frameshadow:f`` to a collimator blade's shadow (almost unexposed, so bright on a MONOCHROME2 display: 0.96 less
the anatomy at 12 % of its contrast, with noise of SD 0.01: not constant), the field of view unchanged."""


def reframe(image: np.ndarray, framing: str) -> np.ndarray:
    """``image`` ``(1, H, W)`` in [0, 1] under one framing of :data:`FRAMINGS` (or any ``crop:f``, ``pad:s``,
    ``rot:d``)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"image must be (1, H, W), got {x.shape}")
    if framing == "whole":
        return x
    kind, _, value = framing.partition(":")
    v = float(value)
    h, w = x.shape[-2:]
    if kind == "crop":
        if not 0 < v <= 1:
            raise ValueError(f"crop fraction must be in (0, 1], got {v}")
        ch, cw = max(2, round(h * v)), max(2, round(w * v))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return x[:, y0:y0 + ch, x0:x0 + cw].copy()
    if kind == "pad":
        if v < 1:
            raise ValueError(f"pad scale must be >= 1, got {v}")
        ph, pw = round(h * (v - 1) / 2), round(w * (v - 1) / 2)
        return np.pad(x, ((0, 0), (ph, ph), (pw, pw)), mode="constant")
    if kind == "rot":
        if abs(v) % 90 == 0:
            return np.rot90(x, k=int(round(v / 90)) % 4, axes=(1, 2)).copy()
        a = np.deg2rad(v)
        theta = torch.tensor([[np.cos(a), -np.sin(a) * h / w, 0.0], [np.sin(a) * w / h, np.cos(a), 0.0]],
                             dtype=torch.float32)[None]
        t = torch.as_tensor(x)[None]
        grid = F.affine_grid(theta, list(t.shape), align_corners=False)
        return F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
    if kind in ("frameblack", "framewhite", "frameshadow"):
        if not 0 <= v < 0.5:
            raise ValueError(f"frame fraction must be in [0, 0.5), got {v}")
        out, dy, dx = x.copy(), round(h * v), round(w * v)
        if kind == "frameshadow":  # the same noise for the same film size: reproducible
            noise = np.random.default_rng(h * 100_003 + w).normal(0.0, 0.01, x.shape).astype(np.float32)
            fill = np.clip(0.96 - 0.12 * (1.0 - x) + noise, 0.0, 1.0)
        else:
            fill = np.full_like(x, 0.0 if kind == "frameblack" else 1.0)
        frame = np.zeros(x.shape, bool)
        if dy:
            frame[:, :dy], frame[:, h - dy:] = True, True
        if dx:
            frame[:, :, :dx], frame[:, :, w - dx:] = True, True
        out[frame] = fill[frame]
        return out
    raise ValueError(f"unknown framing {framing!r}")
