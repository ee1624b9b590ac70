"""PACS loop throughput: one worker against two on a Redis broker, on a batch of studies sent at once.

    .venv-deploy/bin/python -m benchmarks.pacs_workers [--studies 6] [--repeats 2] [--configs 1x1,2x1] [--size 512]
        [--stable-age 2] [--out benchmarks/results/pacs_workers.json]

For each configuration ``WxT`` (W local workers with T CPU threads each, ``CXR_NUM_THREADS=T``) and each repeat, the
configurations interleaved (1x1, 2x1, 1x1, 2x1: a slow phase of a shared machine hits both), it starts a fresh
``redis-server`` (Debian's, loopback, free port) and ``deploy/pacs/run_pacs.py --queue redis://... --workers W``
(Orthanc + W warm workers) in a temporary folder, waits until every worker has its models loaded, then sends
``--studies`` one-image studies (copies of the ``--size`` px phantom with new UIDs) in one ``storescu`` association
and times, from the start of ``storescu``, the moment each study's SR and enhanced SC are in Orthanc (REST, polled
every 0.2 s). The batch time is the last of them. Also records the workers' own ``run_done`` seconds, which worker
ran which study, the load average at the start and end of each batch and the CPU model (``lscpu``). Medians over
the repeats go to ``--out`` with the command. The machine's other load is part of the result: say what else ran.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pacs_latency import _free_port, new_study, orthanc_lookup  # noqa: E402


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration, subprocess.TimeoutExpired):
        return "unknown"


def _batch(tmp: Path, phantom: Path, workers: int, threads: int, studies: int, stable_age: int) -> dict:
    """One configuration, one batch, fresh broker and PACS."""
    from cxr_monai.dicom import result_uid
    from cxr_monai.results import SERIES_NUMBERS, report_uid

    (tmp / "redis").mkdir(parents=True)
    rport, http, dicom = _free_port(), _free_port(), _free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--dir",
                              str(tmp / "redis"), "--appendonly", "yes", "--save", ""],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    env = {**os.environ, "CXR_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = open(tmp / "pacs.out", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "deploy" / "pacs" / "run_pacs.py"), "--dir", str(tmp / "pacs"),
                             "--http-port", str(http), "--dicom-port", str(dicom), "--stable-age", str(stable_age),
                             "--queue", f"redis://127.0.0.1:{rport}/0", "--workers", str(workers)],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log = tmp / "pacs" / "ai_router.log"

    def events() -> list[dict]:
        return [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()] if log.exists() else []

    try:
        deadline = time.monotonic() + 900
        while len([e for e in events() if e["event"] == "warm_app_ready"]) < workers:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "pacs.out").read_text()[-2000:]
            time.sleep(0.5)
        present = orthanc_lookup(http, tmp / "pacs")

        files, wanted, study_uids = [], [], []
        for i in range(studies):
            files.append(tmp / f"s{i}.dcm")
            sop, study_uid = new_study(phantom, files[-1])
            wanted.append([report_uid(sop), result_uid(sop, SERIES_NUMBERS["enhanced"])])
            study_uids.append(study_uid)
        load_start = os.getloadavg()
        t0 = time.monotonic()
        subprocess.run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(dicom), *map(str, files)], check=True,
                       capture_output=True, timeout=300)
        done: dict[int, float] = {}
        while len(done) < studies:
            assert time.monotonic() - t0 < 1800, f"only {len(done)} of {studies} studies done after 1800 s"
            for i, uids in enumerate(wanted):
                if i not in done and all(present(u) for u in uids):
                    done[i] = round(time.monotonic() - t0, 2)
            time.sleep(0.2)
        batch = max(done.values())
        load_end = os.getloadavg()
        runs = {e["study_uid"]: e for e in events() if e["event"] == "run_done"}
        return {"workers": workers, "threads_per_worker": threads, "batch_s": batch,
                "per_study_s": [done[i] for i in range(studies)],
                "worker_run_s": [runs.get(u, {}).get("seconds") for u in study_uids],
                "studies_per_worker": {w: sum(1 for u in study_uids if runs.get(u, {}).get("worker") == w)
                                       for w in sorted({r["worker"] for r in runs.values()})},
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in load_end]}
    finally:
        for p in (proc, redis):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--configs", default="1x1,2x1", help="WxT: W workers with T threads each, comma-separated")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--stable-age", type=int, default=2)
    ap.add_argument("--note", default="", help="what else ran on the machine")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pacs_workers.json"))
    args = ap.parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]

    batches: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pacs-workers-") as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "cxr_monai", "phantom", "--out_dir", str(tmp / "ph"), "--size",
                        str(args.size)], check=True, capture_output=True, cwd=ROOT)
        for r in range(args.repeats):
            for w, t in configs:
                res = _batch(tmp / f"r{r}_{w}x{t}", tmp / "ph" / "phantom_cxr.dcm", w, t, args.studies,
                             args.stable_age)
                res["repeat"] = r
                batches.append(res)
                print(json.dumps(res), flush=True)
    summary = {}
    for w, t in configs:
        mine = [b for b in batches if b["workers"] == w and b["threads_per_worker"] == t]
        summary[f"{w}x{t}"] = {
            "workers": w, "threads_per_worker": t,
            "batch_s": [b["batch_s"] for b in mine], "median_batch_s": statistics.median(b["batch_s"] for b in mine),
            "median_per_study_s": statistics.median(s for b in mine for s in b["per_study_s"]),
            "median_worker_run_s": statistics.median(s for b in mine for s in b["worker_run_s"] if s is not None)}
    base = summary[f"{configs[0][0]}x{configs[0][1]}"]["median_batch_s"]
    for v in summary.values():
        v["speedup_vs_first"] = round(base / v["median_batch_s"], 2)
    result = {
        "command": f".venv-deploy/bin/python -m benchmarks.pacs_workers --studies {args.studies} --repeats "
                   f"{args.repeats} --configs {args.configs} --size {args.size} --stable-age {args.stable_age}",
        "what": f"a batch of {args.studies} one-image studies ({args.size} px CR) sent in one storescu association; "
                "time from storescu's start until each study's SR and enhanced SC are in Orthanc; batch = the last; "
                "queue on redis-server; each worker a warm worker (models loaded before the batch)",
        "summary": summary, "batches": batches,
        "cpu": _cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "note": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
