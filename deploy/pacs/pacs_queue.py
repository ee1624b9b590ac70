"""The PACS loop's durable work queue: huey (https://huey.readthedocs.io) on SQLite (one machine) or Redis (several).

Imported by the Orthanc plugin (``ai_router.py``, which only enqueues) and by the workers (``worker.py``, which run
the jobs); both must import it under this module name so that huey names the task the same way on both sides.
Nothing here imports torch or the app.

    QUEUE=sqlite:///PATH/queue.db   (default: PACS_DIR/queue.db; WAL journal, fsync on commit)
    QUEUE=redis://HOST:PORT/N       (a Redis server that every worker and the PACS reach)

Besides the queue itself (pending and scheduled jobs; a scheduled job is a retry waiting for its time), huey's
key-value store holds:

* ``lease:<Orthanc study id>``: the worker running that study (name, host, pid, last heartbeat). A lease whose
  heartbeat is older than ``LEASE_TTL_S``, or whose process is gone on this host, is dead: its study is queued again
  by the next reconcile (huey removes a job from the queue when a worker takes it, so a job whose worker died lives
  on only through its lease and the reconcile).
* ``state:<Orthanc study id>``: ``done`` or ``failed`` (the "AI failed" result was stored), for ``pacs-status``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

__all__ = ["open_queue", "Leases", "status_counts", "queued_study_ids", "LEASE_TTL_S", "HEARTBEAT_S"]

HEARTBEAT_S = 5.0
LEASE_TTL_S = 30.0
QUEUE_NAME = "cxr_pacs"

_handler: Callable[[str, int], None] | None = None


def set_handler(fn: Callable[[str, int], None]) -> None:
    """The function a worker runs for a job ``(orthanc_study_id, attempt)``."""
    global _handler
    _handler = fn


def open_queue(url: str) -> tuple[Huey, Any]:
    """(huey instance, the ``process_study`` task) for ``url`` (``sqlite:///path`` or ``redis://host:port/n``)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        huey = RedisHuey(QUEUE_NAME, url=url, results=False)
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])  # sqlite:////abs/path or sqlite:///relative/path
        path.parent.mkdir(parents=True, exist_ok=True)
        huey = SqliteHuey(QUEUE_NAME, filename=str(path), results=False, fsync=True, timeout=30)
    else:
        raise ValueError(f"QUEUE must be sqlite:///PATH or redis://HOST:PORT/N, got {url!r}")

    @huey.task(name="process_study")
    def process_study(study_id: str, attempt: int = 0) -> None:
        if _handler is None:
            raise RuntimeError("this process enqueues only (no worker handler set)")
        _handler(study_id, attempt)

    return huey, process_study


def queued_attempts(huey: Huey) -> dict[str, int]:
    """Orthanc study id -> the highest attempt number among its pending or scheduled (retry) jobs."""
    out: dict[str, int] = {}
    for task in [*huey.pending(), *huey.scheduled()]:
        if getattr(task, "name", "").endswith("process_study") and task.args:
            attempt = int(task.args[1]) if len(task.args) > 1 else 0
            out[str(task.args[0])] = max(attempt, out.get(str(task.args[0]), -1))
    return out


def queued_study_ids(huey: Huey) -> set[str]:
    """Orthanc study ids with a pending or scheduled (retry) job."""
    return set(queued_attempts(huey))


class Leases:
    """Who runs which study, with heartbeats, in huey's key-value store (see the module docstring)."""

    def __init__(self, huey: Huey, worker: str) -> None:
        self.huey, self.worker = huey, worker
        self.host, self.pid = socket.gethostname(), os.getpid()

    def _value(self) -> dict:
        return {"worker": self.worker, "host": self.host, "pid": self.pid, "t": time.time()}

    def acquire(self, study_id: str) -> bool:
        key = f"lease:{study_id}"
        if self.huey.put_if_empty(key, json.dumps(self._value())):
            return True
        held = self.get(study_id)
        if held is None or not self.alive(held):
            self.huey.delete(key)
            return bool(self.huey.put_if_empty(key, json.dumps(self._value())))
        return False

    def refresh(self, study_id: str) -> None:
        self.huey.put(f"lease:{study_id}", json.dumps(self._value()))

    def release(self, study_id: str) -> None:
        self.huey.delete(f"lease:{study_id}")

    def get(self, study_id: str) -> dict | None:
        raw = self.huey.get(f"lease:{study_id}", peek=True)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def alive(self, lease: dict) -> bool:
        if time.time() - float(lease.get("t", 0)) > LEASE_TTL_S:
            return False
        if lease.get("host") == self.host and lease.get("pid") != self.pid:
            try:
                os.kill(int(lease["pid"]), 0)
            except (OSError, ValueError, KeyError):
                return False
        return True


def set_state(huey: Huey, study_id: str, state: str) -> None:
    huey.put(f"state:{study_id}", state)


def status_counts(huey: Huey) -> dict[str, int]:
    """queued (waiting now), retry_scheduled, running (live leases), done and failed (studies) counts."""
    items = huey.storage.result_items()
    leases = Leases(huey, "status")
    running = 0
    states: dict[str, int] = {"done": 0, "failed": 0}
    for key, raw in items.items():
        key = key.decode() if isinstance(key, bytes) else str(key)
        try:
            value = huey.serializer.deserialize(raw)
        except Exception:  # noqa: BLE001 - a foreign key
            continue
        if key.startswith("lease:"):
            try:
                running += leases.alive(json.loads(value))
            except (ValueError, TypeError):
                pass
        elif key.startswith("state:") and value in states:
            states[value] += 1
    return {"queued": huey.pending_count(), "retry_scheduled": huey.scheduled_count(), "running": running, **states}


def main(argv: list[str] | None = None) -> int:
    """``python deploy/pacs/pacs_queue.py --queue URL``: the counts of :func:`status_counts`, as JSON."""
    import argparse

    ap = argparse.ArgumentParser(description="the PACS loop's queue: queued, running, done and failed counts")
    ap.add_argument("--queue", required=True)
    args = ap.parse_args(argv)
    if args.queue.startswith("sqlite:///") and not Path(args.queue[len("sqlite:///"):]).is_file():
        print(f"error: no queue at {args.queue} (start the PACS first: make pacs)", flush=True)
        return 2
    huey, _ = open_queue(args.queue)
    print(json.dumps(status_counts(huey)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
