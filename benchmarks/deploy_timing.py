"""Seconds per operator and peak memory of the deploy app on 2 CPU cores, for the README.

    .venv-deploy/bin/python benchmarks/deploy_timing.py --models .deploy_models --repeats 3 \
        --out deploy/cxr_enhance_classify/docs/timings.json

Two phantom studies (a 512x512 CR: SR to 2048x2048, and a 2048x2048 CR: SR skipped), each run as its own app
process ``repeats`` times; medians of the per-operator seconds from results.json and of the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(study: Path, models: Path, out: Path) -> tuple[dict, float, float]:
    cmd = [sys.executable, str(ROOT / "deploy" / "cxr_enhance_classify"), "-i", str(study), "-o", str(out),
           "-m", str(models)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = __import__("os").wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"app failed on {study} (status {status})")
    image = json.loads((out / "results.json").read_text())["images"][0]
    return image["seconds"], wall, usage.ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(ROOT / ".deploy_models"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "deploy" / "cxr_enhance_classify" / "docs" / "timings.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from cxr_monai.data.phantom import write_phantom_dicom

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, size in (("cr_512_sr_applied", 512), ("cr_2048_sr_skipped", 2048)):
            study = tmp / name
            write_phantom_dicom(study / "image.dcm", size=size, seed=7, consolidation=True)
            runs = [run_once(study, Path(args.models), tmp / f"out_{name}_{i}") for i in range(args.repeats)]
            steps = sorted({k for s, _, _ in runs for k in s})
            rows[name] = {
                "input_px": size,
                "seconds_per_operator_median": {k: round(statistics.median(s[k] for s, _, _ in runs), 3) for k in steps},
                "seconds_in_operators_median": round(statistics.median(sum(s.values()) for s, _, _ in runs), 2),
                "process_wall_seconds_median": round(statistics.median(w for _, w, _ in runs), 2),
                "peak_rss_gb_median": round(statistics.median(m for _, _, m in runs), 2),
                "repeats": args.repeats,
            }
            print(name, json.dumps(rows[name]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": "2 CPU cores, no GPU", "command": " ".join(sys.argv),
                                          "results": rows}, indent=2))


if __name__ == "__main__":
    main()
