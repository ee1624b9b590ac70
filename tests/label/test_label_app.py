"""The MONAI Label app (deploy/monailabel_app) end to end, against a local folder and a real PACS.

pytest runs in the main venv (it computes the reference answers there with cxr_monai, pydicom 3, numpy 2); the
MONAI Label server runs from .venv-label (monailabel 0.8.5, pydicom 2, numpy 1) as a subprocess on a free
loopback port, once over a folder of PNG/JPEG/DICOM files and once over Orthanc's DICOMweb (Orthanc started on
free loopback ports, the DICOM files uploaded through its REST API). Checked: both infer tasks on a PNG/JPEG and
a DICOM image (the probability equals ``cxr_monai.inference.classify`` here to 1e-5, the Grad-CAM overlay equals
``overlay_rgb`` here, the SR image is 4x the input and equals ``super_resolve`` here), the size policy (a side
above 1,024 px comes back unchanged with a note), the bad-input answers (404/422 with the reason) with the server
still answering ``/info/`` afterwards, eight concurrent requests, and that both servers stop by their PIDs.

Run by ``make test-label`` (which builds .venv-label, the deploy models and the Debian tools first and sets
CXR_LABEL_VENV / CXR_LABEL_MODELS); skipped elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_monai.data.phantom import write_phantom_dicom
from cxr_monai.explain import overlay_rgb
from cxr_monai.export import export_deploy_models, find_model_file, load_deploy_model
from cxr_monai.inference import check_scope, classify, super_resolve
from cxr_monai.transforms import load_lung_field
from cxr_monai.io import load_cxr, save_png
from cxr_monai.scope import load_scope_gate
from tests.conftest import PROJECT_ROOT, SHARED_DATA
from tests.dicom_checks import Orthanc, free_port, stop_process_group

LABEL_VENV = os.environ.get("CXR_LABEL_VENV", "")
APP_DIR = PROJECT_ROOT / "deploy" / "monailabel_app"
SHARED_DICOM = SHARED_DATA / "dicom"
SHARED_JPEG_DIR = SHARED_DATA / "kermany224" / "train" / "PNEUMONIA"
HAVE_SHARED = SHARED_DICOM.is_dir() and SHARED_JPEG_DIR.is_dir()
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"real data not found at {SHARED_DATA} (CXR_SHARED_DATA)")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LABEL_VENV, reason="MONAI Label runs from .venv-label: run `make test-label`"),
    # one intra-op thread here and in the servers: on a shared 2-core machine two OpenMP threads per process
    # spin against the other processes (the tiled SR of a 224 px image: 2 s with one thread, 8-30 s with two)
    pytest.mark.usefixtures("one_thread"),
]

START_TIMEOUT = 240.0  # a cold start on a busy 2-core machine; about 6 s when idle
REQUEST_TIMEOUT = 300.0
PROB_TOL = 1e-5

# images of the local folder: id -> file name (the datastore id is the name without its extension)
FOLDER_IDS = {
    "phantom512": "phantom512.dcm", "phantom256": "phantom256.dcm", "phantom1280": "phantom1280.dcm",
    "phantom256_png": "phantom256_png.png", "phantom_hand": "phantom_hand.dcm", "truncated": "truncated.dcm",
    "broken": "broken.png", "kermany_jpeg": "kermany_jpeg.jpeg", "dx_thorax": "dx_thorax.dcm",
    "cr_chest_mono2": "cr_chest_mono2.dcm", "cr_extremity": "cr_extremity.dcm",
}


# ------------------------------------------------------------------------------------------------ HTTP


def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = REQUEST_TIMEOUT) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of one request; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body: ``{name: (filename or None, data, content type)}``."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, (filename, data, ctype) in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png_array(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as img:
        assert img.format == "PNG"
        return np.asarray(img)


class LabelServer:
    """``monailabel start_server`` for deploy/monailabel_app from .venv-label, on 127.0.0.1 and a free port."""

    def __init__(self, studies: str, root: Path, models: Path) -> None:
        self.studies, self.root, self.models = studies, root, models
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def start(self) -> "LabelServer":
        venv_bin = Path(LABEL_VENV) / "bin"
        exe = venv_bin / "monailabel"
        assert exe.is_file(), f"{exe} missing: `make label-venv` builds it"
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",  # itkimage2segimage (dcmqi) from the venv
            MONAI_LABEL_SESSION_PATH=str(self.root / "sessions"),
            MONAI_LABEL_DICOMWEB_CACHE_PATH=str(self.root / "dicomweb_cache"),
            OMP_NUM_THREADS="1",
        )
        env.pop("PYTHONPATH", None)
        log = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(exe), "start_server", "--app", str(APP_DIR), "--studies", self.studies, "--host", "127.0.0.1",
             "--port", str(self.port), "--conf", "models_dir", str(self.models)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"MONAI Label exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = http("GET", self.url + "/info/", timeout=10)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"MONAI Label did not answer /info/ within {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after 30 s; returns the exit status."""
        return stop_process_group(self.proc, timeout=30)

    def info(self) -> dict:
        status, _, body = http("GET", self.url + "/info/", timeout=60)
        assert status == 200, body[:500]
        return json.loads(body)

    def infer(self, model: str, image: str, output: str = "json", params: dict | None = None):
        query = urllib.parse.urlencode({"image": image, "output": output})
        body, ctype = (multipart({"params": (None, json.dumps(params).encode(), "application/json")})
                       if params else (None, None))
        return http("POST", f"{self.url}/infer/{model}?{query}", body, ctype)

    def infer_file(self, model: str, path: Path, output: str = "json"):
        body, ctype = multipart({"file": (path.name, path.read_bytes(), "application/octet-stream")})
        return http("POST", f"{self.url}/infer/{model}?output={output}", body, ctype)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A private copy of the deploy models (`make deploy-models` may rewrite MODELS while this runs), or an
    export of the bundles when CXR_LABEL_MODELS is not given."""
    out = tmp_path_factory.mktemp("models")
    given = os.environ.get("CXR_LABEL_MODELS")
    if given:
        for name in ("cxr_pneumonia", "cxr_sr", "cxr_scope", "cxr_lung"):
            if name == "cxr_lung" and not (Path(given) / name).is_dir():
                continue  # models from before the lung-field view
            (out / name).mkdir()
            shutil.copy(find_model_file(given, name), out / name / "model.ts")
    else:
        export_deploy_models(PROJECT_ROOT / "bundles", out)
    return out


@pytest.fixture(scope="module")
def reference(models: Path):
    """The answers of this venv's cxr_monai for an image file: what the label server must reproduce."""
    cls = load_deploy_model(find_model_file(models, "cxr_pneumonia"), "cpu", kind="classifier")
    sr = load_deploy_model(find_model_file(models, "cxr_sr"), "cpu", kind="super_resolution")
    gate = load_scope_gate(find_model_file(models, "cxr_scope"), "cpu")
    lung = load_lung_field(find_model_file(models, "cxr_lung")) if (models / "cxr_lung").is_dir() else None
    cache: dict[tuple[str, str], object] = {}

    def ref(path: Path, what: str = "classify"):
        key = (str(path), what)
        if key not in cache:
            image, meta = load_cxr(path)
            if what == "classify":
                result = classify(cls[0], image, cls[1], "cpu", with_cam=True, lung_field=lung)
                result["scope"] = check_scope(gate, image, meta, int(cls[1].get("image_size", 160)), lung_field=lung)
                cache[key] = (image, result)
            else:
                cache[key] = (image, super_resolve(sr[0], image, sr[1], "cpu"))
        return cache[key]

    ref.info = cls[1]
    return ref


