"""What the exposed-field step (shutter frames, classifier 0.6.0) costs: CPU time, and films without a shutter it cuts.

    .venv/bin/python -m benchmarks.exposed_field_cost --models .deploy_models --out benchmarks/results/exposed_field_cost.json

Median milliseconds of :func:`cxr_monai.transforms.exposed_field` on full-resolution Kermany films
(``kermany_hr``, 950-2,900 px wide) and on 224 px films; and of the deployed :func:`cxr_monai.inference.classify`
per film (site sample, no Grad-CAM) with the step on (as shipped) and off (the same model, flag cleared), each film
timed ``repeats`` times, alternating on/off so that both see the same machine state; and how many of the 785
films of the classifier's validation split (none has a shutter) the step cuts, and by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    from cxr_monai.data import training_split
    from cxr_monai.export import find_model_file, load_deploy_model
    from cxr_monai.inference import classify
    from cxr_monai.io import load_cxr
    from cxr_monai.transforms import exposed_field, load_lung_field

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(ROOT / ".deploy_models"))
    ap.add_argument("--films", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CXR_NUM_THREADS", torch.get_num_threads())))

    hr = [load_cxr(p)[0] for p in sorted((DATA / "kermany_hr" / "NORMAL").iterdir())[: args.films]]
    small = [load_cxr(p)[0] for p in sorted((DATA / "kermany224" / "train" / "NORMAL").iterdir())[: args.films]]
    detect_hr = statistics.median(_ms(lambda f=f: exposed_field(f), args.repeats) for f in hr)
    detect_small = statistics.median(_ms(lambda f=f: exposed_field(f), args.repeats) for f in small)

    module, info = load_deploy_model(find_model_file(Path(args.models), "cxr_pneumonia"), kind="classifier")
    lung = load_lung_field(Path(args.models) / "cxr_lung" / "model.ts")
    off = {**info, "exposed_field": False}
    site = [load_cxr(p)[0] for p in sorted((DATA / "kermany_site_sample" / "NORMAL").iterdir())[: args.films]]
    on_ms, off_ms = [], []
    for film in site:
        classify(module, film, info, lung_field=lung, bf16=False)  # warm-up
        for _ in range(args.repeats):
            on_ms.append(_ms(lambda: classify(module, film, info, lung_field=lung, bf16=False), 1))
            off_ms.append(_ms(lambda: classify(module, film, off, lung_field=lung, bf16=False), 1))
    _, val = training_split(DATA / "kermany224" / "train", 0.15, 0)
    cut = []
    for item in val:
        field = exposed_field(load_cxr(item["image"])[0])
        if field.found:
            cut.append({"file": Path(item["image"]).name, "frame": {k: round(v, 4) for k, v in field.frame.items()}})
    out = {
        "what": __doc__.strip().splitlines()[0],
        "validation_films": len(val), "validation_films_cut": len(cut), "validation_cuts": cut,
        "command": "python -m benchmarks.exposed_field_cost --models .deploy_models --out "
                   "benchmarks/results/exposed_field_cost.json",
        "threads": torch.get_num_threads(), "films": args.films, "repeats": args.repeats,
        "classifier_version": info.get("version"), "shipped_exposed_field": bool(info.get("exposed_field")),
        "detect_ms_median": {"kermany_hr_full_resolution": detect_hr, "kermany224": detect_small},
        "hr_film_sizes_first5": [list(f.shape[-2:]) for f in hr[:5]],
        "classify_ms_median": {"exposed_field_on": statistics.median(on_ms),
                               "exposed_field_off": statistics.median(off_ms)},
    }
    out["classify_overhead_ms"] = out["classify_ms_median"]["exposed_field_on"] - out["classify_ms_median"][
        "exposed_field_off"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
