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
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    export_deploy_models(PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier",
                         PROJECT_ROOT / "bundles" / "cxr_sr_csaegan", out)
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
    return d


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
    return out, app.summary


def _images(summary) -> dict[str, dict]:
    return {Path(i["file"]).name: i for i in summary["images"]}


def test_every_input_is_processed_skipped_or_failed_with_a_reason(in_process) -> None:
    out, summary = in_process
    images = _images(summary)
    assert json.loads((out / "results.json").read_text())["counts"] == summary["counts"]
    ok = {n for n, i in images.items() if i["status"] == "ok"}
    assert ok == {"phantom_512.dcm", "phantom_2048.dcm", "kermany_child.dcm"}
    # the intended-population gate: the shared CRs are adults (their pixels; PatientAge 62Y), the DX thorax too
    # (its pixels), the extremity by its header, the child's pixels with an adult age by the age rule
    out_of_scope = {n: i for n, i in images.items() if i["status"] == "out_of_scope"}
    assert set(out_of_scope) == {"cr_chest_pa_mono2_jpeg.dcm", "cr_chest_pa_mono1_jpeg.dcm",
                                 "dx_thorax_mono1_small.dcm", "cr_extremity_mono1_j2k.dcm",
                                 "kermany_pixels_adult_age.dcm"}
    assert "EXTREMITY" in out_of_scope["cr_extremity_mono1_j2k.dcm"]["reason"]
    assert "age 45.0 years" in out_of_scope["kermany_pixels_adult_age.dcm"]["reason"]
    assert out_of_scope["dx_thorax_mono1_small.dcm"]["reason"].startswith("image check:")
    for name, img in out_of_scope.items():  # a report saying why, the enhanced image when SR applies, no finding
        assert "classification" not in img and "gradcam" not in img["outputs"] and "report" in img["outputs"], name
        assert img["scope"]["in_scope"] is False and img["scope"]["reason"] == img["reason"]
    assert "enhanced" in out_of_scope["kermany_pixels_adult_age.dcm"]["outputs"]
    assert summary["counts"]["out_of_scope"] == 5 and "children" in summary["intended_use"]
    assert images["truncated.dcm"]["status"] == "failed" and "truncated" in images["truncated.dcm"]["reason"]
    assert [Path(f["file"]).name for f in summary["files_rejected"]] == ["README.txt"]
    assert summary["run"]["device"] == "cpu" and summary["run"]["models"]["cxr_sr"]["version"]


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
    # the phantom carries a consolidation: the shipped classifier must call it PNEUMONIA
    assert cls["label"] == "PNEUMONIA"


def test_timings_on_two_cores(in_process) -> None:
    """Budgets: a 512x512 CR end to end under 30 s, a 2,048 px CR (SR skipped) under 10 s."""
    _, summary = in_process
    images = _images(summary)
    assert sum(images["phantom_512.dcm"]["seconds"].values()) < 30, images["phantom_512.dcm"]["seconds"]
    assert sum(images["phantom_2048.dcm"]["seconds"].values()) < 10, images["phantom_2048.dcm"]["seconds"]


def test_outputs_conform_and_reference_their_sources(in_process, study_dir: Path) -> None:
    exe = dciodvfy_exe()
    out, summary = in_process
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
               for f in study_dir.rglob("*.dcm") if f.name != "truncated.dcm"}
    per_study_series: dict[tuple[str, str], set] = {}
    for img in summary["images"]:
        if img["status"] not in ("ok", "out_of_scope"):
            continue
        src = pydicom.dcmread(sources[img["sop_uid"]], stop_before_pixels=True)
        for kind in ("enhanced", "report", "gradcam"):
            if kind not in img["outputs"]:
                continue
            ds = pydicom.dcmread(img["outputs"][kind])
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
        if "enhanced" in img["outputs"]:
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


def test_subprocess_strict_exit_status_and_memory(models: Path, study_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HOLOSCAN_INPUT_PATH": str(study_dir), "HOLOSCAN_OUTPUT_PATH": str(out),
           "HOLOSCAN_MODEL_PATH": str(models)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(APP_DIR), "--strict"], env=env, capture_output=True, text=True,
                          timeout=600)
    wall = time.monotonic() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert proc.returncode == 1, proc.stderr[-3000:]  # the truncated file failed, and --strict says so
    assert "1 failed" in proc.stdout
    summary = json.loads((out / "results.json").read_text())
    assert summary["counts"]["ok"] == 3 and summary["counts"]["out_of_scope"] == 5 and summary["counts"]["failed"] == 1
    assert "below the recommended minimum" not in proc.stderr  # the launcher raised the stack limit
    if peak_kb > before:  # ru_maxrss of children: the largest child so far
        assert peak_kb / 1024**2 < 3.0, f"peak RSS {peak_kb / 1024**2:.2f} GB"
    print(f"subprocess run: {wall:.1f} s, peak RSS {peak_kb / 1024**2:.2f} GB")


def test_subprocess_without_models_exits_2(study_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, str(APP_DIR), "-i", str(study_dir), "-o", str(tmp_path / "o"),
                           "-m", str(tmp_path / "empty")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "make deploy-models" in proc.stderr
    proc = subprocess.run([sys.executable, str(APP_DIR), "--sr-max-side", "0"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--sr-max-side" in proc.stderr


def test_map_manifests_without_docker(models: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "deploy" / "packaging" / "make_map.py"),
                           "--models", str(models), "--out", str(tmp_path / "map")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app = json.loads((tmp_path / "map" / "app.json").read_text())
    pkg = json.loads((tmp_path / "map" / "pkg.json").read_text())
    assert json.loads(app["command"]) == ["python3", "/opt/holoscan/app"]
    assert app["sdk"] == "monai-deploy" and app["sdkVersion"] == "4.0.0" and app["timeout"] == 600
    assert app["input"]["formats"] == ["file"] and app["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert pkg["models"] == {"cxr_pneumonia": "/opt/holoscan/models/cxr_pneumonia",
                             "cxr_scope": "/opt/holoscan/models/cxr_scope",
                             "cxr_sr": "/opt/holoscan/models/cxr_sr"}
    assert pkg["resources"]["cpu"] == 2 and pkg["resources"]["memory"] == "4Gi" and pkg["version"] == "0.1.0"
    if shutil.which("docker") is None or "not available" in proc.stdout:
        assert "stopped after writing the MAP manifests" in proc.stdout
