"""The AI results where the radiologist looks: OHIF (served by MONAI Label at ``/ohif/`` over Orthanc's DICOMweb)
opened in headless Chromium on a study holding the deploy app's outputs.

The deploy app (from .venv-deploy, as a subprocess) runs on a phantom CR with a consolidation; the source CR and
the app's SR, enhanced SC and Grad-CAM SC are stored into a throw-away Orthanc (127.0.0.1, free ports); MONAI
Label (.venv-label) starts on a free port over Orthanc's DICOMweb; Chromium (Debian ``chromium``, headless) loads
``/ohif/viewer`` for the study with the Grad-CAM series in the viewport. Checked: the study browser lists the
source and the three AI series by their descriptions (``--dump-dom``), and the screenshot shows the burned-in
finding (the yellow "AI RESULT - NOT FOR PRIMARY DIAGNOSIS" line of :mod:`cxr_monai.dicom.burn_in`, a colour the
overlay itself cannot produce). The screenshot is kept as a test artefact (``$CXR_TEST_ARTIFACTS`` or
``tests/artifacts/ohif_study.png``). Every server and browser process is stopped by its PID, every step has a
time limit.

Run by ``make test-label`` (which sets CXR_LABEL_VENV / CXR_DEPLOY_VENV / CXR_LABEL_MODELS); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_monai.data.phantom import write_phantom_dicom
from tests.conftest import PROJECT_ROOT
from tests.dicom_checks import Orthanc, stop_process_group
from tests.label.test_label_app import LABEL_VENV, LabelServer, models  # noqa: F401 - models is a fixture

DEPLOY_VENV = os.environ.get("CXR_DEPLOY_VENV", "")
APP_DIR = PROJECT_ROOT / "deploy" / "cxr_enhance_classify"
CHROMIUM = shutil.which("chromium")
APP_TIMEOUT = 900.0  # the app on a 384 px CR (4x SR): about 60 s on a loaded 2-core machine
BROWSER_TIMEOUT = 240.0
DISCLAIMER_RGB = (255, 215, 0)  # cxr_monai.dicom.burn_in's colour for the first line

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LABEL_VENV or not DEPLOY_VENV,
                       reason="MONAI Label runs from .venv-label, the app from .venv-deploy: run `make test-label`"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian package) not installed: `make tools` installs it"),
]


def _artifacts_dir() -> Path:
    return Path(os.environ.get("CXR_TEST_ARTIFACTS") or PROJECT_ROOT / "tests" / "artifacts")


@pytest.fixture(scope="module")
def app_outputs(models: Path, tmp_path_factory) -> dict:
    """The deploy app's outputs for a phantom CR with a consolidation: ``{"source", "study_uid", "outputs"}``."""
    root = tmp_path_factory.mktemp("ohif_app")
    src = write_phantom_dicom(root / "in" / "phantom_384.dcm", size=384, seed=7, consolidation=True)
    proc = subprocess.run([str(Path(DEPLOY_VENV) / "bin" / "python"), str(APP_DIR), "-i", str(root / "in"), "-o",
                           str(root / "out"), "-m", str(models)], capture_output=True, text=True, timeout=APP_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    image = json.loads((root / "out" / "results.json").read_text())["images"][0]
    assert image["status"] == "ok" and {"enhanced", "report", "gradcam"} <= set(image["outputs"]), image
    return {"source": src, "study_uid": image["study_uid"],
            "outputs": {k: Path(image["outputs"][k]) for k in ("enhanced", "report", "gradcam")}}


@pytest.fixture(scope="module")
def servers(app_outputs: dict, models: Path, tmp_path_factory):
    """Orthanc holding the study (source + the three AI objects) and MONAI Label over its DICOMweb."""
    root = tmp_path_factory.mktemp("ohif_servers")
    pacs = Orthanc(root / "orthanc").start()
    label = None
    try:
        for f in [app_outputs["source"], *app_outputs["outputs"].values()]:
            req = urllib.request.Request(pacs.url + "/instances", data=f.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                assert json.loads(r.read())["Status"] == "Success", f
        assert pacs.get("/statistics")["CountInstances"] == 4
        label = LabelServer(pacs.url + "/dicom-web", root / "label", models).start()
        yield pacs, label
    finally:
        label_status = label.stop() if label is not None else None
        pacs.stop()
        assert pacs.proc.poll() is not None and (label is None or label_status is not None)


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` in its own process group (a fresh profile), stopped by its PID at the limit."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=60000",
         *args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT} s on {url}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ohif_lists_the_ai_series_and_shows_the_burned_in_finding(app_outputs: dict, servers, tmp_path: Path) -> None:
    _, label = servers
    descriptions = {k: str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription)
                    for k, p in app_outputs["outputs"].items()}
    assert all("NOT FOR PRIMARY DIAGNOSIS" in d for d in descriptions.values()), descriptions
    source_description = str(pydicom.dcmread(app_outputs["source"], stop_before_pixels=True).SeriesDescription)
    gradcam_series = str(pydicom.dcmread(app_outputs["outputs"]["gradcam"], stop_before_pixels=True).SeriesInstanceUID)
    url = (f"{label.url}/ohif/viewer?StudyInstanceUIDs={app_outputs['study_uid']}"
           f"&initialSeriesInstanceUID={gradcam_series}")
    print(f"OHIF on study {app_outputs['study_uid']}")

    dom = _chromium(url, tmp_path / "profile_dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    # the study browser lists the source and every AI series by its description
    missing = [d for d in [source_description, *descriptions.values()] if d not in dom.stdout]
    assert not missing, (missing, dom.stdout[-2000:])

    shot = tmp_path / "ohif_study.png"
    proc = _chromium(url, tmp_path / "profile_shot", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    artefact = _artifacts_dir() / "ohif_study.png"
    artefact.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artefact)
    print(f"screenshot: {artefact}")
    with Image.open(shot) as img:
        assert img.size == (1600, 1000)
        rgb = np.asarray(img.convert("RGB")).astype(int)
    # the burned-in disclaimer is on screen: its yellow (R > 230, 185 < G < 240, B < 40) cannot come from the
    # Grad-CAM overlay (at most 40 % jet over a grey image keeps B >= 0.6 x grey while R > 230 needs a bright grey)
    yellow = (rgb[..., 0] > 230) & (rgb[..., 1] > 185) & (rgb[..., 1] < 240) & (rgb[..., 2] < 40)
    assert yellow.sum() >= 100, f"burned-in text not on screen ({yellow.sum()} disclaimer-yellow pixels), see {artefact}"
