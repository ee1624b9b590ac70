"""The intended-population gate's network: a small CNN that tells in-population paediatric frontal chest
radiographs from everything else, plus the feature statistics of its in-population training images.

:class:`ScopeNet` reads exactly the classifier's network input (the one classifier preprocessing, any
square size) and returns one logit (> 0: out of scope) and a feature vector. :class:`ScopeGateModule`
wraps a trained :class:`ScopeNet` with the Mahalanobis statistics of its in-population features and
returns, per image, the out-of-scope probability and the feature distance: the two scores the gate
thresholds (:mod:`cxr_monai.scope`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ScopeNet", "ScopeGateModule", "scope_net"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ScopeNet(nn.Module):
    """Binary in-scope / out-of-scope CNN.

    Args:
        widths: channels of the stride-2 stages (each halves the side).
        in_channels: input channels (1: the grey network input).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 128), in_channels: int = 1) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must not be empty")
        stages = []
        c = in_channels
        for w in widths:
            stages.append(_block(c, int(w)))
            c = int(w)
        self.body = nn.Sequential(*stages)
        self.feature_dim = c
        self.head = nn.Linear(c, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features (N, feature_dim)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Out-of-scope logit (N,)."""
        return self.head(self.features(x)).squeeze(1)


def scope_net(preset: str = "small") -> ScopeNet:
    """Presets: ``"small"`` (16-128 channels, about 0.6 M parameters), ``"tiny"`` (8-64, for tests)."""
    presets = {"small": (16, 32, 64, 128, 128), "tiny": (8, 16, 32, 64)}
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(presets)}")
    return ScopeNet(presets[preset])


class ScopeGateModule(nn.Module):
    """A trained :class:`ScopeNet` with the mean and precision (inverse covariance) of its features on the
    in-population training images.

    ``forward(x) -> (N, 2)``: column 0 the out-of-scope probability (sigmoid of the logit), column 1 the
    Mahalanobis distance of the features from the in-population mean.

    Args:
        net: the trained network.
        mean: (D,) feature mean of the in-population images.
        precision: (D, D) inverse of their (shrunk) feature covariance.
    """

    def __init__(self, net: ScopeNet, mean: torch.Tensor, precision: torch.Tensor) -> None:
        super().__init__()
        d = net.feature_dim
        if tuple(mean.shape) != (d,) or tuple(precision.shape) != (d, d):
            raise ValueError(f"mean must be ({d},) and precision ({d}, {d}); got {tuple(mean.shape)}, "
                             f"{tuple(precision.shape)}")
        self.net = net
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("precision", precision.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.features(x)
        p = torch.sigmoid(self.net.head(f).squeeze(1))
        d = f - self.mean
        dist = torch.sqrt(torch.clamp((d @ self.precision * d).sum(dim=1), min=0.0))
        return torch.stack([p, dist], dim=1)
