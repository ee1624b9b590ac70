"""Reading and writing chest radiographs under the cxr_monai image contract.

Every loader here returns the same thing: a float32 array of shape ``(1, H, W)`` with values in
``[0, 1]``, in display orientation (bright bone, dark lung: MONOCHROME1 is already inverted), rows
first, plus a metadata dict. Bad input is refused at this edge with :class:`CXRInputError`, which
names the file and the reason; the rest of the package trusts the contract.

Supported inputs and how their intensities are mapped to ``[0, 1]``:

* **DICOM** (CR, DX or any single-frame grayscale image; uncompressed, JPEG baseline, JPEG 2000
  lossless/lossy and the other syntaxes pydicom's installed decoders handle). Stored values go
  through pydicom's ``apply_modality_lut`` (Rescale Slope/Intercept or Modality LUT), then

  - with a VOI LUT Sequence: pydicom's ``apply_voi_lut``, then scaled by the range of the LUT's
    own entries (robust to LUT descriptors that overstate the bit depth);
  - else with Window Center/Width: pydicom's windowing, then scaled by the window's output range
    (below the window is 0, above it is 1), so the window keeps its meaning;
  - else (or when the window turns the image constant, a bogus window): min-max of the actual
    pixel values after the modality LUT.

  MONOCHROME1 (and MONOCHROME2 with Presentation LUT Shape INVERSE) is then inverted as ``1 - x``.
  Rows, columns, frames, samples per pixel and the pixel limit are checked from the header before
  any pixel is decoded.
* **PNG** 1-, 8- and 16-bit: divided by 255 (8-bit) or 65535 (16-bit), not by the data maximum, so
  intensities stay comparable between files. Colour is collapsed to luma (ITU-R BT.601 weights
  0.299, 0.587, 0.114, computed in float); an alpha channel is dropped.
* **JPEG** (8-bit, RGB collapsed to luma as for PNG, EXIF orientation applied).
* **TIFF** (single page) as PNG: 8-bit / 255, 16-bit / 65535, colour to luma; 32-bit float pages use
  the NIfTI float rule below.
* **NIfTI** 2D (``.nii``/``.nii.gz``), shape ``(X, Y)`` or ``(X, Y, 1, ...)``. NIfTI's first voxel
  axis is the image's x (column) axis and the second its y (row) axis, which is how MONAI's
  ``PILReader``/``SaveImage`` store a 2D image, so the array is **transposed** to ``(Y, X) = (H, W)``:
  a PNG written to NIfTI through MONAI and read back here matches the PNG read here. The affine is
  not applied (no flips). Intensity: unscaled uint8 / uint16 data are divided by 255 / 65535 like
  PNG; float data already inside ``[0, 1]`` are kept; anything else is min-max scaled. NaN or
  infinite values are refused. Spacing comes from the header's zooms when the spatial unit is
  stated (mm, m or micron), else it is ``None``.

Constant images (nothing to see) are refused for every format.

Metadata keys (``load_cxr``): ``spacing`` (``(row_mm, col_mm)`` from PixelSpacing, else
ImagerPixelSpacing, else ``None``), ``spacing_source``, ``bits_stored``, ``photometric`` (of the
source: ``MONOCHROME1``/``MONOCHROME2``/``RGB``...), ``modality``, ``body_part``, ``filename_or_obj``,
``study_uid``, ``series_uid``, ``sop_uid``, ``sop_class_uid`` (``None`` for non-DICOM),
``original_shape`` (``(H, W)``), ``format`` (``dicom``/``png``/``jpeg``/``tiff``/``nifti``), ``intensity``
(the rule applied: ``voi_lut``/``window``/``minmax``/``divide_255``/``divide_65535``/``unit_range``),
``inverted``, ``transfer_syntax`` (DICOM), ``colourfulness`` (mean chroma of a colour PNG/JPEG/TIFF in
[0, 1], 0 for grey sources; read by the intended-population gate) and ``dicom_tags`` (a dict of patient/study attributes
as strings, ``""`` when absent, always the same keys), read by the intended-population gate.

This module reads and validates; the DICOM objects the project writes are built with highdicom in
:mod:`cxr_monai.dicom_out`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
try:  # pydicom 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    _PYDICOM2 = False
except ImportError:  # pydicom 2.4: the MONAI Label venv (deploy/monailabel_app), whose monailabel needs pydicom<3
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    _PYDICOM2 = True
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "CXRInputError",
    "load_cxr",
    "is_chest",
    "skip_reason",
    "LoadCXR",
    "LoadCXRd",
    "LoadCXRD",
    "LoadCXRDict",
    "save_png",
]

DEFAULT_MAX_PIXELS = 50_000_000
"""Default pixel limit (50 megapixels): larger images are refused from their header."""

SUPPORTED_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
"""File name endings :func:`load_cxr` accepts; a file without suffix, or any file carrying the
``DICM`` magic at byte 128, is read as DICOM."""

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
_BT601 = np.array([0.299, 0.587, 0.114])
_CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "THORACIC", "LUNG", "PULMON")
_NON_PROJECTION_MODALITIES = {"CT", "MR", "US", "NM", "PT", "MG", "OP", "OCT", "XC", "ES", "SM", "IO", "PX", "ECG"}
_LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91",
                   "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.203"}

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


# ----------------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path) -> Dataset:
    """Read a DICOM file (pixels still encoded); raw files without preamble are accepted when they
    hold an image."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # maybe a raw dataset without the 128-byte preamble and file meta
            try:
                ds = pydicom.dcmread(path, force=True)
            except Exception as err:  # noqa: BLE001 - any parse failure means "not DICOM"
                raise CXRInputError(path, f"not a DICOM file ({type(err).__name__}: {err})") from err
            if "Rows" not in ds or "PixelData" not in ds:
                raise CXRInputError(path, "not a DICOM file (no DICM preamble and no image attributes)") from None
            if "TransferSyntaxUID" not in ds.file_meta:
                encoding = getattr(ds, "original_encoding", None) or (getattr(ds, "read_implicit_vr", None),)
                implicit = encoding[0] if encoding[0] is not None else True
                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt files
            raise CXRInputError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from err
    truncated = [w for w in caught if "end of file" in str(w.message).lower()]
    for w in caught:
        if w not in truncated:
            warnings.warn(w.message, stacklevel=3)
    if truncated and not ds.get("PixelData"):
        raise CXRInputError(path, f"truncated DICOM: pixel data incomplete ({truncated[0].message})")
    return ds


