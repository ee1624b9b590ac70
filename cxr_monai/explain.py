"""Grad-CAM heat maps (``monai.visualize.GradCAM``) and overlay figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from monai.visualize import GradCAM
from cxr_monai.networks.blocks import SpatialAttention
from cxr_monai.networks.classifiers import ResNet18SA

__all__ = ["gradcam", "gradcam_split", "overlay_rgb", "save_overlay", "cam_mass_inside", "minmax_normalize", "max_normalize", "FeatureMapCollector", "feature_map_layers", "top_channels", "save_feature_maps"]


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


def gradcam_split(features_fn, head_fn, image: torch.Tensor, class_idx: int,
                  groups: Sequence[Sequence[int]] | None = None) -> np.ndarray:
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
        groups: for a network reading several input views (:class:`~cxr_monai.networks.ClassifierEnsemble`
            ``view_channels``), the feature channels of each view: one map per view, each from its own channels
            (the views have different geometries), all divided by the largest peak so that their strengths stay
            comparable.

    Returns:
        (N, H, W) float32 in [0, 1]; with ``groups``, (N, V, H, W).
    """
    with torch.enable_grad():
        feats = features_fn(image.detach().float()).detach().requires_grad_(True)
        logits = head_fn(feats)
        grad, = torch.autograd.grad(logits[:, int(class_idx)].sum(), feats)
    weighted = grad.mean(dim=(2, 3), keepdim=True) * feats.detach()
    if groups is None:
        cam = torch.relu(weighted.sum(dim=1, keepdim=True))
    else:
        cam = torch.cat([torch.relu(weighted[:, list(g)].sum(dim=1, keepdim=True)) for g in groups], dim=1)
    cam = torch.nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return (cam[:, 0] if groups is None else cam).cpu().numpy().astype(np.float32)


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


# ---------------------------------------------------------------------------------------------------------------
# Intermediate feature maps (forward hooks) and the per-image figure
# ---------------------------------------------------------------------------------------------------------------

STAGES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")


def feature_map_layers(net: nn.Module) -> dict[str, str]:
    """The layers :class:`FeatureMapCollector` hooks by default: for every :class:`~cxr_monai.networks.ResNet18SA`
    inside ``net`` (the network itself, or each member of a :class:`~cxr_monai.networks.ClassifierEnsemble`) its
    ``stem``, the four stages and the ``conv`` of every :class:`~cxr_monai.networks.blocks.SpatialAttention` gate.

    Returns:
        ``{dotted module name: kind}``, kind ``"stage"`` (the module's output is recorded) or ``"attention"``
        (the sigmoid of the gate's convolution, i.e. the (N, 1, h, w) attention map, is recorded).
    """

    layers: dict[str, str] = {}
    for prefix, module in net.named_modules():
        if not isinstance(module, ResNet18SA):
            continue
        dot = f"{prefix}." if prefix else ""
        layers.update({f"{dot}{s}": "stage" for s in STAGES})
        for name, sub in module.named_modules():
            if isinstance(sub, SpatialAttention):
                layers[f"{dot}{name}.conv"] = "attention"
    if not layers:
        raise ValueError(f"{type(net).__name__} holds no ResNet18SA; name the layers to hook explicitly")
    return layers


