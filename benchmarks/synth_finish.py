"""Finish the synthesis bundle from two training runs: export, evaluate, run the augmentation study, and
write the results into the model card.

Steps (each can be skipped):
  1. export: the EMA generator of each run (``checkpoint_final.pt``, else the newest ``checkpoint_epoch=N.pt``)
     with spectral norm folded -> ``<run>/model_export.pt``; the SAGAN one -> ``<bundle>/models/model.pt`` and
     ``models/model.ts`` (``monai.bundle ckpt_export``);
  2. evaluate: ``configs/evaluate.json`` for the SAGAN (-> ``<bundle>/eval``) and, merged with
     ``evaluate_dcgan.json``, for the DCGAN baseline (-> ``<bundle>/eval_dcgan``);
  3. study: the synthetic conditions of ``benchmarks/synth_augmentation_study.py`` (one process per seed, in
     parallel), merged with the real-only/duplication runs already in ``--study_out``;
  4. card: replace the RESULTS_METRICS / RESULTS_STUDY blocks of ``<bundle>/docs/README.md``.

Usage (repository root):
    .venv/bin/python benchmarks/synth_finish.py --sgan_run runs/synth_sgan64 --dcgan_run runs/synth_dcgan64
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUNDLE = ROOT / "bundles" / "cxr_synth_sgan"


def pick_checkpoint(run: Path) -> Path:
    final = run / "checkpoint_final.pt"
    if final.is_file():
        return final
    from cxr_monai.utils import latest_checkpoint

    latest = latest_checkpoint(run)
    if latest is None:
        raise FileNotFoundError(f"{run}: no checkpoint")
    return Path(latest)


def parser_for(configs: list[str], **overrides):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([str(BUNDLE / "configs" / c) for c in configs])
    p["bundle_root"] = str(BUNDLE)
    for k, v in overrides.items():
        p[k] = v
    return p


def export(run: Path, dcgan: bool) -> tuple[Path, dict]:
    """Fold the EMA generator of ``run`` into ``<run>/model_export.pt``; returns it and the training budget."""
    from cxr_monai.engines.gan import export_generator

    ckpt = pick_checkpoint(run)
    configs = ["train.json"] + (["train_dcgan.json"] if dcgan else [])
    p = parser_for(configs)
    out = run / "model_export.pt"
    export_generator(ckpt, p.get_parsed_content("generator_def"), p.get_parsed_content("plain_generator_def"), out)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    it = int(state["trainer"]["iteration"])
    batch = int(p.get_parsed_content("batch_size"))
    log = run.parent / f"{run.name}.log"
    cpu = None
    if log.is_file():
        m = re.findall(r"cpu time limit of (\d+) s reached at iteration (\d+)", log.read_text())
        if m:
            cpu = int(m[-1][0])
    return out, {"checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
                 "iterations": it, "batch_size": batch, "images_seen": it * batch, "cpu_seconds_budget": cpu}


def evaluate(configs: list[str], weights: Path, out_dir: Path, ckpt: Path, extra: dict,
             real_cache: Path | None = None, eval_overrides: dict | None = None) -> dict:
    from monai.bundle import ConfigWorkflow

    overrides = dict(eval_overrides or {})
    if real_cache is not None and real_cache.is_file():  # the same split and preprocessing, cached as uint8
        overrides["real"] = (f"$(lambda d: (d['train_x'].float() / 255.0, d['train_y']))"
                             f"(torch.load('{real_cache}', weights_only=True))")
        overrides["real_datalist"] = "$@split[0]"

    wf = ConfigWorkflow(config_file=[str(BUNDLE / "configs" / c) for c in configs],
                        meta_file=str(BUNDLE / "configs" / "metadata.json"),
                        logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type=None,
                        bundle_root=str(BUNDLE), weights_path=str(weights), output_dir=str(out_dir),
                        discriminator_ckpt=str(ckpt), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics["training"] = extra
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def metrics_md(sgan: dict, dcgan: dict | None) -> str:
    cols = [("SAGAN", sgan)] + ([("DCGAN", dcgan)] if dcgan else [])
    rows = []

    def row(label: str, fn) -> None:
        cells = []
        for _, m in cols:
            try:
                cells.append(fn(m))
            except (KeyError, TypeError):
                cells.append("n/a")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    f3 = "{:.3f}".format
    row("training: iterations x batch (images seen)", lambda m: f"{m['training']['iterations']} x {m['training']['batch_size']} ({m['training']['images_seen']})")
    row("training: CPU-seconds budget", lambda m: str(m["training"]["cpu_seconds_budget"]))
    for c in ("NORMAL", "PNEUMONIA"):
        row(f"FID {c}", lambda m, c=c: f"{m['per_class'][c]['fid']:.2f}")
        row(f"KID {c} (x1e3)", lambda m, c=c: f"{1e3 * m['per_class'][c]['kid_mean']:.2f} ± {1e3 * m['per_class'][c]['kid_std']:.2f}")
        row(f"MMD {c}", lambda m, c=c: f3(m["per_class"][c]["mmd"]))
        row(f"k-NN precision / recall {c}", lambda m, c=c: f"{m['per_class'][c]['knn_precision']:.3f} / {m['per_class'][c]['knn_recall']:.3f}")
    row("class fidelity: share the classifier assigns to the asked class, NORMAL / PNEUMONIA (real images: "
        + " / ".join(f"{v:.3f}" for v in sgan.get("class_fidelity", {}).get("real", {}).values()) + ")",
        lambda m: " / ".join(f"{v:.3f}" for v in m["class_fidelity"]["generated"].values()))
    row("FID pooled", lambda m: f"{m['all']['fid']:.2f}")
    row("nearest-real SSIM: mean / max", lambda m: " / ".join(
        f"{np.mean([m['per_class'][c][k] for c in m['per_class']]):.3f}" if k.endswith("mean")
        else f"{max(m['per_class'][c][k] for c in m['per_class']):.3f}" for k in ("nearest_real_ssim_mean", "nearest_real_ssim_max")))
    row("memorised share (nearest SSIM > 0.95)", lambda m: f3(m["memorised_share"]))
    row("seed figures: SSIM / MSE vs a random real image", lambda m: " / ".join(
        f"{np.mean([m['per_class'][c][k] for c in m['per_class']]):.4f}" for k in ("seed_ssim_random_pair", "seed_mse_random_pair")))
    row("seed figures: D accuracy / precision / recall (real = positive)", lambda m: " / ".join(
        f"{m['discriminator'][k]:.3f}" for k in ("d_accuracy", "d_precision", "d_recall")))
    n = sgan.get("settings", {}).get("num_per_class", "?")
    head = f"| {n} samples per class vs the real training images | " + " | ".join(name for name, _ in cols) + " |"
    return "\n".join([head, "|---|" + "---|" * len(cols)] + rows)


def study_verdict(results: list[dict]) -> str:
    def stats(cond: str, key: str) -> tuple[float, float, int]:
        v = np.array([r[key] for r in results if r["condition"] == cond])
        return (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)) if v.size else (np.nan, np.nan, 0)

    lines = []
    for syn in ("syn_min", "syn_both"):
        beats = []
        for key in ("auc", "balanced_accuracy", "minority_recall"):
            ms, ss, n1 = stats(syn, key)
            md, sd, n2 = stats("dup", key)
            if n1 == 0 or n2 == 0:
                continue
            beats.append((key, ms - md, max(ss, sd)))
        if not beats:
            continue
        clear = [k for k, d, s in beats if d > s]
        worse = [k for k, d, s in beats if d < -s]
        desc = ", ".join(f"{k} {d:+.3f} (spread {s:.3f})" for k, d, s in beats)
        if len(clear) == len(beats):
            verdict = "beats the duplication control on every measure, by more than the seed spread"
        elif worse:
            verdict = f"is WORSE than simply duplicating real NORMAL images on {', '.join(worse)}"
        else:
            verdict = "does NOT beat simply duplicating real NORMAL images (differences within the seed spread)"
        lines.append(f"- **{syn}** {verdict}: difference to `dup` {desc}.")
    ms, _, n = stats("tstr", "auc")
    mr, _, nr = stats("real", "auc")
    if n and nr:
        lines.append(f"- TSTR (train on synthetic only, test on real): AUC {ms:.3f} vs {mr:.3f} when training on real images.")
    return "\n".join(lines)


def replace_block(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.replace(marker, block)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sgan_run", type=Path, default=ROOT / "runs" / "synth_sgan64")
    p.add_argument("--dcgan_run", type=Path, default=ROOT / "runs" / "synth_dcgan64")
    p.add_argument("--study_out", type=Path, default=ROOT / "runs" / "synth_study")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--jobs", type=int, default=3, help="study processes run at the same time (one seed each)")
    p.add_argument("--real_cache", type=Path, default=Path("/tmp/cxr_synth_cache/kermany64_split0.pt"),
                   help="preprocessed split written by synth_augmentation_study.py (skips re-loading 4,431 JPEGs)")
    p.add_argument("--eval_overrides", type=json.loads, default={},
                   help='JSON dict of evaluate.json overrides, e.g. \'{"classifier_input_size": 224, '
                        '"allow_untrained_features": false}\'')
    p.add_argument("--out_root", type=Path, default=BUNDLE,
                   help="where models/, eval/, eval_dcgan/ and docs/README.md are written (default: the bundle)")
    p.add_argument("--cpu_budget_total", type=int, default=None,
                   help="total CPU-seconds of a run resumed in several legs (the log only knows the last leg's)")
    p.add_argument("--skip", nargs="*", default=[], choices=["export", "evaluate", "study", "card"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    out = args.out_root
    info: dict = {}
    if "export" not in args.skip:
        for name, run, dc in (("sgan", args.sgan_run, False), ("dcgan", args.dcgan_run, True)):
            if run.is_dir():
                info[name] = export(run, dc)
                if args.cpu_budget_total is not None:
                    info[name][1]["cpu_seconds_budget"] = args.cpu_budget_total
                print(name, info[name][1], flush=True)
        if "sgan" in info:
            (out / "models").mkdir(parents=True, exist_ok=True)
            (out / "models" / "model.pt").write_bytes(info["sgan"][0].read_bytes())
            from monai.bundle import ckpt_export

            ckpt_export(net_id="network_def", filepath=str(out / "models" / "model.ts"),
                        ckpt_file=str(out / "models" / "model.pt"), meta_file=str(BUNDLE / "configs" / "metadata.json"),
                        config_file=str(BUNDLE / "configs" / "inference.json"), bundle_root=str(BUNDLE))
        (ROOT / "runs").mkdir(exist_ok=True)
        (ROOT / "runs" / "synth_budget.json").write_text(json.dumps({k: v[1] for k, v in info.items()}, indent=1))
        print(f"export done ({time.time() - t0:.0f} s)", flush=True)
    budget = json.loads((ROOT / "runs" / "synth_budget.json").read_text())
    if "evaluate" not in args.skip:
        evaluate(["evaluate.json"], out / "models" / "model.pt", out / "eval",
                 ROOT / budget["sgan"]["checkpoint"], budget["sgan"], args.real_cache, args.eval_overrides)
        if "dcgan" in budget:
            evaluate(["evaluate.json", "evaluate_dcgan.json"], args.dcgan_run / "model_export.pt", out / "eval_dcgan",
                     ROOT / budget["dcgan"]["checkpoint"], budget["dcgan"], args.real_cache, args.eval_overrides)
        print(f"evaluation done ({time.time() - t0:.0f} s)", flush=True)
    if "study" not in args.skip:
        script = ROOT / "benchmarks" / "synth_augmentation_study.py"
        codes = []
        for i in range(0, len(args.seeds), args.jobs):  # --jobs processes at a time, one seed each
            procs = [subprocess.Popen([sys.executable, str(script), "--out", str(args.study_out / f"syn_seed{s}"),
                                       "--conditions", "syn_min", "syn_both", "tstr", "--seeds", str(s),
                                       "--steps", str(args.steps), "--generator_weights",
                                       str(out / "models" / "model.pt")])
                     for s in args.seeds[i : i + args.jobs]]
            codes += [pr.wait() for pr in procs]
        if any(codes):
            raise RuntimeError(f"study processes failed: {codes}")
        subprocess.run([sys.executable, str(script), "--out", str(args.study_out), "--merge"], check=True)
        print(f"study done ({time.time() - t0:.0f} s)", flush=True)
    if "card" not in args.skip:
        card = out / "docs" / "README.md"
        text = card.read_text()
        sgan = json.loads((out / "eval" / "metrics.json").read_text())
        dc_file = out / "eval_dcgan" / "metrics.json"
        dcgan = json.loads(dc_file.read_text()) if dc_file.is_file() else None
        text = replace_block(text, "RESULTS_METRICS", metrics_md(sgan, dcgan))
        res_file = args.study_out / "all_results.json"
        if res_file.is_file():
            results = json.loads(res_file.read_text())
            body = ("Validation split: 785 real images (202 NORMAL), patient-disjoint from the GAN's and the "
                    "classifiers' training images. ResNet18SA-lite at 64 px, same steps and augmentation in "
                    "every condition; mean ± standard deviation over seeds.\n\n"
                    + (args.study_out / "results.md").read_text().strip() + "\n\n" + study_verdict(results)
                    + "\n\nCommand: `python benchmarks/synth_augmentation_study.py --out runs/synth_study "
                    "--generator_weights bundles/cxr_synth_sgan/models/model.pt --steps "
                    f"{results[0]['steps']} --seeds {' '.join(map(str, sorted({r['seed'] for r in results})))}`")
            text = replace_block(text, "RESULTS_STUDY", body)
        card.write_text(text)
        print("card updated", flush=True)


if __name__ == "__main__":
    main()
