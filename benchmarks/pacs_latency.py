"""PACS loop latency: ``storescu`` of a 512 px CR -> its SR and enhanced SC in Orthanc, end to end (StableAge included).

    .venv-deploy/bin/python -m benchmarks.pacs_latency [--runner warm|venv|map|map-warm] [--studies 5] [--stable-age 2]
        [--image localhost/cxr-enhance-classify:0.1.0]
        [--out benchmarks/results/pacs_latency.json]

Starts ``deploy/pacs/run_pacs.py`` (Orthanc + one worker) on free loopback ports in a temporary folder, waits until
the worker is ready (warm: models loaded), then sends ``--studies`` one-image studies (the 512 px phantom with new
UIDs) one after the other with dcmtk's ``storescu`` and times each from the start of ``storescu`` to the moment both
the SR and the enhanced SC are in Orthanc's REST API (polled every 0.2 s). Writes the times, their median, the load
average and the CPU model to ``--out``. The machine's load is part of the result: note what else ran.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_lookup(http: int, pacs_dir: Path):
    """``present(uid) -> bool``: whether Orthanc on ``http`` (credentials of ``pacs_dir``) holds that UID."""
    cred = (pacs_dir / "credentials").read_text().split()[0]
    auth = "Basic " + base64.b64encode(cred.encode()).decode()

    def present(uid: str) -> bool:
        req = urllib.request.Request(f"http://127.0.0.1:{http}/tools/lookup", data=uid.encode())
        req.add_header("Authorization", auth)
        with urllib.request.urlopen(req, timeout=10) as r:
            return bool(json.loads(r.read()))

    return present


def new_study(src: Path, dst: Path) -> tuple[str, str]:
    """Write ``src`` to ``dst`` as a new one-image study (new study, series and SOP instance UIDs); returns the
    SOPInstanceUID and StudyInstanceUID."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst)
    return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", default="warm", choices=["warm", "venv", "map", "map-warm"])
    ap.add_argument("--image", default=None, help="the MAP image (runners map, map-warm)")
    ap.add_argument("--studies", type=int, default=5)
    ap.add_argument("--stable-age", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pacs_latency.json"))
    args = ap.parse_args(argv)


    from cxr_monai.dicom import SERIES_NUMBERS
    from cxr_monai.results import report_uid

    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        tmp = Path(tmp)
        http, dicom = _free_port(), _free_port()
        subprocess.run([sys.executable, "-m", "cxr_monai", "phantom", "--out_dir", str(tmp / "ph"), "--size",
                        str(args.size)], check=True, capture_output=True, cwd=ROOT)
        out = open(tmp / "pacs.out", "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "deploy" / "pacs" / "run_pacs.py"), "--dir",
                                 str(tmp / "pacs"), "--http-port", str(http), "--dicom-port", str(dicom),
                                 "--stable-age", str(args.stable_age), "--runner", args.runner,
                                 *(["--image", args.image] if args.image else [])],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        log = tmp / "pacs" / "ai_router.log"
        try:
            deadline = time.monotonic() + 600
            ready = "warm_app_ready" if args.runner in ("warm", "map-warm") else "reconciled"
            while not (log.exists() and ready in log.read_text()):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp / "pacs.out").read_text()[-2000:]
                time.sleep(0.5)
            present = orthanc_lookup(http, tmp / "pacs")

            from cxr_monai.dicom import result_uid

            seconds = []
            load_start = os.getloadavg()
            for i in range(args.studies):
                f = tmp / f"s{i}.dcm"
                sop, _ = new_study(tmp / "ph" / "phantom_cxr.dcm", f)
                wanted = [report_uid(sop), result_uid(sop, SERIES_NUMBERS["enhanced"])]
                t0 = time.monotonic()
                subprocess.run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(dicom), str(f)], check=True,
                               capture_output=True)
                while not all(present(u) for u in wanted):
                    assert time.monotonic() - t0 < 900, "no result after 900 s"
                    time.sleep(0.2)
                seconds.append(round(time.monotonic() - t0, 2))
                print(f"study {i + 1}: {seconds[-1]} s", flush=True)
                time.sleep(args.stable_age + 2)  # let our own outputs' STABLE_STUDY pass before the next study
            runs = [json.loads(ln) for ln in log.read_text().splitlines() if '"run_done"' in ln]
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    result = {
        "command": f".venv-deploy/bin/python -m benchmarks.pacs_latency --runner {args.runner} --studies "
                   f"{args.studies} --stable-age {args.stable_age}" + (f" --image {args.image}" if args.image else ""),
        "what": f"storescu of a {args.size} px CR -> SR and enhanced SC in Orthanc (REST), StableAge included",
        "runner": args.runner, "stable_age_s": args.stable_age, "seconds": seconds,
        "median_s": statistics.median(seconds), "worker_run_seconds": [r.get("seconds") for r in runs],
        "cpu": cpu, "cores": os.cpu_count(), "load_average_start": load_start, "load_average_after": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
