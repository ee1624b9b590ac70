"""Array transforms of the acquisition shifts (:mod:`cxr_monai.transforms.stress`, table there) and their
registry (:data:`STRESS_TRANSFORMS`, :func:`make_stress_transform`).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import RandomizableTransform, Rotate, Transform
from monai.utils import TransformBackends, convert_to_numpy, convert_to_tensor
from PIL import Image

from cxr_monai.transforms.degradation.functional import gaussian_blur
from cxr_monai.transforms.stress.base import (DEFAULT_LOG_RANGE, _as_4d, _back, _copy, _finite, _non_negative,
                                              _positive, _resize, _StressTransform, _tensor, _unit)

__all__ = [
    "STRESS_TRANSFORMS",
    "make_stress_transform",
    "GammaShift",
    "ExposureShift",
    "ContrastShift",
    "LUTShift",
    "DetectorNoise",
    "BlurShift",
    "ResolutionShift",
    "JPEGRecompression",
    "CollimationBorder",
    "FieldOfViewShift",
    "RotationShift",
]


# --------------------------------------------------------------------------------------------------------------
# photometric shifts
# --------------------------------------------------------------------------------------------------------------


class GammaShift(_StressTransform):
    """Another tone curve: ``y = clip(x, 0, 1) ** gamma``.

    ``gamma > 1`` darkens the mid-tones (the lungs get darker, bone keeps its brightness), ``gamma < 1`` brightens
    them. The end points 0 and 1 stay fixed.

    Args:
        gamma: exponent, > 0; 1 is the identity.

    Raises:
        ValueError: for a non-positive or non-finite ``gamma``.
    """

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = _positive(gamma, "gamma")

    def is_identity(self) -> bool:
        return self.gamma == 1.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0).pow(self.gamma)


class ExposureShift(_StressTransform):
    """Over- or under-exposure of a log-response detector: the stored values shift, and clip.

    With ``x = -ln(t) / log_range`` (``t``: transmitted fraction of the beam), ``2 ** stops`` times the exposure
    shifts every value by ``-stops * ln(2) / log_range`` (0.15 per stop for the default two-decade range):
    ``y = clip(x - stops * ln 2 / log_range, 0, 1)``. Positive ``stops`` (overexposure) darken the image and
    burn out the lungs at 0; negative ``stops`` brighten it and saturate bone at 1. A pure shift is undone by the
    percentile normalisation; the clipped detail is not.

    Args:
        stops: exposure change in photographic stops (factors of 2); 0 is the identity.
        log_range: natural-log transmission range of the stored [0, 1] values, > 0.

    Raises:
        ValueError: for non-finite ``stops`` or a non-positive ``log_range``.
    """

    def __init__(self, stops: float = 0.0, log_range: float = DEFAULT_LOG_RANGE) -> None:
        self.stops = _finite(stops, "stops")
        self.log_range = _positive(log_range, "log_range")

    @property
    def offset(self) -> float:
        """The shift of the stored values (subtracted), in [0, 1] units."""
        return self.stops * math.log(2.0) / self.log_range

    def is_identity(self) -> bool:
        return self.stops == 0.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset).clamp(0.0, 1.0)


class ContrastShift(_StressTransform):
    """Linear contrast change around a pivot, clipped to [0, 1] and re-quantised to ``bits`` (the stored image).

    ``y = quantise(clip(pivot + factor * (x - pivot), 0, 1))`` with ``pivot`` the image mean unless given. A flatter
    tone scale (``factor < 1``) stored in 8 bits keeps about ``factor * 256`` grey levels; a steeper one
    (``factor > 1``) clips the ends. The standard deviation of an unclipped image scales by ``factor``.

    Args:
        factor: contrast factor, > 0; 1 is the identity (no re-quantisation either).
        pivot: intensity kept fixed, in [0, 1]; None uses the mean of each image.
        bits: re-quantise to ``2 ** bits`` levels (1 to 16); None keeps float values.

    Raises:
        ValueError: for a non-positive ``factor``, a ``pivot`` outside [0, 1] or ``bits`` outside 1..16.
    """

    def __init__(self, factor: float = 1.0, pivot: float | None = None, bits: int | None = 8) -> None:
        self.factor = _positive(factor, "factor")
        self.pivot = None if pivot is None else _unit(pivot, "pivot")
        if bits is not None and (isinstance(bits, bool) or int(bits) != bits or not 1 <= int(bits) <= 16):
            raise ValueError(f"bits must be an integer in 1..16 or None, got {bits!r}.")
        self.bits = None if bits is None else int(bits)

    def is_identity(self) -> bool:
        return self.factor == 1.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        pivot = x.mean() if self.pivot is None else torch.tensor(self.pivot, dtype=x.dtype)
        y = (pivot + self.factor * (x - pivot)).clamp(0.0, 1.0)
        if self.bits is not None:
            levels = float(2**self.bits - 1)
            y = torch.round(y * levels) / levels
        return y


class LUTShift(_StressTransform):
    """Another stored intensity scaling: a normalised sigmoid look-up table (S-curve) or its inverse.

    For ``strength = a > 0``: ``y = (s(a (x - c)) - s(-a c)) / (s(a (1 - c)) - s(-a c))`` with the logistic ``s``
    and ``c = center``, the shape of a sigmoid VOI LUT: steeper mid-tones (slope above 1 at ``c``), compressed
    ends. ``strength = -a`` applies the exact inverse of the ``a`` curve: flatter mid-tones, expanded ends. 0 and 1
    map to themselves; the curve is monotone; ``LUTShift(-a)(LUTShift(a)(x)) == x`` up to rounding.

    Args:
        strength: sigmoid gain ``a`` (about 2-10 for a visible change); 0 is the identity, negative the inverse.
        center: the intensity ``c`` of steepest slope, in (0, 1).

    Raises:
        ValueError: for a non-finite ``strength`` or a ``center`` outside (0, 1).
    """

    def __init__(self, strength: float = 0.0, center: float = 0.5) -> None:
        self.strength = _finite(strength, "strength")
        self.center = _finite(center, "center")
        if not 0.0 < self.center < 1.0:
            raise ValueError(f"center must be in (0, 1), got {center}.")

    def is_identity(self) -> bool:
        return self.strength == 0.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        a, c = abs(self.strength), self.center
        x = x.to(torch.float64).clamp(0.0, 1.0)
        s0, s1 = 1.0 / (1.0 + math.exp(a * c)), 1.0 / (1.0 + math.exp(-a * (1.0 - c)))
        if self.strength > 0:
            y = (torch.sigmoid(a * (x - c)) - s0) / (s1 - s0)
        else:
            y = c + torch.logit((x * (s1 - s0) + s0).clamp(1e-15, 1 - 1e-15)) / a
        return y.clamp(0.0, 1.0).to(torch.float32)


# --------------------------------------------------------------------------------------------------------------
# detector noise
# --------------------------------------------------------------------------------------------------------------


class DetectorNoise(RandomizableTransform):
    """Quantum (Poisson) plus electronic (Gaussian) noise of the transmitted signal, seen through the log display.

    The stored value ``x`` is turned back into the transmitted fraction ``t = exp(-log_range * x)``; the detector
    counts ``Poisson(photons * t)`` quanta and adds Gaussian read-out noise of standard deviation
    ``electronic_std`` (in units of the unattenuated signal): ``t' = Poisson(photons * t) / photons + N(0,
    electronic_std^2)``; then ``y = clip(-ln(t') / log_range, 0, 1)``. The display noise therefore grows with the
    attenuation, as in a real radiograph (largest in bone and mediastinum): to first order its standard deviation is
    :meth:`expected_std` ``= sqrt(t / photons + electronic_std^2) / (log_range * t)``.

    Deterministic for a seed: the generator is seeded in the constructor (and by :meth:`set_random_state`); a
    sequence of images gets a reproducible sequence of realisations. :meth:`randomize` draws the noise for an
    image; ``__call__(img, randomize=False)`` reuses the last draw (as a display-domain residual).

    Args:
        photons: expected quanta per pixel of the unattenuated beam (lower = noisier); None (or inf) means no
            quantum noise.
        electronic_std: standard deviation of the read-out noise relative to the unattenuated signal, >= 0.
        log_range: natural-log transmission range of the stored [0, 1] values, > 0.
        seed: seed of the noise generator; None leaves it unseeded (not reproducible).

    Raises:
        ValueError: for a non-positive ``photons``, a negative ``electronic_std`` or a non-positive ``log_range``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, photons: float | None = None, electronic_std: float = 0.0,
                 log_range: float = DEFAULT_LOG_RANGE, seed: int | None = 0) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        if photons is not None:
            photons = float(photons)
            if math.isnan(photons) or photons <= 0:
                raise ValueError(f"photons must be > 0 or None, got {photons}.")
            photons = None if math.isinf(photons) else photons
        self.photons = photons
        self.electronic_std = _non_negative(electronic_std, "electronic_std")
        self.log_range = _positive(log_range, "log_range")
        self.seed = seed
        self.noise: np.ndarray | None = None
        self.set_random_state(seed=seed)

    @staticmethod
    def expected_std(x: float, photons: float | None, electronic_std: float = 0.0,
                     log_range: float = DEFAULT_LOG_RANGE) -> float:
        """First-order standard deviation of the display noise at stored value ``x`` (before clipping)."""
        t = math.exp(-log_range * x)
        var = (t / photons if photons else 0.0) + electronic_std**2
        return math.sqrt(var) / (log_range * t)

    def is_identity(self) -> bool:
        """Whether the transform adds no noise at all."""
        return self.photons is None and self.electronic_std == 0.0

    def randomize(self, img: NdarrayOrTensor) -> None:  # type: ignore[override]
        """Draw the noise for ``img``: kept as the display-domain residual ``noisy(img) - clip(img, 0, 1)``."""
        super().randomize(None)
        x = np.clip(convert_to_numpy(img, dtype=np.float64), 0.0, 1.0)
        if self.is_identity():
            self.noise = np.zeros(x.shape, dtype=np.float32)
            return
        t = np.exp(-self.log_range * x)
        if self.photons is not None:
            t = self.R.poisson(self.photons * t) / self.photons
        if self.electronic_std > 0:
            t = t + self.R.normal(0.0, self.electronic_std, size=x.shape)
        y = np.clip(-np.log(np.maximum(t, 1e-300)) / self.log_range, 0.0, 1.0)
        self.noise = (y - x).astype(np.float32)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Add detector noise to ``img``; returns the same type family, float32, in [0, 1]."""
        if randomize:
            self.randomize(img)
        if self.is_identity():
            return _copy(img)
        if self.noise is None or tuple(self.noise.shape) != tuple(img.shape):
            raise RuntimeError("call randomize(img) with an image of this shape first.")
        x = _tensor(img)
        return _back((x.clamp(0.0, 1.0) + torch.as_tensor(self.noise, device=x.device)).clamp(0.0, 1.0), img)


# --------------------------------------------------------------------------------------------------------------
# sharpness and resolution
# --------------------------------------------------------------------------------------------------------------


class BlurShift(_StressTransform):
    """A wider point-spread function: separable Gaussian blur with reflect padding (no darkened borders).

    Args:
        sigma: standard deviation in pixels of the stored image, >= 0; 0 is the identity.
        truncate: kernel half-width in units of sigma, > 0.

    Raises:
        ValueError: for a negative ``sigma`` or a non-positive ``truncate``.
    """

    def __init__(self, sigma: float = 0.0, truncate: float = 4.0) -> None:
        self.sigma = _non_negative(sigma, "sigma")
        self.truncate = _positive(truncate, "truncate")

    def is_identity(self) -> bool:
        return self.sigma == 0.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, self.sigma, self.truncate).clamp(0.0, 1.0)


class ResolutionShift(_StressTransform):
    """A coarser native resolution, at the same image size: down by ``scale``, then back up.

    Optional reflect-padded Gaussian blur (``sigma``), antialiased bicubic downsampling to
    ``round(H / scale) x round(W / scale)``, bicubic upsampling back to ``H x W`` (``align_corners=False``),
    clipped to [0, 1]. Detail finer than ``scale`` pixels is lost; the mean is kept.

    Args:
        scale: downsampling factor, >= 1 (need not be an integer); 1 with ``sigma = 0`` is the identity.
        sigma: extra blur before downsampling, in pixels of the stored image, >= 0.

    Raises:
        ValueError: for ``scale < 1`` or a negative ``sigma``.
    """

    def __init__(self, scale: float = 1.0, sigma: float = 0.0) -> None:
        self.scale = _finite(scale, "scale")
        if self.scale < 1.0:
            raise ValueError(f"scale must be >= 1, got {scale}.")
        self.sigma = _non_negative(sigma, "sigma")

    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.sigma == 0.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        x4, shape = _as_4d(gaussian_blur(x, self.sigma))
        h, w = shape[-2:]
        small = (max(1, round(h / self.scale)), max(1, round(w / self.scale)))
        lo = _resize(x4, small, "bicubic")
        return _resize(lo, (h, w), "bicubic").clamp(0.0, 1.0).reshape(shape)


class JPEGRecompression(_StressTransform):
    """Lossy JPEG storage: round to 8 bits, encode with PIL at ``quality``, decode, scale back to [0, 1].

    Each ``(H, W)`` slice is one grayscale JPEG. The result has 8-bit values and the 8x8 block artefacts of the
    quality setting; the mean is kept to about one grey level.

    Args:
        quality: JPEG quality 1 (worst) to 100; None is the identity (no re-compression, no rounding).

    Raises:
        ValueError: for a quality outside 1..100.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, quality: int | None = None) -> None:
        if quality is not None and (isinstance(quality, bool) or int(quality) != quality or not 1 <= int(quality) <= 100):
            raise ValueError(f"quality must be an integer in 1..100 or None, got {quality!r}.")
        self.quality = None if quality is None else int(quality)

    def is_identity(self) -> bool:
        return self.quality is None

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy()
        flat = arr.reshape(-1, *arr.shape[-2:])
        out = np.empty(flat.shape, dtype=np.float32)
        for i, plane in enumerate(flat):
            u8 = np.round(np.clip(plane, 0.0, 1.0) * 255.0).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(u8, mode="L").save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            with Image.open(buf) as decoded:
                out[i] = np.asarray(decoded.convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(out.reshape(arr.shape))


# --------------------------------------------------------------------------------------------------------------
# geometry: collimation, field of view, rotation
# --------------------------------------------------------------------------------------------------------------


class CollimationBorder(_StressTransform):
    """Collimation or an electronic shutter: a frame of constant ``value`` around the image.

    The outer ``round(fraction * H)`` rows at the top and at the bottom and ``round(fraction * W)`` columns at the
    left and at the right are set to ``value`` (0: black); the interior is unchanged.

    Args:
        fraction: width of the frame on each side as a fraction of that side, in [0, 0.5); 0 is the identity.
        value: intensity of the frame, in [0, 1] (0 black as a software shutter, 1 white as unexposed film).

    Raises:
        ValueError: for a fraction outside [0, 0.5) or a value outside [0, 1].
    """

    def __init__(self, fraction: float = 0.0, value: float = 0.0) -> None:
        self.fraction = _finite(fraction, "fraction")
        if not 0.0 <= self.fraction < 0.5:
            raise ValueError(f"fraction must be in [0, 0.5), got {fraction}.")
        self.value = _unit(value, "value")

    def is_identity(self) -> bool:
        return self.fraction == 0.0

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of the frame on each side for an image of ``height x width``."""
        return round(self.fraction * height), round(self.fraction * width)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        fh, fw = self.frame_size(*x.shape[-2:])
        if fh:
            y[..., :fh, :] = self.value
            y[..., -fh:, :] = self.value
        if fw:
            y[..., :, :fw] = self.value
            y[..., :, -fw:] = self.value
        return y


class FieldOfViewShift(_StressTransform):
    """Another field of view at the same image size (the anatomy appears ``zoom`` times larger).

    ``zoom > 1``: the central ``round(H / zoom) x round(W / zoom)`` region is enlarged (bilinear) to ``H x W`` (a
    tighter field of view). ``zoom < 1``: the whole image is shrunk (antialiased bilinear) to
    ``round(H * zoom) x round(W * zoom)`` and centred on a canvas of ``pad_value`` (a wider field of view; what lies
    outside the original image is unknown and shown as ``pad_value``).

    Args:
        zoom: magnification, > 0; 1 is the identity.
        pad_value: canvas intensity for ``zoom < 1``, in [0, 1].

    Raises:
        ValueError: for a non-positive ``zoom`` or a ``pad_value`` outside [0, 1].
    """

    def __init__(self, zoom: float = 1.0, pad_value: float = 0.0) -> None:
        self.zoom = _positive(zoom, "zoom")
        self.pad_value = _unit(pad_value, "pad_value")

    def is_identity(self) -> bool:
        return self.zoom == 1.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        x4, shape = _as_4d(x)
        h, w = shape[-2:]
        if self.zoom > 1.0:
            ch, cw = max(1, round(h / self.zoom)), max(1, round(w / self.zoom))
            top, left = (h - ch) // 2, (w - cw) // 2
            out = _resize(x4[..., top : top + ch, left : left + cw], (h, w))
        else:
            sh, sw = max(1, round(h * self.zoom)), max(1, round(w * self.zoom))
            out = torch.full_like(x4, self.pad_value)
            top, left = (h - sh) // 2, (w - sw) // 2
            out[..., top : top + sh, left : left + sw] = _resize(x4, (sh, sw))
        return out.clamp(0.0, 1.0).reshape(shape)


class RotationShift(_StressTransform):
    """A small in-plane rotation about the image centre; corners from outside the image are black.

    Positive ``degrees`` rotate clockwise as the image is displayed (rows downwards): the top-centre moves to the
    right. Bilinear interpolation, same image size (MONAI ``Rotate`` with ``keep_size=True``, zero padding).

    Args:
        degrees: rotation angle in degrees, finite, at most 180 in magnitude; 0 is the identity.

    Raises:
        ValueError: for a non-finite angle or one above 180 degrees in magnitude.
    """

    def __init__(self, degrees: float = 0.0) -> None:
        self.degrees = _finite(degrees, "degrees")
        if abs(self.degrees) > 180.0:
            raise ValueError(f"degrees must be within [-180, 180], got {degrees}.")
        self._rotate = Rotate(angle=math.radians(self.degrees), keep_size=True, mode="bilinear",
                              padding_mode="zeros", align_corners=False, dtype=torch.float32)

    def is_identity(self) -> bool:
        return self.degrees == 0.0

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        x3 = x.reshape(-1, *x.shape[-2:])
        out = self._rotate(x3)
        return convert_to_tensor(out, track_meta=False).clamp(0.0, 1.0).reshape(x.shape)


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------


STRESS_TRANSFORMS: dict[str, tuple[type, str, Any]] = {
    "gamma": (GammaShift, "gamma", 1.0),
    "exposure": (ExposureShift, "stops", 0.0),
    "contrast": (ContrastShift, "factor", 1.0),
    "lut": (LUTShift, "strength", 0.0),
    "noise": (DetectorNoise, "photons", None),
    "blur": (BlurShift, "sigma", 0.0),
    "low_resolution": (ResolutionShift, "scale", 1.0),
    "jpeg": (JPEGRecompression, "quality", None),
    "collimation": (CollimationBorder, "fraction", 0.0),
    "field_of_view": (FieldOfViewShift, "zoom", 1.0),
    "rotation": (RotationShift, "degrees", 0.0),
}
"""Registry name -> (array transform class, name of its strength argument, its neutral value)."""


def make_stress_transform(name: str, value: Any, **kwargs: Any) -> Transform:
    """The array transform ``name`` of :data:`STRESS_TRANSFORMS` with its strength argument set to ``value``.

    Args:
        name: registry name (``"gamma"``, ``"jpeg"``, ...).
        value: the strength argument (``gamma``, ``quality``, ...).
        kwargs: further constructor arguments (e.g. ``electronic_std`` and ``seed`` for ``"noise"``).

    Raises:
        KeyError: for an unknown name.
    """
    if name not in STRESS_TRANSFORMS:
        raise KeyError(f"unknown stress transform {name!r}; known: {sorted(STRESS_TRANSFORMS)}")
    cls, arg, _ = STRESS_TRANSFORMS[name]
    return cls(**{arg: value, **kwargs})
