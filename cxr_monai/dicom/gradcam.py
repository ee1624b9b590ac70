"""The Grad-CAM overlay: the heat map of the predicted class blended over the source image, with the finding burned in
above it, as an RGB Secondary Capture (BurnedInAnnotation YES, series 9003) and the same picture as PNG."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cxr_monai.dicom.build import rgb_secondary_capture
from cxr_monai.dicom.burn_in import burn_in, finding_lines
from cxr_monai.dicom.kinds import Built, OutputKind
from cxr_monai.records import ImageRecord

__all__ = ["GradCAMOverlay", "overlay_sc", "png_bytes"]


class GradCAMOverlay(OutputKind):
    """The overlay of an assessed record, with its PNG (output key ``gradcam_png``)."""

    name = "gradcam"
    series_number = 9003
    title = "AI Grad-CAM pneumonia"

    def applies(self, record: ImageRecord) -> bool:
        return record.overlay is not None

    def build(self, record: ImageRecord, *, series_uid: str, instance_number: int,
              evidence: list[Dataset]) -> Built:
        info = record.classifier_info()
        cls = record.classification if record.in_scope else {}
        lines = finding_lines(cls, info, cam_class=(record.gradcam or {}).get("class"))
        annotated = burn_in(record.overlay, lines)
        ds = overlay_sc(record.dataset, annotated, info, series_uid=series_uid, series_number=self.series_number,
                        instance_number=instance_number)
        return Built(ds, {"gradcam_png": (".png", png_bytes(annotated))})


def png_bytes(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB as a PNG file's bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def overlay_sc(source: Dataset, rgb: np.ndarray, model_info: Mapping[str, Any], *, series_uid: str,
               series_number: int = GradCAMOverlay.series_number, instance_number: int = 1) -> hd.sc.SCImage:
    """The Grad-CAM overlay (``(H, W, 3)`` uint8 RGB) as a Secondary Capture with burned-in annotation."""
    return rgb_secondary_capture(source, rgb, model_info, "overlay", GradCAMOverlay.series_description(),
                                 "Grad-CAM heat map of {} (cxr_monai) blended over the image", series_uid,
                                 series_number, instance_number)