def _dicom_header_checks(path: Path, ds: Dataset, max_pixels: int) -> None:
    """Everything checkable before decoding pixels."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise CXRInputError(path, "float pixel data DICOM is not supported")
        raise CXRInputError(path, "DICOM without pixel data (not an image, or a truncated file)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_stored = int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError) as err:
        raise CXRInputError(path, f"DICOM image attributes missing or invalid ({err})") from err
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CXRInputError(
            path,
            f"colour DICOM (PhotometricInterpretation={photometric or 'missing'}, SamplesPerPixel={samples}) "
            "is not supported: a radiograph must be MONOCHROME1 or MONOCHROME2",
        )
    if frames > 1:
        raise CXRInputError(path, f"multi-frame DICOM ({frames} frames): a radiograph must be a single 2D frame")
    if not 1 <= bits_stored <= 32:
        raise CXRInputError(path, f"unsupported BitsStored={bits_stored}")
    _check_size(path, rows, cols, max_pixels)


def _window_range(ds: Dataset) -> tuple[float, float]:
    """Outputs of pydicom's windowing far below and far above the window (index 0)."""
    center, width = ds["WindowCenter"], ds["WindowWidth"]
    c = float(center.value[0] if center.VM > 1 else center.value)
    w = abs(float(width.value[0] if width.VM > 1 else width.value))
    probe = np.array([c - 50.0 * w - 1.0, c + 50.0 * w + 1.0])
    out = apply_voi_lut(probe, ds, prefer_lut=False)
    return float(out[0]), float(out[1])


