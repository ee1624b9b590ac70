"""The PACS loop (``make pacs``): a study stored into Orthanc comes back with its AI results.

Orthanc (Debian ``orthanc``, ``orthanc-dicomweb``, ``orthanc-python``) on free loopback ports with the project's
plugin (``deploy/pacs/ai_router.py``), ``StableAge`` 2 s. dcmtk's ``storescu`` sends a 512 px CR study; the test
waits for the SR and the enhanced SC in Orthanc's REST API and checks the SR's finding and the SC's reference to its
source; then re-sends the study (nothing is stored twice, our own outputs are never fed back), sends a non-chest
study (JPEG 2000, ``-xv``) and a truncated file: Orthanc keeps running, the reasons are logged, the log names studies
by UID only. Orthanc is stopped by its PID. The runner is the MAP image when one exists (``make map`` or
tests/deploy/test_map.py built it), else ``.venv-deploy``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.conftest import PROJECT_ROOT, SHARED_DATA
from tests.dicom_checks import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
RUN_PACS = PROJECT_ROOT / "deploy" / "pacs" / "run_pacs.py"
OWN = "cxr_monai"


def _map_image() -> str | None:
    if shutil.which("podman") is None:
        return None
    for image in ("localhost/cxr-enhance-classify:test", "localhost/cxr-enhance-classify:0.1.0"):
        if subprocess.run(["podman", "image", "exists", image]).returncode == 0:
            return image
    return None


class Pacs:
    def __init__(self, root: Path) -> None:
        self.root, self.http, self.dicom = root, free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            return json.loads(r.read()) if "json" in r.headers.get("Content-Type", "") else r.read()

    def post(self, path: str, body: bytes):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def events(self) -> list[dict]:
        f = self.root / "ai_router.log"
        return [json.loads(ln) for ln in f.read_text().splitlines()] if f.exists() else []

    def store(self, f: Path, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(["storescu", *flags, "-aec", "ORTHANC", "127.0.0.1", str(self.dicom), str(f)],
                              capture_output=True, text=True, timeout=120)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-3000:]}"
            found = predicate()
            if found:
                return found
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; log: {self.events()[-10:]}")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    for tool in ("Orthanc", "storescu"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (`make tools`)")
    if not PYTHON_PLUGIN.is_file():
        pytest.skip("orthanc-python not installed (`make pacs` installs it)")
    root = tmp_path_factory.mktemp("pacs")
    p = Pacs(root)
    image = _map_image()
    cmd = [sys.executable, str(RUN_PACS), "--dir", str(root), "--http-port", str(p.http), "--dicom-port", str(p.dicom),
           "--stable-age", "2", "--timeout", "900", "--runner", "map" if image else "venv"]
    if image:
        cmd += ["--image", image]
    log = open(root / "orthanc.log", "w")
    p.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p.runner = "map" if image else "venv"
    deadline = time.monotonic() + 60
    while True:
        try:
            p.get("/system")
            break
        except OSError:
            assert p.proc.poll() is None and time.monotonic() < deadline, (root / "orthanc.log").read_text()[-3000:]
            time.sleep(0.3)
    yield p
    # stop Orthanc by its PID (run_pacs.py exec'd Orthanc: the PID file names the same process)
    assert int((root / "orthanc.pid").read_text()) == p.proc.pid
    os.kill(p.proc.pid, signal.SIGTERM)
    try:
        p.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait(timeout=10)
    for line in (root / "orthanc.log").read_text().splitlines()[-5:]:
        print(line)


def _phantom(d: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "cxr_monai", "phantom", "--out_dir", str(d)], capture_output=True,
                          text=True, timeout=300, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    return d / "phantom_cxr.dcm"


def _ai_series(pacs: Pacs, study_uid: str) -> dict[str, list[dict]]:
    found = pacs.post("/tools/lookup", study_uid.encode())
    if not found:
        return {}
    out: dict[str, list[dict]] = {}
    for s in pacs.get(f"/studies/{found[0]['ID']}/series"):
        tags = s["MainDicomTags"]
        if tags.get("Manufacturer") == OWN or tags.get("Modality") in ("SR", "OT"):
            out.setdefault(tags.get("Modality"), []).append(s)
    return out


def _sr_texts(ds) -> list[str]:
    texts = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "CODE":
                texts.append(f"{name}={it.ConceptCodeSequence[0].CodeMeaning}")
            elif it.ValueType == "NUM":
                texts.append(f"{name}={it.MeasuredValueSequence[0].NumericValue}")
            elif it.ValueType == "TEXT":
                texts.append(f"{name}={it.TextValue}")
            walk(it.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return texts


def test_cr_study_comes_back_with_sr_and_enhanced_image(pacs: Pacs, tmp_path: Path) -> None:
    src = _phantom(tmp_path)
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    t0 = time.monotonic()
    proc = pacs.store(src)
    assert proc.returncode == 0, proc.stderr
    series = pacs.wait_for(lambda: (lambda s: s if "SR" in s and len(s.get("OT", [])) >= 2 else None)(
        _ai_series(pacs, study_uid)), 900, "the SR and the enhanced and Grad-CAM SCs")
    seconds = time.monotonic() - t0
    print(f"storescu -> SR + enhanced SC in Orthanc: {seconds:.1f} s (runner {pacs.runner})")
    (PROJECT_ROOT / "map_build").mkdir(exist_ok=True)
    (PROJECT_ROOT / "map_build" / "pacs_last_timing.json").write_text(json.dumps(
        {"storescu_to_results_s": round(seconds, 1), "runner": pacs.runner, "stable_age_s": 2}))
    sr_inst = series["SR"][0]["Instances"][0]
    sr = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{sr_inst}/file")))
    texts = _sr_texts(sr)
    assert any(t.startswith("Finding=") for t in texts), texts
    assert sr.StudyInstanceUID == study_uid
    enhanced = [s for s in series["OT"] if "enhanced" in s["MainDicomTags"].get("SeriesDescription", "")]
    assert len(enhanced) == 1
    sc = pacs.get(f"/instances/{enhanced[0]['Instances'][0]}/simplified-tags")
    assert sc["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] == sop_uid
    assert sc["StudyInstanceUID"] == study_uid

    # re-send: nothing new, nothing stored twice; our outputs were never fed back into the AI
    n_before = pacs.get("/statistics")["CountInstances"]
    assert pacs.store(src).returncode == 0
    pacs.wait_for(lambda: [e for e in pacs.events() if e["event"] == "nothing_new" and e.get("study_uid") == study_uid
                           and e["time"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))],
                  120, "the re-sent study's 'nothing_new'")
    time.sleep(3)
    assert pacs.get("/statistics")["CountInstances"] == n_before
    runs = [e for e in pacs.events() if e["event"] == "run_start" and e.get("study_uid") == study_uid]
    assert len(runs) == 1 and runs[0]["instances"] == 1
    # logs name studies by UID only
    log_text = (pacs.root / "ai_router.log").read_text()
    assert str(ds.PatientName) not in log_text and str(ds.PatientID) not in log_text


def test_non_chest_and_truncated_inputs_are_logged_and_the_loop_goes_on(pacs: Pacs, tmp_path: Path) -> None:
    extremity = SHARED_DATA / "dicom" / "cr_extremity_mono1_j2k.dcm"
    if not extremity.is_file():
        pytest.skip(f"{extremity} not found (set CXR_SHARED_DATA)")
    ext_uid = str(pydicom.dcmread(extremity, stop_before_pixels=True).StudyInstanceUID)
    proc = pacs.store(extremity, "-xv")
    assert proc.returncode == 0, proc.stderr
    # a truncated file (the last 40 % cut off): storescu cannot read it, Orthanc's REST API refuses it; the reasons
    # are theirs, and Orthanc logs its own
    src = _phantom(tmp_path / "t")
    trunc = tmp_path / "truncated.dcm"
    data = src.read_bytes()
    trunc.write_bytes(data[: len(data) * 6 // 10])
    sent = pacs.store(trunc)
    assert "premature end" in sent.stderr or "Bad DICOM" in sent.stderr, sent.stderr
    with pytest.raises(urllib.error.HTTPError) as refused:
        pacs.post("/instances", trunc.read_bytes())
    assert refused.value.code == 400
    assert "Bad file format" in (pacs.root / "orthanc.log").read_text()
    # the same CR with its pixel data cut short inside a well-formed file: Orthanc stores it, the app fails it
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    cut = tmp_path / "cut_pixels.dcm"
    ds.save_as(cut)
    cut_uid = str(ds.StudyInstanceUID)
    assert pacs.store(cut).returncode == 0

    def done(uid):
        return [e for e in pacs.events() if e.get("study_uid") == uid and e["event"] in ("run_done", "study_error")]

    pacs.wait_for(lambda: done(ext_uid), 900, "the extremity study's run")
    ext_images = [e for e in pacs.events() if e["event"] == "image" and e.get("study_uid") == ext_uid]
    assert ext_images and all(e["status"] == "out_of_scope" and e["reason"] for e in ext_images), ext_images
    print("extremity:", [(e["status"], e["reason"]) for e in ext_images])
    # the out-of-scope SR saying why is stored back
    ext_series = _ai_series(pacs, ext_uid)
    assert len(ext_series.get("SR", [])) == 1, ext_series
    pacs.wait_for(lambda: done(cut_uid), 900, "the cut study's run")
    events = [e for e in pacs.events() if e.get("study_uid") == cut_uid and e["event"] in
              ("image", "file_rejected", "run_error", "study_error")]
    assert events and all(e.get("reason") and e.get("status") != "ok" for e in events), events
    print("pixel data cut:", [(e["event"], e.get("status"), e.get("reason")) for e in events])
    assert pacs.proc.poll() is None and pacs.get("/system")["Version"]
    assert not [e for e in pacs.events() if e["event"] == "study_error"], [e for e in pacs.events() if e["event"] == "study_error"]
