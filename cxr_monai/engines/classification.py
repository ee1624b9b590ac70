"""Ignite handlers and steps of the classifier bundle: prediction/metrics writer with Grad-CAM, EMA weights,
post-training calibration of a member on the calibration split (temperature + prior bias, equal-prior
threshold) and assembly of members into the shipped ensemble."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_monai.metrics.classification import (
    bootstrap_ci,
    classification_report,
    equal_prior_threshold,
    expected_calibration_error,
    fit_temperature_bias,
    plot_confusion_matrix,
    plot_reliability,
    plot_roc,
)
from cxr_monai.utils import bare_state_dict, item_name
from cxr_monai.utils import read_json
from ignite.engine import Events
from cxr_monai.scope import OUT_OF_SCOPE, require_own_view
from cxr_monai.explain import gradcam, gradcam_split, save_overlay
from cxr_monai.explain import FeatureMapCollector, save_feature_maps
from cxr_monai.engines.ema import make_ema
from cxr_monai.engines.ema import update_ema

__all__ = ["ClassificationWriter", "ModelEMA", "calibrate_member", "build_ensemble",
           "EQUAL_PRIOR_RULE", "item_name", "ensemble_report"]

logger = logging.getLogger(__name__)


def _allow_numpy_scalars_in_checkpoints() -> None:
    """MONAI's key-metric saver stores the best score as a numpy scalar; let ``torch.load(weights_only=True)``
    (used by MONAI's CheckpointLoader on resume) accept numpy scalars and dtypes, nothing else."""
    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtypes])


_allow_numpy_scalars_in_checkpoints()


