"""DICOM result objects built with highdicom: the enhanced image, the Grad-CAM overlay, the finding.

* :func:`enhanced_image_sc` — the 4x enhanced radiograph as a 16-bit grayscale Secondary Capture,
  in the source's study, referencing the source in SourceImageSequence.
* :func:`overlay_sc` — the Grad-CAM overlay as an RGB Secondary Capture (BurnedInAnnotation YES).
* :func:`summary_sc` — the AI result burned into an RGB Secondary Capture (BurnedInAnnotation YES).
* :func:`pneumonia_report` — a Comprehensive SR (TID 1500 Measurement Report) with the coded finding
  (SCT Pneumonia / Normal), the calibrated probability, the threshold, whether SR was applied, and the
  algorithm (name, version) as a device observer; VerificationFlag UNVERIFIED.
* :func:`write_dataset` — write a dataset atomically (temporary name in the same folder, then rename).

Spacing of the new grid: when the source has PixelSpacing (calibrated, in the patient), the enhanced
image gets ``PixelSpacing / scale``; when it has only ImagerPixelSpacing (at the detector), that value
is not a patient-plane spacing and the Secondary Capture IOD has no detector-spacing attribute, so the
scaled value goes to NominalScannedPixelSpacing (0018,2010: spacing on the captured medium) and
PixelSpacing is left out. Never the detector spacing relabelled as PixelSpacing.

UIDs are generated under :data:`UID_ROOT` (environment ``CXR_MONAI_UID_ROOT``; default pydicom's
root ``1.2.826.0.1.3680043.8.498.``): a site replaces it with its own organisation root. An output object's
SOPInstanceUID is derived from its source's SOPInstanceUID and its series number (:func:`derived_uid`), and an output
series' UID from the StudyInstanceUID and the output kind: running the app twice on the same image gives the same
objects, so a PACS that stores both runs keeps one result per source image (the PACS loop relies on it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

__all__ = [
    "UID_ROOT",
    "MANUFACTURER",
    "new_uid",
    "derived_uid",
    "result_uid",
    "ai_failed_report",
    "enhanced_image_sc",
    "overlay_sc",
    "summary_sc",
    "pneumonia_report",
    "write_dataset",
    "PNEUMONIA",
    "PNEUMONIA_PROBABILITY",
]

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


def new_uid() -> str:
    """A new UID under :data:`UID_ROOT`."""
    return generate_uid(prefix=UID_ROOT)


def derived_uid(*parts: str) -> str:
    """A UID under :data:`UID_ROOT` that is a function of ``parts`` (a hash): the same parts, the same UID."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[UID_ROOT, *map(str, parts)])


def result_uid(source_sop_uid: str, series_number: int) -> str:
    """The SOPInstanceUID of the output of series ``series_number`` (the output kind) made from a source image."""
    return derived_uid(source_sop_uid, int(series_number))


def header_copy(source: Dataset) -> Dataset:
    """A copy of the source header without pixel data, with values that would make the derived objects
    non-conformant dropped (an Age String that is not ``nnnD/W/M/Y``)."""
    import re

    ds = Dataset()
    for elem in source:
        if elem.tag.group == 0x7FE0:
            continue
        ds.add(elem)
    ds.file_meta = getattr(source, "file_meta", Dataset())
    if "PatientAge" in ds and not re.fullmatch(r"\d{3}[DWMY]", str(ds.PatientAge or "")):
        del ds.PatientAge
    return ds


def _orientation(source: Dataset) -> tuple[str, str] | None:
    po = source.get("PatientOrientation")
    if po is None:
        return None
    vals = [str(po)] if isinstance(po, str) else [str(v) for v in po]  # MultiValue for two values
    if len(vals) != 2 or not all(vals):
        return None
    try:
        return tuple(hd.PatientOrientationValuesBiped(v).value for v in vals)  # type: ignore[return-value]
    except ValueError:
        return None


def _laterality(source: Dataset) -> str | None:
    lat = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "").strip().upper()
    return lat if lat in ("L", "R") else None


def _sc(source: Dataset, pixels: np.ndarray, photometric: str, bits: int, series_uid: str, series_number: int,
        instance_number: int, series_description: str, pixel_spacing: tuple[float, float] | None = None
        ) -> hd.sc.SCImage:
    source = header_copy(source)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=bits,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=int(series_number),
        sop_instance_uid=result_uid(source.SOPInstanceUID, series_number),
        instance_number=int(instance_number),
        manufacturer=MANUFACTURER,
        pixel_spacing=pixel_spacing,
        laterality=_laterality(source),
        # the SC IOD needs an orientation for PATIENT coordinates; unknown stays empty (type 2C) below
        patient_orientation=orientation or ("L", "F"),
        series_description=series_description[:64],
    )
    if orientation is None:
        sc.PatientOrientation = None
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    lossy = str(source.get("LossyImageCompression", "00")) == "01" or str(
        getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", "")) in _LOSSY
    sc.LossyImageCompression = "01" if lossy else "00"
    return sc


_LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91",
          "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.203"}


