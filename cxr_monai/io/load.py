"""Loading a radiograph of any supported format (:func:`load_cxr`), its MONAI transforms (:class:`LoadCXR`,
:class:`LoadCXRd`) and the PNG writer (:func:`save_png`); see :mod:`cxr_monai.io` for the contract."""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from pydicom.dataset import Dataset

from cxr_monai.io.common import DEFAULT_MAX_PIXELS, CXRInputError, _check_finite, _check_max_pixels, _kind
from cxr_monai.io.read_dicom import _read_dicom
from cxr_monai.io.read_raster import _read_nifti, _read_pil


def load_cxr(path: str | os.PathLike | Dataset, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a chest radiograph as a ``(1, H, W)`` float32 array in ``[0, 1]``, display orientation.

    See the module docstring for the formats and the intensity rules.

    Args:
        path: DICOM (``.dcm``/``.dicom``/no suffix, or any file with the DICM magic), PNG, JPEG,
            TIFF or NIfTI (``.nii``/``.nii.gz``) file; or a pydicom ``Dataset`` already read (e.g. a SOP
            instance handed over by the MONAI Deploy loader), decoded with exactly the same rules
            (``meta["filename_or_obj"]`` is then its ``filename`` or its SOP Instance UID).
        max_pixels: refuse images with more than this many pixels (rows x columns), checked from
            the file's header before any pixel is decoded.

    Returns:
        ``(image, meta)``: the image and its metadata dict (keys listed in the module docstring;
        ``spacing``, UIDs, ``modality`` and ``body_part`` are ``None`` when unknown).

    Raises:
        CXRInputError: the file is missing, unreadable, truncated, of an unsupported type, colour
            DICOM, multi-frame or 3D, zero-size, over the pixel limit, constant, or holds NaN/inf.
        ValueError: ``max_pixels`` is not a positive integer.
    """
    max_pixels = _check_max_pixels(max_pixels)
    if isinstance(path, Dataset):
        name = getattr(path, "filename", None) or f"SOPInstanceUID={path.get('SOPInstanceUID', '?')}"
        name = name if isinstance(name, str) else str(name)
        arr, meta = _read_dicom(Path(name), max_pixels, ds=path)
        _check_finite(Path(name), arr)
        return np.ascontiguousarray(np.clip(arr, 0.0, 1.0).astype(np.float32)[None]), meta
    if not isinstance(path, (str, os.PathLike)):
        raise CXRInputError(repr(path)[:200], f"expected a file path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise CXRInputError(p, "file not found")
    if p.is_dir():
        raise CXRInputError(p, "is a directory; pass one image file (DICOM series folders are not supported)")
    if p.stat().st_size == 0:
        raise CXRInputError(p, "empty file (0 bytes)")
    kind = _kind(p)
    if kind == "dicom":
        arr, meta = _read_dicom(p, max_pixels)
    elif kind == "nifti":
        arr, meta = _read_nifti(p, max_pixels)
    else:
        arr, meta = _read_pil(p, kind, max_pixels)
    _check_finite(p, arr)
    image = np.clip(arr, 0.0, 1.0).astype(np.float32)[None]
    return np.ascontiguousarray(image), meta


def _collatable_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Meta for a MetaTensor: ``None`` becomes ``""`` (``(nan, nan)`` for spacing) so batches of
    mixed sources collate with torch's ``default_collate``, which refuses ``None``."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            value = (math.nan, math.nan) if key == "spacing" else ""
        out[key] = value
    return out


class LoadCXR(Transform):
    """Load a radiograph file into a :class:`~monai.data.MetaTensor` ``(1, H, W)`` (see :func:`load_cxr`).

    The tensor's meta holds everything :func:`load_cxr` returns, with ``None`` replaced by ``""``
    (``spacing`` by ``(nan, nan)``) so batches collate, plus MONAI's keys: ``affine`` (4x4,
    ``diag(row_mm, col_mm, 1, 1)`` when the spacing is known, identity otherwise),
    ``spatial_shape`` and ``original_channel_dim = 0`` (already channel-first, so a later
    ``EnsureChannelFirst`` is a no-op).

    Inside :class:`monai.transforms.Compose` a :class:`CXRInputError` reaches the caller as MONAI's
    ``RuntimeError`` whose ``__cause__`` is the :class:`CXRInputError`.

    Args:
        max_pixels: refuse images with more pixels than this (checked from the header).
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = _check_max_pixels(max_pixels)

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        """Load ``filename``.

        Args:
            filename: path of the image file.
        """
        image, meta = load_cxr(filename, max_pixels=self.max_pixels)
        meta = _collatable_meta(meta)
        affine = np.eye(4)
        spacing = meta["spacing"]
        if not any(math.isnan(s) for s in spacing):
            affine[0, 0], affine[1, 1] = spacing
        meta.update(
            affine=torch.as_tensor(affine, dtype=torch.float64),
            original_affine=affine.copy(),
            spatial_shape=np.asarray(image.shape[1:]),
            original_channel_dim=0,
        )
        return MetaTensor(torch.from_numpy(image), meta=meta)


class LoadCXRd(MapTransform):
    """Dictionary wrapper of :class:`LoadCXR`: replaces each path under ``keys`` by its MetaTensor.

    Usable in bundle configs as ``{"_target_": "cxr_monai.io.LoadCXRd", "keys": ["image"]}``.

    Args:
        keys: keys of the items holding file paths.
        max_pixels: refuse images with more pixels than this (checked from the header).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXR(max_pixels=max_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key of ``data`` listed in ``keys``.

        Args:
            data: a mapping holding file paths under ``keys``.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


LoadCXRD = LoadCXRDict = LoadCXRd


# ------------------------------------------------------------------------------------------- writers


def _as_2d(image: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: image must be (1, H, W) or (H, W) and non-empty, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: image contains NaN or infinite values")
    return np.clip(arr, 0.0, 1.0)


def save_png(path: str | os.PathLike, image: np.ndarray | torch.Tensor, bits: int = 16) -> Path:
    """Write a ``[0, 1]`` image as a grayscale PNG (values clipped to ``[0, 1]``, then rounded to
    ``bits``); :func:`load_cxr` reads it back to within half a grey level.

    Args:
        path: output file (parent folders are created).
        image: ``(1, H, W)`` or ``(H, W)`` array or tensor in ``[0, 1]``.
        bits: 16 (``I;16``, values x 65535) or 8 (``L``, values x 255).

    Returns:
        The written path.

    Raises:
        ValueError: bad ``bits``, bad shape, or NaN/inf values.
    """
    from PIL import Image

    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    arr = _as_2d(image, f"save_png({path})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        Image.fromarray(np.round(arr * 65535.0).astype(np.uint16)).save(path, format="PNG")
    else:
        Image.fromarray(np.round(arr * 255.0).astype(np.uint8), mode="L").save(path, format="PNG")
    return path
