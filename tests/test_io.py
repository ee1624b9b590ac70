"""Tests for cxr_monai.io: loading (DICOM, PNG, JPEG, NIfTI), refusing bad input, MONAI transforms, writers."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, LoadImage, Resized
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from cxr_monai.io import (
    CXRInputError,
    LoadCXR,
    LoadCXRd,
    is_chest,
    load_cxr,
    save_png,
)

from tests.conftest import SHARED_DATA as DATA  # CXR_SHARED_DATA, default ../shared/data
DICOM_DIR = DATA / "dicom"
DICOM_FILES = [
    "cr_chest_pa_mono1_jpeg.dcm",
    "cr_chest_pa_mono2_jpeg.dcm",
    "dx_thorax_mono1_small.dcm",
    "cr_extremity_mono1_j2k.dcm",
]


def real(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found: {path} (set CXR_SHARED_DATA)")
    return path


def minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


def make_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 16,
               compress: str | None = None, **attrs: object) -> Path:
    """A minimal valid CR DICOM holding ``pixels`` (uint8/uint16, (H, W)) plus any extra attributes."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.BodyPartExamined = "Test^Phantom", "P001", "CR", "CHEST"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    if compress == "j2k":
        ds.compress(JPEG2000Lossless, pixels)
    ds.save_as(path, enforce_file_format=True)
    return path


