"""Grad-CAM heat maps (``monai.visualize.GradCAM``) and overlay figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["gradcam", "gradcam_split", "overlay_rgb", "save_overlay", "cam_mass_inside", "minmax_normalize", "max_normalize"]


def gradcam(net: nn.Module, image: torch.Tensor, target_layer: str, class_idx: int | None = 1,
            normalize: str = "minmax") -> np.ndarray:
    """Grad-CAM of ``class_idx`` (default PNEUMONIA) for a batch, upsampled to the input size.

    Args:
        net: the classifier (put in eval mode by the caller).
        image: (N, 1, H, W) tensor.
        target_layer: dotted name of the layer to explain (``layer4`` for :class:`ResNet18SA`).
        class_idx: class to explain; ``None`` explains the arg-max class.
        normalize: ``"minmax"`` (each map to its full [0, 1] range) or ``"max"`` (divided by its maximum:
            zero stays "no evidence", a map without positive evidence stays zero instead of being stretched).

    Returns:
        (N, H, W) float32 maps in [0, 1], 1 where the evidence for ``class_idx`` is strongest.

    Note:
        MONAI's default post-processing (``monai.visualize.class_activation_maps.default_normalizer``) maps
        (min, max) to (1, 0), i.e. it *flips* the map (Project-MONAI/tutorials#1796); :func:`minmax_normalize`
        is used instead so that high values mean high importance.
    """
    from monai.visualize import GradCAM

    # MONAI registers forward/backward hooks on the target layer and keeps no handle to remove them: without
    # this clean-up every call (one per request in a server) adds two hooks and keeps a graph alive.
    before = {id(m): (set(m._forward_hooks), set(m._backward_hooks)) for m in net.modules()}
    try:
        if normalize not in ("minmax", "max"):
            raise ValueError(f"normalize must be 'minmax' or 'max', got {normalize!r}")
        post = minmax_normalize if normalize == "minmax" else max_normalize
        cam = GradCAM(nn_module=net, target_layers=target_layer, postprocessing=post)
        with torch.enable_grad():
            maps = cam(x=image.detach().float().clone().requires_grad_(True), class_idx=class_idx)
    finally:
        for m in net.modules():
            fwd, bwd = before.get(id(m), (set(), set()))
            for k in set(m._forward_hooks) - fwd:
                del m._forward_hooks[k]
            for k in set(m._backward_hooks) - bwd:
                del m._backward_hooks[k]
    return maps[:, 0].detach().cpu().numpy().astype(np.float32)


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch (N, ...) linearly to [0, 1] (min to 0, max to 1); constant maps become 0."""
    flat = maps.detach().reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def max_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Divide each (non-negative) map of a batch (N, ...) by its maximum; all-zero maps stay zero."""
    flat = maps.detach().reshape(maps.shape[0], -1).float().clamp_min(0)
    peak = flat.max(dim=1, keepdim=True).values
    out = torch.where(peak > 0, flat / peak.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def cam_mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the Grad-CAM mass (sum of the map) that falls inside a binary mask."""
    cam = np.asarray(cam, dtype=np.float64)
    total = cam.sum()
    return float(cam[np.asarray(mask, bool)].sum() / total) if total > 0 else 0.0


def save_overlay(image: np.ndarray | torch.Tensor, cam: np.ndarray, path: str | Path, title: str = "",
                 alpha: float = 0.4) -> Path:
    """Save the radiograph beside its Grad-CAM overlay as one PNG.

    Args:
        image: (1, H, W) or (H, W) in [0, 1].
        cam: (H, W) map in [0, 1].
        path: PNG to write (parents created).
        title: figure title (e.g. ``PNEUMONIA p=0.93``).
        alpha: opacity of the heat map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    img = img.reshape(img.shape[-2:])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.7), dpi=110)
    for ax in axes:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    axes[1].imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    axes[0].set_title("input")
    axes[1].set_title("Grad-CAM")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def gradcam_split(features_fn, head_fn, image: torch.Tensor, class_idx: int) -> np.ndarray:
    """Grad-CAM from a network split at the explained layer (works on TorchScript modules, which take
    no hooks): ``A = features_fn(x)``, ``y = head_fn(A)``, weights = spatial mean of ``dy_c / dA``,
    map = ``ReLU(sum_k w_k A_k)`` upsampled bilinearly to the input size.

    Normalisation: each map is divided by its maximum (0 stays "no evidence"; a map with no positive
    evidence stays all zero instead of being stretched to full range).

    Args:
        features_fn: ``x -> A`` (N, C, h, w), e.g. ``CalibratedClassifier.cam_features``.
        head_fn: ``A -> logits`` (N, K), e.g. ``CalibratedClassifier.cam_head``.
        image: (N, 1, H, W) network input.
        class_idx: the class to explain (the predicted one, for an explanation of the decision).

    Returns:
        (N, H, W) float32 in [0, 1].
    """
    with torch.enable_grad():
        feats = features_fn(image.detach().float()).detach().requires_grad_(True)
        logits = head_fn(feats)
        grad, = torch.autograd.grad(logits[:, int(class_idx)].sum(), feats)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return cam[:, 0].cpu().numpy().astype(np.float32)


def overlay_rgb(image: np.ndarray | torch.Tensor, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The radiograph with its Grad-CAM blended in the ``jet`` colour map, as (H, W, 3) uint8 RGB
    (``cam`` is resized to the image when their sizes differ)."""
    from matplotlib import colormaps

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    img = np.clip(img.reshape(img.shape[-2:]), 0.0, 1.0)
    cam_t = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    if cam_t.shape[-2:] != img.shape:
        cam_t = torch.nn.functional.interpolate(cam_t, size=img.shape, mode="bilinear", align_corners=False)
    heat = colormaps["jet"](np.clip(cam_t[0, 0].numpy(), 0.0, 1.0))[..., :3]
    a = alpha * np.clip(cam_t[0, 0].numpy(), 0.0, 1.0)[..., None] ** 0.5
    rgb = (1 - a) * img[..., None] + a * heat
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
