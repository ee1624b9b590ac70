"""The pieces every output kind builds with (highdicom): a header copy of the source, a Secondary Capture in the
source's study, a TID 1500 Comprehensive SR, and atomic writing (temporary name in the same folder, then rename)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxr_monai.dicom.codes import CHEST_XRAY, MANUFACTURER, new_uid, result_uid
from cxr_monai.io.read_dicom import LOSSY_SYNTAXES

__all__ = ["header_copy", "secondary_capture", "rgb_secondary_capture", "device_context", "measurement_report",
           "write_dataset", "write_bytes"]


def header_copy(source: Dataset) -> Dataset:
    """A copy of the source header without pixel data, with values that would make the derived objects
    non-conformant dropped (an Age String that is not ``nnnD/W/M/Y``)."""
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


def _identity(source: Dataset, series_uid: str, series_number: int, instance_number: int) -> dict[str, Any]:
    """The output object's place (highdicom keyword arguments): its series, its SOPInstanceUID (derived from the
    source's and the series number) and instance number, our manufacturer."""
    return {"series_instance_uid": series_uid, "series_number": int(series_number),
            "sop_instance_uid": result_uid(source.SOPInstanceUID, series_number),
            "instance_number": int(instance_number), "manufacturer": MANUFACTURER}


def secondary_capture(source: Dataset, pixels: np.ndarray, photometric: str, bits: int, series_uid: str,
                      series_number: int, instance_number: int, series_description: str,
                      pixel_spacing: tuple[float, float] | None = None) -> hd.sc.SCImage:
    """A Secondary Capture of ``pixels`` in the source's study (patient, study, laterality, orientation and body part
    copied; the source referenced in SourceImageSequence; LossyImageCompression carried over), SOPInstanceUID
    :func:`~cxr_monai.dicom.codes.result_uid` of the source and the series number."""
    source = header_copy(source)
    orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=bits,
        coordinate_system="PATIENT",
        **_identity(source, series_uid, series_number, instance_number),
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
        getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", "")) in LOSSY_SYNTAXES
    sc.LossyImageCompression = "01" if lossy else "00"
    return sc


def rgb_secondary_capture(source: Dataset, rgb: np.ndarray, model_info: Mapping[str, Any], what: str,
                          description: str, derivation: str, series_uid: str, series_number: int,
                          instance_number: int) -> hd.sc.SCImage:
    """An RGB Secondary Capture with burned-in annotation; ``derivation`` has one ``{}`` for the model's name."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{what} must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    sc = secondary_capture(source, rgb, "RGB", 8, series_uid, series_number, instance_number, description)
    name = f"{model_info.get('model_name', 'classifier')} {model_info.get('version', '')}".strip()
    sc.DerivationDescription = derivation.format(name)[:1024]
    sc.BurnedInAnnotation = "YES"
    return sc


def device_context(model_info: Mapping[str, Any], parameters: Sequence[str] | None = None
                   ) -> tuple[hd.sr.AlgorithmIdentification, hd.sr.ObserverContext]:
    """The classifier as the algorithm (name, version, ``parameters``) and as the device observer of a report."""
    name = str(model_info.get("model_name", "cxr_pneumonia_classifier"))
    version = str(model_info.get("version", "unknown"))
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version, manufacturer=MANUFACTURER,
                                              parameters=list(parameters) if parameters else None)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(), name=name, manufacturer_name=MANUFACTURER, model_name=f"{name} {version}"),
    )
    return algorithm, observer


def measurement_report(source: Dataset, evidence: Sequence[Dataset], algorithm, observer, measurements: list,
                       evaluations: list, texts: Sequence[tuple[Code, str]], series_uid: str, series_number: int,
                       instance_number: int, series_description: str) -> hd.sr.ComprehensiveSR:
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
        **_identity(source, series_uid, series_number, instance_number),
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
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
