"""Decoding a DICOM radiograph under the image contract (:mod:`cxr_monai.io`): header checks before any pixel is
decoded, modality LUT, VOI LUT / window / min-max, MONOCHROME1 inversion, and the metadata."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
try:  # pydicom 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    _PYDICOM2 = False
except ImportError:  # pydicom 2.4: the MONAI Label venv (deploy/monailabel_app), whose monailabel needs pydicom<3
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    _PYDICOM2 = True
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxr_monai.io.common import (_DICOM_TAG_KEYWORDS, CXRInputError, _base_meta, _check_finite, _check_size, _minmax,
                                 _positive_pair, _str_or_none)

LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91",
                            "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.203"})
"""Transfer syntaxes of lossy compression (JPEG baseline/extended, JPEG 2000, JPEG-LS near-lossless, HTJ2K)."""


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
    if tsyntax in LOSSY_SYNTAXES:
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
