"""Start the PACS loop on one machine (``make pacs PACS_DIR=dir HTTP_PORT=p DICOM_PORT=q``): Orthanc + N workers.

    python3 deploy/pacs/run_pacs.py --dir PACS_DIR --http-port 8042 --dicom-port 4242 [--stable-age 5]
        [--queue sqlite:///PACS_DIR/queue.db | redis://HOST:PORT/N] [--workers 1] [--runner warm|venv|map|map-warm|auto]
        [--senders "STORESCU@127.0.0.1 ..."] [--timeout 600] [--retries 2 --retry-delays 10,60] [--keep-work]
        [--site DIR --monitor-every 50]

Writes ``PACS_DIR/orthanc.json`` (mode 600: it holds the password) and starts Orthanc (PID in ``PACS_DIR/orthanc.pid``):

* REST and DICOMweb on 127.0.0.1 only, authentication on: the user and password come from ``PACS_USER`` and
  ``PACS_PASSWORD``, else from ``PACS_DIR/credentials`` (first line ``user:password``, mode 600), generated on first
  start;
* DICOM: AE title ORTHANC, the called AE title checked, and only the senders of ``--senders`` (``AET@host``, default
  ``STORESCU@127.0.0.1``: dcmtk's ``storescu`` from this machine) may store (``DicomAlwaysAllowStore`` false, the
  calling host checked). Orthanc 1.10 cannot bind the DICOM port to one interface: firewall it;
* the Python plugin ``ai_router.py``, which only enqueues stable studies on the durable queue (``pacs_queue.py``).

Then starts ``--workers`` local workers (``worker.py`` in ``.venv-deploy``; PIDs in ``PACS_DIR/worker.pid``, log
``PACS_DIR/ai_router.log``, work folders under ``PACS_DIR/work/local<i>``, each with ``results/`` (a copy of every
run's ``results.json``) and, with ``--site``, ``monitor/monitor.json`` (the site's drift monitor, run every
``--monitor-every`` studies the worker stored; see ``site_monitor.py``)), and stays as their supervisor (PID in
``PACS_DIR/pacs.pid``): ``kill $(cat PACS_DIR/pacs.pid)`` stops all; if Orthanc dies, the workers are stopped and
this exits with Orthanc's status (restart it the same way: the queue and the reconcile pick up where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
DEFAULT_SENDERS = "STORESCU@127.0.0.1"


def credentials(pacs_dir: Path) -> tuple[str, str]:
    """(user, password): PACS_USER/PACS_PASSWORD, else PACS_DIR/credentials (generated once, mode 600)."""
    f = pacs_dir / "credentials"
    user, password = os.environ.get("PACS_USER"), os.environ.get("PACS_PASSWORD")
    if not (user and password):
        if f.is_file():
            user, password = f.read_text().splitlines()[0].split(":", 1)
        else:
            user, password = "cxr", secrets.token_urlsafe(24)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{user}:{password}\n")
    os.chmod(f, 0o600)
    return user, password


def parse_senders(senders: str) -> dict:
    """``"AET@host ..."`` -> Orthanc's DicomModalities (store allowed, nothing else)."""
    out = {}
    for i, item in enumerate(senders.split()):
        aet, sep, host = item.partition("@")
        if not sep or not aet or not host or len(aet) > 16:
            raise ValueError(f"a sender is AET@host (AE title up to 16 characters), got {item!r}")
        out[f"sender{i}"] = {"AET": aet, "Host": host, "Port": 104, "AllowEcho": True, "AllowStore": True,
                             "AllowFind": False, "AllowMove": False, "AllowGet": False}
    return out


