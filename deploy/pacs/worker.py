"""A PACS-loop worker: takes studies from the queue, runs the app on their CR/DX images, stores the results in Orthanc.

    .venv-deploy/bin/python deploy/pacs/worker.py --queue sqlite:///PACS_DIR/queue.db --pacs-url http://127.0.0.1:8042
        --credentials PACS_DIR/credentials --work-dir DIR [--models .deploy_models] [--runner warm|venv|map|map-warm]
        [--retries 2 --retry-delays 10,60 --timeout 600 --name NAME --log FILE] [--site DIR --monitor-every 50]

(``make pacs`` starts one beside Orthanc; ``make pacs-worker`` starts one more on any machine that reaches the PACS and
the queue.) One job = one Orthanc study id. For each job the worker

1. asks Orthanc (REST, with the credentials) for the study's CR/DX images that are not our own outputs and have no
   result yet: an image has its result when Orthanc holds its report, whose SOPInstanceUID is a function of the
   image's (:func:`cxr_monai.results.report_uid`); nothing to do -> ``nothing_new``;
2. takes the study's lease (:class:`pacs_queue.Leases`; another worker on it -> the job waits and comes back);
3. exports those images to ``WORK/<study id>-<random>/input/<Orthanc instance id>.dcm`` (names from Orthanc's ids,
   never from the sender's UIDs), runs the app with a time limit (``warm``: a child process that keeps the models
   loaded between studies; ``venv``: one ``.venv-deploy`` process per study; ``map``: the MAP image, hardened, per
   study; ``map-warm``: the warm app inside one long-lived hardened container of the MAP image, :mod:`map_warm`);
4. stores every output through ``POST /instances``, each image's report last. Output UIDs are functions of the
   source image's UIDs, so storing again after a crash stores nothing twice: one result per source image;
5. a run that fails (exit without ``results.json``, time limit, crash) is retried ``--retries`` times after
   ``--retry-delays`` seconds; after the last, every image gets the coded "not assessed: AI processing failed" report
   with the reason and a summary SC (:func:`cxr_monai.results.write_not_assessed`). An image the app ran on but could
   not read (status ``failed``) gets the same at once, with the app's reason;
6. keeps a copy of the run's ``results.json`` (no images, no patient data) under ``WORK/results/`` and, with a
   commissioned ``--site``, runs the site's drift monitor every ``--monitor-every`` stored studies
   (:mod:`site_monitor`; output ``WORK/monitor/monitor.json``, events ``monitor`` and ``monitor_alert``);
7. removes the work folder (success or failure) unless ``--keep-work``.

Orthanc unreachable -> the job is put back (no attempt counted). Reconcile, at start and every ``--reconcile-s``:
every stable study with CR/DX images lacking a result, no queued job and no live lease is queued. Log: one JSON object
per line (``run_done`` names the worker, the StudyInstanceUID and the seconds); studies by UID, never patient data.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import pacs_queue  # noqa: E402
from site_monitor import DEFAULT_EVERY, DEFAULT_KEEP, SiteMonitor  # noqa: E402



class PacsUnavailable(RuntimeError):
    """Orthanc did not answer (stopped, restarting): the job waits, no attempt is counted."""


class Pacs:
    """Orthanc's REST API with HTTP basic authentication."""

    def __init__(self, url: str, credentials: str | None) -> None:
        self.url = url.rstrip("/")
        self.auth = None
        if credentials:
            self.auth = "Basic " + base64.b64encode(credentials.encode()).decode()

    def request(self, path: str, body: bytes | None = None, method: str | None = None, timeout: float = 60):
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body is not None else "GET"))
        if self.auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
                return json.loads(data) if "json" in r.headers.get("Content-Type", "") else data
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as err:
            raise PacsUnavailable(f"{self.url}: {err}") from err

    def get(self, path: str):
        return self.request(path)

    def post(self, path: str, body: bytes):
        return self.request(path, body)

    def exists(self, sop_uid: str) -> bool:
        found = self.post("/tools/lookup", sop_uid.encode())
        return any(f.get("Type") == "Instance" for f in found)


