"""The PACS loop as a service (``make pacs``, ``make pacs-worker``): real Orthanc, real storescu, real brokers.

Orthanc (Debian ``orthanc``, ``orthanc-dicomweb``, ``orthanc-python``) on free loopback ports, started by
``deploy/pacs/run_pacs.py`` with its plugin (enqueue only) and a warm worker; the queue is huey on SQLite, or on a
Redis server (Debian ``redis-server``) for the two-worker test. dcmtk's ``storescu`` sends; the checks read Orthanc's
REST API with the generated credentials. Every server is stopped by its PID and every wait is bounded.

Cost: the 512 px phantom's run takes ~10-40 s on two shared cores; the batch tests use 128 px copies (a few s each).
"""

from __future__ import annotations

import base64
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
from pydicom.uid import generate_uid

from tests.conftest import PROJECT_ROOT
from tests.dicom_checks import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
RUN_PACS = PROJECT_ROOT / "deploy" / "pacs" / "run_pacs.py"
WORKER = PROJECT_ROOT / "deploy" / "pacs" / "worker.py"
MODELS = PROJECT_ROOT / ".deploy_models"


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (`make tools`)")
    if not PYTHON_PLUGIN.is_file():
        pytest.skip("orthanc-python not installed (`make tools`)")
    if not (MODELS / "cxr_sr").is_dir():
        pytest.skip("no deploy models (`make deploy-models`)")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class Pacs:
    """run_pacs.py (Orthanc + workers) on one PACS_DIR; restartable on the same folder."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root, self.http, self.dicom, self.extra = root, free_port(), free_port(), list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Pacs":
        cmd = [sys.executable, str(RUN_PACS), "--dir", str(self.root), "--http-port", str(self.http), "--dicom-port",
               str(self.dicom), "--stable-age", "1", "--reconcile-s", "5", *self.extra]
        self.out = open(self.root.parent / f"{self.root.name}.out", "a")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                return self
            except (OSError, urllib.error.HTTPError, FileNotFoundError):
                assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def output(self) -> str:
        return (self.root.parent / f"{self.root.name}.out").read_text()[-3000:]

    def pid(self, name: str) -> int:
        return int((self.root / f"{name}.pid").read_text().split()[0])

    def _req(self, path: str, body: bytes | None = None, auth: bool = True):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body)
        if auth:
            cred = (self.root / "credentials").read_text().splitlines()[0]
            req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read()) if "json" in r.headers.get("Content-Type", "") else r.read()

    def get(self, path: str, auth: bool = True):
        return self._req(path, auth=auth)

    def post(self, path: str, body: bytes):
        return self._req(path, body)

    def events(self) -> list[dict]:
        f = self.root / "ai_router.log"
        return [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.exists() else []

    def store(self, *files: Path, aet: str | None = None, aec: str = "ORTHANC") -> subprocess.CompletedProcess:
        return subprocess.run(["storescu", *(["-aet", aet] if aet else []), "-aec", aec, "127.0.0.1", str(self.dicom),
                               *map(str, files)], capture_output=True, text=True, timeout=300)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; log: {self.events()[-8:]}")

    def results(self, study_uid: str) -> dict[str, list[str]]:
        """Our output instances of the study by series description kind: {"report": [...], "enhanced": [...], ...}."""
        found = self.post("/tools/lookup", study_uid.encode())
        if not found:
            return {}
        out: dict[str, list[str]] = {}
        for s in self.get(f"/studies/{found[0]['ID']}/series"):
            tags = s["MainDicomTags"]
            if tags.get("Manufacturer") != "cxr_monai" or "NOT FOR PRIMARY" not in tags.get("SeriesDescription", ""):
                continue
            kind = {"9001": "enhanced", "9002": "report", "9003": "gradcam", "9004": "summary"}[tags["SeriesNumber"]]
            out.setdefault(kind, []).extend(s["Instances"])
        return out


def _phantom(d: Path, size: int = 512) -> Path:
    proc = subprocess.run([sys.executable, "-m", "cxr_monai", "phantom", "--out_dir", str(d), "--size", str(size)],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    return d / "phantom_cxr.dcm"


def _copies(src: Path, d: Path, n: int) -> list[tuple[Path, str]]:
    """n one-image studies: copies of ``src`` with new study, series and SOP instance UIDs."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        f = d / f"study{i:02d}.dcm"
        ds.save_as(f)
        out.append((f, str(ds.StudyInstanceUID)))
    return out


