"""The enhanced image: the 4x super-resolved radiograph as a 16-bit MONOCHROME2 Secondary Capture in the source's
study, referencing the source (series 9001). Also what the SR bundle writes for a DICOM source.

Spacing of the new grid: when the source has PixelSpacing (calibrated, in the patient), the enhanced image gets
``PixelSpacing / scale``; when it has only ImagerPixelSpacing (at the detector), that value is not a patient-plane
spacing and the Secondary Capture IOD has no detector-spacing attribute, so the scaled value goes to
NominalScannedPixelSpacing (0018,2010: spacing on the captured medium) and PixelSpacing is left out. Never the
detector spacing relabelled as PixelSpacing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cxr_monai.dicom.build import secondary_capture
from cxr_monai.dicom.codes import NOT_FOR_DIAGNOSIS
from cxr_monai.dicom.kinds import Built, OutputKind
from cxr_monai.records import ImageRecord

__all__ = ["EnhancedImage", "enhanced_image_sc"]


class EnhancedImage(OutputKind):
    """The enhanced image of a record that was super-resolved; the report refers to it."""

    name = "enhanced"
    series_number = 9001
    title = "AI-enhanced 4x"
    evidence = True
    scale = 4

    @classmethod
    def series_description(cls, title: str | None = None, scale: int | None = None) -> str:
        """``AI-enhanced <scale>x - NOT FOR PRIMARY DIAGNOSIS``."""
        return super().series_description(title or f"AI-enhanced {int(scale or cls.scale)}x")

    def applies(self, record: ImageRecord) -> bool:
        return record.enhanced is not None

    def build(self, record: ImageRecord, *, series_uid: str, instance_number: int,
              evidence: list[Dataset]) -> Built:
        sr = record.sr or {}
        info = {**sr, "model_name": sr.get("model"), "scale": self.scale}
        return Built(enhanced_image_sc(record.dataset, record.enhanced, info, series_uid=series_uid,
                                       series_number=self.series_number, instance_number=instance_number))


def _spacing_pair(value: Any) -> tuple[float, float] | None:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (a, b) if a > 0 and b > 0 else None


def enhanced_image_sc(source: Dataset, image: np.ndarray, model_info: Mapping[str, Any], *, series_uid: str,
                      series_number: int = EnhancedImage.series_number, instance_number: int = 1) -> hd.sc.SCImage:
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
    scale = int(model_info.get("scale", 4))
    sc = secondary_capture(source, pixels, "MONOCHROME2", 16, series_uid, series_number, instance_number,
                           EnhancedImage.series_description(scale=scale),
                           pixel_spacing=(patient_spacing[0] * fy, patient_spacing[1] * fx) if patient_spacing
                           else None)
    if patient_spacing is None and detector_spacing is not None:
        sc.NominalScannedPixelSpacing = [f"{detector_spacing[0] * fy:.6g}", f"{detector_spacing[1] * fx:.6g}"]
    sha = str(model_info.get("weights_sha256") or "")
    sc.DerivationDescription = (f"{scale}x super-resolution by {name} (cxr_monai"
                                + (f", weights sha256 {sha[:12]}" if sha else "")
                                + f"); AI-enhanced, {NOT_FOR_DIAGNOSIS.lower()}")[:1024]
    sc.BurnedInAnnotation = "NO"
    sc.WindowCenter, sc.WindowWidth = "32768", "65536"
    return sc
