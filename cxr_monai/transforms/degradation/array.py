"""Array transforms of the degradation convention (:mod:`cxr_monai.transforms.degradation`): blur + bicubic
downsampling, low-dose noise and the bicubic baseline, on one ``(C, H, W)`` image. Their dictionary versions
(:mod:`~cxr_monai.transforms.degradation.dictionary`) delegate to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

from cxr_monai.transforms.degradation.functional import (VALID_SCALES, _as_float_tensor, _check_dose, _check_prob,
                                                         _check_range, _check_scale, _check_scales, _check_sigma,
                                                         _check_sigma_e, _check_truncate, _log_uniform,
                                                         _spatial_affine_update, _to_input_type, bicubic_upsample,
                                                         simulate_low_resolution)

__all__ = [
    "SimulateLowResolution",
    "RandSimulateLowResolution",
    "LowDoseNoise",
    "RandLowDoseNoise",
    "BicubicUpsample",
]


def _degrade(img: NdarrayOrTensor, sigma: float, scale: int, truncate: float) -> NdarrayOrTensor:
    out = simulate_low_resolution(_as_float_tensor(img), sigma, scale, truncate)
    out = _to_input_type(out, img)
    _spatial_affine_update(out, (0.0, 0.0), float(scale))
    return out


# --------------------------------------------------------------------------------------------------------------
# blur + bicubic downsampling
# --------------------------------------------------------------------------------------------------------------


class SimulateLowResolution(Transform):
    """Simulate a low-resolution acquisition: reflect-padded Gaussian blur, then antialiased bicubic downsampling.

    The HR input is first cropped (top-left kept) to a multiple of ``scale``; the output is
    ``(C, H // scale, W // scale)`` clamped to [0, 1]. A MetaTensor keeps its metadata with the affine updated to
    the new pixel size.

    Args:
        sigma: Gaussian blur standard deviation in HR pixels (optical PSF); 0 means no blur.
        scale: downsampling factor, one of 2, 3, 4.
        truncate: blur kernel half-width in units of sigma (radius ``ceil(truncate * sigma)``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, sigma: float = 1.0, scale: int = 4, truncate: float = 4.0) -> None:
        self.sigma = _check_sigma(sigma)
        self.scale = _check_scale(scale)
        self.truncate = _check_truncate(truncate)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Degrade ``img`` ``(C, H, W)``; returns the same type family."""
        return _degrade(img, self.sigma, self.scale, self.truncate)


class RandSimulateLowResolution(RandomizableTransform):
    """:class:`SimulateLowResolution` with a random blur sigma (uniform in ``sigma_range``) and scale (from ``scales``).

    When the transform is not applied (probability ``1 - prob``) the input is returned unchanged, at full size.
    The values drawn last are in ``self.sigma`` and ``self.scale``.

    Args:
        sigma_range: ``(low, high)`` range of the blur sigma in HR pixels (a number fixes it).
        scales: candidate downsampling factors (subset of 2, 3, 4), drawn uniformly.
        prob: probability of applying the degradation.
        truncate: blur kernel half-width in units of sigma.
    """

    backend = SimulateLowResolution.backend

    def __init__(
        self,
        sigma_range: float | Sequence[float] = (0.5, 1.5),
        scales: int | Sequence[int] = VALID_SCALES,
        prob: float = 1.0,
        truncate: float = 4.0,
    ) -> None:
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.sigma_range = _check_range(sigma_range, "sigma_range", low=0.0)
        self.scales = _check_scales(scales)
        self.truncate = _check_truncate(truncate)
        self.sigma = self.sigma_range[0]
        self.scale = self.scales[0]

    def randomize(self, data: Any | None = None) -> None:
        """Decide whether to apply the transform and draw ``sigma`` and ``scale``."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.sigma = float(self.R.uniform(*self.sigma_range))
        self.scale = int(self.scales[self.R.randint(len(self.scales))])

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Degrade ``img`` ``(C, H, W)`` with freshly drawn (or, with ``randomize=False``, the last) parameters."""
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        return _degrade(img, self.sigma, self.scale, self.truncate)


# --------------------------------------------------------------------------------------------------------------
# low-dose noise
# --------------------------------------------------------------------------------------------------------------


class LowDoseNoise(RandomizableTransform):
    """Low-dose noise: signal-dependent Poisson (quantum) noise plus additive Gaussian (electronic) noise.

    ``x_noisy = clamp(Poisson(x * dose) / dose + N(0, sigma_e^2), 0, 1)``, so on a flat region of intensity ``x``
    the variance is ``x / dose + sigma_e^2`` (before clamping) and the mean is unchanged.

    Physics note: in a real radiograph the quanta are counted on the *transmitted* signal, before the logarithm
    and the display look-up table, so the true noise is largest where the display is brightest-attenuating
    (bone, mediastinum). Here, as in the low-dose robustness study, the Poisson model is applied to the *display*
    intensity in [0, 1]: a simple, monotone, signal-dependent stand-in, not a dose simulation in mGy.

    The noise realisation is the random part: :meth:`randomize` draws it for a given image (from ``self.R``; seed
    with :meth:`set_random_state`); ``__call__(img, randomize=False)`` reuses the last draw.

    Args:
        dose: expected photon count at intensity 1 (lower = noisier); None (or inf) means no quantum noise.
        sigma_e: standard deviation of the additive electronic noise, in intensity units; 0 means none.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, dose: float | None = 1000.0, sigma_e: float = 0.0) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        self.dose = _check_dose(dose)
        self.sigma_e = _check_sigma_e(sigma_e)
        self.noise: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:  # type: ignore[override]
        """Draw the additive noise field ``noisy(img) - clamp(img, 0, 1)`` for ``img``."""
        super().randomize(None)
        x = np.clip(convert_to_numpy(img, dtype=np.float64), 0.0, 1.0)
        noise = np.zeros_like(x)
        if self.dose is not None:
            noise += self.R.poisson(x * self.dose) / self.dose - x
        if self.sigma_e > 0:
            noise += self.R.normal(0.0, self.sigma_e, size=x.shape)
        self.noise = noise.astype(np.float32)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Add noise to ``img``; returns the same type family, clamped to [0, 1]."""
        if randomize:
            self.randomize(img)
        if self.noise is None or tuple(self.noise.shape) != tuple(img.shape):
            raise RuntimeError("call randomize(img) with an image of this shape first.")
        x = _as_float_tensor(img)
        noise = torch.as_tensor(self.noise, device=x.device).to(x.dtype)
        return _to_input_type((x.clamp(0.0, 1.0) + noise).clamp(0.0, 1.0), img)


class RandLowDoseNoise(RandomizableTransform):
    """:class:`LowDoseNoise` with a random dose and electronic noise level, applied with probability ``prob``.

    The dose is drawn log-uniformly in ``dose_range`` (it is a scale: 500 to 5000 photons covers a decade evenly),
    ``sigma_e`` uniformly in ``sigma_e_range``. The last draw is in ``self.dose`` / ``self.sigma_e``.

    Args:
        dose_range: ``(low, high)`` expected photon count at intensity 1, both > 0 (a number fixes it).
        sigma_e_range: ``(low, high)`` electronic noise standard deviation, both >= 0 (a number fixes it).
        prob: probability of adding noise.
    """

    backend = LowDoseNoise.backend

    def __init__(
        self,
        dose_range: float | Sequence[float] = (500.0, 5000.0),
        sigma_e_range: float | Sequence[float] = (0.0, 0.01),
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.dose_range = _check_range(dose_range, "dose_range", low=0.0, strict=True)
        self.sigma_e_range = _check_range(sigma_e_range, "sigma_e_range", low=0.0)
        self.low_dose_noise = LowDoseNoise(dose=self.dose_range[0], sigma_e=self.sigma_e_range[0])

    @property
    def dose(self) -> float | None:
        """The dose used by the last draw."""
        return self.low_dose_noise.dose

    @property
    def sigma_e(self) -> float:
        """The electronic noise level used by the last draw."""
        return self.low_dose_noise.sigma_e

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandLowDoseNoise:
        """Seed this transform and its delegate."""
        super().set_random_state(seed, state)
        self.low_dose_noise.set_random_state(seed, state)
        return self

    def randomize(self, img: NdarrayOrTensor) -> None:  # type: ignore[override]
        """Decide whether to apply the transform, draw dose and sigma_e, then the noise field for ``img``."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.low_dose_noise.dose = _log_uniform(self.R, *self.dose_range)
        self.low_dose_noise.sigma_e = float(self.R.uniform(*self.sigma_e_range))
        self.low_dose_noise.randomize(img)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Add noise to ``img`` (or return it unchanged when not applied)."""
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        return self.low_dose_noise(img, randomize=False)


# --------------------------------------------------------------------------------------------------------------
# bicubic baseline
# --------------------------------------------------------------------------------------------------------------


class BicubicUpsample(Transform):
    """The bicubic baseline as a transform: :func:`bicubic_upsample` on a ``(C, h, w)`` image.

    A MetaTensor keeps its metadata with the affine updated to the smaller pixel size.

    Args:
        scale: positive integer upsampling factor.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, scale: int = 4) -> None:
        if isinstance(scale, bool) or int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}.")
        self.scale = int(scale)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Upsample ``img``; returns the same type family."""
        out = _to_input_type(bicubic_upsample(_as_float_tensor(img), self.scale), img)
        _spatial_affine_update(out, (0.0, 0.0), 1.0 / self.scale)
        return out
