"""Burned-in text (cxr_monai.dicom.burn_in): the lines composed from the result dict, the pixels they change, and the
summary Secondary Capture of an out-of-scope image (dciodvfy-clean, BurnedInAnnotation YES)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_monai.data.phantom import write_phantom_dicom
from cxr_monai.dicom.burn_in import DISCLAIMER, burn_in, calibration_line, finding_lines, text_band
from cxr_monai.io import load_cxr
from cxr_monai.records import ImageRecord
from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe

MODEL = {"model_name": "cxr_pneumonia_classifier", "version": "0.2.0"}
SITE = {"source": "site", "id": "stmarys-cr-2026", "date": "2026-11-30", "a": 0.9, "b": -0.1}


def test_finding_lines_come_from_the_result() -> None:
    result = {"label": "PNEUMONIA", "probability": 0.87349, "threshold": 0.5, "calibration": SITE}
    lines = finding_lines(result, MODEL, cam_class="PNEUMONIA")
    text = "\n".join(lines)
    assert lines[0] == DISCLAIMER == "AI RESULT - NOT FOR PRIMARY DIAGNOSIS"
    assert "Finding: PNEUMONIA" in text and "probability 0.873" in text and "threshold 0.500" in text
    assert "site 'stmarys-cr-2026', commissioned 2026-11-30" in text
    assert "Model: cxr_pneumonia_classifier 0.2.0" in text and "in the intended population" in text
    assert "Grad-CAM of the class PNEUMONIA" in text
    normal = "\n".join(finding_lines({"label": "NORMAL", "probability": 0.1204, "threshold": 0.4375,
                                      "calibration": {"source": "default", "id": "default"}}, MODEL))
    assert "Finding: NORMAL" in normal and "probability 0.120" in normal and "threshold 0.438" in normal
    assert "Calibration: default" in normal and "Grad-CAM" not in normal
    assert calibration_line(None) == "Calibration: default (shipped with the model)"


def test_not_assessed_lines_state_the_reason_and_no_probability() -> None:
    lines = finding_lines(None, MODEL, scope_reason="body part EXTREMITY is not a chest")
    text = "\n".join(lines)
    assert lines[0] == DISCLAIMER and "Pneumonia: NOT ASSESSED" in text
    assert "outside the intended population - body part EXTREMITY is not a chest" in text
    assert "probability" not in text and "threshold" not in text and "Model: cxr_pneumonia_classifier 0.2.0" in text
    with pytest.raises(ValueError, match="result"):
        finding_lines(None, MODEL)


@pytest.mark.parametrize("bitmap", [False, True])
def test_burn_in_draws_the_text_above_the_unchanged_image(bitmap: bool) -> None:
    rgb = np.full((600, 640, 3), 60, dtype=np.uint8)
    lines = finding_lines({"label": "PNEUMONIA", "probability": 0.9, "threshold": 0.5}, MODEL)
    out = burn_in(rgb, lines, bitmap=bitmap)
    band = out[: out.shape[0] - 600]
    assert out.shape[1] == 640 and band.shape[0] >= len(lines) * 16
    np.testing.assert_array_equal(out[-600:], rgb)  # no pixel of the image is covered
    bright = (band.max(axis=-1) > 128).mean()
    assert 0.01 < bright < 0.5, bright  # text, not an empty or a filled band
    assert (band == [255, 215, 0]).all(axis=-1).any()  # the disclaimer line in yellow
    # the text region depends on the text: another finding changes the pixels of its line
    other = burn_in(rgb, finding_lines({"label": "NORMAL", "probability": 0.1, "threshold": 0.5}, MODEL),
                    bitmap=bitmap)
    assert other.shape == out.shape and (other != out).any(axis=-1).sum() > 50


def test_burn_in_enlarges_small_images_and_wraps_long_lines() -> None:
    grey = np.linspace(0, 1, 64 * 100, dtype=np.float32).reshape(1, 64, 100)
    out = burn_in(grey, [DISCLAIMER])
    assert out.shape[1] == 600 and out.dtype == np.uint8  # 100 px -> x6 to reach 512 px
    np.testing.assert_array_equal(out[-384:, :, 0], np.round(grey[0] * 255).astype(np.uint8).repeat(6, 0).repeat(6, 1))
    big = burn_in(np.zeros((1, 90, 2500)), [DISCLAIMER], max_width=1024)  # reduced by 3: 2500 -> 833 px
    assert big.shape[1] == 833 and (big[-30:] == 0).all()
    short = text_band(["one line"], 600, 20)
    long = text_band(["word " * 60], 600, 20)
    assert long.shape[0] > 2 * short.shape[0] and long.shape[1] == short.shape[1] == 600


def _out_of_scope_record(src: Path) -> ImageRecord:
    image, meta = load_cxr(src)
    ds = pydicom.dcmread(src)
    return ImageRecord(file=str(src), study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                       sop_uid=str(ds.SOPInstanceUID), modality="CR", status="out_of_scope",
                       reason="patient age 45.0 years is above 10 years", dataset=ds, image=image, meta=meta,
                       scope={"in_scope": False, "classifier": MODEL["model_name"],
                              "classifier_version": MODEL["version"]})


def test_out_of_scope_image_gets_a_conformant_not_assessed_summary_sc(tmp_path: Path) -> None:
    from cxr_monai.results import SERIES_NUMBERS, write_study_results

    exe = dciodvfy_exe()
    src = write_phantom_dicom(tmp_path / "adult.dcm", size=256, seed=3)
    rec = _out_of_scope_record(src)
    summary = write_study_results([rec], tmp_path / "out")
    assert summary["counts"]["out_of_scope"] == 1 and set(rec.outputs) == {"report", "summary"}
    path = Path(rec.outputs["summary"])
    assert path.parent.name == "summary" and not dciodvfy_errors(exe, path)
    sc = pydicom.dcmread(path)
    source = pydicom.dcmread(src, stop_before_pixels=True)
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.SeriesDescription == "AI pneumonia: not assessed - NOT FOR PRIMARY DIAGNOSIS"
    assert sc.SeriesNumber == SERIES_NUMBERS["summary"] and sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "cxr_pneumonia_classifier 0.2.0" in sc.DerivationDescription
    # the source image (x2: 256 -> 512 px wide) below the text band
    expected = np.round(np.clip(rec.image[0], 0, 1) * 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(sc.pixel_array[-512:, :, 1], expected)
    assert sc.Columns == 512 and sc.pixel_array[: sc.Rows - 512].max() == 255
