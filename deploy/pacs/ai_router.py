"""Orthanc Python plugin: every stable study goes on the PACS loop's durable work queue. Nothing else.

Loaded by Orthanc (Debian ``orthanc-python``) through the top-level option ``"PythonScript"``; configured by the
``"CxrAiRouter"`` section of the Orthanc configuration (``deploy/pacs/run_pacs.py`` writes both):

    Queue       the queue URL (``sqlite:///PACS_DIR/queue.db`` or ``redis://HOST:PORT/N``), see ``pacs_queue.py``
    PythonPath  folders added (last) to this interpreter's path so that ``huey`` (and ``redis``) import: the
                site-packages of ``.venv-deploy``, where ``pip install -e .[pacs]`` put them
    LogFile     one JSON object per line (studies named by StudyInstanceUID only)

``STABLE_STUDY`` arrives on Orthanc's own thread: the callback records the job (a row in SQLite or a Redis list,
both durable) and returns. The workers (``worker.py``) decide whether there is anything to do (a study whose images
all have their results, e.g. after our own outputs made it unstable again, is ``nothing_new``), run the app and store
the results through the REST API. A failed enqueue (broker down) is logged; the workers' reconcile queues the study
later.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import orthanc  # provided by the plugin host

_cfg: dict = {}
_task = None


def log(event: str, **fields) -> None:
    """One JSON line in LogFile and the same text in Orthanc's log. Callers pass UIDs, never patient data."""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "worker": "orthanc-plugin",
                       **fields}, default=str)
    try:
        with open(_cfg["LogFile"], "a") as f:
            f.write(line + "\n")
    except (OSError, KeyError):
        pass
    (orthanc.LogError if event.endswith("error") else orthanc.LogWarning)("cxr_ai_router: " + line)


def _study_uid(study_id: str) -> str:
    try:
        return json.loads(orthanc.RestApiGet(f"/studies/{study_id}"))["MainDicomTags"].get("StudyInstanceUID", "?")
    except Exception:  # noqa: BLE001 - deleted meanwhile
        return "?"


def on_change(change_type, level, resource_id) -> None:
    if change_type != orthanc.ChangeType.STABLE_STUDY:
        return
    try:
        _task(resource_id)  # huey: one durable message; returns at once
        log("queued", study_uid=_study_uid(resource_id))
    except Exception as err:  # noqa: BLE001 - never raise into Orthanc; the reconcile finds the study
        log("enqueue_error", study_uid=_study_uid(resource_id), reason=f"{type(err).__name__}: {err}")


def _init() -> None:
    global _cfg, _task
    full = json.loads(orthanc.GetConfiguration())
    _cfg = dict(full.get("CxrAiRouter", {}))
    for p in [str(Path(__file__).resolve().parent), *_cfg.get("PythonPath", [])]:
        if p not in sys.path:
            sys.path.append(p)
    import pacs_queue

    _, _task = pacs_queue.open_queue(_cfg["Queue"])
    orthanc.RegisterOnChangeCallback(on_change)
    log("started", queue=_cfg["Queue"].split("@")[-1])


_init()
