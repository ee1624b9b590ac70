"""Downstream diagnostic study of the SR model: does super-resolution recover the classifier's accuracy lost to
low resolution?

A study, not a workflow: it composes the SR generator, the classifier's own preprocessing
(:func:`cxr_monai.transforms.classifier_preprocessing`), the SR metrics and Grad-CAM, and writes its report.
The SR bundle's ``evaluate_downstream.json`` calls :func:`run_downstream_study`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_monai.metrics.sr import bicubic_up
from monai.transforms import Compose
from cxr_monai.transforms import classifier_preprocessing
from cxr_monai.transforms.presets import PercentileNormalized
from monai.metrics import compute_roc_auc
from cxr_monai.metrics.sr import degrade, psnr
from cxr_monai.explain import gradcam

__all__ = ["run_downstream_study"]


def _split_classifier_preprocessing(spatial_size: int, key: str) -> tuple[Callable, Callable]:
    """The classifier's own preprocessing split at its intensity normalisation: (load + resize, normalise)."""


    xs = list(classifier_preprocessing([key], spatial_size))
    cut = next((i for i, t in enumerate(xs) if isinstance(t, PercentileNormalized)), len(xs))
    return Compose(xs[:cut]), Compose(xs[cut:])


def run_downstream_study(
    sr_network: nn.Module,
    classifier: nn.Module,
    datalist: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    spatial_size: int = 224,
    sigma: float = 1.0,
    scale: int = 4,
    temperature: float = 1.0,
    positive_class: int = 1,
    gradcam_cases: int = 4,
    gradcam_layer: str = "layer4",
    max_items: int | None = None,
    device: str | torch.device = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Downstream diagnostic study: does SR recover the classifier's accuracy lost to low resolution?

    For each labelled image: HR = the classifier's own loading + resizing to ``spatial_size`` (before its
    intensity normalisation); LR = ``degrade(HR, sigma, scale)``; the three inputs bicubic(LR), SR(LR) and HR go
    through the rest of the classifier preprocessing and the classifier. Reports ROC AUC for each, the share of
    the LR->HR AUC gap that SR recovers ``(AUC_SR - AUC_LR) / (AUC_HR - AUC_LR)``, SR-vs-HR PSNR, and Grad-CAM
    triptychs (LR / SR / HR) for the first ``gradcam_cases`` positive images. Writes ``downstream.json``,
    ``downstream_per_image.csv`` and ``gradcam_*.png`` to ``output_dir``.

    Args:
        sr_network: the SR generator (eval mode is set here).
        classifier: the trained classifier (logits).
        datalist: items with ``image`` (path) and ``label`` (int).
        output_dir: where to write.
        spatial_size: classifier input size (HR size).
        sigma: blur sigma of the degradation (HR px).
        scale: SR factor.
        temperature: classifier logit temperature (its calibration).
        positive_class: index of the positive class for the AUC.
        gradcam_cases: number of Grad-CAM triptychs.
        gradcam_layer: classifier layer for Grad-CAM.
        max_items: evaluate only the first N items.
        device: device.
        extra: constant entries added to ``downstream.json``.
    """


    if spatial_size % scale:
        raise ValueError(f"spatial_size {spatial_size} must be a multiple of scale {scale}.")
    if not datalist:
        raise ValueError("empty datalist")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load, normalise = _split_classifier_preprocessing(spatial_size, "image")
    sr_network = sr_network.to(device).eval()
    classifier = classifier.to(device).eval()
    items = list(datalist)[: max_items or None]
    probs: dict[str, list[float]] = {"lr_bicubic": [], "sr": [], "hr": []}
    rows, labels, cams = [], [], 0
    for item in items:
        hr = torch.as_tensor(load({"image": item["image"]})["image"]).float().clamp(0, 1).to(device)
        with torch.no_grad():
            lr = degrade(hr, sigma, scale)
            variants = {"lr_bicubic": bicubic_up(lr, scale), "sr": sr_network(lr[None])[0].clamp(0, 1), "hr": hr}
            inputs = {k: torch.as_tensor(normalise({"image": v.cpu()})["image"]).float()[None].to(device)
                      for k, v in variants.items()}
            row: dict[str, Any] = {"image": str(item["image"]), "label": int(item["label"])}
            for k, x in inputs.items():
                p = torch.softmax(classifier(x) / temperature, dim=1)[0, positive_class]
                probs[k].append(float(p))
                row[f"p_{k}"] = float(p)
            row["psnr_sr"] = float(psnr(variants["sr"], hr, scale)[0])
            row["psnr_bicubic"] = float(psnr(variants["lr_bicubic"], hr, scale)[0])
        rows.append(row)
        labels.append(int(item["label"]) == positive_class)
        if cams < gradcam_cases and labels[-1]:
            _gradcam_triptych(classifier, inputs, gradcam_layer, positive_class, out_dir / f"gradcam_{cams}.png",
                              Path(str(item["image"])).name, row)
            cams += 1
    y = torch.tensor(labels, dtype=torch.float32)
    auc = {}
    for k, ps in probs.items():
        auc[k] = float(compute_roc_auc(torch.tensor(ps), y)) if 0 < y.sum() < len(y) else float("nan")
    gap = auc["hr"] - auc["lr_bicubic"]
    summary: dict[str, Any] = {
        "auc_lr_bicubic": auc["lr_bicubic"],
        "auc_sr": auc["sr"],
        "auc_hr": auc["hr"],
        "gap_recovered": (auc["sr"] - auc["lr_bicubic"]) / gap if abs(gap) > 1e-6 else None,
        "psnr_sr": float(np.mean([r["psnr_sr"] for r in rows])),
        "psnr_bicubic": float(np.mean([r["psnr_bicubic"] for r in rows])),
        "n": len(rows),
        "n_positive": int(y.sum()),
        "convention": (
            f"HR = classifier loading + resize to {spatial_size}; LR = blur sigma {sigma} HR px (reflect) + antialiased "
            f"bicubic x{scale}; each input then normalised by the classifier's own preprocessing; "
            f"AUC of p(class {positive_class}) with temperature {temperature}."
        ),
    }
    summary.update(dict(extra or {}))
    (out_dir / "downstream.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "downstream_per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return summary


def _gradcam_triptych(classifier: nn.Module, inputs: Mapping[str, torch.Tensor], layer: str, class_idx: int,
                      path: Path, name: str, row: Mapping[str, Any]) -> None:
    """One figure: Grad-CAM overlays of the bicubic-LR, SR and HR inputs of one case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, (key, title) in zip(axes, (("lr_bicubic", "LR (bicubic)"), ("sr", "SR"), ("hr", "HR"))):
        x = inputs[key]
        cam = gradcam(classifier, x, layer, class_idx)[0]
        ax.imshow(x[0, 0].detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.imshow(cam, cmap="jet", alpha=0.35, vmin=0, vmax=1)
        ax.set_title(f"{title}  p={row[f'p_{key}']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{name} (label {row['label']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
