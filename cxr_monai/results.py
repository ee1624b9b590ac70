"""Writing the enhance-and-classify results of a set of images: DICOM objects, PNGs and ``results.json``.

Layout under the output folder::

    results.json
    <StudyInstanceUID>/enhanced/<SOPInstanceUID>.dcm   Secondary Capture, 16-bit, one series per study
    <StudyInstanceUID>/report/<SOPInstanceUID>.dcm     Comprehensive SR with the finding, one series per study
    <StudyInstanceUID>/gradcam/<SOPInstanceUID>.dcm    RGB Secondary Capture, one series per study
    <StudyInstanceUID>/gradcam/<source SOPInstanceUID>.png
    <StudyInstanceUID>/summary/<SOPInstanceUID>.dcm    RGB Secondary Capture "not assessed" (out of scope)

The finding is also burned into pixels (:mod:`cxr_monai.burn_in`), where any viewer shows it: above the Grad-CAM
overlay (SC and PNG) of an assessed image, and above the source image in a summary SC for an image outside the
intended population (which gets no Grad-CAM): label, probability, threshold, scope, calibration in force, model
and version, "AI result - not for primary diagnosis".

Series numbers: 9001 enhanced, 9002 report, 9003 Grad-CAM, 9004 summary. Files are named by UID, so two inputs with
the same file name never collide; each is written to a temporary name and renamed.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SERIES_NUMBERS", "write_study_results", "write_not_assessed", "report_uid"]

logger = logging.getLogger("cxr_monai.results")

SERIES_NUMBERS = {"enhanced": 9001, "report": 9002, "gradcam": 9003, "summary": 9004}
_PUBLIC = ("file", "study_uid", "series_uid", "sop_uid", "modality", "status", "reason", "shape", "scope",
           "image_stats", "sr", "classification", "gradcam", "seconds", "outputs")


def _png_bytes(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def output_series_uid(study_uid: str, kind: str) -> str:
    """The UID of a study's output series of ``kind`` (a key of :data:`SERIES_NUMBERS`): a function of the two, so
    every run on the study's images adds to the same series."""
    from cxr_monai.dicom_out import derived_uid

    return derived_uid(study_uid, kind)


def report_uid(source_sop_uid: str) -> str:
    """The SOPInstanceUID of the report (finding, out of scope, or AI failed) of a source image: whether a PACS
    holds it says whether that image has its result."""
    from cxr_monai.dicom_out import result_uid

    return result_uid(source_sop_uid, SERIES_NUMBERS["report"])