def _with_new_uids(ds: pydicom.Dataset) -> pydicom.Dataset:
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The test images (written here; the shared files are copied into the temp folder when present)."""
    d = tmp_path_factory.mktemp("studies")
    files = {k: d / v for k, v in FOLDER_IDS.items()}
    write_phantom_dicom(files["phantom512"], size=512, seed=7, consolidation=True)
    write_phantom_dicom(files["phantom256"], size=256, seed=9, consolidation=True)
    write_phantom_dicom(files["phantom1280"], size=1280, seed=8, consolidation=False)
    save_png(files["phantom256_png"], load_cxr(files["phantom256"])[0], bits=16)
    hand_src = d.parent / "hand_src.dcm"
    write_phantom_dicom(hand_src, size=256, seed=10)
    hand = _with_new_uids(pydicom.dcmread(hand_src))
    hand.BodyPartExamined = "HAND"
    hand.save_as(files["phantom_hand"], enforce_file_format=True)
    data = files["phantom512"].read_bytes()
    truncated = _with_new_uids(pydicom.dcmread(io.BytesIO(data)))
    buf = io.BytesIO()
    truncated.save_as(buf, enforce_file_format=True)
    files["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    files["broken"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    # a DICOM whose header is fine and whose JPEG stream is not JPEG: a PACS stores it, nothing decodes it
    undecodable = _with_new_uids(pydicom.dcmread(hand_src))
    undecodable.BodyPartExamined = "CHEST"
    undecodable.BitsAllocated, undecodable.BitsStored, undecodable.HighBit = 8, 8, 7
    undecodable.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    undecodable.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8])
    undecodable["PixelData"].VR, undecodable["PixelData"].is_undefined_length = "OB", True
    undecodable.save_as(d.parent / "undecodable.dcm", enforce_file_format=True)
    files["undecodable"] = d.parent / "undecodable.dcm"  # not in the folder (its id would be a 422 too)
    if HAVE_SHARED:
        shutil.copy(sorted(SHARED_JPEG_DIR.glob("*.jpeg"))[0], files["kermany_jpeg"])
        shutil.copy(SHARED_DICOM / "dx_thorax_mono1_small.dcm", files["dx_thorax"])
        shutil.copy(SHARED_DICOM / "cr_chest_pa_mono2_jpeg.dcm", files["cr_chest_mono2"])
        shutil.copy(SHARED_DICOM / "cr_extremity_mono1_j2k.dcm", files["cr_extremity"])
        # same pixels as mono2 with a MONOCHROME1 header and the same SOP Instance UID: new UIDs so that the PACS
        # keeps both (it would count them as one instance)
        mono1 = _with_new_uids(pydicom.dcmread(SHARED_DICOM / "cr_chest_pa_mono1_jpeg.dcm"))
        mono1.save_as(d.parent / "cr_chest_mono1.dcm")
        files["cr_chest_mono1"] = d.parent / "cr_chest_mono1.dcm"
    else:
        for key in ("kermany_jpeg", "dx_thorax", "cr_chest_mono2", "cr_extremity"):
            del files[key]
    return files


@pytest.fixture(scope="module")
def folder_server(inputs, models, tmp_path_factory):
    server = LabelServer(str(inputs["phantom512"].parent), tmp_path_factory.mktemp("label_folder"), models).start()
    yield server
    server.stop()


DICOMWEB_UPLOADS = ("phantom512", "phantom256", "phantom1280", "phantom_hand", "undecodable", "dx_thorax",
                    "cr_chest_mono2", "cr_chest_mono1", "cr_extremity")


@pytest.fixture(scope="module")
def orthanc(inputs, tmp_path_factory):
    """Orthanc with the DICOM inputs uploaded through its REST API; ``series[key]`` is each SeriesInstanceUID.

    The REST upload (POST /instances) is used because Orthanc 1.10 refuses the two shared JPEG CR files over
    C-STORE ("Odd Fragment Length"); over REST it stores them as they are."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    server.series = {}
    try:
        for key in DICOMWEB_UPLOADS:
            if key not in inputs:
                continue
            status, _, body = http("POST", server.url + "/instances", inputs[key].read_bytes(), "application/dicom")
            assert status == 200, f"Orthanc refused {inputs[key].name}: {status} {body[:300]!r}"
            assert json.loads(body)["Status"] == "Success", body
            server.series[key] = str(pydicom.dcmread(inputs[key], stop_before_pixels=True).SeriesInstanceUID)
        assert server.get("/statistics")["CountInstances"] == len(server.series)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dicomweb_server(orthanc, models, tmp_path_factory):
    server = LabelServer(orthanc.url + "/dicom-web", tmp_path_factory.mktemp("label_dicomweb"), models).start()
    yield server
    server.stop()


