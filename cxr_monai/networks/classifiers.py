"""Pneumonia classifiers: ResNet-18 with spatial attention (ResNet18SA) and the seed baselines.

Presets follow the timm pattern: one configurable class and thin typed factories
(:func:`resnet18_sa`, :func:`densenet121`, :func:`resnet`, :func:`pneumonia_cnn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SpatialAttention
from monai.networks.nets import DenseNet121
from monai.networks.nets import resnet18 as _r18
from monai.networks.nets import resnet50 as _r50

__all__ = [
    "SABasicBlock",
    "ResNet18SA",
    "resnet18_sa",
    "ClassifierEnsemble",
    "classifier_ensemble",
    "PneumoniaCNN",
    "pneumonia_cnn",
    "densenet121",
    "resnet",
    "load_local_weights",
]


def load_local_weights(model: nn.Module, path: str | Path | None, strict: bool = True) -> nn.Module:
    """Load a state dict from a local file into ``model`` (never from a URL). ``None`` leaves it as is.

    Accepts a bare state dict or a checkpoint dict holding one under ``model``/``state_dict``/``network``.
    """
    if path is None:
        return model
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "network"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    model.load_state_dict(state, strict=strict)
    return model


class SABasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a spatial attention gate on the residual branch.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first convolution (2 halves the resolution).
        attention: put :class:`SpatialAttention` on the residual branch before the addition.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, attention: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.attention = SpatialAttention(7) if attention else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class ResNet18SA(nn.Module):
    """ResNet-18 with spatial attention inside every residual block, for single-channel radiographs.

    Topology: 7x7/2 stem, 3x3/2 max-pool, four stages of two :class:`SABasicBlock` each (strides 1, 2, 2, 2),
    global average pooling, dropout, linear head. Input (N, in_channels, H, W) in [0, 1]; output logits
    (N, num_classes). Any H, W >= 32 works.

    Args:
        in_channels: input channels (1 for CXR).
        num_classes: output classes (2: NORMAL, PNEUMONIA).
        widths: channels of the four stages; (64, 128, 256, 512) is the standard ResNet-18.
        blocks: residual blocks per stage.
        attention: spatial attention in every block (``False`` gives a plain ResNet-18, for ablation).
        dropout: dropout before the linear head.
        stem_stride: stride of the stem convolution (2 as in ResNet; 1 for tiny inputs such as 28x28).
        stem_pool: keep the stem max-pool (drop it for tiny inputs).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        attention: bool = True,
        dropout: float = 0.2,
        stem_stride: int = 2,
        stem_pool: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"widths and blocks need 4 stages, got {widths} and {blocks}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError("in_channels and num_classes must be positive")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stem_stride, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity(),
        )
        layers, in_ch = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = [SABasicBlock(in_ch, w, 1 if i == 0 else 2, attention)]
            stage += [SABasicBlock(w, w, 1, attention) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            in_ch = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # start each residual branch near identity
            if isinstance(m, SABasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after the stem and after each of the four stages (for perceptual losses)."""
        maps = [self.stem(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            maps.append(layer(maps[-1]))
        return maps

    @torch.jit.export
    def cam_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature maps (N, C, h, w): the layer Grad-CAM explains."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    @torch.jit.export
    def cam_head(self, f: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) from :meth:`cam_features`."""
        return self.fc(self.dropout(torch.flatten(self.pool(f), 1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled (N, num_features) embedding (for FID/KID/MMD)."""
        return torch.flatten(self.pool(self.cam_features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_head(self.cam_features(x))


_SA_PRESETS: dict[str, dict] = {
    # 2.8 M parameters: trains on a 2-core CPU; the shipped 224 model.
    "lite": {"widths": (32, 64, 128, 256)},
    # standard ResNet-18 widths, 11.2 M parameters (GPU users).
    "full": {"widths": (64, 128, 256, 512)},
    # for 28x28 PneumoniaMNIST: no stem down-sampling.
    "mnist": {"widths": (32, 64, 128, 256), "stem_stride": 1, "stem_pool": False},
    # 1.6 M parameters: ensemble members (three fit in one 19 MB file); at 160 px a training step takes about
    # 0.4x the lite model's at 224 px, and three members infer in about the lite 224 model's time.
    "slim": {"widths": (24, 48, 96, 192)},
    "mnist_slim": {"widths": (24, 48, 96, 192), "stem_stride": 1, "stem_pool": False},
}


def resnet18_sa(preset: str = "lite", pretrained_path: str | Path | None = None, **kwargs) -> ResNet18SA:
    """ResNet18SA preset: ``lite`` (widths 32-256), ``full`` (64-512) or ``mnist`` (28x28 inputs).

    Args:
        preset: one of ``lite``, ``full``, ``mnist``.
        pretrained_path: optional local state-dict file (no download is ever attempted).
        kwargs: override any :class:`ResNet18SA` argument.
    """
    if preset not in _SA_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(_SA_PRESETS)}")
    return load_local_weights(ResNet18SA(**{**_SA_PRESETS[preset], **kwargs}), pretrained_path)


class ClassifierEnsemble(nn.Module):
    """Members of the same architecture, each with its own calibration, as one module whose output is the
    log of the mean calibrated probability.

    ``forward(x)`` returns ``log(mean_k softmax(z_k / T_k + b_k))`` (N, num_classes), so ``softmax`` of the
    output is exactly the mean of the members' calibrated probabilities and everything that treats the
    output as logits (evaluation, temperature 1, Grad-CAM) works unchanged. ``cam_features`` concatenates
    the members' last feature maps along the channels and ``cam_head`` maps them back, so Grad-CAM of the
    ensemble is the gradient-weighted sum over all members' channels.

    Args:
        members: trained classifiers with ``cam_features``/``cam_head`` (e.g. :class:`ResNet18SA`) and the
            same feature-map size.
        temperatures: one calibration temperature (> 0) per member (default 1).
        biases: one additive bias of the positive-class logit per member (default 0).
        input_blur: side of a fixed box low-pass filter (reflect padding) applied to the input before every
            member; 0 (default) for none, else an odd size >= 3. Part of the weights: a non-zero filter is a
            state-dict entry (``input_kernel``), so weights saved with a filter do not load into an ensemble
            built without it, nor the other way round.
        views: the input channel (view) each member reads (default: all read channel 0, a one-view input). A
            two-view input ``(N, 2, S, S)`` carries the whole film and its lung-field view
            (:func:`cxr_monai.transforms.classifier_preprocessing` ``views``); members trained on either read
            theirs. Part of the weights when any member reads a channel other than 0 (``member_views``).
    """

    def __init__(self, members: Sequence[nn.Module], temperatures: Sequence[float] | None = None,
                 biases: Sequence[float] | None = None, input_blur: int = 0,
                 views: Sequence[int] | None = None) -> None:
        super().__init__()
        input_blur = int(input_blur)
        if input_blur != 0 and (input_blur < 3 or input_blur % 2 == 0):
            raise ValueError(f"input_blur must be 0 or an odd size >= 3, got {input_blur}")
        self.input_blur = input_blur
        side = max(input_blur, 1)
        self.register_buffer("input_kernel", torch.full((1, 1, side, side), 1.0 / (side * side)),
                             persistent=input_blur > 0)
        k = len(members)
        if k < 1:
            raise ValueError("an ensemble needs at least one member")
        temperatures = [1.0] * k if temperatures is None else [float(t) for t in temperatures]
        biases = [0.0] * k if biases is None else [float(b) for b in biases]
        if len(temperatures) != k or len(biases) != k:
            raise ValueError(f"need one temperature and one bias per member ({k}), got {len(temperatures)} and {len(biases)}")
        if not all(t > 0 for t in temperatures):
            raise ValueError(f"temperatures must be > 0, got {temperatures}")
        views = [0] * k if views is None else [int(v) for v in views]
        if len(views) != k or min(views) < 0:
            raise ValueError(f"need one view index >= 0 per member ({k}), got {views}")
        self.views = views
        self.in_channels = max(views) + 1
        self.register_buffer("member_views", torch.tensor(views, dtype=torch.long), persistent=max(views) > 0)
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        self.register_buffer("biases", torch.tensor(biases, dtype=torch.float32))
        self.channels = [int(getattr(m, "num_features")) for m in members]

    @torch.jit.export
    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of each member, (K, N, num_classes)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected an input with {self.in_channels} view channel(s), got {x.shape[1]}")
        x = self.low_pass(x)
        out: list[torch.Tensor] = []
        for i, m in enumerate(self.members):
            v = self.views[i]
            out.append(self._calibrated(m.cam_head(m.cam_features(x[:, v:v + 1])), i).softmax(dim=1))
        return torch.stack(out)

    @torch.jit.export
    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The input filter (identity when ``input_blur`` is 0)."""
        if self.input_blur == 0:
            return x
        p = self.input_blur // 2
        k = self.input_kernel.to(dtype=x.dtype).expand(x.shape[1], 1, self.input_blur, self.input_blur)
        return F.conv2d(F.pad(x, [p, p, p, p], mode="reflect"), k, groups=x.shape[1])

    def _calibrated(self, z: torch.Tensor, i: int) -> torch.Tensor:
        z = z / self.temperatures[i]
        shift = torch.zeros_like(z[:1])
        shift[:, -1] = self.biases[i]
        return z + shift

    @torch.jit.export
    def cam_features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' last feature maps, concatenated along the channels (N, sum C_k, h, w)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected an input with {self.in_channels} view channel(s) (N, {self.in_channels}, S, S), "
                             f"got {x.shape[1]}: preprocess with the views of the classifier's calibration")
        x = self.low_pass(x)
        feats: list[torch.Tensor] = []
        for i, m in enumerate(self.members):
            v = self.views[i]
            feats.append(m.cam_features(x[:, v:v + 1]))
        return torch.cat(feats, dim=1)

    def view_channels(self) -> list[list[int]]:
        """For each input view, the channels of :meth:`cam_features` that its members produce (Grad-CAM maps
        each view's evidence back to the film through that view's own geometry)."""
        groups: list[list[int]] = [[] for _ in range(self.in_channels)]
        start = 0
        for v, c in zip(self.views, self.channels):
            groups[v].extend(range(start, start + c))
            start += c
        return groups

    @torch.jit.export
    def cam_head(self, f: torch.Tensor) -> torch.Tensor:
        """``log`` of the mean calibrated probability (N, num_classes) from :meth:`cam_features`."""
        parts = torch.split(f, self.channels, dim=1)
        probs: list[torch.Tensor] = []
        for i, m in enumerate(self.members):
            probs.append(self._calibrated(m.cam_head(parts[i]), i).softmax(dim=1))
        return torch.log(torch.stack(probs).mean(dim=0).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_head(self.cam_features(x))


def classifier_ensemble(preset: str = "slim", members: int = 3, input_blur: int = 0,
                        views: Sequence[int] | None = None, **kwargs) -> ClassifierEnsemble:
    """``members`` :func:`resnet18_sa` networks of one preset as a :class:`ClassifierEnsemble` with identity
    calibration (load the trained state dict, which carries the members' temperatures and biases, after).

    Args:
        preset: the members' :func:`resnet18_sa` preset.
        members: number of members (>= 1).
        input_blur: the ensemble's input filter (:class:`ClassifierEnsemble`; 0: none).
        views: the input view each member reads (:class:`ClassifierEnsemble`; ``None``: one view).
        kwargs: override any :class:`ResNet18SA` argument of every member.
    """
    if int(members) < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    return ClassifierEnsemble([resnet18_sa(preset, **kwargs) for _ in range(int(members))], input_blur=input_blur,
                              views=views)


class PneumoniaCNN(nn.Module):
    """The custom CNN of the pneumonia MRP seed: five 3x3 conv blocks (Conv-BN-ReLU, max-pool, dropout),
    then a dense head. Designed for 128x128 inputs (works for any size >= 32 thanks to adaptive pooling).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        widths: channels of the five blocks.
        dropout: dropout between blocks.
        hidden: width of the dense layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (32, 64, 64, 128, 256),
        dropout: float = 0.2,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for w in widths:
            layers += [nn.Conv2d(ch, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2), nn.Dropout(dropout)]
            ch = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)))


def pneumonia_cnn(**kwargs) -> PneumoniaCNN:
    """The MRP seed's custom CNN (128x128 input)."""
    return PneumoniaCNN(**kwargs)


def densenet121(in_channels: int = 1, num_classes: int = 2, pretrained_path: str | Path | None = None,
                **kwargs) -> nn.Module:
    """MONAI DenseNet121 baseline (2D, trained from scratch, or a local weights file)."""

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **kwargs)
    return load_local_weights(net, pretrained_path)


def resnet(depth: int = 18, in_channels: int = 1, num_classes: int = 2,
           pretrained_path: str | Path | None = None, **kwargs) -> nn.Module:
    """MONAI ResNet baseline (18 or 50) with the standard stride-2 stem (MONAI defaults to stride 1,
    which costs about 4x the compute)."""

    factories = {18: _r18, 50: _r50}
    if depth not in factories:
        raise ValueError(f"depth must be 18 or 50, got {depth}")
    kwargs.setdefault("conv1_t_stride", 2)
    net = factories[depth](spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
    return load_local_weights(net, pretrained_path)
