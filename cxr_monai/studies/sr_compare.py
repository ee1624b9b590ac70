"""Side-by-side comparison and ablation table of the SR models, measured in ONE run on the validation split.

Rows: bicubic, SRCNN, EDSR-lite, RRDBNet-lite (= CSAEGAN-lite without CSA), CSAEGAN-lite with pooling in the
CSA channel attention, CSAEGAN-lite (same short budget) and the shipped CSAEGAN-lite (bundle ``models/model.pt``),
plus untrained reference rows for the full presets (parameters / GFLOPs / time only).

For every row: PSNR / SSIM (and bicubic on the same crops) on 512 center crops of the bundle's validation split
(``configs/datalist.json``), degraded by the project convention (blur sigma 1 HR px, reflect padding, antialiased
bicubic x4); 4 px border excluded; data range 1 (MONAI metrics). Parameters; GFLOPs for one 256x256 output
(64x64 input), counted as 2 x multiply-accumulates of every convolution / linear layer; CPU time per 256x256
output (median of ``--repeats`` runs, one thread) and the achieved GFLOP/s next to an fp32 GEMM measured in the
same run (the machine is shared, so its speed drifts).

Example::

    .venv/bin/python -m cxr_monai.studies.sr_compare --out runs/sr_compare/compare.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_monai.io import load_cxr
from cxr_monai.metrics.sr import bicubic_up, degrade, psnr, ssim
from cxr_monai.networks import sr as srnets

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "cxr_sr_csaegan"
DATA = ROOT.parent / "shared" / "data" / "kermany_hr"
RUNS = ROOT / "runs" / "sr_compare"

# name, factory, kwargs, weights (None = untrained reference row), note
ROWS: list[tuple[str, str, dict, Path | None, str]] = [
    ("SRCNN (9-5-5, residual)", "srcnn", {"residual": True}, RUNS / "srcnn" / "model.pt", "short budget"),
    ("EDSR-lite (8x32)", "edsr_lite", {}, RUNS / "edsr_lite" / "model.pt", "short budget"),
    ("RRDBNet-lite (CSAEGAN-lite, csa=False)", "csaegan_lite", {"csa": False}, RUNS / "rrdbnet_lite" / "model.pt",
     "short budget"),
    ("CSAEGAN-lite, CSA with pooling", "csaegan_lite", {"csa_pooling": True}, RUNS / "csaegan_lite_pool" / "model.pt",
     "short budget"),
    ("CSAEGAN-lite, pool-free CSA", "csaegan_lite", {}, RUNS / "csaegan_lite" / "model.pt", "short budget"),
    ("CSAEGAN-lite, shipped (bundle models/model.pt)", "csaegan_lite", {}, BUNDLE / "models" / "model.pt",
     "long run"),
    ("RRDBNet full (23x64, ESRGAN)", "rrdbnet", {}, None, "untrained: cost only"),
    ("CSAEGAN full (23x64 + CSA)", "csaegan_full", {}, None, "untrained: cost only"),
]


def conv_flops(net: nn.Module, shape: tuple[int, ...]) -> float:
    """2 x multiply-accumulates of all Conv2d / Linear layers for one forward pass of ``shape``."""
    total = [0.0]

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += 2.0 * k * out.numel()

    def lin_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        total[0] += 2.0 * m.in_features * out.numel()

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(lin_hook) for m in net.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        net(torch.rand(*shape))
    for h in hooks:
        h.remove()
    return total[0]


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Achieved fp32 GEMM GFLOP/s on this machine now."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def time_per_output(fn, x: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``fn(x)`` (after one warm-up)."""
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def load_val(crop: int, limit: int) -> list[tuple[str, torch.Tensor]]:
    """(name, HR crop (1, 1, h, w) in [0, 1]) for the bundle's validation split."""

    split = json.loads((BUNDLE / "configs" / "datalist.json").read_text())["validation"]
    out = []
    for item in split[: limit or None]:
        img, _ = load_cxr(DATA / item["image"])
        h, w = img.shape[1:]
        ch, cw = min(crop, h) // 4 * 4, min(crop, w) // 4 * 4
        t, l_ = (h - ch) // 2, (w - cw) // 2
        out.append((item["image"], torch.from_numpy(np.ascontiguousarray(img[:, t : t + ch, l_ : l_ + cw]))[None]))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RUNS / "compare.json"))
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--val_limit", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.time()
    val = load_val(args.crop, args.val_limit)
    pairs = [(name, hr, degrade(hr, 1.0, 4)) for name, hr in val]
    bic_psnr = [float(psnr(bicubic_up(lr), hr)) for _, hr, lr in pairs]
    bic_ssim = [float(ssim(bicubic_up(lr), hr)) for _, hr, lr in pairs]
    x256 = torch.rand(1, 1, 64, 64)
    gemm = gemm_gflops()
    results = [{
        "model": "bicubic", "params": 0, "gflops_256": None, "trained": None,
        "psnr": float(np.mean(bic_psnr)), "ssim": float(np.mean(bic_ssim)), "gain_db": 0.0,
        "cpu_s_256": time_per_output(lambda t: bicubic_up(t, 4), x256, args.repeats), "note": "",
    }]
    for label, factory, kwargs, weights, note in ROWS:
        net = getattr(srnets, factory)(**kwargs).eval()
        row: dict = {"model": label, "params": srnets.count_parameters(net), "note": note}
        flops = conv_flops(net, (1, 1, 64, 64))
        row["gflops_256"] = flops / 1e9
        row["cpu_s_256"] = time_per_output(net, x256, args.repeats)
        row["achieved_gflops_per_s"] = flops / 1e9 / row["cpu_s_256"]
        trained = weights is not None and weights.is_file()
        row["trained"] = trained
        if weights is not None and not trained:
            row["note"] = f"{note}; weights missing ({weights.relative_to(ROOT)})"
        if trained:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            summary = weights.parent / "summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text())
                row["train_iterations"] = s["final"]["iteration"]
                row["train_minutes"] = round(s["final"]["minutes"], 1)
            ps, ss = [], []
            with torch.no_grad():
                for _, hr, lr in pairs:
                    sr = net(lr)
                    ps.append(float(psnr(sr, hr)))
                    ss.append(float(ssim(sr, hr)))
            row.update(psnr=float(np.mean(ps)), ssim=float(np.mean(ss)),
                       gain_db=float(np.mean(ps) - np.mean(bic_psnr)),
                       images_better_than_bicubic=int(sum(a > b for a, b in zip(ps, bic_psnr))))
        results.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "n_images": len(pairs), "crop": args.crop, "gemm_gflops_per_s": gemm, "threads": args.threads,
        "wall_s": time.time() - t0,
        "convention": "blur sigma 1.0 HR px (reflect) + antialiased bicubic x4; PSNR/SSIM data range 1, 4 px border "
                      "excluded; GFLOPs = 2 x MACs of conv/linear layers for a 256x256 output; CPU time median, "
                      f"{args.threads} thread(s), shared machine",
        "rows": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The table for the model card."""
    lines = [
        f"{report['n_images']} validation images, {report['crop']} center crops; GEMM {report['gemm_gflops_per_s']:.0f} "
        f"GFLOP/s on {report['threads']} thread(s) in the same run.",
        "",
        "| model | params | GFLOPs (256x256 out) | CPU s / 256x256 | achieved GFLOP/s | PSNR | SSIM | gain vs bicubic (dB) | training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        psnr_s = f"{r['psnr']:.2f}" if "psnr" in r else "-"
        ssim_s = f"{r['ssim']:.4f}" if "ssim" in r else "-"
        gain = f"{r['gain_db']:+.2f}" if "gain_db" in r else "-"
        gf = f"{r['gflops_256']:.2f}" if r.get("gflops_256") is not None else "-"
        ach = f"{r['achieved_gflops_per_s']:.0f}" if "achieved_gflops_per_s" in r else "-"
        train = r.get("note", "")
        if "train_iterations" in r:
            train = f"{r['train_iterations']} it / {r['train_minutes']} min ({r['note']})"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.3f} M | {gf} | {r['cpu_s_256']:.3f} | {ach} | {psnr_s} | "
                     f"{ssim_s} | {gain} | {train} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