def _spacing_pair(value: Any) -> tuple[float, float] | None:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (a, b) if a > 0 and b > 0 else None


def enhanced_image_sc(source: Dataset, image: np.ndarray, model_info: Mapping[str, Any], *, series_uid: str,
                      series_number: int, instance_number: int = 1) -> hd.sc.SCImage:
    """The enhanced image as a 16-bit MONOCHROME2 Secondary Capture in the source's study.

    Args:
        source: the source SOP instance (header is enough).
        image: ``(1, H, W)`` or ``(H, W)`` in ``[0, 1]`` (stored as ``round(x * 65535)``).
        model_info: the SR model's embedded metadata (``model_name``, ``version``, ``scale``).
        series_uid: the output series (one per study for this output kind).
        series_number: its SeriesNumber.
        instance_number: InstanceNumber within the series.
    """
    arr = np.asarray(image, dtype=np.float64).reshape(np.asarray(image).shape[-2:])
    pixels = np.round(np.clip(arr, 0.0, 1.0) * 65535.0).astype(np.uint16)
    rows0, cols0 = int(source.Rows), int(source.Columns)
    fy, fx = rows0 / pixels.shape[0], cols0 / pixels.shape[1]
    patient_spacing = _spacing_pair(source.get("PixelSpacing"))
    detector_spacing = _spacing_pair(source.get("ImagerPixelSpacing"))
    name = f"{model_info.get('model_name', 'SR')} {model_info.get('version', '')}".strip()
    sc = _sc(source, pixels, "MONOCHROME2", 16, series_uid, series_number, instance_number,
             f"AI-enhanced {int(model_info.get('scale', 4))}x - {NOT_FOR_DIAGNOSIS}",
             pixel_spacing=(patient_spacing[0] * fy, patient_spacing[1] * fx) if patient_spacing else None)
    if patient_spacing is None and detector_spacing is not None:
        sc.NominalScannedPixelSpacing = [f"{detector_spacing[0] * fy:.6g}", f"{detector_spacing[1] * fx:.6g}"]
    sha = str(model_info.get("weights_sha256") or "")
    sc.DerivationDescription = (f"{int(model_info.get('scale', 4))}x super-resolution by {name} (cxr_monai"
                                + (f", weights sha256 {sha[:12]}" if sha else "")
                                + f"); AI-enhanced, {NOT_FOR_DIAGNOSIS.lower()}")[:1024]
    sc.BurnedInAnnotation = "NO"
    sc.WindowCenter, sc.WindowWidth = "32768", "65536"
    return sc


def overlay_sc(source: Dataset, rgb: np.ndarray, model_info: Mapping[str, Any], *, series_uid: str,
               series_number: int, instance_number: int = 1) -> hd.sc.SCImage:
    """The Grad-CAM overlay (``(H, W, 3)`` uint8 RGB) as a Secondary Capture with burned-in annotation."""
    return _rgb_sc(source, rgb, model_info, "overlay", f"AI Grad-CAM pneumonia - {NOT_FOR_DIAGNOSIS}",
                   "Grad-CAM heat map of {} (cxr_monai) blended over the image", series_uid, series_number,
                   instance_number)


