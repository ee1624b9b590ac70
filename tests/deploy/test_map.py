"""The MAP image, built with podman (``make map``) and run like ``monai-deploy run`` (``make map-run``).

Builds the image (cached: the base image, the wheelhouse in ``map_build/wheelhouse`` and podman's layers are
reused between runs) under the tag ``cxr-enhance-classify:test``, then checks the layout against the MAP spec as
holoscan-cli's packager lays it out, and runs it on the phantom study plus the shared DICOM files: the statuses,
probabilities (1e-4) and output objects equal those of the ``.venv-deploy`` app run on the same folder, every
output is dciodvfy-clean, the container had no network and followed its CPU quota. Skips, with the reason, where
podman cannot run containers (no podman, no root and no user namespaces).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SHARED_DATA
from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe

pytestmark = pytest.mark.slow

PACKAGING = PROJECT_ROOT / "deploy" / "packaging"
APP_DIR = PROJECT_ROOT / "deploy" / "cxr_enhance_classify"
TAG = "cxr-enhance-classify:test"
IMAGE = f"localhost/{TAG}"
# both runs SR only images up to 512 px (the phantom; the two 1,024 px CRs would become 4,096 px: minutes on 2 cores)
SR_ENV = {"CXR_SR_MAX_SIDE": "512"}
PODMAN_RUN = ["--runtime", "runc", "--network", "none", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]

sys.path.insert(0, str(PACKAGING))
import build_image  # noqa: E402
import run_map  # noqa: E402

sys.path.remove(str(PACKAGING))


def podman_unusable() -> str | None:
    """Why podman cannot run containers here, or None."""
    podman = shutil.which("podman")
    if podman is None:
        return "podman is not installed (`make map-tools` installs podman, runc, debootstrap as root)"
    if shutil.which("runc") is None:
        return "runc is not installed (podman's crun fails on hybrid cgroups here)"
    if os.geteuid() != 0 and not Path("/etc/subuid").is_file():
        return "not root and no /etc/subuid: podman has no user namespace to run in"
    info = subprocess.run([podman, "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        return f"`podman info` failed: {info.stderr.strip()[-300:]}"
    return None


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def run_in_image(*cmd: str, entrypoint: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    ep = ["--entrypoint", entrypoint] if entrypoint else []
    return podman("run", "--rm", *PODMAN_RUN, *extra, *ep, IMAGE, *cmd, timeout=300)


@pytest.fixture(scope="module")
def models() -> Path:
    """The named-model folder (``make deploy-models``), exported into a temp folder when absent."""
    d = PROJECT_ROOT / ".deploy_models"
    if not all((d / n / "model.ts").is_file() for n in ("cxr_sr", "cxr_pneumonia", "cxr_scope", "cxr_lung")):
        pytest.skip(f"{d} lacks the exported models: run `make deploy-models`")
    return d


@pytest.fixture(scope="module")
def map_image(models: Path, tmp_path_factory) -> dict:
    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("map")
    # a stand-in for the previous build of this tag: the build must remove it once the tag has moved on
    podman("rmi", "-f", IMAGE)
    (out / "Containerfile.old").write_text("FROM scratch\nLABEL org.cxr-monai.test=replaced\n")
    old = podman("build", "-q", "--network", "none", "-f", str(out / "Containerfile.old"), "-t", IMAGE, str(out))
    assert old.returncode == 0, old.stderr[-2000:]
    replaced = build_image.image_id("podman", IMAGE)
    t0 = time.monotonic()
    for cmd in ([sys.executable, str(PACKAGING / "make_map.py"), "--models", str(models), "--out", str(out), "--tag", TAG],
                [sys.executable, str(PACKAGING / "build_image.py"), "--models", str(models), "--map-dir", str(out),
                 "--tag", TAG, "--wheelhouse", str(PROJECT_ROOT / "map_build" / "wheelhouse")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == f"MAP image built: {IMAGE}"
    return {"dir": out, "app": json.loads((out / "app.json").read_text()), "pkg": json.loads((out / "pkg.json").read_text()),
            "build_s": time.monotonic() - t0, "replaced": replaced}


def test_rebuild_leaves_no_untagged_images_behind(map_image: dict) -> None:
    assert map_image["replaced"] and map_image["replaced"] != build_image.image_id("podman", IMAGE)
    assert podman("image", "exists", map_image["replaced"]).returncode != 0  # the image the tag named before: gone
    left = podman("images", "-q", "--filter", "dangling=true", "--filter", f"label={build_image.PROJECT_STAGE_LABEL}")
    assert left.returncode == 0 and left.stdout.split() == []  # the project stage's image: gone
    assert podman("image", "exists", build_image.DEPS_IMAGE).returncode == 0  # the third-party cache: kept


def test_layout_manifests_labels_user_and_entrypoint(map_image: dict) -> None:
    app, pkg = map_image["app"], map_image["pkg"]
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"] == "holoscan" and cfg["Entrypoint"] == ["/var/holoscan/tools"] and cfg["WorkingDir"] == "/var/holoscan"
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.title"] == "CXR enhance and classify (cxr_monai)"
    assert labels["org.opencontainers.image.version"] == app["version"] == "0.1.0"
    assert labels["org.monai.deploy.app-sdk"] == "4.0.0" and labels["org.nvidia.holoscan"] == "3.11.0"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input" and env["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output"
    assert env["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models" and env["HOLOSCAN_APPLICATION"] == "/opt/holoscan/app"
    assert env["HOLOSCAN_APP_MANIFEST_PATH"] == "/etc/holoscan/app.json" and env["HOLOSCAN_CONFIG_PATH"] == "/var/holoscan/app.yaml"
    # the manifests inside the image are the packager's own
    shown = run_in_image("show", "app")
    assert shown.returncode == 0 and "app.json" in shown.stdout
    assert json.loads(shown.stdout[shown.stdout.index("{"):shown.stdout.rindex("}") + 1]) == app
    shown = run_in_image("show", "pkg")
    assert json.loads(shown.stdout[shown.stdout.index("{"):shown.stdout.rindex("}") + 1]) == pkg
    assert "HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json" in run_in_image("env").stdout
    assert "show" in run_in_image("help").stdout
    # one folder per model, the app, app.yaml; a non-root user; no wheels, caches or build tools
    listing = run_in_image("-c", "id -u; ls /opt/holoscan/models/*/model.ts /var/holoscan/app.yaml "
                           "/opt/holoscan/app/__main__.py; ls /wheels /root/.cache 2>&1; command -v gcc pip || true",
                           entrypoint="/bin/bash")
    lines = listing.stdout.splitlines()
    assert lines[0] != "0"
    for name in pkg["models"]:
        assert f"/opt/holoscan/models/{name}/model.ts" in lines
    assert "/var/holoscan/app.yaml" in lines and "/opt/holoscan/app/__main__.py" in lines
    assert "No such file" in listing.stdout and "gcc" not in listing.stdout.split("No such file")[-1]


def test_network_none_and_cpu_quota(map_image: dict, tmp_path: Path) -> None:
    cmd = run_map.build_command("podman", IMAGE, tmp_path, tmp_path, map_image["app"], cpus=1)
    assert cmd[cmd.index("--network") + 1] == "none"
    probe = ("import socket; from cxr_monai.utils import configure_threads; "
             "print(sorted(n for _, n in socket.if_nameindex())); print(configure_threads())")
    one = run_in_image("-c", probe, entrypoint="python3", extra=("--cpus", "1"))
    assert one.returncode == 0, one.stderr
    names, threads = one.stdout.strip().splitlines()[-2:]
    assert names == "['lo']" and threads == "1"
    two = run_in_image("-c", probe, entrypoint="python3", extra=("--cpus", "2"))
    assert two.stdout.strip().splitlines()[-1] == str(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    dicom = SHARED_DATA / "dicom"
    if not dicom.is_dir():
        pytest.skip(f"shared DICOM files not found at {dicom} (set CXR_SHARED_DATA)")
    d = tmp_path_factory.mktemp("study")
    proc = subprocess.run([sys.executable, "-m", "cxr_monai", "phantom", "--out_dir", str(d)], capture_output=True,
                          text=True, timeout=300, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    for f in sorted(dicom.glob("*.dcm")):
        shutil.copy(f, d / f.name)
    d.chmod(0o755)  # pytest's folders are 0700: the image's user (uid 1000) reads the input through its mount
    for f in d.iterdir():
        f.chmod(0o644)
    return d


def _venv_run(study: Path, models: Path, out: Path) -> dict:
    python = PROJECT_ROOT / ".venv-deploy" / "bin" / "python"
    python = python if python.exists() else Path(sys.executable)
    proc = subprocess.run([str(python), str(APP_DIR), "-i", str(study), "-o", str(out), "-m", str(models)],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, **SR_ENV})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _objects(out: Path, results: dict) -> dict[str, set[str]]:
    """{source SOP UID: kinds of DICOM objects written for it}; output UIDs are new on every run."""
    objs = {}
    for img in results["images"]:
        kinds = {k for k, v in (img.get("outputs") or {}).items() if str(v).endswith(".dcm")}
        objs[img["sop_uid"]] = kinds
    return objs


def test_map_run_equals_venv_app(map_image: dict, models: Path, study: Path, tmp_path: Path) -> None:
    ref_out, map_out = tmp_path / "venv", tmp_path / "map"
    ref = _venv_run(study, models, ref_out)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(PACKAGING / "run_map.py"), "--image", IMAGE, "--input", str(study),
                           "--output", str(map_out), *[f"--env={k}={v}" for k, v in SR_ENV.items()]],
                          capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("cxr_enhance_classify:")]
    assert summary and "results in /var/holoscan/output/results.json" in summary[0]
    got = json.loads((map_out / "results.json").read_text())
    assert got["counts"] == ref["counts"]
    assert got["run"]["input"] == "/var/holoscan/input" and got["run"]["output"] == "/var/holoscan/output"
    assert got["run"]["threads"] == min(2, os.cpu_count() or 1)  # pkg.json resources.cpu = 2 -> --cpus 2
    ref_imgs = {i["sop_uid"]: i for i in ref["images"]}
    got_imgs = {i["sop_uid"]: i for i in got["images"]}
    assert set(got_imgs) == set(ref_imgs)
    for sop, r in ref_imgs.items():
        g = got_imgs[sop]
        assert (g["status"], g.get("reason")) == (r["status"], r.get("reason")), sop
        rc, gc = r.get("classification") or {}, g.get("classification") or {}
        if rc:
            assert abs(gc["probability"] - rc["probability"]) < 1e-4 and gc["label"] == rc["label"], sop
        rs, gs = r.get("scope") or {}, g.get("scope") or {}
        if rs.get("probability") is not None:
            assert abs(gs["probability"] - rs["probability"]) < 1e-4 and gs["in_scope"] == rs["in_scope"], sop
    assert _objects(map_out, got) == _objects(ref_out, ref)
    ref_files = sorted(p.relative_to(ref_out).parts[1] for p in ref_out.rglob("*.dcm"))
    got_files = sorted(p.relative_to(map_out).parts[1] for p in map_out.rglob("*.dcm"))
    assert got_files == ref_files and got_files
    assert [s["kind"] for s in got["output_series"]] == [s["kind"] for s in ref["output_series"]]
    exe = dciodvfy_exe()
    for f in sorted(map_out.rglob("*.dcm")):
        assert dciodvfy_errors(exe, f) == [], f
    print(f"map-run {seconds:.1f} s, image build (cached) {map_image['build_s']:.1f} s")


def test_pacs_worker_runs_warm_inside_the_map_image(map_image: dict, tmp_path: Path) -> None:
    """``run_pacs.py --runner map-warm``: the PACS worker keeps one hardened container of the MAP image (models
    loaded once) and sends it one study after another; the results come back to Orthanc once each, the container is
    confined like a per-study MAP run, and nothing of it (container, run folders) is left afterwards."""
    from tests.deploy.test_pacs import Pacs, _copies, _need, _one_result_each, _phantom

    _need("Orthanc", "storescu")
    p = Pacs(tmp_path / "pacs_dir", "--runner", "map-warm", "--image", IMAGE, "--retries", "0").start()
    name = f"cxr-warm-{os.uname().nodename}-local0".replace(":", "-")
    try:
        p.wait_for(lambda: [e for e in p.events() if e["event"] in ("warm_app_ready", "warm_app_error")], 600,
                   "the warm container")
        assert [e for e in p.events() if e["event"] == "warm_app_ready"], p.events()
        host = json.loads(podman("inspect", name).stdout)[0]["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True, host
        assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or []), host.get("SecurityOpt")
        assert len(host.get("CapDrop") or []) >= 10 and not host.get("CapAdd"), (host.get("CapDrop"), host.get("CapAdd"))
        assert host["Memory"] > 0, host["Memory"]
        studies = _copies(_phantom(tmp_path, 128), tmp_path / "s", 2)
        assert p.store(*[f for f, _ in studies]).returncode == 0
        uids = [u for _, u in studies]
        p.wait_for(lambda: _one_result_each(p, uids, ("report", "enhanced", "gradcam")), 600, "2 studies' results")
        done = [e for e in p.events() if e["event"] == "run_done"]
        assert sorted(e["study_uid"] for e in done) == sorted(uids) and {e["runner"] for e in done} == {"map-warm"}
        assert len([e for e in p.events() if e["event"] == "warm_app_ready"]) == 1  # one container for both studies
        work = p.root / "work" / "local0"
        p.wait_for(lambda: not [f for d in ("map_in", "map_out") for f in (work / d).iterdir()], 60,
                   "the run folders to go")
    finally:
        p.stop()
    assert podman("container", "exists", name).returncode != 0  # gone with its worker
