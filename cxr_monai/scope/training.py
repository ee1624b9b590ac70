"""Training, calibration and checking of the intended-population gate (:mod:`cxr_monai.scope`).

In population: the Kermany training split's frontal paediatric radiographs (the classifier's own
patient-aware train/validation split). Out of population for training: a fixed part of the adult
radiographs (``adult_normal_nih``, 70 % by file order) and procedural non-radiographs
(:mod:`cxr_monai.scope.negatives`). Both sides go through the same augmentation (geometry, aspect,
gamma/contrast, blur, noise, synthetic opacities), so that acquisition and pathology are not what
separates them. The images the gate reads are the classifier's network input (one preprocessing).

Thresholds: the out-of-scope probability at 0.5 (the network's own decision at equal priors) and the feature
distance at its 99.9th percentile on the in-population validation split (at most 2 % of the in-population
validation images refused together; 0.25 % with the shipped gate). A first rule, both scores at their 99th
validation percentile, refused 8.9 % of the later-cohort site sample (the network is very confident on its own
training period: its 99th percentile probability was 0.022); the rule was changed to the one above after that
was seen, so the site-sample and held-out adult figures are not independent of this choice. The check report runs on images never used for
training or for the thresholds: held-out adults (30 %), the same adults under simulated acquisition shifts,
new procedural negatives, real CT/MR slices from pydicom's test files and the shared extremity radiograph.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose

from cxr_monai.data import class_folder_datalist, list_images, training_split
from cxr_monai.io import load_cxr
from cxr_monai.metrics.stress import load_images
from cxr_monai.scope.gate import load_scope_gate, save_scope_gate
from cxr_monai.scope.negatives import NEGATIVE_KINDS, bedside_like, negative_set
from cxr_monai.scope.network import ScopeGateModule, scope_net
from cxr_monai.scope.rules import MAX_AGE_YEARS
from cxr_monai.transforms import classifier_preprocessing, reframe
from cxr_monai.transforms.lung_field import percentile_normalise_batch
from cxr_monai.transforms.stress import make_stress_transform
from cxr_monai.utils import file_sha256

logger = logging.getLogger(__name__)

ADULT_FRAMINGS = ("whole", "crop:0.85", "crop:0.7", "crop:0.5", "pad:1.3")
"""Framings of the adult films the gate trains against (and is checked on, held out)."""

__all__ = ["ADULT_FRAMINGS", "adult_split", "report_scope_gate", "preprocess_images", "augment_batch", "train_scope_gate", "scope_check_report", "fit_feature_stats"]


def _progress(iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with MONAI's extras
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def preprocess_images(items: Sequence[Any], image_size: int, progress: bool = False, desc: str = "",
                      lung_field: Any = None, framing: str | Sequence[str] | None = None,
                      return_boxes: bool = False, exposed_field: bool = False):
    """The classifier's network input (N, 1, S, S) for paths or ``(1, H, W)`` arrays, through the one
    classifier preprocessing (:func:`cxr_monai.transforms.classifier_preprocessing`, with its lung-field view
    when ``lung_field`` is given), stored as uint8.

    Args:
        items: paths or arrays.
        image_size: the network input side.
        progress: show a progress bar named ``desc``.
        lung_field: the lung-field network (path or :class:`~cxr_monai.transforms.LungField`); ``None``: whole film.
        framing: re-frame each film first (:func:`cxr_monai.transforms.reframe`): one framing for all, or one per item.
        return_boxes: also return each image's lung-field box (dicts; empty without ``lung_field``).
        exposed_field: crop each film to its exposed field first (a gate that reads it, ``exposed_field`` in its
            metadata).
    """
    pre = Compose(classifier_preprocessing(["image"], int(image_size), lung_field=lung_field,
                                           exposed_field=exposed_field))
    framings = [framing] * len(items) if framing is None or isinstance(framing, str) else list(framing)
    out = torch.empty((len(items), 1, image_size, image_size), dtype=torch.uint8)
    boxes = []
    for i, item in enumerate(_progress(items, len(items), desc, progress)):
        if framings[i] not in (None, "whole"):
            img = load_cxr(item)[0] if isinstance(item, (str, Path)) else np.asarray(item, dtype=np.float32)
            item = reframe(img, framings[i])
        y = pre({"image": item})["image"]
        boxes.append(dict(getattr(y, "meta", {}).get("lung_field") or {}))
        x = torch.as_tensor(y).float()
        out[i] = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return (out, boxes) if return_boxes else out


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Acquisition and anatomy-independent augmentation of a float batch (N, 1, S, S) in [0, 1], the same for
    both classes: affine (rotation 15 degrees, scale 0.8-1.25, aspect 0.85-1.15, shift 10 %), horizontal flip,
    synthetic opacities (Gaussian blobs, half the images), gamma 0.5-2, contrast, blur, Gaussian noise, then the
    preprocessing's 1-99 percentile normalisation again."""
    n, _, s, _ = x.shape
    g = generator

    def u(lo: float, hi: float, size: int = n) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=g)

    angle = u(-15, 15) * math.pi / 180
    scale = u(0.8, 1.25)
    aspect = u(0.85, 1.15)
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / sx * flip, -sin / sx
    theta[:, 1, 0], theta[:, 1, 1] = sin / sy * flip, cos / sy
    theta[:, 0, 2], theta[:, 1, 2] = u(-0.1, 0.1), u(-0.1, 0.1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros" if torch.rand(1, generator=g) < 0.5 else "border",
                      align_corners=False)
    # synthetic opacities: pathology is not a cue (adult pneumonia must not look "in scope")
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    blobs = torch.zeros_like(x)
    for _ in range(3):
        cx, cy, r = u(-0.6, 0.6), u(-0.5, 0.6), u(0.1, 0.35)
        amp = u(0.0, 0.5) * (torch.rand(n, generator=g) < 0.5)
        blobs += amp.view(-1, 1, 1, 1) * torch.exp(-(((xx - cx.view(-1, 1, 1)) ** 2 + (yy - cy.view(-1, 1, 1)) ** 2)
                                                    / (2 * r.view(-1, 1, 1) ** 2)))[:, None]
    x = (x + blobs).clamp(0, 1)
    x = x.clamp_min(1e-6) ** torch.exp(u(-0.7, 0.7)).view(-1, 1, 1, 1)
    x = ((x - 0.5) * u(0.6, 1.5).view(-1, 1, 1, 1) + 0.5).clamp(0, 1)
    if torch.rand(1, generator=g) < 0.5:
        k = 5
        sigma = float(u(0.5, 2.0, 1))
        t = torch.arange(k) - k // 2
        w = torch.exp(-(t ** 2) / (2 * sigma ** 2))
        w = (w / w.sum()).to(x)
        x = F.conv2d(F.pad(x, (k // 2,) * 4, mode="reflect"), w.view(1, 1, 1, k))
        x = F.conv2d(x, w.view(1, 1, k, 1))
    x = x + torch.randn(x.shape, generator=g) * u(0.0, 0.05).view(-1, 1, 1, 1)
    return percentile_normalise_batch(x, min_range=1e-3)


@torch.no_grad()
def _scores_and_features(net, x_uint8: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    net.eval()
    probs, feats = [], []
    for i in range(0, len(x_uint8), batch_size):
        xb = x_uint8[i:i + batch_size].float() / 255.0
        f = net.features(xb)
        feats.append(f)
        probs.append(torch.sigmoid(net.head(f).squeeze(1)))
    return torch.cat(probs), torch.cat(feats)


def fit_feature_stats(features: torch.Tensor, shrinkage: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision of ``features`` (N, D); the covariance is shrunk toward its mean variance times the
    identity by ``shrinkage`` so that it inverts with few images."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got {tuple(features.shape)}")
    f = features.double()
    mean = f.mean(0)
    cov = torch.cov(f.T)
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(f.shape[1], dtype=f.dtype)
    return mean.float(), torch.linalg.inv(cov).float()


def _load_dir(folder: Path) -> list[Path]:
    return sorted(list_images(folder))


def adult_split(adult_dir: Path, held_out_every: int = 10, held_out: tuple[int, ...] = (0, 1, 2)):
    files = _load_dir(adult_dir)
    test = [f for i, f in enumerate(files) if i % held_out_every in held_out]
    train = [f for i, f in enumerate(files) if i % held_out_every not in held_out]
    return train, test


def train_scope_gate(
    dataset_dir: str | Path,
    adult_dir: str | Path,
    output_file: str | Path,
    report_file: str | Path | None = None,
    image_size: int = 160,
    preset: str = "small",
    iterations: int = 500,
    batch_size: int = 64,
    lr: float = 2e-3,
    n_generated_per_kind: int = 150,
    val_fraction: float = 0.15,
    split_seed: int = 0,
    seed: int = 0,
    probability_threshold: float = 0.5,
    distance_quantile: float = 0.999,
    extra_checks: Mapping[str, Sequence[Any]] | None = None,
    site_dir: str | Path | None = None,
    progress: bool = True,
    max_in_scope: int | None = None,
    lung_field: Any = None,
    min_crop: float = 0.6,
    orientation_every: int = 4,
    exposed_field: bool = False,
) -> dict[str, Any]:
    """Train the gate, calibrate its thresholds and write it (:func:`cxr_monai.scope.save_scope_gate`).

    Args:
        dataset_dir: Kermany class folders (``kermany224/train``): the in-population images, split as the
            classifier's ``train.json`` splits them (``val_fraction``, ``split_seed``).
        adult_dir: adult radiographs (``adult_normal_nih``): 70 % train the gate, 30 % are held out.
        output_file: the TorchScript gate (``models/scope_gate.ts``).
        report_file: JSON report of the checks (rates on every held-out set); ``None``: not written.
        image_size: side of the classifier input the gate reads.
        preset: :func:`cxr_monai.scope.network.scope_net` preset.
        iterations, batch_size, lr: training length, batch (half in population, a quarter adults, a quarter
            procedural negatives) and Adam learning rate.
        n_generated_per_kind: procedural negatives of each kind for training (seed ``seed``).
        probability_threshold: out-of-scope probability above which an image is refused.
        distance_quantile: the distance threshold is this quantile of the in-population validation distances.
        extra_checks: more held-out sets to report, name -> paths or arrays (all out of population).
        site_dir: a class-folder sample of the intended population from another time or site, reported as
            in population (not used for training or thresholds).
        max_in_scope: use at most this many in-population training images (tests).
        lung_field: the lung-field network the classifier reads through (path); ``None``: the whole film.
        min_crop: in-population films are also read at a random central crop in ``[min_crop, 0.95]``
            (validation too, for the distance threshold): tight collimation stays in scope.
        orientation_every: every n-th in-population training film, turned by 90, 180 or 270 degrees, is a
            negative (a turned film is out of scope).
    """
    _pre = functools.partial(preprocess_images, exposed_field=exposed_field)
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    lf = lung_field
    train_items, val_items = training_split(dataset_dir, val_fraction, split_seed)
    if max_in_scope:
        train_items, val_items = train_items[:max_in_scope], val_items[: max(20, max_in_scope // 4)]
    adult_train, adult_test = adult_split(Path(adult_dir))
    if max_in_scope:
        adult_train, adult_test = adult_train[:max_in_scope // 2], adult_test[: max(20, max_in_scope // 4)]
    paths = [it["image"] for it in train_items]
    # in population: every training film whole and once more at a random central crop (tight collimation)
    crops = _random_crops(rng, len(paths), min_crop)
    x_in = torch.cat([_pre(paths, image_size, progress, "in population", lf),
                      _pre(paths, image_size, progress, "in population, cropped", lf, crops)])
    val_paths = [it["image"] for it in val_items]
    val_crops = _random_crops(rng, len(val_paths), min_crop)
    x_val = torch.cat([_pre(val_paths, image_size, progress, "validation", lf),
                       _pre(val_paths, image_size, progress, "validation, cropped", lf, val_crops)])
    # adults at every framing, and made bedside-like (lines, tubes, opacities)
    adult_imgs = [load_cxr(f)[0] for f in adult_train]
    bedside = [bedside_like(a, rng) for a in adult_imgs]
    x_adult = torch.cat([_pre(adult_imgs, image_size, progress, f"adults {fr}", lf, fr)
                         for fr in ADULT_FRAMINGS]
                        + [_pre(bedside, image_size, progress, f"adults bedside {fr}", lf, fr)
                           for fr in ("whole", "crop:0.7")])
    # orientation: children's films turned by 90, 180 or 270 degrees
    turns = [f"rot:{int(r)}" for r in rng.choice([90, 180, 270], len(paths[::orientation_every]))]
    x_rot = _pre(paths[::orientation_every], image_size, progress, "turned", lf, turns)
    gen, _ = negative_set(n_generated_per_kind, seed, size=224)
    x_gen = _pre(gen, image_size, progress, "generated negatives", lf)

    net = scope_net(preset)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations, pct_start=0.15)
    n_in, n_ad, n_rot = batch_size // 2, batch_size // 4, batch_size // 8
    n_gen = batch_size - n_in - n_ad - n_rot
    losses = []
    net.train()
    for it in _progress(range(iterations), iterations, "scope gate", progress):
        xb = torch.cat([x_in[torch.randint(len(x_in), (n_in,), generator=g)],
                        x_adult[torch.randint(len(x_adult), (n_ad,), generator=g)],
                        x_rot[torch.randint(len(x_rot), (n_rot,), generator=g)],
                        x_gen[torch.randint(len(x_gen), (n_gen,), generator=g)]]).float() / 255.0
        yb = torch.cat([torch.zeros(n_in), torch.ones(n_ad + n_rot + n_gen)])
        xb = augment_batch(xb, g)
        loss = F.binary_cross_entropy_with_logits(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    net.eval()
    _, f_in = _scores_and_features(net, x_in)
    mean, precision = fit_feature_stats(f_in)
    module = ScopeGateModule(net, mean, precision).eval()
    val_scores = module(x_val.float() / 255.0).detach()
    thresholds = {"probability": float(probability_threshold),
                  "distance": float(torch.quantile(val_scores[:, 1], distance_quantile))}
    info = {
        "name": "cxr_scope_gate",
        "image_size": int(image_size),
        "preset": preset,
        "thresholds": thresholds,
        "threshold_rule": f"probability > {probability_threshold:g}; distance > its {distance_quantile:g} quantile "
                          f"on the in-population validation split (training_split(dataset_dir, {val_fraction}, "
                          f"{split_seed})[1], each film whole and at a random central crop in [{min_crop:g}, 0.95], "
                          f"n={len(x_val)})",
        "max_age_years": MAX_AGE_YEARS,
        "preprocessing": "cxr_monai.transforms.classifier_preprocessing (the classifier's network input)",
        "output": "(N, 2): out-of-scope probability, Mahalanobis feature distance",
        "lung_field_sha256": file_sha256(lf) if isinstance(lf, (str, Path)) else None,
        "exposed_field": bool(exposed_field),
        "training": {"in_population": len(x_in), "adults": len(adult_train), "adult_inputs": len(x_adult),
                     "adult_framings": list(ADULT_FRAMINGS) + ["bedside_like whole", "bedside_like crop:0.7"],
                     "turned": len(x_rot), "min_crop": min_crop, "generated": len(x_gen),
                     "iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "final_loss_mean_last_50": float(np.mean(losses[-50:])),
                     "seconds": round(time.time() - t0, 1)},
        "pytorch_version": torch.__version__,
    }
    path = save_scope_gate(module, info, output_file)
    logger.info("scope gate written: %s (thresholds %s)", path, thresholds)
    report = None
    if report_file is not None:
        gate = load_scope_gate(path)
        report = scope_check_report(gate, x_val=x_val, adult_test=adult_test, image_size=image_size, seed=seed + 1,
                                    extra_checks=extra_checks, site_dir=site_dir, progress=progress, lung_field=lf,
                                    val_paths=val_paths)
        report["gate"] = {k: info[k] for k in ("thresholds", "threshold_rule", "training", "image_size", "preset")}
        Path(report_file).parent.mkdir(parents=True, exist_ok=True)
        Path(report_file).write_text(json.dumps(report, indent=1))
    return {"path": str(path), "info": info, "report": report}


def _random_crops(rng: np.random.Generator, n: int, min_crop: float) -> list[str]:
    """``n`` central-crop framings with fractions drawn uniformly in ``[min_crop, 0.95]``."""
    return [f"crop:{c:.3f}" for c in rng.uniform(min_crop, 0.95, n)]


def report_scope_gate(gate_file: str | Path, dataset_dir: str | Path, adult_dir: str | Path, report_file: str | Path,
                      lung_field: Any = None, val_fraction: float = 0.15, split_seed: int = 0, seed: int = 0,
                      min_crop: float = 0.6, extra_checks: Mapping[str, Sequence[Any]] | None = None,
                      site_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the check report of an already trained gate (what :func:`train_scope_gate` writes after training),
    for example after a change of the scope rules: the same held-out sets, the rules as they are now."""
    gate = load_scope_gate(gate_file)
    rng = np.random.default_rng(seed)
    train_items, val_items = training_split(dataset_dir, val_fraction, split_seed)
    _random_crops(rng, len(train_items), min_crop)  # the training crops come first from the same generator
    val_paths = [it["image"] for it in val_items]
    val_crops = _random_crops(rng, len(val_paths), min_crop)
    ef = bool(gate.info.get("exposed_field"))
    x_val = torch.cat([preprocess_images(val_paths, gate.image_size, progress, "validation", lung_field,
                                         exposed_field=ef),
                       preprocess_images(val_paths, gate.image_size, progress, "validation, cropped", lung_field,
                                         val_crops, exposed_field=ef)])
    _, adult_test = adult_split(Path(adult_dir))
    report = scope_check_report(gate, x_val=x_val, adult_test=adult_test, image_size=gate.image_size, seed=seed + 1,
                                extra_checks=extra_checks, site_dir=site_dir, progress=progress, lung_field=lung_field,
                                val_paths=val_paths)
    report["gate"] = {k: gate.info[k] for k in ("thresholds", "threshold_rule", "training", "image_size", "preset")}
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(json.dumps(report, indent=1))
    return report


def _rate(gate, x_uint8: torch.Tensor | tuple[torch.Tensor, list[dict]]) -> dict[str, Any]:
    """Out-of-scope counts of the image check and (with boxes) the lung-field rule on network inputs."""
    x, boxes = x_uint8 if isinstance(x_uint8, tuple) else (x_uint8, [])
    metas = [{"lung_field": b} for b in boxes] if boxes else None
    decisions = gate.check(x.float() / 255.0, metas)
    n_out = sum(not d.in_scope for d in decisions)
    by_p = sum("probability" in d.reason for d in decisions)
    by_lungs = sum(d.reason.startswith("lung field") for d in decisions)
    return {"n": len(decisions), "out_of_scope": n_out, "fraction_out_of_scope": n_out / max(1, len(decisions)),
            "refused_by_lung_field": by_lungs, "refused_by_probability": by_p,
            "refused_by_distance": n_out - by_p - by_lungs}


def scope_check_report(gate, x_val: torch.Tensor, adult_test: Sequence[Path], image_size: int, seed: int = 1,
                       extra_checks: Mapping[str, Sequence[Any]] | None = None, site_dir: str | Path | None = None,
                       progress: bool = False, lung_field: Any = None,
                       val_paths: Sequence[Any] | None = None) -> dict[str, Any]:
    """Out-of-scope rates of the image check and the lung-field rule (no header rules) on held-out sets:
    in-population validation (whole, cropped, turned), a site sample of the intended population (when given;
    whole, cropped, upside down), held-out adults at every framing, bedside-like and under each simulated
    acquisition shift, new procedural negatives by kind, and ``extra_checks``."""
    lf = lung_field

    def pre(items, desc="", framing=None):
        return preprocess_images(list(items), image_size, progress, desc, lf, framing, return_boxes=True,
                                 exposed_field=bool(gate.info.get("exposed_field")))

    report: dict[str, Any] = {"in_population_validation_whole_and_cropped_image_check_only": _rate(gate, x_val)}
    if val_paths is not None:
        report["in_population_validation"] = {fr: _rate(gate, pre(val_paths, f"validation {fr}", fr))
                                              for fr in ("whole", "crop:0.85", "crop:0.7", "crop:0.6", "crop:0.5",
                                                         "pad:1.3", "rot:10", "rot:-10", "rot:180", "rot:90")}
    if site_dir is not None and Path(site_dir).is_dir():
        items = [it["image"] for it in class_folder_datalist(site_dir)]
        report["site_sample_in_population"] = {fr: _rate(gate, pre(items, f"site sample {fr}", fr))
                                               for fr in ("whole", "crop:0.85", "crop:0.7", "crop:0.6", "rot:180")}
    adults, _ = load_images([{"image": str(p), "label": 1} for p in adult_test])
    report["adults_held_out"] = {fr: _rate(gate, pre(adults, f"adults (held out) {fr}", fr))
                                 for fr in ADULT_FRAMINGS + ("crop:0.6", "rot:180")}
    rng = np.random.default_rng(seed + 7)
    bedside = [bedside_like(a, rng) for a in adults]
    report["adults_held_out_bedside_like"] = {fr: _rate(gate, pre(bedside, f"bedside-like {fr}", fr))
                                              for fr in ("whole", "crop:0.7", "crop:0.5")}
    shifts = {"gamma_0.5": ("gamma", 0.5, {}), "gamma_2.0": ("gamma", 2.0, {}), "contrast_0.5": ("contrast", 0.5, {}),
              "lut_-4": ("lut", -4.0, {}), "lut_4": ("lut", 4.0, {}), "blur_2.25": ("blur", 2.25, {}),
              "noise_1e3": ("noise", 1e3, {"electronic_std": 2e-4, "seed": seed}), "jpeg_20": ("jpeg", 20, {}),
              "low_resolution_3": ("low_resolution", 3.0, {}), "collimation_0.1": ("collimation", 0.1, {}),
              "field_of_view_0.8": ("field_of_view", 0.8, {}), "field_of_view_1.25": ("field_of_view", 1.25, {}),
              "rotation_10": ("rotation", 10.0, {})}
    shifted = {}
    for name, (kind, value, kw) in shifts.items():
        t = make_stress_transform(kind, value, **kw)
        shifted[name] = _rate(gate, pre([np.asarray(t(a), dtype=np.float32) for a in adults]))
    report["adults_held_out_shifted"] = shifted
    report["adults_held_out_shifted_min_fraction"] = min(v["fraction_out_of_scope"] for v in shifted.values())
    gen, kinds = negative_set(20, seed + 1000, size=224)
    x_gen, b_gen = pre(gen)
    report["generated_held_out"] = {k: _rate(gate, (x_gen[idx], [b_gen[i] for i in idx]))
                                    for k in NEGATIVE_KINDS
                                    for idx in [[i for i, kk in enumerate(kinds) if kk == k]]}
    for name, items in (extra_checks or {}).items():
        report[name] = _rate(gate, pre(items))
    return report
