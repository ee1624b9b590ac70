"""The PACS worker watches its inputs after go-live: a copy of each run's ``results.json``, and the site's drift
monitor every N stored studies.

A worker keeps the ``results.json`` of every run it stored (the app's own file, copied as it is: UIDs, model
outputs, the image statistics and gate scores the monitor reads; no image, no patient name or ID) under
``WORKER_DIR/results/<sequence>-<Orthanc study id>/results.json`` before the run folder is removed. The sequence
number goes on across restarts (the highest kept one + 1); past ``keep`` copies the oldest are removed.

Given a commissioned site folder (``SITE``: the output folder of ``configs/commission.json``, holding
``site_calibration.json`` and ``monitor_reference.json``), every ``every``-th kept copy starts the drift monitor
(:func:`cxr_monai.commissioning.monitor.run_monitor`, through ``python -m cxr_monai monitor`` in a child process, so
that the worker itself never loads torch) on ``WORKER_DIR/results`` in a background thread; it writes
``WORKER_DIR/monitor/monitor.json`` and ``monitor.png``. The worker logs an event ``monitor`` (alert, status, window,
each check's statistic and threshold) and, on an alert, an event ``monitor_alert`` at level ``warning`` with the
monitor's message ("RE-COMMISSION: ..."). One monitor run at a time; a trigger while one runs is skipped (the next
one comes N studies later).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

__all__ = ["SiteMonitor", "REFERENCE_FILE", "DEFAULT_EVERY", "DEFAULT_KEEP"]

REFERENCE_FILE = "monitor_reference.json"
"""The reference a commissioning writes beside ``site_calibration.json`` (:mod:`cxr_monai.commissioning.monitor`)."""
DEFAULT_EVERY = 50
"""Stored studies between two monitor runs."""
DEFAULT_KEEP = 5000
"""``results.json`` copies kept (a few kB each); the monitor reads the most recent ``window`` images of them."""
_SEQ = re.compile(r"^(\d{8})-")


class SiteMonitor:
    """The results copies and the drift monitor of one worker.

    Args:
        work_dir: the worker's own folder (``WORKER_DIR``); copies go to ``work_dir/results``, the monitor's output
            to ``work_dir/monitor``.
        log: the worker's JSON-lines logger, ``log(event, **fields)``.
        site: the commissioned site folder, or ``None`` (copies kept, no monitor).
        every: kept copies between two monitor runs.
        window: the monitor's window (most recent assessed images).
        keep: copies kept at most.
        python: the interpreter that runs ``python -m cxr_monai monitor`` (one with cxr_monai and torch).
        timeout: time limit of one monitor run (s).
    """

    def __init__(self, work_dir: Path, log: Callable[..., None], site: str | os.PathLike | None = None,
                 every: int = DEFAULT_EVERY, window: int = 100, keep: int = DEFAULT_KEEP,
                 python: str | os.PathLike = sys.executable, timeout: float = 600.0) -> None:
        if every < 1 or keep < 1 or window < 1:
            raise ValueError(f"every, keep and window must be at least 1, got {every}, {keep}, {window}")
        self.results_dir = Path(work_dir) / "results"
        self.monitor_dir = Path(work_dir) / "monitor"
        self.log, self.every, self.window, self.keep = log, int(every), int(window), int(keep)
        self.site = Path(site).resolve() if site else None
        self.python, self.timeout = str(python), float(timeout)
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        if self.site is not None and not (self.site / REFERENCE_FILE).is_file():
            raise ValueError(f"SITE {self.site}: no {REFERENCE_FILE} (commission the site with "
                             f"configs/commission.json; its output folder is the SITE)")

    def _copies(self) -> list[tuple[int, Path]]:
        if not self.results_dir.is_dir():
            return []
        found = [(int(m.group(1)), d) for d in self.results_dir.iterdir() if (m := _SEQ.match(d.name)) and d.is_dir()]
        return sorted(found)

    def keep_results(self, results_file: Path, study_id: str) -> int:
        """Copy a run's ``results.json``; returns its sequence number. Starts the monitor on every ``every``-th."""
        with self._lock:
            copies = self._copies()
            seq = (copies[-1][0] + 1) if copies else 1
            dest = self.results_dir / f"{seq:08d}-{study_id}"
            dest.mkdir(parents=True)
            tmp = dest / "results.json.tmp"
            shutil.copyfile(results_file, tmp)  # a fresh modification time: the monitor orders the stream by it
            os.replace(tmp, dest / "results.json")
            for _, old in copies[: max(0, len(copies) + 1 - self.keep)]:
                shutil.rmtree(old, ignore_errors=True)
        if self.site is not None and seq % self.every == 0:
            self.start(seq)
        return seq

    def start(self, seq: int) -> bool:
        """Run the monitor in a background thread; False when one is still running."""
        with self._lock:
            if self._running is not None and self._running.is_alive():
                self.log("monitor_skipped", after_study=seq, reason="the previous monitor run is still going")
                return False
            self._running = threading.Thread(target=self.run, args=(seq,), daemon=True)
            self._running.start()
            return True

    def join(self, timeout: float | None = None) -> None:
        if self._running is not None:
            self._running.join(timeout)

    def run(self, seq: int) -> dict | None:
        """One monitor run on the kept copies; logs ``monitor`` (and ``monitor_alert``); returns monitor.json."""
        cmd = [self.python, "-m", "cxr_monai", "monitor", "--site_dir", str(self.site), "--results",
               str(self.results_dir), "--output_dir", str(self.monitor_dir), "--window", str(self.window)]
        out = self.monitor_dir / "monitor.json"
        before = out.stat().st_mtime_ns if out.exists() else None
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout,
                                  cwd=Path(__file__).resolve().parents[2])
        except (OSError, subprocess.TimeoutExpired) as err:
            self.log("monitor_error", after_study=seq, reason=f"{type(err).__name__}: {err}")
            return None
        if proc.returncode != 0 or not out.exists() or out.stat().st_mtime_ns == before:
            self.log("monitor_error", after_study=seq, exit_status=proc.returncode,
                     reason=(proc.stdout + proc.stderr)[-600:])
            return None
        res = json.loads(out.read_text())
        window = res.get("window", {})
        self.log("monitor", after_study=seq, alert=bool(res.get("alert")), status=res.get("status"),
                 window={k: window.get(k) for k in ("n", "window", "n_in_stream", "n_in_scope")},
                 checks=[{k: c.get(k) for k in ("name", "statistic", "threshold", "passed", "observed", "expected")}
                         for c in res.get("checks", [])],
                 output=str(out), site_id=res.get("reference", {}).get("site_id"))
        if res.get("alert"):
            self.log("monitor_alert", level="warning", after_study=seq, message=res.get("message"), output=str(out))
            print(f"WARNING drift monitor: {res.get('message')} ({out})", file=sys.stderr, flush=True)
        return res
