"""Acquisition-shift ("stress") transforms: the ways a radiograph from another site or period differs.

Each transform is deterministic for a given argument (the detector noise for a given seed) and is the identity at
its neutral argument (zero strength). They act on the *loaded* image of the image contract, single channel,
float32 in [0, 1], display orientation (bright bone, dark lung), ``(C, H, W)``, and are meant to run **before** a
model's preprocessing (:func:`cxr_monai.transforms.classifier_preprocessing`), as a site difference would: the
model then sees what its own preprocessing makes of the shifted image. Strengths are in pixels or units of the
stored image given to the transform (224 px for ``kermany224``).

| transform | argument (neutral value) | what it simulates |
|---|---|---|
| :class:`GammaShift` | ``gamma`` (1) | another display gamma / tone curve: ``x ** gamma`` |
| :class:`ExposureShift` | ``stops`` (0) | over/under exposure of a log-response detector: a shift of the stored values, clipped (burn-out) |
| :class:`ContrastShift` | ``factor`` (1) | a steeper or flatter linear tone scale around the mean, clipped and re-quantised to ``bits`` |
| :class:`DetectorNoise` | ``photons`` (None), ``electronic_std`` (0) | quantum (Poisson) + electronic (Gaussian) noise of the transmitted signal |
| :class:`BlurShift` | ``sigma`` (0) | a wider detector/focal-spot point-spread function (reflect-padded Gaussian) |
| :class:`ResolutionShift` | ``scale`` (1) | a coarser native pixel pitch: antialiased bicubic down by ``scale``, bicubic back up |
| :class:`JPEGRecompression` | ``quality`` (None) | lossy JPEG storage or transfer at ``quality`` (PIL, 8-bit) |
| :class:`CollimationBorder` | ``fraction`` (0) | collimation / electronic shutter: a frame of ``value`` (black) of ``fraction`` of each side |
| :class:`FieldOfViewShift` | ``zoom`` (1) | another field of view: ``zoom > 1`` centre crop enlarged, ``zoom < 1`` image shrunk in a black canvas |
| :class:`RotationShift` | ``degrees`` (0) | patient or cassette rotation (positive: clockwise as displayed), black corners |
| :class:`LUTShift` | ``strength`` (0) | another stored intensity scaling: a sigmoid (S-shaped, VOI-LUT-like) remap, or its inverse |

Exposure and noise share one model of the stored value: ``x = -ln(t) / log_range`` for the transmitted fraction
``t`` of the beam (``log_range = ln 100``: the display spans two decades of transmission). A linear contrast change
without clipping is undone by the percentile normalisation of the preprocessing; what survives is the clipping and
the lost grey levels, which is what :class:`ContrastShift` and :class:`ExposureShift` keep.

Modules: :mod:`~cxr_monai.transforms.stress.array` (array transforms and the registry),
:mod:`~cxr_monai.transforms.stress.dictionary` (dictionary transforms that delegate to them),
:mod:`~cxr_monai.transforms.stress.base` (what they share).

Types: numpy in, numpy out; Tensor in, Tensor out; a MetaTensor keeps its metadata (the affine is not updated: the
shift models a different acquisition of the same patient, not a resampling of this image). Output float32.
:func:`make_stress_transform` builds a transform from a registry name and its argument.
"""


from .base import *  # noqa: F401,F403
from .array import *  # noqa: F401,F403
from .dictionary import *  # noqa: F401,F403
