"""The lung-field view: the part of a chest film that the lungs define, found by the lung-field network.

The classifier, its scope gate and Grad-CAM read this view instead of the whole film, so that collimation,
zoom, patient size and position matter as little as possible. :class:`LungFieldCrop` runs the lung-field
network (:class:`~cxr_monai.networks.LungFieldNet`, TorchScript ``lung_field.ts``) on the whole film at
:data:`~cxr_monai.networks.LUNG_INPUT_SIZE` px, takes the box that holds the lungs (robust 0.5-99.5 % extent of
the thresholded mask along each axis) widened by a margin, and crops the film to it at its own resolution; the
classifier preprocessing then resizes the crop to the network input. The box, the lung share of the film and
how much lung touches the film's edge travel in the image's metadata under :data:`LUNG_FIELD_KEY`, for the
scope rule (:func:`cxr_monai.scope.lung_field_reason`), Grad-CAM's mapping back to the film and the outputs.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from cxr_monai.transforms.exposed_field import EXPOSED_FIELD_KEY, box_pixels, compose_box
from cxr_monai.utils import load_torchscript_with_meta
from cxr_monai.utils import file_sha256, read_json
import shutil

__all__ = [
    "LUNG_FIELD_KEY",
    "LUNG_FIELD_KIND",
    "LungBox",
    "lung_box",
    "lung_net_input",
    "percentile_normalise_batch",
    "load_lung_field",
    "lung_field_of",
    "named_lung_field",
    "place_lung_field",
    "LungField",
    "LungFieldCrop",
    "LungFieldCropd",
    "LungFieldCropD",
    "LungFieldCropDict",
]

LUNG_FIELD_KEY = "lung_field"
"""Metadata key of the :class:`LungBox` (as a dict) on the cropped image."""

LUNG_FIELD_KIND = "lung_field"
"""``kind`` embedded in the lung-field network's TorchScript file."""


@dataclass(frozen=True)
class LungBox:
    """Where the lungs are on a film, in fractions of its height and width.

    Attributes:
        top, left, bottom, right: the view's box (lung extent widened by the margin, clipped to the film).
        lung_fraction: share of the film's area that the lung mask covers.
        edge_contact: the share of the film's perimeter that is lung (mean over the four edges of the share of
            each edge that the lung mask touches): 0 when the whole lung field is in view, about 0.2 at a 0.7
            central crop of a paediatric film, 0.4 at 0.6, 0.55 at 0.5 (medians on validation films).
        found: a lung mask was found at all (``lung_fraction`` above the minimum); when not, the box is the whole film.
    """

    top: float
    left: float
    bottom: float
    right: float
    lung_fraction: float
    edge_contact: float
    found: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of the box on a film of ``height`` x ``width`` px (at least 2 px each way)."""
        return box_pixels(self.as_dict(), height, width)


def _extent(profile: np.ndarray, tail: float) -> tuple[int, int]:
    """First and one-past-last index holding the central ``1 - 2 * tail`` of a 1-D mass profile."""
    cum = np.cumsum(profile, dtype=np.float64)
    total = cum[-1]
    lo = int(np.searchsorted(cum, tail * total, side="right"))
    hi = int(np.searchsorted(cum, (1.0 - tail) * total, side="left")) + 1
    return lo, max(hi, lo + 1)


def lung_box(probability: np.ndarray | torch.Tensor, margin: float = 0.08, min_lung_fraction: float = 0.02,
             tail: float = 0.005) -> LungBox:
    """The lung box of one film from the lung-field network's probability map.

    Args:
        probability: ``(S, S)`` (or ``(1, S, S)``) lung probability of the whole film.
        margin: widen the lung extent by this fraction of its own height / width on each side.
        min_lung_fraction: below this share of lung pixels no lungs are found (the box is the whole film).
        tail: share of lung mass ignored at each end of each axis (specks, a stray arm).
    """
    p = probability.detach().cpu().numpy() if isinstance(probability, torch.Tensor) else np.asarray(probability)
    p = np.squeeze(p)
    if p.ndim != 2:
        raise ValueError(f"probability must be (S, S), got {p.shape}")
    if margin < 0 or not 0 <= tail < 0.5:
        raise ValueError(f"need margin >= 0 and 0 <= tail < 0.5, got {margin}, {tail}")
    m = p > 0.5
    h, w = m.shape
    fraction = float(m.mean())
    edge = float((m[0].mean() + m[-1].mean() + m[:, 0].mean() + m[:, -1].mean()) / 4)
    if fraction < min_lung_fraction:
        return LungBox(0.0, 0.0, 1.0, 1.0, fraction, edge, False)
    r0, r1 = _extent(m.sum(1), tail)
    c0, c1 = _extent(m.sum(0), tail)
    dh, dw = margin * (r1 - r0), margin * (c1 - c0)
    return LungBox(top=max(0.0, (r0 - dh) / h), left=max(0.0, (c0 - dw) / w), bottom=min(1.0, (r1 + dh) / h),
                   right=min(1.0, (c1 + dw) / w), lung_fraction=fraction, edge_contact=edge, found=True)


def percentile_normalise_batch(x: torch.Tensor, lower: float = 0.01, upper: float = 0.99,
                               min_range: float = 1e-6) -> torch.Tensor:
    """Each image of ``(N, C, H, W)`` with its ``lower``..``upper`` quantiles mapped to [0, 1], clipped (the batch
    form of :class:`~cxr_monai.transforms.PercentileNormalize`, for tensors inside training loops); the range is
    at least ``min_range``, so a constant image maps to zeros."""
    flat = x.flatten(1)
    lo = torch.quantile(flat, lower, dim=1).view(-1, *([1] * (x.ndim - 1)))
    hi = torch.quantile(flat, upper, dim=1).view(-1, *([1] * (x.ndim - 1)))
    return ((x - lo) / (hi - lo).clamp_min(min_range)).clamp(0, 1)


def lung_net_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """The lung-field network's input: ``(N, 1, H, W)`` films resized to ``size`` squared (antialiased) and
    normalised per image (1st-99th percentile to [0, 1], clipped), as the classifier's input is."""
    x = F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return percentile_normalise_batch(x)


