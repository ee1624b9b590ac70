"""Orthanc Python plugin: every stable study's CR/DX images go through cxr_enhance_classify, results go back.

Loaded by Orthanc (Debian ``orthanc-python``) through the top-level option ``"PythonScript"``; configured by the
``"CxrAiRouter"`` section of the Orthanc configuration (``deploy/pacs/run_pacs.py`` writes both):

    WorkDir         where studies are exported and the app writes (one sub-folder per run)
    StateFile       JSON record of processed source instances and stored outputs (survives restarts)
    LogFile         this plugin's own log, one JSON object per line (studies named by StudyInstanceUID only)
    Runner          "map" (podman, the MAP image), "venv" (.venv-deploy) or "auto" (map when the image exists)
    MapImage        the MAP image (``make map``)
    RunMap          deploy/packaging/run_map.py (podman run as ``monai-deploy run`` does)
    VenvPython, AppDir, ModelsDir   the venv runner's interpreter, app folder and named-model folder
    TimeoutSeconds  time limit of one study's run (the run is killed past it and the study logged as failed)
    Cpus            CPU quota of the MAP container

Flow: ``STABLE_STUDY`` (Orthanc's thread) puts the study on a queue and returns; one worker thread takes studies
one at a time: it exports the study's CR/DX instances that were never processed and are not our own outputs
(Manufacturer ``cxr_monai`` with a "NOT FOR PRIMARY DIAGNOSIS" series description, or a SOP instance this plugin
stored), runs the app with a time limit, stores every
DICOM object the app wrote (``POST /instances``) and logs each image's status and reason from ``results.json``
(out of scope, failed, skipped). Any error is logged and the loop goes on. Storing our outputs makes the study
unstable again; its next ``STABLE_STUDY`` finds nothing new to process. A study re-sent as it was finds nothing
new either, so nothing is stored twice.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path

import orthanc  # provided by the plugin host

OWN_MANUFACTURER = "cxr_monai"
SELECTED_MODALITIES = ("CR", "DX")

_queue: "queue.Queue[str]" = queue.Queue()
_state_lock = threading.Lock()
_cfg: dict = {}
_state: dict = {"processed": {}, "stored": {}}


# ----------------------------------------------------------------------------------------------- configuration/state
def _load_config() -> dict:
    full = json.loads(orthanc.GetConfiguration())
    cfg = dict(full.get("CxrAiRouter", {}))
    work = Path(cfg.get("WorkDir", "/tmp/cxr_ai_router"))
    cfg["WorkDir"] = work
    cfg["StateFile"] = Path(cfg.get("StateFile", work / "state.json"))
    cfg["LogFile"] = Path(cfg.get("LogFile", work / "ai_router.log"))
    cfg.setdefault("Runner", "auto")
    cfg.setdefault("MapImage", "localhost/cxr-enhance-classify:0.1.0")
    cfg.setdefault("TimeoutSeconds", 600)
    cfg.setdefault("Cpus", None)
    cfg.setdefault("KeepWork", False)
    return cfg


def log(event: str, **fields) -> None:
    """One JSON line in LogFile and the same text in Orthanc's log. Callers pass UIDs, never patient data."""
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, **fields}
    line = json.dumps(rec, default=str)
    try:
        with open(_cfg["LogFile"], "a") as f:
            f.write(line + "\n")
    except OSError:
        pass
    (orthanc.LogError if event.endswith("error") else orthanc.LogWarning)("cxr_ai_router: " + line)


def _load_state() -> None:
    global _state
    try:
        _state = json.loads(Path(_cfg["StateFile"]).read_text())
        _state.setdefault("processed", {})
        _state.setdefault("stored", {})
    except (OSError, ValueError):
        _state = {"processed": {}, "stored": {}}