def _sr_texts(ds) -> list[str]:
    texts = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "CODE":
                texts.append(f"{name}={it.ConceptCodeSequence[0].CodeMeaning}")
            elif it.ValueType == "TEXT":
                texts.append(f"{name}={it.TextValue}")
            walk(it.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return texts


def _no_run_folders(pacs: Pacs) -> None:
    """No run folder (patient images) left in the local worker's folder once it has finished (the report is stored
    before the folder is removed: wait a little); ``results/`` holds results.json copies only."""
    work = pacs.root / "work" / "local0"
    pacs.wait_for(lambda: not [p for p in work.iterdir() if p.is_dir() and p.name not in ("results", "monitor")], 60,
                  f"the run folders in {work} to go")
    assert {f.name for f in (work / "results").rglob("*") if f.is_file()} <= {"results.json"}


def _one_result_each(pacs: Pacs, uids: list[str], kinds: tuple[str, ...] = ("report",)) -> bool:
    """Every study has exactly one report (and one of each of ``kinds``); raises when any has two."""
    for uid in uids:
        res = pacs.results(uid)
        for k in kinds:
            assert len(res.get(k, [])) <= 1, (uid, res)
            if len(res.get(k, [])) != 1:
                return False
    return True


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    _need("Orthanc", "storescu")
    root = tmp_path_factory.mktemp("pacs") / "pacs_dir"
    p = Pacs(root, "--retries", "1", "--retry-delays", "2").start()
    yield p
    p.stop()
    assert p.proc.returncode == 0, p.output()


def test_cr_study_comes_back_once_and_the_pacs_is_locked(pacs: Pacs, tmp_path: Path) -> None:
    src = _phantom(tmp_path)
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    assert pacs.store(src).returncode == 0
    res = pacs.wait_for(lambda: (lambda r: r if len(r.get("gradcam", [])) == 1 and r.get("report") else None)(
        pacs.results(study_uid)), 600, "the SR, enhanced and Grad-CAM SCs")
    assert sorted(res) == ["enhanced", "gradcam", "report"] and all(len(v) == 1 for v in res.values()), res
    sr = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{res['report'][0]}/file")))
    assert any(t.startswith("Finding=") for t in _sr_texts(sr)), _sr_texts(sr)
    sc = pacs.get(f"/instances/{res['enhanced'][0]}/simplified-tags")
    assert sc["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] == sop_uid
    done = [e for e in pacs.events() if e["event"] == "run_done" and e.get("study_uid") == study_uid]
    assert len(done) == 1 and done[0]["worker"] and done[0]["seconds"] > 0, done
    # our outputs made the study unstable, then stable again: queued, nothing new
    pacs.wait_for(lambda: [e for e in pacs.events() if e["event"] == "nothing_new" and e.get("study_uid") == study_uid],
                  60, "the 'nothing_new' after our own outputs")
    # re-sent as it was (Orthanc: already stored), and the reconcile has run: nothing stored twice, no second run
    n_before = pacs.get("/statistics")["CountInstances"]
    assert pacs.store(src).returncode == 0
    time.sleep(8)
    assert pacs.get("/statistics")["CountInstances"] == n_before
    assert len([e for e in pacs.events() if e["event"] == "run_start" and e.get("study_uid") == study_uid]) == 1
    # no patient data in the log; the work folder is gone; the credentials file is private
    log_text = (pacs.root / "ai_router.log").read_text()
    assert str(ds.PatientName) not in log_text and str(ds.PatientID) not in log_text
    assert sorted(p.name for p in (pacs.root / "work" / "local0").iterdir()) == ["results", "warm_app.log"]
    kept = [json.loads(f.read_text()) for f in (pacs.root / "work" / "local0" / "results").glob("*/results.json")]
    assert [im["sop_uid"] for r in kept for im in r["images"]] == [sop_uid]  # the one run's results.json, kept
    assert (pacs.root / "credentials").stat().st_mode & 0o777 == 0o600
    assert (pacs.root / "orthanc.json").stat().st_mode & 0o777 == 0o600
    # anonymous REST and DICOMweb: 401
    for path in ("/system", "/studies", "/dicom-web/studies"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            pacs.get(path, auth=False)
        assert refused.value.code == 401, path
    # an unknown calling AE title, or a wrong called one: refused, nothing stored
    other = _copies(src, tmp_path / "other", 1)[0][0]
    for kw in ({"aet": "INTRUDER"}, {"aec": "NOTORTHANC"}):
        sent = pacs.store(other, **kw)
        assert "Association Rejected" in sent.stderr or "rejected" in sent.stderr.lower(), (kw, sent.stderr)
    assert pacs.get("/statistics")["CountInstances"] == n_before
    status = subprocess.run([sys.executable, str(PROJECT_ROOT / "deploy" / "pacs" / "pacs_queue.py"), "--queue",
                             f"sqlite:///{pacs.root / 'queue.db'}"], capture_output=True, text=True, timeout=60)
    counts = json.loads(status.stdout)
    assert counts["done"] >= 1 and counts["running"] == 0 and counts["failed"] == 0, counts


def test_unreadable_image_gets_a_not_assessed_report(pacs: Pacs, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_phantom(tmp_path, 128))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    cut = tmp_path / "cut_pixels.dcm"
    ds.save_as(cut)
    assert pacs.store(cut).returncode == 0
    res = pacs.wait_for(lambda: (lambda r: r if r.get("report") and r.get("summary") else None)(
        pacs.results(str(ds.StudyInstanceUID))), 300, "the not-assessed report")
    texts = _sr_texts(pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{res['report'][0]}/file"))))
    assert "AI processing=Not assessed: AI processing failed" in texts, texts
    assert any(t.startswith("Reason not assessed=failed") for t in texts), texts


def test_a_worker_killed_mid_run_is_replaced_and_the_study_stored_once(pacs: Pacs, tmp_path: Path) -> None:
    # a 512 px film: its run takes several seconds even on a quiet machine (a 256 px one could finish before the
    # kill on idle cores, and the test would then kill an idle worker: checked below instead of passing vacuously)
    (src, uid), = _copies(_phantom(tmp_path, 512), tmp_path / "k", 1)
    assert pacs.store(src).returncode == 0
    pacs.wait_for(lambda: [e for e in pacs.events() if e["event"] == "run_start" and e.get("study_uid") == uid],
                  600, "the run to start")
    time.sleep(0.5)
    assert not [e for e in pacs.events() if e["event"] == "run_done" and e.get("study_uid") == uid], \
        "the run ended before the kill: the test needs a longer run"
    os.kill(pacs.pid("worker"), signal.SIGKILL)  # its warm app dies with it (PR_SET_PDEATHSIG)
    pacs.wait_for(lambda: _one_result_each(pacs, [uid], ("report", "enhanced", "gradcam")), 600, "the re-run's results")
    starts = [e for e in pacs.events() if e["event"] == "run_start" and e.get("study_uid") == uid]
    assert len(starts) == 2, starts  # run again, stored once
    assert any(e["event"] == "reconcile_queued" and e.get("study_uid") == uid for e in pacs.events())
    # the killed run's folder (patient images) was removed by its successor
    assert [e for e in pacs.events() if e["event"] == "started" and e.get("leftover_run_folders_removed")]
    _no_run_folders(pacs)


def test_many_studies_at_once_all_done_none_twice(pacs: Pacs, tmp_path: Path) -> None:
    studies = _copies(_phantom(tmp_path, 128), tmp_path / "batch", 30)
    sent = pacs.store(*[f for f, _ in studies])  # one association, 30 studies
    assert sent.returncode == 0, sent.stderr
    uids = [u for _, u in studies]
    pacs.wait_for(lambda: _one_result_each(pacs, uids), 900, "30 reports")
    time.sleep(3)
    assert _one_result_each(pacs, uids)
    queue = f"sqlite:///{pacs.root / 'queue.db'}"
    counts = json.loads(subprocess.run([sys.executable, str(PROJECT_ROOT / "deploy" / "pacs" / "pacs_queue.py"),
                                        "--queue", queue], capture_output=True, text=True, timeout=60).stdout)
    assert counts["running"] == 0 and counts["retry_scheduled"] == 0, counts
    pacs.wait_for(lambda: json.loads(subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "deploy" / "pacs" / "pacs_queue.py"), "--queue", queue],
        capture_output=True, text=True, timeout=60).stdout)["queued"] == 0, 120, "the queue to drain")
    # memory bounded: the warm app's peak resident memory over all those runs
    warm = [e for e in pacs.events() if e["event"] == "warm_app_ready"][-1]["pid"]
    peak_kb = int(next(ln for ln in Path(f"/proc/{warm}/status").read_text().splitlines()
                       if ln.startswith("VmHWM")).split()[1])
    print(f"warm app peak RSS after the batch: {peak_kb / 1024**2:.2f} GiB")
    assert peak_kb < 3 * 1024**2
    _no_run_folders(pacs)


def test_orthanc_killed_mid_run_then_restarted_stores_every_study_once(pacs: Pacs, tmp_path: Path) -> None:
    (src, uid), = _copies(_phantom(tmp_path, 256), tmp_path / "o", 1)
    assert pacs.store(src).returncode == 0
    pacs.wait_for(lambda: [e for e in pacs.events() if e["event"] == "run_start" and e.get("study_uid") == uid],
                  600, "the run to start")
    os.kill(pacs.pid("orthanc"), signal.SIGKILL)
    pacs.proc.wait(timeout=60)  # the supervisor stops its workers and exits
    assert pacs.proc.returncode != 0
    pacs.start()  # same PACS_DIR, same ports
    pacs.wait_for(lambda: _one_result_each(pacs, [uid], ("report", "enhanced", "gradcam")), 600,
                  "the study's results after the restart")
    _no_run_folders(pacs)


def test_app_failure_gives_the_ai_failed_report_after_the_retries(tmp_path: Path) -> None:
    _need("Orthanc", "storescu")
    p = Pacs(tmp_path / "failing", "--retries", "2", "--retry-delays", "1,2", "--models",
             str(tmp_path / "no_models")).start()
    try:
        (src, uid), = _copies(_phantom(tmp_path, 128), tmp_path / "f", 1)
        assert p.store(src).returncode == 0
        res = p.wait_for(lambda: (lambda r: r if r.get("report") and r.get("summary") else None)(p.results(uid)),
                         300, "the AI-failed report")
        fails = [e for e in p.events() if e["event"] == "run_failed" and e.get("study_uid") == uid]
        assert [e["attempt"] for e in fails] == [0, 1, 2] and [e["retry_in_s"] for e in fails] == [1, 2, None], fails
        texts = _sr_texts(pydicom.dcmread(io.BytesIO(p.get(f"/instances/{res['report'][0]}/file"))))
        assert "AI processing=Not assessed: AI processing failed" in texts, texts
        assert any(t.startswith("Reason not assessed=AI processing failed after 3 tries") for t in texts), texts
        _no_run_folders(p)
    finally:
        p.stop()


def test_two_workers_on_one_redis_share_a_batch(tmp_path: Path) -> None:
    _need("Orthanc", "storescu", "redis-server")
    port = free_port()
    (tmp_path / "redis").mkdir()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir",
                              str(tmp_path / "redis"), "--appendonly", "yes", "--save", ""],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    queue = f"redis://127.0.0.1:{port}/0"
    p = Pacs(tmp_path / "pacs_dir", "--queue", queue, "--workers", "0")
    workers = []
    try:
        p.start()
        for i in (1, 2):
            workers.append(subprocess.Popen(
                [sys.executable, str(WORKER), "--queue", queue, "--pacs-url", f"http://127.0.0.1:{p.http}",
                 "--credentials", str(p.root / "credentials"), "--work-dir", str(tmp_path / f"w{i}"),
                 "--name", f"w{i}", "--models", str(MODELS), "--reconcile-s", "5"],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"w{i}.err", "w"), start_new_session=True))
        for i in (1, 2):  # both warm before the batch arrives
            w = tmp_path / f"w{i}" / "worker.log"
            p.wait_for(lambda: w.exists() and "warm_app_ready" in w.read_text(), 900, f"worker {i}")
        studies = _copies(_phantom(tmp_path, 128), tmp_path / "batch", 8)
        assert p.store(*[f for f, _ in studies]).returncode == 0
        uids = [u for _, u in studies]
        p.wait_for(lambda: _one_result_each(p, uids), 600, "8 reports")
        done = {i: {json.loads(ln)["study_uid"] for ln in (tmp_path / f"w{i}" / "worker.log").read_text().splitlines()
                    if json.loads(ln)["event"] == "run_done"} for i in (1, 2)}
        print("studies per worker:", {i: len(s) for i, s in done.items()})
        assert done[1] and done[2] and not done[1] & done[2] and done[1] | done[2] == set(uids), done
    finally:
        for w in workers:
            _stop(w)
        p.stop()
        _stop(redis)


