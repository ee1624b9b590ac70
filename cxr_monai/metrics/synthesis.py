"""Evaluation of a class-conditional generator (the synthesis bundle's ``evaluate.json``): generate every class
from fixed seeds, compare with the real images of that class and pooled (:mod:`cxr_monai.metrics.generative`),
write ``metrics.json`` and a sample grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_monai.io import save_png
from cxr_monai.metrics.generative import (ClassifierFeatures, class_fidelity, class_matched_indices,
                                          discriminator_report, extract_features, fid, generative_report, kid,
                                          knn_precision_recall, mmd)
from cxr_monai.networks.gans import generate

__all__ = ["sample_grid", "evaluate_generator"]


def sample_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile (N, 1, H, W) images into one (1, rows*(H+p)+p, nrow*(W+p)+p) grid (white separators)."""
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def evaluate_generator(
    generator: nn.Module,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    output_dir: str | Path,
    extractor: nn.Module | Callable | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    num_per_class: int = 256,
    seed: int = 0,
    discriminator: nn.Module | None = None,
    memorisation_threshold: float = 0.95,
    kid_subset_size: int = 1000,
    nearest_candidates: int = 32,
    device: str | torch.device = "cpu",
    extra: dict | None = None,
) -> dict:
    """Generate ``num_per_class`` images of every class and compare them with the real images of that class
    (and pooled over classes). Writes ``metrics.json`` and ``samples_grid.png`` into ``output_dir``.

    Args:
        generator: class-conditional generator ``G(z, y)`` with ``latent_dim``.
        real_images: (M, 1, H, W) real images in [0, 1] (the generator's training images for the
            memorisation check); resized to the generated size when they differ.
        real_labels: (M,) class indices.
        output_dir: where to write.
        extractor: feature extractor (``None``: pixel metrics only).
        class_names: class names in label order.
        num_per_class: generated images per class (256 for the memorisation criterion).
        seed: noise seed (class ``c`` uses ``seed + c``).
        discriminator: optional ``D(x, y)``; adds its real/fake accuracy, precision and recall (seed figures).
        memorisation_threshold: SSIM above which a sample counts as memorised.
        kid_subset_size: KID subset size.
        nearest_candidates: pre-selected reals per fake for the nearest-real SSIM.
        device: device for generation.
        extra: additional entries copied into ``metrics.json`` (e.g. training budget).
    """
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fakes, fake_labels = [], []
    for c in range(len(class_names)):
        imgs, ys = generate(generator, num_per_class, c, seed=seed + c, device=device)
        fakes.append(imgs)
        fake_labels.append(ys)
    fake, fake_y = torch.cat(fakes), torch.cat(fake_labels)
    real = real_images.float()
    if real.shape[-2:] != fake.shape[-2:]:
        real = F.interpolate(real, size=fake.shape[-2:], mode="bilinear", align_corners=False,
                             antialias=real.shape[-1] > fake.shape[-1])
    report: dict[str, Any] = {"per_class": {}, "settings": {
        "num_per_class": num_per_class, "seed": seed, "image_size": list(fake.shape[-2:]),
        "memorisation_threshold": memorisation_threshold, "nearest_candidates": nearest_candidates,
        "ssim": "11x11 Gaussian sigma 1.5, k1 0.01, k2 0.03, data range 1, valid filtering",
        "feature_extractor": None if extractor is None else type(getattr(extractor, "network", extractor)).__name__}}
    fr = ff = None
    if extractor is not None:  # once for all images; the per-class metrics use slices
        fr, ff = extract_features(real, extractor), extract_features(fake, extractor)
    for c, name in enumerate(class_names):
        mask = real_labels == c
        if mask.sum() < 2:
            continue
        report["per_class"][name] = generative_report(
            fake[fake_y == c], real[mask], extractor, memorisation_threshold, kid_subset_size=kid_subset_size,
            nearest_candidates=nearest_candidates, seed=seed,
            real_features=None if fr is None else fr[mask], fake_features=None if ff is None else ff[fake_y == c])
    if extractor is not None:  # pooled over classes, with the real images subsampled to the generated class mix
        keep = class_matched_indices(real_labels, fake_y, seed)
        fr_all = fr[keep]
        report["all"] = {"fid": fid(fr_all, ff), "kid_mean": kid(fr_all, ff, 100, kid_subset_size, seed)[0],
                         "mmd": mmd(fr_all, ff, seed), "num_real": int(keep.numel()),
                         "class_mix": "real images subsampled to the generated images' class proportions"}
        p, r = knn_precision_recall(fr_all, ff)
        report["all"].update({"knn_precision": p, "knn_recall": r})
    if isinstance(extractor, ClassifierFeatures) and extractor.method is not None:
        report["class_fidelity"] = {"generated": class_fidelity(fake, fake_y, extractor, class_names),
                                    "real": class_fidelity(real, real_labels, extractor, class_names)}
    report["memorised_share"] = float(np.mean([v["memorised_share"] for v in report["per_class"].values()]))
    report["nearest_real_ssim_max"] = float(max(v["nearest_real_ssim_max"] for v in report["per_class"].values()))
    if discriminator is not None:
        discriminator = discriminator.eval().to(device)
        with torch.no_grad():
            n = min(real.shape[0], fake.shape[0])
            gen = torch.Generator().manual_seed(seed)
            ri = torch.randperm(real.shape[0], generator=gen)[:n]
            dr = torch.cat([discriminator(real[ri][i : i + 64].to(device), real_labels[ri][i : i + 64].to(device)).cpu()
                            for i in range(0, n, 64)])
            df = torch.cat([discriminator(fake[i : i + 64].to(device), fake_y[i : i + 64].to(device)).cpu()
                            for i in range(0, fake.shape[0], 64)])
        report["discriminator"] = discriminator_report(dr, df)
    if extra:
        report["extra"] = extra
    rows = [fake[fake_y == c][:8] for c in range(len(class_names))]
    save_png(out_dir / "samples_grid.png", sample_grid(torch.cat(rows), nrow=8), bits=8)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    return report