def _film(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One film as a ``(1, H, W)`` tensor (the image contract), or a ValueError."""
    x = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image, dtype=np.float32))
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"image must be (1, H, W), got {tuple(x.shape)}")
    return x


class LungField:
    """The lung-field network with its box rule, ready to run on films.

    Args:
        module: ``(N, 1, S, S) -> (N, 1, S, S)`` lung logits (TorchScript or :class:`~cxr_monai.networks.LungFieldNet`).
        info: its metadata: ``input_size`` (S), ``margin``, ``min_lung_fraction`` (defaults 128, 0.08, 0.02).
        device: where ``module`` lives.
    """

    def __init__(self, module: torch.nn.Module, info: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> None:
        info = dict(info or {})
        self.module = module.eval()
        self.info = info
        self.device = torch.device(device)
        self.input_size = int(info.get("input_size", 128))
        self.margin = float(info.get("margin", 0.08))
        self.min_lung_fraction = float(info.get("min_lung_fraction", 0.02))

    @torch.no_grad()
    def probability(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` lung probability of ``(N, 1, H, W)`` films in [0, 1]."""
        x = lung_net_input(torch.as_tensor(images), self.input_size).to(self.device)
        return torch.sigmoid(self.module(x).float()).cpu()

    def boxes(self, images: torch.Tensor) -> list[LungBox]:
        """The :class:`LungBox` of each film of a batch."""
        return [lung_box(p[0], self.margin, self.min_lung_fraction) for p in self.probability(images)]

    def mask_on_film(self, image: np.ndarray | torch.Tensor, widen: float = 0.05,
                     field: Mapping[str, Any] | None = None) -> np.ndarray:
        """``(H, W)`` boolean lung mask of one ``(1, H, W)`` film, widened by ``widen`` of the film's side (a
        max filter), at the film's size: where Grad-CAM is shown. With ``field`` (the exposed field the film was
        cropped to, :mod:`~cxr_monai.transforms.exposed_field`) the mask is found on that field and is zero on the
        frame."""
        x = _film(image)
        if field:
            y0, x0, y1, x1 = box_pixels(field, int(x.shape[-2]), int(x.shape[-1]), eps=1e-6)
            out = np.zeros(tuple(x.shape[-2:]), bool)
            out[y0:y1, x0:x1] = self.mask_on_film(x[:, y0:y1, x0:x1], widen)
            return out
        m = (self.probability(x[None].float()) > 0.5).float()
        k = 2 * max(1, round(widen * self.input_size)) + 1
        m = F.max_pool2d(m, k, stride=1, padding=k // 2)
        return F.interpolate(m, size=tuple(x.shape[-2:]), mode="nearest")[0, 0].numpy() > 0.5

    def box(self, image: np.ndarray | torch.Tensor) -> LungBox:
        """The :class:`LungBox` of one ``(1, H, W)`` film."""
        return self.boxes(_film(image)[None])[0]


_CACHE: dict[tuple[str, str], LungField] = {}


def load_lung_field(path: str | os.PathLike, device: str | torch.device = "cpu") -> LungField:
    """Read a lung-field network written by :func:`cxr_monai.engines.lung.save_lung_field` (the classifier
    bundle's ``models/lung_field.ts`` or the deploy copy ``cxr_lung/model.ts``); one copy per path and device."""

    key = (str(Path(path).resolve()), str(torch.device(device)))
    if key not in _CACHE:
        module, info = load_torchscript_with_meta(path, device, kind=LUNG_FIELD_KIND)
        _CACHE[key] = LungField(module, info, device)
    return _CACHE[key]


def lung_field_of(models_dir: str | os.PathLike, calibration_name: str = "calibration.json",
                  file_name: str = "lung_field.ts") -> str | None:
    """The lung-field network a classifier reads through: ``models_dir/file_name`` when the classifier's
    calibration file names one (``lung_field_sha256``, written by its training), else ``None`` (a classifier that
    reads the whole film). Bundle configs use it so that the preprocessing follows the weights in force.

    Raises:
        ValueError: the calibration names a lung-field network and the file is missing or has another hash.
    """

    root = Path(models_dir)
    return named_lung_field(root, read_json(root / calibration_name, default={}).get("lung_field_sha256"),
                            str(root / calibration_name), file_name)


def named_lung_field(models_dir: str | os.PathLike, want: str | None, named_by: str = "the model",
                     file_name: str = "lung_field.ts") -> str | None:
    """``models_dir/file_name`` checked against the hash ``want`` that a model names (``None``: the model reads
    the whole film, no file). Shared by :func:`lung_field_of` and the scope gate's
    :func:`cxr_monai.scope.gate_lung_field_of`.

    Raises:
        ValueError: the file is missing or has another hash.
    """

    if not want:
        return None
    path = Path(models_dir) / file_name
    if not path.is_file():
        raise ValueError(f"{named_by} names lung-field network {want[:12]} but {path} is missing")
    have = file_sha256(path)
    if have != want:
        raise ValueError(f"{path} (sha256 {have[:12]}) is not the lung-field network {want[:12]} that "
                         f"{named_by} was trained through")
    return str(path)


def place_lung_field(lung_field_file: str | os.PathLike | None, models_dir: str | os.PathLike,
                     file_name: str = "lung_field.ts") -> str | None:
    """Copy the lung-field network a classifier was trained through into its models folder (``ensemble.json``
    writes a classifier there whose calibration names it: :func:`lung_field_of` finds it beside the weights).
    Returns the path in ``models_dir`` (``None`` when there is no lung-field network)."""

    if not lung_field_file:
        return None
    target = Path(models_dir) / file_name
    if Path(lung_field_file).resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lung_field_file, target)
    return str(target)


def _as_lung_field(lung_field: LungField | str | os.PathLike) -> LungField:
    return lung_field if isinstance(lung_field, LungField) else load_lung_field(lung_field)


class LungFieldCrop(Transform):
    """Crop a ``(1, H, W)`` film to its lung-field box (:func:`lung_box`) at the film's own resolution; the box
    goes into the output's metadata under :data:`LUNG_FIELD_KEY`. When no lungs are found the film is kept whole
    (the scope rule refuses it).

    Args:
        lung_field: a :class:`LungField` or the path of its TorchScript file.
    """

    def __init__(self, lung_field: LungField | str | os.PathLike) -> None:
        self.lung_field = _as_lung_field(lung_field)

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        x = _film(img)
        box = self.lung_field.box(x.as_tensor() if isinstance(x, MetaTensor) else x)
        y0, x0, y1, x1 = box.pixels(int(x.shape[-2]), int(x.shape[-1]))
        meta = dict(getattr(img, "meta", {}) or {})
        # on a film cropped to its exposed field the box is placed back on the film as read (its lung share and
        # edge contact stay those of the exposed field: the lung-field rule judges what was exposed)
        field = meta.get(EXPOSED_FIELD_KEY) or {}
        meta[LUNG_FIELD_KEY] = compose_box(box.as_dict(), field if field.get("found") else None)
        out = x.as_tensor() if isinstance(x, MetaTensor) else x
        return MetaTensor(out[:, y0:y1, x0:x1].float().clone(), meta=meta)


class LungFieldCropd(MapTransform):
    """Dictionary version of :class:`LungFieldCrop`."""

    def __init__(self, keys: KeysCollection, lung_field: LungField | str | os.PathLike,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop = LungFieldCrop(lung_field)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.crop(d[key])
        return d


LungFieldCropD = LungFieldCropDict = LungFieldCropd
