"""Dictionary transforms of the degradation convention (:mod:`cxr_monai.transforms.degradation`): each
delegates the image work to its array transform (:mod:`~cxr_monai.transforms.degradation.array`) and handles
the keys (LR written next to HR, HR mod-cropped so that pairs stay aligned); :class:`PairedDegradationd`
makes an (LR, HR) training pair.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple

from cxr_monai.transforms.degradation.array import (BicubicUpsample, LowDoseNoise, RandLowDoseNoise,
                                                    RandSimulateLowResolution, SimulateLowResolution)
from cxr_monai.transforms.degradation.functional import (VALID_SCALES, _check_prob, _check_range, _check_scales,
                                                         _check_truncate, _copy, _log_uniform, _spatial_affine_update,
                                                         mod_crop)

__all__ = [
    "SimulateLowResolutiond",
    "SimulateLowResolutionD",
    "SimulateLowResolutionDict",
    "RandSimulateLowResolutiond",
    "RandSimulateLowResolutionD",
    "RandSimulateLowResolutionDict",
    "LowDoseNoised",
    "LowDoseNoiseD",
    "LowDoseNoiseDict",
    "RandLowDoseNoised",
    "RandLowDoseNoiseD",
    "RandLowDoseNoiseDict",
    "BicubicUpsampled",
    "BicubicUpsampleD",
    "BicubicUpsampleDict",
    "PairedDegradationd",
    "PairedDegradationD",
    "PairedDegradationDict",
]


def _per_key_names(names: str | Sequence[str] | None, n_keys: int, what: str) -> tuple[str | None, ...]:
    if names is None:
        return (None,) * n_keys
    values = ensure_tuple(names)
    if len(values) != n_keys:
        raise ValueError(f"{what} must name one output per key: {n_keys} keys, got {values!r}.")
    return values


def _crop_like(img: NdarrayOrTensor, top: int, left: int, height: int, width: int) -> NdarrayOrTensor:
    """Spatial crop of a ``(C, H, W)`` array/tensor, updating a MetaTensor's affine; returns a new object."""
    patch = img[..., top : top + height, left : left + width]
    if isinstance(patch, MetaTensor):
        patch = patch.clone()
        _spatial_affine_update(patch, (top, left), 1.0)
    elif isinstance(patch, torch.Tensor):
        patch = patch.clone()
    else:
        patch = np.array(patch, copy=True)
    return patch


# --------------------------------------------------------------------------------------------------------------
# blur + bicubic downsampling
# --------------------------------------------------------------------------------------------------------------


class SimulateLowResolutiond(MapTransform):
    """Dictionary version of :class:`SimulateLowResolution`: writes the LR image next to the HR one.

    Each HR entry is replaced by its mod-cropped version (a multiple of ``scale``, top-left kept) so that
    ``lr.shape[-2:] * scale == hr.shape[-2:]`` and the pair stays aligned.

    Args:
        keys: key(s) of the HR images.
        lr_key: key(s) to write the LR images to, one per key; None replaces the HR entries by their LR version.
        sigma: Gaussian blur standard deviation in HR pixels; 0 means no blur.
        scale: downsampling factor, one of 2, 3, 4.
        truncate: blur kernel half-width in units of sigma.
        crop_hr: crop the HR entries to the multiple of ``scale`` (keep True for aligned pairs).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = SimulateLowResolution.backend

    def __init__(
        self,
        keys: KeysCollection = "hr",
        lr_key: str | Sequence[str] | None = "lr",
        sigma: float = 1.0,
        scale: int = 4,
        truncate: float = 4.0,
        crop_hr: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lr_keys = _per_key_names(lr_key, len(self.keys), "lr_key")
        self.crop_hr = crop_hr
        self.simulate = SimulateLowResolution(sigma=sigma, scale=scale, truncate=truncate)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add the LR image(s) to a copy of ``data``."""
        d = dict(data)
        for key, lr_key in self.key_iterator(d, self.lr_keys):
            hr = d[key]
            lr = self.simulate(hr)
            if self.crop_hr and lr_key is not None:
                d[key] = mod_crop(hr, self.simulate.scale)
            d[key if lr_key is None else lr_key] = lr
        return d


