"""Training and checking of the lung-field network (:class:`~cxr_monai.networks.LungFieldNet`).

Data: the lung masks of Kermany **train** images (``kermany_lung_masks``: viral pneumonia films, masks drawn on
the same images). Split: a mask goes to validation when its image is in the classifier's own validation split
(:func:`cxr_monai.data.training_split`, same fraction and seed as ``train.json``), so the lung-field network has
seen none of the images the classifier is validated on. Augmentation (image and mask together): the framings the
product must read alike (random crops down to half the film, zoom-out with a border, shifts, rotations up to 12
degrees), gamma, contrast and noise. Loss: Dice + binary cross-entropy. The checkpoint with the best validation
Dice over the whole and 0.7-cropped validation films is kept.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from PIL import Image
from tqdm import tqdm

from cxr_monai.data import class_folder_datalist, training_split
from cxr_monai.io import load_cxr
from cxr_monai.networks.lung import LUNG_INPUT_SIZE, lung_field_net
from cxr_monai.transforms.lung_field import (LUNG_FIELD_KIND, LungField, lung_box, lung_net_input,
                                             percentile_normalise_batch)
from cxr_monai.utils import save_torchscript_with_meta

logger = logging.getLogger(__name__)

__all__ = ["lung_datalists", "load_lung_pairs", "augment_pairs", "central_crop", "dice_score", "train_lung_field",
           "save_lung_field"]


def lung_datalists(dataset_dir: str | Path, masks_dir: str | Path, val_fraction: float = 0.15,
                   split_seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation) lists of ``{"image", "mask"}`` for every mask whose image exists, split as the
    classifier's training split puts the images."""
    masks_dir = Path(masks_dir)
    _, val = training_split(dataset_dir, val_fraction, split_seed)
    val_names = {Path(item["image"]).stem for item in val}
    pairs = {"train": [], "val": []}
    for item in class_folder_datalist(dataset_dir):
        mask = masks_dir / f"{Path(item['image']).stem}.png"
        if mask.is_file():
            pairs["val" if Path(item["image"]).stem in val_names else "train"].append(
                {"image": str(item["image"]), "mask": str(mask)})
    if not pairs["train"] or not pairs["val"]:
        raise ValueError(f"no mask/image pairs found for {dataset_dir} and {masks_dir}")
    return pairs["train"], pairs["val"]


