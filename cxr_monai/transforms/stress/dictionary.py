"""Dictionary transforms of the acquisition shifts (:mod:`cxr_monai.transforms.stress`): each applies its
array transform (:mod:`~cxr_monai.transforms.stress.array`) to every key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform

from cxr_monai.transforms.stress.array import (BlurShift, CollimationBorder, ContrastShift, DetectorNoise,
                                               ExposureShift, FieldOfViewShift, GammaShift, JPEGRecompression,
                                               LUTShift, ResolutionShift, RotationShift)
from cxr_monai.transforms.stress.base import DEFAULT_LOG_RANGE, _Delegated

__all__ = [
    "GammaShiftd",
    "GammaShiftD",
    "GammaShiftDict",
    "ExposureShiftd",
    "ExposureShiftD",
    "ExposureShiftDict",
    "ContrastShiftd",
    "ContrastShiftD",
    "ContrastShiftDict",
    "LUTShiftd",
    "LUTShiftD",
    "LUTShiftDict",
    "DetectorNoised",
    "DetectorNoiseD",
    "DetectorNoiseDict",
    "BlurShiftd",
    "BlurShiftD",
    "BlurShiftDict",
    "ResolutionShiftd",
    "ResolutionShiftD",
    "ResolutionShiftDict",
    "JPEGRecompressiond",
    "JPEGRecompressionD",
    "JPEGRecompressionDict",
    "CollimationBorderd",
    "CollimationBorderD",
    "CollimationBorderDict",
    "FieldOfViewShiftd",
    "FieldOfViewShiftD",
    "FieldOfViewShiftDict",
    "RotationShiftd",
    "RotationShiftD",
    "RotationShiftDict",
]


# --------------------------------------------------------------------------------------------------------------
# photometric shifts
# --------------------------------------------------------------------------------------------------------------


class GammaShiftd(_Delegated):
    """Dictionary version of :class:`GammaShift`.

    Args:
        keys: keys of the images to shift.
        gamma: exponent, > 0; 1 is the identity.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = GammaShift.backend

    def __init__(self, keys: KeysCollection, gamma: float = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, GammaShift(gamma), allow_missing_keys)


class ExposureShiftd(_Delegated):
    """Dictionary version of :class:`ExposureShift`.

    Args:
        keys: keys of the images to shift.
        stops: exposure change in stops; 0 is the identity.
        log_range: natural-log transmission range of the stored values.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ExposureShift.backend

    def __init__(self, keys: KeysCollection, stops: float = 0.0, log_range: float = DEFAULT_LOG_RANGE,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, ExposureShift(stops, log_range), allow_missing_keys)


class ContrastShiftd(_Delegated):
    """Dictionary version of :class:`ContrastShift`.

    Args:
        keys: keys of the images to shift.
        factor: contrast factor, > 0; 1 is the identity.
        pivot: intensity kept fixed; None uses the image mean.
        bits: re-quantisation bits; None keeps float values.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ContrastShift.backend

    def __init__(self, keys: KeysCollection, factor: float = 1.0, pivot: float | None = None, bits: int | None = 8,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, ContrastShift(factor, pivot, bits), allow_missing_keys)


