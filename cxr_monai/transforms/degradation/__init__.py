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

Modules: :mod:`~cxr_monai.transforms.degradation.functional` (the functional core),
:mod:`~cxr_monai.transforms.degradation.array` (array transforms) and
:mod:`~cxr_monai.transforms.degradation.dictionary` (dictionary transforms that delegate to them).

Types: array transforms accept numpy arrays, torch Tensors or MONAI MetaTensors shaped ``(C, H, W)`` and return
the same type (numpy in, numpy out; MetaTensor in, MetaTensor out with its affine updated for the crop and the
change of pixel size), as float32 for float32 input. The functional helpers (:func:`gaussian_blur`,
:func:`simulate_low_resolution`, :func:`low_dose_noise`, :func:`bicubic_upsample`) work on torch tensors of any
leading shape ``(..., H, W)``, on any device, e.g. on a training batch ``(N, C, H, W)``.
"""


from .functional import *  # noqa: F401,F403
from .array import *  # noqa: F401,F403
from .dictionary import *  # noqa: F401,F403
