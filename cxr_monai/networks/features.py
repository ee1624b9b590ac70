"""One wrapper that turns a classifier into a feature extractor, for the perceptual loss and the generative metrics.

:class:`ClassifierFeatureWrapper` optionally resizes a batch to the classifier's input side and applies the
classifier's own intensity step (:class:`cxr_monai.transforms.PercentileNormalize`), then returns either the
classifier's multi-layer feature maps (``output="maps"``, via ``network.feature_maps``; what
:class:`~cxr_monai.losses.PerceptualLoss` compares) or its pooled features (``output="pooled"``, via
``network.features``; what FID/KID/precision/recall embed). With ``freeze=True`` the network's parameters stop
requiring gradients and it stays in eval mode whatever ``train()`` is called with.

``cxr_monai.losses.ClassifierFeatureExtractor`` and ``cxr_monai.metrics.generative.ClassifierFeatures`` are thin
presets of this class; ``cxr_monai.reference_network.load_reference_network`` loads the frozen reference network
they wrap by default. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierFeatureWrapper", "freeze_module", "percentile_normalise_batch"]

_OUTPUTS = ("pooled", "maps")
_DEFAULT_METHOD = {"pooled": "features", "maps": "feature_maps"}


def freeze_module(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode and stop its parameters from requiring gradients (in place; returns it)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def percentile_normalise_batch(x: torch.Tensor, lower: float = 1.0, upper: float = 99.0) -> torch.Tensor:
    """Each image of an (N, C, H, W) batch through :class:`cxr_monai.transforms.PercentileNormalize`.

    The transform is applied image by image because it takes the percentiles over the whole array it is
    given (a batch would be normalised jointly). It computes them with numpy, so the result carries no gradient
    back to ``x``. Returned on ``x``'s device, in ``x``'s dtype.
    """
    from cxr_monai.transforms import PercentileNormalize

    norm = PercentileNormalize(lower, upper)
    return torch.stack([torch.as_tensor(norm(xi)) for xi in x]).to(x.device, x.dtype)


class ClassifierFeatureWrapper(nn.Module):
    """A classifier as a feature extractor: float32 -> (optional) resize -> (optional) percentile normalise ->
    feature maps or pooled features.

    Args:
        network: the classifier (e.g. :class:`~cxr_monai.networks.ResNet18SA`), or any module or callable.
        output: ``"pooled"``: ``(N, C)`` features (the method's output flattened from dim 1);
            ``"maps"``: a list of the feature maps selected by ``layers``.
        layers: ``"maps"`` only: indices into the method's list of maps (ResNet18SA: 0 = stem, 1..4 = stages);
            ``None`` returns all maps.
        method: name of the network method to call; ``"auto"`` picks ``features`` (pooled) or ``feature_maps``
            (maps); ``None`` calls the network itself.
        input_size: side the network expects; batches of another size are resized (bilinear, anti-aliased when
            shrinking); ``None`` keeps the size.
        normalise: apply the classifier's ``percentiles`` intensity normalisation (after resizing) to each
            image; not differentiable w.r.t. the input (see :func:`percentile_normalise_batch`), so leave it off
            where gradients must reach the input (a perceptual loss).
        freeze: freeze the network (eval mode, no parameter gradients) and keep it in eval mode.
        percentiles: ``(lower, upper)`` percentiles mapped to [0, 1] by the normalisation.

    Raises:
        ValueError: unknown ``output``, missing method, empty or misplaced ``layers``, ``input_size < 8``.
    """

    def __init__(
        self,
        network: nn.Module | Callable,
        output: str = "pooled",
        layers: Sequence[int] | None = None,
        method: str | None = "auto",
        input_size: int | None = None,
        normalise: bool = False,
        freeze: bool = False,
        percentiles: tuple[float, float] = (1.0, 99.0),
    ) -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        if method == "auto":
            method = _DEFAULT_METHOD[output]
        if method is not None and not callable(getattr(network, method, None)):
            raise ValueError(f"{type(network).__name__} has no method {method!r} to extract features with")
        if method is None and not callable(network):
            raise ValueError(f"{type(network).__name__} is not callable")
        if layers is not None:
            if output != "maps":
                raise ValueError("layers select feature maps: use them with output='maps'")
            if len(layers) == 0:
                raise ValueError("layers must not be empty")
        if input_size is not None and input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {input_size}")
        lower, upper = (float(p) for p in percentiles)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100 percentiles, got {percentiles}")
        self.freeze = bool(freeze)
        self.network = freeze_module(network) if self.freeze and isinstance(network, nn.Module) else network
        self.output = output
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self.method = method
        self.input_size = input_size
        self.normalise = bool(normalise)
        self.percentiles = (lower, upper)

    def train(self, mode: bool = True) -> ClassifierFeatureWrapper:
        """Set the training mode; a frozen network stays in eval mode."""
        super().train(mode)
        if self.freeze and isinstance(self.network, nn.Module):
            self.network.eval()
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as the classifier expects it: float32, resized, (optionally) percentile normalised."""
        x = x.float()
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            down = x.shape[-1] > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=down)
        return percentile_normalise_batch(x, *self.percentiles) if self.normalise else x

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.prepare(x)
        fn = getattr(self.network, self.method) if self.method is not None else self.network
        out = fn(x)
        if self.output == "pooled":
            return torch.flatten(out, 1)
        maps = list(out)
        return maps if self.layers is None else [maps[i] for i in self.layers]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the wrapped classifier (its ``forward``) on the prepared batch."""
        return self.network(self.prepare(x))