def _die_with_parent() -> None:
    """In a child: SIGKILL when the worker dies (PR_SET_PDEATHSIG), so no app outlives its worker."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except OSError:
        pass
    os.setsid()


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = args.name or f"{socket.gethostname()}:{os.getpid()}"
        self.pacs = Pacs(args.pacs_url, _read_credentials(args.credentials))
        self.huey, self.task = pacs_queue.open_queue(args.queue)
        self.leases = pacs_queue.Leases(self.huey, self.name)
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_file = Path(args.log) if args.log else self.work / "worker.log"
        self.delays = [float(d) for d in str(args.retry_delays).split(",") if d.strip()] or [10.0]
        self._log_lock = threading.Lock()
        self._warm: subprocess.Popen | None = None
        self._warm_map = None  # map_warm.WarmMap of the map-warm runner
        if args.runner == "map-warm":
            from map_warm import WarmMap

            self._warm_map = WarmMap(args.image, self.work, self.name, args.cpus)
            self._warm_map.remove()  # a killed predecessor's container
        self._model_info: dict = {}
        self._stopping = False
        app_python = Path(args.app_python)
        self.monitor = SiteMonitor(self.work, self.log, site=args.site, every=args.monitor_every,
                                   window=args.monitor_window, keep=args.results_keep,
                                   python=app_python if app_python.exists() else sys.executable)
        pacs_queue.set_handler(self.handle)

    # ------------------------------------------------------------------------------------------------------- logging
    def log(self, event: str, **fields) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "worker": self.name, **fields}
        with self._log_lock, open(self.log_file, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    # ---------------------------------------------------------------------------------------------- what to process
    def sources(self, study_id: str) -> tuple[str, list[tuple[str, str]]]:
        """(StudyInstanceUID, [(Orthanc instance id, SOPInstanceUID)] of the study's CR/DX source images: the
        modality rule (:data:`cxr_monai.io.rules.PROJECTION_MODALITIES`), never our own outputs
        (:func:`cxr_monai.dicom.is_own_output`))."""
        from cxr_monai.dicom import is_own_output
        from cxr_monai.io.rules import PROJECTION_MODALITIES

        study = self.pacs.get(f"/studies/{study_id}")
        uid = study["MainDicomTags"].get("StudyInstanceUID", "?")
        out = []
        for series_id in study.get("Series", []):
            series = self.pacs.get(f"/series/{series_id}")
            tags = series.get("MainDicomTags", {})
            if tags.get("Modality", "").upper() not in PROJECTION_MODALITIES or is_own_output(tags):
                continue
            for inst in self.pacs.get(f"/series/{series_id}/instances"):
                out.append((inst["ID"], inst["MainDicomTags"].get("SOPInstanceUID", "")))
        return uid, out

    def lacking(self, sources: list[tuple[str, str]]) -> list[tuple[str, str]]:
        from cxr_monai.results import report_uid

        return [(i, sop) for i, sop in sources if sop and not self.pacs.exists(report_uid(sop))]

    # ------------------------------------------------------------------------------------------------------ one job
    def handle(self, study_id: str, attempt: int) -> None:
        try:
            self._handle(study_id, attempt)
        except PacsUnavailable as err:
            self.log("pacs_unavailable", study_id=study_id, reason=str(err), retry_in_s=10)
            self.task.schedule(args=(study_id, attempt), delay=10)
        except Exception as err:  # noqa: BLE001 - the worker goes on; the reconcile finds the study again
            self.log("job_error", study_id=study_id, reason=f"{type(err).__name__}: {err}",
                     trace=traceback.format_exc()[-800:])
            raise

    def _handle(self, study_id: str, attempt: int) -> None:
        t0 = time.time()
        # One chain of attempts per study: when another job of this study waits with an attempt as high (the plugin's
        # and the reconcile's enqueue can race while a job is between the queue and its lease), that one runs it.
        waiting = pacs_queue.queued_attempts(self.huey).get(study_id)
        if waiting is not None and waiting >= attempt:
            self.log("duplicate_job", study_id=study_id, attempt=attempt, waiting_attempt=waiting)
            return
        try:
            study_uid, sources = self.sources(study_id)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                self.log("study_gone", study_id=study_id)
                return
            raise
        todo = self.lacking(sources)
        if not todo:
            self.log("nothing_new", study_uid=study_uid)
            return
        if not self.leases.acquire(study_id):
            self.log("busy_elsewhere", study_uid=study_uid, retry_in_s=15)
            self.task.schedule(args=(study_id, attempt), delay=15)
            return
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(study_id, stop), daemon=True)
        beat.start()
        tag = f"{study_id}-{secrets.token_hex(4)}"
        if self._warm_map is not None:  # the folders the warm container sees
            input_dir, output_dir = self._warm_map.run_dirs(tag)
            folders = [input_dir, output_dir]
        else:
            input_dir, output_dir = self.work / tag / "input", self.work / tag / "output"
            folders = [self.work / tag]
        try:
            self._run(study_id, study_uid, todo, attempt, input_dir, output_dir, t0)
        finally:
            stop.set()
            beat.join(timeout=10)
            self.leases.release(study_id)
            if not self.args.keep_work:
                for d in folders:
                    shutil.rmtree(d, ignore_errors=True)

    def _heartbeat(self, study_id: str, stop: threading.Event) -> None:
        while not stop.wait(pacs_queue.HEARTBEAT_S):
            try:
                self.leases.refresh(study_id)
            except Exception:  # noqa: BLE001 - the broker is back next beat, or the lease goes stale
                pass

    def _run(self, study_id: str, study_uid: str, todo: list[tuple[str, str]], attempt: int, input_dir: Path,
             output_dir: Path, t0: float) -> None:
        input_dir.mkdir(parents=True)
        output_dir.mkdir(parents=True)
        sop_of = {}
        for inst_id, sop in todo:
            (input_dir / f"{inst_id}.dcm").write_bytes(self.pacs.get(f"/instances/{inst_id}/file"))
            sop_of[inst_id] = sop
        self.log("run_start", study_uid=study_uid, instances=len(todo), runner=self.args.runner, attempt=attempt)
        rc, reason = self.run_app(input_dir, output_dir)
        results_file = output_dir / "results.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else None
        if results is None and self._stopping:  # this worker is shutting down: not the app's failure
            self.log("run_interrupted", study_uid=study_uid, attempt=attempt, retry_in_s=5)
            self.task.schedule(args=(study_id, attempt), delay=5)
            return
        if results is None:
            reason = reason or f"the app exited with status {rc} without results"
            if attempt < self.args.retries:
                delay = self.delays[min(attempt, len(self.delays) - 1)]
                self.log("run_failed", study_uid=study_uid, attempt=attempt, reason=reason, retry_in_s=delay)
                self.task.schedule(args=(study_id, attempt + 1), delay=delay)
                return
            self.log("run_failed", study_uid=study_uid, attempt=attempt, reason=reason, retry_in_s=None)
        else:
            self._model_info = (results.get("run", {}).get("models", {}).get("cxr_pneumonia") or self._model_info)
        by_inst = {}
        for img in (results or {}).get("images", []):
            by_inst[Path(str(img.get("file") or "")).stem] = img
            self.log("image", study_uid=study_uid, sop_uid=img.get("sop_uid"), status=img.get("status"),
                     reason=img.get("reason"), probability=(img.get("classification") or {}).get("probability"))
        stored = failed = 0
        for inst_id, sop in todo:
            img = by_inst.get(inst_id)
            outputs = dict((img or {}).get("outputs") or {})
            if img is not None and img.get("status") in ("ok", "out_of_scope") and "report" in outputs:
                files = [self._local(output_dir, p) for k, p in outputs.items() if k != "report" and p.endswith(".dcm")]
                files.append(self._local(output_dir, outputs["report"]))
            else:
                why = ("AI processing failed after " f"{attempt + 1} tries: {reason}" if results is None else
                       f"{(img or {}).get('status', 'no result')}: {(img or {}).get('reason') or 'the app gave no result for this image'}")
                files = self._not_assessed(input_dir / f"{inst_id}.dcm", why, output_dir / "not_assessed")
                failed += 1
                self.log("not_assessed", study_uid=study_uid, sop_uid=sop, reason=why)
            for f in files:  # the report last: its presence in the PACS means this image is done
                answer = self.pacs.post("/instances", Path(f).read_bytes())
                stored += answer.get("Status") == "Success"
        pacs_queue.set_state(self.huey, study_id, "failed" if failed else "done")
        kept = self.monitor.keep_results(results_file, study_id) if results is not None else None
        self.log("run_done", study_uid=study_uid, runner=self.args.runner, attempt=attempt, exit_status=rc,
                 images=len(todo), not_assessed=failed, stored=stored, seconds=round(time.time() - t0, 2),
                 counts=(results or {}).get("counts"), results_copy=kept)

    @staticmethod
    def _local(output_dir: Path, path: str) -> Path:
        """An output path from results.json (the container's or the app's) on this machine."""
        p = Path(path)
        if p.is_file():
            return p
        parts = p.parts
        for i in range(len(parts)):
            cand = output_dir.joinpath(*parts[i:])
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"output {path} not found under {output_dir}")

    def _not_assessed(self, source_file: Path, reason: str, out: Path) -> list[Path]:
        import pydicom

        from cxr_monai.io import load_cxr
        from cxr_monai.results import write_not_assessed

        ds = pydicom.dcmread(source_file, stop_before_pixels=True)
        try:
            image = load_cxr(source_file)[0]
        except Exception:  # noqa: BLE001 - unreadable pixels: the summary shows a grey field
            image = None
        written = write_not_assessed(ds, reason, out, image=image, model_info=self._model_info or None)
        return [Path(written["summary"]), Path(written["report"])]

    # ------------------------------------------------------------------------------------------------------ runners
    def run_app(self, input_dir: Path, output_dir: Path) -> tuple[int | None, str | None]:
        """(exit status or None, reason when it failed)."""
        if self.args.runner in ("warm", "map-warm"):
            return self._run_warm(input_dir, output_dir)
        if self.args.runner == "map":
            cmd = [sys.executable, str(ROOT / "deploy" / "packaging" / "run_map.py"), "--image", self.args.image,
                   "--input", str(input_dir), "--output", str(output_dir),
                   "--name", f"cxr-ai-{secrets.token_hex(6)}"]
            if self.args.cpus:
                cmd += ["--cpus", str(self.args.cpus)]
        else:
            cmd = [str(self.args.app_python), str(ROOT / "deploy" / "cxr_enhance_classify"), "-i", str(input_dir),
                   "-o", str(output_dir), "-m", str(self.args.models)]
        logfile = output_dir.parent / "app.log"
        with open(logfile, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            try:
                rc = proc.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                if self.args.runner == "map":
                    name = cmd[cmd.index("--name") + 1]
                    subprocess.run(["podman", "rm", "-f", name], capture_output=True)
                return None, f"time limit of {self.args.timeout} s exceeded"
        return rc, None if rc == 0 else f"exit status {rc}: {_tail(logfile)}"

    def _start_warm(self) -> subprocess.Popen:
        if self._warm_map is not None:
            self._warm_map.remove()
            cmd = self._warm_map.command()
        else:
            cmd = [str(self.args.app_python), str(HERE / "warm_app.py"), "--models", str(self.args.models)]
        log = open(self.work / "warm_app.log", "a")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                preexec_fn=_die_with_parent, bufsize=0)
        log.close()
        ready = _read_line(proc, max(300.0, float(self.args.timeout)))  # loading + warm-up: slow on a busy machine
        if not ready or json.loads(ready).get("ready") is not True:
            self._kill_warm(proc)
            raise RuntimeError(f"the warm app did not start: {ready!r}; see {self.work / 'warm_app.log'}")
        return proc

    def _run_warm(self, input_dir: Path, output_dir: Path) -> tuple[int | None, str | None]:
        try:
            if self._warm is None or self._warm.poll() is not None:
                self._warm = self._start_warm()
                self.log("warm_app_ready", pid=self._warm.pid)
            request = (self._warm_map.request(input_dir, output_dir) if self._warm_map is not None else
                       {"input": str(input_dir), "output": str(output_dir)})
            self._warm.stdin.write((json.dumps(request) + "\n").encode())
            line = _read_line(self._warm, self.args.timeout)
        except (OSError, RuntimeError, ValueError) as err:
            if self._warm is not None:
                self._kill_warm(self._warm)
            self._warm = None
            return None, f"warm app: {err}"
        if line is None:
            self._kill_warm(self._warm)
            self._warm = None
            return None, f"time limit of {self.args.timeout} s exceeded (or the warm app died)"
        answer = json.loads(line)
        return int(answer.get("rc", 1)), answer.get("error")

    def _kill_warm(self, proc: subprocess.Popen) -> None:
        _kill(proc)
        if self._warm_map is not None:  # the podman client is gone; the container too
            self._warm_map.remove()

    def warm_up(self) -> None:
        if self.args.runner in ("warm", "map-warm"):
            try:
                self._warm = self._start_warm()
                self.log("warm_app_ready", pid=self._warm.pid)
            except (OSError, RuntimeError, ValueError) as err:  # each job tries again, and fails with the reason
                self.log("warm_app_error", reason=str(err))

    # ---------------------------------------------------------------------------------------------------- reconcile
    def reconcile(self) -> int:
        """Queue every stable study with CR/DX images lacking a result, no queued job and no live lease."""
        queued = pacs_queue.queued_study_ids(self.huey)
        n = 0
        for study_id in self.pacs.get("/studies"):
            if study_id in queued:
                continue
            lease = self.leases.get(study_id)
            if lease is not None and self.leases.alive(lease):
                continue
            study = self.pacs.get(f"/studies/{study_id}")
            if not study.get("IsStable", True):
                continue  # Orthanc announces it when it is
            uid, sources = self.sources(study_id)
            if self.lacking(sources):
                self.task(study_id)
                n += 1
                self.log("reconcile_queued", study_uid=uid, dead_lease=lease is not None)
        return n

    def _reconcile_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.args.reconcile_s):
            try:
                self.reconcile()
            except PacsUnavailable:
                pass
            except Exception as err:  # noqa: BLE001
                self.log("reconcile_error", reason=f"{type(err).__name__}: {err}")

    def remove_leftovers(self) -> int:
        """Remove run folders a killed predecessor left in this worker's own WORK_DIR (they hold patient images)."""
        n = 0
        for d in self.work.iterdir():
            if d.is_dir() and (d / "input").is_dir():
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        for root in (self.work / "map_in", self.work / "map_out"):  # the map-warm runner's run folders
            for d in (root.iterdir() if root.is_dir() else []):
                shutil.rmtree(d, ignore_errors=True)
                n += root.name == "map_in"
        return n

    def serve(self) -> None:
        removed = 0 if self.args.keep_work else self.remove_leftovers()
        self.log("started", queue=_redact(self.args.queue), pacs=self.args.pacs_url, runner=self.args.runner,
                 retries=self.args.retries, retry_delays=self.delays, timeout_s=self.args.timeout,
                 leftover_run_folders_removed=removed, site=str(self.monitor.site) if self.monitor.site else None,
                 monitor_every=self.args.monitor_every if self.monitor.site else None)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.log("reconciled", queued=self.reconcile())
                break
            except PacsUnavailable:
                if time.monotonic() > deadline:
                    self.log("pacs_unavailable", reason="no answer at start; the periodic reconcile goes on")
                    break
                time.sleep(1)
        self.warm_up()
        stop = threading.Event()
        threading.Thread(target=self._reconcile_loop, args=(stop,), daemon=True).start()
        consumer = self.huey.create_consumer(workers=1, worker_type="thread", periodic=False, initial_delay=0.2,
                                             backoff=1.15, max_delay=1.0, check_worker_health=True)
        try:
            consumer.run()
        finally:
            self._stopping = True
            stop.set()
            if self._warm is not None:
                self._kill_warm(self._warm)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """One line from the child's stdout within ``timeout`` s, else None."""
    deadline, buf = time.monotonic() + timeout, b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], min(1.0, max(0.0, deadline - time.monotonic())))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
        elif proc.poll() is not None:
            return None
    return None


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].replace("\n", " | ")
    except OSError:
        return ""


