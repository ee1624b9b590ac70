"""Pneumonia classifiers: ResNet-18 with spatial attention (ResNet18SA) and the seed baselines.

Presets follow the timm pattern: one configurable class and thin typed factories
(:func:`resnet18_sa`, :func:`densenet121`, :func:`resnet`, :func:`pneumonia_cnn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .blocks import SpatialAttention

__all__ = [
    "SABasicBlock",
    "ResNet18SA",
    "resnet18_sa",
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled (N, num_features) embedding (for FID/KID/MMD)."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


_SA_PRESETS: dict[str, dict] = {
    # 2.8 M parameters: trains on a 2-core CPU; the shipped 224 model.
    "lite": {"widths": (32, 64, 128, 256)},
    # standard ResNet-18 widths, 11.2 M parameters (GPU users).
    "full": {"widths": (64, 128, 256, 512)},
    # for 28x28 PneumoniaMNIST: no stem down-sampling.
    "mnist": {"widths": (32, 64, 128, 256), "stem_stride": 1, "stem_pool": False},
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
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **kwargs)
    return load_local_weights(net, pretrained_path)


def resnet(depth: int = 18, in_channels: int = 1, num_classes: int = 2,
           pretrained_path: str | Path | None = None, **kwargs) -> nn.Module:
    """MONAI ResNet baseline (18 or 50) with the standard stride-2 stem (MONAI defaults to stride 1,
    which costs about 4x the compute)."""
    from monai.networks.nets import resnet18 as _r18
    from monai.networks.nets import resnet50 as _r50

    factories = {18: _r18, 50: _r50}
    if depth not in factories:
        raise ValueError(f"depth must be 18 or 50, got {depth}")
    kwargs.setdefault("conv1_t_stride", 2)
    net = factories[depth](spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
    return load_local_weights(net, pretrained_path)
