"""The summary image: the AI result burned in as text above the source image, as an RGB Secondary Capture
(BurnedInAnnotation YES, series 9004), for an image that gets no Grad-CAM overlay: one outside the intended population
("not assessed" and why) here, one whose processing failed in :mod:`cxr_monai.dicom.failure`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cxr_monai.dicom.build import rgb_secondary_capture
from cxr_monai.dicom.burn_in import burn_in, finding_lines
from cxr_monai.dicom.kinds import Built, OutputKind
from cxr_monai.records import ImageRecord

__all__ = ["NotAssessedSummary", "summary_sc"]


class NotAssessedSummary(OutputKind):
    """The summary of a record outside the intended population."""

    name = "summary"
    series_number = 9004
    title = "AI pneumonia: not assessed"
    max_width = 1024
    """The source image is reduced by a whole factor to at most this width first."""

    def applies(self, record: ImageRecord) -> bool:
        return record.status == "out_of_scope"

    def build(self, record: ImageRecord, *, series_uid: str, instance_number: int,
              evidence: list[Dataset]) -> Built:
        info = record.classifier_info()
        text = burn_in(record.image, finding_lines(None, info, scope_reason=record.reason), max_width=self.max_width)
        return Built(summary_sc(record.dataset, text, info, title=self.title, series_uid=series_uid,
                                series_number=self.series_number, instance_number=instance_number))


def summary_sc(source: Dataset, rgb: np.ndarray, model_info: Mapping[str, Any], *, title: str, series_uid: str,
               series_number: int = NotAssessedSummary.series_number, instance_number: int = 1) -> hd.sc.SCImage:
    """An RGB Secondary Capture whose pixels carry the AI result as burned-in text (``rgb`` from
    :func:`cxr_monai.dicom.burn_in.burn_in`), for images that get no Grad-CAM overlay (e.g. "not assessed" and why).

    Args:
        source: the source SOP instance (header is enough).
        rgb: ``(H, W, 3)`` uint8.
        model_info: the classifier's ``model_name`` and ``version``.
        title: the series description, before `` - NOT FOR PRIMARY DIAGNOSIS``.
        series_uid: the output series (one per study).
        series_number: its SeriesNumber.
        instance_number: InstanceNumber within the series.
    """
    return rgb_secondary_capture(source, rgb, model_info, "summary image",
                                 NotAssessedSummary.series_description(title),
                                 "Result of {} (cxr_monai) burned in as text above the source image", series_uid,
                                 series_number, instance_number)