def load_lung_pairs(items: Sequence[dict], size: int = LUNG_INPUT_SIZE, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Films (N, 1, size, size) as the network reads them and masks (N, 1, size, size) in {0, 1}."""
    xs = torch.empty((len(items), 1, size, size))
    ys = torch.empty((len(items), 1, size, size))
    for i, item in enumerate(tqdm(items, desc=desc or "loading", leave=False)):
        img, _ = load_cxr(item["image"])
        xs[i] = lung_net_input(torch.as_tensor(img)[None], size)[0]
        m = np.asarray(Image.open(item["mask"]).convert("L"), dtype=np.float32) / 255.0
        m = F.interpolate(torch.as_tensor(m)[None, None], size=(size, size), mode="area")
        ys[i] = (m[0] > 0.5).float()
    return xs, ys


def augment_pairs(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random framing (scale 0.5-1.25 of the field of view, shift up to 0.15, rotation up to 12 degrees,
    border zeros or edge), gamma 0.7-1.4, contrast and noise; the mask follows the geometry."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    scale, angle = u(0.5, 1.25), u(-12, 12) * math.pi / 180
    tx, ty = u(-0.15, 0.15), u(-0.15, 0.15)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    mode = "zeros" if torch.rand(1, generator=generator).item() < 0.5 else "border"
    xa = F.grid_sample(x, grid, mode="bilinear", padding_mode=mode, align_corners=False)
    ya = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    gamma = u(0.7, 1.4).view(-1, 1, 1, 1)
    xa = xa.clamp(0, 1) ** gamma
    xa = xa * u(0.8, 1.2).view(-1, 1, 1, 1) + u(-0.1, 0.1).view(-1, 1, 1, 1)
    xa = xa + u(0, 0.04).view(-1, 1, 1, 1) * torch.randn(xa.shape, generator=generator)
    return percentile_normalise_batch(xa), ya


def central_crop(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central ``fraction`` of each side of ``(N, C, H, W)``, resized back to ``H x W``."""
    h, w = x.shape[-2:]
    ch, cw = max(2, round(h * fraction)), max(2, round(w * fraction))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return F.interpolate(x[..., y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear", align_corners=False)


def dice_score(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice of ``prob > 0.5`` against a binary ``target`` (N,)."""
    p = (prob > 0.5).float().flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (2 * inter + 1e-6) / (p.sum(1) + t.sum(1) + 1e-6)


@torch.no_grad()
def _evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    net.eval()
    out = [dice_score(torch.sigmoid(net(x[i:i + batch])), y[i:i + batch]) for i in range(0, len(x), batch)]
    return float(torch.cat(out).mean())


def save_lung_field(net: torch.nn.Module, info: dict[str, Any], path: str | Path) -> Path:
    """Script ``net`` and write it with ``info`` embedded (kind ``lung_field``), atomically."""
    info = {**info, "kind": LUNG_FIELD_KIND}
    for key in ("input_size", "margin", "min_lung_fraction"):
        if key not in info:
            raise ValueError(f"lung-field info needs {key!r}")
    return save_torchscript_with_meta(torch.jit.script(net.eval()), info, path)


def train_lung_field(dataset_dir: str | Path, masks_dir: str | Path, output_file: str | Path,
                     report_file: str | Path, preset: str = "small", epochs: int = 25, batch_size: int = 16,
                     lr: float = 2e-3, val_fraction: float = 0.15, split_seed: int = 0, seed: int = 0,
                     margin: float = 0.08, min_lung_fraction: float = 0.02, max_items: int | None = None) -> dict:
    """Train the lung-field network, keep the best epoch, write ``output_file`` (TorchScript with metadata)
    and ``report_file`` (JSON: validation Dice on whole films and on 0.85 / 0.7 / 0.5 central crops, box
    statistics, the per-epoch log).

    Args:
        dataset_dir: Kermany train (class folders).
        masks_dir: ``kermany_lung_masks``.
        output_file: where the TorchScript network goes (``models/lung_field.ts``).
        report_file: where the report goes.
        preset: :func:`~cxr_monai.networks.lung_field_net` preset.
        epochs, batch_size, lr: optimisation (Adam, cosine decay to 1 %).
        val_fraction, split_seed: the classifier's validation split (``train.json``).
        seed: initialisation and augmentation seed.
        margin, min_lung_fraction: the box rule embedded with the weights (:func:`cxr_monai.transforms.lung_box`).
        max_items: cap on training pairs (tests).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_items, val_items = lung_datalists(dataset_dir, masks_dir, val_fraction, split_seed)
    train_items = train_items[:max_items] if max_items else train_items
    val_items = val_items[: max(8, max_items // 4)] if max_items else val_items
    xt, yt = load_lung_pairs(train_items, desc="train pairs")
    xv, yv = load_lung_pairs(val_items, desc="validation pairs")
    xv70, yv70 = central_crop(xv, 0.7), (central_crop(yv, 0.7) > 0.5).float()
    net = lung_field_net(preset)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(xt) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.01)
    dice_loss = DiceLoss(sigmoid=True)
    best, best_state, log = -1.0, None, []
    start = time.time()
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        losses = []
        for i in tqdm(range(0, len(xt), batch_size), desc=f"lung epoch {epoch}/{epochs}", leave=False):
            idx = order[i:i + batch_size]
            xa, ya = augment_pairs(xt[idx], yt[idx], gen)
            logits = net(xa)
            loss = dice_loss(logits, ya) + F.binary_cross_entropy_with_logits(logits, ya)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        d_whole, d70 = _evaluate(net, xv, yv), _evaluate(net, xv70, yv70)
        score = (d_whole + d70) / 2
        log.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": d_whole, "val_dice_crop70": d70,
                    "seconds": round(time.time() - start, 1)})
        logger.info("lung epoch %d: loss %.4f, val Dice %.4f (0.7 crop %.4f)", epoch, log[-1]["loss"], d_whole, d70)
        print(json.dumps(log[-1]), flush=True)
        if score > best:
            best, best_state = score, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    report: dict[str, Any] = {"n_train": len(xt), "n_val": len(xv), "preset": preset, "epochs": epochs,
                              "best_epoch": int(max(log, key=lambda r: (r["val_dice"] + r["val_dice_crop70"]))["epoch"]),
                              "log": log, "val_dice": {}}
    for frac in (1.0, 0.85, 0.7, 0.5):
        xc = xv if frac == 1.0 else central_crop(xv, frac)
        yc = yv if frac == 1.0 else (central_crop(yv, frac) > 0.5).float()
        report["val_dice"][f"{frac:g}"] = _evaluate(net, xc, yc)
    lf = LungField(net, {"input_size": LUNG_INPUT_SIZE, "margin": margin, "min_lung_fraction": min_lung_fraction})
    with torch.no_grad():
        probs = torch.sigmoid(net(xv))
    boxes = [lung_box(p[0], margin, min_lung_fraction) for p in probs]
    report["val_boxes"] = {"found": float(np.mean([b.found for b in boxes])),
                           "lung_fraction_median": float(np.median([b.lung_fraction for b in boxes])),
                           "height_median": float(np.median([b.bottom - b.top for b in boxes])),
                           "width_median": float(np.median([b.right - b.left for b in boxes]))}
    info = {"name": "cxr_lung_field", "input_size": LUNG_INPUT_SIZE, "margin": margin,
            "min_lung_fraction": min_lung_fraction, "preset": preset, "val_dice": report["val_dice"],
            "trained_on": "kermany_lung_masks (Kermany train viral-pneumonia films), classifier validation images held out"}
    save_lung_field(lf.module, info, output_file)
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(json.dumps(report, indent=1))
    return report
