"""Ignite handlers and steps of the classifier bundle: prediction/metrics writer with Grad-CAM,
and post-training calibration (temperature + decision threshold chosen on validation)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_monai.metrics.classification import (
    choose_threshold,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    plot_confusion_matrix,
    plot_roc,
)
from cxr_monai.utils import bare_state_dict

__all__ = ["ClassificationWriter", "calibrate_classifier", "item_name"]

logger = logging.getLogger(__name__)


def _allow_numpy_scalars_in_checkpoints() -> None:
    """MONAI's key-metric saver stores the best score as a numpy scalar; let ``torch.load(weights_only=True)``
    (used by MONAI's CheckpointLoader on resume) accept numpy scalars and dtypes, nothing else."""
    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtypes])


_allow_numpy_scalars_in_checkpoints()


def item_name(item: dict, key: str = "image", index: int = 0) -> str:
    """Source name of a decollated item: ``id`` if present, else the image's ``filename_or_obj`` meta."""
    if item.get("id") is not None:
        return str(item["id"])
    img = item.get(key)
    meta = getattr(img, "meta", None) or item.get(f"{key}_meta_dict") or {}
    name = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    return str(name) if name else f"item_{index}"


class ClassificationWriter:
    """Collect per-image PNEUMONIA probabilities during an evaluator run and write the results.

    Writes ``predictions.csv`` and ``predictions.json`` (file, probability, label) and, when labels are
    present, ``metrics.json`` (see :func:`classification_report`), ``roc.png`` and
    ``confusion_matrix.png``. Optionally saves a Grad-CAM overlay PNG per image.

    Args:
        output_dir: where to write.
        threshold: decision threshold on the PNEUMONIA probability (chosen on validation at training time).
        class_names: names by label index.
        with_labels: compute metrics against the items' labels.
        network: the classifier, needed for Grad-CAM.
        gradcam_layer: dotted layer name for Grad-CAM (``None`` disables it).
        gradcam_max: at most this many overlays (``None``: all).
        image_key, label_key, pred_key: item keys.
    """

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float = 0.5,
        class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
        with_labels: bool = True,
        network: nn.Module | None = None,
        gradcam_layer: str | None = None,
        gradcam_max: int | None = None,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        if gradcam_layer is not None and network is None:
            raise ValueError("Grad-CAM needs the network")
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.class_names = list(class_names)
        self.with_labels = with_labels
        self.network = network
        self.gradcam_layer = gradcam_layer
        self.gradcam_max = gradcam_max
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        self.rows = []

    def iteration_completed(self, engine) -> None:
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        new_rows = []
        for i, item in enumerate(outputs):
            prob = float(torch.as_tensor(item[self.pred_key]).reshape(-1)[-1])
            row = {"file": item_name(item, self.image_key, len(self.rows) + i), "probability": prob,
                   "label": self.class_names[int(prob >= self.threshold)]}
            if self.with_labels and self.label_key in item:
                row["true_label"] = self.class_names[int(torch.as_tensor(item[self.label_key]).reshape(-1)[0])]
            new_rows.append(row)
        if self.gradcam_layer is not None:
            self._save_gradcam([item[self.image_key] for item in outputs], new_rows)
        self.rows += new_rows

    def _save_gradcam(self, images: list[torch.Tensor], rows: list[dict]) -> None:
        from cxr_monai.explain import gradcam, save_overlay

        budget = len(rows) if self.gradcam_max is None else max(0, self.gradcam_max - len(self.rows))
        if budget == 0:
            return
        device = next(self.network.parameters()).device
        images = torch.stack([torch.as_tensor(x) for x in images[:budget]]).to(device)
        was_training = self.network.training
        self.network.eval()
        # explain the decision: each image's predicted class (by the threshold), maps divided by their maximum
        predicted = [self.class_names.index(r["label"]) for r in rows[:budget]]
        cams = [None] * len(predicted)
        for c in sorted(set(predicted)):
            idx = [i for i, p in enumerate(predicted) if p == c]
            for i, cam in zip(idx, gradcam(self.network, images[idx], self.gradcam_layer, class_idx=c, normalize="max")):
                cams[i] = cam
        self.network.train(was_training)
        for k, (row, img, cam) in enumerate(zip(rows, images, cams)):
            stem = Path(row["file"]).name.split(".")[0].replace(":", "_")
            # the running index keeps same-named inputs from different folders apart
            path = self.output_dir / "gradcam" / f"{len(self.rows) + k:05d}_{stem}_gradcam.png"
            save_overlay(img.cpu(), cam, path, title=f"{row['label']}  p(PNEUMONIA)={row['probability']:.3f}  "
                                                     f"(Grad-CAM of {row['label']})")
            row["gradcam"] = str(path)
            row["gradcam_class"] = row["label"]

    def completed(self, engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fields = sorted({k for r in self.rows for k in r}, key=["file", "probability", "label", "true_label", "gradcam", "gradcam_class"].index)
        with open(self.output_dir / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        (self.output_dir / "predictions.json").write_text(json.dumps(self.rows, indent=1))
        labelled = [r for r in self.rows if "true_label" in r]
        if self.with_labels and labelled:
            probs = [r["probability"] for r in labelled]
            labels = [self.class_names.index(r["true_label"]) for r in labelled]
            report = classification_report(probs, labels, self.threshold)
            (self.output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
            if len(set(labels)) > 1:
                plot_roc(probs, labels, self.output_dir / "roc.png", self.threshold)
            plot_confusion_matrix(report["confusion_matrix"], self.output_dir / "confusion_matrix.png", self.class_names)
            logger.info("metrics: %s", {k: v for k, v in report.items() if k != "confusion_matrix"})


@torch.no_grad()
def _collect_logits(network: nn.Module, loader, device, image_key: str = "image", label_key: str = "label"):
    network.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(network(batch[image_key].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch[label_key]).reshape(-1))
    return torch.cat(logits), torch.cat(labels)


def calibrate_classifier(
    network: nn.Module,
    checkpoint: str | Path,
    val_loader,
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    extra: dict | None = None,
) -> dict:
    """After training: load the best checkpoint, fit a temperature on the validation split, choose the
    decision threshold there (Youden's J on calibrated probabilities), and write ``model.pt`` (bare state
    dict) and ``calibration.json`` (temperature, threshold, ECE before/after, validation report) to
    ``output_dir``. Returns the calibration dict.
    """
    output_dir = Path(output_dir)
    network.load_state_dict(bare_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)))
    network.to(device)
    logits, labels = _collect_logits(network, val_loader, device)
    y = labels.numpy()
    raw = torch.softmax(logits, 1)[:, 1].numpy()
    temperature = fit_temperature(logits, y)
    cal = torch.softmax(logits / temperature, 1)[:, 1].numpy()
    threshold = choose_threshold(cal, y)
    result = {
        "temperature": temperature,
        "threshold": threshold,
        "ece_uncalibrated": expected_calibration_error(raw, y),
        "ece_calibrated": expected_calibration_error(cal, y),
        "validation": classification_report(cal, y, threshold),
        "validation_at_0.5_uncalibrated": classification_report(raw, y, 0.5),
        **(extra or {}),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in network.state_dict().items()}, output_dir / "model.pt")
    (output_dir / "calibration.json").write_text(json.dumps(result, indent=2))
    logger.info("calibration: T=%.3f threshold=%.3f ECE %.4f -> %.4f", temperature, threshold,
                result["ece_uncalibrated"], result["ece_calibrated"])
    return result
