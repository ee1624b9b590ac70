"""Measure the MAP numbers the README quotes; writes/updates deploy/packaging/results/map_timings.json.

    python3 deploy/packaging/measure_map.py build [--cold]     # `make map` wall time (--cold: from nothing)
    python3 deploy/packaging/measure_map.py run [--repeats 3]  # 512 px CR: `make map-run` vs the .venv-deploy app
    python3 deploy/packaging/measure_map.py pacs --seconds S   # record tests/deploy/test_pacs.py's storescu->results

``--cold`` removes this project's images (base, MAP, test tags), podman's dangling layers and the wheelhouse
first, so the build starts from nothing but the venvs and the exported models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "deploy" / "packaging" / "results" / "map_timings.json"
IMAGE = "localhost/cxr-enhance-classify:0.1.0"
BASE = "localhost/cxr-map-base:bookworm-py311"


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt, proc


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save(data: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 CPU cores shared with other jobs; no GPU"}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def image_size_mb() -> float:
    out = subprocess.run(["podman", "image", "inspect", IMAGE, "--format", "{{.Size}}"], capture_output=True,
                         text=True, check=True).stdout
    return round(int(out.strip()) / 1e6, 1)


def cmd_build(args) -> None:
    data = load()
    if args.cold:
        for img in (IMAGE, "localhost/cxr-enhance-classify:test", BASE):
            subprocess.run(["podman", "rmi", "-f", img], capture_output=True)
        subprocess.run(["podman", "image", "prune", "-f"], capture_output=True)
        shutil.rmtree(ROOT / "map_build" / "wheelhouse", ignore_errors=True)
    dt, proc = timed(["make", "map"])
    last = proc.stdout.strip().splitlines()[-1]
    key = "make_map_cold" if args.cold else "make_map_warm"
    data[key] = {"command": ("podman rmi base+MAP images, rm -rf map_build/wheelhouse; " if args.cold else "")
                 + "time make map", "seconds": round(dt, 1), "last_line": last,
                 "date": time.strftime("%Y-%m-%d")}
    data["image_size"] = {"command": f"podman image inspect {IMAGE} --format '{{{{.Size}}}}'", "mb": image_size_mb()}
    save(data)
    print(key, round(dt, 1), "s;", last)


def cmd_run(args) -> None:
    data = load()
    with tempfile.TemporaryDirectory(prefix="cxr-measure-") as tmp:
        study = Path(tmp) / "study"
        subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "cxr_monai", "phantom", "--out_dir", str(study)],
                       check=True, capture_output=True, cwd=ROOT)
        map_s, venv_s = [], []
        for i in range(args.repeats):  # interleaved, so both see the same machine load
            dt, proc = timed(["make", "map-run", f"INPUT={study}", f"OUTPUT={tmp}/map{i}"])
            map_s.append(round(dt, 1))
            summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("cxr_enhance_classify:")]
            dt, _ = timed([str(ROOT / ".venv-deploy" / "bin" / "python"), "deploy/cxr_enhance_classify", "-i", str(study),
                           "-o", f"{tmp}/venv{i}", "-m", ".deploy_models"])
            venv_s.append(round(dt, 1))
            print(f"run {i}: map-run {map_s[-1]} s, venv {venv_s[-1]} s")
        res = json.loads(Path(f"{tmp}/map0/results.json").read_text())
    data["run_512_cr"] = {
        "study": "python -m cxr_monai phantom (512x512 CR, SR to 2048x2048)",
        "map_run": {"command": "time make map-run INPUT=study OUTPUT=out", "seconds": map_s,
                    "median_s": statistics.median(map_s)},
        "venv": {"command": ".venv-deploy/bin/python deploy/cxr_enhance_classify -i study -o out -m .deploy_models",
                 "seconds": venv_s, "median_s": statistics.median(venv_s)},
        "summary_line": summary[0] if summary else None,
        "container_threads": res["run"]["threads"],
        "in_operators_s": res["images"][0]["seconds"],
        "date": time.strftime("%Y-%m-%d"),
    }
    save(data)


def cmd_pacs(args) -> None:
    data = load()
    data["pacs_storescu_to_results"] = {
        "command": "ulimit -s 32768; .venv-deploy/bin/python -m pytest -s tests/deploy/test_pacs.py (StableAge 2 s)",
        "seconds": args.seconds, "runner": args.runner, "load_average_1min": args.load, "date": time.strftime("%Y-%m-%d")}
    save(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build")
    b.add_argument("--cold", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("pacs")
    p.add_argument("--seconds", type=float, nargs="+", required=True, help="one or more measured runs")
    p.add_argument("--load", type=float, nargs="*", default=None, help="the machine's 1-min load average then")
    p.add_argument("--runner", default="map")
    args = ap.parse_args()
    {"build": cmd_build, "run": cmd_run, "pacs": cmd_pacs}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