def _site(d: Path) -> Path:
    """A commissioned site folder (``monitor_reference.json``) built as the monitor's own tests build one: the
    commissioning on a synthetic sample of 101 images, no long commissioning run."""
    from cxr_monai import commissioning as C
    from cxr_monai.commissioning import monitor as M
    from tests.test_monitor import MODEL, _population

    import numpy as np

    y, x, stats, gate, in_scope = _population(101, np.random.default_rng(0))
    rep = C.commission(x, y, MODEL, "synthetic", in_scope=in_scope, n_repeats=5, n_boot=20, min_per_class=10)
    M.write_reference(M.build_reference(rep, stats, gate), d)
    return d


def _studies_of(src: Path, d: Path, n_studies: int, per_study: int) -> list[tuple[list[Path], str, list[str]]]:
    """``n_studies`` studies of ``per_study`` images each (copies of ``src``, one series per study):
    [(files, StudyInstanceUID, SOPInstanceUIDs)]."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range(n_studies):
        study, series, files, sops = generate_uid(), generate_uid(), [], []
        for i in range(per_study):
            ds = pydicom.dcmread(src)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            files.append(d / f"s{s}_{i}.dcm")
            ds.save_as(files[-1])
            sops.append(str(ds.SOPInstanceUID))
        out.append((files, study, sops))
    return out


def test_worker_keeps_results_and_runs_the_site_drift_monitor(tmp_path: Path) -> None:
    """SITE + MONITOR_EVERY=2: each stored study's results.json is kept (no image, no patient data) and every second
    study the monitor runs on exactly the kept stream. First 2 studies (4 images): a window of exactly those 4, too
    few for a check, no alert. Then the kept history is made clearly shifted (40 earlier images from a detector
    change, written in results.json form as the monitor's own tests write them) and 2 more studies arrive: the
    window is those 40 + the 8 images stored, and the monitor alerts with a warning-level event."""
    _need("Orthanc", "storescu")
    import numpy as np

    from tests.test_monitor import _window

    site = _site(tmp_path / "site")
    p = Pacs(tmp_path / "pacs_dir", "--site", str(site), "--monitor-every", "2").start()
    try:
        src = _phantom(tmp_path, 128)
        studies = _studies_of(src, tmp_path / "m", 4, 2)
        work = p.root / "work" / "local0"

        def monitors() -> list[dict]:
            return [e for e in p.events() if e["event"] == "monitor"]

        assert p.store(*studies[0][0], *studies[1][0]).returncode == 0
        p.wait_for(lambda: len(monitors()) == 1, 600, "the first monitor run")
        first = monitors()[0]
        assert first["window"]["n"] == first["window"]["n_in_stream"] == 4, first
        assert first["status"] == "too_few_images" and first["alert"] is False and first["checks"] == [], first
        copies = sorted((work / "results").glob("*/results.json"))
        assert len(copies) == 2, copies
        kept = [json.loads(f.read_text()) for f in copies]
        assert sorted(im["sop_uid"] for r in kept for im in r["images"]) == sorted(studies[0][2] + studies[1][2])
        assert all(im["status"] == "ok" and im["image_stats"] for r in kept for im in r["images"])
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        for f in copies:
            text = f.read_text()
            assert str(ds.PatientName) not in text and str(ds.PatientID) not in text
        assert sorted(f.name for f in (work / "results").rglob("*") if f.is_file()) == ["results.json"] * 2
        res = json.loads((work / "monitor" / "monitor.json").read_text())
        assert sorted(res["window"]["results_files"]) == [str(f) for f in copies]
        # a shifted history before the next studies
        hist = _window(work / "results" / "00000000-history", np.random.default_rng(5), 40, 0.5, shift=3.0)
        os.utime(hist, (time.time() - 3600, time.time() - 3600))
        assert p.store(*studies[2][0], *studies[3][0]).returncode == 0
        p.wait_for(lambda: len(monitors()) == 2, 600, "the second monitor run")
        second = monitors()[1]
        assert second["after_study"] == 4 and second["window"]["n"] == second["window"]["n_in_stream"] == 48, second
        assert second["alert"] is True and second["status"] == "alert", second
        checks = {c["name"]: c for c in second["checks"]}
        assert not checks["input_distribution"]["passed"], checks
        assert checks["input_distribution"]["statistic"] > checks["input_distribution"]["threshold"]
        alerts = [e for e in p.events() if e["event"] == "monitor_alert"]
        assert len(alerts) == 1 and alerts[0]["level"] == "warning", alerts
        assert alerts[0]["message"].startswith("RE-COMMISSION"), alerts
        res = json.loads((work / "monitor" / "monitor.json").read_text())
        assert res["alert"] is True and len(res["window"]["results_files"]) == 5
        assert (work / "monitor" / "monitor.png").stat().st_size > 10_000
        assert [len(p.results(uid).get("report", [])) for _, uid, _ in studies] == [2] * 4  # one per image
    finally:
        p.stop()
