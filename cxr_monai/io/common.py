"""The image contract's shared pieces: :class:`CXRInputError`, the pixel limit, the supported file endings, and
the checks and metadata every reader applies (see :mod:`cxr_monai.io`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000
"""Default pixel limit (50 megapixels): larger images are refused from their header."""

SUPPORTED_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
"""File name endings :func:`load_cxr` accepts; a file without suffix, or any file carrying the
``DICM`` magic at byte 128, is read as DICOM."""

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")

# Patient/study attributes carried in meta["dicom_tags"].
_DICOM_TAG_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "BodyPartExamined", "Laterality",
    "ViewPosition", "PatientOrientation", "LossyImageCompression",
)


class CXRInputError(ValueError):
    """An input file that cannot be read as a chest radiograph under the image contract.

    The message names the file and the reason, e.g. ``cannot load 'x.dcm': multi-frame DICOM``.

    Args:
        path: the offending file (or object description).
        reason: why it was refused.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"cannot load {self.path!r}: {reason}")

    def __reduce__(self) -> tuple:
        # keep the exception picklable (DataLoader workers send it across processes)
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------- helpers


def _check_max_pixels(max_pixels: int) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return int(max_pixels)


def _kind(path: Path) -> str:
    """``dicom``/``png``/``jpeg``/``tiff``/``nifti`` from the DICOM magic, else from the file name's ending."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        raise CXRInputError(path, f"cannot open file ({err.strerror or err})") from err
    if len(head) == 132 and head[128:] == b"DICM":
        return "dicom"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(_DICOM_SUFFIXES) or path.suffix == "":
        return "dicom"
    raise CXRInputError(
        path,
        f"unsupported file type {path.suffix!r}; expected DICOM, PNG, JPEG, TIFF or NIfTI "
        f"({', '.join(SUPPORTED_SUFFIXES)})",
    )


def _check_size(path: Path, rows: int, cols: int, max_pixels: int) -> None:
    if rows <= 0 or cols <= 0:
        raise CXRInputError(path, f"zero-size image ({rows} x {cols})")
    if rows * cols > max_pixels:
        raise CXRInputError(
            path,
            f"image of {rows} x {cols} = {rows * cols / 1e6:.1f} megapixels exceeds the pixel limit of "
            f"{max_pixels / 1e6:g} megapixels (max_pixels={max_pixels})",
        )


def _minmax(path: Path, x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        raise CXRInputError(path, f"constant image (every pixel is {lo:g}): nothing to see")
    return (x - lo) / (hi - lo)


def _check_finite(path: Path, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise CXRInputError(path, f"pixel data contain {n_nan} NaN and {n_inf} infinite values")


def _base_meta(path: Path, fmt: str) -> dict[str, Any]:
    return {
        "spacing": None,
        "spacing_source": None,
        "bits_stored": None,
        "photometric": None,
        "modality": None,
        "body_part": None,
        "filename_or_obj": str(path),
        "study_uid": None,
        "series_uid": None,
        "sop_uid": None,
        "sop_class_uid": None,
        "original_shape": None,
        "format": fmt,
        "intensity": None,
        "inverted": False,
        "transfer_syntax": None,
        "colourfulness": 0.0,
        "dicom_tags": {k: "" for k in _DICOM_TAG_KEYWORDS},
    }


def _positive_pair(value: Any) -> tuple[float, float] | None:
    """``(a, b)`` as floats when ``value`` holds two finite positive numbers, else ``None``."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        return None
    return (a, b)


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None