def phantom(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth non-constant image in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 0.05 * rng.standard_normal((h, w))
    return np.clip(img, 0, 1)


# ------------------------------------------------------------------------------------------ real DICOM


@pytest.mark.parametrize("name", DICOM_FILES)
def test_real_dicom_matches_pydicom_decode(name: str) -> None:
    path = real("dicom", name)
    image, meta = load_cxr(path)
    assert image.shape == (1, meta["original_shape"][0], meta["original_shape"][1])
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0

    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    ref = minmax(ref)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        ref = 1.0 - ref
    ours = image[0].astype(np.float64)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99999
    np.testing.assert_allclose(minmax(ours), ref, atol=1e-6)

    assert meta["photometric"] == ds.PhotometricInterpretation
    assert meta["bits_stored"] == ds.BitsStored
    assert meta["modality"] == ds.Modality
    assert meta["body_part"] == ds.BodyPartExamined
    assert meta["study_uid"] == ds.StudyInstanceUID and meta["sop_uid"] == ds.SOPInstanceUID
    assert meta["series_uid"] == ds.SeriesInstanceUID
    assert meta["filename_or_obj"] == str(path)
    assert meta["inverted"] == (ds.PhotometricInterpretation == "MONOCHROME1")


def test_monochrome1_is_inverse_of_monochrome2() -> None:
    mono1, meta1 = load_cxr(real("dicom", "cr_chest_pa_mono1_jpeg.dcm"))
    mono2, meta2 = load_cxr(real("dicom", "cr_chest_pa_mono2_jpeg.dcm"))
    # same stored pixels, one header says MONOCHROME1: display values are 1 - x of each other
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert meta1["spacing"] == meta2["spacing"] == (0.168, 0.168)
    # display orientation: the lung fields (left/right of centre, mid-height) are darker than the spine
    h, w = mono2.shape[1:]
    band = mono2[0, h // 3: 2 * h // 3]
    lungs = np.concatenate([band[:, w // 5: 2 * w // 5], band[:, 3 * w // 5: 4 * w // 5]])
    spine = band[:, 9 * w // 20: 11 * w // 20]
    assert lungs.mean() < spine.mean()


def test_real_dicom_meta_spacing_and_body_part() -> None:
    _, dx = load_cxr(real("dicom", "dx_thorax_mono1_small.dcm"))
    assert dx["spacing"] == pytest.approx((1.2, 1.2012)) and dx["spacing_source"] == "PixelSpacing"
    assert dx["intensity"] == "window" and is_chest(dx)
    dx_image, _ = load_cxr(real("dicom", "dx_thorax_mono1_small.dcm"))
    # window 128/256 on stored values 5..255, MONOCHROME1: the brightest display value is 1 - 5/255
    assert dx_image.max() == pytest.approx(1.0 - 5.0 / 255.0, abs=1e-6) and dx_image.min() == 0.0
    image, ext = load_cxr(real("dicom", "cr_extremity_mono1_j2k.dcm"))
    assert image.shape == (1, 1760, 1760)
    assert ext["body_part"] == "EXTREMITY" and not is_chest(ext)
    assert ext["spacing"] is None and ext["bits_stored"] == 10 and ext["intensity"] == "window"
    assert ext["transfer_syntax"] == "1.2.840.10008.1.2.4.90"


# ------------------------------------------------------------------------------------ synthetic DICOM


@pytest.mark.parametrize("center, width", [(4000.0, 6000.0), (8000.0, 40000.0)])
def test_synthetic_mono1_15bit_rescale_window_roundtrip(tmp_path: Path, center: float, width: float) -> None:
    rng = np.random.default_rng(1)
    raw = (np.linspace(0, 32767, 70 * 90).reshape(70, 90) + rng.integers(0, 50, (70, 90))).clip(0, 32767)
    raw = raw.astype(np.uint16)
    slope, intercept = 0.5, -100.0
    encoder_ok = pydicom.pixels.get_encoder(JPEG2000Lossless).is_available
    path = make_dicom(tmp_path / "synth.dcm", raw, photometric="MONOCHROME1", bits_stored=15,
                      compress="j2k" if encoder_ok else None, RescaleSlope=slope, RescaleIntercept=intercept,
                      WindowCenter=center, WindowWidth=width, PixelSpacing=[0.2, 0.25])
    if encoder_ok:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless
    image, meta = load_cxr(path)

    # hand-computed DICOM LINEAR window (PS3.3 C.11.2.1.2.1), output scaled to [0, 1], then inverted
    value = raw.astype(np.float64) * slope + intercept
    c, w = center - 0.5, width - 1.0
    expected = np.clip((value - c) / w + 0.5, 0.0, 1.0)
    expected[value <= c - w / 2] = 0.0
    expected[value > c + w / 2] = 1.0
    np.testing.assert_allclose(image[0], 1.0 - expected, atol=1e-6)
    assert meta["bits_stored"] == 15 and meta["photometric"] == "MONOCHROME1" and meta["intensity"] == "window"
    assert meta["spacing"] == pytest.approx((0.2, 0.25))
    if width < 10000:  # narrow window: clipped at both ends
        assert (image == 1.0).sum() > 100 and (image == 0.0).sum() > 100
    else:  # wide window: the data use only part of the output range, which is kept (no min-max)
        assert 0.2 < image.min() < image.max() < 0.8


def test_synthetic_voi_lut_sequence(tmp_path: Path) -> None:
    raw = (np.arange(40 * 50).reshape(40, 50) * 2).astype(np.uint16)  # 0..3998, 12-bit
    lut = np.round(np.sqrt(np.arange(4096) / 4095.0) * 4000 + 50).astype(np.uint16)  # < 4096 though descriptor says 16
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])
    item.add_new(0x00283006, "US", lut.tolist())
    path = make_dicom(tmp_path / "voilut.dcm", raw, bits_stored=12, VOILUTSequence=[item],
                      WindowCenter=100.0, WindowWidth=10.0)
    image, meta = load_cxr(path)
    assert meta["intensity"] == "voi_lut"  # the LUT wins over the window, as pydicom prefers it
    expected = (lut[raw].astype(np.float64) - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(image[0], expected, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_bits_stored_without_voi_is_minmax(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(bits)
    dtype = np.uint8 if bits == 8 else np.uint16
    raw = rng.integers(3, 2**bits - 7, size=(33, 47)).astype(dtype)
    image, meta = load_cxr(make_dicom(tmp_path / f"b{bits}.dcm", raw, bits_stored=bits))
    np.testing.assert_allclose(image[0], minmax(raw), atol=1e-6)
    assert meta["bits_stored"] == bits and meta["intensity"] == "minmax" and not meta["inverted"]


def test_bogus_window_falls_back_to_minmax(tmp_path: Path) -> None:
    raw = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    path = make_dicom(tmp_path / "w.dcm", raw, bits_stored=12, WindowCenter=60000.0, WindowWidth=10.0)
    image, meta = load_cxr(path)
    assert meta["intensity"] == "minmax"
    np.testing.assert_allclose(image[0], minmax(raw), atol=1e-6)


# -------------------------------------------------------------------------------- PNG / JPEG / NIfTI


def test_png_8bit_and_16bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a8 = rng.integers(10, 200, size=(30, 40)).astype(np.uint8)
    Image.fromarray(a8, mode="L").save(tmp_path / "a8.png")
    img8, meta8 = load_cxr(tmp_path / "a8.png")
    np.testing.assert_allclose(img8[0], a8 / 255.0, atol=1e-7)
    assert meta8["bits_stored"] == 8 and meta8["format"] == "png" and meta8["spacing"] is None

    a16 = rng.integers(1000, 30000, size=(30, 40)).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "a16.png")
    img16, meta16 = load_cxr(tmp_path / "a16.png")
    # divided by 65535, not by the data maximum: intensities stay comparable between files
    np.testing.assert_allclose(img16[0], a16 / 65535.0, atol=1e-7)
    assert img16.max() < 0.5 and meta16["bits_stored"] == 16 and meta16["intensity"] == "divide_65535"


def test_tiff_16bit_and_float(tmp_path: Path) -> None:
    a16 = (phantom(30, 40) * 50000).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "a.tif")
    image, meta = load_cxr(tmp_path / "a.tif")
    np.testing.assert_allclose(image[0], a16 / 65535.0, atol=1e-7)
    assert meta["format"] == "tiff" and meta["bits_stored"] == 16
    f32 = (phantom(30, 40) * 4 - 1).astype(np.float32)
    Image.fromarray(f32, mode="F").save(tmp_path / "f.tiff")
    image, meta = load_cxr(tmp_path / "f.tiff")
    np.testing.assert_allclose(image[0], minmax(f32), atol=1e-6)
    assert meta["intensity"] == "minmax"


def test_rgb_png_collapses_to_bt601_luma(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(20, 25, 3)).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    image, meta = load_cxr(tmp_path / "rgb.png")
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(image[0], expected, atol=1e-6)
    assert image.shape == (1, 20, 25) and meta["photometric"] == "RGB"


def test_kermany_rgb_jpeg() -> None:
    folder = real("kermany224", "train", "PNEUMONIA")
    path = sorted(folder.iterdir())[0]
    image, meta = load_cxr(path)
    with Image.open(path) as im:
        assert im.mode == "RGB"
        gray = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    assert image.shape == (1, 224, 224) and meta["format"] == "jpeg" and meta["bits_stored"] == 8
    np.testing.assert_allclose(image[0], gray, atol=1.01 / 255.0)
    assert np.corrcoef(image.ravel(), gray.ravel())[0, 1] > 0.9999


def test_nifti_2d_transposed_to_rows_cols(tmp_path: Path) -> None:
    x = phantom(30, 40).astype(np.float32)  # (H, W) = (rows, cols)
    for name, data in (("hw.nii.gz", x.T), ("hw1.nii", x.T[..., None])):
        img = nib.Nifti1Image(data, affine=np.diag([0.5, 0.25, 1.0, 1.0]))  # x (columns) 0.5 mm, y (rows) 0.25 mm
        img.header.set_xyzt_units("mm")
        nib.save(img, tmp_path / name)
        image, meta = load_cxr(tmp_path / name)
        assert image.shape == (1, 30, 40)
        np.testing.assert_allclose(image[0], x, atol=1e-7)  # float in [0, 1] kept as is
        assert meta["spacing"] == pytest.approx((0.25, 0.5)) and meta["intensity"] == "unit_range"

    u8 = (x * 200 + 20).astype(np.uint8)
    nib.save(nib.Nifti1Image(u8.T, np.eye(4)), tmp_path / "u8.nii")
    image, meta = load_cxr(tmp_path / "u8.nii")
    np.testing.assert_allclose(image[0], u8 / 255.0, atol=1e-7)
    assert meta["spacing"] is None  # spatial unit not stated

    hu = (x * 3000 - 1000).astype(np.float32)
    nib.save(nib.Nifti1Image(hu.T, np.eye(4)), tmp_path / "hu.nii")
    image, meta = load_cxr(tmp_path / "hu.nii")
    np.testing.assert_allclose(image[0], minmax(hu), atol=1e-6)
    assert meta["intensity"] == "minmax"


def test_nifti_written_from_monai_matches_png(tmp_path: Path) -> None:
    a16 = (phantom(26, 37) * 60000).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "p.png")
    monai_array = np.asarray(LoadImage(image_only=True)(tmp_path / "p.png"))  # MONAI's PILReader: (W, H)
    assert monai_array.shape == (37, 26)
    nib.save(nib.Nifti1Image(monai_array.astype(np.uint16), np.eye(4)), tmp_path / "p.nii.gz")
    from_png, _ = load_cxr(tmp_path / "p.png")
    from_nii, _ = load_cxr(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(from_png, from_nii)


# ------------------------------------------------------------------------------------------ bad input


def _png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A 4x4 PNG whose IHDR claims width x height (pixel data far too short)."""
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4), mode="L").save(path)
    data = bytearray(path.read_bytes())
    ihdr_start = 8 + 8  # signature, then length + "IHDR"
    struct.pack_into(">II", data, ihdr_start, width, height)
    crc = zlib.crc32(bytes(data[12:ihdr_start + 13]))
    struct.pack_into(">I", data, ihdr_start + 13, crc)
    path.write_bytes(bytes(data))
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error message must contain)."""
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "nope.dcm", "not found")
    (tmp / "folder").mkdir()
    cases["directory"] = (tmp / "folder", "directory")
    (tmp / "empty.png").write_bytes(b"")
    cases["empty"] = (tmp / "empty.png", "empty")
    (tmp / "notes.txt").write_text("not an image")
    cases["unsupported_ext"] = (tmp / "notes.txt", "unsupported")
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(tmp / "img.bmp")
    cases["bmp"] = (tmp / "img.bmp", "unsupported")
    (tmp / "text.dcm").write_text("hello, I am not a DICOM file\n" * 20)
    cases["non_dicom_bytes"] = (tmp / "text.dcm", "not a DICOM")
    (tmp / "noext").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    cases["random_bytes_no_suffix"] = (tmp / "noext", "not a DICOM")
    (tmp / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cases["corrupt_png"] = (tmp / "fake.png", "PNG")
    good = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4000
    full = make_dicom(tmp / "good.dcm", good, bits_stored=12).read_bytes()
    (tmp / "trunc_half.dcm").write_bytes(full[: len(full) // 2])
    cases["truncated_uncompressed"] = (tmp / "trunc_half.dcm", "decode")
    (tmp / "trunc_head.dcm").write_bytes(full[:300])
    cases["truncated_header"] = (tmp / "trunc_head.dcm", "")
    noisy = np.random.default_rng(1).integers(0, 4096, size=(128, 128)).astype(np.uint16)  # compresses badly
    j2k = make_dicom(tmp / "good_j2k.dcm", noisy, bits_stored=12, compress="j2k").read_bytes()
    (tmp / "trunc_j2k.dcm").write_bytes(j2k[: int(len(j2k) * 0.6)])
    cases["truncated_j2k"] = (tmp / "trunc_j2k.dcm", "truncated DICOM: pixel data incomplete")
    frames = np.stack([good, good]).astype(np.uint16)
    cases["multi_frame"] = (make_dicom(tmp / "mf.dcm", frames, bits_stored=12, NumberOfFrames=2), "multi-frame")
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(64).reshape(8, 8)
    ds_rgb = make_dicom(tmp / "rgb.dcm", rgb, photometric="RGB", bits_stored=8, SamplesPerPixel=3,
                        PlanarConfiguration=0)
    cases["rgb_dicom"] = (ds_rgb, "colour")
    cases["zero_size_dicom"] = (make_dicom(tmp / "zero.dcm", np.zeros((0, 0), dtype=np.uint16), bits_stored=12),
                                "zero-size")
    huge = make_dicom(tmp / "huge.dcm", np.zeros((2, 2), dtype=np.uint16), bits_stored=12)
    ds_huge = pydicom.dcmread(huge)
    ds_huge.Rows, ds_huge.Columns = 60000, 60000  # 3600 MP claimed, 8 bytes present
    ds_huge.save_as(huge)
    cases["over_limit_dicom_header"] = (huge, "pixel limit")
    cases["over_limit_png_header"] = (_png_with_header_size(tmp / "big.png", 8000, 8000), "pixel limit")
    cases["constant_dicom"] = (make_dicom(tmp / "const.dcm", np.full((16, 16), 700, np.uint16), bits_stored=12),
                               "constant")
    Image.fromarray(np.full((16, 16), 128, np.uint8), mode="L").save(tmp / "const.png")
    cases["constant_png"] = (tmp / "const.png", "constant")
    nib.save(nib.Nifti1Image(np.full((16, 16), 0.3, np.float32), np.eye(4)), tmp / "const.nii")
    cases["constant_nifti"] = (tmp / "const.nii", "constant")
    nan = phantom(16, 16).astype(np.float32)
    nan[3, 4] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp / "nan.nii")
    cases["nan_nifti"] = (tmp / "nan.nii", "NaN")
    inf = phantom(16, 16).astype(np.float32)
    inf[5, 5] = np.inf
    nib.save(nib.Nifti1Image(inf, np.eye(4)), tmp / "inf.nii.gz")
    cases["inf_nifti"] = (tmp / "inf.nii.gz", "infinite")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32), np.eye(4)),
             tmp / "vol.nii.gz")
    cases["volume_nifti"] = (tmp / "vol.nii.gz", "2D")
    nib.save(nib.Nifti1Image(np.zeros((0, 16), np.float32), np.eye(4)), tmp / "zero.nii")
    cases["zero_size_nifti"] = (tmp / "zero.nii", "zero-size")
    (tmp / "bad.nii").write_bytes(b"this is not nifti" * 30)
    cases["non_nifti_bytes"] = (tmp / "bad.nii", "NIfTI")
    Image.fromarray((phantom(64, 64) * 255).astype(np.uint8), mode="L").save(tmp / "full.png")
    png = (tmp / "full.png").read_bytes()
    (tmp / "trunc.png").write_bytes(png[: len(png) // 2])
    cases["truncated_png"] = (tmp / "trunc.png", "PNG")
    pages = [Image.fromarray((phantom(16, 16, seed=i) * 255).astype(np.uint8), mode="L") for i in range(3)]
    pages[0].save(tmp / "pages.tif", save_all=True, append_images=pages[1:])
    cases["multi_page_tiff"] = (tmp / "pages.tif", "3 frames")
    return cases


BAD_CASES = [
    "missing", "directory", "empty", "unsupported_ext", "bmp", "non_dicom_bytes", "random_bytes_no_suffix",
    "corrupt_png", "truncated_uncompressed", "truncated_header", "truncated_j2k", "multi_frame", "rgb_dicom",
    "zero_size_dicom", "over_limit_dicom_header", "over_limit_png_header", "constant_dicom", "constant_png",
    "constant_nifti", "nan_nifti", "inf_nifti", "volume_nifti", "zero_size_nifti", "non_nifti_bytes",
    "truncated_png", "multi_page_tiff",
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_cxr_input_error(bad_inputs: dict[str, tuple[Path, str]], case: str) -> None:
    path, words = bad_inputs[case]
    with pytest.raises(CXRInputError) as info:
        load_cxr(path)
    message = str(info.value)
    assert str(path) in message, message  # names the file
    assert words.lower() in message.lower(), message  # and the reason
    assert info.value.path == str(path) and info.value.reason


def test_bad_cases_all_covered(bad_inputs: dict[str, tuple[Path, str]]) -> None:
    assert sorted(bad_inputs) == sorted(BAD_CASES)


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    Image.fromarray((phantom(40, 50) * 255).astype(np.uint8), mode="L").save(tmp_path / "p.png")
    make_dicom(tmp_path / "p.dcm", (phantom(40, 50) * 4000).astype(np.uint16), bits_stored=12)
    nib.save(nib.Nifti1Image(phantom(50, 40).astype(np.float32), np.eye(4)), tmp_path / "p.nii")
    for name in ("p.png", "p.dcm", "p.nii"):
        with pytest.raises(CXRInputError, match="pixel limit"):
            load_cxr(tmp_path / name, max_pixels=1999)
        assert load_cxr(tmp_path / name, max_pixels=2000)[0].shape == (1, 40, 50)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_pixels") as info:
            load_cxr(tmp_path / "p.png", max_pixels=bad)
        assert not isinstance(info.value, CXRInputError)
    with pytest.raises(ValueError, match="max_pixels"):
        LoadCXRd("image", max_pixels=0)


def test_cxr_input_error_type_and_pickling() -> None:
    err = CXRInputError("/x/y.dcm", "multi-frame DICOM (3 frames)")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CXRInputError and str(back) == str(err) and back.reason == err.reason
    assert "/x/y.dcm" in str(err) and "multi-frame" in str(err)


def test_is_chest() -> None:
    assert is_chest({"body_part": "CHEST", "modality": "CR"})
    assert is_chest({"body_part": "thorax", "modality": "DX"})
    assert is_chest({"body_part": "PORT CHEST", "modality": "DX"})
    assert is_chest({"body_part": None, "modality": "DX"})  # unknown but plausible
    assert is_chest({"body_part": "", "modality": ""})  # a PNG via MetaTensor meta
    assert is_chest({"body_part": None, "modality": None})
    assert not is_chest({"body_part": "EXTREMITY", "modality": "CR"})
    assert not is_chest({"body_part": "SKULL", "modality": "DX"})
    assert not is_chest({"body_part": None, "modality": "CT"})
    with pytest.raises(ValueError, match="decollate"):
        is_chest({"body_part": ["CHEST", "KNEE"]})


# ----------------------------------------------------------------------------------- MONAI transforms


def test_load_cxr_transform_meta_and_affine() -> None:
    path = real("dicom", "dx_thorax_mono1_small.dcm")
    out = LoadCXR()(path)
    assert isinstance(out, MetaTensor) and out.shape == (1, 169, 211) and out.dtype == torch.float32
    assert torch.allclose(out.affine.diagonal(), torch.tensor([1.2, 1.2012, 1.0, 1.0], dtype=torch.float64))
    assert out.meta["filename_or_obj"] == str(path) and out.meta["original_channel_dim"] == 0
    assert out.meta["body_part"] == "THORAX" and out.meta["modality"] == "DX"
    np.testing.assert_array_equal(out.numpy(), load_cxr(path)[0])


def test_load_cxrd_in_compose_and_dataloader(tmp_path: Path) -> None:
    Image.fromarray((phantom(40, 60) * 65535).astype(np.uint16)).save(tmp_path / "a.png")
    make_dicom(tmp_path / "b.dcm", (phantom(50, 30, seed=1) * 4095).astype(np.uint16), bits_stored=12,
               PixelSpacing=[0.3, 0.3])
    pipeline = Compose([LoadCXRd(keys="image"), Resized(keys="image", spatial_size=(32, 32))])
    items = [{"image": str(tmp_path / "a.png"), "label": 0}, {"image": str(tmp_path / "b.dcm"), "label": 1}]
    first = pipeline(items[0])
    assert isinstance(first["image"], MetaTensor) and first["image"].shape == (1, 32, 32)
    assert first["label"] == 0 and first["image"].meta["format"] == "png"

    # None-free meta: a PNG (no spacing, no UIDs) and a DICOM collate into one batch
    loader = DataLoader(Dataset(items, transform=pipeline), batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 32, 32)
    assert list(batch["image"].meta["format"]) == ["png", "dicom"]
    assert batch["label"].tolist() == [0, 1]

    # from a bundle-style config
    parser = ConfigParser({"load": {"_target_": "cxr_monai.io.LoadCXRd", "keys": ["image"], "max_pixels": 10_000}})
    loaded = parser.get_parsed_content("load")({"image": str(tmp_path / "b.dcm")})
    assert loaded["image"].shape == (1, 50, 30)
    assert torch.allclose(loaded["image"].affine.diagonal()[:2], torch.tensor([0.3, 0.3], dtype=torch.float64))

    # errors keep their type, wrapped by MONAI's Compose as the RuntimeError's cause
    with pytest.raises(RuntimeError) as info:
        pipeline({"image": str(tmp_path / "missing.png")})
    causes, err = [], info.value
    while err is not None:
        causes.append(err)
        err = err.__cause__
    assert any(isinstance(e, CXRInputError) for e in causes)
    assert LoadCXRd("image", allow_missing_keys=True)({"other": 1}) == {"other": 1}


# -------------------------------------------------------------------------------------------- writers


@pytest.mark.parametrize("bits", [8, 16])
def test_save_png_roundtrip(tmp_path: Path, bits: int) -> None:
    x = phantom(33, 41).astype(np.float32)[None]
    path = save_png(tmp_path / "sub" / "x.png", torch.from_numpy(x), bits=bits)
    back, meta = load_cxr(path)
    assert meta["bits_stored"] == bits and back.shape == x.shape
    np.testing.assert_allclose(back, x, atol=0.5 / (2**bits - 1) + 1e-7)
    with pytest.raises(ValueError, match="bits"):
        save_png(tmp_path / "y.png", x, bits=12)
    with pytest.raises(ValueError, match="shape"):
        save_png(tmp_path / "y.png", np.zeros((2, 4, 4)))