def _calibration_label(calibration: dict) -> str:
    """``default`` or ``site:<id>:<date>``: the calibration in force, as one CSV cell."""
    if calibration.get("source") != "site":
        return "default"
    return f"site:{calibration.get('id')}:{calibration.get('date')}"


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
        gradcam_layer: dotted layer name for Grad-CAM, or ``"cam_features"`` for the network's own
            ``cam_features``/``cam_head`` split (ensembles); ``None`` disables it.
        gradcam_max: at most this many overlays (``None``: all).
        n_boot: bootstrap resamples for the 95 % intervals in ``metrics.json`` (``ci95``; 0: none).
        image_key, label_key, pred_key: item keys.
        calibration: the calibration in force (:func:`cxr_monai.commissioning.calibration_in_force`: ``source``
            ``"default"`` or ``"site"``, ``id``, ``date``, ...); when given, every row gets a ``calibration`` column
            (``default`` or ``site:<id>:<date>``) and ``metrics.json`` the record as ``calibration``.
        scope_gate: the intended-population check: :class:`cxr_monai.scope.ScopeCheck`
            (:func:`cxr_monai.scope.load_scope_check`: the gate's decision on its own view of each film, as
            :func:`cxr_monai.inference.check_scope`), or a :class:`cxr_monai.scope.ScopeGate` that names no
            lung-field network (it reads the network input as it is; a gate that names one is refused); when
            given, every row gets ``in_scope`` (1/0) and ``scope_reason`` (empty when in scope), an out-of-scope
            image is labelled ``OUT_OF_SCOPE`` (its probability is still written) and gets no Grad-CAM, and
            ``metrics.json`` is computed on in-scope images only, with ``n_out_of_scope`` added.
        feature_maps: also write ``feature_maps/<image name>.png`` per explained image (the same images and
            ``gradcam_max`` budget as Grad-CAM): the input, its Grad-CAM and the strongest channels of every stage
            and the spatial-attention maps of each network (:func:`cxr_monai.explain.save_feature_maps`, from
            forward hooks). A research view, off by default; never part of the deploy app's outputs.
        feature_maps_channels: channels shown per stage.
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
        n_boot: int = 1000,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        scope_gate: Any | None = None,
        calibration: dict | None = None,
        feature_maps: bool = False,
        feature_maps_channels: int = 4,
    ) -> None:
        if gradcam_layer is not None and network is None:
            raise ValueError("Grad-CAM needs the network")
        if feature_maps and network is None:
            raise ValueError("feature maps need the network")
        if feature_maps_channels < 1:
            raise ValueError(f"feature_maps_channels must be >= 1, got {feature_maps_channels}")
        self.feature_maps = bool(feature_maps)
        self.feature_maps_channels = int(feature_maps_channels)
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.class_names = list(class_names)
        self.with_labels = with_labels
        self.network = network
        self.gradcam_layer = gradcam_layer
        self.gradcam_max = gradcam_max
        self.n_boot = int(n_boot)
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        require_own_view(scope_gate, "ClassificationWriter")
        self.scope_gate = scope_gate
        self.calibration = dict(calibration) if calibration else None
        self.rows: list[dict] = []
        self._feature_map_paths: set[str] = set()

    def attach(self, engine) -> None:

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        self.rows = []
        self._feature_map_paths = set()

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
            if self.calibration is not None:
                row["calibration"] = _calibration_label(self.calibration)
            new_rows.append(row)
        if self.scope_gate is not None:
            # the network batch goes as it is; a ScopeCheck reads the gate's own view where it differs
            images = [torch.as_tensor(item[self.image_key]) for item in outputs]
            metas = [getattr(item[self.image_key], "meta", None) for item in outputs]
            for row, decision in zip(new_rows, self.scope_gate.check(torch.stack(images), metas)):
                row["in_scope"], row["scope_reason"] = int(decision.in_scope), decision.reason
                if not decision.in_scope:
                    row["label"] = OUT_OF_SCOPE
        if self.gradcam_layer is not None or self.feature_maps:
            keep = [i for i, r in enumerate(new_rows) if r.get("in_scope", 1)]
            self._save_gradcam([outputs[i][self.image_key] for i in keep], [new_rows[i] for i in keep])
        self.rows += new_rows

    def _save_gradcam(self, images: list[torch.Tensor], rows: list[dict]) -> None:

        budget = len(rows) if self.gradcam_max is None else max(0, self.gradcam_max - len(self.rows))
        if budget == 0 or not rows:
            return
        device = next(self.network.parameters()).device
        images = torch.stack([torch.as_tensor(x) for x in images[:budget]]).to(device)
        was_training = self.network.training
        self.network.eval()
        # explain the decision: each image's predicted class (by the threshold), maps divided by their maximum
        predicted = [self.class_names.index(r["label"]) for r in rows[:budget]]
        cams = [None] * len(predicted)
        shown = [0] * len(predicted)  # the input channel (view) each overlay is drawn on
        for c in sorted(set(predicted)) if self.gradcam_layer is not None else ():
            idx = [i for i, p in enumerate(predicted) if p == c]
            groups = self.network.view_channels() if getattr(self.network, "in_channels", 1) > 1 else None
            if self.gradcam_layer == "cam_features" and groups:  # several views: shown on the strongest one
                per_view = gradcam_split(self.network.cam_features, self.network.cam_head, images[idx], c, groups)
                strongest = per_view.reshape(*per_view.shape[:2], -1).max(axis=2).argmax(axis=1)
                maps = [m[v] for m, v in zip(per_view, strongest)]
                for i, v in zip(idx, strongest):
                    shown[i] = int(v)  # the overlay's background: that view
            elif self.gradcam_layer == "cam_features":  # the network's own split (ResNet18SA, ClassifierEnsemble)
                maps = gradcam_split(self.network.cam_features, self.network.cam_head, images[idx], c)
            else:
                maps = gradcam(self.network, images[idx], self.gradcam_layer, class_idx=c, normalize="max")
            for i, cam in zip(idx, maps):
                cams[i] = cam
        self.network.train(was_training)
        if self.feature_maps:
            self._save_feature_maps(images, rows, cams, shown)
        if self.gradcam_layer is None:
            return
        for k, (row, img, cam, v) in enumerate(zip(rows, images, cams, shown)):
            stem = Path(row["file"]).name.split(".")[0].replace(":", "_")
            # the running index keeps same-named inputs from different folders apart
            path = self.output_dir / "gradcam" / f"{len(self.rows) + k:05d}_{stem}_gradcam.png"
            save_overlay(img[v:v + 1].cpu(), cam, path, title=f"{row['label']}  p(PNEUMONIA)={row['probability']:.3f}  "
                                                     f"(Grad-CAM of {row['label']})")
            row["gradcam"] = str(path)
            row["gradcam_class"] = row["label"]

    def _save_feature_maps(self, images: torch.Tensor, rows: list[dict], cams: list, shown: list[int]) -> None:

        collector = FeatureMapCollector(self.network)
        maps = collector.collect(images)
        for k, (row, img, cam, v) in enumerate(zip(rows, images, cams, shown)):  # v: the view shown (and its map)
            stem = Path(row["file"]).name.split(".")[0].replace(":", "_")
            path = self.output_dir / "feature_maps" / f"{stem}.png"
            if str(path) in self._feature_map_paths:  # the same name from another folder in this run
                path = path.with_name(f"{stem}_{len(self.rows) + k:05d}.png")
            self._feature_map_paths.add(str(path))
            save_feature_maps(img[v:v + 1].cpu(), maps, path, cam=cam, layers=collector.layers, index=k,
                              k=self.feature_maps_channels,
                              title=f"{Path(row['file']).name}: {row['label']}  "
                                    f"p(PNEUMONIA)={row['probability']:.3f}")
            row["feature_maps"] = str(path)

    def completed(self, engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        order = ["file", "probability", "label", "in_scope", "scope_reason", "true_label", "gradcam", "gradcam_class", "feature_maps", "calibration"]
        fields = sorted({k for r in self.rows for k in r}, key=order.index)
        with open(self.output_dir / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        (self.output_dir / "predictions.json").write_text(json.dumps(self.rows, indent=1))
        labelled = [r for r in self.rows if "true_label" in r and r.get("in_scope", 1)]
        n_out = sum(1 for r in self.rows if not r.get("in_scope", 1))
        if self.with_labels and labelled:
            probs = [r["probability"] for r in labelled]
            labels = [self.class_names.index(r["true_label"]) for r in labelled]
            report = classification_report(probs, labels, self.threshold)
            if self.n_boot and len(set(labels)) > 1:
                report["ci95"] = bootstrap_ci(probs, labels, self.threshold, n_boot=self.n_boot)
            if self.scope_gate is not None:
                report["n_out_of_scope"] = n_out
            if self.calibration is not None:
                report["calibration"] = self.calibration
            (self.output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
            if len(set(labels)) > 1:
                plot_roc(probs, labels, self.output_dir / "roc.png", self.threshold)
                plot_reliability(probs, labels, self.output_dir / "reliability.png", self.class_names)
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


EQUAL_PRIOR_RULE = ("equal class priors: PNEUMONIA when the calibrated probability, corrected from the "
                    "calibration split's prevalence to 50/50, is >= 0.5 (threshold = that prevalence)")


class ModelEMA:
    """Exponential moving average of a network's weights, updated after every training iteration.

    ``module`` is a plain copy of the network (of the module inside a DDP wrapper), in eval mode, that the
    validation and the final export use, so the shipped weights do not depend on which epoch happened to
    validate best. Floating parameters follow ``ema <- d * ema + (1 - d) * w`` with the warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` at iteration ``n``; buffers (batch-norm statistics) are copied.
    Has ``state_dict``/``load_state_dict`` for ``CheckpointSaver``/``CheckpointLoader`` (resume).

    Args:
        network: the network being trained (may be DDP-wrapped).
        decay: the EMA decay in [0, 1).
    """

    def __init__(self, network: nn.Module, decay: float = 0.998) -> None:

        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.network = network
        self.decay = float(decay)
        self.module = make_ema(network)
        self.updates = 0

    def attach(self, engine) -> None:

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def update(self) -> None:

        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        update_ema(self.module, self.network, d)
        self.updates += 1

    def __call__(self, engine=None) -> None:
        self.update()

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _prevalence(labels: torch.Tensor) -> float:
    y = labels.numpy().astype(np.float64)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("the calibration split needs images of both classes")
    return float(y.mean())


def calibrate_member(network: nn.Module, calib_loader, val_loader, output_dir: str | Path,
                     device: str | torch.device = "cpu", extra: dict | None = None) -> dict:
    """After training (final EMA weights, no checkpoint selection): fit temperature and positive-class bias on
    the calibration split, fix the threshold by the equal-prior rule (:data:`EQUAL_PRIOR_RULE`), and report
    on the validation split, which the calibration never saw. Writes ``model.pt`` (bare state dict of
    ``network``) and ``calibration.json`` to ``output_dir``; returns the calibration dict.
    """
    output_dir = Path(output_dir)
    network.to(device)
    z_cal, y_cal = _collect_logits(network, calib_loader, device)
    temperature, bias = fit_temperature_bias(z_cal, y_cal.numpy())
    prior = _prevalence(y_cal)
    threshold = equal_prior_threshold(prior)

    def calibrated(z: torch.Tensor) -> np.ndarray:
        return torch.softmax(z / temperature + torch.tensor([0.0, bias]), 1)[:, 1].numpy()

    z_val, y_val = _collect_logits(network, val_loader, device)
    yv = y_val.numpy()
    result = {
        "temperature": temperature,
        "bias": bias,
        "threshold": threshold,
        "threshold_rule": EQUAL_PRIOR_RULE,
        "calibration_prior": prior,
        "ece_uncalibrated": expected_calibration_error(torch.softmax(z_val, 1)[:, 1].numpy(), yv),
        "ece_calibrated": expected_calibration_error(calibrated(z_val), yv),
        "validation": classification_report(calibrated(z_val), yv, threshold),
        "calibration_split": classification_report(calibrated(z_cal), y_cal.numpy(), threshold),
        **(extra or {}),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in network.state_dict().items()}, output_dir / "model.pt")
    (output_dir / "calibration.json").write_text(json.dumps(result, indent=2))
    logger.info("member calibration: T=%.3f b=%.3f threshold=%.3f val AUC %.4f", temperature, bias, threshold,
                result["validation"]["auc"])
    return result


def build_ensemble(member_dirs: Sequence[str | Path], network_def, calib_loader, val_loader,
                   output_dir: str | Path, device: str | torch.device = "cpu", weights_name: str = "model.pt",
                   calibration_name: str = "calibration.json", n_boot: int = 1000, extra: dict | None = None) -> dict:
    """Assemble trained members (each a folder with ``model.pt`` and the ``calibration.json`` of
    :func:`calibrate_member`) into one :class:`~cxr_monai.networks.ClassifierEnsemble` that averages their
    calibrated probabilities; write its state dict as ``weights_name`` and ``calibration_name`` (temperature 1:
    the members' calibrations are inside; threshold by the equal-prior rule on the calibration split;
    validation report with bootstrap 95 % intervals).

    Args:
        member_dirs: the members' training output folders.
        network_def: an untrained ``ClassifierEnsemble`` with as many members (its state is overwritten).
        calib_loader: the calibration split the members were calibrated on (for its prevalence).
        val_loader: the validation split (report only).
        output_dir: where to write (the bundle's ``models/``).
    """

    output_dir = Path(output_dir)
    member_dirs = [Path(d) for d in member_dirs]
    if len(member_dirs) != len(network_def.members):
        raise ValueError(f"network_def has {len(network_def.members)} members, got {len(member_dirs)} folders")
    members = []
    for d, net in zip(member_dirs, network_def.members):
        cal = read_json(d / "calibration.json")
        net.load_state_dict(bare_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True)))
        members.append({"dir": str(d), "temperature": float(cal["temperature"]), "bias": float(cal.get("bias", 0.0)),
                        "validation_auc": cal["validation"]["auc"]})
    with torch.no_grad():
        network_def.temperatures.copy_(torch.tensor([m["temperature"] for m in members]))
        network_def.biases.copy_(torch.tensor([m["bias"] for m in members]))
    network_def.to(device)
    result = {**ensemble_report(network_def, calib_loader, val_loader, device, n_boot), "members": members,
              **(extra or {})}
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in network_def.state_dict().items()}, output_dir / weights_name)
    (output_dir / calibration_name).write_text(json.dumps(result, indent=2))
    logger.info("ensemble of %d: threshold=%.3f val AUC %.4f", len(members), result["threshold"],
                result["validation"]["auc"])
    return result


