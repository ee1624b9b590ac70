"""The site calibration file: what commissioning writes (``SITE/site_calibration.json``), how it is read back and
checked against the weights and the intended-population gate in use, and how outputs name the calibration in force."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_monai.utils import file_sha256

__all__ = [
    "SITE_FILE",
    "SITE_FIGURE",
    "SITE_KIND",
    "FORMAT_VERSION",
    "CommissioningError",
    "TooFewImagesError",
    "MostlyOutOfScopeError",
    "ModelMismatchError",
    "ScopeGateError",
    "SiteCalibration",
    "check_scope_gate",
    "check_deployed_gate",
    "sha256_file",
    "model_identity",
    "json_clean",
    "load_site_calibration",
    "calibration_in_force",
    "describe_calibration",
    "site_logits",
]

SITE_FILE = "site_calibration.json"
SITE_FIGURE = "site_calibration.png"
SITE_KIND = "site_calibration"
FORMAT_VERSION = 2
"""2: patients, stated prevalence, the gate's sha256 checked on load, the monitor's reference beside the file."""


class CommissioningError(ValueError):
    """A commissioning sample or a site calibration that cannot be used, with the reason."""


class TooFewImagesError(CommissioningError):
    """A class has fewer than :data:`MIN_PER_CLASS` in-scope images."""


class MostlyOutOfScopeError(CommissioningError):
    """More than :data:`MAX_OUT_OF_SCOPE_FRACTION` of the sample is outside the intended population."""


class ModelMismatchError(CommissioningError):
    """A site calibration fitted for other weights than the ones it would be applied to."""


class ScopeGateError(CommissioningError):
    """The intended-population gate is missing, or is not the one the site calibration was commissioned with."""


@dataclass(frozen=True)
class SiteCalibration:
    """The parameters of a site calibration and where they come from.

    Attributes:
        a: slope on the ensemble's log-odds.
        b: offset of the log-odds.
        threshold: decision threshold on the site probability ``sigmoid(a * L + b)``.
        site_id: the site's name.
        date: ISO date of the commissioning.
        weights_sha256: sha256 of the ``models/model.pt`` it was fitted for.
        model_name: the bundle's name.
        model_version: the bundle's version.
        prevalence: the PNEUMONIA prevalence the probabilities carry (the site's stated one, else the sample's; the
            threshold by the equal-prior rule).
        scope_gate_sha256: sha256 of the intended-population gate the sample was checked with (``None``: commissioned
            without a gate, ``--use_scope_gate False``).
        path: the file it was read from (``None`` when built in memory).
    """

    a: float
    b: float
    threshold: float
    site_id: str
    date: str
    weights_sha256: str
    model_name: str = ""
    model_version: str = ""
    prevalence: float | None = None
    scope_gate_sha256: str | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise CommissioningError(f"site calibration a, b must be finite, got {self.a}, {self.b}")
        if not 0.0 < self.threshold < 1.0:
            raise CommissioningError(f"site threshold must be in (0, 1), got {self.threshold}")

    def probabilities(self, logodds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Site probabilities of PNEUMONIA from the ensemble's log-odds."""

        return 0.5 * (1.0 + np.tanh(0.5 * (self.a * np.asarray(logodds, dtype=np.float64) + self.b)))  # sigmoid

    def summary(self) -> dict[str, Any]:
        """What outputs record as the calibration in force (``source`` ``"site"``)."""
        return {"source": "site", "id": self.site_id, "date": self.date, "a": self.a, "b": self.b,
                "threshold": self.threshold, "prevalence": self.prevalence, "weights_sha256": self.weights_sha256,
                "scope_gate_sha256": self.scope_gate_sha256, "file": self.path}

    @classmethod
    def from_report(cls, report: Mapping[str, Any], path: str | None = None) -> SiteCalibration:
        """From the contents of a ``site_calibration.json``."""
        try:
            cal, model = report["calibration"], report["model"]
            gate = cal.get("scope_gate_sha256", (report.get("sample") or {}).get("scope_gate_sha256"))
            return cls(a=float(cal["a"]), b=float(cal["b"]), threshold=float(cal["threshold"]),
                       site_id=str(report["site_id"]), date=str(report["date"]),
                       weights_sha256=str(model["weights_sha256"]), model_name=str(model.get("name", "")),
                       model_version=str(model.get("version", "")), prevalence=cal.get("prevalence"),
                       scope_gate_sha256=str(gate) if gate else None, path=path)
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, CommissioningError):
                raise
            raise CommissioningError(f"{path or 'site calibration'}: not a site calibration ({type(err).__name__}: "
                                     f"{err})") from err


