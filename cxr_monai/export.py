"""Deployable model files: one TorchScript file per model with everything it needs embedded.

The MONAI Deploy SDK finds models by its named-model layout (``MODELS/<name>/`` holding exactly one
file), so a deployable model cannot have side files: the calibration (temperature, threshold), the
preprocessing parameters, the tiling policy and the provenance travel inside the TorchScript archive
as the extra file ``cxr_monai.json`` (``torch.jit.save(..., _extra_files=...)``).

* ``cxr_pneumonia/model.ts``: :class:`CalibratedClassifier` — ``forward(x) -> (N, 2)`` calibrated
  probabilities (softmax of logits / temperature), plus two exported methods for Grad-CAM,
  ``cam_features(x)`` (last feature maps) and ``cam_head(f)`` (calibrated logits from them).
* ``cxr_sr/model.ts``: the 4x generator, ``forward(x) -> (N, 1, 4H, 4W)``.
* ``cxr_scope/model.ts``: the intended-population gate (:mod:`cxr_monai.scope`).
* ``cxr_lung/model.ts``: the lung-field network whose view the classifier and the gate read
  (:mod:`cxr_monai.transforms.lung_field`); the classifier and the gate carry its hash and refuse another one.

:func:`export_deploy_models` writes every model of the registry :data:`DEPLOY_MODELS` from the bundles it finds
(``make deploy-models``); an exporter joins the registry with :func:`register_deploy_model`;
:func:`load_deploy_model` reads one back with its metadata, refusing files that lack it. Bundle
paths are arguments: nothing here knows where the repository keeps its bundles.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_monai.commissioning import THRESHOLD_RULE, calibration_in_force, load_site_calibration
from cxr_monai.scope import load_scope_gate, save_scope_gate
from cxr_monai.transforms.lung_field import LUNG_FIELD_KIND
from cxr_monai.utils import META_FILE, DeployModelError, file_sha256, find_bundles, load_bundle_network, read_json
from cxr_monai.utils import load_torchscript_with_meta
from cxr_monai.utils import load_torchscript_with_meta as load_deploy_model
from cxr_monai.utils import save_torchscript_with_meta as _save_atomic

__all__ = [
    "CLASSIFIER_NAME",
    "SR_NAME",
    "SCOPE_NAME",
    "LUNG_NAME",
    "export_scope_gate",
    "export_lung_field",
    "META_FILE",
    "CalibratedClassifier",
    "DeployModelError",
    "export_classifier",
    "export_sr",
    "export_deploy_models",
    "DEPLOY_MODELS",
    "DeployModelSpec",
    "register_deploy_model",
    "load_deploy_model",
    "find_model_file",
]

CLASSIFIER_NAME = "cxr_pneumonia"
SR_NAME = "cxr_sr"
SCOPE_NAME = "cxr_scope"
LUNG_NAME = "cxr_lung"
LUNG_FILE = "lung_field.ts"
"""The lung-field network in the classifier bundle's ``models/`` (written by ``configs/lung_train.json``)."""
SCOPE_FILE = "scope_gate.ts"
"""The intended-population gate in the classifier bundle's ``models/`` (written by ``configs/scope_train.json``)."""
FORMAT_VERSION = 1


