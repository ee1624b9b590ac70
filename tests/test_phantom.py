"""Tests for cxr_monai.data.phantom: the procedural chest radiograph, its consolidation, DICOM and datasets."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID, ExplicitVRLittleEndian
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from cxr_monai.data.phantom import (
    PHANTOM_PATIENT_ID,
    PHANTOM_PATIENT_NAME,
    make_phantom,
    phantom_anatomy,
    phantom_pixel_spacing,
    write_phantom_dataset,
    write_phantom_dicom,
)
from cxr_monai.io import load_cxr

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


# ------------------------------------------------------------------------------------------- image contract
@pytest.mark.parametrize("size, hw", [(512, (512, 512)), ((200, 300), (200, 300)), (16, (16, 16)), (28, (28, 28))])
def test_shape_dtype_range(size, hw):
    img, mask = make_phantom(size, seed=1)
    assert img.shape == (1, *hw)
    assert img.dtype == np.float32
    assert mask is None
    assert np.isfinite(img).all()
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert img.max() - img.min() > 0.5  # not a flat image: dark air to bright bone

    img, mask = make_phantom(size, seed=1, consolidation=True)
    assert mask.shape == (1, *hw) and mask.dtype == bool


def test_deterministic_for_a_seed():
    a, ma = make_phantom(192, seed=5, consolidation=True)
    b, mb = make_phantom(192, seed=5, consolidation=True)
    assert np.array_equal(a, b)
    assert np.array_equal(ma, mb)


def test_different_seeds_differ_in_anatomy_not_only_noise():
    a, _ = make_phantom(192, seed=0, noise=False)
    b, _ = make_phantom(192, seed=1, noise=False)
    assert np.abs(a - b).mean() > 0.005
    masks = [make_phantom(192, seed=s, consolidation=True)[1] for s in range(2)]
    assert not np.array_equal(*masks)


def test_same_chest_at_every_size():
    """The anatomy is defined in normalised coordinates: a 256 phantom is the 512 one, downsampled."""
    big, _ = make_phantom(512, seed=2, noise=False)
    small, _ = make_phantom(256, seed=2, noise=False)
    down = big[0].reshape(256, 2, 256, 2).mean(axis=(1, 3))
    assert np.abs(down - small[0]).mean() < 0.01


def test_lungs_darker_than_mediastinum_and_body():
    for seed in range(3):
        img, _ = make_phantom(256, seed=seed)
        x = img[0]
        anat = phantom_anatomy(256, seed=seed)
        lung = x[anat["lungs"]].mean()
        for side in ("right_lung", "left_lung"):
            assert anat[side].sum() > 0.04 * x.size
            assert x[anat[side]].mean() < 0.45
        assert x[anat["mediastinum"]].mean() > lung + 0.25
        assert x[anat["heart"]].mean() > lung + 0.25
        assert x[anat["spine"]].mean() > lung + 0.25
        assert x[~anat["body"]].mean() < lung - 0.15  # air around the patient is darkest
    # the same without the anatomy masks: fixed regions of a 256 phantom, in pixels
    x = make_phantom(256, seed=0)[0][0]
    right_lung, left_lung = x[100:130, 50:80].mean(), x[100:130, 176:206].mean()
    mediastinum = x[70:110, 118:138].mean()
    assert mediastinum > max(right_lung, left_lung) + 0.25
    assert x[:, :4].mean() < 0.1  # air at the lateral edges


def test_ribs_make_periodic_lung_texture():
    """Ribs cross the lung: along a vertical line through a lung, intensity oscillates with the rib spacing."""
    x = make_phantom(512, seed=0, noise=False)[0][0]
    profile = x[120:330, 140].astype(np.float64)  # image-left lung, mid-lateral
    detrended = profile - np.convolve(profile, np.ones(31) / 31, mode="same")
    core = detrended[20:-20]
    spectrum = np.abs(np.fft.rfft(core - core.mean()))
    freqs = np.fft.rfftfreq(core.size)  # cycles per pixel
    peak = freqs[np.argmax(spectrum[1:]) + 1]
    rib_period_px = 0.112 / 2 * 512  # ~29 px between ribs
    assert 0.6 / rib_period_px < peak < 1.6 / rib_period_px
    assert core.std() > 0.01


# ------------------------------------------------------------------------------------------- consolidation
@pytest.mark.parametrize("seed", range(6))
def test_consolidation_in_one_lung_brighter_and_textured(seed):
    size = 256
    with_c, mask = make_phantom(size, seed=seed, consolidation=True, noise=False)
    without, none_mask = make_phantom(size, seed=seed, consolidation=False, noise=False)
    assert none_mask is None
    m = mask[0]
    assert m.sum() > 0.002 * m.size  # non-empty, a visible opacity
    anat = phantom_anatomy(size, seed=seed)
    in_right, in_left = (m & anat["right_lung"]).sum(), (m & anat["left_lung"]).sum()
    assert min(in_right, in_left) == 0 and max(in_right, in_left) == m.sum()  # inside exactly one lung
    diff = (with_c - without)[0]
    assert diff[m].mean() > 0.08  # clearly brighter than the same lung without it
    assert (diff[m] > 0.01).mean() > 0.95
    assert with_c[0][m].mean() > without[0][anat["lungs"]].mean() + 0.08
    fine = diff.astype(np.float64) - gaussian_filter(diff.astype(np.float64), 3.0)
    core = binary_erosion(m, iterations=2)
    assert fine[core].std() > 0.025  # textured (mottled, air bronchograms), not a smooth blob (about 0.015)
    ring = binary_dilation(m, iterations=3) & ~m
    assert 0.002 < diff[ring].mean() < diff[m].mean()  # soft edge: fades out across the border
    other = anat["left_lung"] if in_right else anat["right_lung"]
    assert np.abs(diff[other]).max() < 1e-6  # the other lung is untouched
    assert np.abs(diff[~binary_dilation(m, iterations=25)]).max() < 1e-6  # nothing far away changes


def test_consolidation_location_varies_with_seed():
    sides, rows = set(), []
    for seed in range(12):
        m = make_phantom(128, seed=seed, consolidation=True, noise=False)[1][0]
        ys, xs = np.nonzero(m)
        sides.add(bool(xs.mean() > 64))
        rows.append(ys.mean())
    assert sides == {True, False}  # both lungs get consolidations
    assert max(rows) - min(rows) > 25  # upper and lower lobes (128 px image)


# ------------------------------------------------------------------------------------------- noise and dose
def test_quantum_noise_scales_with_dose_and_attenuation():
    clean = make_phantom(256, seed=4, noise=False)[0][0].astype(np.float64)
    anat = phantom_anatomy(256, seed=4)
    n1 = make_phantom(256, seed=4, dose=1.0)[0][0] - clean
    n4 = make_phantom(256, seed=4, dose=4.0)[0][0] - clean
    lung = anat["lungs"]
    ratio = n4[lung].std() / n1[lung].std()
    assert 0.45 < ratio < 0.55  # std ~ 1 / sqrt(dose)
    assert n1[anat["mediastinum"]].std() > 1.3 * n1[lung].std()  # fewer photons through dense tissue
    assert abs(n1[lung].mean()) < 0.2 * n1[lung].std()  # zero-mean


def test_bad_arguments(tmp_path):
    for size in (8, (16, 9000), (1, 2, 3)):
        with pytest.raises(ValueError):
            make_phantom(size)
    with pytest.raises(ValueError):
        make_phantom(64, dose=0.0)
    with pytest.raises(ValueError):
        make_phantom(64, seed=-1)
    with pytest.raises(ValueError):
        phantom_anatomy(64, seed=1.5)
    with pytest.raises(ValueError):
        write_phantom_dicom(tmp_path / "x.dcm", size=64, modality="MR")
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "ds", n_per_class=1, size=32, fmt="jpg")
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "ds", n_per_class=0, size=32)
    assert not any(tmp_path.iterdir())  # arguments are checked before anything is written


def test_fast_enough():
    make_phantom(512, seed=0)  # warm up (imports, caches)
    start = time.process_time()
    make_phantom(512, seed=1, consolidation=True)
    cpu = time.process_time() - start
    assert cpu < 1.5, f"512x512 phantom took {cpu:.2f} s of CPU (about 0.2 s expected)"


# ------------------------------------------------------------------------------------------- DICOM
@pytest.mark.parametrize("modality, sop_class", [("CR", CR_IMAGE_STORAGE), ("DX", DX_PRESENTATION_STORAGE)])
def test_dicom_is_valid_12_bit_mono2_with_fake_patient(tmp_path, modality, sop_class):
    path = write_phantom_dicom(tmp_path / "sub" / "phantom.dcm", size=(192, 160), seed=3, consolidation=True,
                               modality=modality)
    assert path == tmp_path / "sub" / "phantom.dcm" and path.is_file()
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # uncompressed
    assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == modality
    assert (ds.Rows, ds.Columns) == (192, 160)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert str(ds.PatientName) == PHANTOM_PATIENT_NAME == "PHANTOM^CXR"
    assert ds.PatientID == PHANTOM_PATIENT_ID and ds.PatientID.startswith("PHANTOM")
    assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
    assert all(UID(u).is_valid for u in uids) and len(set(uids)) == 3
    row_mm, col_mm = phantom_pixel_spacing((192, 160))
    assert row_mm == pytest.approx(0.143 * 2048 / 192, rel=1e-4)
    assert [float(x) for x in ds.PixelSpacing] == pytest.approx([row_mm, col_mm], rel=1e-4)
    assert [float(x) for x in ds.ImagerPixelSpacing] == pytest.approx([row_mm, col_mm], rel=1e-4)
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint16 and pixels.max() <= 4095
    expected = np.round(make_phantom((192, 160), seed=3, consolidation=True)[0][0].astype(np.float64) * 4095)
    assert np.array_equal(pixels, expected.astype(np.uint16))


def test_dicom_uids_deterministic_unless_asked(tmp_path):
    a = pydicom.dcmread(write_phantom_dicom(tmp_path / "a.dcm", size=64, seed=1))
    b = pydicom.dcmread(write_phantom_dicom(tmp_path / "b.dcm", size=64, seed=1))
    c = pydicom.dcmread(write_phantom_dicom(tmp_path / "c.dcm", size=64, seed=1, consolidation=True))
    d = pydicom.dcmread(write_phantom_dicom(tmp_path / "d.dcm", size=64, seed=1, deterministic_uids=False))
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.StudyInstanceUID == a.StudyInstanceUID  # same patient
    assert d.SOPInstanceUID != a.SOPInstanceUID and UID(d.SOPInstanceUID).is_valid


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_dicom_passes_dciodvfy(tmp_path, modality):
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = write_phantom_dicom(tmp_path / "p.dcm", size=128, seed=0, modality=modality)
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
    assert ("CRImage" if modality == "CR" else "DXImageForPresentation") in report


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_dicom_round_trip_through_load_cxr(tmp_path, modality):
    hw = (160, 144)
    path = write_phantom_dicom(tmp_path / "p.dcm", size=hw, seed=6, consolidation=True, modality=modality)
    image, meta = load_cxr(path)
    expected, _ = make_phantom(hw, seed=6, consolidation=True)
    assert image.shape == (1, *hw) and image.dtype == np.float32
    assert np.abs(image - expected).max() <= 0.5 / 4095 + 1e-6  # 12-bit quantisation only
    assert meta["spacing"] == pytest.approx(phantom_pixel_spacing(hw), rel=1e-4)
    assert meta["bits_stored"] == 12 and meta["photometric"] == "MONOCHROME2"
    assert meta["modality"] == modality and meta["body_part"] == "CHEST"
    assert meta["sop_uid"] == pydicom.dcmread(path).SOPInstanceUID
    assert meta["original_shape"] == hw


# ------------------------------------------------------------------------------------------- datasets
def test_write_phantom_dataset_png(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", n_per_class=3, size=64, seed=10)
    assert root == tmp_path / "ds"
    normal = sorted((root / "NORMAL").iterdir())
    pneumonia = sorted((root / "PNEUMONIA").iterdir())
    assert len(normal) == len(pneumonia) == 3
    assert len({p.stem for p in normal + pneumonia}) == 6  # every image its own patient
    for path in normal + pneumonia:
        png = Image.open(path)
        assert path.suffix == ".png" and png.mode == "L" and png.size == (64, 64)
    # the files are the phantoms, 8-bit; pneumonia images carry a consolidation
    first = np.asarray(Image.open(normal[0]))
    assert np.array_equal(first, np.round(make_phantom(64, seed=10)[0][0] * 255).astype(np.uint8))
    for n_path, p_path in zip(normal, pneumonia):
        seed = int(p_path.stem.removeprefix("phantom"))
        img, mask = make_phantom(64, seed=seed, consolidation=True)
        assert np.array_equal(np.asarray(Image.open(p_path)), np.round(img[0] * 255).astype(np.uint8))
        assert mask.sum() > 0


def test_write_phantom_dataset_dicom(tmp_path):
    root = write_phantom_dataset(tmp_path, n_per_class=1, size=48, seed=0, fmt="dcm", classes=("normal", "pneu"))
    files = sorted(root.rglob("*.dcm"))
    assert [f.parent.name for f in files] == ["normal", "pneu"]
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.Modality == "CR" and ds.pixel_array.shape == (48, 48)
