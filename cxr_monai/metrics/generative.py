"""Offline metrics for generated radiographs: feature-based FID/KID/MMD, k-NN precision/recall,
nearest-real SSIM (memorisation) and the DCGAN seed's SSIM/MSE and discriminator figures.

Inception weights cannot be downloaded here, so the feature-based metrics run on features of the
project's own trained CXR classifier (or any injected extractor: a module or callable mapping
(N, 1, H, W) in [0, 1] to (N, C)). :class:`ClassifierFeatures` resizes images to the extractor's input
size and applies the classifier's intensity normalisation, so generated and real images of any size are
embedded in the same way. Numbers from different extractors are not comparable with each other or with
Inception-FID values in the literature.

SSIM convention (the README's SR results): data range 1, 11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03, valid
filtering (no border padding), mean over the map.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_monai.networks.features import ClassifierFeatureWrapper
from cxr_monai.reference_network import REFERENCE_CONFIG, REFERENCE_WEIGHTS, load_reference_network

__all__ = [
    "ClassifierFeatures",
    "classifier_feature_extractor",
    "extract_features",
    "fid",
    "kid",
    "mmd",
    "knn_precision_recall",
    "gaussian_window",
    "ssim_pairs",
    "nearest_real_ssim",
    "paired_ssim_mse",
    "discriminator_report",
    "generative_report",
    "stack_images",
]


class ClassifierFeatures(ClassifierFeatureWrapper):
    """Wrap a classifier as a feature extractor: resize -> (optional) percentile normalise -> pooled features.

    A preset of :class:`~cxr_monai.networks.ClassifierFeatureWrapper` (``output="pooled"``).

    Args:
        network: the classifier; ``method`` must exist on it (``features`` for :class:`ResNet18SA`) or, with
            ``method=None``, the network itself maps images to (N, C).
        input_size: side the network expects (224 for the Kermany classifier); ``None`` keeps the size.
        method: name of the pooled-feature method, or ``None`` to call the network.
        normalise: apply the classifier's 1st-99th percentile intensity normalisation after resizing.
        freeze: freeze the network and keep it in eval mode (the reference network loaded by
            :func:`classifier_feature_extractor` is always frozen).
    """

    def __init__(self, network: nn.Module | Callable, input_size: int | None = 224, method: str | None = "features",
                 normalise: bool = True, freeze: bool = False) -> None:
        super().__init__(network, output="pooled", method=method, input_size=input_size, normalise=normalise,
                         freeze=freeze)


@torch.no_grad()
def class_fidelity(images: torch.Tensor, labels: torch.Tensor, extractor: ClassifierFeatureWrapper,
                   class_names: Sequence[str], batch_size: int = 64) -> dict[str, float]:
    """Share of the images of each class that the wrapped classifier assigns to that class (argmax).

    For generated images this says whether the class conditioning works (a "NORMAL" sample the classifier
    calls PNEUMONIA does not balance anything); computed on real images it is the reference.

    Raises:
        ValueError: the extractor does not wrap a classifier with one logit per class.
    """
    if not isinstance(extractor, ClassifierFeatureWrapper) or extractor.method is None:
        raise ValueError("class_fidelity needs a ClassifierFeatures extractor around a classifier")
    extractor.eval()
    logits = torch.cat([extractor.logits(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(f"classifier gives {tuple(logits.shape[1:])} logits for {len(class_names)} classes")
    pred = logits.argmax(1).cpu()
    return {name: float((pred[labels == c] == c).float().mean()) for c, name in enumerate(class_names)
            if (labels == c).any()}


def classifier_feature_extractor(bundle_root: str | Path | None = None, weights_name: str = REFERENCE_WEIGHTS,
                                 input_size: int = 224, allow_untrained: bool = False,
                                 seed: int = 0, overrides: dict | None = None,
                                 config: str = REFERENCE_CONFIG) -> ClassifierFeatures:
    """The project's frozen reference pneumonia classifier (``bundles/cxr_pneumonia_classifier``,
    ``models/feature_extractor.pt`` defined by ``configs/feature_extractor.json``), loaded by
    :func:`cxr_monai.reference_network.load_reference_network`, as a frozen :class:`ClassifierFeatures`.

    Args:
        bundle_root: classifier bundle folder (required; the package never guesses where bundles live).
        weights_name: weights file under ``models/``.
        config: the config under ``configs/`` whose ``network_def`` matches the weights.
        input_size: the classifier's input side.
        allow_untrained: when the weights are missing, fall back to a randomly initialised (seeded)
            ResNet18SA-lite instead of raising; only for tests: random features make weak metrics.
        seed: seed of that fallback.
        overrides: classifier config overrides, e.g. ``{"network_preset": "mnist"}`` with
            ``weights_name="model_mnist28.pt"`` and ``input_size=28`` for the PneumoniaMNIST model.

    Raises:
        ValueError: ``bundle_root`` is ``None``.
        FileNotFoundError: weights missing and ``allow_untrained`` is False.
    """
    net = load_reference_network(bundle_root, weights_name, config=config, overrides=overrides,
                                 allow_untrained=allow_untrained, seed=seed)
    return ClassifierFeatures(net, input_size=input_size, freeze=True).eval()


@torch.no_grad()
def extract_features(images: torch.Tensor, extractor: nn.Module | Callable, batch_size: int = 64) -> torch.Tensor:
    """(N, C) float64 features of (N, 1, H, W) images, computed in batches without gradients."""
    if isinstance(extractor, nn.Module):
        extractor.eval()
    feats = [torch.as_tensor(extractor(images[i : i + batch_size])).double().cpu()
             for i in range(0, images.shape[0], batch_size)]
    return torch.cat(feats)


def fid(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of two feature sets (MONAI :class:`FIDMetric`)."""
    from monai.metrics import FIDMetric

    return float(FIDMetric()(fake_features.double(), real_features.double()))


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3`` (KID)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.mean())


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance on the given features: mean and std of the unbiased polynomial-kernel MMD^2
    over ``num_subsets`` random subsets of ``min(subset_size, len(real), len(fake))`` samples each."""
    if num_subsets < 1:
        raise ValueError("num_subsets must be >= 1")
    m = min(subset_size, real_features.shape[0], fake_features.shape[0])
    if m < 2:
        raise ValueError("KID needs at least two samples in each set")
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(num_subsets):
        ri = torch.randperm(real_features.shape[0], generator=gen)[:m]
        fi = torch.randperm(fake_features.shape[0], generator=gen)[:m]
        vals.append(_poly_mmd2(real_features[ri].double(), fake_features[fi].double()))
    v = torch.stack(vals)
    return float(v.mean()), float(v.std()) if num_subsets > 1 else 0.0


def mmd(real_features: torch.Tensor, fake_features: torch.Tensor, seed: int = 0) -> float:
    """Unbiased linear-kernel MMD^2 (MONAI :class:`MMDMetric`): the squared distance between feature means,
    with features centred on the real mean and scaled by the real features' RMS spread (so 1.0 means the
    means differ by one typical real-to-mean distance). The larger set is randomly subsampled to the size of
    the smaller one (MONAI needs equal counts)."""
    from monai.metrics import MMDMetric

    n = min(real_features.shape[0], fake_features.shape[0])
    gen = torch.Generator().manual_seed(seed)
    r = real_features[torch.randperm(real_features.shape[0], generator=gen)[:n]].double()
    f = fake_features[torch.randperm(fake_features.shape[0], generator=gen)[:n]].double()
    mu = r.mean(0, keepdim=True)
    scale = (r - mu).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)  # real features' RMS distance to their mean
    return float(MMDMetric()((r - mu) / scale, (f - mu) / scale))


def knn_precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019): precision = share of fakes inside the k-NN
    ball of some real sample (fidelity); recall = share of reals inside the k-NN ball of some fake (diversity)."""
    if k < 1:
        raise ValueError("k must be >= 1")

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(min(k + 1, x.shape[0]), dim=1).values  # +1: the point itself is at distance 0

    r, f = real_features.double(), fake_features.double()
    d_fr = torch.cdist(f, r)
    precision = (d_fr <= radii(r)[None, :]).any(dim=1).double().mean()
    recall = (d_fr.T <= radii(f)[None, :]).any(dim=1).double().mean()
    return float(precision), float(recall)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1-D normalised Gaussian window (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filtering of (N, 1, H, W)."""
    k = w.to(x.dtype)
    x = F.conv2d(x, k.reshape(1, 1, 1, -1))
    return F.conv2d(x, k.reshape(1, 1, -1, 1))


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
               k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM of each pair ``(a[i], b[i])`` of (N, 1, H, W) images: (N,) values (project convention)."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"need two (N, 1, H, W) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    w = gaussian_window(win_size, sigma)
    a, b = a.double(), b.double()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _blur(a, w), _blur(b, w)
    saa = _blur(a * a, w) - mu_a**2
    sbb = _blur(b * b, w) - mu_b**2
    sab = _blur(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean(dim=(1, 2, 3))


@torch.no_grad()
def nearest_real_ssim(fake: torch.Tensor, real: torch.Tensor, candidates: int = 32,
                      batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each generated image, the highest SSIM to any real image and that real image's index.

    Exact SSIM against every real image is costly (N_fake x N_real filtered maps), so each fake is first
    matched to its ``candidates`` nearest reals by pixel L2 distance and, separately, by Pearson
    correlation; the exact SSIM is then taken over the union. ``candidates >= len(real)`` is exhaustive.

    Args:
        fake: (N, 1, H, W) generated images in [0, 1].
        real: (M, 1, H, W) real images in [0, 1], same H, W.
        candidates: pre-selected reals per fake, per criterion.
        batch_size: SSIM pairs per batch.

    Returns:
        ``(max_ssim (N,), index (N,))``.
    """
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"fake {tuple(fake.shape)} and real {tuple(real.shape)} images differ in size")
    ff, rf = fake.reshape(fake.shape[0], -1).double(), real.reshape(real.shape[0], -1).double()
    k = min(candidates, rf.shape[0])
    idx_l2 = torch.cdist(ff, rf).topk(k, dim=1, largest=False).indices
    fz = (ff - ff.mean(1, keepdim=True)) / ff.std(1, keepdim=True).clamp_min(1e-8)
    rz = (rf - rf.mean(1, keepdim=True)) / rf.std(1, keepdim=True).clamp_min(1e-8)
    idx_corr = (fz @ rz.T).topk(k, dim=1).indices
    cand = torch.cat([idx_l2, idx_corr], dim=1)
    fi = torch.arange(fake.shape[0]).repeat_interleave(cand.shape[1])
    ri = cand.reshape(-1)
    vals = torch.cat([ssim_pairs(fake[fi[i : i + batch_size]], real[ri[i : i + batch_size]])
                      for i in range(0, fi.numel(), batch_size)]).reshape(cand.shape)
    best, pos = vals.max(dim=1)
    return best.float(), cand.gather(1, pos[:, None]).squeeze(1)


