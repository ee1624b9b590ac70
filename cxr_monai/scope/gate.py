"""The image check of the intended-population gate (:class:`ScopeGate`) around its TorchScript network, and
the gate file's writer and reader. The full check (:meth:`ScopeGate.check`) applies the header rules and the
lung-field rule (:mod:`cxr_monai.scope.rules`) first, then the image check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cxr_monai.scope.rules import (MAX_AGE_YEARS, MAX_LUNG_EDGE_CONTACT, MIN_LUNG_FRACTION, SCOPE_KIND, ScopeDecision,
                                   header_scope_reason, lung_field_reason)
from cxr_monai.transforms.lung_field import named_lung_field
from cxr_monai.utils import file_sha256, load_torchscript_with_meta, save_torchscript_with_meta

__all__ = ["ScopeGate", "save_scope_gate", "load_scope_gate", "gate_lung_field_of", "gate_with_pass_region",
           "gate_reading_exposed_field"]


class ScopeGate:
    """The image check with its thresholds, around a TorchScript :class:`~cxr_monai.scope.network.ScopeGateModule`.

    Args:
        module: ``forward(x) -> (N, 2)`` (out-of-scope probability, feature distance).
        info: the embedded metadata; needs ``thresholds`` (``probability``, ``distance``) and ``image_size``.
        device: where ``module`` lives.
    """

    def __init__(self, module: torch.nn.Module, info: Mapping[str, Any], device: str | torch.device = "cpu") -> None:
        th = info.get("thresholds") or {}
        if "probability" not in th or "distance" not in th:
            raise ValueError("scope gate info lacks thresholds.probability / thresholds.distance")
        self.module = module.eval()
        self.info = dict(info)
        self.device = torch.device(device)
        self.probability_threshold = float(th["probability"])
        self.distance_threshold = float(th["distance"])
        self.image_size = int(info.get("image_size", 160))
        self.max_age_years = float(info.get("max_age_years", MAX_AGE_YEARS))
        self.min_lung_fraction = float(info.get("min_lung_fraction", MIN_LUNG_FRACTION))
        self.max_lung_edge_contact = float(info.get("max_lung_edge_contact", MAX_LUNG_EDGE_CONTACT))

    def _fit_size(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must be the classifier input (N, 1, S, S), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2) out-of-scope probability and feature distance of a batch of classifier inputs."""
        x = torch.as_tensor(x).float()
        return self.module(self._fit_size(x).to(self.device)).float().cpu()

    def decide(self, probability: float, distance: float) -> ScopeDecision:
        """The image check's decision from its two scores."""
        if probability > self.probability_threshold:
            return ScopeDecision(False, f"image check: not like a paediatric frontal chest radiograph "
                                        f"(out-of-scope probability {probability:.3f} > "
                                        f"{self.probability_threshold:.3f})", probability, distance)
        if distance > self.distance_threshold:
            return ScopeDecision(False, f"image check: unlike the training radiographs (feature distance "
                                        f"{distance:.1f} > {self.distance_threshold:.1f})", probability, distance)
        return ScopeDecision(True, "", probability, distance)

    def check(self, x: torch.Tensor, metas: Sequence[Mapping[str, Any] | None] | None = None) -> list[ScopeDecision]:
        """The scope decision of each image of a batch.

        Args:
            x: the classifier's network input (N, 1, S, S) (:func:`cxr_monai.transforms.classifier_preprocessing`).
            metas: per-image metadata for the header rules and the lung-field rule (its ``lung_field`` box)
                (``None`` entries or ``None``: no headers, no lung-field rule).
        """
        metas = list(metas) if metas is not None else [None] * int(x.shape[0])
        if len(metas) != int(x.shape[0]):
            raise ValueError(f"{len(metas)} metas for {int(x.shape[0])} images")
        s = self.scores(x)
        out = []
        for meta, (p, d) in zip(metas, s.tolist()):
            reason = header_scope_reason(meta, self.max_age_years)
            box = (meta or {}).get("lung_field") or None
            lungs = lung_field_reason(box, self.min_lung_fraction, self.max_lung_edge_contact)
            if reason:
                decision = ScopeDecision(False, f"header: {reason}", p, d)
            elif lungs:
                decision = ScopeDecision(False, lungs, p, d)
            else:
                decision = self.decide(p, d)
            out.append(replace(decision, lung_field=dict(box)) if box else decision)
        return out


