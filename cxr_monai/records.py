"""The typed record of one image on its way through the deploy app, and the sub-records its steps add.

The app's operators (``deploy/cxr_enhance_classify/operators.py``) pass a list of :class:`ImageRecord` from port to
port; each step fills its field; :func:`cxr_monai.results.write_study_results` writes the DICOM outputs
(:mod:`cxr_monai.dicom`) and ``results.json`` from them. An image that fails in one step is marked ``failed`` with
the reason (:meth:`ImageRecord.fail`) and passes through the later steps untouched, so one bad file never stops the
study.

``results.json`` holds :meth:`ImageRecord.public` of each record: the fields of :data:`PUBLIC_FIELDS` that were
set (the pixels and the pydicom dataset stay out).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["Status", "ScopeRecord", "SRRecord", "ClassificationRecord", "GradCAMRecord", "RejectedFile",
           "SkippedSeries", "ImageRecord", "PUBLIC_FIELDS", "run_each"]

Status = Literal["ok", "out_of_scope", "skipped", "failed"]
"""``ok`` (assessed so far), ``out_of_scope`` (outside the intended population: not assessed, still enhanced and
reported as such), ``skipped`` (left out with a reason), ``failed`` (a step raised; the reason says which)."""


class ScopeRecord(TypedDict, total=False):
    """The intended-population decision (:meth:`cxr_monai.scope.ScopeDecision.as_dict`) and the models it concerns."""

    in_scope: bool
    reason: str
    probability: float | None
    distance: float | None
    lung_field: dict[str, Any] | None
    gate: str | None
    classifier: str | None
    classifier_version: str | None


class SRRecord(TypedDict, total=False):
    """Whether super-resolution ran (:func:`cxr_monai.inference.sr_decision`) and with which model."""

    applied: bool
    note: str
    model: str
    version: str
    weights_sha256: str | None
    device: str
    output_shape: list[int]


class ClassificationRecord(TypedDict, total=False):
    """:func:`cxr_monai.inference.classify` of the image the app reports on (without the Grad-CAM arrays), with the
    probability on the un-enhanced image when SR ran, and the model."""

    probability: float
    label: str
    label_index: int
    threshold: float
    probabilities: list[float]
    calibration: dict[str, Any]
    lung_field: dict[str, Any] | None
    exposed_field: dict[str, Any] | None
    probability_unenhanced: float | None
    model: str
    version: str
    device: str
    read_enhanced: bool


GradCAMRecord = TypedDict("GradCAMRecord", {"class": str, "normalisation": str, "region": str})
"""What the Grad-CAM overlay shows: the class whose map it is, how the map was normalised, over which region."""


class RejectedFile(TypedDict):
    """A file the DICOM loader left out (not DICOM, no UIDs, duplicate, unreadable)."""

    file: str
    sop_uid: str | None
    status: Status
    reason: str


class SkippedSeries(TypedDict):
    """A series the selector left out (its modality is not one the app processes)."""

    study_uid: str
    series_uid: str
    modality: str
    status: Status
    files: list[str]
    reason: str


PUBLIC_FIELDS = ("file", "study_uid", "series_uid", "sop_uid", "modality", "status", "reason", "shape", "scope",
                 "image_stats", "sr", "classification", "gradcam", "seconds", "outputs")
"""The fields ``results.json`` reports per image, in this order."""

_ALWAYS = frozenset({"file", "study_uid", "series_uid", "sop_uid", "modality", "status", "reason", "seconds"})


@dataclass
class ImageRecord:
    """One SOP instance through the app. ``None`` means "this step did not set it" (left out of ``results.json``).

    Args:
        file: the instance's file name.
        study_uid, series_uid, sop_uid: its UIDs.
        modality: its Modality.
        status: see :data:`Status`.
        reason: why it is not ``ok``.
        seconds: wall time of each step.
        dataset: the pydicom dataset (header and pixels) the SDK loader read.
        image: ``(1, H, W)`` float32 in ``[0, 1]`` (:func:`cxr_monai.io.load_cxr`).
        meta: its metadata.
        shape: ``[H, W]``.
        scope: the intended-population decision.
        image_stats: what the drift monitor compares (:func:`cxr_monai.commissioning.monitor.image_statistics`).
        sr: whether SR ran.
        enhanced: the super-resolved image, ``(1, 4H, 4W)``, when SR ran.
        classification: the finding.
        gradcam: what the overlay shows.
        overlay: the Grad-CAM overlay, ``(H, W, 3)`` uint8 RGB.
        outputs: written files by output kind (:mod:`cxr_monai.dicom`), once written.
    """

    file: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    status: Status = "ok"
    reason: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    dataset: Dataset | None = None
    image: np.ndarray | None = None
    meta: dict[str, Any] | None = None
    shape: list[int] | None = None
    scope: ScopeRecord | None = None
    image_stats: dict[str, Any] | None = None
    sr: SRRecord | None = None
    enhanced: np.ndarray | None = None
    classification: ClassificationRecord | None = None
    gradcam: GradCAMRecord | None = None
    overlay: np.ndarray | None = None
    outputs: dict[str, str] | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> ImageRecord:
        """A fresh ``ok`` record of a SOP instance (its file name and UIDs)."""
        return cls(file=str(getattr(ds, "filename", "") or ""), study_uid=str(ds.get("StudyInstanceUID", "")),
                   series_uid=str(ds.get("SeriesInstanceUID", "")), sop_uid=str(ds.get("SOPInstanceUID", "")),
                   modality=str(ds.get("Modality", "")))

    @property
    def in_scope(self) -> bool:
        """Assessed: inside the intended population and nothing failed."""
        return self.status == "ok"

    @property
    def reportable(self) -> bool:
        """Gets DICOM outputs: read, and either assessed or out of scope."""
        return self.status in ("ok", "out_of_scope") and self.dataset is not None

    @property
    def read_image(self) -> np.ndarray:
        """The image the classifier reads: the enhanced one when SR ran."""
        return self.image if self.enhanced is None else self.enhanced

    def classifier_info(self) -> dict[str, str]:
        """The classifier's ``model_name`` and ``version`` the outputs name (from the finding, or for an image not
        assessed from the scope check)."""
        if self.in_scope and self.classification is not None:
            return {"model_name": self.classification["model"], "version": self.classification["version"]}
        scope = self.scope or {}
        return {"model_name": scope.get("classifier", "cxr_pneumonia_classifier"),
                "version": scope.get("classifier_version", "unknown")}

    def fail(self, step: str, err: BaseException | str) -> None:
        """Mark the record ``failed`` at ``step``."""
        self.status, self.reason = "failed", f"{step}: {err}"

    def timed(self, step: str, start: float) -> None:
        """Record the seconds since ``start`` (``time.perf_counter()``) for ``step``."""
        self.seconds[step] = round(time.perf_counter() - start, 4)

    def public(self) -> dict[str, Any]:
        """The record as ``results.json`` reports it: :data:`PUBLIC_FIELDS` that were set."""
        return {k: getattr(self, k) for k in PUBLIC_FIELDS if k in _ALWAYS or getattr(self, k) is not None}


def run_each(records: Iterable[ImageRecord], step: str, fn: Callable[[ImageRecord], None],
             statuses: tuple[str, ...] = ("ok",), on_error: Callable[[ImageRecord, str, BaseException], None] | None
             = None) -> None:
    """``fn(record)`` for every record whose status is in ``statuses``, timed as ``step``; an exception fails that
    record only (``on_error(record, step, err)`` is called after, e.g. to log it).

    Args:
        records: the records.
        step: the step's name (in ``seconds`` and in a failure's reason).
        fn: the work on one record.
        statuses: which records it applies to (default: those still ``ok``).
        on_error: called after a record failed.
    """
    for rec in records:
        if rec.status not in statuses:
            continue
        start = time.perf_counter()
        try:
            fn(rec)
        except Exception as err:  # noqa: BLE001 - one image's failure must not stop the study
            rec.fail(step, err)
            if on_error is not None:
                on_error(rec, step, err)
        rec.timed(step, start)
