"""The outputs of an image the AI did not assess because its processing failed (the app failed or timed out after
every retry, or could not read the image): the coded "not assessed: AI processing failed" report with the reason
(in the report series, with the SOPInstanceUID the finding report would have had, so an image has one report whatever
happened) and a summary image with the same burned in above the source image (in the summary series).

The PACS worker writes them (:func:`cxr_monai.results.write_not_assessed`), not the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cxr_monai.dicom.build import device_context, header_copy, measurement_report
from cxr_monai.dicom.burn_in import burn_in, finding_lines
from cxr_monai.dicom.codes import AI_FAILED_NOT_ASSESSED, AI_PROCESSING, INTENDED_USE_TEXT, SCOPE_REASON
from cxr_monai.dicom.kinds import Built
from cxr_monai.dicom.report import Report
from cxr_monai.dicom.summary import NotAssessedSummary, summary_sc
from cxr_monai.scope import INTENDED_USE

__all__ = ["FailedSummary", "FailedReport", "FAILURE_OUTPUTS", "ai_failed_report"]


class FailedSummary(NotAssessedSummary):
    """The summary image of a failed image (the grey field when its pixels cannot be read)."""

    title = "AI pneumonia: not assessed (AI failed)"

    def applies(self, record) -> bool:  # written by the PACS worker for an image, not by the app
        return False

    def build_failed(self, source: Dataset, reason: str, model_info: Mapping[str, Any], image: np.ndarray | None,
                     *, series_uid: str, instance_number: int = 1) -> Built:
        """The summary of ``source`` whose processing failed for ``reason``.

        Args:
            source: the source SOP instance (its header is enough).
            reason: why, one sentence without patient data.
            model_info: the classifier's ``model_name`` and ``version``.
            image: the source's pixels as the app reads them (``(1, H, W)`` in ``[0, 1]``), or ``None``.
            series_uid, instance_number: as :meth:`~cxr_monai.dicom.kinds.OutputKind.build`.
        """
        pixels = np.full((1, 512, 512), 0.5, dtype=np.float32) if image is None else image
        text = burn_in(pixels, finding_lines(None, model_info, failure_reason=reason), max_width=self.max_width)
        return Built(summary_sc(source, text, model_info, title=self.title, series_uid=series_uid,
                                series_number=self.series_number, instance_number=instance_number))


class FailedReport(Report):
    """The "not assessed: AI processing failed" report."""

    def applies(self, record) -> bool:  # written by the PACS worker for an image, not by the app
        return False

    def build_failed(self, source: Dataset, reason: str, model_info: Mapping[str, Any], image: np.ndarray | None,
                     *, series_uid: str, instance_number: int = 1) -> Built:
        """The report of ``source`` whose processing failed for ``reason`` (arguments as
        :meth:`FailedSummary.build_failed`; ``image`` is not used)."""
        return Built(ai_failed_report(source, reason, model_info, series_uid=series_uid,
                                      series_number=self.series_number, instance_number=instance_number))


FAILURE_OUTPUTS = (FailedSummary(), FailedReport())
"""What a failed image gets, in the order the PACS loop stores them: the report last (its presence means the result
is complete)."""


def ai_failed_report(source: Dataset, reason: str, model_info: Mapping[str, Any], *, series_uid: str,
                     series_number: int = Report.series_number, instance_number: int = 1) -> hd.sr.ComprehensiveSR:
    """The report of an image the AI did not assess because its processing failed: no finding, no probability; the
    coded "not assessed: AI processing failed" and the reason as text.

    Args:
        source: the source SOP instance (header is enough).
        reason: why (one sentence, no patient data).
        model_info: the classifier's ``model_name`` and ``version``.
        series_uid, series_number, instance_number: as :func:`cxr_monai.dicom.report.pneumonia_report`.
    """
    source = header_copy(source)
    algorithm, observer = device_context(model_info)
    return measurement_report(source, (), algorithm, observer, [],
                              [hd.sr.QualitativeEvaluation(name=AI_PROCESSING, value=AI_FAILED_NOT_ASSESSED)],
                              [(SCOPE_REASON, str(reason)), (INTENDED_USE_TEXT, INTENDED_USE)], series_uid,
                              series_number, instance_number, Report.series_description())