def save_scope_gate(module: torch.nn.Module, info: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Script ``module`` and write it with ``info`` embedded (kind ``scope_gate``), atomically."""
    info = {**dict(info), "kind": SCOPE_KIND}
    for key in ("thresholds", "image_size"):
        if key not in info:
            raise ValueError(f"scope gate info needs {key!r}")
    return save_torchscript_with_meta(torch.jit.script(module.eval()), info, Path(path))


def load_scope_gate(path: str | os.PathLike, device: str | torch.device = "cpu") -> ScopeGate:
    """Read a gate written by :func:`save_scope_gate` (the bundle's ``models/scope_gate.ts`` or the deploy
    copy ``cxr_scope/model.ts``)."""
    module, info = load_torchscript_with_meta(path, device, kind=SCOPE_KIND)
    return ScopeGate(module, info, device)


def gate_lung_field_of(scope_gate_file: str | os.PathLike | None, file_name: str = "lung_field.ts") -> str | None:
    """The lung-field network a gate reads its own view through: ``lung_field.ts`` beside the gate file when the
    gate names one (``lung_field_sha256``), checked by hash; ``None`` for a gate that reads the classifier's
    network input (or no gate). The gate's view does not depend on the classifier's: a whole-film classifier can
    sit behind a gate that reads the lung-field view."""
    if not scope_gate_file or not Path(scope_gate_file).is_file():
        return None
    _, info = load_torchscript_with_meta(scope_gate_file, "cpu", kind=SCOPE_KIND)
    return named_lung_field(Path(scope_gate_file).parent, info.get("lung_field_sha256"), str(scope_gate_file), file_name)


def gate_with_pass_region(scope_gate_file: str | os.PathLike, output_file: str | os.PathLike,
                          min_lung_fraction: float, max_lung_edge_contact: float, why: str) -> Path:
    """A copy of a gate (same network and image-check thresholds) with its lung-field rule's limits changed:
    the pass region narrowed (or widened) to the framing a classifier was validated on. ``why`` (how the limits
    were chosen) is recorded in the gate's metadata (``pass_region``)."""
    module, info = load_torchscript_with_meta(scope_gate_file, "cpu", kind=SCOPE_KIND)
    if not info.get("lung_field_sha256"):
        raise ValueError(f"{scope_gate_file} reads no lung-field view: its lung-field rule has nothing to act on")
    if not 0 <= float(min_lung_fraction) < 1 or not 0 <= float(max_lung_edge_contact) <= 1:
        raise ValueError(f"limits out of range: min_lung_fraction {min_lung_fraction}, "
                         f"max_lung_edge_contact {max_lung_edge_contact}")
    info = {**info, "min_lung_fraction": float(min_lung_fraction), "max_lung_edge_contact": float(max_lung_edge_contact),
            "pass_region": str(why), "derived_from_sha256": file_sha256(scope_gate_file)}
    return save_torchscript_with_meta(module, info, Path(output_file))


def gate_reading_exposed_field(scope_gate_file: str | os.PathLike, output_file: str | os.PathLike,
                               on: bool = True) -> Path:
    """A copy of a gate (same network, thresholds and pass region) that crops each film to its exposed field
    before it looks (``exposed_field`` in its metadata: :func:`cxr_monai.inference.check_scope` and
    :class:`cxr_monai.scope.ScopeCheck` follow it), so that its lung-field rule measures lungs cut off by a
    shutter frame as lungs cut off by the film's edge."""
    module, info = load_torchscript_with_meta(scope_gate_file, "cpu", kind=SCOPE_KIND)
    info = {**info, "exposed_field": bool(on), "derived_from_sha256": file_sha256(scope_gate_file)}
    return save_torchscript_with_meta(module, info, Path(output_file))