class FeatureMapCollector:
    """Record intermediate feature maps of a network with forward hooks (a context manager: the hooks are
    removed on exit, the network is left as it was).

    Example::

        with FeatureMapCollector(net) as fm:
            net(x)
        fm.maps["members.0.layer2"]  # (N, C, h, w), detached

    Args:
        net: the network (not modified; hooks only).
        layers: ``{dotted module name: "stage" | "attention"}``; default :func:`feature_map_layers`. For an
            ``"attention"`` entry the hooked module's output is passed through a sigmoid (the gate's map).
    """

    def __init__(self, net: nn.Module, layers: dict[str, str] | None = None) -> None:
        self.net = net
        self.layers = dict(feature_map_layers(net) if layers is None else layers)
        modules = dict(net.named_modules())
        missing = [n for n in self.layers if n not in modules]
        if missing:
            raise ValueError(f"no such modules in {type(net).__name__}: {missing}")
        bad = {k for k in self.layers.values()} - {"stage", "attention"}
        if bad:
            raise ValueError(f"layer kinds must be 'stage' or 'attention', got {sorted(bad)}")
        self._modules = {n: modules[n] for n in self.layers}
        self._handles: list = []
        self.maps: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        attention = self.layers[name] == "attention"

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            out = output.detach()
            self.maps[name] = (torch.sigmoid(out) if attention else out.clone()).contiguous()
            self.inputs[name] = args[0].detach().clone().contiguous()

        return hook

    def __enter__(self) -> "FeatureMapCollector":
        self.maps, self.inputs = {}, {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def collect(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass of ``x`` in eval mode (the previous mode is restored); returns :attr:`maps`."""
        was_training = self.net.training
        self.net.eval()
        try:
            with self:
                self.net(x)
        finally:
            self.net.train(was_training)
        return self.maps


def top_channels(fmap: torch.Tensor, k: int = 4) -> list[int]:
    """Indices of the ``k`` channels of one (C, h, w) map with the largest mean activation, strongest first."""
    means = fmap.detach().float().reshape(fmap.shape[0], -1).mean(dim=1)
    return [int(i) for i in torch.argsort(means, descending=True)[: min(k, fmap.shape[0])]]


def save_feature_maps(image: np.ndarray | torch.Tensor, maps: dict[str, torch.Tensor], path: str | Path,
                      cam: np.ndarray | None = None, layers: dict[str, str] | None = None, index: int = 0,
                      k: int = 4, title: str = "") -> Path:
    """One figure of a single image's feature maps: the input and its Grad-CAM in the first column, then per
    network (one column group per ensemble member, side by side) one row per stage with its ``k`` strongest
    channels (by mean activation, each map scaled to its own range) and the spatial-attention maps (0-1).

    Args:
        image: (1, H, W) or (H, W) in [0, 1].
        maps: :attr:`FeatureMapCollector.maps` of a batch holding the image.
        path: PNG to write (parents created).
        cam: (H, W) Grad-CAM in [0, 1], shown over the input (omitted when ``None``).
        layers: the collector's ``layers`` (kinds); default: names ending in ``attention.conv`` are attention.
        index: the image's index in the batch.
        k: channels per stage.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = layers or {n: ("attention" if n.endswith("attention.conv") else "stage") for n in maps}
    # group by network: the prefix before the stage name ("" for a single network, "members.i" for members)
    groups: dict[str, dict[str, list[str]]] = {}
    for name in maps:
        parts = name.split(".")
        cut = next((i for i, p in enumerate(parts) if p in STAGES), len(parts) - 1)
        prefix = ".".join(parts[:cut])
        g = groups.setdefault(prefix, {"stage": [], "attention": []})
        g[kinds.get(name, "stage")].append(name)
    n_att = max(len(g["attention"]) for g in groups.values())
    att_rows = -(-n_att // k) if n_att else 0
    n_rows = max(max(len(g["stage"]) for g in groups.values()) + att_rows, 2)
    n_cols = 1 + k * len(groups)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.35 * n_cols, 1.45 * n_rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    img = img.reshape(img.shape[-2:])
    axes[0, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=7)
    if cam is not None:
        axes[1, 0].imshow(overlay_rgb(img, cam))
        axes[1, 0].set_title("Grad-CAM", fontsize=7)
    for gi, (prefix, g) in enumerate(groups.items()):
        col0 = 1 + gi * k
        label = prefix.replace("members.", "member ") if prefix else "network"
        for r, name in enumerate(g["stage"]):
            fmap = maps[name][index].float().cpu()
            for j, c in enumerate(top_channels(fmap, k)):
                ax = axes[r, col0 + j]
                ax.imshow(fmap[c].numpy(), cmap="viridis")
                short = name[len(prefix) + 1:] if prefix else name
                ax.set_title(f"{label}: {short} ch{c}" if j == 0 else f"ch{c}", fontsize=6)
        for a, name in enumerate(g["attention"]):
            ax = axes[len(g["stage"]) + a // k, col0 + a % k]
            ax.imshow(maps[name][index, 0].float().cpu().numpy(), cmap="magma", vmin=0, vmax=1)
            short = (name[len(prefix) + 1:] if prefix else name).replace(".attention.conv", "")
            ax.set_title(f"attn {short}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