def ensemble_report(network: nn.Module, calib_loader, val_loader, device: str | torch.device = "cpu",
                    n_boot: int = 1000) -> dict[str, Any]:
    """The calibration record of an assembled ensemble (members calibrated inside it, temperature 1): the threshold
    by the equal-prior rule on the calibration split's prevalence, the validation report with bootstrap 95 %
    intervals and the calibration split's report. Shared by :func:`build_ensemble` and
    :func:`cxr_monai.engines.build_view_ensemble`."""
    z_cal, y_cal = _collect_logits(network, calib_loader, device)
    prior = _prevalence(y_cal)
    threshold = equal_prior_threshold(prior)
    z_val, y_val = _collect_logits(network, val_loader, device)
    p_val, yv = torch.softmax(z_val, 1)[:, 1].numpy(), y_val.numpy()
    return {"temperature": 1.0, "threshold": threshold, "threshold_rule": EQUAL_PRIOR_RULE, "calibration_prior": prior,
            "ece_calibrated": expected_calibration_error(p_val, yv),
            "validation": classification_report(p_val, yv, threshold),
            "validation_ci95": bootstrap_ci(p_val, yv, threshold, n_boot=n_boot),
            "calibration_split": classification_report(torch.softmax(z_cal, 1)[:, 1].numpy(), y_cal.numpy(), threshold)}
