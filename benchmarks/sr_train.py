"""CPU training of the SR generators on random HR patches of ../shared/data/kermany_hr (resumable).

PSNR-oriented L1 training with a time-or-iteration cosine schedule: the learning rate follows
``lr * 0.5 * (1 + cos(pi * progress))`` with ``progress = max(iteration / max_iters, elapsed / time_budget)``,
so a run always finishes its decay within the wall-time budget whatever the machine's load. Checkpoints every
``--ckpt_min`` minutes (``last.pt``) and resumes from it on restart; the best validation state goes to
``best.pt`` and the final bare state dict to ``model.pt``.

Pairs follow the project convention: an HR crop with a 16 px margin is blurred (sigma in HR px, reflect padding)
and bicubic-downsampled with antialiasing; the margin is then dropped, so the pairs equal those of a
whole-image degradation. Validation: 512 center crops of the bundle's validation split, degraded as whole
images, PSNR/SSIM with a 4 px border excluded (``cxr_monai.metrics.sr``).

Example (the shipped lite model)::

    nohup .venv/bin/python benchmarks/sr_train.py --net csaegan_lite --out runs/sr_lite \
        --time_budget_min 95 --max_iters 100000 > runs/sr_lite.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import time
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxr_monai.metrics.sr import bicubic_up, degrade, psnr, ssim
from cxr_monai.networks import sr as srnets

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "kermany_hr"
DATALIST = ROOT / "bundles" / "cxr_sr_csaegan" / "configs" / "datalist.json"


def load_gray(path: Path) -> torch.Tensor:
    """uint8 (H, W) tensor of an image file, read with the project's loader (``cxr_monai.io.load_cxr``: the same
    intensity rules as the bundles) and stored as 8-bit to keep 300 radiographs in memory."""
    from cxr_monai.io import load_cxr

    image, _ = load_cxr(path)
    return torch.from_numpy(np.round(image[0] * 255.0).astype(np.uint8))


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop of the last two dims (size capped by the image, rounded down to a multiple of 4)."""
    h, w = img.shape[-2:]
    s_h, s_w = min(size, h) // 4 * 4, min(size, w) // 4 * 4
    top, left = (h - s_h) // 2, (w - s_w) // 2
    return img[..., top : top + s_h, left : left + s_w]


def build_net(name: str, kwargs: dict) -> torch.nn.Module:
    """Network factory by name from ``cxr_monai.networks.sr``."""
    return getattr(srnets, name)(**kwargs)