def _check_classification(answer: dict, ref_result: dict, info: dict) -> None:
    p = answer["probability"]
    assert 0.0 <= p <= 1.0
    assert abs(p - ref_result["probability"]) <= PROB_TOL, (p, ref_result["probability"])
    scope = ref_result["scope"]  # the intended-population decision of this venv's gate on the same file
    assert answer["in_scope"] == int(scope.in_scope) and answer["scope_reason"] == scope.reason
    if not scope.in_scope:  # no label, no prediction, no Grad-CAM
        assert answer["label"] is None and answer["prediction"] == [] and answer["gradcam"] is None
        return
    assert answer["label"] == ref_result["label"]
    assert answer["threshold"] == pytest.approx(info["threshold"], abs=1e-12)
    assert answer["version"] == info["version"] and answer["model"] == info["model_name"]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["prediction"][1] == {"idx": 1, "label": "PNEUMONIA", "score": p}


def _check_sr_png(body: bytes, ref_sr: np.ndarray, in_shape: tuple[int, int]) -> None:
    arr = png_array(body)
    assert arr.dtype == np.uint16 and arr.shape == (4 * in_shape[0], 4 * in_shape[1])
    diff = np.abs(arr.astype(np.float64) / 65535.0 - ref_sr[0].astype(np.float64))
    assert diff.max() <= 2e-3 and diff.mean() <= 1e-4, (diff.max(), diff.mean())