class CalibratedClassifier(nn.Module):
    """A classifier (:class:`~cxr_monai.networks.ResNet18SA` or :class:`~cxr_monai.networks.ClassifierEnsemble`)
    with its temperature and an optional site recalibration built in, for deployment.

    Args:
        net: the trained classifier, with ``cam_features(x)`` and ``cam_head(f)`` (logits).
        temperature: calibration temperature (> 0); probabilities are ``softmax(logits / T)``.
        site_a, site_b: a site's recalibration of the log-odds ``L -> site_a * L + site_b``
            (:mod:`cxr_monai.commissioning`); the logits become ``site_a * logits / T + [0, site_b]``. The default
            (1, 0) is the identity, exactly.
    """

    def __init__(self, net: nn.Module, temperature: float = 1.0, site_a: float = 1.0, site_b: float = 0.0) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not (math.isfinite(site_a) and math.isfinite(site_b)):
            raise ValueError(f"site_a, site_b must be finite, got {site_a!r}, {site_b!r}")
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("site_a", torch.tensor(float(site_a)))
        self.register_buffer("site_b", torch.tensor(float(site_b)))

    @torch.jit.export
    def cam_features(self, x: torch.Tensor) -> torch.Tensor:
        """The network's Grad-CAM feature maps (N, C, h, w) (``net.cam_features``)."""
        return self.net.cam_features(x)

    @torch.jit.export
    def cam_head(self, f: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (N, 2) from :meth:`cam_features` (the site recalibration applied)."""
        z = self.site_a * (self.net.cam_head(f) / self.temperature)
        shift = torch.zeros_like(z[:1])
        shift[:, -1] = self.site_b
        return z + shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.cam_head(self.cam_features(x)), dim=1)


@dataclass(frozen=True)
class DeployModelSpec:
    """One deployable model: its name in the SDK's named-model layout (``MODELS/<name>/model.ts``), the bundle it
    comes from (folder name), the exporter ``export(bundle_root, out_file, site_dir) -> Path``, and the file in the
    bundle's ``models/`` it needs (``source``). ``optional``: skipped when that file is absent (e.g. the lung-field
    network before a classifier reads its view) instead of failing."""

    name: str
    bundle: str
    export: Callable[[Path, Path, Path | None], Path]
    source: str = "model.pt"
    optional: bool = False


DEPLOY_MODELS: dict[str, DeployModelSpec] = {}
"""The registry of deployable models, by name, in export order (filled by :func:`register_deploy_model`)."""


def register_deploy_model(name: str, bundle: str, source: str = "model.pt", optional: bool = False,
                          takes_site: bool = False) -> Callable:
    """Decorator: register ``fn(bundle_root, out_file[, site_dir])`` as the exporter of deploy model ``name``
    from bundle folder ``bundle``. ``takes_site``: the exporter embeds a site's calibration (``site_dir``)."""

    def wrap(fn: Callable) -> Callable:
        if name in DEPLOY_MODELS:
            raise ValueError(f"deploy model {name!r} registered twice")
        call = fn if takes_site else (lambda root, out, site_dir=None: fn(root, out))
        DEPLOY_MODELS[name] = DeployModelSpec(name, bundle, call, source, optional)
        return fn

    return wrap


def _bundle_meta(bundle_root: Path) -> dict[str, Any]:
    meta_file = bundle_root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise DeployModelError(f"{bundle_root}: not a bundle (no configs/metadata.json)")
    return json.loads(meta_file.read_text())


