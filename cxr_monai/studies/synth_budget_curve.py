"""FID on classifier features versus training budget, SAGAN vs DCGAN, from checkpoints of resumed runs.

One point per (generator, CPU budget, run folder): the EMA generator of the run's final (else newest)
checkpoint generates ``--num_per_class`` images per class (seed ``s + class``, as ``evaluate.json`` does);
per-class FID, pooled FID (real images subsampled to the generated class mix, as ``evaluate.json`` does), k-NN
precision/recall and class fidelity are computed against the features of the real training images (the same classifier extractor and metric functions as ``evaluate.json``; the real
features are extracted once for all points). Writes a JSON and a figure.

Usage (repository root; the three legs of each run are separate folders, see the synthesis model card)::

    .venv/bin/python -m cxr_monai.studies.synth_budget_curve \\
        --point sagan:1800:runs/synth_sgan64 --point sagan:3600:runs/synth_sgan64_x2 \\
        --point sagan:7200:runs/synth_sgan64_x3 --point dcgan:1800:runs/synth_dcgan64 \\
        --point dcgan:3600:runs/synth_dcgan64_x2 --point dcgan:7200:runs/synth_dcgan64_x3 \\
        --out bundles/cxr_synth_sgan/docs/budget_curve
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from cxr_monai.engines.gan import export_generator, generate
from cxr_monai.metrics import generative as gm
from cxr_monai.metrics.generative import classifier_feature_extractor, extract_features
from cxr_monai.studies.synth_augmentation_study import load_split
from cxr_monai.utils import latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "cxr_synth_sgan"

CLASS_NAMES = ("NORMAL", "PNEUMONIA")


def pick_checkpoint(run: Path) -> Path:
    """The run's ``checkpoint_final.pt``, else its latest checkpoint."""
    final = run / "checkpoint_final.pt"
    if final.is_file():
        return final
    latest = latest_checkpoint(run)
    if latest is None:
        raise FileNotFoundError(f"{run}: no checkpoint")
    return Path(latest)


def parser_for(configs: list[str], **overrides) -> ConfigParser:
    """The synthesis bundle's configs merged, with ``bundle_root`` and ``overrides`` set."""
    p = ConfigParser()
    p.read_config([str(BUNDLE / "configs" / c) for c in configs])
    p["bundle_root"] = str(BUNDLE)
    for k, v in overrides.items():
        p[k] = v
    return p


def parse_point(text: str) -> tuple[str, int, Path]:
    try:
        kind, budget, run = text.split(":", 2)
        if kind not in ("sagan", "dcgan"):
            raise ValueError(kind)
        return kind, int(budget), Path(run)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--point must be sagan|dcgan:CPU_SECONDS:RUN_DIR, got {text!r}") from e


def evaluate_point(kind: str, run: Path, real_f: torch.Tensor, real_y: torch.Tensor, extractor,
                   num_per_class: int, seed: int) -> dict:

    ckpt = pick_checkpoint(run)
    p = parser_for(["train.json"] + (["train_dcgan.json"] if kind == "dcgan" else []))
    with tempfile.TemporaryDirectory() as tmp:
        g = export_generator(ckpt, p.get_parsed_content("generator_def"),
                             p.get_parsed_content("plain_generator_def"), Path(tmp) / "g.pt")
    iterations = int(torch.load(ckpt, map_location="cpu", weights_only=True)["trainer"]["iteration"])
    out: dict = {"checkpoint": str(ckpt), "iterations": iterations, "per_class": {}}
    feats, labels, images = [], [], []
    for c, name in enumerate(CLASS_NAMES):
        imgs, ys = generate(g, num_per_class, c, seed=seed + c)
        f = gm.extract_features(imgs, extractor)
        prec, rec = gm.knn_precision_recall(real_f[real_y == c], f)
        out["per_class"][name] = {"fid": gm.fid(real_f[real_y == c], f), "knn_precision": prec, "knn_recall": rec}
        feats.append(f)
        labels.append(ys)
        images.append(imgs)
    fake_y = torch.cat(labels)
    keep = gm.class_matched_indices(real_y, fake_y, seed)  # real subset with the generated (balanced) class mix
    out["fid_pooled"] = gm.fid(real_f[keep], torch.cat(feats))
    out["fid_pooled_unmatched"] = gm.fid(real_f, torch.cat(feats))  # all reals (26 % NORMAL): class-ratio biased
    out["class_fidelity"] = gm.class_fidelity(torch.cat(images), torch.cat(labels), extractor, CLASS_NAMES)
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("FID NORMAL", lambda r: r["per_class"]["NORMAL"]["fid"]),
              ("FID PNEUMONIA", lambda r: r["per_class"]["PNEUMONIA"]["fid"]),
              ("FID pooled (class mix matched)", lambda r: r["fid_pooled"]),
              ("k-NN recall NORMAL (diversity)", lambda r: r["per_class"]["NORMAL"]["knn_recall"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (title, fn) in zip(axes, panels):
        for kind, style in (("sagan", "o-"), ("dcgan", "s--")):
            pts = sorted((r["cpu_seconds"], fn(r)) for r in results if r["kind"] == kind)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind.upper())
        ax.set_title(title)
        ax.set_xlabel("training budget (CPU-seconds)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("lower is better (FID) / higher is better (recall)")
    axes[0].legend()
    fig.suptitle("Same CPU budget, 256 samples per class, features of the project's classifier", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--point", type=parse_point, action="append", required=True,
                   help="sagan|dcgan:CPU_SECONDS:RUN_DIR (repeat)")
    p.add_argument("--real_cache", type=Path, default=Path("/tmp/cxr_synth_cache/kermany64_split0.pt"),
                   help="preprocessed split of synth_augmentation_study.py (built there if missing)")
    p.add_argument("--dataset_dir", type=Path, default=ROOT.parent / "shared" / "data" / "kermany224" / "train")
    p.add_argument("--num_per_class", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.json and OUT.png")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("CXR_NUM_THREADS", "1")))
    for _, _, run in args.point:
        if not run.is_dir():
            p.error(f"{run}: no such run folder")


    t0 = time.time()
    data = load_split(args.dataset_dir, 64, args.real_cache)
    extractor = classifier_feature_extractor(ROOT / "bundles" / "cxr_pneumonia_classifier")
    real_f = extract_features(data["train_x"].float() / 255.0, extractor)
    real_y = data["train_y"]
    print(f"real features {tuple(real_f.shape)} ({time.time() - t0:.0f} s)", flush=True)
    results = []
    for kind, budget, run in args.point:
        r = evaluate_point(kind, run, real_f, real_y, extractor, args.num_per_class, args.seed)
        r.update(kind=kind, cpu_seconds=budget, run=str(run))
        results.append(r)
        print(kind, budget, json.dumps({"it": r["iterations"], "fid_normal": round(r["per_class"]["NORMAL"]["fid"], 3),
                                        "fid_pneumonia": round(r["per_class"]["PNEUMONIA"]["fid"], 3),
                                        "fid_pooled": round(r["fid_pooled"], 3)}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"num_per_class": args.num_per_class, "seed": args.seed, "real": "kermany224 train split (seed 0), 64 px",
                "features": "bundles/cxr_pneumonia_classifier/models/model.pt (ResNet18SA-lite, 224 px)"}
    args.out.with_suffix(".json").write_text(json.dumps({"settings": settings, "points": results}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out}.json/.png ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
