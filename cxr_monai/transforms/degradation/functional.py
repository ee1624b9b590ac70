"""The degradation convention's functional core (torch, any leading shape ``(..., H, W)``, any device), the
argument checks the degradation transforms share and their type handling (numpy / Tensor / MetaTensor).
The convention itself is stated in :mod:`cxr_monai.transforms.degradation`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple

__all__ = [
    "VALID_SCALES",
    "gaussian_kernel1d",
    "gaussian_blur",
    "mod_crop",
    "simulate_low_resolution",
    "low_dose_noise",
    "bicubic_upsample",
]

VALID_SCALES: tuple[int, ...] = (2, 3, 4)
"""Downsampling factors the degradation transforms accept."""


# --------------------------------------------------------------------------------------------------------------
# argument checks (shared by the constructors)
# --------------------------------------------------------------------------------------------------------------


def _check_sigma(sigma: float, name: str = "sigma") -> float:
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = no blur), got {sigma}.")
    return sigma


def _check_scale(scale: int, valid: Sequence[int] = VALID_SCALES) -> int:
    if isinstance(scale, bool) or int(scale) != scale or int(scale) not in valid:
        raise ValueError(f"scale must be one of {tuple(valid)}, got {scale!r}.")
    return int(scale)


def _check_truncate(truncate: float) -> float:
    truncate = float(truncate)
    if not math.isfinite(truncate) or truncate <= 0:
        raise ValueError(f"truncate must be a finite number > 0 (kernel radius ceil(truncate*sigma)), got {truncate}.")
    return truncate


def _check_dose(dose: float | None, name: str = "dose") -> float | None:
    if dose is None:
        return None
    dose = float(dose)
    if not (dose > 0) or math.isnan(dose):
        raise ValueError(f"{name} must be > 0 (expected photon count at intensity 1) or None, got {dose}.")
    return None if math.isinf(dose) else dose


def _check_sigma_e(sigma_e: float, name: str = "sigma_e") -> float:
    sigma_e = float(sigma_e)
    if not math.isfinite(sigma_e) or sigma_e < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {sigma_e}.")
    return sigma_e


def _check_range(
    value: float | Sequence[float], name: str, low: float = 0.0, strict: bool = False
) -> tuple[float, float]:
    """A ``(lo, hi)`` range from a number (fixed value) or a pair, with ``low <= lo <= hi`` (``low < lo`` if strict)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        pair = tuple(float(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
        lo, hi = pair
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or lo < low or (strict and lo <= low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must satisfy {bound} and low <= high, got {value!r}.")
    return lo, hi


def _check_scales(scales: int | Sequence[int]) -> tuple[int, ...]:
    values = ensure_tuple(scales)
    if not values:
        raise ValueError("scales must not be empty.")
    return tuple(_check_scale(s) for s in values)


def _log_uniform(rng: np.random.RandomState, low: float, high: float) -> float:
    """A log-uniform draw in ``[low, high]`` (both > 0); exactly ``low`` when ``low == high`` (one draw either way)."""
    value = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return low if low == high else min(max(value, low), high)


def _check_prob(prob: float) -> float:
    prob = float(prob)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    return prob


# --------------------------------------------------------------------------------------------------------------
# functional core (torch, any leading shape, any device)
# --------------------------------------------------------------------------------------------------------------


def gaussian_kernel1d(
    sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel sampled at integer offsets ``-r..r`` with ``r = max(1, ceil(truncate*sigma))``.

    Args:
        sigma: standard deviation in pixels, > 0.
        truncate: kernel half-width in units of sigma.
        dtype: dtype of the returned kernel.
        device: device of the returned kernel.

    Returns:
        A tensor of length ``2 * r + 1`` summing to 1.
    """
    sigma = _check_sigma(sigma)
    if sigma == 0:
        raise ValueError("gaussian_kernel1d needs sigma > 0.")
    radius = max(1, math.ceil(_check_truncate(truncate) * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _reflect_indices(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a whole-sample symmetric extension (``d c b | a b c d | c b a``) of a length-``n`` axis.

    Unlike ``F.pad(mode="reflect")`` this works for any ``pad``, also ``pad >= n`` (repeated mirroring).
    """
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def gaussian_blur(img: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of the last two axes with reflect (whole-sample symmetric) border handling.

    Equivalent to ``scipy.ndimage.gaussian_filter(img, sigma, mode="mirror", truncate=r / sigma)`` applied to
    each 2-D slice, with ``r = max(1, ceil(truncate * sigma))``.

    Args:
        img: float tensor ``(..., H, W)``.
        sigma: standard deviation in pixels; 0 returns ``img`` unchanged.
        truncate: kernel half-width in units of sigma.

    Returns:
        The blurred tensor, same shape, dtype and device.
    """
    sigma = _check_sigma(sigma)
    if sigma == 0:
        return img
    if img.ndim < 2:
        raise ValueError(f"gaussian_blur needs a tensor (..., H, W), got shape {tuple(img.shape)}.")
    kernel = gaussian_kernel1d(sigma, truncate, dtype=img.dtype, device=img.device)
    radius = (kernel.numel() - 1) // 2
    height, width = img.shape[-2:]
    x = img.reshape(-1, 1, height, width)
    x = x.index_select(2, _reflect_indices(height, radius, img.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, _reflect_indices(width, radius, img.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x.reshape(img.shape)


def mod_crop(img: NdarrayOrTensor, scale: int) -> NdarrayOrTensor:
    """Crop the last two axes to a multiple of ``scale``, keeping the top-left corner.

    Args:
        img: array or tensor ``(..., H, W)``.
        scale: the factor both sizes must become a multiple of.

    Returns:
        A view ``img[..., : H - H % scale, : W - W % scale]`` (the input itself when nothing is cropped).
    """
    height, width = img.shape[-2:]
    hc, wc = height - height % scale, width - width % scale
    if hc == 0 or wc == 0:
        raise ValueError(f"image of size {height}x{width} is smaller than the scale factor {scale}.")
    if (hc, wc) == (height, width):
        return img
    return img[..., :hc, :wc]


def simulate_low_resolution(
    img: torch.Tensor, sigma: float = 1.0, scale: int = 4, truncate: float = 4.0
) -> torch.Tensor:
    """Degrade an HR image to LR: mod crop, reflect-padded Gaussian blur, antialiased bicubic downsampling, clamp.

    Args:
        img: float tensor ``(..., H, W)`` in [0, 1] (e.g. ``(C, H, W)`` or a batch ``(N, C, H, W)``).
        sigma: blur standard deviation in HR pixels; 0 means no blur.
        scale: integer downsampling factor (any ``>= 1`` here; the transforms accept 2, 3 or 4).
        truncate: blur kernel half-width in units of sigma.

    Returns:
        The LR tensor ``(..., H // scale, W // scale)`` clamped to [0, 1].
    """
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    scale = int(scale)
    if not img.is_floating_point():
        img = img.float()
    x = gaussian_blur(mod_crop(img, scale), sigma, truncate)
    if scale > 1:
        height, width = x.shape[-2:]
        x4 = x.reshape(-1, 1, height, width)
        size = (height // scale, width // scale)
        x4 = F.interpolate(x4, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x4.reshape(*img.shape[:-2], height // scale, width // scale)
    return x.clamp(0.0, 1.0)


def low_dose_noise(
    img: torch.Tensor, dose: float | None, sigma_e: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add low-dose noise to a tensor: ``clamp(Poisson(x * dose) / dose + N(0, sigma_e^2), 0, 1)``.

    Torch counterpart of :class:`LowDoseNoise` for batches on any device (e.g. inside a training step).

    Args:
        img: float tensor in [0, 1], any shape.
        dose: expected photon count at intensity 1 (lower = noisier); None means no quantum noise.
        sigma_e: standard deviation of the additive electronic noise, in intensity units.
        generator: optional torch generator for reproducibility.

    Returns:
        The noisy tensor, same shape and dtype, clamped to [0, 1].
    """
    dose = _check_dose(dose)
    sigma_e = _check_sigma_e(sigma_e)
    x = img.clamp(0.0, 1.0)
    if dose is not None:
        x = torch.poisson(x * dose, generator=generator) / dose
    if sigma_e > 0:
        x = x + sigma_e * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x.clamp(0.0, 1.0)


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: ``F.interpolate(mode="bicubic", align_corners=False)`` by ``scale``, clamped to [0, 1].

    Args:
        lr: float tensor ``(..., h, w)`` (e.g. ``(C, h, w)`` or ``(N, C, h, w)``).
        scale: positive integer upsampling factor.

    Returns:
        A tensor ``(..., h * scale, w * scale)`` in [0, 1].
    """
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    scale = int(scale)
    if not lr.is_floating_point():
        lr = lr.float()
    height, width = lr.shape[-2:]
    x4 = lr.reshape(-1, 1, height, width)
    x4 = F.interpolate(x4, size=(height * scale, width * scale), mode="bicubic", align_corners=False)
    return x4.reshape(*lr.shape[:-2], height * scale, width * scale).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# type handling shared by the transforms
# --------------------------------------------------------------------------------------------------------------


def _as_float_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """Plain (meta-free) floating-point torch view of ``img``."""
    t = convert_to_tensor(img, track_meta=False)
    return t if t.is_floating_point() else t.float()


def _spatial_affine_update(out: NdarrayOrTensor, offset: Sequence[float], zoom: float) -> None:
    """Compose a MetaTensor's affine with a crop by ``offset`` (index units) and a pixel-size change of ``zoom``.

    New pixel ``j`` (along a spatial axis) sits at old index ``offset + zoom * j + (zoom - 1) / 2`` (pixel centres
    with ``align_corners=False``).
    """
    if not isinstance(out, MetaTensor):
        return
    affine = out.affine
    rank = affine.shape[-1] - 1
    mat = torch.eye(rank + 1, dtype=torch.float64)
    for axis in range(min(rank, 2)):
        mat[axis, axis] = zoom
        mat[axis, rank] = float(offset[axis]) + (zoom - 1.0) / 2.0
    out.affine = affine.to(torch.float64) @ mat.to(affine.device)


def _to_input_type(out: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """Convert a computed tensor back to the type family (numpy / Tensor / MetaTensor) and device of ``img``."""
    converted, *_ = convert_to_dst_type(out, dst=img, dtype=out.dtype)
    return converted


def _copy(img: NdarrayOrTensor) -> NdarrayOrTensor:
    return img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)
