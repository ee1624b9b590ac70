"""What every DICOM output of the project shares: the UID root and the deterministic UIDs, the manufacturer, the
coded concepts of the reports, and the disclaimer.

UIDs are generated under :data:`UID_ROOT` (environment ``CXR_MONAI_UID_ROOT``; default pydicom's root
``1.2.826.0.1.3680043.8.498.``): a site replaces it with its own organisation root. An output object's SOPInstanceUID
is derived from its source's SOPInstanceUID and its series number (:func:`result_uid`), and an output series' UID
from the StudyInstanceUID and the output series' name (:func:`derived_uid`): running the app twice on the same image
gives the same objects, so a PACS that stores both runs keeps one result per source image (the PACS loop relies on
it).

:data:`NOT_FOR_DIAGNOSIS` ends every output series' description and :data:`DISCLAIMER` opens every burned-in text;
:func:`is_own_output` is how the PACS side tells the app's outputs from the sources (both derive from here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

UID_ROOT = os.environ.get("CXR_MONAI_UID_ROOT", "1.2.826.0.1.3680043.8.498.")
MANUFACTURER = "cxr_monai"
_SCHEME = "99CXRMONAI"  # private coding scheme for the concepts no public code names exactly

PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PNEUMONIA_PROBABILITY = Code("PNEU-P", _SCHEME, "Pneumonia probability (calibrated)")
PNEUMONIA_PROBABILITY_NO_SR = Code("PNEU-P-NOSR", _SCHEME, "Pneumonia probability on the unenhanced image")
DECISION_THRESHOLD = Code("PNEU-T", _SCHEME, "Pneumonia decision threshold")
SR_APPLIED = Code("SR-APPLIED", _SCHEME, "AI super-resolution applied before classification")
CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
SCOPE_CHECK = Code("SCOPE", _SCHEME, "Intended-population check")
IN_SCOPE = Code("IN-SCOPE", _SCHEME, "Within the intended population: assessed")
OUT_OF_SCOPE_NOT_ASSESSED = Code("OUT-OF-SCOPE", _SCHEME, "Outside the intended population: not assessed")
SCOPE_REASON = Code("SCOPE-REASON", _SCHEME, "Reason not assessed")
INTENDED_USE_TEXT = Code("INTENDED-USE", _SCHEME, "Intended use")
CALIBRATION_TEXT = Code("PNEU-CAL", _SCHEME, "Calibration in force")
AI_PROCESSING = Code("AI-PROCESSING", _SCHEME, "AI processing")
AI_FAILED_NOT_ASSESSED = Code("AI-FAILED", _SCHEME, "Not assessed: AI processing failed")
NOT_FOR_DIAGNOSIS = "NOT FOR PRIMARY DIAGNOSIS"
"""Every output series' description ends with `` - NOT FOR PRIMARY DIAGNOSIS``."""

DISCLAIMER = f"AI RESULT - {NOT_FOR_DIAGNOSIS}"
"""The first line of every burned-in text."""


def new_uid() -> str:
    """A new UID under :data:`UID_ROOT`."""
    return generate_uid(prefix=UID_ROOT)


def derived_uid(*parts: str) -> str:
    """A UID under :data:`UID_ROOT` that is a function of ``parts`` (a hash): the same parts, the same UID."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[UID_ROOT, *map(str, parts)])


def result_uid(source_sop_uid: str, series_number: int) -> str:
    """The SOPInstanceUID of the output of series ``series_number`` (the output kind) made from a source image."""
    return derived_uid(source_sop_uid, int(series_number))


def is_own_output(series_tags: Mapping[str, str]) -> bool:
    """Whether a series (its ``Manufacturer`` and ``SeriesDescription``) is one the app wrote: our Manufacturer and
    the :data:`NOT_FOR_DIAGNOSIS` every output series describes itself with (the phantom study, an input, has the
    Manufacturer only).

    Args:
        series_tags: the series' main tags (e.g. Orthanc's ``MainDicomTags``).
    """
    return (series_tags.get("Manufacturer", "") == MANUFACTURER
            and NOT_FOR_DIAGNOSIS in series_tags.get("SeriesDescription", "").upper())
