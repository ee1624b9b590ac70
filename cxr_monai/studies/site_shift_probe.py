"""What the shipped classifier leans on, probed on the later-cohort site sample and the validation split.

Inference only (no fitting): the shipped ensemble's AUC and its specificity/sensitivity at the shipped threshold
under input changes applied after the one preprocessing: horizontal flip, central crops (field of view), a 3x3
box blur (high frequencies), gamma, histogram equalisation. A change that moves the later cohort's ranking a lot
but the validation split's little points at what differs between the two periods. Paired bootstrap (2,000
resamples, stratified) of the AUC difference to the unchanged input.

    .venv/bin/python -m cxr_monai.studies.site_shift_probe --out bundles/cxr_pneumonia_classifier/docs/results/site_shift_probe.json

This is a diagnosis, not a selection: nothing here is shipped, because the site sample is the commissioning
sample (101 images) and choosing a preprocessing on it would overfit it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose

from cxr_monai.data import class_folder_datalist, training_split
from cxr_monai.metrics.classification import roc_auc
from cxr_monai.transforms import classifier_preprocessing
from cxr_monai.utils import load_bundle_network, read_json

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _pn(x: torch.Tensor) -> torch.Tensor:
    f = x.flatten(1)
    lo, hi = torch.quantile(f, 0.01, 1).view(-1, 1, 1, 1), torch.quantile(f, 0.99, 1).view(-1, 1, 1, 1)
    return ((x - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1)


def _crop(x: torch.Tensor, frac: float) -> torch.Tensor:
    s = x.shape[-1]
    c = int(round(s * frac))
    o = (s - c) // 2
    return _pn(F.interpolate(x[..., o:o + c, o:o + c], size=(s, s), mode="bilinear", antialias=True,
                             align_corners=False))


def _heq(x: torch.Tensor) -> torch.Tensor:
    out = []
    for im in x:
        a = im.flatten()
        out.append((torch.argsort(torch.argsort(a)).float() / (a.numel() - 1)).view_as(im))
    return torch.stack(out)


VARIANTS = {
    "unchanged": lambda x: x,
    "horizontal_flip": lambda x: torch.flip(x, [-1]),
    "central_crop_0.85": lambda x: _crop(x, 0.85),
    "central_crop_0.70": lambda x: _crop(x, 0.70),
    "box_blur_3x3": lambda x: _pn(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)),
    "gamma_0.7": lambda x: _pn(x ** 0.7),
    "gamma_1.4": lambda x: _pn(x ** 1.4),
    "histogram_equalisation": _heq,
}


def _paired_auc_diff(p0: np.ndarray, p1: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(roc_auc(p1[idx], y[idx]) - roc_auc(p0[idx], y[idx]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"low": float(lo), "high": float(hi)}


def probe(items: list[dict], net, image_size: int, threshold: float) -> dict:
    pre = Compose(classifier_preprocessing(["image"], image_size))
    x = torch.stack([torch.as_tensor(pre({"image": it["image"]})["image"]).float() for it in items])
    y = np.asarray([int(it["label"]) for it in items])
    probs = {}
    with torch.no_grad():
        for name, fn in VARIANTS.items():
            probs[name] = np.concatenate([torch.softmax(net(fn(x[i:i + 64])), 1)[:, 1].numpy()
                                          for i in range(0, len(x), 64)])
    out = {"n": len(y), "n_normal": int((y == 0).sum()), "n_pneumonia": int((y == 1).sum()), "variants": {}}
    for name, p in probs.items():
        row = {"auc": roc_auc(p, y), "specificity": float((p[y == 0] < threshold).mean()),
               "sensitivity": float((p[y == 1] >= threshold).mean())}
        if name != "unchanged":
            row["auc_minus_unchanged_ci95"] = _paired_auc_diff(probs["unchanged"], p, y)
        out["variants"][name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bundles" / "cxr_pneumonia_classifier" / "docs" / "results" / "site_shift_probe.json"))
    ap.add_argument("--val_every", type=int, default=2, help="every n-th validation image (speed)")
    args = ap.parse_args(argv)
    bundle = ROOT / "bundles" / "cxr_pneumonia_classifier"
    net = load_bundle_network(bundle).eval()
    cal = read_json(bundle / "models" / "calibration.json")
    threshold, size = float(cal["threshold"]), int(cal.get("image_size", 160))
    site = class_folder_datalist(SHARED / "kermany_site_sample")
    val = training_split(SHARED / "kermany224" / "train", 0.15, 0)[1][:: args.val_every]
    report = {"threshold": threshold, "image_size": size,
              "site_sample_later_cohort": probe(site, net, size, threshold),
              "validation_split": probe(val, net, size, threshold)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for part in ("site_sample_later_cohort", "validation_split"):
        for name, row in report[part]["variants"].items():
            print(f"{part:26s} {name:24s} AUC {row['auc']:.4f} spec {row['specificity']:.3f} "
                  f"sens {row['sensitivity']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
