"""Perceptual loss with an injectable feature extractor.

No ImageNet weights can be downloaded here, so the default extractor is the project's frozen reference CXR
classifier (``bundles/cxr_pneumonia_classifier`` ``models/feature_extractor.pt``, its
:meth:`~cxr_monai.networks.ResNet18SA.feature_maps` through :class:`~cxr_monai.networks.ClassifierFeatureWrapper`); a
VGG19 (ESRGAN's ``conv5_4``, Real-ESRGAN's ``conv1_2``..``conv5_4``) can be used instead when a user has its
weights as a local file (torchvision layout: ``features.<i>.weight``). Any module or callable that maps an
(N, 1, H, W) image in [0, 1] to a list of feature maps can be injected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxr_monai.networks.features import ClassifierFeatureWrapper, freeze_module
from cxr_monai.reference_network import REFERENCE_CONFIG, REFERENCE_WEIGHTS, load_reference_network

__all__ = [
    "ClassifierFeatureExtractor",
    "VGG19FeatureExtractor",
    "PerceptualLoss",
    "classifier_feature_extractor",
]

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]

# VGG19 "features" layout: (name, conv in, conv out) per conv; "M" = max-pool
_VGG19_CFG: list[tuple[str, int, int] | str] = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "M",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "M",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "M",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512), "M",
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512), "M",
]


class ClassifierFeatureExtractor(ClassifierFeatureWrapper):
    """Frozen feature maps of a classifier that exposes ``feature_maps(x) -> list[Tensor]``.

    A preset of :class:`~cxr_monai.networks.ClassifierFeatureWrapper` (``output="maps"``, ``freeze=True``, no
    resizing or normalisation, so gradients reach the input).

    Args:
        network: e.g. a trained :class:`~cxr_monai.networks.ResNet18SA` (frozen and put in eval mode here).
        layers: indices into ``network.feature_maps(x)`` to return (ResNet18SA: 0 = stem, 1..4 = stages).

    Raises:
        ValueError: the network has no ``feature_maps`` method, or ``layers`` is empty.
    """

    def __init__(self, network: nn.Module, layers: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__(network, output="maps", layers=layers, freeze=True)


def classifier_feature_extractor(
    bundle_root: str | Path = "bundles/cxr_pneumonia_classifier",
    weights_name: str = REFERENCE_WEIGHTS,
    layers: Sequence[int] = (1, 2, 3),
    config: str = REFERENCE_CONFIG,
) -> ClassifierFeatureExtractor:
    """The default extractor: the classifier bundle's frozen reference network (``models/<weights_name>``,
    defined by ``configs/<config>``; not the shipped ensemble, so the loss does not change with it), loaded by
    :func:`cxr_monai.reference_network.load_reference_network`.

    Raises ``FileNotFoundError`` when the weights are absent: a randomly initialised extractor is never used.

    Args:
        bundle_root: folder of the classifier bundle.
        weights_name: weights file under ``models/``.
        layers: feature-map indices (see :class:`ClassifierFeatureExtractor`).
        config: the config under ``configs/`` whose ``network_def`` matches the weights.
    """
    return ClassifierFeatureExtractor(load_reference_network(bundle_root, weights_name, config=config), layers)


class VGG19FeatureExtractor(nn.Module):
    """VGG19 conv features (pre-activation, as ESRGAN) from a LOCAL weights file; never downloads.

    The single-channel input is repeated to RGB and normalised with the ImageNet mean/std.

    Args:
        weights_path: local file with a torchvision-layout VGG19 state dict (``features.<i>.weight/bias``).
        layers: layer names to return, e.g. ``("conv5_4",)`` (ESRGAN) or
            ``("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")`` (Real-ESRGAN).
        use_input_norm: apply ImageNet normalisation.
    """

    def __init__(
        self, weights_path: str | Path, layers: Sequence[str] = ("conv5_4",), use_input_norm: bool = True
    ) -> None:
        super().__init__()
        names = [c[0] for c in _VGG19_CFG if isinstance(c, tuple)]
        unknown = [n for n in layers if n not in names]
        if unknown or not layers:
            raise ValueError(f"unknown or empty VGG19 layers {list(layers)}; choose from {names}.")
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: VGG19 weights file not found (no download is attempted).")
        last = max(names.index(n) for n in layers)
        modules: list[nn.Module] = []
        self._taps: dict[int, str] = {}
        conv_i = 0
        for item in _VGG19_CFG:
            if conv_i > last:
                break
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
                continue
            name, cin, cout = item  # type: ignore[misc]
            modules.append(nn.Conv2d(cin, cout, 3, 1, 1))
            if name in layers:
                self._taps[len(modules) - 1] = name
            modules.append(nn.ReLU(inplace=False))
            conv_i += 1
        self.features = nn.Sequential(*modules)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        own = self.features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"{path}: not a VGG19 state dict (missing {missing[:3]}...).")
        self.features.load_state_dict({k: state[k] for k in own})
        freeze_module(self.features)
        self.layers = tuple(layers)
        self.use_input_norm = use_input_norm
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return [out[n] for n in self.layers]


class PerceptualLoss(nn.Module):
    """Weighted distance between feature maps of the prediction and of the target.

    Args:
        extractor: module or callable mapping (N, 1, H, W) in [0, 1] to a list of feature maps (frozen by the
            caller; its parameters are not optimised because only the generator's optimiser steps).
        layer_weights: one weight per returned map (default: all 1).
        criterion: ``"l1"`` (ESRGAN, Real-ESRGAN) or ``"l2"``.
        weight: overall multiplier.
    """

    def __init__(
        self,
        extractor: nn.Module | FeatureFn,
        layer_weights: Sequence[float] | None = None,
        criterion: str = "l1",
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if criterion not in ("l1", "l2"):
            raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}.")
        if not callable(extractor):
            raise TypeError("extractor must be callable.")
        self.extractor = extractor
        self.layer_weights = None if layer_weights is None else tuple(float(w) for w in layer_weights)
        self.criterion = criterion
        self.weight = float(weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_p = list(self.extractor(pred))
        with torch.no_grad():
            feats_t = list(self.extractor(target.detach()))
        weights = self.layer_weights or (1.0,) * len(feats_p)
        if len(weights) != len(feats_p):
            raise ValueError(f"{len(weights)} layer weights for {len(feats_p)} feature maps.")
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        loss = sum(w * dist(p, t) for w, p, t in zip(weights, feats_p, feats_t))
        return self.weight * loss