# ------------------------------------------------------------------------------------------------ model identity


sha256_file = file_sha256
"""Hex sha256 of a file (:func:`cxr_monai.utils.file_sha256`)."""


def model_identity(bundle_root: str | os.PathLike, weights_name: str = "model.pt") -> dict[str, Any]:
    """Name, version (``configs/metadata.json``) and weights sha256 of the bundle's ``models/<weights_name>``."""
    root = Path(bundle_root)
    meta_file, weights = root / "configs" / "metadata.json", root / "models" / weights_name
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: bundle weights not found")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return {"name": meta.get("name", root.name), "version": meta.get("version", ""),
            "weights_file": f"models/{weights_name}", "weights_sha256": sha256_file(weights)}



def json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_scope_gate(cal: SiteCalibration, gate_sha256: str, where: str = "the gate in use") -> None:
    """Refuse a site calibration commissioned with another intended-population gate than ``gate_sha256``, or
    without one (the in-scope set it was fitted on would not be the one the model now assesses).

    Raises:
        ScopeGateError: with the reason and the two ways out.
    """
    if cal.scope_gate_sha256 is None:
        raise ScopeGateError(
            f"{cal.path or 'site calibration'}: commissioned without the intended-population gate "
            f"(--use_scope_gate False), but {where} runs with one: commission again with the gate, or run without "
            "it explicitly (--use_scope_gate False)")
    if cal.scope_gate_sha256 != gate_sha256:
        raise ScopeGateError(
            f"{cal.path or 'site calibration'}: commissioned with scope gate sha256 {cal.scope_gate_sha256[:12]}..., "
            f"but {where} has {gate_sha256[:12]}...: the in-scope set changed, commission the site again for this "
            "gate")


def check_deployed_gate(classifier_info: Mapping[str, Any], gate_info: Mapping[str, Any]) -> None:
    """The deploy app's and the label server's check: a deployed classifier carrying a site calibration
    (``calibration.source`` ``"site"``, :func:`cxr_monai.export.export_classifier`) runs only with the gate it
    was commissioned with (``gate_info["weights_sha256"]``: the bundle gate's sha256,
    :func:`cxr_monai.export.export_scope_gate`). A default calibration needs no check.

    Raises:
        ScopeGateError: a site calibration and another gate (or a gate without its hash).
    """
    cal = dict(classifier_info.get("calibration") or {})
    if cal.get("source") != "site":
        return
    gate = gate_info.get("weights_sha256")
    if not gate:
        raise ScopeGateError("the deployed scope gate carries no weights_sha256: export it again (make deploy-models)")
    check_scope_gate(SiteCalibration(a=float(cal.get("a", 1.0)), b=float(cal.get("b", 0.0)),
                                     threshold=float(cal["threshold"]), site_id=str(cal.get("id")),
                                     date=str(cal.get("date")), weights_sha256=str(cal.get("weights_sha256", "")),
                                     scope_gate_sha256=cal.get("scope_gate_sha256"),
                                     path=f"site calibration {cal.get('id')!r} in the deployed classifier"),
                     str(gate), "the deployed scope gate (cxr_scope)")