@register_deploy_model(CLASSIFIER_NAME, "cxr_pneumonia_classifier", takes_site=True)
def export_classifier(bundle_root: str | os.PathLike, out_file: str | os.PathLike,
                      site_dir: str | os.PathLike | None = None) -> Path:
    """Export the pneumonia classifier bundle as one TorchScript file with calibration embedded.

    Args:
        bundle_root: the ``cxr_pneumonia_classifier`` bundle folder (``models/model.pt`` and
            ``models/calibration.json`` are read).
        out_file: the ``.ts`` file to write (atomically).
        site_dir: a site's commissioning folder (``site_calibration.json`` of ``configs/commission.json``): its
            recalibration and threshold replace the default ones (the weights' sha256 must match, else
            :class:`cxr_monai.commissioning.ModelMismatchError`), and the bundle's ``models/scope_gate.ts`` must
            be the gate it was commissioned with (:class:`cxr_monai.commissioning.ScopeGateError`). The embedded
            ``calibration`` record says which is in force (``source`` ``"default"`` or ``"site"``, ``id``,
            ``date``, ``scope_gate_sha256``, checked against the deployed gate by
            :func:`cxr_monai.commissioning.check_deployed_gate`).
    """

    root = Path(bundle_root)
    meta = _bundle_meta(root)
    cal_file = root / "models" / "calibration.json"
    if not cal_file.is_file():
        raise DeployModelError(f"{cal_file}: calibration file missing")
    cal = read_json(cal_file)
    site = (load_site_calibration(site_dir, weights=root / "models" / "model.pt", scope_gate=root / "models" / SCOPE_FILE)
            if site_dir is not None else None)
    net = load_bundle_network(root)
    module = torch.jit.script(CalibratedClassifier(net, float(cal["temperature"]), site.a if site else 1.0,
                                                   site.b if site else 0.0).eval())
    calibration = calibration_in_force(site, float(cal["threshold"]), float(cal["temperature"]))
    calibration.pop("file", None)  # a path on the exporting machine means nothing where the model runs
    info = {
        "format_version": FORMAT_VERSION,
        "kind": "classifier",
        "name": CLASSIFIER_NAME,
        "model_name": meta.get("name", "cxr_pneumonia_classifier"),
        "version": meta["version"],
        "class_names": ["NORMAL", "PNEUMONIA"],
        "positive_class": 1,
        "temperature": float(cal["temperature"]),
        "threshold": site.threshold if site else float(cal["threshold"]),
        "threshold_rule": (THRESHOLD_RULE if site else
                           cal.get("threshold_rule", "Youden point on the patient-aware validation split")),
        "calibration": calibration,
        "image_size": int(cal.get("image_size", 224)),
        "lung_field_sha256": cal.get("lung_field_sha256"),
        "views": list(cal.get("views") or []) or None,
        "view_channels": net.view_channels() if len(cal.get("views") or []) > 1 else None,
        "exposed_field": bool(cal.get("exposed_field")),
        "preprocessing": "cxr_monai.transforms.classifier_preprocessing" + (
            " (shutter frame removed: exposed field first)" if cal.get("exposed_field") else "") + (
            f" (views {', '.join(cal['views'])}: input (N, {len(cal['views'])}, S, S); lung-field view: deploy model "
            "cxr_lung)" if len(cal.get("views") or []) > 1 else
            " (lung-field view: deploy model cxr_lung)" if cal.get("lung_field_sha256") else ""),
        "output": ("calibrated probabilities (N, 2): softmax(site_a * logits / temperature + [0, site_b]); "
                   "site_a = 1, site_b = 0 unless a site calibration is in force (calibration.source)"),
        "gradcam": {"features": "cam_features", "head": "cam_head"},
        "weights_sha256": file_sha256(root / "models" / "model.pt"),
        "monai_version": meta.get("monai_version"),
        "pytorch_version": torch.__version__,
    }
    return _save_atomic(module, info, Path(out_file))


@register_deploy_model(SR_NAME, "cxr_sr_csaegan")
def export_sr(bundle_root: str | os.PathLike, out_file: str | os.PathLike, tile_size: int = 128,
              tile_overlap: float = 0.25) -> Path:
    """Export the 4x super-resolution bundle as one TorchScript file with its tiling policy embedded.

    Args:
        bundle_root: the ``cxr_sr_csaegan`` bundle folder (``models/model.pt`` is read).
        out_file: the ``.ts`` file to write (atomically).
        tile_size: side of the input tiles of the sliding-window inference (input pixels).
        tile_overlap: overlap of neighbouring tiles (fraction of ``tile_size``).
    """

    root = Path(bundle_root)
    meta = _bundle_meta(root)
    net = load_bundle_network(root)
    scale = int(getattr(net, "scale", 4))
    module = torch.jit.script(net.eval())
    info = {
        "format_version": FORMAT_VERSION,
        "kind": "super_resolution",
        "name": SR_NAME,
        "model_name": meta.get("name", "cxr_sr_csaegan"),
        "version": meta["version"],
        "scale": scale,
        "tile_size": int(tile_size),
        "tile_overlap": float(tile_overlap),
        "preprocessing": "cxr_monai.transforms.sr_preprocessing",
        "output": f"(N, 1, {scale}H, {scale}W) in [0, 1] after clamping",
        "weights_sha256": file_sha256(root / "models" / "model.pt"),
        "monai_version": meta.get("monai_version"),
        "pytorch_version": torch.__version__,
    }
    return _save_atomic(module, info, Path(out_file))


