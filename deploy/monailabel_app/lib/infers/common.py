"""What both CXR infer tasks share: the request's image decoded through :func:`cxr_monai.io.load_cxr`, the
chest/frontal check of :func:`cxr_monai.io.skip_reason`, typed request errors, result files.

Nothing here preprocesses: each task hands the ``(1, H, W)`` image of the cxr_monai image contract to
:mod:`cxr_monai.inference`, which holds the one preprocessing definition per model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cxr_monai.io import CXRInputError, load_cxr, skip_reason

__all__ = ["InferRequestError", "load_request_image", "image_summary", "result_file"]


class InferRequestError(Exception):
    """A request the server cannot answer for a reason of the input, with the HTTP status to answer.

    The app (``main.py``) turns it into an HTTP error whose ``detail`` is the message.

    Args:
        status: HTTP status (404: no such image; 422: the image cannot be read or must not reach the models).
        message: the reason, naming the image.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = int(status)
        self.message = message
        super().__init__(message)


def _dicom_series_file(folder: Path, image_id: str) -> Path:
    """The one instance of a series folder (how the DICOMweb datastore hands over a series)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InferRequestError(404, f"image {image_id!r}: the series has no instances")
    if len(files) > 1:
        raise InferRequestError(
            422, f"image {image_id!r}: the series holds {len(files)} instances; the CXR tasks read a series of "
                 "one radiograph (one SOP instance)")
    return files[0]


def load_request_image(request: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the image of an infer request with :func:`cxr_monai.io.load_cxr` and refuse what the chest
    models must not read (:func:`cxr_monai.io.skip_reason`: a stated non-chest body part, a non-projection
    modality, a lateral view).

    Args:
        request: the infer request; ``image`` is the resolved local path (a file, or the folder of a DICOMweb
            series), ``image_id`` the id the client asked for (set by the app, used in messages).

    Returns:
        ``(image, meta)`` as :func:`cxr_monai.io.load_cxr` returns them.

    Raises:
        InferRequestError: 404 when there is nothing at the path, 422 when the file cannot be read as a
            radiograph or must not reach the models.
    """
    image_id = str(request.get("image_id") or request.get("image"))
    path = Path(str(request.get("image", "")))
    if not str(request.get("image", "")) or not path.exists():
        raise InferRequestError(404, f"image {image_id!r} not found")
    if path.is_dir():
        path = _dicom_series_file(path, image_id)
    try:
        image, meta = load_cxr(path)
    except CXRInputError as err:
        raise InferRequestError(422, f"image {image_id!r} cannot be read: {err.reason}") from err
    reason = skip_reason(meta)
    if reason is not None:
        raise InferRequestError(422, f"image {image_id!r} refused: {reason}")
    return image, meta


def image_summary(image: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """The input's description in a result: size, format, and the DICOM identifiers when there are some."""
    out: dict[str, Any] = {"shape": [int(image.shape[-2]), int(image.shape[-1])], "format": meta.get("format")}
    for key in ("modality", "body_part", "photometric", "study_uid", "series_uid", "sop_uid"):
        if meta.get(key):
            out[key] = meta[key]
    return out


def result_file(prefix: str, suffix: str = ".png") -> str:
    """A fresh temporary file name for a result image (MONAI Label deletes it once it is sent)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(fd)
    return name
