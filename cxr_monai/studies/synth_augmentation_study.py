"""Does class balancing with synthetic CXRs beat simply duplicating real minority images? Measured, not assumed.

Conditions (Kermany224 training split, patient-aware 85/15 split seed 0 = the split the GAN was trained on,
so validation images were never seen by the GAN; everything at 64x64):
  real        (a) real training images only (imbalanced: NORMAL is the minority)
  dup         (b) real + duplicated real NORMAL images, count-matched to balance the classes (the control)
  syn_min     (c) real + synthetic NORMAL images until balanced (same count as the control adds)
  syn_both    (d) real + synthetic images of both classes, each class topped up to 1.5x the majority count
  tstr        (e) train on synthetic only (both classes, balanced, as many images as the real split), test on real

Every condition trains the same classifier (ResNet18SA-lite at 64 px, widths 32-256) for the same number of
optimizer steps with the same augmentation (rotation 10 deg, shift 0.1, zoom 0.1), and is evaluated on the
real validation split: accuracy, ROC AUC, minority (NORMAL) recall, balanced accuracy. Seeds vary the
initialisation, batch order, augmentation, which real images are duplicated and the GAN noise.

Usage (from the repository root):
    .venv/bin/python -m cxr_monai.studies.synth_augmentation_study --out runs/synth_study \
        --generator_weights runs/synth_sgan64/model.pt --seeds 0 1 2
Results: <out>/results.json (every run) and <out>/results.md (mean +- std table). Runs can be split over
processes (one --out sub-folder each, e.g. one per seed) and collected with --merge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import ROCAUCMetric
from monai.transforms import Compose

from cxr_monai.data import training_split
from cxr_monai.engines.gan import generate
from cxr_monai.networks import sagan_generator, resnet18_sa
from cxr_monai.transforms import classifier_preprocessing

ROOT = Path(__file__).resolve().parents[2]

CONDITIONS = ("real", "dup", "syn_min", "syn_both", "tstr")
NORMAL, PNEUMONIA = 0, 1


def load_split(dataset_dir: Path, size: int, cache: Path) -> dict[str, torch.Tensor]:
    """Train/val images (uint8, (N, 1, size, size)) and labels, preprocessed once and cached outside the repo."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)

    train, val = training_split(dataset_dir, 0.15, 0)
    pre = Compose(classifier_preprocessing(["image"], size))
    out: dict[str, torch.Tensor] = {}
    for name, items in (("train", train), ("val", val)):
        imgs = [torch.as_tensor(pre({"image": it["image"]})["image"]).float() for it in items]
        out[f"{name}_x"] = torch.as_tensor((torch.stack(imgs).clamp(0, 1) * 255 + 0.5).to(torch.uint8)).clone()
        if hasattr(out[f"{name}_x"], "as_tensor"):  # MetaTensor -> plain tensor (loadable with weights_only)
            out[f"{name}_x"] = out[f"{name}_x"].as_tensor()
        out[f"{name}_y"] = torch.as_tensor([it["label"] for it in items], dtype=torch.long)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def weights_sha(path: Path) -> str:
    """SHA-256 of a weights file: results of synthetic conditions are tied to the generator that made them."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_generator(weights: Path, preset: str, size: int) -> torch.nn.Module:
    g = sagan_generator(preset, size, spectral_norm=False)
    g.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return g.eval()


def synth(generator: torch.nn.Module, n: int, cls: int, seed: int) -> torch.Tensor:
    if n <= 0:
        return torch.zeros(0, 1, generator.img_size, generator.img_size, dtype=torch.uint8)
    imgs, _ = generate(generator, n, cls, seed=seed, batch_size=128)
    return (imgs * 255 + 0.5).to(torch.uint8)


def build(condition: str, data: dict, generator: torch.nn.Module | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images and labels of one condition."""
    x, y = data["train_x"], data["train_y"]
    n_norm, n_pneu = int((y == NORMAL).sum()), int((y == PNEUMONIA).sum())
    deficit = n_pneu - n_norm
    gen = torch.Generator().manual_seed(seed)
    if condition == "real":
        return x, y
    if condition == "dup":
        idx = torch.nonzero(y == NORMAL).squeeze(1)
        pick = idx[torch.randint(0, idx.numel(), (deficit,), generator=gen)]
        return torch.cat([x, x[pick]]), torch.cat([y, y[pick]])
    if generator is None:
        raise ValueError(f"condition {condition!r} needs --generator_weights")
    base = 10_000 * (seed + 1)
    if condition == "syn_min":
        s = synth(generator, deficit, NORMAL, base)
        return torch.cat([x, s]), torch.cat([y, torch.full((deficit,), NORMAL)])
    if condition == "syn_both":
        target = int(1.5 * max(n_norm, n_pneu))
        sn, sp = synth(generator, target - n_norm, NORMAL, base), synth(generator, target - n_pneu, PNEUMONIA, base + 1)
        return (torch.cat([x, sn, sp]),
                torch.cat([y, torch.full((sn.shape[0],), NORMAL), torch.full((sp.shape[0],), PNEUMONIA)]))
    if condition == "tstr":
        half = y.numel() // 2
        sn, sp = synth(generator, half, NORMAL, base), synth(generator, half, PNEUMONIA, base + 1)
        return torch.cat([sn, sp]), torch.cat([torch.full((half,), NORMAL), torch.full((half,), PNEUMONIA)])
    raise ValueError(f"unknown condition {condition!r}")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batch random affine: rotation +-10 deg, shift +-0.1, zoom 0.9-1.1 (the MRP seed's settings), border reflect."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.2  # 0.1 of the side = 0.2 in [-1, 1] units
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def train_eval(x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, seed: int, steps: int,
               batch_size: int, lr: float) -> dict:

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = resnet18_sa("lite")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    net.train()
    perm, pos = torch.randperm(x.shape[0], generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > perm.numel():
            perm, pos = torch.randperm(x.shape[0], generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        xb = augment(x[idx].float() / 255.0, gen)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.time() - t0
    net.eval()
    with torch.no_grad():
        prob = torch.cat([torch.softmax(net(val_x[i : i + 256].float() / 255.0), 1) for i in range(0, val_x.shape[0], 256)])
    pred = prob.argmax(1)
    auc = ROCAUCMetric()
    auc(prob[:, 1:2], val_y[:, None].float())
    rec = [float((pred[val_y == c] == c).float().mean()) for c in (NORMAL, PNEUMONIA)]
    return {"accuracy": float((pred == val_y).float().mean()), "auc": float(auc.aggregate()),
            "minority_recall": rec[NORMAL], "pneumonia_recall": rec[PNEUMONIA], "balanced_accuracy": float(np.mean(rec)),
            "n_train": int(x.shape[0]), "n_train_normal": int((y == NORMAL).sum()), "train_seconds": round(train_s, 1)}


def table(results: list[dict]) -> str:
    keys = ("accuracy", "auc", "minority_recall", "balanced_accuracy", "pneumonia_recall")
    lines = ["| condition | n train (normal) | seeds | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for cond in CONDITIONS:
        rows = [r for r in results if r["condition"] == cond]
        if not rows:
            continue
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rows])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")
        lines.append(f"| {cond} | {rows[0]['n_train']} ({rows[0]['n_train_normal']}) | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", type=Path, default=ROOT.parent / "shared" / "data" / "kermany224" / "train")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "synth_study")
    p.add_argument("--cache", type=Path, default=Path("/tmp/cxr_synth_cache/kermany64_split0.pt"))
    p.add_argument("--generator_weights", type=Path, default=None)
    p.add_argument("--generator_preset", default="lite")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true",
                   help="only collect <out>/**/results.json (runs split over processes) into <out>/results.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merged: dict[tuple, dict] = {}
        for f in sorted(args.out.rglob("results.json")):
            for r in json.loads(f.read_text()):
                merged[(r["condition"], r["seed"])] = r
        results = sorted(merged.values(), key=lambda r: (CONDITIONS.index(r["condition"]), r["seed"]))
        (args.out / "all_results.json").write_text(json.dumps(results, indent=1))
        md = table(results)
        (args.out / "results.md").write_text(md + "\n")
        print(md)
        return
    t0 = time.time()
    data = load_split(args.dataset_dir, args.size, args.cache)
    print(f"data: train {tuple(data['train_x'].shape)} normal {(data['train_y'] == 0).sum().item()}, "
          f"val {tuple(data['val_x'].shape)} normal {(data['val_y'] == 0).sum().item()} ({time.time() - t0:.0f} s)",
          flush=True)
    generator = load_generator(args.generator_weights, args.generator_preset, args.size) if args.generator_weights else None
    sha = weights_sha(args.generator_weights) if args.generator_weights else None
    res_file = args.out / "results.json"
    results = json.loads(res_file.read_text()) if res_file.is_file() else []
    for seed in args.seeds:
        for cond in args.conditions:
            uses_generator = cond not in ("real", "dup")
            key = (cond, seed, args.steps, sha if uses_generator else None)
            # resume: skip only a run with the same condition, seed, steps and (for synthetic data) generator
            if any((r["condition"], r["seed"], r["steps"], r.get("generator_sha256")) == key for r in results):
                continue
            # a result of another generator/steps for this condition and seed is replaced, not averaged in
            results = [r for r in results if (r["condition"], r["seed"]) != (cond, seed)]
            x, y = build(cond, data, generator, seed)
            r = train_eval(x, y, data["val_x"], data["val_y"], seed, args.steps, args.batch_size, args.lr)
            r.update({"condition": cond, "seed": seed, "steps": args.steps, "batch_size": args.batch_size,
                      "generator": str(args.generator_weights) if uses_generator else None,
                      "generator_sha256": sha if uses_generator else None})
            results.append(r)
            res_file.write_text(json.dumps(results, indent=1))
            print(json.dumps(r), flush=True)
    md = table(results)
    (args.out / "results.md").write_text(md + "\n")
    print(md)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