def _dicom_intensity(path: Path, ds: Dataset, stored: np.ndarray) -> tuple[np.ndarray, str]:
    """Modality LUT, then VOI LUT / window / min-max, to [0, 1] (before any inversion)."""
    values = apply_modality_lut(stored, ds)
    values = np.asarray(values, dtype=np.float64)
    _check_finite(path, values)
    if not values.max() > values.min():
        raise CXRInputError(path, f"constant image (every pixel is {float(values.min()):g} after the modality LUT)")

    voi_seq = ds.get("VOILUTSequence")
    has_lut = bool(voi_seq) and "LUTDescriptor" in voi_seq[0] and "LUTData" in voi_seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        if has_lut:
            integral = values if np.array_equal(values, np.round(values)) else None
            if integral is None:
                warnings.warn(f"{path}: VOI LUT Sequence ignored: modality LUT output is not integral", stacklevel=3)
            else:
                desc = [int(v) for v in voi_seq[0].LUTDescriptor]
                n_entries = desc[0] or 2**16
                lut_out = apply_voi_lut(np.arange(desc[1], desc[1] + n_entries, dtype=np.int64), ds)
                lo, hi = float(lut_out.min()), float(lut_out.max())
                out = apply_voi_lut(integral.astype(np.int64), ds).astype(np.float64)
                if hi > lo and out.max() > out.min():
                    return (out - lo) / (hi - lo), "voi_lut"
        if has_window:
            lo, hi = _window_range(ds)
            if hi != lo:
                out = apply_voi_lut(values, ds, prefer_lut=False).astype(np.float64)
                if out.max() > out.min():
                    # below the window -> 0, above -> 1, whatever sign pydicom's output range has
                    return np.clip((out - lo) / (hi - lo), 0.0, 1.0), "window"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError) as err:
        warnings.warn(f"{path}: ignoring invalid VOI LUT/window ({err}); using min-max", stacklevel=3)
    return _minmax(path, values), "minmax"


def _pixel_array(ds: Dataset, tsyntax: Any) -> np.ndarray:
    """``ds.pixel_array``, decoded by the same library under pydicom 2 as under pydicom 3: pydicom 3
    prefers pylibjpeg for JPEG/JPEG 2000, pydicom 2 tries Pillow first (one grey level apart on JPEG)."""
    if _PYDICOM2 and tsyntax is not None and getattr(tsyntax, "is_compressed", False):
        from pydicom.pixel_data_handlers import pylibjpeg_handler

        if pylibjpeg_handler.is_available() and pylibjpeg_handler.supports_transfer_syntax(tsyntax):
            try:
                ds.convert_pixel_data(handler_name="pylibjpeg")
            except Exception:  # noqa: BLE001 - then the other decoders, as pydicom 3 does
                pass
    return ds.pixel_array


