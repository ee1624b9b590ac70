"""bf16 autocast against float32 for the deployed models: quality cost and speed on this CPU.

    .venv-deploy/bin/python -m benchmarks.bf16_check [--models .deploy_models] [--sr-items 10] [--crop 1024]
        [--out benchmarks/results/bf16_check.json]

The same functions the app, the MAP and MONAI Label call (``cxr_monai.inference.super_resolve`` and ``classify``,
TorchScript models from ``make deploy-models``), once with ``CXR_BF16=0`` (float32) and once with ``CXR_BF16=1``
(bfloat16 autocast forced, whatever the CPU has):

* SR: the SR bundle's validation images (``configs/datalist.json`` ``validation``, ``../shared/data/kermany_hr``),
  the first ``--sr-items``, centre-cropped to ``--crop`` px and degraded as the bundle's evaluation does
  (``simulate_low_resolution``, sigma 1, x4); PSNR against the crop with a 4 px border excluded, per image and mean.
* Classifier: the 101 labelled images of ``../shared/data/kermany_site_sample``: probabilities, AUC, the largest
  and mean probability change, decisions flipped at the model's threshold.
* Seconds per image for both. On a CPU without bf16 matrix units (``amx_bf16``) the speed says nothing about AMX;
  the quality numbers (bf16 operands, float32 accumulation in oneDNN) are what AMX computes too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _psnr(a: np.ndarray, b: np.ndarray, border: int = 4) -> float:
    a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def _with(setting: str, fn):
    old = os.environ.get("CXR_BF16")
    os.environ["CXR_BF16"] = setting
    try:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("CXR_BF16", None)
        else:
            os.environ["CXR_BF16"] = old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(ROOT / ".deploy_models"))
    ap.add_argument("--sr-items", type=int, default=10)
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--cls-items", type=int, default=0, help="classify only the first N site-sample images (0: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_check.json"))
    args = ap.parse_args(argv)

    from cxr_monai.export import CLASSIFIER_NAME, LUNG_NAME, SR_NAME, find_model_file, load_deploy_model
    from cxr_monai.inference import classify, cpu_has_bf16_units, super_resolve
    from cxr_monai.io import load_cxr
    from cxr_monai.transforms.degradation import simulate_low_resolution
    from cxr_monai.transforms import load_lung_field
    from cxr_monai.utils import configure_threads

    threads = configure_threads()
    sr_model, sr_info = load_deploy_model(find_model_file(args.models, SR_NAME), "cpu", kind="super_resolution")
    cls_model, cls_info = load_deploy_model(find_model_file(args.models, CLASSIFIER_NAME), "cpu", kind="classifier")
    lung_dir = Path(args.models) / LUNG_NAME  # a classifier that reads the lung-field view needs it
    lung = load_lung_field(find_model_file(args.models, LUNG_NAME), "cpu") if lung_dir.is_dir() else None

    # warm both paths up (TorchScript optimises on the first calls)
    warm = np.random.default_rng(0).random((1, 128, 128), dtype=np.float32)
    for setting in ("0", "1"):
        for _ in range(2):
            _with(setting, lambda: super_resolve(sr_model, warm[:, :64, :64], sr_info, "cpu"))
            _with(setting, lambda: classify(cls_model, warm, cls_info, "cpu", lung_field=lung))

    split = json.loads((ROOT / "bundles" / "cxr_sr_csaegan" / "configs" / "datalist.json").read_text())["validation"]
    sr_rows = []
    for item in split[: args.sr_items]:
        hr = load_cxr(DATA / "kermany_hr" / item["image"])[0]
        h, w = hr.shape[-2:]
        c = min(args.crop, h, w) // 4 * 4
        top, left = (h - c) // 2, (w - c) // 2
        hr = np.ascontiguousarray(hr[:, top:top + c, left:left + c])
        lr = simulate_low_resolution(torch.from_numpy(hr), sigma=1.0, scale=4).numpy()
        y32, t32 = _with("0", lambda: super_resolve(sr_model, lr, sr_info, "cpu"))
        y16, t16 = _with("1", lambda: super_resolve(sr_model, lr, sr_info, "cpu"))
        sr_rows.append({"image": item["image"], "lr_px": list(lr.shape[-2:]), "psnr_fp32": round(_psnr(y32, hr), 3),
                        "psnr_bf16": round(_psnr(y16, hr), 3), "max_abs_diff": float(np.abs(y32 - y16).max()),
                        "s_fp32": round(t32, 3), "s_bf16": round(t16, 3)})
        print(sr_rows[-1], flush=True)

    files = [(p, int(p.parent.name == "PNEUMONIA")) for p in sorted((DATA / "kermany_site_sample").glob("*/*"))
             if p.is_file()]
    if args.cls_items:  # both classes: every k-th file of the sorted list
        files = files[:: max(1, len(files) // args.cls_items)][: args.cls_items]
    p32, p16, y, t32s, t16s = [], [], [], 0.0, 0.0
    for f, label in files:
        img = load_cxr(f)[0]
        a, t32 = _with("0", lambda: classify(cls_model, img, cls_info, "cpu", lung_field=lung))
        b, t16 = _with("1", lambda: classify(cls_model, img, cls_info, "cpu", lung_field=lung))
        p32.append(a["probability"])
        p16.append(b["probability"])
        y.append(label)
        t32s, t16s = t32s + t32, t16s + t16
    p32a, p16a, ya = np.array(p32), np.array(p16), np.array(y)
    thr = float(cls_info["threshold"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    result = {
        "command": ".venv-deploy/bin/python -m benchmarks.bf16_check "
                   f"--sr-items {args.sr_items} --crop {args.crop} --cls-items {args.cls_items}",
        "cpu": cpu, "amx_bf16": cpu_has_bf16_units(), "threads": threads, "torch": torch.__version__,
        "sr": {"model": f"{sr_info.get('model_name')} {sr_info.get('version')}", "images": len(sr_rows),
               "mean_psnr_fp32": round(float(np.mean([r["psnr_fp32"] for r in sr_rows])), 3),
               "mean_psnr_bf16": round(float(np.mean([r["psnr_bf16"] for r in sr_rows])), 3),
               "largest_psnr_drop": round(float(max(r["psnr_fp32"] - r["psnr_bf16"] for r in sr_rows)), 3),
               "s_per_image_fp32": round(float(np.mean([r["s_fp32"] for r in sr_rows])), 3),
               "s_per_image_bf16": round(float(np.mean([r["s_bf16"] for r in sr_rows])), 3),
               "per_image": sr_rows},
        "classifier": {"model": f"{cls_info.get('model_name')} {cls_info.get('version')}",
                       "images": len(files), "auc_fp32": round(_auc(p32a, ya), 4), "auc_bf16": round(_auc(p16a, ya), 4),
                       "max_abs_prob_diff": round(float(np.abs(p32a - p16a).max()), 5),
                       "mean_abs_prob_diff": round(float(np.abs(p32a - p16a).mean()), 5),
                       "decisions_flipped": int(((p32a >= thr) != (p16a >= thr)).sum()), "threshold": thr,
                       "s_per_image_fp32": round(t32s / len(files), 4), "s_per_image_bf16": round(t16s / len(files), 4)},
        "date": time.strftime("%Y-%m-%d"), "load_average_after": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sr"}, indent=2))
    print(json.dumps({k: v for k, v in result["sr"].items() if k != "per_image"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