def write_not_assessed(source, reason: str, output_folder: str | Path, *, image=None,
                       model_info: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The outputs of an image the AI did not assess because its processing failed: the coded "not assessed: AI
    processing failed" report with ``reason`` (:func:`cxr_monai.dicom_out.ai_failed_report`) and a summary SC with
    the same burned in above the image (``image``: ``(1, H, W)`` in ``[0, 1]``; ``None`` when it cannot be read:
    a grey field instead). Written under ``output_folder/<StudyInstanceUID>/``; returns {kind: path}, the report
    last (the PACS loop stores in that order: the report's presence means the result is complete).

    Args:
        source: the source SOP instance (pydicom Dataset; its header is enough).
        reason: why, one sentence without patient data.
        output_folder: where to write.
        image: the source's pixels as the app reads them, or ``None``.
        model_info: the classifier's ``model_name`` and ``version`` (default: unknown).
    """
    import numpy as np

    from cxr_monai import dicom_out as D
    from cxr_monai.burn_in import burn_in, finding_lines

    info = dict(model_info or {"model_name": "cxr_pneumonia_classifier", "version": "unknown"})
    study = str(source.StudyInstanceUID)
    folder = Path(output_folder) / study
    pixels = np.full((1, 512, 512), 0.5, dtype=np.float32) if image is None else image
    text = burn_in(pixels, finding_lines(None, info, failure_reason=reason), max_width=1024)
    card = D.summary_sc(source, text, info, title="AI pneumonia: not assessed (AI failed)",
                        series_uid=output_series_uid(study, "summary"), series_number=SERIES_NUMBERS["summary"])
    out = {"summary": str(D.write_dataset(card, folder / "summary" / f"{card.SOPInstanceUID}.dcm"))}
    report = D.ai_failed_report(source, reason, info, series_uid=output_series_uid(study, "report"),
                                series_number=SERIES_NUMBERS["report"])
    out["report"] = str(D.write_dataset(report, folder / "report" / f"{report.SOPInstanceUID}.dcm"))
    return out


def write_study_results(records: Sequence[dict[str, Any]], output_folder: str | Path, *,
                        run_info: Mapping[str, Any] | None = None, extra_skipped: Sequence[Mapping] = (),
                        rejected_files: Sequence[Mapping] = ()) -> dict[str, Any]:
    """Write every output of ``records`` (see ``deploy/cxr_enhance_classify/operators.py``) and
    ``results.json``; returns the summary written there.

    A record whose writing fails is marked ``failed`` with the reason; files already renamed for it stay
    (they are complete), no partial file is left.
    """
    from cxr_monai import dicom_out as D
    from cxr_monai.burn_in import burn_in, finding_lines

    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    series_uids: dict[tuple[str, str], str] = {}
    counters: dict[tuple[str, str], int] = {}

    def series(study: str, kind: str) -> tuple[str, int]:
        key = (study, kind)
        if key not in series_uids:
            series_uids[key] = output_series_uid(study, kind)
        counters[key] = counters.get(key, 0) + 1
        return series_uids[key], counters[key]

    for rec in records:
        if rec.get("status") not in ("ok", "out_of_scope") or "dataset" not in rec:
            continue
        in_scope = rec["status"] == "ok"
        start = time.perf_counter()
        ds, study = rec["dataset"], rec["study_uid"]
        folder = out / study
        outputs: dict[str, str] = {}
        try:
            evidence = []
            if "enhanced" in rec:
                uid, n = series(study, "enhanced")
                sc = D.enhanced_image_sc(ds, rec["enhanced"], {**rec["sr"], "model_name": rec["sr"]["model"],
                                                               "scale": 4},
                                         series_uid=uid, series_number=SERIES_NUMBERS["enhanced"], instance_number=n)
                outputs["enhanced"] = str(D.write_dataset(sc, folder / "enhanced" / f"{sc.SOPInstanceUID}.dcm"))
                evidence.append(sc)
            # an out-of-scope image gets a report that says it was not assessed and why (no finding)
            cls = rec["classification"] if in_scope else {}
            info = {"model_name": rec["scope"].get("classifier", "cxr_pneumonia_classifier"),
                    "version": rec["scope"].get("classifier_version", "unknown")} if not in_scope else \
                {"model_name": cls["model"], "version": cls["version"]}
            uid, n = series(study, "report")
            report = D.pneumonia_report(ds, cls, info, sr_applied="enhanced" in rec, series_uid=uid,
                                        series_number=SERIES_NUMBERS["report"], instance_number=n, evidence=evidence,
                                        probability_unenhanced=cls.get("probability_unenhanced"),
                                        scope_reason=None if in_scope else rec["reason"])
            outputs["report"] = str(D.write_dataset(report, folder / "report" / f"{report.SOPInstanceUID}.dcm"))
            if "overlay" in rec:
                uid, n = series(study, "gradcam")
                lines = finding_lines(cls, info, cam_class=(rec.get("gradcam") or {}).get("class"))
                annotated = burn_in(rec["overlay"], lines)
                ov = D.overlay_sc(ds, annotated, info, series_uid=uid, series_number=SERIES_NUMBERS["gradcam"],
                                  instance_number=n)
                outputs["gradcam"] = str(D.write_dataset(ov, folder / "gradcam" / f"{ov.SOPInstanceUID}.dcm"))
                outputs["gradcam_png"] = str(D.write_bytes(_png_bytes(annotated),
                                                           folder / "gradcam" / f"{ov.SOPInstanceUID}.png"))
            if not in_scope:  # no Grad-CAM: the "not assessed" and its reason, burned in where any viewer shows it
                uid, n = series(study, "summary")
                text = burn_in(rec["image"], finding_lines(None, info, scope_reason=rec["reason"]), max_width=1024)
                card = D.summary_sc(ds, text, info, title="AI pneumonia: not assessed", series_uid=uid,
                                    series_number=SERIES_NUMBERS["summary"], instance_number=n)
                outputs["summary"] = str(D.write_dataset(card, folder / "summary" / f"{card.SOPInstanceUID}.dcm"))
        except Exception as err:  # noqa: BLE001 - one image's failure must not stop the others
            rec["status"], rec["reason"] = "failed", f"write: {type(err).__name__}: {err}"
            logger.error("writing the results of %s failed: %s", rec.get("file") or rec.get("sop_uid"), err)
        rec["outputs"] = outputs
        rec.setdefault("seconds", {})["write"] = round(time.perf_counter() - start, 4)

    images = [{k: r.get(k) for k in _PUBLIC if k in r} for r in records]
    # files the DICOM loader could not turn into an instance (truncated, corrupt) failed as images
    images += [{"file": f.get("file"), "sop_uid": f.get("sop_uid"), "status": "failed", "reason": f.get("reason")}
               for f in rejected_files if f.get("status") == "failed"]
    rejected_files = [f for f in rejected_files if f.get("status") != "failed"]
    counts = {s: sum(1 for r in images if r["status"] == s) for s in ("ok", "out_of_scope", "skipped", "failed")}
    from cxr_monai.scope import INTENDED_USE

    summary = {
        "run": dict(run_info or {}),
        "intended_use": INTENDED_USE,
        "counts": {**counts, "series_not_selected": len(extra_skipped), "files_rejected": len(rejected_files)},
        "images": images,
        "series_not_selected": [dict(s) for s in extra_skipped],
        "files_rejected": [dict(f) for f in rejected_files],
        "output_series": [{"study_uid": s, "kind": k, "series_uid": u, "series_number": SERIES_NUMBERS[k]}
                          for (s, k), u in series_uids.items()],
    }
    D.write_bytes(json.dumps(summary, indent=2, default=str).encode(), out / "results.json")
    logger.info("results: %s (%s)", out / "results.json", summary["counts"])
    return summary