# ----------------------------------------------------------------------------------------- local folder


def test_folder_server_lists_the_tasks_and_the_cxr_files(folder_server, inputs) -> None:
    info = folder_server.info()
    assert set(info["models"]) == {"cxr_pneumonia", "cxr_sr"}
    assert info["models"]["cxr_pneumonia"]["type"] == "classification"
    assert info["models"]["cxr_pneumonia"]["labels"] == {"NORMAL": 0, "PNEUMONIA": 1}
    assert info["trainers"] == {}
    status, _, body = http("GET", folder_server.url + "/datastore/?output=all")
    assert status == 200
    listed = set(json.loads(body)["objects"])
    expected = {k for k, v in inputs.items() if v.parent == inputs["phantom512"].parent}
    assert expected <= listed, expected - listed  # .dcm and .jpeg included (MONAI Label's default leaves them out)


FOLDER_CLASSIFY = ["phantom512", "phantom256_png", pytest.param("kermany_jpeg", marks=needs_shared),
                   pytest.param("dx_thorax", marks=needs_shared), pytest.param("cr_chest_mono2", marks=needs_shared)]


@pytest.mark.parametrize("image_id", FOLDER_CLASSIFY)
def test_folder_classification_equals_cxr_monai(folder_server, inputs, reference, image_id) -> None:
    status, _, body = folder_server.infer("cxr_pneumonia", image_id)
    assert status == 200, body[:500]
    answer = json.loads(body)
    _check_classification(answer, reference(inputs[image_id])[1], reference.info)
    assert answer["enhanced"] is False


@needs_shared
def test_folder_scope_keeps_a_child_and_refuses_an_adult(folder_server, inputs) -> None:
    """A Kermany child is assessed (a label); the adult CR of the shared data gets in_scope 0 with the image
    check's reason, no label, and its image output is the input itself (no Grad-CAM)."""
    status, _, body = folder_server.infer("cxr_pneumonia", "kermany_jpeg")
    child = json.loads(body)
    assert status == 200 and child["in_scope"] == 1 and child["scope_reason"] == ""
    assert child["label"] in ("NORMAL", "PNEUMONIA")
    status, _, body = folder_server.infer("cxr_pneumonia", "cr_chest_mono2")
    adult = json.loads(body)
    assert status == 200 and adult["in_scope"] == 0 and adult["label"] is None
    assert adult["scope_reason"].startswith("image check:") and "children" in adult["intended_use"]
    status, ctype, body = folder_server.infer("cxr_pneumonia", "cr_chest_mono2", output="image")
    image, _ = load_cxr(inputs["cr_chest_mono2"])
    arr = png_array(body)
    assert status == 200 and ctype == "image/png" and arr.ndim == 2 and arr.shape == image.shape[-2:]
    assert np.abs(arr / 255.0 - image[0]).max() <= 1 / 255 + 1e-6


