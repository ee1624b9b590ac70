"""What the stress transforms (:mod:`cxr_monai.transforms.stress`) share: the argument checks, the type
handling (numpy / Tensor / MetaTensor in, the same family out, float32), the base of the array transforms
(identity at the neutral argument) and the base of the dictionary transforms (delegate to the array transform).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from cxr_monai.transforms.degradation.functional import _copy

__all__ = ["DEFAULT_LOG_RANGE"]

DEFAULT_LOG_RANGE: float = math.log(100.0)
"""Natural-log transmission range spanned by the stored [0, 1] values (two decades)."""


# --------------------------------------------------------------------------------------------------------------
# argument checks and type handling
# --------------------------------------------------------------------------------------------------------------


def _finite(value: float, name: str) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    return value


def _positive(value: float, name: str) -> float:
    value = _finite(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return value


def _non_negative(value: float, name: str) -> float:
    value = _finite(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def _unit(value: float, name: str) -> float:
    value = _finite(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return value


def _tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """Plain float32 torch tensor (no metadata) of ``img``, checked to be ``(..., H, W)``."""
    t = convert_to_tensor(img, track_meta=False)
    if t.ndim < 2:
        raise ValueError(f"stress transforms need an image (..., H, W), got shape {tuple(t.shape)}.")
    return t.to(torch.float32)


def _back(out: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``out`` (float32) in the type family and on the device of ``img``."""
    dtype = np.float32 if isinstance(img, np.ndarray) else torch.float32
    return convert_to_dst_type(out.to(torch.float32), dst=img, dtype=dtype)[0]


def _as_4d(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.reshape(-1, 1, *x.shape[-2:]), tuple(x.shape)


def _resize(x4: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(N, 1, h, w)``; antialiased when shrinking, ``align_corners=False``."""
    if tuple(x4.shape[-2:]) == tuple(size):
        return x4
    shrink = size[0] < x4.shape[-2] or size[1] < x4.shape[-1]
    return F.interpolate(x4, size=size, mode=mode, align_corners=False, antialias=shrink)


# --------------------------------------------------------------------------------------------------------------
# the bases of the array and dictionary transforms
# --------------------------------------------------------------------------------------------------------------


class _StressTransform(Transform):
    """Base of the array transforms: identity (a copy) at the neutral argument, else :meth:`_apply`."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def is_identity(self) -> bool:
        """Whether this transform, as configured, returns its input unchanged."""
        raise NotImplementedError

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Apply the shift to ``img`` ``(C, H, W)`` in [0, 1]; returns the same type family, float32."""
        if self.is_identity():
            return _copy(img)
        return _back(self._apply(_tensor(img)), img)


class _Delegated(MapTransform):
    """Base of the dictionary transforms: apply ``self.transform`` to every key."""

    transform: Callable[[NdarrayOrTensor], NdarrayOrTensor]

    def __init__(self, keys: KeysCollection, transform: Transform, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