def _rgb_sc(source: Dataset, rgb: np.ndarray, model_info: Mapping[str, Any], what: str, description: str,
            derivation: str, series_uid: str, series_number: int, instance_number: int) -> hd.sc.SCImage:
    """An RGB Secondary Capture with burned-in annotation; ``derivation`` has one ``{}`` for the model's name."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{what} must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    sc = _sc(source, rgb, "RGB", 8, series_uid, series_number, instance_number, description)
    name = f"{model_info.get('model_name', 'classifier')} {model_info.get('version', '')}".strip()
    sc.DerivationDescription = derivation.format(name)[:1024]
    sc.BurnedInAnnotation = "YES"
    return sc


def summary_sc(source: Dataset, rgb: np.ndarray, model_info: Mapping[str, Any], *, title: str, series_uid: str,
               series_number: int, instance_number: int = 1) -> hd.sc.SCImage:
    """An RGB Secondary Capture whose pixels carry the AI result as burned-in text (``rgb`` from
    :func:`cxr_monai.burn_in.burn_in`), for images that get no Grad-CAM overlay (e.g. "not assessed" and why).

    Args:
        source: the source SOP instance (header is enough).
        rgb: ``(H, W, 3)`` uint8.
        model_info: the classifier's ``model_name`` and ``version``.
        title: the series description, before `` - NOT FOR PRIMARY DIAGNOSIS``.
        series_uid: the output series (one per study).
        series_number: its SeriesNumber.
        instance_number: InstanceNumber within the series.
    """
    suffix = f" - {NOT_FOR_DIAGNOSIS}"
    return _rgb_sc(source, rgb, model_info, "summary image", f"{title[:64 - len(suffix)]}{suffix}",
                   "Result of {} (cxr_monai) burned in as text above the source image", series_uid, series_number,
                   instance_number)


def pneumonia_report(source: Dataset, result: Mapping[str, Any], model_info: Mapping[str, Any], *,
                     sr_applied: bool, series_uid: str, series_number: int, instance_number: int = 1,
                     evidence: Sequence[Dataset] = (), probability_unenhanced: float | None = None,
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
    from cxr_monai.scope import INTENDED_USE

    source = header_copy(source)
    name = str(model_info.get("model_name", "cxr_pneumonia_classifier"))
    version = str(model_info.get("version", "unknown"))
    params = [f"sr_applied={'yes' if sr_applied else 'no'}"]
    if scope_reason is None:
        params.insert(0, f"threshold={float(result['threshold']):.6g}")
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version, manufacturer=MANUFACTURER,
                                              parameters=params)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(), name=name, manufacturer_name=MANUFACTURER, model_name=f"{name} {version}"),
    )
    unit = codes.UCUM.NoUnits
    if scope_reason is not None:
        return _report(source, evidence, algorithm, observer, [], [
            hd.sr.QualitativeEvaluation(name=SCOPE_CHECK, value=OUT_OF_SCOPE_NOT_ASSESSED),
            hd.sr.QualitativeEvaluation(name=SR_APPLIED, value=codes.SCT.Yes if sr_applied else codes.SCT.No),
        ], [(SCOPE_REASON, str(scope_reason)), (INTENDED_USE_TEXT, INTENDED_USE)], series_uid, series_number,
            instance_number)
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
        hd.sr.QualitativeEvaluation(name=SR_APPLIED, value=codes.SCT.Yes if sr_applied else codes.SCT.No),
        hd.sr.QualitativeEvaluation(name=SCOPE_CHECK, value=IN_SCOPE),
    ]
    from cxr_monai.commissioning import describe_calibration

    texts = [(INTENDED_USE_TEXT, INTENDED_USE), (CALIBRATION_TEXT, describe_calibration(result.get("calibration")))]
    return _report(source, evidence, algorithm, observer, measurements, evaluations, texts, series_uid,
                   series_number, instance_number)


def ai_failed_report(source: Dataset, reason: str, model_info: Mapping[str, Any], *, series_uid: str,
                     series_number: int, instance_number: int = 1) -> hd.sr.ComprehensiveSR:
    """The report of an image the AI did not assess because its processing failed (the app failed or timed out
    after every retry, or could not read the image): no finding, no probability; the coded "not assessed: AI
    processing failed" and the reason as text. Same SOPInstanceUID as the finding report would have had, so an
    image has one report whatever happened.

    Args:
        source: the source SOP instance (header is enough).
        reason: why (one sentence, no patient data).
        model_info: the classifier's ``model_name`` and ``version``.
        series_uid, series_number, instance_number: as :func:`pneumonia_report`.
    """
    from cxr_monai.scope import INTENDED_USE

    source = header_copy(source)
    name = str(model_info.get("model_name", "cxr_pneumonia_classifier"))
    version = str(model_info.get("version", "unknown"))
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version, manufacturer=MANUFACTURER)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(), name=name, manufacturer_name=MANUFACTURER, model_name=f"{name} {version}"),
    )
    return _report(source, (), algorithm, observer, [],
                   [hd.sr.QualitativeEvaluation(name=AI_PROCESSING, value=AI_FAILED_NOT_ASSESSED)],
                   [(SCOPE_REASON, str(reason)), (INTENDED_USE_TEXT, INTENDED_USE)], series_uid, series_number,
                   instance_number)


def _report(source: Dataset, evidence: Sequence[Dataset], algorithm, observer, measurements: list,
            evaluations: list, texts: Sequence[tuple[Code, str]], series_uid: str, series_number: int,
            instance_number: int) -> hd.sr.ComprehensiveSR:
    """The TID 1500 report of one image: one measurement group (+ text items), UNVERIFIED."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier="pneumonia classification"),
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    for name, value in texts:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source, *evidence],
        content=report,
        series_instance_uid=series_uid,
        series_number=int(series_number),
        sop_instance_uid=result_uid(source.SOPInstanceUID, series_number),
        instance_number=int(instance_number),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"AI pneumonia finding - {NOT_FOR_DIAGNOSIS}",  # one per series, whatever the scope
    )


def _write_atomic(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it to ``path``; the temporary
    file is removed when ``write`` fails, so a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary name in the same folder, then renamed)."""
    return _write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`write_dataset`)."""
    return _write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