class PatchSampler:
    """Random HR patches + their LR counterparts from in-memory uint8 images."""

    def __init__(self, images: list[torch.Tensor], patch: int, batch: int, sigma: float, scale: int,
                 margin: int = 16, min_std: float = 0.02, seed: int = 0) -> None:
        big = patch + 2 * margin
        self.images = [im for im in images if min(im.shape) >= big]
        if not self.images:
            raise ValueError(f"no training image is at least {big} px on each side")
        self.patch, self.batch = patch, batch
        self.sigma, self.scale, self.margin, self.min_std = sigma, scale, margin, min_std
        self.rng = np.random.default_rng(seed)

    def _crop(self) -> torch.Tensor:
        big = self.patch + 2 * self.margin
        for _ in range(5):
            img = self.images[self.rng.integers(len(self.images))]
            h, w = img.shape
            top, left = self.rng.integers(0, h - big + 1), self.rng.integers(0, w - big + 1)
            crop = img[top : top + big, left : left + big].float().div(255.0)
            if crop.std() > self.min_std:
                break
        if self.rng.random() < 0.5:
            crop = crop.flip(-1)
        if self.rng.random() < 0.5:
            crop = crop.flip(-2)
        return crop

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        big = torch.stack([self._crop() for _ in range(self.batch)]).unsqueeze(1)
        lr_big = degrade(big, self.sigma, self.scale)
        m, s = self.margin, self.scale
        hr = big[..., m : m + self.patch, m : m + self.patch]
        lr = lr_big[..., m // s : (m + self.patch) // s, m // s : (m + self.patch) // s]
        return lr.contiguous(), hr.contiguous()


@torch.no_grad()
def validate(net: torch.nn.Module, val: list[torch.Tensor], sigma: float, scale: int) -> dict[str, float]:
    """Mean PSNR/SSIM of SR and bicubic on the validation crops (4 px border excluded)."""
    net.eval()
    rows = []
    for hr in val:
        hr = hr.float().div(255.0)[None, None]
        lr = degrade(hr, sigma, scale)
        out = net(lr).clamp(0, 1)
        bic = bicubic_up(lr, scale)
        rows.append([psnr(out, hr, scale).item(), psnr(bic, hr, scale).item(), ssim(out, hr, scale).item(),
                     ssim(bic, hr, scale).item()])
    net.train()
    a = np.asarray(rows).mean(0)
    return {"psnr_sr": a[0], "psnr_bicubic": a[1], "gain_db": a[0] - a[1], "ssim_sr": a[2], "ssim_bicubic": a[3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="csaegan_lite")
    p.add_argument("--net_kwargs", default="{}", help="JSON dict of factory arguments")
    p.add_argument("--out", default=str(ROOT / "runs" / "sr_lite"))
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--min_lr", type=float, default=1e-6)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max_iters", type=int, default=100_000)
    p.add_argument("--time_budget_min", type=float, default=90.0)
    p.add_argument("--ckpt_min", type=float, default=5.0)
    p.add_argument("--val_every_min", type=float, default=10.0)
    p.add_argument("--val_crop", type=int, default=512)
    p.add_argument("--val_limit", type=int, default=0, help="use only the first N validation images (0 = all)")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", choices=["l1", "mse"], default="l1",
                   help="pixel loss; a short final cycle with mse can add a little PSNR (PSNR is an MSE measure)")
    p.add_argument("--restart", action="store_true",
                   help="on resume, keep weights and optimiser but start a new warm-restart cosine cycle "
                        "(--lr, --time_budget_min, --max_iters count from the resume point)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datalist = json.loads(DATALIST.read_text())
    t0 = time.time()
    train_imgs = [load_gray(DATA / d["image"]) for d in datalist["training"]]
    val_items = datalist["validation"][: args.val_limit or None]
    val_imgs = [center_crop(load_gray(DATA / d["image"]), args.val_crop) for d in val_items]
    print(f"loaded {len(train_imgs)} train / {len(val_imgs)} val images in {time.time() - t0:.1f}s", flush=True)

    net = build_net(args.net, json.loads(args.net_kwargs))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    state = {"iteration": 0, "elapsed": 0.0, "best_psnr": -1.0, "history": []}
    last = out / "last.pt"
    if last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["network"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        print(f"resumed from {last} at iteration {state['iteration']} ({state['elapsed'] / 60:.1f} min)", flush=True)
        if args.restart:
            state["cycle_start"] = {"iteration": state["iteration"], "elapsed": state["elapsed"]}
            print(f"new cosine cycle: lr {args.lr:g}, {args.time_budget_min:g} min", flush=True)
    cycle = state.setdefault("cycle_start", {"iteration": 0, "elapsed": 0.0})
    sampler = PatchSampler(train_imgs, args.patch, args.batch, args.sigma, args.scale, seed=args.seed + state["iteration"])
    budget = args.time_budget_min * 60.0

    def save(path: Path) -> None:
        torch.save({"network": net.state_dict(), "optimizer": opt.state_dict(), "state": state,
                    "args": vars(args)}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    net.train()
    t_start, t_ckpt, t_val = time.time(), time.time(), time.time()
    elapsed0 = state["elapsed"]
    run_loss, n_loss = 0.0, 0
    while True:
        state["elapsed"] = elapsed0 + time.time() - t_start
        progress = max((state["iteration"] - cycle["iteration"]) / args.max_iters,
                       (state["elapsed"] - cycle["elapsed"]) / budget)
        if progress >= 1.0:
            break
        lr_now = args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        if state["iteration"] - cycle["iteration"] < args.warmup:
            lr_now *= (state["iteration"] - cycle["iteration"] + 1) / args.warmup
        for g in opt.param_groups:
            g["lr"] = lr_now
        lr_t, hr_t = sampler.next()
        loss = (F.mse_loss if args.loss == "mse" else F.l1_loss)(net(lr_t), hr_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        state["iteration"] += 1
        run_loss, n_loss = run_loss + loss.item(), n_loss + 1
        now = time.time()
        if state["iteration"] % 100 == 0:
            print(f"it {state['iteration']} loss {run_loss / n_loss:.5f} lr {lr_now:.2e} "
                  f"{state['elapsed'] / 60:.1f} min ({state['iteration'] / max(state['elapsed'], 1e-6):.2f} it/s)",
                  flush=True)
            run_loss, n_loss = 0.0, 0
        if now - t_val > args.val_every_min * 60:
            m = validate(net, val_imgs, args.sigma, args.scale)
            m.update(iteration=state["iteration"], minutes=state["elapsed"] / 60)
            state["history"].append(m)
            print("VAL " + json.dumps({k: round(v, 4) for k, v in m.items()}), flush=True)
            if m["psnr_sr"] > state["best_psnr"]:
                state["best_psnr"] = m["psnr_sr"]
                torch.save(net.state_dict(), out / "best.pt")
            t_val = time.time()
        if now - t_ckpt > args.ckpt_min * 60:
            save(last)
            t_ckpt = time.time()
    m = validate(net, val_imgs, args.sigma, args.scale)
    m.update(iteration=state["iteration"], minutes=state["elapsed"] / 60)
    state["history"].append(m)
    print("FINAL " + json.dumps({k: round(v, 4) for k, v in m.items()}), flush=True)
    torch.save(net.state_dict(), out / "model.pt")
    save(last)
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "final": m, "history": state["history"]}, indent=1))


if __name__ == "__main__":
    main()