class LUTShiftd(_Delegated):
    """Dictionary version of :class:`LUTShift`.

    Args:
        keys: keys of the images to shift.
        strength: sigmoid gain; 0 is the identity, negative the inverse curve.
        center: intensity of steepest slope, in (0, 1).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = LUTShift.backend

    def __init__(self, keys: KeysCollection, strength: float = 0.0, center: float = 0.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, LUTShift(strength, center), allow_missing_keys)


# --------------------------------------------------------------------------------------------------------------
# detector noise
# --------------------------------------------------------------------------------------------------------------


class DetectorNoised(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`DetectorNoise`; each key gets its own realisation (drawn in key order).

    Args:
        keys: keys of the images to make noisy.
        photons: expected quanta per pixel of the unattenuated beam; None means no quantum noise.
        electronic_std: read-out noise relative to the unattenuated signal.
        log_range: natural-log transmission range of the stored values.
        seed: seed of the noise generator.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = DetectorNoise.backend

    def __init__(self, keys: KeysCollection, photons: float | None = None, electronic_std: float = 0.0,
                 log_range: float = DEFAULT_LOG_RANGE, seed: int | None = 0,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.noise = DetectorNoise(photons, electronic_std, log_range, seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> DetectorNoised:
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.noise(d[key], randomize=True)
        return d


# --------------------------------------------------------------------------------------------------------------
# sharpness and resolution
# --------------------------------------------------------------------------------------------------------------


class BlurShiftd(_Delegated):
    """Dictionary version of :class:`BlurShift`.

    Args:
        keys: keys of the images to blur.
        sigma: standard deviation in pixels; 0 is the identity.
        truncate: kernel half-width in units of sigma.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = BlurShift.backend

    def __init__(self, keys: KeysCollection, sigma: float = 0.0, truncate: float = 4.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, BlurShift(sigma, truncate), allow_missing_keys)


class ResolutionShiftd(_Delegated):
    """Dictionary version of :class:`ResolutionShift`.

    Args:
        keys: keys of the images to shift.
        scale: downsampling factor, >= 1; 1 is the identity.
        sigma: extra blur before downsampling.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ResolutionShift.backend

    def __init__(self, keys: KeysCollection, scale: float = 1.0, sigma: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, ResolutionShift(scale, sigma), allow_missing_keys)


class JPEGRecompressiond(_Delegated):
    """Dictionary version of :class:`JPEGRecompression`.

    Args:
        keys: keys of the images to re-compress.
        quality: JPEG quality 1..100; None is the identity.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = JPEGRecompression.backend

    def __init__(self, keys: KeysCollection, quality: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, JPEGRecompression(quality), allow_missing_keys)


# --------------------------------------------------------------------------------------------------------------
# geometry: collimation, field of view, rotation
# --------------------------------------------------------------------------------------------------------------


class CollimationBorderd(_Delegated):
    """Dictionary version of :class:`CollimationBorder`.

    Args:
        keys: keys of the images to frame.
        fraction: frame width per side as a fraction of that side, in [0, 0.5).
        value: intensity of the frame, in [0, 1].
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = CollimationBorder.backend

    def __init__(self, keys: KeysCollection, fraction: float = 0.0, value: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, CollimationBorder(fraction, value), allow_missing_keys)


class FieldOfViewShiftd(_Delegated):
    """Dictionary version of :class:`FieldOfViewShift`.

    Args:
        keys: keys of the images to shift.
        zoom: magnification, > 0; 1 is the identity.
        pad_value: canvas intensity for ``zoom < 1``.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = FieldOfViewShift.backend

    def __init__(self, keys: KeysCollection, zoom: float = 1.0, pad_value: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, FieldOfViewShift(zoom, pad_value), allow_missing_keys)


class RotationShiftd(_Delegated):
    """Dictionary version of :class:`RotationShift`.

    Args:
        keys: keys of the images to rotate.
        degrees: rotation angle in degrees (positive clockwise as displayed); 0 is the identity.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = RotationShift.backend

    def __init__(self, keys: KeysCollection, degrees: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RotationShift(degrees), allow_missing_keys)


# --------------------------------------------------------------------------------------------------------------
# aliases
# --------------------------------------------------------------------------------------------------------------


GammaShiftD = GammaShiftDict = GammaShiftd
ExposureShiftD = ExposureShiftDict = ExposureShiftd
ContrastShiftD = ContrastShiftDict = ContrastShiftd
LUTShiftD = LUTShiftDict = LUTShiftd
DetectorNoiseD = DetectorNoiseDict = DetectorNoised
BlurShiftD = BlurShiftDict = BlurShiftd
ResolutionShiftD = ResolutionShiftDict = ResolutionShiftd
JPEGRecompressionD = JPEGRecompressionDict = JPEGRecompressiond
CollimationBorderD = CollimationBorderDict = CollimationBorderd
FieldOfViewShiftD = FieldOfViewShiftDict = FieldOfViewShiftd
RotationShiftD = RotationShiftDict = RotationShiftd
