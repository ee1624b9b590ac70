"""Decoding PNG, JPEG, TIFF and NIfTI 2D radiographs under the image contract (:mod:`cxr_monai.io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_monai.io.common import (CXRInputError, _base_meta, _check_finite, _check_size, _minmax, _positive_pair)

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
_BT601 = np.array([0.299, 0.587, 0.114])


def _read_pil(path: Path, kind: str, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image, ImageOps

    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise CXRInputError(path, f"image exceeds the pixel limit ({err})") from err
    except Exception as err:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise CXRInputError(path, f"not a readable {kind.upper()} file ({type(err).__name__}: {err})") from err
    with img:
        fmt = _PIL_FORMATS.get(img.format or "")
        if fmt is None:
            raise CXRInputError(path, f"file content is {img.format}, not PNG, JPEG or TIFF")
        width, height = img.size
        _check_size(path, height, width, max_pixels)
        if fmt in ("png", "tiff") and getattr(img, "n_frames", 1) > 1:
            raise CXRInputError(
                path, f"{fmt.upper()} with {img.n_frames} frames/pages: a radiograph must be one 2D image"
            )
        try:
            img.load()
            if fmt in ("jpeg", "tiff"):
                img = ImageOps.exif_transpose(img)
        except Exception as err:  # noqa: BLE001 - truncated/corrupt streams
            raise CXRInputError(path, f"cannot decode {fmt.upper()} data ({type(err).__name__}: {err})") from err
        mode = img.mode
        photometric = "MONOCHROME2"
        colourfulness = 0.0
        if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            arr, bits, rule = np.asarray(img).astype(np.float64) / 65535.0, 16, "divide_65535"
        elif mode == "I":
            raw = np.asarray(img)
            if raw.min() < 0 or raw.max() > 65535:
                raise CXRInputError(
                    path, f"32-bit integer image with values outside 0..65535 ({raw.min()}..{raw.max()})"
                )
            arr, bits, rule = raw.astype(np.float64) / 65535.0, 16, "divide_65535"
        elif mode == "F":  # float TIFF: kept when inside [0, 1], else min-max (the NIfTI rule)
            raw = np.asarray(img, dtype=np.float64)
            _check_finite(path, raw)
            if raw.min() >= 0.0 and raw.max() <= 1.0:
                arr, bits, rule = raw, 32, "unit_range"
            else:
                arr, bits, rule = _minmax(path, raw), 32, "minmax"
        elif mode == "1":
            arr, bits, rule = np.asarray(img, dtype=np.float64), 1, "unit_range"
        elif mode in ("L", "LA"):
            arr, bits, rule = np.asarray(img.getchannel("L"), dtype=np.float64) / 255.0, 8, "divide_255"
        elif mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr"):
            rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
            arr, bits, rule = rgb @ _BT601 / 255.0, 8, "divide_255"
            photometric = "RGB"
            # mean chroma (max - min channel, in [0, 1]): ~0 for a radiograph stored as RGB, > 0.05 for a photograph
            colourfulness = float((rgb.max(axis=2) - rgb.min(axis=2)).mean() / 255.0)
        else:
            raise CXRInputError(path, f"unsupported {fmt.upper()} pixel mode {mode!r}")
    if arr.shape != (height, width):
        raise CXRInputError(path, f"decoded shape {arr.shape} differs from the header's ({height}, {width})")
    if not arr.max() > arr.min():
        raise CXRInputError(path, f"constant image (every pixel is {float(arr.min()):g}): nothing to see")
    meta = _base_meta(path, fmt)
    meta.update(bits_stored=bits, photometric=photometric, original_shape=(height, width), intensity=rule,
                colourfulness=colourfulness)
    return arr, meta


_NIFTI_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3}


def _read_nifti(path: Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - nibabel raises ImageFileError, EOFError, ValueError...
        raise CXRInputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2:
        raise CXRInputError(path, f"NIfTI image of shape {shape} is not 2D")
    if any(s != 1 for s in shape[2:]):
        raise CXRInputError(path, f"NIfTI volume of shape {shape}: a radiograph must be 2D, (X, Y) or (X, Y, 1)")
    n_x, n_y = shape[0], shape[1]
    _check_size(path, n_y, n_x, max_pixels)
    header = img.header
    disk_dtype = np.dtype(header.get_data_dtype())
    slope, inter = header.get_slope_inter()
    scaled = (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data block
        raise CXRInputError(path, f"cannot read NIfTI data ({type(err).__name__}: {err})") from err
    if data.dtype.kind not in "biuf":
        raise CXRInputError(path, f"unsupported NIfTI data type {data.dtype}")
    data = np.asarray(data, dtype=np.float64).reshape(n_x, n_y).T  # (X, Y) -> (rows=Y, cols=X)
    _check_finite(path, data)
    if disk_dtype == np.uint8 and not scaled:
        arr, rule, bits = data / 255.0, "divide_255", 8
    elif disk_dtype == np.uint16 and not scaled:
        arr, rule, bits = data / 65535.0, "divide_65535", 16
    elif disk_dtype.kind == "f" and data.min() >= 0.0 and data.max() <= 1.0:
        arr, rule, bits = data, "unit_range", disk_dtype.itemsize * 8
    else:
        arr, rule, bits = _minmax(path, data), "minmax", disk_dtype.itemsize * 8
    if not arr.max() > arr.min():
        raise CXRInputError(path, f"constant image (every pixel is {float(data.min()):g}): nothing to see")
    meta = _base_meta(path, "nifti")
    unit = header.get_xyzt_units()[0]
    zooms = header.get_zooms()
    if unit in _NIFTI_UNIT_TO_MM and len(zooms) >= 2:
        spacing = _positive_pair((zooms[1] * _NIFTI_UNIT_TO_MM[unit], zooms[0] * _NIFTI_UNIT_TO_MM[unit]))
        if spacing is not None:
            meta["spacing"], meta["spacing_source"] = spacing, "pixdim"
    meta.update(bits_stored=bits, photometric="MONOCHROME2", original_shape=(n_y, n_x), intensity=rule)
    return arr, meta