def _redact(url: str) -> str:
    """A queue URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _read_credentials(path: str | None) -> str | None:
    if not path:
        return None
    return Path(path).read_text().splitlines()[0].strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue", default=env("QUEUE"), required=not env("QUEUE"))
    ap.add_argument("--pacs-url", default=env("PACS_URL", "http://127.0.0.1:8042"))
    ap.add_argument("--credentials", default=env("PACS_CREDENTIALS"), help="file whose first line is user:password")
    ap.add_argument("--work-dir", default=env("WORKER_DIR", "pacs_worker"),
                    help="this worker's own folder (run folders left by a killed run are removed at start)")
    ap.add_argument("--log", default=None, help="JSON-lines log (default WORK_DIR/worker.log)")
    ap.add_argument("--name", default=None, help="worker name in logs and leases (default host:pid)")
    ap.add_argument("--runner", default=env("PACS_RUNNER", "warm"), choices=["warm", "venv", "map", "map-warm"])
    ap.add_argument("--models", default=env("MODELS", str(ROOT / ".deploy_models")))
    ap.add_argument("--app-python", default=str(ROOT / ".venv-deploy" / "bin" / "python"))
    ap.add_argument("--image", default=env("MAP_IMAGE", "localhost/cxr-enhance-classify:0.1.0"))
    ap.add_argument("--cpus", type=float, default=None)
    ap.add_argument("--timeout", type=float, default=float(env("PACS_TIMEOUT", "600")))
    ap.add_argument("--retries", type=int, default=int(env("PACS_RETRIES", "2")))
    ap.add_argument("--retry-delays", default=env("PACS_RETRY_DELAYS", "10,60"), help="seconds before retry 1,2,...")
    ap.add_argument("--reconcile-s", type=float, default=float(env("PACS_RECONCILE_S", "30")))
    ap.add_argument("--keep-work", action="store_true", default=env("KEEP_WORK", "") in ("1", "true"))
    ap.add_argument("--site", default=env("SITE") or None,
                    help="commissioned site folder (configs/commission.json output, with monitor_reference.json): "
                         "run its drift monitor on this worker's kept results")
    ap.add_argument("--monitor-every", type=int, default=int(env("MONITOR_EVERY") or DEFAULT_EVERY),
                    help="stored studies between two drift-monitor runs")
    ap.add_argument("--monitor-window", type=int, default=int(env("MONITOR_WINDOW") or 100),
                    help="most recent assessed images the monitor checks (at least 30 for a check to run)")
    ap.add_argument("--results-keep", type=int, default=int(env("RESULTS_KEEP") or DEFAULT_KEEP),
                    help="results.json copies kept under WORK_DIR/results (oldest removed first)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runner in ("map", "map-warm") and shutil.which("podman") is None:
        print("error: --runner map needs podman (make map-tools) and the MAP image (make map)", file=sys.stderr)
        return 2
    try:
        worker = Worker(args)
    except (ValueError, RuntimeError) as err:  # a SITE without a monitor reference, no MAP image, a bad setting
        print(f"error: {err}", file=sys.stderr)
        return 2
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