@register_deploy_model(SCOPE_NAME, "cxr_pneumonia_classifier", source=SCOPE_FILE)
def export_scope_gate(bundle_root: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Copy the classifier bundle's intended-population gate (``models/scope_gate.ts``, TorchScript with its
    thresholds embedded) into the deploy layout, adding the bundle's name, version and the gate's hash."""

    root = Path(bundle_root)
    src = root / "models" / SCOPE_FILE
    if not src.is_file():
        raise DeployModelError(f"{src}: scope gate missing (train it with configs/scope_train.json)")
    gate = load_scope_gate(src)
    meta = _bundle_meta(root)
    info = {**gate.info, "format_version": FORMAT_VERSION, "bundle": meta.get("name", "cxr_pneumonia_classifier"),
            "bundle_version": meta["version"], "weights_sha256": file_sha256(src)}
    return save_scope_gate(gate.module, info, out_file)


@register_deploy_model(LUNG_NAME, "cxr_pneumonia_classifier", source=LUNG_FILE, optional=True)
def export_lung_field(bundle_root: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Copy the classifier bundle's lung-field network (``models/lung_field.ts``) into the deploy layout, adding
    the bundle's name, version and the source file's hash (``source_sha256``: what the classifier and the gate
    were trained through, :func:`cxr_monai.inference.check_lung_field`)."""

    root = Path(bundle_root)
    src = root / "models" / LUNG_FILE
    if not src.is_file():
        raise DeployModelError(f"{src}: lung-field network missing (train it with configs/lung_train.json)")
    module, info = load_torchscript_with_meta(src, kind=LUNG_FIELD_KIND)
    meta = _bundle_meta(root)
    info = {**info, "format_version": FORMAT_VERSION, "bundle": meta.get("name", "cxr_pneumonia_classifier"),
            "bundle_version": meta["version"], "source_sha256": file_sha256(src)}
    return _save_atomic(module, info, Path(out_file))


def export_deploy_models(bundles_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         site_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write every registered deploy model (:data:`DEPLOY_MODELS`: ``cxr_pneumonia``, ``cxr_sr``, ``cxr_scope`` and,
    when the classifier bundle holds one, ``cxr_lung``) as ``out_dir/<name>/model.ts`` (the SDK's named-model
    layout: one file per model folder) from the bundles found in ``bundles_dir`` (:func:`cxr_monai.utils.
    find_bundles`). Returns ``{name: path}``. ``site_dir``: embed that site's calibration in the classifier
    (:func:`export_classifier`).

    Raises:
        DeployModelError: a registered model's bundle is not in ``bundles_dir``, or its required source is missing.
    """
    bundles = find_bundles(bundles_dir)
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name, spec in DEPLOY_MODELS.items():
        if spec.bundle not in bundles:
            raise DeployModelError(f"deploy model {name!r} comes from bundle {spec.bundle!r}, not found in "
                                   f"{bundles_dir} (found: {', '.join(bundles)})")
        root = bundles[spec.bundle]
        if spec.optional and not (root / "models" / spec.source).is_file():
            continue
        written[name] = spec.export(root, out / name / "model.ts", site_dir)
    for name, path in written.items():
        extra = [p for p in path.parent.iterdir() if p != path]
        if extra:
            raise DeployModelError(f"{path.parent}: the named-model layout allows one file, also found {extra}")
    return written


def find_model_file(models_dir: str | os.PathLike, name: str) -> Path:
    """The one model file of ``models_dir/name`` (or ``models_dir`` itself when it is that file)."""
    root = Path(models_dir)
    if root.is_file():
        return root
    folder = root / name
    if not folder.is_dir():
        raise DeployModelError(f"model {name!r} not found: {folder} does not exist (run `make deploy-models`)")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(files) != 1:
        raise DeployModelError(f"{folder}: expected exactly one model file, found {len(files)}")
    return files[0]


