"""The one preprocessing definition per model, shared by training, evaluation, deploy and MONAI Label.

Bundles compose these lists (``"$cxr_monai.transforms.classifier_preprocessing(...)"``); the deploy
operators and label infer tasks call the same functions. Nothing else may re-implement them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import CopyItemsd, EnsureTyped, MapTransform, Resized, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from cxr_monai.transforms.augmentation import cxr_augmentation, cxr_framing_augmentation, cxr_strong_augmentation
from cxr_monai.transforms.exposed_field import ExposedFieldCropd
from cxr_monai.transforms.lung_field import LungField, LungFieldCropd

__all__ = [
    "PercentileNormalize",
    "PercentileNormalized",
    "LoadCXRImaged",
    "VIEWS",
    "StackViewsd",
    "classifier_preprocessing",
    "classifier_train_transforms",
    "sr_preprocessing",
]


class PercentileNormalize(Transform):
    """Map the ``lower``-th..``upper``-th intensity percentiles of an image to [0, 1] and clip.

    Same result as MONAI's ``ScaleIntensityRangePercentiles(lower, upper, 0, 1, clip=True)`` (linear
    percentile interpolation) but computed with ``numpy.percentile``, about 50x faster on a 224x224
    image. A constant image maps to zeros.

    Args:
        lower: lower percentile in [0, 100).
        upper: upper percentile in (lower, 100].
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, lower: float = 1.0, upper: float = 99.0) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        lo, hi = np.percentile(arr.astype(np.float64, copy=False).ravel(), [self.lower, self.upper])
        out = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
        return convert_to_dst_type(out.astype(np.float32), img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class PercentileNormalized(MapTransform):
    """Dictionary version of :class:`PercentileNormalize`."""

    backend = PercentileNormalize.backend

    def __init__(self, keys: KeysCollection, lower: float = 1.0, upper: float = 99.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = PercentileNormalize(lower, upper)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


PercentileNormalizeD = PercentileNormalizeDict = PercentileNormalized


class LoadCXRImaged(MapTransform):
    """Load a radiograph from a path with :class:`cxr_monai.io.LoadCXRd`, or accept an image already
    in memory (e.g. a MedMNIST array): uint8 is scaled by 1/255, (H, W) gets a channel axis.

    Args:
        keys: keys of the items to load.
        max_pixels: pixel limit passed to the loader.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, max_pixels: int = 50_000_000, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from cxr_monai.io import LoadCXRd

        self.loader = LoadCXRd(keys, max_pixels=max_pixels, allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        paths = [k for k in self.key_iterator(d) if isinstance(d[k], (str, bytes)) or hasattr(d[k], "__fspath__")]
        if paths:
            d = dict(self.loader({**d}))
        for key in self.key_iterator(d):
            if key in paths:
                continue
            arr = d[key]
            arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
            if arr.dtype == np.uint8:
                arr = arr.astype(np.float32) / 255.0
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3 or arr.shape[0] != 1:
                raise ValueError(f"in-memory image under {key!r} must be (H, W) or (1, H, W), got {arr.shape}")
            d[key] = MetaTensor(torch.as_tensor(arr, dtype=torch.float32))
        return d


VIEWS = ("whole", "lung_field")
"""The classifier's input views: the whole film, and its lung-field view (the film cropped to the box the lungs
define). A one-view classifier reads one of them; a two-view classifier reads both as two input channels, in
this order."""


class StackViewsd(MapTransform):
    """Stack the views of an image, each held under its own key as ``(1, S, S)``, into ``(V, S, S)`` under the
    first key (the others are removed); the lung-field box of a lung-field view goes into the stacked image's
    metadata (:data:`cxr_monai.transforms.LUNG_FIELD_KEY`).

    Args:
        view_keys: per image key, the keys of its views in channel order (the first is the image key itself).
    """

    def __init__(self, view_keys: Mapping[str, Sequence[str]]) -> None:
        super().__init__(list(view_keys))
        self.view_keys = {k: list(v) for k, v in view_keys.items()}

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            parts = [d[k] for k in self.view_keys[key]]
            meta = dict(getattr(parts[0], "meta", {}) or {})  # with the exposed field, when the film was cropped
            for part in parts[1:]:
                box = (getattr(part, "meta", {}) or {}).get("lung_field")
                if box is not None:
                    meta["lung_field"] = box
            tensors = [p.as_tensor() if isinstance(p, MetaTensor) else torch.as_tensor(p) for p in parts]
            d[key] = MetaTensor(torch.cat(tensors, dim=0), meta=meta)
            for k in self.view_keys[key][1:]:
                del d[k]
        return d


def classifier_preprocessing(keys: Sequence[str] = ("image",), spatial_size: int = 224,
                             max_pixels: int = 50_000_000, lung_field: LungField | str | None = None,
                             views: Sequence[str] | None = None, exposed_field: bool = False) -> list:
    """Deterministic classifier preprocessing: load (display orientation, [0, 1]) -> with ``exposed_field``, crop
    the film to its exposed field (:class:`~cxr_monai.transforms.ExposedFieldCropd`: a shutter frame removed; the
    box is kept in the image's metadata) -> with ``lung_field``,
    crop the film to its lung-field view (:class:`~cxr_monai.transforms.LungFieldCropd`: the box the lungs
    define, found by the lung-field network, so that collimation and zoom change the view little; the box is
    kept in the image's metadata) -> resize to ``spatial_size`` squared (stretched, as the Kermany images were)
    with anti-aliasing -> robust intensity normalisation (1st-99th percentile to [0, 1], clipped; removes
    exposure and windowing differences between sites) -> float32 tensor.

    Args:
        keys: image keys.
        spatial_size: side of the square network input (160 for the shipped classifier, 28 for PneumoniaMNIST).
        max_pixels: refuse larger images (see :func:`cxr_monai.io.load_cxr`).
        lung_field: the lung-field network (:class:`~cxr_monai.transforms.LungField` or the path of its
            TorchScript file); ``None``: the whole film (the PneumoniaMNIST model and classifiers before 0.5).
        views: the input views in channel order (:data:`VIEWS`; ``None``: one view, the lung-field view when
            ``lung_field`` is given, else the whole film). ``("whole", "lung_field")`` gives ``(2, S, S)``: each
            view is made as the one-view preprocessing makes it (crop, resize and normalisation per view).
        exposed_field: remove a shutter frame first (classifiers from 0.6 and their gate: ``exposed_field`` in the
            calibration / the gate's metadata); every view, the lung-field box and its rule are then taken on the
            exposed field, the boxes in the metadata stay in fractions of the film as read.
    """
    keys = list(keys)
    if views is None:
        views = ("lung_field",) if lung_field is not None else ("whole",)
    views = tuple(views)
    if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
        raise ValueError(f"views must be distinct names from {VIEWS}, got {views}")
    if "lung_field" in views and lung_field is None:
        raise ValueError("the lung-field view needs the lung-field network (lung_field)")
    if len(views) == 1:
        crop = [LungFieldCropd(keys, lung_field)] if views[0] == "lung_field" else []
        return [
            LoadCXRImaged(keys, max_pixels=max_pixels),
            *([ExposedFieldCropd(keys)] if exposed_field else []),
            *crop,
            Resized(keys, spatial_size=(spatial_size, spatial_size), mode="bilinear", anti_aliasing=True),
            PercentileNormalized(keys, lower=1.0, upper=99.0),
            EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        ]
    view_keys = {k: [k if i == 0 else f"{k}__view_{v}" for i, v in enumerate(views)] for k in keys}
    extra = {v: [view_keys[k][i] for k in keys] for i, v in enumerate(views) if i > 0}
    all_keys = [vk for k in keys for vk in view_keys[k]]
    lung_keys = [view_keys[k][views.index("lung_field")] for k in keys] if "lung_field" in views else []
    return [
        LoadCXRImaged(keys, max_pixels=max_pixels),
        *([ExposedFieldCropd(keys)] if exposed_field else []),
        *[CopyItemsd(keys, times=1, names=names) for names in extra.values()],
        *([LungFieldCropd(lung_keys, lung_field)] if lung_keys else []),
        Resized(all_keys, spatial_size=(spatial_size, spatial_size), mode="bilinear", anti_aliasing=True),
        PercentileNormalized(all_keys, lower=1.0, upper=99.0),
        StackViewsd(view_keys),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ]


def classifier_train_transforms(keys: Sequence[str] = ("image",), spatial_size: int = 224, augment: bool | str = True,
                                flip: bool = False, label_key: str = "label",
                                lung_field: LungField | str | None = None) -> list:
    """:func:`classifier_preprocessing` followed by an augmentation preset and the label cast.

    Args:
        keys: image keys.
        spatial_size: network input side.
        augment: ``True`` / ``"mild"``: the CXR preset of :func:`~cxr_monai.transforms.cxr_augmentation`
            (rotation 10 degrees, zoom 0.1, shift 0.1, intensity jitter); ``"strong"``: the acquisition-shift
            preset :func:`~cxr_monai.transforms.cxr_strong_augmentation` followed by the percentile normalisation
            again (tried, not shipped: see the model card); ``"framing"``: the field-of-view / resolution preset
            :func:`~cxr_monai.transforms.cxr_framing_augmentation` (random resized crop, normalisation again, the
            mild preset, blur); ``"framing_half"``: the same with the crop drawn for half the images; ``False`` /
            ``"none"``: no augmentation.
        flip: add a horizontal flip to the mild preset (off: the heart is on the left).
        label_key: the label key, cast to ``torch.long``.
        lung_field: the lung-field network of :func:`classifier_preprocessing` (``None``: the whole film).
    """

    presets = {True: "mild", False: "none", "mild": "mild", "strong": "strong", "framing": "framing",
               "framing_half": "framing_half", "none": "none"}
    if augment not in presets:
        raise ValueError(f"augment must be one of {sorted(map(str, presets))}, got {augment!r}")
    xs = classifier_preprocessing(keys, spatial_size, lung_field=lung_field)
    if presets[augment] == "mild":
        xs += list(cxr_augmentation(keys=list(keys), flip=flip))
    elif presets[augment] == "strong":
        xs += cxr_strong_augmentation(list(keys), spatial_size)
        xs.append(PercentileNormalized(list(keys), lower=1.0, upper=99.0))  # as inference after a shift
    elif presets[augment] in ("framing", "framing_half"):
        crop_prob = 1.0 if presets[augment] == "framing" else 0.5
        geometry, after = cxr_framing_augmentation(list(keys), spatial_size, crop_prob=crop_prob)
        xs += geometry + [PercentileNormalized(list(keys), lower=1.0, upper=99.0)] + after
    xs.append(EnsureTyped(label_key, dtype=torch.long, track_meta=False))
    return xs


def sr_preprocessing(keys: Sequence[str] = ("image",), max_pixels: int = 50_000_000) -> list:
    """Super-resolution preprocessing: load only (the SR network sees the image contract as is)."""
    return [LoadCXRImaged(list(keys), max_pixels=max_pixels), EnsureTyped(list(keys), dtype=torch.float32)]