def load_site_calibration(site: str | os.PathLike, weights: str | os.PathLike | None = None,
                          weights_sha256: str | None = None, scope_gate: str | os.PathLike | None = None,
                          scope_gate_sha256: str | None = None) -> SiteCalibration:
    """Read ``SITE/site_calibration.json`` (or that file) and check it was fitted for these weights.

    Args:
        site: the commissioning output folder or its ``site_calibration.json``.
        weights: the ``models/model.pt`` it will be applied to (its sha256 is compared).
        weights_sha256: or the expected sha256 directly (e.g. from a deployed model's metadata).
        scope_gate: the intended-population gate file the calibration will run with: it must exist and be the
            one the site was commissioned with (:func:`check_scope_gate`). ``None`` (and no ``scope_gate_sha256``):
            the caller runs without a gate (``--use_scope_gate False``), nothing to check.
        scope_gate_sha256: or that gate's sha256 directly.

    Raises:
        CommissioningError: no such file, or not a site calibration.
        ModelMismatchError: the calibration was fitted for other weights.
        ScopeGateError: the gate file is missing, or is not the one commissioned with.
    """
    path = Path(site)
    path = path / SITE_FILE if path.is_dir() else path
    if not path.is_file():
        raise CommissioningError(f"{path}: no site calibration (run configs/commission.json with --output_dir "
                                 f"{path.parent})")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CommissioningError(f"{path}: not JSON ({err})") from err
    if report.get("kind") != SITE_KIND:
        raise CommissioningError(f"{path}: kind {report.get('kind')!r}, expected {SITE_KIND!r}")
    cal = SiteCalibration.from_report(report, str(path))
    expected = weights_sha256 or (sha256_file(weights) if weights is not None else None)
    if expected is not None and expected != cal.weights_sha256:
        raise ModelMismatchError(
            f"{path}: fitted for weights sha256 {cal.weights_sha256[:12]}... ({cal.model_name} {cal.model_version}), "
            f"but the model in use has {expected[:12]}...: commission the site again for this model")
    if scope_gate is not None and scope_gate_sha256 is None:
        if not Path(scope_gate).is_file():
            raise ScopeGateError(f"{scope_gate}: intended-population gate not found; the site calibration {path} "
                                 "needs the gate it was commissioned with (or run with --use_scope_gate False)")
        scope_gate_sha256 = sha256_file(scope_gate)
    if scope_gate_sha256 is not None:
        check_scope_gate(cal, scope_gate_sha256, str(scope_gate) if scope_gate is not None else "the gate in use")
    return cal


def calibration_in_force(site: SiteCalibration | None, default_threshold: float | None = None,
                         default_temperature: float | None = None) -> dict[str, Any]:
    """The ``calibration`` record outputs carry: the site's (:meth:`SiteCalibration.summary`) or the default."""
    if site is not None:
        return site.summary()
    out: dict[str, Any] = {"source": "default", "id": "default", "date": None}
    if default_threshold is not None:
        out["threshold"] = float(default_threshold)
    if default_temperature is not None:
        out["temperature"] = float(default_temperature)
    return out


def describe_calibration(calibration: Mapping[str, Any] | None) -> str:
    """One sentence naming the calibration in force (for the DICOM SR and other human-read outputs)."""
    cal = dict(calibration or {"source": "default"})
    thr = cal.get("threshold")
    thr_s = f", threshold {float(thr):.4f}" if thr is not None else ""
    if cal.get("source") != "site":
        return f"Calibration in force: default (shipped with the model{thr_s})."
    return (f"Calibration in force: site calibration '{cal.get('id')}' commissioned {cal.get('date')} "
            f"(log-odds -> {float(cal.get('a', 1.0)):.4f} x log-odds {float(cal.get('b', 0.0)):+.4f}{thr_s}).")


def site_logits(z: torch.Tensor, site: SiteCalibration | None) -> torch.Tensor:
    """Logits (..., 2) whose softmax is the site probability: ``a * z + [0, b]`` (``z`` the default-calibrated
    logits; its log-odds become ``a * L + b``). ``site`` ``None``: ``z`` unchanged."""
    if site is None:
        return z
    shift = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)
    shift[-1] = site.b
    return site.a * z + shift


