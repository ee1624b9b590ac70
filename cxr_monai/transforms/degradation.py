"""Degradation models for chest radiographs: optical blur + bicubic downsampling, and low-dose noise.

Every number in the project's SR work uses one degradation convention (stated in the README, "Super-resolution x4"):

1. Gaussian blur (the optical point-spread function), ``sigma`` in HR pixels, separable, kernel radius
   ``ceil(truncate * sigma)`` (``truncate=4`` by default), **reflect** padding at the image border
   (whole-sample symmetric, ``d c b | a b c d``: torch ``F.pad(mode="reflect")``, scipy ``mode="mirror"``,
   OpenCV ``BORDER_REFLECT_101``). Zero padding (MONAI's ``GaussianSmooth``) darkens every border and
   hands a network a fake gain; it is never used here.
2. Bicubic downsampling by ``scale`` with antialiasing, as MATLAB ``imresize`` and PIL do:
   ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``; the result is clamped to [0, 1].
3. Optionally, low-dose noise on the LR image: Poisson (quantum) noise at a dose scale plus additive Gaussian
   (electronic) noise, clamped to [0, 1].

The bicubic baseline upsamples with ``F.interpolate(mode="bicubic", align_corners=False)`` (no antialias is
needed when enlarging), clamped to [0, 1]: :func:`bicubic_upsample`.

Sizes that are not a multiple of ``scale``: the HR image is first cropped to ``floor(H / scale) * scale`` by
``floor(W / scale) * scale`` rows and columns, keeping the top-left corner (the "mod crop" of the SR
literature), so ``lr.shape[-2:] * scale == hr.shape[-2:]`` holds exactly and pixel ``(i, j)`` of the LR image
covers HR pixels ``[i * scale, (i + 1) * scale)``. The dictionary variants crop the HR entry in the same way so
pairs stay aligned.

Types: array transforms accept numpy arrays, torch Tensors or MONAI MetaTensors shaped ``(C, H, W)`` and return
the same type (numpy in, numpy out; MetaTensor in, MetaTensor out with its affine updated for the crop and the
change of pixel size), as float32 for float32 input. The functional helpers (:func:`gaussian_blur`,
:func:`simulate_low_resolution`, :func:`low_dose_noise`, :func:`bicubic_upsample`) work on torch tensors of any
leading shape ``(..., H, W)``, on any device, e.g. on a training batch ``(N, C, H, W)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, convert_to_tensor, ensure_tuple

__all__ = [
    "VALID_SCALES",
    "gaussian_kernel1d",
    "gaussian_blur",
    "mod_crop",
    "simulate_low_resolution",
    "low_dose_noise",
    "bicubic_upsample",
    "SimulateLowResolution",
    "SimulateLowResolutiond",
    "SimulateLowResolutionD",
    "SimulateLowResolutionDict",
    "RandSimulateLowResolution",
    "RandSimulateLowResolutiond",
    "RandSimulateLowResolutionD",
    "RandSimulateLowResolutionDict",
    "LowDoseNoise",
    "LowDoseNoised",
    "LowDoseNoiseD",
    "LowDoseNoiseDict",
    "RandLowDoseNoise",
    "RandLowDoseNoised",
    "RandLowDoseNoiseD",
    "RandLowDoseNoiseDict",
    "BicubicUpsample",
    "BicubicUpsampled",
    "BicubicUpsampleD",
    "BicubicUpsampleDict",
    "PairedDegradationd",
    "PairedDegradationD",
    "PairedDegradationDict",
]

VALID_SCALES: tuple[int, ...] = (2, 3, 4)
"""Downsampling factors the degradation transforms accept."""


# --------------------------------------------------------------------------------------------------------------
# argument checks (shared by the constructors)
# --------------------------------------------------------------------------------------------------------------


def _check_sigma(sigma: float, name: str = "sigma") -> float:
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 = no blur), got {sigma}.")
    return sigma


def _check_scale(scale: int, valid: Sequence[int] = VALID_SCALES) -> int:
    if isinstance(scale, bool) or int(scale) != scale or int(scale) not in valid:
        raise ValueError(f"scale must be one of {tuple(valid)}, got {scale!r}.")
    return int(scale)


def _check_truncate(truncate: float) -> float:
    truncate = float(truncate)
    if not math.isfinite(truncate) or truncate <= 0:
        raise ValueError(f"truncate must be a finite number > 0 (kernel radius ceil(truncate*sigma)), got {truncate}.")
    return truncate


def _check_dose(dose: float | None, name: str = "dose") -> float | None:
    if dose is None:
        return None
    dose = float(dose)
    if not (dose > 0) or math.isnan(dose):
        raise ValueError(f"{name} must be > 0 (expected photon count at intensity 1) or None, got {dose}.")
    return None if math.isinf(dose) else dose


def _check_sigma_e(sigma_e: float, name: str = "sigma_e") -> float:
    sigma_e = float(sigma_e)
    if not math.isfinite(sigma_e) or sigma_e < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {sigma_e}.")
    return sigma_e


def _check_range(
    value: float | Sequence[float], name: str, low: float = 0.0, strict: bool = False
) -> tuple[float, float]:
    """A ``(lo, hi)`` range from a number (fixed value) or a pair, with ``low <= lo <= hi`` (``low < lo`` if strict)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        pair = tuple(float(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
        lo, hi = pair
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or lo < low or (strict and lo <= low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must satisfy {bound} and low <= high, got {value!r}.")
    return lo, hi


def _check_scales(scales: int | Sequence[int]) -> tuple[int, ...]:
    values = ensure_tuple(scales)
    if not values:
        raise ValueError("scales must not be empty.")
    return tuple(_check_scale(s) for s in values)


def _log_uniform(rng: np.random.RandomState, low: float, high: float) -> float:
    """A log-uniform draw in ``[low, high]`` (both > 0); exactly ``low`` when ``low == high`` (one draw either way)."""
    value = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return low if low == high else min(max(value, low), high)


def _check_prob(prob: float) -> float:
    prob = float(prob)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    return prob


# --------------------------------------------------------------------------------------------------------------
# functional core (torch, any leading shape, any device)
# --------------------------------------------------------------------------------------------------------------


def gaussian_kernel1d(
    sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel sampled at integer offsets ``-r..r`` with ``r = max(1, ceil(truncate*sigma))``.

    Args:
        sigma: standard deviation in pixels, > 0.
        truncate: kernel half-width in units of sigma.
        dtype: dtype of the returned kernel.
        device: device of the returned kernel.

    Returns:
        A tensor of length ``2 * r + 1`` summing to 1.
    """
    sigma = _check_sigma(sigma)
    if sigma == 0:
        raise ValueError("gaussian_kernel1d needs sigma > 0.")
    radius = max(1, math.ceil(_check_truncate(truncate) * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _reflect_indices(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a whole-sample symmetric extension (``d c b | a b c d | c b a``) of a length-``n`` axis.

    Unlike ``F.pad(mode="reflect")`` this works for any ``pad``, also ``pad >= n`` (repeated mirroring).
    """
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def gaussian_blur(img: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of the last two axes with reflect (whole-sample symmetric) border handling.

    Equivalent to ``scipy.ndimage.gaussian_filter(img, sigma, mode="mirror", truncate=r / sigma)`` applied to
    each 2-D slice, with ``r = max(1, ceil(truncate * sigma))``.

    Args:
        img: float tensor ``(..., H, W)``.
        sigma: standard deviation in pixels; 0 returns ``img`` unchanged.
        truncate: kernel half-width in units of sigma.

    Returns:
        The blurred tensor, same shape, dtype and device.
    """
    sigma = _check_sigma(sigma)
    if sigma == 0:
        return img
    if img.ndim < 2:
        raise ValueError(f"gaussian_blur needs a tensor (..., H, W), got shape {tuple(img.shape)}.")
    kernel = gaussian_kernel1d(sigma, truncate, dtype=img.dtype, device=img.device)
    radius = (kernel.numel() - 1) // 2
    height, width = img.shape[-2:]
    x = img.reshape(-1, 1, height, width)
    x = x.index_select(2, _reflect_indices(height, radius, img.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, _reflect_indices(width, radius, img.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x.reshape(img.shape)


def mod_crop(img: NdarrayOrTensor, scale: int) -> NdarrayOrTensor:
    """Crop the last two axes to a multiple of ``scale``, keeping the top-left corner.

    Args:
        img: array or tensor ``(..., H, W)``.
        scale: the factor both sizes must become a multiple of.

    Returns:
        A view ``img[..., : H - H % scale, : W - W % scale]`` (the input itself when nothing is cropped).
    """
    height, width = img.shape[-2:]
    hc, wc = height - height % scale, width - width % scale
    if hc == 0 or wc == 0:
        raise ValueError(f"image of size {height}x{width} is smaller than the scale factor {scale}.")
    if (hc, wc) == (height, width):
        return img
    return img[..., :hc, :wc]


def simulate_low_resolution(
    img: torch.Tensor, sigma: float = 1.0, scale: int = 4, truncate: float = 4.0
) -> torch.Tensor:
    """Degrade an HR image to LR: mod crop, reflect-padded Gaussian blur, antialiased bicubic downsampling, clamp.

    Args:
        img: float tensor ``(..., H, W)`` in [0, 1] (e.g. ``(C, H, W)`` or a batch ``(N, C, H, W)``).
        sigma: blur standard deviation in HR pixels; 0 means no blur.
        scale: integer downsampling factor (any ``>= 1`` here; the transforms accept 2, 3 or 4).
        truncate: blur kernel half-width in units of sigma.

    Returns:
        The LR tensor ``(..., H // scale, W // scale)`` clamped to [0, 1].
    """
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    scale = int(scale)
    if not img.is_floating_point():
        img = img.float()
    x = gaussian_blur(mod_crop(img, scale), sigma, truncate)
    if scale > 1:
        height, width = x.shape[-2:]
        x4 = x.reshape(-1, 1, height, width)
        size = (height // scale, width // scale)
        x4 = F.interpolate(x4, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x4.reshape(*img.shape[:-2], height // scale, width // scale)
    return x.clamp(0.0, 1.0)


def low_dose_noise(
    img: torch.Tensor, dose: float | None, sigma_e: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add low-dose noise to a tensor: ``clamp(Poisson(x * dose) / dose + N(0, sigma_e^2), 0, 1)``.

    Torch counterpart of :class:`LowDoseNoise` for batches on any device (e.g. inside a training step).

    Args:
        img: float tensor in [0, 1], any shape.
        dose: expected photon count at intensity 1 (lower = noisier); None means no quantum noise.
        sigma_e: standard deviation of the additive electronic noise, in intensity units.
        generator: optional torch generator for reproducibility.

    Returns:
        The noisy tensor, same shape and dtype, clamped to [0, 1].
    """
    dose = _check_dose(dose)
    sigma_e = _check_sigma_e(sigma_e)
    x = img.clamp(0.0, 1.0)
    if dose is not None:
        x = torch.poisson(x * dose, generator=generator) / dose
    if sigma_e > 0:
        x = x + sigma_e * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x.clamp(0.0, 1.0)


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: ``F.interpolate(mode="bicubic", align_corners=False)`` by ``scale``, clamped to [0, 1].

    Args:
        lr: float tensor ``(..., h, w)`` (e.g. ``(C, h, w)`` or ``(N, C, h, w)``).
        scale: positive integer upsampling factor.

    Returns:
        A tensor ``(..., h * scale, w * scale)`` in [0, 1].
    """
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    scale = int(scale)
    if not lr.is_floating_point():
        lr = lr.float()
    height, width = lr.shape[-2:]
    x4 = lr.reshape(-1, 1, height, width)
    x4 = F.interpolate(x4, size=(height * scale, width * scale), mode="bicubic", align_corners=False)
    return x4.reshape(*lr.shape[:-2], height * scale, width * scale).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# type handling shared by the array transforms
# --------------------------------------------------------------------------------------------------------------


def _as_float_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """Plain (meta-free) floating-point torch view of ``img``."""
    t = convert_to_tensor(img, track_meta=False)
    return t if t.is_floating_point() else t.float()


def _spatial_affine_update(out: NdarrayOrTensor, offset: Sequence[float], zoom: float) -> None:
    """Compose a MetaTensor's affine with a crop by ``offset`` (index units) and a pixel-size change of ``zoom``.

    New pixel ``j`` (along a spatial axis) sits at old index ``offset + zoom * j + (zoom - 1) / 2`` (pixel centres
    with ``align_corners=False``).
    """
    if not isinstance(out, MetaTensor):
        return
    affine = out.affine
    rank = affine.shape[-1] - 1
    mat = torch.eye(rank + 1, dtype=torch.float64)
    for axis in range(min(rank, 2)):
        mat[axis, axis] = zoom
        mat[axis, rank] = float(offset[axis]) + (zoom - 1.0) / 2.0
    out.affine = affine.to(torch.float64) @ mat.to(affine.device)


def _to_input_type(out: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """Convert a computed tensor back to the type family (numpy / Tensor / MetaTensor) and device of ``img``."""
    converted, *_ = convert_to_dst_type(out, dst=img, dtype=out.dtype)
    return converted


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


def _degrade(img: NdarrayOrTensor, sigma: float, scale: int, truncate: float) -> NdarrayOrTensor:
    out = simulate_low_resolution(_as_float_tensor(img), sigma, scale, truncate)
    out = _to_input_type(out, img)
    _spatial_affine_update(out, (0.0, 0.0), float(scale))
    return out


def _copy(img: NdarrayOrTensor) -> NdarrayOrTensor:
    return img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)


def _per_key_names(names: str | Sequence[str] | None, n_keys: int, what: str) -> tuple[str | None, ...]:
    if names is None:
        return (None,) * n_keys
    values = ensure_tuple(names)
    if len(values) != n_keys:
        raise ValueError(f"{what} must name one output per key: {n_keys} keys, got {values!r}.")
    return values


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
        lr = _degrade(hr, self.params["sigma"], scale, self.truncate)
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
