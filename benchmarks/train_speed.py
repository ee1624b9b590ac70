"""Training iterations per second of each bundle on this machine, at the shipped configs' batch and patch sizes.

Each bundle's trainer is built by ``monai.bundle.ConfigWorkflow`` from its own train config(s), with overrides that
only point it at a few real images (``CXR_SHARED_DATA``, default ``../shared/data`` beside the repository), a
temporary output folder, one epoch and a short ``epoch_length`` / ``max_train_items``. The workflow's own
``initialize`` and ``run`` execute unchanged (so ``CXR_NUM_THREADS`` sets the threads as in training, the SR GAN
stage loads its stage-1 weights, handlers such as EMA run); ``finalize`` is skipped. A timer on
``Events.ITERATION_COMPLETED`` takes the time between consecutive iterations (data loading, augmentation, forward,
backward, optimiser steps and iteration-level handlers), drops ``warmup`` of them and stops the engine after
``iterations`` timed ones; the figure is ``1 / median`` of those intervals.

Used by ``python -m benchmarks.run`` (its ``train`` section) or alone:
``python -m benchmarks.train_speed --iterations 3 [--bundles classifier,sr_psnr,sr_gan,synth] [--out OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"

# name: (bundle, config files merged in order, ids whose shipped values are reported as the batch description)
SPECS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "classifier": ("cxr_pneumonia_classifier", ["train.json"], ("batch_size", "image_size", "network_preset")),
    "sr_psnr": ("cxr_sr_csaegan", ["train_psnr.json"], ("images_per_batch", "patches_per_image", "patch_size")),
    "sr_gan": ("cxr_sr_csaegan", ["train_psnr.json", "train_gan.json"],
               ("images_per_batch", "patches_per_image", "patch_size")),
    "synth": ("cxr_synth_sgan", ["train.json"], ("batch_size", "image_size", "network_preset")),
}


def shared_data() -> Path:
    """``CXR_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _overrides(name: str, shipped: dict, data: Path, out: Path, iterations: int) -> dict:
    """Config overrides that keep the shipped batch/patch sizes and shrink only the data, epochs and outputs."""
    common = {"output_dir": str(out), "max_epochs": 1, "num_workers": 0}
    if name == "classifier":
        # no epoch_length id: an epoch is max_train_items // batch_size batches (drop_last)
        return {**common, "dataset_dir": str(data / "kermany224" / "train"),
                "max_train_items": int(shipped["batch_size"]) * iterations, "max_val_items": 2}
    if name in ("sr_psnr", "sr_gan"):
        return {**common, "dataset_dir": str(data / "kermany_hr"), "epoch_length": iterations,
                "max_train_items": 2 * int(shipped["images_per_batch"]), "max_val_items": 1,
                "val_interval": 1000}
    if name == "synth":
        return {**common, "dataset_dir": str(data / "kermany224" / "train"), "epoch_length": iterations,
                "max_train_items": 2 * int(shipped["batch_size"])}
    raise KeyError(name)


def _shipped_values(files: list[Path], ids: tuple[str, ...]) -> dict:
    """The shipped values of plain config ids (read with ConfigParser, nothing instantiated)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return {k: parser[k] for k in ids}


def time_training(name: str, warmup: int = 1, iterations: int = 3, data: Path | None = None) -> dict:
    """Iterations per second of one bundle's training (see the module docstring)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    if warmup < 1 or iterations < 1:
        raise ValueError("need warmup >= 1 and iterations >= 1")
    bundle, configs, ids = SPECS[name]
    root = BUNDLES / bundle
    files = [root / "configs" / c for c in configs]
    shipped = _shipped_values(files, ids)
    data = shared_data() if data is None else Path(data)
    threads = torch.get_num_threads()
    stamps: list[float] = []
    total = warmup + iterations
    with tempfile.TemporaryDirectory(prefix=f"train_speed_{name}_") as tmp:
        overrides = _overrides(name, shipped, data, Path(tmp), total)
        t0 = time.perf_counter()
        wf = ConfigWorkflow(config_file=[str(f) for f in files] if len(files) > 1 else str(files[0]),
                            meta_file=str(root / "configs" / "metadata.json"), workflow_type="train",
                            bundle_root=str(root), **overrides)
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")

        def stamp(engine) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) >= total:
                engine.terminate()

        trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
        setup_s = time.perf_counter() - t0
        try:
            wf.run()
        finally:
            run_threads = torch.get_num_threads()
            torch.set_num_threads(threads)  # the workflow's initialize sets CXR_NUM_THREADS
    if len(stamps) < total:
        raise RuntimeError(f"{name}: the trainer stopped after {len(stamps)} of {total} iterations")
    intervals = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:])]
    sec = statistics.median(intervals)
    row = {"bundle": bundle, "configs": configs, "shipped": shipped, "iterations_timed": len(intervals),
           "warmup": warmup, "seconds_per_iteration": sec, "iterations_per_s": 1.0 / sec,
           "min_seconds": min(intervals), "max_seconds": max(intervals), "setup_seconds": setup_s,
           "threads": run_threads}
    if name in ("classifier", "synth"):
        row["samples_per_iteration"] = int(shipped["batch_size"])
    else:  # SR: patches of patch_size, patches_per_image from each of images_per_batch images
        row["samples_per_iteration"] = int(shipped["images_per_batch"]) * int(shipped["patches_per_image"])
    return row


def bench_train(names: list[str] | None = None, warmup: int = 1, iterations: int = 3) -> dict:
    """``{name: row}`` for the requested bundles (all by default), printing each as it finishes."""
    out = {}
    for name in names or list(SPECS):
        row = time_training(name, warmup, iterations)
        out[name] = row
        print(f"train {name:10s} {row['iterations_per_s']:7.3f} it/s ({row['seconds_per_iteration']:.2f} s/it, "
              f"{row['samples_per_iteration']} samples/it, {row['threads']} threads)", flush=True)
    return out


def markdown_rows(train: dict) -> list[str]:
    """The training table of ``bench.md``."""
    lines = ["| training | configs | shipped batch | samples / it | threads | s / it | it / s | samples / s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in train.items():
        batch = ", ".join(f"{k} {v}" for k, v in r["shipped"].items())
        lines.append(f"| {name} | {' + '.join(r['configs'])} | {batch} | {r['samples_per_iteration']} | "
                     f"{r['threads']} | {r['seconds_per_iteration']:.2f} | {r['iterations_per_s']:.3f} | "
                     f"{r['samples_per_iteration'] * r['iterations_per_s']:.1f} |")
    lines.append(f"Training: median of {next(iter(train.values()))['iterations_timed']} iterations after "
                 f"{next(iter(train.values()))['warmup']} warm-up, each bundle's own trainer on real images "
                 f"(`benchmarks/train_speed.py`).")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", default=",".join(SPECS), help=f"comma-separated subset of {list(SPECS)}")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--out", default=None, help="write OUT/train_speed.json")
    args = ap.parse_args()
    names = [n.strip() for n in args.bundles.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        ap.error(f"unknown bundles {unknown}; choose from {list(SPECS)}")
    train = bench_train(names, args.warmup, args.iterations)
    print("\n".join(markdown_rows(train)))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "train_speed.json").write_text(json.dumps(train, indent=2))


if __name__ == "__main__":
    main()