class RandSimulateLowResolutiond(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandSimulateLowResolution`; all keys share one draw of sigma and scale.

    HR entries are mod-cropped to the drawn scale. When the transform is not applied, ``lr`` is a copy of ``hr``
    (scale 1, no blur).

    Args:
        keys: key(s) of the HR images.
        lr_key: key(s) to write the LR images to, one per key; None replaces the HR entries.
        sigma_range: ``(low, high)`` range of the blur sigma in HR pixels (a number fixes it).
        scales: candidate downsampling factors (subset of 2, 3, 4).
        prob: probability of applying the degradation.
        truncate: blur kernel half-width in units of sigma.
        crop_hr: crop the HR entries to the multiple of the drawn scale.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = SimulateLowResolution.backend

    def __init__(
        self,
        keys: KeysCollection = "hr",
        lr_key: str | Sequence[str] | None = "lr",
        sigma_range: float | Sequence[float] = (0.5, 1.5),
        scales: int | Sequence[int] = VALID_SCALES,
        prob: float = 1.0,
        truncate: float = 4.0,
        crop_hr: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.lr_keys = _per_key_names(lr_key, len(self.keys), "lr_key")
        self.crop_hr = crop_hr
        self.rand_simulate = RandSimulateLowResolution(sigma_range, scales, prob=1.0, truncate=truncate)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSimulateLowResolutiond:
        """Seed this transform and its array delegate."""
        super().set_random_state(seed, state)
        self.rand_simulate.set_random_state(seed, state)
        return self

    def randomize(self, data: Any | None = None) -> None:
        """Decide whether to apply the transform and draw the shared sigma and scale."""
        super().randomize(None)
        if self._do_transform:
            self.rand_simulate.randomize()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add the LR image(s) to a copy of ``data``."""
        d = dict(data)
        self.randomize()
        for key, lr_key in self.key_iterator(d, self.lr_keys):
            hr = d[key]
            if not self._do_transform:
                if lr_key is not None:
                    d[lr_key] = _copy(hr)
                continue
            lr = self.rand_simulate(hr, randomize=False)
            if self.crop_hr and lr_key is not None:
                d[key] = mod_crop(hr, self.rand_simulate.scale)
            d[key if lr_key is None else lr_key] = lr
        return d


# --------------------------------------------------------------------------------------------------------------
# low-dose noise
# --------------------------------------------------------------------------------------------------------------


class LowDoseNoised(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`LowDoseNoise`; each key gets its own noise realisation.

    Args:
        keys: key(s) of the images to make noisy.
        dose: expected photon count at intensity 1; None means no quantum noise.
        sigma_e: standard deviation of the additive electronic noise.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = LowDoseNoise.backend

    def __init__(
        self, keys: KeysCollection, dose: float | None = 1000.0, sigma_e: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.low_dose_noise = LowDoseNoise(dose=dose, sigma_e=sigma_e)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> LowDoseNoised:
        """Seed this transform and its array delegate."""
        super().set_random_state(seed, state)
        self.low_dose_noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with noisy images."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.low_dose_noise(d[key])
        return d


class RandLowDoseNoised(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandLowDoseNoise`: one draw of dose and sigma_e per call, shared by all keys;
    each key gets its own noise realisation.

    Args:
        keys: key(s) of the images to make noisy.
        dose_range: ``(low, high)`` expected photon count at intensity 1 (log-uniform).
        sigma_e_range: ``(low, high)`` electronic noise standard deviation (uniform).
        prob: probability of adding noise.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = LowDoseNoise.backend

    def __init__(
        self,
        keys: KeysCollection,
        dose_range: float | Sequence[float] = (500.0, 5000.0),
        sigma_e_range: float | Sequence[float] = (0.0, 0.01),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.rand_low_dose_noise = RandLowDoseNoise(dose_range, sigma_e_range, prob=1.0)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandLowDoseNoised:
        """Seed this transform and its array delegate."""
        super().set_random_state(seed, state)
        self.rand_low_dose_noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with noisy images (or unchanged when not applied)."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        delegate = self.rand_low_dose_noise
        first = True
        for key in self.key_iterator(d):
            if first:
                delegate.randomize(d[key])  # draws dose and sigma_e, then this key's noise
                first = False
            else:
                delegate.low_dose_noise.randomize(d[key])  # same dose and sigma_e, new realisation
            d[key] = delegate.low_dose_noise(d[key], randomize=False)
        return d


# --------------------------------------------------------------------------------------------------------------
# bicubic baseline
# --------------------------------------------------------------------------------------------------------------


class BicubicUpsampled(MapTransform):
    """Dictionary version of :class:`BicubicUpsample`.

    Args:
        keys: key(s) of the LR images.
        scale: positive integer upsampling factor.
        output_key: key(s) to write the upsampled images to, one per key; None replaces the inputs.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = BicubicUpsample.backend

    def __init__(
        self,
        keys: KeysCollection = "lr",
        scale: int = 4,
        output_key: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = _per_key_names(output_key, len(self.keys), "output_key")
        self.upsample = BicubicUpsample(scale)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with the upsampled image(s)."""
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[key if out_key is None else out_key] = self.upsample(d[key])
        return d


# --------------------------------------------------------------------------------------------------------------
# paired degradation for SR training
# --------------------------------------------------------------------------------------------------------------


class PairedDegradationd(RandomizableTransform, MapTransform):
    """Make an aligned (LR, HR) training pair from one HR image.

    Steps: (1) optionally crop a random HR patch of ``patch_size`` (uniform position; the whole image,
    mod-cropped to the scale, when ``patch_size`` is None); (2) degrade the patch with
    :func:`simulate_low_resolution` (reflect-padded blur + antialiased bicubic, the README's SR convention);
    (3) optionally add low-dose noise to the LR image (:class:`LowDoseNoise`), clamped to [0, 1].
    Degrading the returned ``hr`` with the drawn sigma and scale gives the returned ``lr`` exactly (before noise).

    Ranges: ``sigma``, ``dose`` and ``sigma_e`` accept a number (fixed) or a ``(low, high)`` pair drawn per call
    (sigma and sigma_e uniform, dose log-uniform); ``scale`` accepts one factor or a sequence drawn uniformly, in
    which case ``patch_size`` must be a multiple of every candidate. The draws are kept in ``self.params`` and, when
    ``params_key`` is given, written to the dictionary as floats (``dose`` = inf when there is no quantum noise) so
    that a DataLoader can collate them.

    Args:
        hr_key: key of the HR image ``(C, H, W)`` in [0, 1]; replaced by the (cropped) HR patch.
        lr_key: key to write the LR image to.
        sigma: blur standard deviation in HR pixels, or a ``(low, high)`` range; 0 means no blur.
        scale: downsampling factor (2, 3 or 4) or a sequence of candidates.
        dose: expected photon count at intensity 1 for the LR noise, a ``(low, high)`` range, or None for no noise.
        sigma_e: electronic noise standard deviation on the LR image, or a ``(low, high)`` range.
        patch_size: HR patch size (int or ``(h, w)``), a multiple of the scale(s); None keeps the whole image.
        truncate: blur kernel half-width in units of sigma.
        params_key: optional key to write the drawn parameters to (dict of floats).
        allow_missing_keys: don't raise an exception if ``hr_key`` is missing.
    """

    backend = SimulateLowResolution.backend

    def __init__(
        self,
        hr_key: str = "hr",
        lr_key: str = "lr",
        sigma: float | Sequence[float] = 1.0,
        scale: int | Sequence[int] = 4,
        dose: float | Sequence[float] | None = None,
        sigma_e: float | Sequence[float] = 0.0,
        patch_size: int | Sequence[int] | None = None,
        truncate: float = 4.0,
        params_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, hr_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.hr_key = hr_key
        self.lr_key = lr_key
        self.sigma_range = _check_range(sigma, "sigma", low=0.0)
        self.scales = _check_scales(scale)
        self.dose_range = None if dose is None else _check_range(dose, "dose", low=0.0, strict=True)
        self.sigma_e_range = _check_range(sigma_e, "sigma_e", low=0.0)
        self.truncate = _check_truncate(truncate)
        self.params_key = params_key
        self.patch_size: tuple[int, int] | None = None
        if patch_size is not None:
            size = tuple(int(v) for v in ensure_tuple(patch_size))
            size = size * 2 if len(size) == 1 else size
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"patch_size must be a positive int or an (h, w) pair, got {patch_size!r}.")
            bad = [s for s in self.scales if size[0] % s or size[1] % s]
            if bad:
                raise ValueError(f"patch_size {size} must be a multiple of every scale, not of {bad}.")
            self.patch_size = (size[0], size[1])
        self.simulate = SimulateLowResolution(sigma=self.sigma_range[0], scale=self.scales[0], truncate=self.truncate)
        self.noise = LowDoseNoise(dose=None, sigma_e=0.0)
        self.params: dict[str, float] = {}
        self._origin: tuple[int, int] = (0, 0)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> PairedDegradationd:
        """Seed this transform and its noise delegate."""
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:  # type: ignore[override]
        """Draw sigma, scale, dose, sigma_e and the patch origin for an HR image of ``spatial_shape`` ``(H, W)``."""
        super().randomize(None)
        sigma = float(self.R.uniform(*self.sigma_range))
        scale = int(self.scales[self.R.randint(len(self.scales))])
        dose = None
        if self.dose_range is not None:
            dose = _log_uniform(self.R, *self.dose_range)
        sigma_e = float(self.R.uniform(*self.sigma_e_range))
        height, width = int(spatial_shape[0]), int(spatial_shape[1])
        if self.patch_size is None:
            top = left = 0
        else:
            ph, pw = self.patch_size
            if ph > height or pw > width:
                raise ValueError(f"HR image {height}x{width} is smaller than patch_size {ph}x{pw}.")
            top = int(self.R.randint(height - ph + 1))
            left = int(self.R.randint(width - pw + 1))
        self._origin = (top, left)
        self.params = {
            "sigma": sigma,
            "scale": float(scale),
            "dose": math.inf if dose is None else dose,
            "sigma_e": sigma_e,
            "top": float(top),
            "left": float(left),
        }
        self.noise.dose = dose
        self.noise.sigma_e = sigma_e

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with ``hr_key`` replaced by the HR patch and ``lr_key`` added."""
        d = dict(data)
        if self.hr_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"key {self.hr_key!r} not found in the data.")
        hr = d[self.hr_key]
        self.randomize(hr.shape[-2:])
        scale = int(self.params["scale"])
        if self.patch_size is None:
            hr = mod_crop(hr, scale)
        else:
            hr = _crop_like(hr, *self._origin, *self.patch_size)
        self.simulate.sigma, self.simulate.scale = self.params["sigma"], scale
        lr = self.simulate(hr)
        if self.noise.dose is not None or self.noise.sigma_e > 0:
            lr = self.noise(lr)
        d[self.hr_key] = hr
        d[self.lr_key] = lr
        if self.params_key is not None:
            d[self.params_key] = dict(self.params)
        return d


SimulateLowResolutionD = SimulateLowResolutionDict = SimulateLowResolutiond
RandSimulateLowResolutionD = RandSimulateLowResolutionDict = RandSimulateLowResolutiond
LowDoseNoiseD = LowDoseNoiseDict = LowDoseNoised
RandLowDoseNoiseD = RandLowDoseNoiseDict = RandLowDoseNoised
BicubicUpsampleD = BicubicUpsampleDict = BicubicUpsampled
PairedDegradationD = PairedDegradationDict = PairedDegradationd