def _read_dicom(path: Path, max_pixels: int, ds: Dataset | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM file, or a dataset already read (``ds``; ``path`` then only names it in errors)."""
    if ds is None:
        ds = _dcmread(path)
    elif "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise CXRInputError(path, "DICOM dataset without a Transfer Syntax UID in its file meta")
    _dicom_header_checks(path, ds, max_pixels)
    rows, cols = int(ds.Rows), int(ds.Columns)
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        stored = _pixel_array(ds, tsyntax)
    except Exception as err:  # noqa: BLE001 - decoders raise anything on corrupt streams
        name = getattr(tsyntax, "name", tsyntax)
        raise CXRInputError(path, f"cannot decode pixel data ({name}): {type(err).__name__}: {err}") from err
    if stored.shape != (rows, cols):
        raise CXRInputError(path, f"decoded pixel array has shape {stored.shape}, header says ({rows}, {cols})")

    image, rule = _dicom_intensity(path, ds, stored)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    invert = photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
    if invert:
        image = 1.0 - image

    meta = _base_meta(path, "dicom")
    for source in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _positive_pair(ds.get(source))
        if spacing is not None:
            meta["spacing"], meta["spacing_source"] = spacing, source
            break
    tags = meta["dicom_tags"]
    for keyword in _DICOM_TAG_KEYWORDS:
        value = ds.get(keyword)
        if value is not None:
            multi = isinstance(value, pydicom.multival.MultiValue)
            tags[keyword] = "\\".join(str(v) for v in value) if multi else str(value)
    if tsyntax in _LOSSY_SYNTAXES:
        tags["LossyImageCompression"] = "01"
    meta.update(
        bits_stored=int(ds.BitsStored),
        photometric=photometric,
        modality=_str_or_none(ds.get("Modality")),
        body_part=_str_or_none(ds.get("BodyPartExamined")),
        study_uid=_str_or_none(ds.get("StudyInstanceUID")),
        series_uid=_str_or_none(ds.get("SeriesInstanceUID")),
        sop_uid=_str_or_none(ds.get("SOPInstanceUID")),
        sop_class_uid=_str_or_none(ds.get("SOPClassUID")),
        original_shape=(rows, cols),
        intensity=rule,
        inverted=invert,
        transfer_syntax=str(tsyntax) if tsyntax else None,
    )
    return image, meta


# ------------------------------------------------------------------------------------------- PNG / JPEG


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


# ----------------------------------------------------------------------------------------------- NIfTI


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


# -------------------------------------------------------------------------------------------- public


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


def is_chest(meta: Mapping[str, Any]) -> bool:
    """Whether an image's metadata allow it to be a chest radiograph.

    True when the body part names the chest (``CHEST``, ``THORAX``, ``LUNG``... anywhere in
    BodyPartExamined, case-insensitive) or is unknown (``None``/empty/``UNKNOWN``) for a projection
    radiograph or a non-DICOM file; False for any other stated body part (``EXTREMITY``, ``SKULL``...)
    and, when the body part is unknown, for modalities that are not projection radiography (CT, MR,
    US, MG, ...). Pipelines use it to skip series the chest models must not see.

    Args:
        meta: metadata from :func:`load_cxr` or a :class:`~monai.data.MetaTensor`'s ``meta``
            (one image; a collated batch must be decollated first).
    """
    body_part, modality = meta.get("body_part"), meta.get("modality")
    for name, value in (("body_part", body_part), ("modality", modality)):
        if isinstance(value, (list, tuple)):
            raise ValueError(f"meta[{name!r}] is a {type(value).__name__}: decollate batched metadata first")
    part = str(body_part or "").strip().upper()
    if part and part not in ("UNKNOWN", "NONE", "-"):
        return any(word in part for word in _CHEST_WORDS)
    return str(modality or "").strip().upper() not in _NON_PROJECTION_MODALITIES


_LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL")


def skip_reason(meta: Mapping[str, Any]) -> str | None:
    """Why a loaded image must not reach the frontal chest models, or ``None`` when it may.

    Refused: a stated body part that is not the chest (see :func:`is_chest`; absent is accepted), a
    non-projection modality, and a lateral ViewPosition (``LL``, ``RL``, ``LATERAL``...; the models
    were trained on frontal PA/AP views). Absent ViewPosition is accepted.

    Args:
        meta: metadata of one image from :func:`load_cxr`.
    """
    if not is_chest(meta):
        part = meta.get("body_part")
        if part:
            return f"body part {part!r} is not the chest"
        return f"modality {meta.get('modality')!r} is not projection radiography"
    view = str((meta.get("dicom_tags") or {}).get("ViewPosition", "") or "").strip().upper()
    if view in _LATERAL_VIEWS:
        return f"lateral view (ViewPosition {view!r}): the models read frontal PA/AP radiographs only"
    return None


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