def paired_ssim_mse(fake: torch.Tensor, real: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """The DCGAN seed's figures: mean SSIM and mean MSE (intensities in [0, 1]) between each generated
    image and a randomly drawn real image (with replacement). Low SSIM here is expected and not a flaw:
    two different radiographs are not pixel-aligned."""
    gen = torch.Generator().manual_seed(seed)
    ri = torch.randint(0, real.shape[0], (fake.shape[0],), generator=gen)
    r = real[ri].double()
    return float(ssim_pairs(fake.double(), r).mean()), float(((fake.double() - r) ** 2).mean())


def discriminator_report(real_logits: torch.Tensor, fake_logits: torch.Tensor, threshold: float = 0.0) -> dict:
    """Real-vs-fake classification by the discriminator ("real" is the positive class), as the seed reports:
    accuracy, precision, recall. ``threshold`` on logits (0 = probability 0.5; also the hinge boundary)."""
    pred = torch.cat([real_logits.flatten(), fake_logits.flatten()]) > threshold
    truth = torch.cat([torch.ones(real_logits.numel()), torch.zeros(fake_logits.numel())]).bool()
    tp = float((pred & truth).sum())
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    return {"d_accuracy": float((pred == truth).double().mean()), "d_precision": precision, "d_recall": recall}


def generative_report(fake: torch.Tensor, real: torch.Tensor, extractor: nn.Module | Callable | None,
                      memorisation_threshold: float = 0.95, knn_k: int = 3, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, nearest_candidates: int = 32, seed: int = 0,
                      batch_size: int = 64, real_features: torch.Tensor | None = None,
                      fake_features: torch.Tensor | None = None) -> dict:
    """All metrics of one set of generated images against one set of real images (same size, [0, 1]).

    Args:
        fake: (N, 1, H, W) generated images.
        real: (M, 1, H, W) real images (resized to the generated size by the caller).
        extractor: feature extractor for FID/KID/MMD/precision/recall (``None`` skips them).
        memorisation_threshold: a sample counts as memorised when its nearest real SSIM exceeds this.
        knn_k: k of the k-NN precision/recall.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size.
        nearest_candidates: pre-selected reals per fake for the nearest-real SSIM.
        seed: seed of the random pairings/subsets.
        batch_size: feature-extraction batch size.
        real_features: features of ``real`` already computed with ``extractor`` (skips that pass).
        fake_features: features of ``fake`` already computed with ``extractor``.
    """
    out: dict[str, Any] = {"num_generated": int(fake.shape[0]), "num_real": int(real.shape[0])}
    for name, images, feats in (("real", real, real_features), ("fake", fake, fake_features)):
        if feats is not None and feats.shape[0] != images.shape[0]:
            raise ValueError(f"{name}_features has {feats.shape[0]} rows for {images.shape[0]} images")
    if extractor is not None:
        fr = real_features if real_features is not None else extract_features(real, extractor, batch_size)
        ff = fake_features if fake_features is not None else extract_features(fake, extractor, batch_size)
        out["fid"] = fid(fr, ff)
        out["kid_mean"], out["kid_std"] = kid(fr, ff, kid_subsets, kid_subset_size, seed)
        out["mmd"] = mmd(fr, ff, seed)
        out["knn_precision"], out["knn_recall"] = knn_precision_recall(fr, ff, knn_k)
    best, _ = nearest_real_ssim(fake, real, nearest_candidates)
    out["nearest_real_ssim_mean"] = float(best.mean())
    out["nearest_real_ssim_max"] = float(best.max())
    out["memorised_share"] = float((best > memorisation_threshold).float().mean())
    out["memorisation_threshold"] = memorisation_threshold
    out["seed_ssim_random_pair"], out["seed_mse_random_pair"] = paired_ssim_mse(fake, real, seed)
    return out


def stack_images(dataset: Sequence[dict] | Any, key: str = "image", label_key: str = "label",
                 max_items: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the (1, H, W) images and integer labels of a (MONAI) dataset of dicts into tensors."""
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    items = [dataset[i] for i in range(n)]
    def plain(x: Any) -> torch.Tensor:
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)  # MetaTensor -> Tensor
        return x.float().reshape(1, *x.shape[-2:])

    images = torch.stack([plain(it[key]) for it in items])
    labels = torch.as_tensor([int(it.get(label_key, 0)) for it in items], dtype=torch.long)
    return images, labels


def class_matched_indices(real_labels: torch.Tensor, target_labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Indices of the largest random subset of the real images whose class proportions equal those of
    ``target_labels`` (e.g. the generated images' classes).

    Pooled (all-class) metrics compare two mixtures; when the generated set is class-balanced and the real set
    is not (Kermany: 26 % NORMAL), the class ratio alone moves FID/KID, and a generator that makes every class
    look like the majority class scores better. Subsampling the real images to the generated mix removes that.

    Raises:
        ValueError: ``target_labels`` holds a class with no real image.
    """
    real_labels, target_labels = torch.as_tensor(real_labels).long(), torch.as_tensor(target_labels).long()
    classes, counts = target_labels.unique(return_counts=True)
    share = counts.double() / counts.sum()
    available = torch.stack([(real_labels == c).sum() for c in classes]).double()
    if bool((available == 0).any()):
        raise ValueError(f"no real image of class(es) {classes[available == 0].tolist()}")
    total = float((available / share).min())  # the scarcest class (relative to its share) sets the size
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c, sh in zip(classes.tolist(), share.tolist()):
        idx = torch.nonzero(real_labels == c).flatten()
        n = min(idx.numel(), max(1, int(round(total * sh))))
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:n]])
    return torch.cat(picked).sort().values
