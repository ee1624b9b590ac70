"""The report: the finding as a Comprehensive SR (TID 1500 Measurement Report, UNVERIFIED, series 9002), with the
coded finding (SCT Pneumonia / Normal), the calibrated probability, the threshold, whether SR was applied, the
intended-population check and the algorithm (name, version) as a device observer. An image outside the intended
population gets the same report with "not assessed" and the reason instead of a finding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_monai.commissioning import describe_calibration
from cxr_monai.dicom.build import device_context, header_copy, measurement_report
from cxr_monai.dicom.codes import (CALIBRATION_TEXT, DECISION_THRESHOLD, IN_SCOPE, INTENDED_USE_TEXT,
                                   OUT_OF_SCOPE_NOT_ASSESSED, PNEUMONIA, PNEUMONIA_PROBABILITY,
                                   PNEUMONIA_PROBABILITY_NO_SR, SCOPE_CHECK, SCOPE_REASON, SR_APPLIED)
from cxr_monai.dicom.kinds import Built, OutputKind
from cxr_monai.records import ImageRecord
from cxr_monai.scope import INTENDED_USE

__all__ = ["Report", "pneumonia_report"]


class Report(OutputKind):
    """The report of every record that gets outputs (the finding, or "not assessed" out of scope); it refers to the
    enhanced image when there is one. Whether a PACS holds it says whether that image has its result."""

    name = "report"
    series_number = 9002
    title = "AI pneumonia finding"

    def applies(self, record: ImageRecord) -> bool:
        return True

    def build(self, record: ImageRecord, *, series_uid: str, instance_number: int,
              evidence: list[Dataset]) -> Built:
        cls = record.classification if record.in_scope else {}
        return Built(pneumonia_report(
            record.dataset, cls, record.classifier_info(), sr_applied=record.enhanced is not None,
            series_uid=series_uid, series_number=self.series_number, instance_number=instance_number,
            evidence=evidence, probability_unenhanced=cls.get("probability_unenhanced"),
            scope_reason=None if record.in_scope else record.reason))


def pneumonia_report(source: Dataset, result: Mapping[str, Any], model_info: Mapping[str, Any], *,
                     sr_applied: bool, series_uid: str, series_number: int = Report.series_number,
                     instance_number: int = 1, evidence: Sequence[Dataset] = (),
                     probability_unenhanced: float | None = None,
                     scope_reason: str | None = None) -> hd.sr.ComprehensiveSR:
    """The finding as a Comprehensive SR (TID 1500 Measurement Report), UNVERIFIED.

    Every report carries the intended-population check (coded) and the intended-use sentence
    (:data:`cxr_monai.scope.INTENDED_USE`). An image outside the intended population (``scope_reason``
    given) gets no finding and no probability: the check's value is "not assessed" and the reason is
    stated as text.

    Args:
        source: the classified source SOP instance.
        result: :func:`cxr_monai.inference.classify` output (``probability``, ``label``, ``threshold``;
            ``calibration``, the calibration in force, is stated as a text item).
        model_info: the classifier's embedded metadata (``model_name``, ``version``).
        sr_applied: whether the classifier read the super-resolved image.
        series_uid: the output series (one per study).
        series_number: its SeriesNumber.
        instance_number: InstanceNumber within the series.
        evidence: further objects the report refers to (e.g. the enhanced SC), besides ``source``.
        probability_unenhanced: the probability on the image before SR (when SR was applied).
        scope_reason: why the image is out of the intended population (``None``: in scope, assessed).
    """
    source = header_copy(source)
    params = [f"sr_applied={'yes' if sr_applied else 'no'}"]
    if scope_reason is None:
        params.insert(0, f"threshold={float(result['threshold']):.6g}")
    algorithm, observer = device_context(model_info, params)
    unit = codes.UCUM.NoUnits
    sr_value = codes.SCT.Yes if sr_applied else codes.SCT.No
    description = Report.series_description()  # one per series, whatever the scope
    if scope_reason is not None:
        return measurement_report(source, evidence, algorithm, observer, [], [
            hd.sr.QualitativeEvaluation(name=SCOPE_CHECK, value=OUT_OF_SCOPE_NOT_ASSESSED),
            hd.sr.QualitativeEvaluation(name=SR_APPLIED, value=sr_value),
        ], [(SCOPE_REASON, str(scope_reason)), (INTENDED_USE_TEXT, INTENDED_USE)], series_uid, series_number,
            instance_number, description)
    measurements = [
        hd.sr.Measurement(name=PNEUMONIA_PROBABILITY, value=float(result["probability"]), unit=unit,
                          algorithm_id=algorithm),
        hd.sr.Measurement(name=DECISION_THRESHOLD, value=float(result["threshold"]), unit=unit),
    ]
    if probability_unenhanced is not None:
        measurements.append(hd.sr.Measurement(name=PNEUMONIA_PROBABILITY_NO_SR, value=float(probability_unenhanced),
                                              unit=unit, algorithm_id=algorithm))
    positive = str(result["label"]).upper() == "PNEUMONIA"
    evaluations = [
        hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=PNEUMONIA if positive else codes.SCT.Normal),
        hd.sr.QualitativeEvaluation(name=SR_APPLIED, value=sr_value),
        hd.sr.QualitativeEvaluation(name=SCOPE_CHECK, value=IN_SCOPE),
    ]
    texts = [(INTENDED_USE_TEXT, INTENDED_USE), (CALIBRATION_TEXT, describe_calibration(result.get("calibration")))]
    return measurement_report(source, evidence, algorithm, observer, measurements, evaluations, texts, series_uid,
                              series_number, instance_number, description)
