"""The intended population's rules: the intended-use sentence, the header rules and the lung-field rule, and
the decision record (:class:`ScopeDecision`) every scope check returns.

Intended use (:data:`INTENDED_USE`): frontal (PA/AP) chest radiographs of children, the population of the
training data (Kermany cohort, Guangzhou Women and Children's Medical Center, ages about 1-5 years).
Everything else is out of scope: adults, non-chest radiographs, lateral views, CT/MR/ultrasound slices,
photographs, documents, noise.

The check has two parts, applied in this order; the first that refuses gives the reason:

1. **Header rules** (:func:`header_scope_reason`), when there are headers: a colour source image, a
   DICOM modality other than CR/DX, a stated body part that is not the chest or a lateral view
   (:func:`cxr_monai.io.skip_reason`, what every chest model refuses), a patient
   older than :data:`MAX_AGE_YEARS` (PatientAge, else PatientBirthDate against StudyDate). Absent tags
   refuse nothing.
2. **Image check** (:class:`~cxr_monai.scope.gate.ScopeGate`), which needs no tags: a small CNN
   (:class:`~cxr_monai.scope.network.ScopeNet`) trained on in-population Kermany radiographs against adult
   radiographs and generated non-radiographs reads the classifier's own network input; the image is out
   of scope when its out-of-scope probability or the Mahalanobis distance of its features from the
   in-population training images is above a threshold calibrated on the in-population validation split
   (together at most 2 % refused there).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cxr_monai.io import skip_reason

from cxr_monai.io.rules import PROJECTION_MODALITIES, modality_names

__all__ = [
    "INTENDED_USE",
    "MAX_AGE_YEARS",
    "IN_SCOPE_MODALITIES",
    "MAX_COLOURFULNESS",
    "OUT_OF_SCOPE",
    "SCOPE_KIND",
    "ScopeDecision",
    "patient_age_years",
    "header_scope_reason",
    "lung_field_reason",
    "MAX_LUNG_EDGE_CONTACT",
    "MIN_LUNG_FRACTION",
]

INTENDED_USE = ("Intended use: frontal (PA/AP) chest radiographs of children (the training population: "
                "Kermany paediatric cohort, ages about 1-5 years), framed like the training films (the whole chest "
                "in view, upright). Adults, non-chest and lateral radiographs, CT/MR/ultrasound slices, photographs "
                "and documents are out of scope and are not assessed.")
"""The sentence every output that carries a finding repeats."""

MAX_AGE_YEARS = 10.0
"""Patients older than this (in years, from the header) are out of scope. The training cohort is 1-5 years;
the margin up to 10 years is not validated (no such images here) and is stated in the model card."""

IN_SCOPE_MODALITIES = PROJECTION_MODALITIES
"""DICOM modalities of projection radiography the classifier reads (:data:`cxr_monai.io.rules.PROJECTION_MODALITIES`);
an absent modality (PNG, JPEG) passes."""

MAX_COLOURFULNESS = 0.04
"""A colour source whose mean chroma (``meta['colourfulness']``, max - min channel in [0, 1]) is above this is
not a radiograph (a radiograph saved as RGB has ~0)."""

OUT_OF_SCOPE = "OUT_OF_SCOPE"
"""The label written instead of NORMAL/PNEUMONIA for an image outside the intended population."""

SCOPE_KIND = "scope_gate"

MIN_LUNG_FRACTION = 0.05
"""A film on which the lung-field network finds lungs over less than this share of the area shows too little
chest (lowest percentile on validation films zoomed out 1.3x: 0.09; whole films 0.14); refused before the image
check. The lung-field network also marks "lungs" on some non-radiographs: refusing those is the image check's job."""

