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

Modules: :mod:`~cxr_monai.io.common` (the error type and shared checks), :mod:`~cxr_monai.io.read_dicom`,
:mod:`~cxr_monai.io.read_raster` (PNG/JPEG/TIFF/NIfTI), :mod:`~cxr_monai.io.load` (:func:`load_cxr`, the transforms,
:func:`save_png`) and :mod:`~cxr_monai.io.rules` (policy: which images the chest models may read, the modality rule).
This package reads and validates; the DICOM objects the project writes are built with highdicom in
:mod:`cxr_monai.dicom`.
"""

from __future__ import annotations

from cxr_monai.io.common import DEFAULT_MAX_PIXELS, SUPPORTED_SUFFIXES, CXRInputError
from cxr_monai.io.load import LoadCXR, LoadCXRD, LoadCXRd, LoadCXRDict, load_cxr, save_png
from cxr_monai.io.rules import PROJECTION_MODALITIES, is_chest, skip_reason

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "CXRInputError",
    "load_cxr",
    "is_chest",
    "skip_reason",
    "PROJECTION_MODALITIES",
    "LoadCXR",
    "LoadCXRd",
    "LoadCXRD",
    "LoadCXRDict",
    "save_png",
]

