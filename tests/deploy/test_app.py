"""The MONAI Deploy app end to end: in-process and as a subprocess, on the phantom study, every file of
../shared/data/dicom, a truncated copy and a non-DICOM file; outputs checked with pydicom, dciodvfy and a real
Orthanc (C-STORE with pynetdicom, REST checks). Runs in the deploy venv (`make test-deploy`)."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("monai.deploy", reason="the MONAI Deploy SDK lives in .venv-deploy: run `make test-deploy`")

from cxr_monai.data.phantom import write_phantom_dicom  # noqa: E402
from cxr_monai.export import export_deploy_models  # noqa: E402
from tests.conftest import PROJECT_ROOT, SHARED_DATA  # noqa: E402
from tests.dicom_checks import c_store, dciodvfy_errors, dciodvfy_exe, orthanc_server  # noqa: E402

APP_DIR = PROJECT_ROOT / "deploy" / "cxr_enhance_classify"
NORMAL_FILM, PNEUMONIA_FILM = "NORMAL_IM-0261-0001.dcm", "PNEUMONIA_person1030_virus_1722.dcm"  # examples/kermany
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    export_deploy_models(PROJECT_ROOT / "bundles", out)
    return out


def _kermany_cr(jpeg: Path, out: Path, age: str) -> Path:
    """A Kermany JPEG as an uncompressed 12-bit CR (the phantom's header as template, new UIDs, PatientAge)."""
    from PIL import Image

    write_phantom_dicom(out, size=64, seed=1)
    ds = pydicom.dcmread(out)
    arr = (np.asarray(Image.open(jpeg).convert("L"), dtype=np.float64) / 255 * 4095).round().astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.PatientAge = age
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for tag in ("WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    ds.save_as(out)
    return out


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    dicom = SHARED_DATA / "dicom"
    if not dicom.is_dir():
        pytest.skip(f"real DICOM files not found at {dicom} (set CXR_SHARED_DATA)")
    d = tmp_path_factory.mktemp("input")
    write_phantom_dicom(d / "phantom_512.dcm", size=512, seed=7, consolidation=True)
    write_phantom_dicom(d / "sub" / "phantom_2048.dcm", size=2048, seed=8, consolidation=False)
    for f in sorted((PROJECT_ROOT / "examples" / "kermany").glob("*.dcm")):  # two real films, one of each class
        shutil.copy(f, d / f.name)
    for f in sorted(dicom.glob("*.dcm")):
        shutil.copy(f, d / f.name)
    # an image of the intended population (a child of the Kermany cohort) as a CR, and the same pixels with an
    # adult's PatientAge (out of scope by its header)
    child = sorted((SHARED_DATA / "kermany224" / "train" / "NORMAL").glob("*.jpeg"))[0]
    _kermany_cr(child, d / "kermany_child.dcm", "004Y")
    _kermany_cr(child, d / "kermany_pixels_adult_age.dcm", "045Y")
    ds = pydicom.dcmread(dicom / "cr_chest_pa_mono2_jpeg.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    (d / "truncated.dcm").write_bytes(data[: len(data) * 6 // 10])
    (d / "README.txt").write_text("not a DICOM file\n")
    _uid_cases(d, dicom)
    _shutter_cases(d, PROJECT_ROOT / "examples" / "kermany" / NORMAL_FILM)
    return d


FRAMED = {"framed_black_0.2.dcm": (0.2, 0), "framed_white_0.15.dcm": (0.15, 255)}


def _shutter_cases(d: Path, film: Path) -> None:
    """The real NORMAL example with a shutter frame burned into its pixels (black 0.2, white 0.15 of each side),
    and the same film cropped to what each frame leaves (as separate studies)."""
    for name, (f, value) in FRAMED.items():
        for kind in ("framed", "cropped"):
            ds = pydicom.dcmread(film)
            arr = ds.pixel_array.copy()
            h, w = arr.shape
            dy, dx = round(h * f), round(w * f)
            if kind == "framed":
                arr[:dy], arr[h - dy:], arr[:, :dx], arr[:, w - dx:] = value, value, value, value
            else:
                arr = np.ascontiguousarray(arr[dy:h - dy, dx:w - dx])
                ds.Rows, ds.Columns = arr.shape
            ds.PixelData = arr.tobytes()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(d / (name if kind == "framed" else name.replace("framed", "cropped")))


def _uid_cases(d: Path, dicom: Path) -> None:
    """Files whose UIDs do not identify them: a truncated copy of a complete CR with its SOPInstanceUID (sorted
    before it), a complete copy of the DX (sorted after it), a phantom without SOP/Study UIDs, one of another
    modality (a series the selector leaves out)."""
    data = (dicom / "cr_chest_pa_mono2_jpeg.dcm").read_bytes()
    (d / "a_truncated_copy_same_uid.dcm").write_bytes(data[: len(data) * 6 // 10])
    shutil.copy(dicom / "dx_thorax_mono1_small.dcm", d / "zz_duplicate_of_dx.dcm")
    ds = pydicom.dcmread(write_phantom_dicom(d / "no_uids.dcm", size=64, seed=2))
    del ds.SOPInstanceUID, ds.StudyInstanceUID
    ds.save_as(d / "no_uids.dcm")
    ds = pydicom.dcmread(write_phantom_dicom(d / "other_modality.dcm", size=64, seed=3))
    ds.Modality = "OT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(d / "other_modality.dcm")


def _accounted_files(summary) -> list[str]:
    """Every file results.json names: images, rejected files, files of the series not selected."""
    return ([i["file"] for i in summary["images"]] + [f["file"] for f in summary["files_rejected"]]
            + [f for s in summary["series_not_selected"] for f in s["files"]])


def _assert_every_file_once(folder: Path, summary) -> None:
    inputs = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    named = _accounted_files(summary)
    assert sorted(named) == inputs, (sorted(set(inputs) - set(named)), sorted(set(named) - set(inputs)))
    assert len(named) == len(inputs)  # no file twice


@pytest.fixture(scope="module")
def in_process(models: Path, study_dir: Path, tmp_path_factory):
    sys.path.insert(0, str(APP_DIR))
    try:
        from app import CXREnhanceClassifyApp
    finally:
        sys.path.remove(str(APP_DIR))
    out = tmp_path_factory.mktemp("out_inproc")
    app = CXREnhanceClassifyApp(["app", "-i", str(study_dir), "-o", str(out), "-m", str(models)])
    app.run()
    # the peak RSS of this process (pytest included) bounds the app's: read it before other tests allocate
    app.summary["_test_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return out, app.summary


def _images(summary) -> dict[str, dict]:
    return {Path(i["file"]).name: i for i in summary["images"]}


def test_every_input_is_processed_skipped_or_failed_with_a_reason(in_process, study_dir: Path) -> None:
    out, summary = in_process
    images = _images(summary)
    assert json.loads((out / "results.json").read_text())["counts"] == summary["counts"]
    shutter = {n for n in images if n.startswith(("framed_", "cropped_"))}  # their own test
    assert len(shutter) == 2 * len(FRAMED)
    ok = {n for n, i in images.items() if i["status"] == "ok"} - shutter
    assert ok == {"phantom_512.dcm", "phantom_2048.dcm", "kermany_child.dcm", NORMAL_FILM, PNEUMONIA_FILM}
    # the intended-population gate: the shared CRs are adults (their pixels; PatientAge 62Y), the DX thorax too
    # (its pixels), the extremity by its header, the child's pixels with an adult age by the age rule
    out_of_scope = {n: i for n, i in images.items() if i["status"] == "out_of_scope" and n not in shutter}
    assert set(out_of_scope) == {"cr_chest_pa_mono1_jpeg.dcm", "dx_thorax_mono1_small.dcm",
                                 "cr_extremity_mono1_j2k.dcm", "kermany_pixels_adult_age.dcm"}
    assert "EXTREMITY" in out_of_scope["cr_extremity_mono1_j2k.dcm"]["reason"]
    assert "age 45.0 years" in out_of_scope["kermany_pixels_adult_age.dcm"]["reason"]
    assert out_of_scope["dx_thorax_mono1_small.dcm"]["reason"].startswith("image check:")
    for name, img in out_of_scope.items():  # a report saying why, the enhanced image when SR applies, no finding
        assert "classification" not in img and "gradcam" not in img["outputs"] and "report" in img["outputs"], name
        assert "summary" in img["outputs"], name  # "not assessed" and why, burned into a summary SC
        assert img["scope"]["in_scope"] is False and img["scope"]["reason"] == img["reason"]
    assert "enhanced" in out_of_scope["kermany_pixels_adult_age.dcm"]["outputs"]
    refused_shutter = sum(images[n]["status"] == "out_of_scope" for n in shutter)
    assert summary["counts"]["out_of_scope"] == 4 + refused_shutter and "children" in summary["intended_use"]
    assert images["truncated.dcm"]["status"] == "failed" and "truncated" in images["truncated.dcm"]["reason"]
    rejected = {Path(f["file"]).name: f for f in summary["files_rejected"]}
    # the shared MONOCHROME2 CR has the SOPInstanceUID of its MONOCHROME1 twin: one instance, the second file skipped
    assert set(rejected) == {"README.txt", "no_uids.dcm", "zz_duplicate_of_dx.dcm", "cr_chest_pa_mono2_jpeg.dcm"}
    assert rejected["README.txt"]["reason"].startswith("not a DICOM file")
    assert rejected["no_uids.dcm"]["reason"].startswith("no SOPInstanceUID, StudyInstanceUID")
    assert rejected["zz_duplicate_of_dx.dcm"]["reason"] == \
        f"duplicate SOPInstanceUID of {study_dir / 'dx_thorax_mono1_small.dcm'}"
    assert rejected["cr_chest_pa_mono2_jpeg.dcm"]["reason"] == \
        f"duplicate SOPInstanceUID of {study_dir / 'cr_chest_pa_mono1_jpeg.dcm'}"
    assert all(f["status"] == "skipped" for f in rejected.values())
    assert [Path(f).name for s in summary["series_not_selected"] for f in s["files"]] == ["other_modality.dcm"]
    assert summary["run"]["device"] == "cpu" and summary["run"]["models"]["cxr_sr"]["version"]


def test_truncated_copy_with_the_uid_of_a_complete_file_is_listed(in_process, study_dir: Path) -> None:
    """The complete CR and its truncated copy (same SOPInstanceUID, sorted first) are both in results.json: the
    copy failed with the reason, the first complete file with that UID processed (the shared MONOCHROME1 twin),
    the CR the copy was made from skipped as its duplicate."""
    _, summary = in_process
    images = _images(summary)
    rejected = {Path(f["file"]).name: f for f in summary["files_rejected"]}
    copy, good = images["a_truncated_copy_same_uid.dcm"], images["cr_chest_pa_mono1_jpeg.dcm"]
    assert copy["status"] == "failed" and copy["reason"].startswith("load:") and "truncated" in copy["reason"]
    assert good["status"] == "out_of_scope" and good["sop_uid"] == copy["sop_uid"] and "enhanced" in good["outputs"]
    assert rejected["cr_chest_pa_mono2_jpeg.dcm"]["sop_uid"] == copy["sop_uid"]


def test_number_of_input_files_equals_the_files_in_results(in_process, study_dir: Path) -> None:
    _, summary = in_process
    _assert_every_file_once(study_dir, summary)


def test_size_policy_and_probabilities(in_process) -> None:
    _, summary = in_process
    images = _images(summary)
    big = images["phantom_2048.dcm"]
    assert big["sr"]["applied"] is False and "2048" in big["sr"]["note"] and "enhanced" not in big["outputs"]
    assert big["classification"]["probability_unenhanced"] is None
    small = images["phantom_512.dcm"]
    assert small["sr"]["applied"] is True and small["sr"]["output_shape"] == [2048, 2048]
    cls = small["classification"]
    assert cls["read_enhanced"] and 0 <= cls["probability"] <= 1 and 0 <= cls["probability_unenhanced"] <= 1
    # the two real films (never trained on) get their own class, enhanced or not: a constant model fails here
    assert_reads_both_classes(images)


def assert_reads_both_classes(images: dict[str, dict]) -> None:
    """The NORMAL example film is called NORMAL and the PNEUMONIA one PNEUMONIA, on the enhanced image (the
    reported finding) and on the image as stored (``probability_unenhanced`` against the threshold)."""
    for name, label in ((NORMAL_FILM, "NORMAL"), (PNEUMONIA_FILM, "PNEUMONIA")):
        cls = images[name]["classification"]
        assert images[name]["status"] == "ok" and cls["label"] == label, (name, cls)
        assert (cls["probability_unenhanced"] >= cls["threshold"]) == (label == "PNEUMONIA"), (name, cls)


def test_reads_both_classes_fails_for_a_constant_pneumonia_answer(in_process) -> None:
    """The check above must fail when every film is called PNEUMONIA (what a constant model would answer)."""
    _, summary = in_process
    images = _images(summary)
    constant = {n: {**i, "classification": {**i["classification"], "label": "PNEUMONIA", "probability": 1.0,
                                            "probability_unenhanced": 1.0}} if "classification" in i else i
                for n, i in images.items()}
    with pytest.raises(AssertionError):
        assert_reads_both_classes(constant)


def test_finding_is_burned_into_the_gradcam_sc(in_process) -> None:
    """The phantom CR's Grad-CAM SC: the overlay below a band of burned-in text, BurnedInAnnotation YES; the PNG
    is the same picture."""
    from PIL import Image

    _, summary = in_process
    img = _images(summary)["phantom_512.dcm"]
    sc = pydicom.dcmread(img["outputs"]["gradcam"])
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SeriesDescription == "AI Grad-CAM pneumonia - NOT FOR PRIMARY DIAGNOSIS"
    assert (sc.Columns, sc.PhotometricInterpretation) == (512, "RGB") and sc.Rows > 512 + 100
    band = sc.pixel_array[: sc.Rows - 512]
    assert (band == [255, 215, 0]).all(axis=-1).any() and 0.01 < (band.max(axis=-1) > 128).mean() < 0.5
    np.testing.assert_array_equal(np.asarray(Image.open(img["outputs"]["gradcam_png"])), sc.pixel_array)


def test_a_shutter_frame_is_cropped_off_and_the_film_read_as_its_crop(in_process) -> None:
    """The app crops a burned-in shutter frame (black or white) off before the gate and the classifier: the framed
    film gets the decision and, to float noise, the probability of the same film cropped to its exposed field, and
    results.json records the frame; a film without a frame records none."""
    images = _images(in_process[1])
    for name, (f, _) in FRAMED.items():
        framed, cropped = images[name], images[name.replace("framed", "cropped")]
        assert framed["status"] == cropped["status"], (name, framed["status"], framed.get("reason"))
        assert framed["scope"]["in_scope"] == cropped["scope"]["in_scope"]
        if not cropped["scope"]["in_scope"]:
            continue
        field = framed["classification"]["exposed_field"]
        assert field and field["found"] and abs(field["top"] - f) < 0.01 and abs(1 - field["right"] - f) < 0.01
        assert framed["classification"]["label"] == cropped["classification"]["label"]
        assert abs(framed["classification"]["probability"] - cropped["classification"]["probability"]) < 0.02
    assert images[NORMAL_FILM]["classification"]["exposed_field"] is None
    assert any(images[n]["scope"]["in_scope"] for n in FRAMED)  # at least one framed film was read


def test_timings_on_two_cores(in_process) -> None:
    """Budgets: a 512x512 CR end to end under 30 s, a 2,048 px CR (SR skipped) under 10 s."""
    _, summary = in_process
    images = _images(summary)
    assert sum(images["phantom_512.dcm"]["seconds"].values()) < 30, images["phantom_512.dcm"]["seconds"]
    assert sum(images["phantom_2048.dcm"]["seconds"].values()) < 10, images["phantom_2048.dcm"]["seconds"]


def test_outputs_conform_and_reference_their_sources(in_process, study_dir: Path) -> None:
    exe = dciodvfy_exe()
    out, summary = in_process
    per_study_series: dict[tuple[str, str], set] = {}
    for img in summary["images"]:
        if img["status"] not in ("ok", "out_of_scope"):
            continue
        src = pydicom.dcmread(img["file"], stop_before_pixels=True)
        for kind in ("enhanced", "report", "gradcam", "summary"):
            if kind not in img["outputs"]:
                continue
            ds = pydicom.dcmread(img["outputs"][kind])
            if kind in ("gradcam", "summary"):  # the finding is burned into these pixels
                assert ds.BurnedInAnnotation == "YES" and "NOT FOR PRIMARY DIAGNOSIS" in ds.SeriesDescription
                assert ("gradcam" in img["outputs"]) == (img["status"] == "ok") != ("summary" in img["outputs"])
            per_study_series.setdefault((src.StudyInstanceUID, kind), set()).add(ds.SeriesInstanceUID)
            assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
            assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")
            if kind != "report":
                assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
            assert not dciodvfy_errors(exe, Path(img["outputs"][kind])), (kind, img["file"])
        report = _sr_content(pydicom.dcmread(img["outputs"]["report"]))
        if img["status"] == "out_of_scope":  # coded "not assessed", the reason as text, no finding, no probability
            assert ("Intended-population check", "OUT-OF-SCOPE") in report["codes"]
            assert img["reason"] in report["texts"] and "Finding" not in {n for n, _ in report["codes"]}
            assert not report["numbers"]
        else:
            assert ("Intended-population check", "IN-SCOPE") in report["codes"]
            assert ("Finding", "233604007" if img["classification"]["label"] == "PNEUMONIA" else "17621005") \
                in report["codes"]
            assert report["numbers"]["Pneumonia probability (calibrated)"] == pytest.approx(
                img["classification"]["probability"], abs=1e-6)
        assert any("children" in t for t in report["texts"])
        assert ("enhanced" in img["outputs"]) == img["sr"]["applied"], img["file"]
        if img["sr"]["applied"]:
            sc = pydicom.dcmread(img["outputs"]["enhanced"], stop_before_pixels=True)
            assert (sc.Rows, sc.Columns) == (4 * src.Rows, 4 * src.Columns)
    assert all(len(v) == 1 for v in per_study_series.values())
    assert not list(out.rglob("*.partial")) and not [p for p in out.rglob(".*") if p.is_file()]


def _sr_content(ds) -> dict:
    """Every coded value (concept meaning, code value), text value and numeric value in an SR's content tree."""
    found = {"codes": set(), "texts": [], "numbers": {}}

    def walk(items) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CODE":
                found["codes"].add((name, item.ConceptCodeSequence[0].CodeValue))
            elif item.ValueType == "TEXT":
                found["texts"].append(str(item.TextValue))
            elif item.ValueType == "NUM":
                found["numbers"][name] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def test_orthanc_stores_every_object(in_process, study_dir: Path, tmp_path: Path) -> None:
    out, summary = in_process
    written = sorted(out.rglob("*.dcm"))
    chest = [Path(i["file"]) for i in summary["images"] if i["status"] in ("ok", "out_of_scope")]
    with orthanc_server(tmp_path / "orthanc") as pacs:
        statuses = c_store(written, pacs.dicom_port, pacs.aet)
        refused = {u: hex(s) for u, s in statuses.items() if s != 0}
        assert not refused, refused  # every object the app wrote is accepted
        # the sources too, so that references can be resolved; Orthanc refuses the two JPEG CR files of the shared
        # data themselves ("Odd Fragment Length": their encapsulation is not conformant), which is not ours to fix
        source_status = c_store(chest, pacs.dicom_port, pacs.aet)
        stored_sources = {u for u, s in source_status.items() if s == 0}
        assert len(stored_sources) >= 3
        for f in written:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            found = pacs.post("/tools/lookup", ds.SOPInstanceUID)
            assert len(found) == 1 and found[0]["Type"] == "Instance", f
            tags = pacs.get(f"/instances/{found[0]['ID']}/simplified-tags")
            assert tags["SOPClassUID"] == ds.SOPClassUID and tags["StudyInstanceUID"] == ds.StudyInstanceUID
            if "SourceImageSequence" in ds:  # the referenced source is in the PACS too
                ref = tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"]
                assert ref in source_status and (ref not in stored_sources or pacs.post("/tools/lookup", ref)), ref
            if ds.Modality == "SR":
                assert tags["VerificationFlag"] == "UNVERIFIED"
                evidence = tags["CurrentRequestedProcedureEvidenceSequence"]
                for study in evidence:
                    for series in study["ReferencedSeriesSequence"]:
                        for sop in series["ReferencedSOPSequence"]:
                            uid = sop["ReferencedSOPInstanceUID"]
                            if uid in stored_sources or uid in statuses:
                                assert pacs.post("/tools/lookup", uid), uid
        stats = pacs.get("/statistics")
        assert stats["CountInstances"] == len(set(statuses) | stored_sources)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """A small folder for the subprocess run (the in-process run covers the 1,024 -> 4,096 px case): a 512 px
    phantom, a truncated copy of it under its SOPInstanceUID, a complete copy, a non-DICOM file."""
    d = tmp_path_factory.mktemp("small")
    data = write_phantom_dicom(d / "phantom_512.dcm", size=512, seed=7, consolidation=True).read_bytes()
    (d / "phantom_512_truncated.dcm").write_bytes(data[: len(data) * 6 // 10])
    (d / "phantom_512_copy.dcm").write_bytes(data)
    (d / "notes.txt").write_text("not a DICOM file\n")
    return d


def test_peak_memory_of_the_large_run(in_process) -> None:
    """The in-process run (two 1,024 px CRs enhanced to 4,096 px) stays under 3 GB: the peak RSS of the whole
    pytest process, an upper bound of the app's."""
    _, summary = in_process
    assert summary["_test_peak_rss_gb"] < 3.0, f"peak RSS {summary['_test_peak_rss_gb']:.2f} GB"


def test_subprocess_strict_exit_status_and_memory(models: Path, small_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HOLOSCAN_INPUT_PATH": str(small_dir), "HOLOSCAN_OUTPUT_PATH": str(out),
           "HOLOSCAN_MODEL_PATH": str(models)}
    start = time.monotonic()
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen([sys.executable, str(APP_DIR), "--strict"], env=env, stdout=so, stderr=se, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (and its waited-for children's)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 1, stderr[-3000:]  # the truncated file failed, and --strict says so
    assert "1 failed" in stdout
    summary = json.loads((out / "results.json").read_text())
    assert summary["counts"]["ok"] == 1 and summary["counts"]["failed"] == 1 and summary["counts"]["files_rejected"] == 2
    images = _images(summary)
    assert images["phantom_512.dcm"]["status"] == "ok"  # classified (which class: the real films of the in-process run)
    assert "truncated" in images["phantom_512_truncated.dcm"]["reason"]
    _assert_every_file_once(small_dir, summary)
    assert "below the recommended minimum" not in stderr  # the launcher raised the stack limit
    peak_gb = usage.ru_maxrss / 1024**2
    assert 0.1 < peak_gb < 3.0, f"peak RSS {peak_gb:.2f} GB"
    print(f"subprocess run: {wall:.1f} s, peak RSS {peak_gb:.2f} GB")


def test_subprocess_without_models_exits_2(study_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, str(APP_DIR), "-i", str(study_dir), "-o", str(tmp_path / "o"),
                           "-m", str(tmp_path / "empty")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "make deploy-models" in proc.stderr
    proc = subprocess.run([sys.executable, str(APP_DIR), "--sr-max-side", "0"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--sr-max-side" in proc.stderr


def test_map_manifests_without_docker(models: Path, tmp_path: Path) -> None:
    # a `docker` first on PATH that fails: the packager must stop after the manifests, whatever this machine has
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text("#!/bin/sh\nexit 1\n")
    (fake / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "deploy" / "packaging" / "make_map.py"),
                           "--models", str(models), "--out", str(tmp_path / "map")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app = json.loads((tmp_path / "map" / "app.json").read_text())
    pkg = json.loads((tmp_path / "map" / "pkg.json").read_text())
    assert json.loads(app["command"]) == ["python3", "/opt/holoscan/app"]
    assert app["sdk"] == "monai-deploy" and app["sdkVersion"] == "4.0.0" and app["timeout"] == 600
    assert app["input"]["formats"] == ["file"] and app["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert pkg["models"] == {"cxr_lung": "/opt/holoscan/models/cxr_lung",
                             "cxr_pneumonia": "/opt/holoscan/models/cxr_pneumonia",
                             "cxr_scope": "/opt/holoscan/models/cxr_scope",
                             "cxr_sr": "/opt/holoscan/models/cxr_sr"}
    assert pkg["resources"]["cpu"] == 2 and pkg["resources"]["memory"] == "4Gi" and pkg["version"] == "0.1.0"
    assert "stopped after writing the MAP manifests" in proc.stdout