def test_folder_gradcam_overlay_is_the_image_output(folder_server, inputs, reference) -> None:
    status, ctype, body = folder_server.infer("cxr_pneumonia", "phantom512", output="image")
    assert status == 200 and ctype == "image/png", body[:300]
    arr = png_array(body)
    image, result = reference(inputs["phantom512"])
    expected = overlay_rgb(image, result["cam"])
    assert arr.shape == expected.shape == (512, 512, 3)
    diff = np.abs(arr.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_folder_enhance_classifies_the_super_resolved_image(folder_server, inputs, reference, models) -> None:
    status, _, body = folder_server.infer("cxr_pneumonia", "phantom256_png", params={"enhance": True})
    assert status == 200, body[:500]
    answer = json.loads(body)
    image, sr = reference(inputs["phantom256_png"], "sr")
    model, info = load_deploy_model(find_model_file(models, "cxr_pneumonia"), "cpu", kind="classifier")
    assert answer["enhanced"] is True and answer["note"].startswith("SR applied")
    lung = load_lung_field(find_model_file(models, "cxr_lung")) if (models / "cxr_lung").is_dir() else None
    assert abs(answer["probability"] - classify(model, sr, info, "cpu", lung_field=lung)["probability"]) <= PROB_TOL


@pytest.mark.parametrize("image_id", ["phantom256_png", "phantom256", pytest.param("kermany_jpeg", marks=needs_shared)])
def test_folder_sr_is_4x_and_equals_cxr_monai(folder_server, inputs, reference, image_id) -> None:
    status, ctype, body = folder_server.infer("cxr_sr", image_id, output="image")
    assert status == 200 and ctype == "image/png", body[:300]
    image, sr = reference(inputs[image_id], "sr")
    _check_sr_png(body, sr, image.shape[-2:])


def test_folder_sr_leaves_large_images_unchanged_with_a_note(folder_server, inputs) -> None:
    status, _, body = folder_server.infer("cxr_sr", "phantom1280")
    assert status == 200, body[:300]
    answer = json.loads(body)
    assert answer["applied"] is False and answer["scale"] == 1 and answer["output_shape"] == [1280, 1280]
    assert "unchanged" in answer["note"] and "1024" in answer["note"]
    status, _, body = folder_server.infer("cxr_sr", "phantom1280", output="image")
    assert status == 200
    arr = png_array(body)
    image, _ = load_cxr(inputs["phantom1280"])
    assert arr.shape == (1280, 1280)
    assert np.abs(arr / 65535.0 - image[0]).max() <= 1.0 / 65535


FOLDER_BAD = [
    ("no_such_image", 404, "not found"),
    ("truncated", 422, "cannot be read"),
    ("broken", 422, "cannot be read"),
    ("phantom_hand", 422, "body part 'HAND' is not the chest"),
    pytest.param("cr_extremity", 422, "body part 'EXTREMITY' is not the chest", marks=needs_shared),
]


@pytest.mark.parametrize("model", ["cxr_pneumonia", "cxr_sr"])
@pytest.mark.parametrize(("image_id", "status", "words"), FOLDER_BAD)
def test_folder_bad_input_gets_a_reason_and_the_server_keeps_serving(folder_server, model, image_id, status,
                                                                     words) -> None:
    got, _, body = folder_server.infer(model, image_id)
    assert got == status, body[:500]
    detail = json.loads(body)["detail"]
    assert words in detail and image_id in detail
    assert folder_server.info()["models"]


def test_folder_unknown_task_is_404(folder_server) -> None:
    status, _, body = folder_server.infer("segmentation_spleen", "phantom512")
    assert status == 404 and "cxr_pneumonia" in json.loads(body)["detail"]

@needs_shared
def test_folder_image_id_never_names_a_path_elsewhere_on_the_server(folder_server) -> None:
    """An ``image`` id must name an image of the configured study source: a readable file elsewhere on the server
    (here a shared chest CR, and this very test file) is not found, not read."""
    for path in (SHARED_DATA / "dicom" / "cr_chest_pa_mono2_jpeg.dcm", Path(__file__)):
        assert path.is_file()
        status, _, body = folder_server.infer("cxr_pneumonia", str(path))
        assert status == 404 and "not found" in json.loads(body)["detail"], body


def test_folder_eight_concurrent_requests_get_their_own_answers(folder_server, inputs, reference) -> None:
    jobs = [("cxr_pneumonia", "phantom512"), ("cxr_pneumonia", "phantom256_png"), ("cxr_sr", "phantom256"),
            ("cxr_pneumonia", "phantom256"), ("cxr_pneumonia", "phantom1280"), ("cxr_sr", "phantom256_png"),
            ("cxr_pneumonia", "phantom512"), ("cxr_pneumonia", "phantom256_png")]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: folder_server.infer(*job), jobs))
    elapsed = time.monotonic() - start
    for (model, image_id), (status, _, body) in zip(jobs, answers):
        assert status == 200, (model, image_id, body[:300])
        answer = json.loads(body)
        image, result = reference(inputs[image_id])
        assert answer["input"]["shape"] == list(image.shape[-2:])
        if model == "cxr_pneumonia":
            _check_classification(answer, result, reference.info)
        else:
            assert answer["applied"] is True and answer["output_shape"] == [4 * s for s in image.shape[-2:]]
    assert folder_server.info()["models"]
    print(f"8 concurrent requests answered in {elapsed:.1f} s")


# ------------------------------------------------------------------------------------ Orthanc / DICOMweb


def test_dicomweb_server_lists_the_pacs_series(dicomweb_server, orthanc) -> None:
    info = dicomweb_server.info()
    assert set(info["models"]) == {"cxr_pneumonia", "cxr_sr"}
    # every series, whatever its modality (MONAI Label's default DICOMweb filter lists Modality CT only)
    assert info["datastore"]["total"] == len(orthanc.series)


