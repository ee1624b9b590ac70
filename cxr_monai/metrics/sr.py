"""Super-resolution metrics and the hallucination guard.

Convention (the README's SR results): images in [0, 1] (data range 1); PSNR and SSIM (MONAI ``PSNRMetric`` /
``SSIMMetric``: 11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03) on the HR grid after excluding a border of
``scale`` pixels. The degradation used for the consistency check is the project's: Gaussian blur (sigma in HR
pixels, reflect padding) then bicubic downsampling with antialiasing (``align_corners=False``).

Hallucination guard: :func:`consistency_psnr` degrades the SR output and compares it with the LR input it came
from (high = consistent; a GAN that invents structure the LR does not support scores lower);
:func:`back_projection` optionally enforces consistency by iterative back-projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxr_monai.transforms.backprojection import back_project
from cxr_monai.transforms.degradation import bicubic_upsample, simulate_low_resolution

__all__ = [
    "degrade",
    "bicubic_up",
    "crop_border",
    "psnr",
    "ssim",
    "ms_ssim",
    "consistency_psnr",
    "back_projection",
    "sr_image_metrics",
]


def _as4d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim != 4:
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}.")
    return x, False


def degrade(hr: torch.Tensor, sigma: float = 1.0, scale: int = 4) -> torch.Tensor:
    """The project's degradation (``cxr_monai.transforms.simulate_low_resolution``): mod crop, reflect-padded
    Gaussian blur (``sigma`` in HR px), antialiased bicubic downsampling, clamp to [0, 1].

    Args:
        hr: (C, H, W) or (N, C, H, W) float tensor in [0, 1].
        sigma: blur sigma in HR pixels (0 disables the blur).
        scale: integer downsampling factor.
    """
    return simulate_low_resolution(torch.as_tensor(hr).float(), sigma, scale)


def bicubic_up(lr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """The bicubic baseline (``cxr_monai.transforms.bicubic_upsample``), clamped to [0, 1]."""
    return bicubic_upsample(torch.as_tensor(lr).float(), scale)


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on each side of the last two dims."""
    if border <= 0:
        return x
    return x[..., border:-border, border:-border]


def psnr(pred: torch.Tensor, target: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Per-image PSNR (dB, data range 1) after excluding ``border`` pixels; shape (N,)."""
    from monai.metrics import PSNRMetric

    p, _ = _as4d(pred.float())
    t, _ = _as4d(target.float())
    return PSNRMetric(max_val=1.0, reduction="none")(crop_border(p, border), crop_border(t, border)).view(-1)


def ssim(pred: torch.Tensor, target: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Per-image SSIM (data range 1, 11x11 Gaussian window sigma 1.5) after excluding ``border`` px; (N,)."""
    from monai.metrics import SSIMMetric

    p, _ = _as4d(pred.float())
    t, _ = _as4d(target.float())
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=11, kernel_sigma=1.5, k1=0.01, k2=0.03,
                        reduction="none")
    return metric(crop_border(p, border), crop_border(t, border)).view(-1)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Per-image multi-scale SSIM (MONAI, 5 scales, data range 1); images need >= 161 px a side; (N,).

    Returns NaN for images too small for five scales.
    """
    from monai.metrics import MultiScaleSSIMMetric

    p, _ = _as4d(pred.float())
    t, _ = _as4d(target.float())
    p, t = crop_border(p, border), crop_border(t, border)
    if min(p.shape[-2:]) < 161:
        return torch.full((p.shape[0],), float("nan"))
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=11, kernel_sigma=1.5, reduction="none")
    return metric(p, t).view(-1)


def consistency_psnr(
    sr: torch.Tensor, lr: torch.Tensor, sigma: float = 1.0, scale: int = 4, border: int = 1
) -> torch.Tensor:
    """Degradation-consistency of an SR output: PSNR of ``degrade(sr)`` against the LR input; (N,).

    Args:
        sr: super-resolved image(s), (C, sH, sW) or (N, C, sH, sW).
        lr: the LR input(s) the SR came from.
        sigma: blur sigma of the degradation model (HR px).
        scale: SR factor.
        border: LR pixels excluded on each side.
    """
    return psnr(degrade(sr, sigma, scale), lr, border=border)


def back_projection(
    sr: torch.Tensor, lr: torch.Tensor, sigma: float = 1.0, scale: int = 4, iterations: int = 10, step: float = 1.0
) -> torch.Tensor:
    """Iterative back-projection: ``sr += step * bicubic_up(lr - degrade(sr))``, clamped to [0, 1]
    (:func:`cxr_monai.transforms.back_project`, the one implementation; kept here for the metrics API).

    Pulls the SR output towards consistency with its LR input (removes unsupported low-frequency drift; leaves
    high frequencies above the degradation's cut-off untouched).
    """
    return back_project(sr, lr, sigma, scale, iterations, step)


def sr_image_metrics(
    sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, sigma: float = 1.0, scale: int = 4,
    with_ms_ssim: bool = True,
) -> dict[str, float]:
    """All per-image numbers for one (1, H, W) triple: SR and bicubic PSNR/SSIM vs HR, MS-SSIM, consistency.

    Args:
        sr: SR output (1, H, W).
        hr: ground truth (1, H, W).
        lr: LR input (1, H/scale, W/scale).
        sigma: blur sigma of the degradation.
        scale: SR factor (also the excluded border in HR px).
        with_ms_ssim: compute MS-SSIM (slower).
    """
    bic = bicubic_up(lr, scale)
    out = {
        "psnr_sr": float(psnr(sr, hr, scale)[0]),
        "psnr_bicubic": float(psnr(bic, hr, scale)[0]),
        "ssim_sr": float(ssim(sr, hr, scale)[0]),
        "ssim_bicubic": float(ssim(bic, hr, scale)[0]),
        "consistency_psnr_sr": float(consistency_psnr(sr, lr, sigma, scale)[0]),
        "consistency_psnr_bicubic": float(consistency_psnr(bic, lr, sigma, scale)[0]),
    }
    if with_ms_ssim:
        out["ms_ssim_sr"] = float(ms_ssim(sr, hr, scale)[0])
        out["ms_ssim_bicubic"] = float(ms_ssim(bic, hr, scale)[0])
    return out