def orthanc_config(pacs_dir: Path, http_port: int, dicom_port: int, stable_age: int, queue: str, senders: str,
                   user: str, password: str, remote_access: bool = False) -> dict:
    site = next((ROOT / ".venv-deploy" / "lib").glob("python3*/site-packages"), None)
    return {
        "Name": "cxr_monai PACS",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": remote_access,  # default: REST answers loopback clients only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": parse_senders(senders),
        "StorageDirectory": str(pacs_dir / "db"),
        "IndexDirectory": str(pacs_dir / "db"),
        "StableAge": stable_age,
        "UnknownSopClassAccepted": False,
        "Plugins": [DICOMWEB, PYTHON_PLUGIN],
        "PythonScript": str(HERE / "ai_router.py"),
        "PythonVerbose": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "CxrAiRouter": {"Queue": queue, "LogFile": str(pacs_dir / "ai_router.log"),
                        "PythonPath": [str(site)] if site else []},
    }


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--http-port", type=int, default=8042)
    ap.add_argument("--dicom-port", type=int, default=4242)
    ap.add_argument("--stable-age", type=int, default=5, help="seconds without a new instance before a study runs")
    ap.add_argument("--queue", default=os.environ.get("QUEUE") or None, help="default sqlite:///PACS_DIR/queue.db")
    ap.add_argument("--senders", default=os.environ.get("SENDERS") or DEFAULT_SENDERS)
    ap.add_argument("--workers", type=int, default=1, help="local workers (0: only remote ones)")
    ap.add_argument("--runner", default="warm", choices=["warm", "venv", "map", "map-warm", "auto"])
    ap.add_argument("--timeout", type=int, default=600, help="time limit of one study's run (s)")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-delays", default="10,60")
    ap.add_argument("--reconcile-s", type=float, default=30)
    ap.add_argument("--cpus", type=float, default=None)
    ap.add_argument("--image", default="localhost/cxr-enhance-classify:0.1.0")
    ap.add_argument("--models", default=str(ROOT / ".deploy_models"))
    ap.add_argument("--remote-access", action="store_true",
                    help="REST for other hosts too (workers on other machines; put TLS in front of it)")
    ap.add_argument("--keep-work", action="store_true", default=os.environ.get("KEEP_WORK", "") in ("1", "true"))
    ap.add_argument("--site", default=os.environ.get("SITE") or None,
                    help="commissioned site folder (monitor_reference.json): the workers run its drift monitor")
    ap.add_argument("--monitor-every", type=int, default=int(os.environ.get("MONITOR_EVERY") or 50),
                    help="studies a worker stores between two drift-monitor runs")
    args = ap.parse_args(argv)
    if args.site and not (Path(args.site) / "monitor_reference.json").is_file():
        print(f"error: SITE {args.site} has no monitor_reference.json (commission the site with "
              f"configs/commission.json; its output folder is the SITE)", file=sys.stderr)
        return 2
    if args.monitor_every < 1:
        print("error: --monitor-every must be at least 1", file=sys.stderr)
        return 2

    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    missing = [p for p in (orthanc, DICOMWEB, PYTHON_PLUGIN) if not os.path.exists(p)]
    if missing:
        print(f"error: missing {missing}: install orthanc orthanc-dicomweb orthanc-python (make tools)", file=sys.stderr)
        return 1
    pacs_dir = Path(args.dir).resolve()
    (pacs_dir / "db").mkdir(parents=True, exist_ok=True)
    os.chmod(pacs_dir, 0o700)
    queue = args.queue or f"sqlite:///{pacs_dir / 'queue.db'}"
    user, password = credentials(pacs_dir)
    cfg_file = pacs_dir / "orthanc.json"
    try:
        cfg = orthanc_config(pacs_dir, args.http_port, args.dicom_port, args.stable_age, queue, args.senders, user,
                             password, args.remote_access)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_private(cfg_file, json.dumps(cfg, indent=2))
    runner = args.runner
    if runner == "auto":
        exists = shutil.which("podman") and subprocess.run(["podman", "image", "exists", args.image]).returncode == 0
        runner = "map-warm" if exists else "warm"  # the MAP image as the unit that runs the models, kept warm
    elif runner == "map-warm" and args.workers > 0 and (
            not shutil.which("podman") or subprocess.run(["podman", "image", "exists", args.image]).returncode != 0):
        print(f"error: --runner map-warm needs podman and the MAP image {args.image} (make map)", file=sys.stderr)
        return 2

    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    (pacs_dir / "pacs.pid").write_text(f"{os.getpid()}\n")
    procs["orthanc"] = subprocess.Popen([orthanc, str(cfg_file)])
    (pacs_dir / "orthanc.pid").write_text(f"{procs['orthanc'].pid}\n")
    print(f"Orthanc on http://127.0.0.1:{args.http_port}/ (DICOM port {args.dicom_port}, AE ORTHANC, senders "
          f"{args.senders}), credentials {pacs_dir / 'credentials'}, queue {queue.split('@')[-1]}, "
          f"{args.workers} worker(s) ({runner}); drift monitor: "
          f"{f'{args.site} every {args.monitor_every} studies' if args.site else 'off (no --site)'}; "
          f"stop: kill {os.getpid()}", flush=True)
    worker_cmd = [str(ROOT / ".venv-deploy" / "bin" / "python"), str(HERE / "worker.py"), "--queue", queue,
                  "--pacs-url", f"http://127.0.0.1:{args.http_port}", "--credentials", str(pacs_dir / "credentials"),
                  "--log", str(pacs_dir / "ai_router.log"), "--runner", runner,
                  "--models", str(Path(args.models).resolve()), "--image", args.image, "--timeout", str(args.timeout),
                  "--retries", str(args.retries), "--retry-delays", args.retry_delays,
                  "--reconcile-s", str(args.reconcile_s)]
    if args.cpus:
        worker_cmd += ["--cpus", str(args.cpus)]
    if args.keep_work:
        worker_cmd.append("--keep-work")
    if args.site:
        worker_cmd += ["--site", str(Path(args.site).resolve()), "--monitor-every", str(args.monitor_every)]
    for i in range(args.workers):
        procs[f"worker{i}"] = subprocess.Popen([*worker_cmd, "--name", f"{os.uname().nodename}:local{i}",
                                                "--work-dir", str(pacs_dir / "work" / f"local{i}")],
                                               start_new_session=True)
    (pacs_dir / "worker.pid").write_text("".join(f"{p.pid}\n" for k, p in procs.items() if k != "orthanc"))
    rc = 0
    while not stopping:
        if procs["orthanc"].poll() is not None:
            rc = procs["orthanc"].returncode
            print(f"Orthanc exited with status {rc}: stopping the workers", file=sys.stderr, flush=True)
            break
        for k, p in list(procs.items()):
            if k != "orthanc" and p.poll() is not None:
                print(f"{k} exited with status {p.returncode}: starting it again", file=sys.stderr, flush=True)
                procs[k] = subprocess.Popen(p.args, start_new_session=True)
                (pacs_dir / "worker.pid").write_text("".join(f"{q.pid}\n" for j, q in procs.items() if j != "orthanc"))
        time.sleep(0.5)
    for k, p in procs.items():
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 30
    for k, p in procs.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return rc


if __name__ == "__main__":
    sys.exit(main())