DICOMWEB_CLASSIFY = ["phantom512", "phantom256", pytest.param("dx_thorax", marks=needs_shared),
                     pytest.param("cr_chest_mono2", marks=needs_shared),
                     pytest.param("cr_chest_mono1", marks=needs_shared)]


@pytest.mark.parametrize("key", DICOMWEB_CLASSIFY)
def test_dicomweb_classification_equals_cxr_monai_on_the_uploaded_file(dicomweb_server, orthanc, inputs, reference,
                                                                        key) -> None:
    status, _, body = dicomweb_server.infer("cxr_pneumonia", orthanc.series[key])
    assert status == 200, body[:500]
    answer = json.loads(body)
    _check_classification(answer, reference(inputs[key])[1], reference.info)
    assert answer["input"]["series_uid"] == orthanc.series[key]


def test_dicomweb_gradcam_overlay(dicomweb_server, orthanc, inputs, reference) -> None:
    status, ctype, body = dicomweb_server.infer("cxr_pneumonia", orthanc.series["phantom512"], output="image")
    assert status == 200 and ctype == "image/png", body[:300]
    image, result = reference(inputs["phantom512"])
    diff = np.abs(png_array(body).astype(int) - overlay_rgb(image, result["cam"]).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.parametrize("key", ["phantom256_png", pytest.param("kermany_jpeg", marks=needs_shared)])
def test_dicomweb_server_classifies_an_uploaded_png_or_jpeg(dicomweb_server, inputs, reference, key) -> None:
    status, _, body = dicomweb_server.infer_file("cxr_pneumonia", inputs[key])
    assert status == 200, body[:500]
    _check_classification(json.loads(body), reference(inputs[key])[1], reference.info)
    status, _, body = dicomweb_server.infer_file("cxr_sr", inputs[key], output="image")
    assert status == 200, body[:300]
    image, sr = reference(inputs[key], "sr")
    _check_sr_png(body, sr, image.shape[-2:])


def test_dicomweb_sr_is_4x_and_equals_cxr_monai(dicomweb_server, orthanc, inputs, reference) -> None:
    status, _, body = dicomweb_server.infer("cxr_sr", orthanc.series["phantom256"], output="image")
    assert status == 200, body[:300]
    image, sr = reference(inputs["phantom256"], "sr")
    _check_sr_png(body, sr, image.shape[-2:])
    status, _, body = dicomweb_server.infer("cxr_sr", orthanc.series["phantom1280"])
    assert status == 200
    answer = json.loads(body)
    assert answer["applied"] is False and answer["output_shape"] == [1280, 1280] and "unchanged" in answer["note"]


DICOMWEB_BAD = [
    ("unknown", 404, "not found"),
    ("phantom_hand", 422, "body part 'HAND' is not the chest"),
    ("undecodable", 422, "cannot decode pixel data"),
    pytest.param("cr_extremity", 422, "body part 'EXTREMITY' is not the chest", marks=needs_shared),
]


@pytest.mark.parametrize(("key", "status", "words"), DICOMWEB_BAD)
def test_dicomweb_bad_input_gets_a_reason_and_the_server_keeps_serving(dicomweb_server, orthanc, key, status,
                                                                       words) -> None:
    series = orthanc.series.get(key, "1.2.826.0.1.3680043.8.498.1")  # "unknown": a UID that is in no PACS
    got, _, body = dicomweb_server.infer("cxr_pneumonia", series)
    assert got == status, body[:500]
    detail = json.loads(body)["detail"]
    assert words in detail and series in detail
    assert dicomweb_server.info()["models"]


# ------------------------------------------------------------------------------------------- processes


def test_servers_never_load_torchvision(folder_server, dicomweb_server) -> None:
    # .venv-label's torchvision 0.28.0 is a CUDA build that cannot import on this CPU torch
    for server in (folder_server, dicomweb_server):
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "libtorch_cpu" in maps and "torchvision" not in maps


def test_servers_stop_by_pid(folder_server, dicomweb_server, orthanc) -> None:
    for server in (folder_server, dicomweb_server):
        pid = server.proc.pid
        server.stop()
        assert server.proc.poll() is not None, f"MONAI Label (pid {pid}) still running"
        with pytest.raises(OSError):
            http("GET", server.url + "/info/", timeout=5)
    orthanc.stop()
    assert orthanc.proc.poll() is not None

