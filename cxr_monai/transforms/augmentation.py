"""Augmentation for chest radiographs: mild geometry and intensity jitter that keeps the image contract.

The preset :func:`cxr_augmentation` follows the settings of the MRP seed study (rotation 10 degrees, zoom 0.1,
width/height shift 0.1, as Keras' ``ImageDataGenerator`` expresses them) with MONAI transforms:

* :class:`RandCXRAffined` - MONAI's ``RandAffined`` with the rotation in degrees and the shift as a *fraction of
  the image size* (converted to pixels from each image's own size at call time, so one preset serves 224-px
  classifier inputs and full-size radiographs alike). The border is filled with ``"border"`` (edge replication)
  or ``"reflection"``, never zeros: black wedges in the corners are a shortcut a classifier can learn.
* optional horizontal flip (off by default: it moves the heart to the right, which never happens in real
  PA/AP chest films except in situs inversus / dextrocardia);
* intensity jitter: gamma (``RandAdjustContrastd``), a small multiplicative and additive change
  (``RandScaleIntensityd`` / ``RandShiftIntensityd``), then :class:`ClampIntensityd` back to [0, 1].

:func:`cxr_augmentation_array` builds the same chain from array transforms, for code that holds bare tensors.
Every transform works on numpy arrays, torch Tensors and MetaTensors shaped ``(C, H, W)``; MONAI's random
spatial/intensity transforms return torch Tensors (MetaTensors when meta tracking is on).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Identityd,
    MapTransform,
    OneOf,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleCropd,
    Resized,
    RandAdjustContrast,
    RandAdjustContrastd,
    RandAffine,
    RandAffined,
    RandFlip,
    RandFlipd,
    RandScaleIntensity,
    RandScaleIntensityd,
    RandShiftIntensity,
    RandShiftIntensityd,
    Transform,
)
from monai.transforms.utils_pytorch_numpy_unification import clip
from monai.utils import TransformBackends, ensure_tuple

__all__ = [
    "ClampIntensity",
    "ClampIntensityd",
    "ClampIntensityD",
    "ClampIntensityDict",
    "RandCXRAffine",
    "RandCXRAffined",
    "RandCXRAffineD",
    "RandCXRAffineDict",
    "RandBorderd",
    "RandBorderD",
    "RandBorderDict",
    "cxr_augmentation",
    "cxr_augmentation_array",
    "cxr_strong_augmentation",
    "cxr_framing_augmentation",
]

_ALLOWED_PADDING = ("border", "reflection")


class ClampIntensity(Transform):
    """Clamp intensities to ``[minv, maxv]`` (the [0, 1] image contract by default); keeps the input type.

    Args:
        minv: lower bound.
        maxv: upper bound, > ``minv``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, minv: float = 0.0, maxv: float = 1.0) -> None:
        if not float(minv) < float(maxv):
            raise ValueError(f"minv must be < maxv, got {minv} and {maxv}.")
        self.minv = float(minv)
        self.maxv = float(maxv)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` clamped to ``[minv, maxv]``."""
        return clip(img, self.minv, self.maxv)


class ClampIntensityd(MapTransform):
    """Dictionary version of :class:`ClampIntensity`.

    Args:
        keys: key(s) of the images to clamp.
        minv: lower bound.
        maxv: upper bound.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ClampIntensity.backend

    def __init__(
        self, keys: KeysCollection, minv: float = 0.0, maxv: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clamp = ClampIntensity(minv, maxv)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with the images clamped."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clamp(d[key])
        return d


def _check_affine_args(rotate_deg: float, zoom: float, shift: float, padding_mode: str | Sequence[str]) -> None:
    if not 0.0 <= float(rotate_deg) <= 180.0:
        raise ValueError(f"rotate_deg must be in [0, 180], got {rotate_deg}.")
    if not 0.0 <= float(zoom) < 1.0:
        raise ValueError(f"zoom must be in [0, 1), got {zoom}.")
    if not 0.0 <= float(shift) < 1.0:
        raise ValueError(f"shift must be a fraction of the image size in [0, 1), got {shift}.")
    for mode in ensure_tuple(padding_mode):
        if str(mode) not in _ALLOWED_PADDING:
            raise ValueError(
                f"padding_mode must be one of {_ALLOWED_PADDING} (zeros would add black edges), got {padding_mode!r}."
            )


def _spatial_shape(img: NdarrayOrTensor) -> tuple[int, ...]:
    if isinstance(img, MetaTensor):
        return tuple(int(s) for s in img.peek_pending_shape())
    return tuple(int(s) for s in img.shape[1:])


class RandCXRAffine(RandAffine):
    """``monai.transforms.RandAffine`` with rotation in degrees and shift as a fraction of the image size.

    On each call the translation range is set to ``shift * size`` pixels per spatial axis of that image, so the
    same transform serves any image size. Output size = input size.

    Args:
        prob: probability of applying the transform.
        rotate_deg: rotation drawn uniformly in ``[-rotate_deg, rotate_deg]`` degrees.
        zoom: scale drawn per axis uniformly in ``[1 - zoom, 1 + zoom]``.
        shift: translation per axis drawn uniformly in ``[-shift, shift]`` times the image size.
        mode: interpolation mode (``"bilinear"`` or ``"nearest"``; bilinear keeps [0, 1] without overshoot).
        padding_mode: ``"border"`` or ``"reflection"`` (zeros is refused: it makes black edges).
    """

    def __init__(
        self,
        prob: float = 0.5,
        rotate_deg: float = 10.0,
        zoom: float = 0.1,
        shift: float = 0.1,
        mode: str = "bilinear",
        padding_mode: str = "border",
    ) -> None:
        _check_affine_args(rotate_deg, zoom, shift, padding_mode)
        super().__init__(
            prob=prob,
            rotate_range=math.radians(float(rotate_deg)) or None,
            scale_range=float(zoom) or None,
            mode=mode,
            padding_mode=padding_mode,
        )
        self.shift = float(shift)

    def __call__(self, img: NdarrayOrTensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        """Apply to ``img`` ``(C, H, W)``; other arguments as ``RandAffine.__call__``."""
        self.rand_affine_grid.translate_range = tuple(self.shift * s for s in _spatial_shape(img))
        return super().__call__(img, *args, **kwargs)


class RandCXRAffined(RandAffined):
    """Dictionary version of :class:`RandCXRAffine`; all keys share one draw (sized from the first key).

    Args:
        keys: key(s) of the images (and masks) to transform together.
        prob: probability of applying the transform.
        rotate_deg: rotation range in degrees.
        zoom: per-axis scale range ``[1 - zoom, 1 + zoom]``.
        shift: per-axis translation range as a fraction of the image size.
        mode: interpolation mode, one per key or shared (use ``"nearest"`` for masks).
        padding_mode: ``"border"`` or ``"reflection"``, one per key or shared.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        rotate_deg: float = 10.0,
        zoom: float = 0.1,
        shift: float = 0.1,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str | Sequence[str] = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        _check_affine_args(rotate_deg, zoom, shift, padding_mode)
        super().__init__(
            keys=keys,
            prob=prob,
            rotate_range=math.radians(float(rotate_deg)) or None,
            scale_range=float(zoom) or None,
            mode=mode,
            padding_mode=padding_mode,
            allow_missing_keys=allow_missing_keys,
        )
        self.shift = float(shift)

    def __call__(
        self, data: Mapping[Hashable, NdarrayOrTensor], lazy: bool | None = None
    ) -> dict[Hashable, NdarrayOrTensor]:
        """Apply to the images of ``data`` with a translation range sized from the first present key."""
        first_key = self.first_key(dict(data))
        if first_key != ():
            shape = _spatial_shape(data[first_key])
            self.rand_affine.rand_affine_grid.translate_range = tuple(self.shift * s for s in shape)
        return super().__call__(data, lazy=lazy)


def _check_preset_args(
    prob: float, gamma: Sequence[float], scale_intensity: float, shift_intensity: float
) -> tuple[float, float]:
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    gamma_pair = tuple(float(g) for g in ensure_tuple(gamma))
    if len(gamma_pair) != 2 or not 0.0 < gamma_pair[0] <= gamma_pair[1]:
        raise ValueError(f"gamma must be a (low, high) pair with 0 < low <= high, got {gamma!r}.")
    if not 0.0 <= float(scale_intensity) < 1.0:
        raise ValueError(f"scale_intensity must be in [0, 1), got {scale_intensity}.")
    if not 0.0 <= float(shift_intensity) < 1.0:
        raise ValueError(f"shift_intensity must be in [0, 1), got {shift_intensity}.")
    return gamma_pair[0], gamma_pair[1]


def cxr_augmentation(
    keys: KeysCollection = ("image",),
    rotate_deg: float = 10.0,
    zoom: float = 0.1,
    shift: float = 0.1,
    flip: bool = False,
    intensity: bool = True,
    prob: float = 0.5,
    gamma: Sequence[float] = (0.8, 1.25),
    scale_intensity: float = 0.1,
    shift_intensity: float = 0.05,
    mode: str | Sequence[str] = "bilinear",
    padding_mode: str | Sequence[str] = "border",
    intensity_keys: KeysCollection | None = None,
    allow_missing_keys: bool = False,
) -> list[MapTransform]:
    """The CXR augmentation preset as a list of MONAI dictionary transforms (wrap it in ``Compose``).

    Order: :class:`RandCXRAffined` (when any of rotate/zoom/shift is non-zero), ``RandFlipd`` along the width
    (when ``flip``), ``RandAdjustContrastd``, ``RandScaleIntensityd``, ``RandShiftIntensityd`` (when
    ``intensity``), and always a final :class:`ClampIntensityd` to [0, 1]. Each random step fires with
    probability ``prob`` independently; with ``prob=0`` the chain is the identity on [0, 1] images.

    Args:
        keys: keys of the images (and masks) that move together.
        rotate_deg: rotation range in degrees (0 disables).
        zoom: per-axis zoom range ``[1 - zoom, 1 + zoom]`` (0 disables).
        shift: per-axis shift range as a fraction of the image size (0 disables).
        flip: add a random horizontal (left-right) flip; off by default for chest films.
        intensity: add the intensity jitter.
        prob: probability of each random step.
        gamma: ``(low, high)`` gamma range of ``RandAdjustContrastd``.
        scale_intensity: multiplicative jitter, ``x * (1 + U(-s, s))``.
        shift_intensity: additive jitter, ``x + U(-s, s)``.
        mode: interpolation mode for the affine step, one per key or shared (``"nearest"`` for masks).
        padding_mode: ``"border"`` or ``"reflection"``, one per key or shared.
        intensity_keys: keys for the intensity steps and the clamp (default: ``keys``; leave masks out).
        allow_missing_keys: don't raise an exception if a key is missing.

    Returns:
        A list of MONAI ``MapTransform`` instances.
    """
    g_low, g_high = _check_preset_args(prob, gamma, scale_intensity, shift_intensity)
    _check_affine_args(rotate_deg, zoom, shift, padding_mode)
    ikeys = keys if intensity_keys is None else intensity_keys
    chain: list[MapTransform] = []
    if rotate_deg or zoom or shift:
        chain.append(RandCXRAffined(keys, prob, rotate_deg, zoom, shift, mode, padding_mode, allow_missing_keys))
    if flip:
        chain.append(RandFlipd(keys, prob=prob, spatial_axis=1, allow_missing_keys=allow_missing_keys))
    missing = allow_missing_keys
    if intensity:
        chain.append(RandAdjustContrastd(ikeys, prob=prob, gamma=(g_low, g_high), allow_missing_keys=missing))
        if scale_intensity:
            chain.append(RandScaleIntensityd(ikeys, factors=scale_intensity, prob=prob, allow_missing_keys=missing))
        if shift_intensity:
            chain.append(RandShiftIntensityd(ikeys, offsets=shift_intensity, prob=prob, allow_missing_keys=missing))
    chain.append(ClampIntensityd(ikeys, 0.0, 1.0, allow_missing_keys=missing))
    return chain


def cxr_augmentation_array(
    rotate_deg: float = 10.0,
    zoom: float = 0.1,
    shift: float = 0.1,
    flip: bool = False,
    intensity: bool = True,
    prob: float = 0.5,
    gamma: Sequence[float] = (0.8, 1.25),
    scale_intensity: float = 0.1,
    shift_intensity: float = 0.05,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> list[Transform]:
    """Array-transform version of :func:`cxr_augmentation` for a single ``(C, H, W)`` image (same order and args).

    Args:
        rotate_deg: rotation range in degrees (0 disables).
        zoom: per-axis zoom range ``[1 - zoom, 1 + zoom]`` (0 disables).
        shift: per-axis shift range as a fraction of the image size (0 disables).
        flip: add a random horizontal (left-right) flip.
        intensity: add the intensity jitter.
        prob: probability of each random step.
        gamma: ``(low, high)`` gamma range.
        scale_intensity: multiplicative jitter amplitude.
        shift_intensity: additive jitter amplitude.
        mode: interpolation mode of the affine step.
        padding_mode: ``"border"`` or ``"reflection"``.

    Returns:
        A list of MONAI array transforms (wrap it in ``Compose``).
    """
    g_low, g_high = _check_preset_args(prob, gamma, scale_intensity, shift_intensity)
    _check_affine_args(rotate_deg, zoom, shift, padding_mode)
    chain: list[Transform] = []
    if rotate_deg or zoom or shift:
        chain.append(RandCXRAffine(prob, rotate_deg, zoom, shift, mode, padding_mode))
    if flip:
        chain.append(RandFlip(prob=prob, spatial_axis=1))
    if intensity:
        chain.append(RandAdjustContrast(prob=prob, gamma=(g_low, g_high)))
        if scale_intensity:
            chain.append(RandScaleIntensity(factors=scale_intensity, prob=prob))
        if shift_intensity:
            chain.append(RandShiftIntensity(offsets=shift_intensity, prob=prob))
    chain.append(ClampIntensity(0.0, 1.0))
    return chain


ClampIntensityD = ClampIntensityDict = ClampIntensityd
RandCXRAffineD = RandCXRAffineDict = RandCXRAffined


class RandBorderd(RandomizableTransform, MapTransform):
    """Random black frame (collimation / shuttered border): with probability ``prob``, each side of the image
    independently gets a band of zeros ``U(0, max_fraction)`` of the image size wide.

    Real sites differ in how tightly they collimate and whether the stored image keeps the shutter; a
    classifier that never saw a black border reads one as evidence (see the stress suite).

    Args:
        keys: image keys (the same frame is drawn for all of them).
        prob: probability of adding a frame.
        max_fraction: largest band per side, as a fraction of that axis, in [0, 0.5).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, keys: KeysCollection, prob: float = 0.3, max_fraction: float = 0.15,
                 allow_missing_keys: bool = False) -> None:
        if not 0.0 <= float(max_fraction) < 0.5:
            raise ValueError(f"max_fraction must be in [0, 0.5), got {max_fraction}.")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.max_fraction = float(max_fraction)
        self._bands = (0.0, 0.0, 0.0, 0.0)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self._bands = tuple(float(v) for v in self.R.uniform(0.0, self.max_fraction, size=4))

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with the frame drawn on the images (unchanged when not fired)."""
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        top, bottom, left, right = self._bands
        for key in self.key_iterator(d):
            img = d[key]
            out = img.clone() if isinstance(img, torch.Tensor) else img.copy()
            h, w = out.shape[-2], out.shape[-1]
            out[..., : int(round(top * h)), :] = 0
            out[..., h - int(round(bottom * h)):, :] = 0
            out[..., :, : int(round(left * w))] = 0
            out[..., :, w - int(round(right * w)):] = 0
            d[key] = out
        return d


RandBorderD = RandBorderDict = RandBorderd


def _random_resized_crop(keys: list, spatial_size: int, min_crop_scale: float) -> list[MapTransform]:
    """A random crop of ``U(min_crop_scale, 1)`` of each axis, resized back to ``spatial_size`` squared (empty
    when ``min_crop_scale`` is 1): the field-of-view step shared by the ``strong`` and ``framing`` presets."""
    if float(min_crop_scale) >= 1.0:
        return []
    s = int(spatial_size)
    return [RandScaleCropd(keys, roi_scale=float(min_crop_scale), max_roi_scale=1.0, random_size=True),
            Resized(keys, spatial_size=(s, s), mode="bilinear", anti_aliasing=True)]


def cxr_strong_augmentation(keys: KeysCollection = ("image",), spatial_size: int = 224,
                            min_crop_scale: float = 0.75) -> list[MapTransform]:
    """The acquisition-shift augmentation preset for the classifier (recipe ``"strong"``).

    On top of the geometry of :func:`cxr_augmentation` it draws, per image: a random resized crop (each axis
    ``U(min_crop_scale, 1)`` of the image, so the aspect ratio changes too, resized back to ``spatial_size``),
    rotation 10 degrees / zoom 0.1 / shift 0.05 (p 0.5), Gaussian blur sigma 0.3-1.5 px (p 0.25), Gaussian
    noise with std up to 0.03 (p 0.25), gamma 0.6-1.7 (p 0.5), a black frame up to 15 % per side (p 0.3,
    :class:`RandBorderd`), then clamps to [0, 1]. :func:`~cxr_monai.transforms.classifier_train_transforms`
    follows it with the 1st-99th percentile normalisation of the preprocessing again, so the network sees
    shifted images the way inference would after the same shift.

    These are the same families of shift the stress suite measures (``cxr_monai.transforms.stress``), drawn
    at random strengths: the suite then measures how much of a seen family the model absorbs, not robustness
    to an unseen one.

    Args:
        keys: image keys.
        spatial_size: the network input side (the crop is resized back to it).
        min_crop_scale: smallest crop side, as a fraction of the image side, in (0, 1].
    """
    if not 0.0 < float(min_crop_scale) <= 1.0:
        raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale}.")
    keys = list(ensure_tuple(keys))
    chain: list[MapTransform] = _random_resized_crop(keys, spatial_size, min_crop_scale)
    chain += [
        RandCXRAffined(keys, prob=0.5, rotate_deg=10.0, zoom=0.1, shift=0.05),
        RandGaussianSmoothd(keys, sigma_x=(0.3, 1.5), sigma_y=(0.3, 1.5), prob=0.25),
        RandGaussianNoised(keys, prob=0.25, mean=0.0, std=0.03),
        ClampIntensityd(keys, 0.0, 1.0),
        RandAdjustContrastd(keys, prob=0.5, gamma=(0.6, 1.7)),
        RandBorderd(keys, prob=0.3, max_fraction=0.15),
        ClampIntensityd(keys, 0.0, 1.0),
    ]
    return chain


def cxr_framing_augmentation(keys: KeysCollection = ("image",), spatial_size: int = 224,
                             min_crop_scale: float = 0.7, blur_prob: float = 0.3,
                             crop_prob: float = 1.0) -> tuple[list[MapTransform], list[MapTransform]]:
    """The framing preset for the classifier (recipe ``"framing"``): field-of-view and resolution variation
    without the exposure/contrast part of :func:`cxr_strong_augmentation`.

    Returned as two lists, because the percentile normalisation of the preprocessing must run again between
    them (a differently framed film is normalised on what it shows, as at inference):

    - ``geometry``: a random resized crop (each axis ``U(min_crop_scale, 1)`` of the image, so framing and
      aspect ratio both change; resized back to ``spatial_size``, which also lowers the effective resolution),
      drawn with probability ``crop_prob`` (recipe ``"framing_half"``: 0.5, so half the images keep the
      acquisition's own framing);
    - ``after``: the mild preset of :func:`cxr_augmentation` (rotation 10 degrees, zoom 0.1 (widens the field of
      view as well as narrowing it), shift 0.1, the mild intensity jitter), then a Gaussian blur sigma 0.3-1.2 px
      with probability ``blur_prob`` (a softer detector or a smaller original), then a clamp to [0, 1].

    Args:
        keys: image keys.
        spatial_size: the network input side.
        min_crop_scale: smallest crop side, as a fraction of the image side, in (0, 1].
        blur_prob: probability of the blur, in [0, 1].
        crop_prob: probability of the random resized crop, in [0, 1].
    """
    if not 0.0 < float(min_crop_scale) <= 1.0:
        raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale}.")
    for name, value in (("blur_prob", blur_prob), ("crop_prob", crop_prob)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    keys = list(ensure_tuple(keys))
    geometry = _random_resized_crop(keys, spatial_size, min_crop_scale)
    if geometry and float(crop_prob) < 1.0:
        geometry = [OneOf([Compose(geometry), Identityd(keys)], weights=[float(crop_prob), 1.0 - float(crop_prob)])]
    after = cxr_augmentation(keys)
    after.insert(len(after) - 1, RandGaussianSmoothd(keys, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2), prob=float(blur_prob)))
    return geometry, after