MAX_LUNG_EDGE_CONTACT = 0.6
"""Lungs running off more than this share of the film's perimeter are cut off by the collimation or the crop
(paediatric validation films: 90th percentile 0.44 at a 0.7 central crop, 0.57 at 0.6, 0.69 at 0.5); refused
before the image check."""

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass(frozen=True)
class ScopeDecision:
    """Whether one image is in the intended population, and why not.

    Attributes:
        in_scope: the classifier may assess the image.
        reason: a sentence naming the rule that refused it (``""`` when in scope).
        probability: the image check's out-of-scope probability (``None`` when it did not run).
        distance: the image check's feature distance (``None`` when it did not run).
        lung_field: the lung-field view's box on the film (:class:`cxr_monai.transforms.LungBox` as a dict;
            ``None`` without a lung-field view).
    """

    in_scope: bool
    reason: str = ""
    probability: float | None = None
    distance: float | None = None
    lung_field: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tag(tags: Mapping[str, Any], key: str) -> str:
    value = tags.get(key, "") if tags else ""
    if isinstance(value, (list, tuple)):
        raise ValueError(f"dicom_tags[{key!r}] is a {type(value).__name__}: decollate batched metadata first")
    return str(value or "").strip()


def _da(value: str) -> _dt.date | None:
    try:
        return _dt.datetime.strptime(value[:8], "%Y%m%d").date() if len(value) >= 8 else None
    except ValueError:
        return None


def patient_age_years(tags: Mapping[str, Any] | None) -> float | None:
    """Patient age in years from DICOM tags: PatientAge (``nnnD/W/M/Y``) when valid, else PatientBirthDate
    against StudyDate; ``None`` when neither is usable (absent, malformed, birth after the study)."""
    tags = tags or {}
    m = _AGE.match(_tag(tags, "PatientAge"))
    if m:
        return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]
    birth, study = _da(_tag(tags, "PatientBirthDate")), _da(_tag(tags, "StudyDate"))
    if birth is None or study is None or study < birth:
        return None
    return (study - birth).days / 365.25


def lung_field_reason(box: Mapping[str, Any] | None, min_fraction: float = MIN_LUNG_FRACTION,
                      max_edge_contact: float = MAX_LUNG_EDGE_CONTACT) -> str | None:
    """Why the lung-field view puts an image out of scope (lungs not found, too small, cut off), or ``None``.

    Args:
        box: the :class:`cxr_monai.transforms.LungBox` as a dict (metadata key ``lung_field``); ``None``: no
            lung-field view was taken (classifiers before 0.5.0), nothing to refuse.
        min_fraction: the least share of the film the lungs must cover.
        max_edge_contact: the largest share of the film's perimeter the lungs may run off.
    """
    if not box:
        return None
    fraction, edge = float(box.get("lung_fraction", 0.0)), float(box.get("edge_contact", 0.0))
    if not box.get("found", False) or fraction < min_fraction:
        return (f"lung field: lungs cover {100 * fraction:.1f} % of the film (< {100 * min_fraction:g} %): no chest "
                "in view, or too little of it")
    if edge > max_edge_contact:
        return (f"lung field: lungs cut off by the film edge ({100 * edge:.0f} % of the film's perimeter is lung, "
                f"> {100 * max_edge_contact:g} %)")
    return None


def header_scope_reason(meta: Mapping[str, Any] | None, max_age_years: float = MAX_AGE_YEARS) -> str | None:
    """Why the headers put an image outside the intended population, or ``None`` when they do not.

    Args:
        meta: metadata of one image (:func:`cxr_monai.io.load_cxr`, or a decollated MetaTensor's meta).
        max_age_years: patients older than this are out of scope.
    """
    if not meta:
        return None
    colour = meta.get("colourfulness")
    if isinstance(colour, (int, float)) and not isinstance(colour, bool) and colour > MAX_COLOURFULNESS:
        return f"colour image (mean chroma {colour:.3f} > {MAX_COLOURFULNESS}): not a radiograph"
    modality = str(meta.get("modality") or "").strip().upper()
    if modality and modality not in IN_SCOPE_MODALITIES:
        return f"modality {modality!r} is not projection radiography ({modality_names()})"
    reason = skip_reason(meta)  # not a frontal chest radiograph: body part, non-projection modality, lateral view
    if reason:
        return reason
    age = patient_age_years(meta.get("dicom_tags") or {})
    if age is not None and age > max_age_years:
        return (f"patient age {age:.1f} years is above {max_age_years:g}: the classifier was trained on children "
                "(about 1-5 years)")
    return None
