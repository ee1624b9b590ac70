"""Writing the enhance-and-classify results of a set of images: DICOM objects, PNGs and ``results.json``.

Input: the app's :class:`cxr_monai.records.ImageRecord` list. Layout under the output folder::

    results.json
    <StudyInstanceUID>/enhanced/<SOPInstanceUID>.dcm   Secondary Capture, 16-bit, one series per study
    <StudyInstanceUID>/report/<SOPInstanceUID>.dcm     Comprehensive SR with the finding, one series per study
    <StudyInstanceUID>/gradcam/<SOPInstanceUID>.dcm    RGB Secondary Capture, one series per study
    <StudyInstanceUID>/gradcam/<SOPInstanceUID>.png
    <StudyInstanceUID>/summary/<SOPInstanceUID>.dcm    RGB Secondary Capture "not assessed" (out of scope)

Each image gets every output kind of :data:`cxr_monai.dicom.STUDY_OUTPUTS` that applies to it, in that order (the
kinds, their series numbers and descriptions: :mod:`cxr_monai.dicom`). The finding is also burned into pixels
(:mod:`cxr_monai.dicom.burn_in`), where any viewer shows it: above the Grad-CAM overlay (SC and PNG) of an assessed
image, and above the source image in a summary SC for an image outside the intended population (which gets no
Grad-CAM).

Files are named by UID, so two inputs with the same file name never collide; each is written to a temporary name
and renamed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_monai.dicom import FAILURE_OUTPUTS, SERIES_NUMBERS, STUDY_OUTPUTS, OutputKind, Report, write_bytes
from cxr_monai.records import ImageRecord, RejectedFile, SkippedSeries
from cxr_monai.scope import INTENDED_USE

__all__ = ["SERIES_NUMBERS", "write_study_results", "write_not_assessed", "report_uid", "output_series_uid"]

logger = logging.getLogger("cxr_monai.results")


def output_series_uid(study_uid: str, series: str) -> str:
    """The UID of a study's output series ``series`` (a key of :data:`SERIES_NUMBERS`): a function of the two, so
    every run on the study's images adds to the same series."""
    kind = next(k for k in STUDY_OUTPUTS if k.series == series)
    return kind.series_uid(study_uid)


def report_uid(source_sop_uid: str) -> str:
    """The SOPInstanceUID of the report (finding, out of scope, or AI failed) of a source image: whether a PACS
    holds it says whether that image has its result."""
    return Report.sop_uid(source_sop_uid)


def write_not_assessed(source, reason: str, output_folder: str | Path, *, image=None,
                       model_info: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The outputs of an image the AI did not assess because its processing failed (:mod:`cxr_monai.dicom.failure`):
    the coded "not assessed: AI processing failed" report with ``reason`` and a summary SC with the same burned in
    above the image. Written under ``output_folder/<StudyInstanceUID>/``; returns {kind: path}, the report last (the
    PACS loop stores in that order: the report's presence means the result is complete).

    Args:
        source: the source SOP instance (pydicom Dataset; its header is enough).
        reason: why, one sentence without patient data.
        output_folder: where to write.
        image: the source's pixels as the app reads them (``(1, H, W)`` in ``[0, 1]``); ``None`` when they cannot be
            read: a grey field instead.
        model_info: the classifier's ``model_name`` and ``version`` (default: unknown).
    """
    info = dict(model_info or {"model_name": "cxr_pneumonia_classifier", "version": "unknown"})
    study = str(source.StudyInstanceUID)
    out: dict[str, str] = {}
    for kind in FAILURE_OUTPUTS:
        built = kind.build_failed(source, reason, info, image, series_uid=kind.series_uid(study))
        out.update(kind.write(built, Path(output_folder) / study))
    return out


class _SeriesCounter:
    """The output series used so far (study, series name) -> UID, and the next InstanceNumber in each."""

    def __init__(self) -> None:
        self.uids: dict[tuple[str, str], str] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def next(self, study: str, kind: OutputKind) -> tuple[str, int]:
        key = (study, kind.series)
        if key not in self.uids:
            self.uids[key] = kind.series_uid(study)
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.uids[key], self.counts[key]


def _write_image(rec: ImageRecord, out: Path, series: _SeriesCounter) -> None:
    """Every output kind that applies to ``rec``; a failure marks it ``failed`` (files already renamed stay)."""
    start = time.perf_counter()
    outputs: dict[str, str] = {}
    evidence = []
    try:
        for kind in STUDY_OUTPUTS:
            if not kind.applies(rec):
                continue
            uid, n = series.next(rec.study_uid, kind)
            built = kind.build(rec, series_uid=uid, instance_number=n, evidence=evidence)
            outputs.update(kind.write(built, out / rec.study_uid))
            if kind.evidence:
                evidence.append(built.dataset)
    except Exception as err:  # noqa: BLE001 - one image's failure must not stop the others
        rec.fail("write", f"{type(err).__name__}: {err}")
        logger.error("writing the results of %s failed: %s", rec.file or rec.sop_uid, err)
    rec.outputs = outputs
    rec.timed("write", start)


def write_study_results(records: Sequence[ImageRecord], output_folder: str | Path, *,
                        run_info: Mapping[str, Any] | None = None, extra_skipped: Sequence[SkippedSeries] = (),
                        rejected_files: Sequence[RejectedFile] = ()) -> dict[str, Any]:
    """Write every output of ``records`` and ``results.json``; returns the summary written there.

    A record whose writing fails is marked ``failed`` with the reason; files already renamed for it stay
    (they are complete), no partial file is left.

    Args:
        records: the images (those ``ok`` or ``out_of_scope`` and read get outputs).
        output_folder: where to write.
        run_info: the run's description (app, versions, device, models) for ``results.json``.
        extra_skipped: the series the selector left out.
        rejected_files: the files the DICOM loader left out; the ``failed`` ones count as failed images.
    """
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    series = _SeriesCounter()
    for rec in records:
        if rec.reportable:
            _write_image(rec, out, series)

    images = [r.public() for r in records]
    # files the DICOM loader could not turn into an instance (truncated, corrupt) failed as images
    images += [{"file": f.get("file"), "sop_uid": f.get("sop_uid"), "status": "failed", "reason": f.get("reason")}
               for f in rejected_files if f.get("status") == "failed"]
    rejected_files = [f for f in rejected_files if f.get("status") != "failed"]
    counts = {s: sum(1 for r in images if r["status"] == s) for s in ("ok", "out_of_scope", "skipped", "failed")}
    summary = {
        "run": dict(run_info or {}),
        "intended_use": INTENDED_USE,
        "counts": {**counts, "series_not_selected": len(extra_skipped), "files_rejected": len(rejected_files)},
        "images": images,
        "series_not_selected": [dict(s) for s in extra_skipped],
        "files_rejected": [dict(f) for f in rejected_files],
        "output_series": [{"study_uid": s, "kind": k, "series_uid": u, "series_number": SERIES_NUMBERS[k]}
                          for (s, k), u in series.uids.items()],
    }
    write_bytes(json.dumps(summary, indent=2, default=str).encode(), out / "results.json")
    logger.info("results: %s (%s)", out / "results.json", summary["counts"])
    return summary