def _save_state() -> None:
    path = Path(_cfg["StateFile"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_state, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------ the runners
def _runner() -> str:
    runner = _cfg["Runner"]
    if runner != "auto":
        return runner
    podman = shutil.which("podman")
    if podman and subprocess.run([podman, "image", "exists", _cfg["MapImage"]]).returncode == 0:
        return "map"
    return "venv"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def run_app(input_dir: Path, output_dir: Path, tag: str) -> tuple[str, int | None, str]:
    """Run the app on input_dir -> output_dir. Returns (runner, exit status or None on timeout, log tail)."""
    runner = _runner()
    name = f"cxr-ai-{tag}"
    if runner == "map":
        cmd = [str(_cfg.get("HostPython") or "python3"), str(_cfg["RunMap"]), "--image", _cfg["MapImage"], "--input", str(input_dir),
               "--output", str(output_dir), "--name", name]
        if _cfg.get("Cpus"):
            cmd += ["--cpus", str(_cfg["Cpus"])]
    else:
        cmd = [str(_cfg["VenvPython"]), str(_cfg["AppDir"]), "-i", str(input_dir), "-o", str(output_dir),
               "-m", str(_cfg["ModelsDir"])]
    logfile = output_dir.parent / "app.log"
    with open(logfile, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=float(_cfg["TimeoutSeconds"]))
        except subprocess.TimeoutExpired:
            rc = None
            if runner == "map":
                subprocess.run(["podman", "kill", name], capture_output=True)
            _kill_group(proc)
            proc.wait()
    tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
    return runner, rc, tail


# ------------------------------------------------------------------------------------------------ one study's work
def _get(uri: str):
    return json.loads(orthanc.RestApiGet(uri))


def is_own_output(series_tags: dict) -> bool:
    """A series the app wrote: Manufacturer cxr_monai and the "NOT FOR PRIMARY DIAGNOSIS" description every output
    series carries (our outputs are SR/OT anyway, which the modality filter leaves out; and every SOP instance this
    plugin stored is recorded in the state file and skipped)."""
    return (series_tags.get("Manufacturer", "") == OWN_MANUFACTURER
            and "NOT FOR PRIMARY DIAGNOSIS" in series_tags.get("SeriesDescription", "").upper())


def _select_instances(study_id: str) -> tuple[str, list[tuple[str, str]]]:
    """(StudyInstanceUID, [(orthanc instance id, SOPInstanceUID)] of new CR/DX source instances)."""
    study = _get(f"/studies/{study_id}")
    study_uid = study["MainDicomTags"].get("StudyInstanceUID", "?")
    chosen = []
    for series_id in study.get("Series", []):
        series = _get(f"/series/{series_id}")
        tags = series.get("MainDicomTags", {})
        if tags.get("Modality", "").upper() not in SELECTED_MODALITIES:
            continue
        if is_own_output(tags):
            continue  # never the AI's input
        for inst_id in series.get("Instances", []):
            sop = _get(f"/instances/{inst_id}").get("MainDicomTags", {}).get("SOPInstanceUID", "")
            with _state_lock:
                if sop in _state["processed"] or sop in _state["stored"]:
                    continue
            chosen.append((inst_id, sop))
    return study_uid, chosen


def _store_outputs(output_dir: Path, study_uid: str) -> list[str]:
    stored = []
    for f in sorted(output_dir.rglob("*.dcm")):
        answer = json.loads(orthanc.RestApiPost("/instances", f.read_bytes()))
        status = answer.get("Status", "?")
        sop = _get(f"/instances/{answer['ID']}").get("MainDicomTags", {}).get("SOPInstanceUID", "")
        with _state_lock:
            _state["stored"][sop] = {"study_uid": study_uid, "orthanc_id": answer["ID"]}
        stored.append(sop)
        log("stored", study_uid=study_uid, sop_uid=sop, status=status)
    return stored


def process_study(study_id: str) -> None:
    t0 = time.time()
    study_uid, chosen = _select_instances(study_id)
    if not chosen:
        log("nothing_new", study_uid=study_uid)
        return
    tag = f"{int(t0 * 1000)}"
    run_dir = Path(_cfg["WorkDir"]) / "runs" / tag
    input_dir, output_dir = run_dir / "input", run_dir / "output"
    input_dir.mkdir(parents=True)
    output_dir.mkdir(parents=True)
    for inst_id, sop in chosen:
        (input_dir / f"{sop or inst_id}.dcm").write_bytes(orthanc.RestApiGet(f"/instances/{inst_id}/file"))
    log("run_start", study_uid=study_uid, instances=len(chosen), runner=_runner(), run=tag)
    runner, rc, tail = run_app(input_dir, output_dir, tag)
    results_file = output_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else None
    stored: list[str] = []
    if rc is None:
        log("run_error", study_uid=study_uid, reason=f"time limit of {_cfg['TimeoutSeconds']} s exceeded", runner=runner)
    elif results is None:
        log("run_error", study_uid=study_uid, reason=f"app exited with status {rc} without results.json",
            runner=runner, log_tail=tail[-600:])
    if results is not None:
        for img in results.get("images", []):
            log("image", study_uid=study_uid, sop_uid=img.get("sop_uid"), status=img.get("status"),
                reason=img.get("reason"), probability=(img.get("classification") or {}).get("probability"))
        for rej in results.get("files_rejected", []):
            log("file_rejected", study_uid=study_uid, reason=rej.get("reason") if isinstance(rej, dict) else str(rej))
        stored = _store_outputs(output_dir, study_uid)
    with _state_lock:
        for _, sop in chosen:
            _state["processed"][sop] = {"study_uid": study_uid, "run": tag, "exit_status": rc}
        _save_state()
    log("run_done", study_uid=study_uid, runner=runner, exit_status=rc, stored=len(stored),
        seconds=round(time.time() - t0, 1), counts=(results or {}).get("counts"))
    if not _cfg.get("KeepWork") and rc == 0:
        shutil.rmtree(run_dir, ignore_errors=True)


def _worker() -> None:
    while True:
        study_id = _queue.get()
        try:
            process_study(study_id)
        except Exception as err:  # never stop the loop
            log("study_error", study_uid=_study_uid(study_id), reason=f"{type(err).__name__}: {err}",
                trace=traceback.format_exc()[-800:])
        finally:
            _queue.task_done()


def _study_uid(study_id: str) -> str:
    try:
        return _get(f"/studies/{study_id}")["MainDicomTags"].get("StudyInstanceUID", "?")
    except Exception:  # noqa: BLE001 - deleted meanwhile
        return "?"


def on_change(change_type, level, resource_id) -> None:
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        log("queued", study_uid=_study_uid(resource_id), waiting=_queue.qsize())
        _queue.put(resource_id)  # Orthanc's thread: hand over and return at once


def _init() -> None:
    global _cfg
    _cfg = _load_config()
    Path(_cfg["WorkDir"]).mkdir(parents=True, exist_ok=True)
    _load_state()
    threading.Thread(target=_worker, name="cxr-ai-router", daemon=True).start()
    orthanc.RegisterOnChangeCallback(on_change)
    log("started", runner=_runner(), timeout_s=_cfg["TimeoutSeconds"])


_init()
