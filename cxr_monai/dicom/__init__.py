"""The DICOM outputs of the project, built with highdicom: one module per output kind.

======================  ==============  ======  =============================================================
kind                    module          series  what
======================  ==============  ======  =============================================================
enhanced image          ``enhanced``    9001    the 4x enhanced radiograph, 16-bit MONOCHROME2 Secondary Capture
report                  ``report``      9002    the finding as a Comprehensive SR (TID 1500), UNVERIFIED
Grad-CAM overlay        ``gradcam``     9003    RGB Secondary Capture with the finding burned in (+ PNG)
summary (not assessed)  ``summary``     9004    RGB Secondary Capture: "not assessed" and why, burned in
failure                 ``failure``     9002,   "not assessed: AI processing failed": report + summary (PACS loop)
                                        9004
======================  ==============  ======  =============================================================

Shared: :mod:`~cxr_monai.dicom.codes` (UID root and deterministic UIDs, manufacturer, coded concepts, the disclaimer,
:func:`~cxr_monai.dicom.codes.is_own_output`), :mod:`~cxr_monai.dicom.build` (header copy, Secondary Capture and SR
building, atomic writing), :mod:`~cxr_monai.dicom.burn_in` (the finding as text in the pixels) and
:mod:`~cxr_monai.dicom.kinds` (:class:`~cxr_monai.dicom.kinds.OutputKind`).

Every output series' description ends with "NOT FOR PRIMARY DIAGNOSIS"; every output has the same SOPInstanceUID
whenever it is made from the same source image, and its series the same UID for the same study.

To add an output: a module with an :class:`~cxr_monai.dicom.kinds.OutputKind` subclass (name, series number,
title, :meth:`~cxr_monai.dicom.kinds.OutputKind.applies`, :meth:`~cxr_monai.dicom.kinds.OutputKind.build`) and its
place in :data:`STUDY_OUTPUTS`.
"""

from __future__ import annotations

from cxr_monai.dicom.build import header_copy, write_bytes, write_dataset
from cxr_monai.dicom.codes import (DISCLAIMER, MANUFACTURER, NOT_FOR_DIAGNOSIS, PNEUMONIA, PNEUMONIA_PROBABILITY,
                                   UID_ROOT, derived_uid, is_own_output, new_uid, result_uid)
from cxr_monai.dicom.enhanced import EnhancedImage, enhanced_image_sc
from cxr_monai.dicom.failure import FAILURE_OUTPUTS, FailedReport, FailedSummary, ai_failed_report
from cxr_monai.dicom.gradcam import GradCAMOverlay, overlay_sc
from cxr_monai.dicom.kinds import Built, OutputKind
from cxr_monai.dicom.report import Report, pneumonia_report
from cxr_monai.dicom.summary import NotAssessedSummary, summary_sc

__all__ = [
    "STUDY_OUTPUTS", "SERIES_NUMBERS", "FAILURE_OUTPUTS", "OutputKind", "Built",
    "EnhancedImage", "Report", "GradCAMOverlay", "NotAssessedSummary", "FailedSummary", "FailedReport",
    "enhanced_image_sc", "pneumonia_report", "overlay_sc", "summary_sc", "ai_failed_report",
    "UID_ROOT", "MANUFACTURER", "NOT_FOR_DIAGNOSIS", "DISCLAIMER", "PNEUMONIA", "PNEUMONIA_PROBABILITY",
    "new_uid", "derived_uid", "result_uid", "is_own_output", "header_copy", "write_dataset", "write_bytes",
]

STUDY_OUTPUTS: tuple[OutputKind, ...] = (EnhancedImage(), Report(), GradCAMOverlay(), NotAssessedSummary())
"""The outputs the app writes for an image, in this order (the report refers to the enhanced image written before)."""

SERIES_NUMBERS: dict[str, int] = {k.series: k.series_number for k in STUDY_OUTPUTS}
"""Output series name -> SeriesNumber: ``{"enhanced": 9001, "report": 9002, "gradcam": 9003, "summary": 9004}``."""
