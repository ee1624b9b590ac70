"""The exposed field of a film: the film without a shutter frame.

An electronic shutter (black, or white on a display-inverted film) or a collimator blade's shadow leaves a band of
near-constant intensity along one or more edges of the film, inside which the anatomy was exposed. Read as part of
the film, such a frame changes what the classifier and the scope gate see (a black 20 % frame made the 0.5.0
classifier call every kept normal PNEUMONIA; a white 10 % frame hid every pneumonia): the frame is not anatomy.
:func:`exposed_field` finds the frame side by side - the lines from the edge inwards whose pixels are almost all
within ``tolerance`` of the edge line's median - and :class:`ExposedFieldCrop` crops the film to what is left, so
that a framed film becomes the crop it is (a collimated film), which the lung-field view, the lung-field rule and
the gate then judge as any crop. A film without a frame is returned as it is.

The box travels in the image's metadata under :data:`EXPOSED_FIELD_KEY` (fractions of the film as read), for
Grad-CAM's mapping back to the film and for the outputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = ["EXPOSED_FIELD_KEY", "ExposedField", "exposed_field", "box_pixels", "compose_box", "ExposedFieldCrop",
           "ExposedFieldCropd", "ExposedFieldCropD", "ExposedFieldCropDict"]

EXPOSED_FIELD_KEY = "exposed_field"
"""Metadata key of the :class:`ExposedField` (as a dict) on the cropped film."""


@dataclass(frozen=True)
class ExposedField:
    """The exposed field of a film in fractions of its height and width, and the frame found on each side.

    Attributes:
        top, left, bottom, right: the exposed field's box.
        frame: the frame's thickness on each side (``top``, ``bottom``, ``left``, ``right``) as a fraction of the
            film's side (0 where there is none).
        edge_value: the median of each side's outermost line, [0, 1] (the frame's intensity where there is one);
            every field has the same keys on every film, so that batches of metadata collate.
        found: a frame was found on at least one side (the film is cropped).
    """

    top: float
    left: float
    bottom: float
    right: float
    frame: dict[str, float]
    edge_value: dict[str, float]
    found: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def box_pixels(box: Mapping[str, Any], height: int, width: int, eps: float = 0.0) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of a box given in fractions (``top``, ``left``, ``bottom``, ``right``) on a film of
    ``height`` x ``width`` px (at least 2 px each way); ``eps`` (pixels) absorbs float rounding for a box made
    of whole pixels (the exposed field), 0 for the lung-field box (as the shipped models were trained)."""
    y0, x0 = int(np.floor(float(box["top"]) * height + eps)), int(np.floor(float(box["left"]) * width + eps))
    y1, x1 = int(np.ceil(float(box["bottom"]) * height - eps)), int(np.ceil(float(box["right"]) * width - eps))
    y1, x1 = max(y1, min(height, y0 + 2)), max(x1, min(width, x0 + 2))
    return y0, x0, y1, x1


def compose_box(inner: Mapping[str, Any], outer: Mapping[str, Any] | None) -> dict[str, Any]:
    """``inner`` (fractions of the ``outer`` box) in fractions of the film ``outer`` lies on; the other fields
    of ``inner`` are kept as they are (``None`` outer: ``inner`` unchanged)."""
    out = dict(inner)
    if not outer:
        return out
    h = float(outer["bottom"]) - float(outer["top"])
    w = float(outer["right"]) - float(outer["left"])
    out["top"] = float(outer["top"]) + float(inner["top"]) * h
    out["bottom"] = float(outer["top"]) + float(inner["bottom"]) * h
    out["left"] = float(outer["left"]) + float(inner["left"]) * w
    out["right"] = float(outer["left"]) + float(inner["right"]) * w
    return out


def _frame_lines(lines: np.ndarray, tolerance: float, share: float, depth: int) -> tuple[int, float, float]:
    """How many of ``lines`` (``(L, N)``: line 0 at the edge) from the edge inwards are frame, its value, and the
    step at its inner edge (the frame's median against the median of the ``depth`` lines beyond it)."""
    value = float(np.median(lines[0]))
    near = (np.abs(lines - value) <= tolerance).mean(axis=1) >= share
    if not near[0]:
        return 0, value, 0.0
    count = int(np.argmin(near)) if not near.all() else len(near)
    beyond = lines[count: count + depth]
    step = abs(float(np.median(lines[:count])) - float(np.median(beyond))) if len(beyond) else 0.0
    return count, value, step


def exposed_field(image: np.ndarray | torch.Tensor, tolerance: float = 0.1, share: float = 0.9,
                  min_frame: float = 0.01, min_field: float = 0.3, max_side_band: float = 0.12,
                  min_step: float = 0.15, step_depth: float = 0.03) -> ExposedField:
    """The exposed field of one ``(1, H, W)`` (or ``(H, W)``) film in [0, 1].

    On each side the frame is the run of lines from the edge inwards in which at least ``share`` of the pixels lie
    within ``tolerance`` of the edge line's median (a shutter is near-constant; a marker or burned-in text inside it
    is tolerated up to ``1 - share`` of a line). A run thinner than ``min_frame`` of the side is not a frame (a
    scanner's border line). A frame has a sharp edge somewhere: at least one side's run must end in a step (its
    median differs by at least ``min_step`` from the median of the ``step_depth`` of the side beyond it); runs on
    the other sides count when their value is the same (within ``tolerance``): anatomy that fades evenly, such as
    the abdomen at the bottom of a tight crop, is not a frame. When the field left would be under ``min_field`` of
    the film's height or width (an almost uniform image: not a film), nothing is cropped.

    A film is cropped only when its frame is a shutter, unlike the films the models were trained on: a frame on the
    top or bottom, a bright frame (median above 0.5), or a dark band on the left or right wider than
    ``max_side_band`` of the width. Dark bands at the sides alone, up to that width, are how about a third of the
    Kermany training films look (air beside the patient; 99th percentile of their width 0.12 on 680 training
    films): they are left as they are, so that ordinary films reach the models as they were validated.
    """
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    x = np.squeeze(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"image must be (1, H, W) or (H, W), got {np.shape(image)}")
    if not 0 < tolerance < 1 or not 0.5 < share <= 1 or not 0 <= min_frame < 0.5 or not 0 < min_field <= 1:
        raise ValueError(f"need 0 < tolerance < 1, 0.5 < share <= 1, 0 <= min_frame < 0.5, 0 < min_field <= 1; got "
                         f"{tolerance}, {share}, {min_frame}, {min_field}")
    h, w = x.shape
    sides = {"top": (x, h), "bottom": (x[::-1], h), "left": (x.T, w), "right": (x.T[::-1], w)}
    runs, edge = {}, {}
    for side, (lines, n) in sides.items():
        count, v, step = _frame_lines(lines[: n // 2 + 1], tolerance, share, max(2, round(step_depth * n)))
        edge[side] = v
        if count >= max(1, min_frame * n):
            runs[side] = (count / n, v, step)
    # one shutter, one value: the sides whose run ends in a sharp edge set it, and the other runs of that value
    # (a side whose frame meets anatomy of about its own brightness) belong to the same frame
    edges = [v for _, v, step in runs.values() if step >= min_step]
    frame = {side: 0.0 for side in sides}
    value = {}
    for side, (fraction, v, _) in runs.items():
        if any(abs(v - e) <= tolerance for e in edges):
            frame[side], value[side] = fraction, v
    field_h, field_w = 1 - frame["top"] - frame["bottom"], 1 - frame["left"] - frame["right"]
    shutter = (frame["top"] > 0 or frame["bottom"] > 0 or any(v > 0.5 for v in value.values())
               or max(frame["left"], frame["right"]) > max_side_band)
    if not shutter or field_h < min_field or field_w < min_field:
        return ExposedField(0.0, 0.0, 1.0, 1.0, {k: 0.0 for k in frame}, edge, False)
    return ExposedField(top=frame["top"], left=frame["left"], bottom=1 - frame["bottom"], right=1 - frame["right"],
                        frame=frame, edge_value=edge, found=True)


class ExposedFieldCrop(Transform):
    """Crop a ``(1, H, W)`` film to its exposed field (:func:`exposed_field`); the box goes into the output's
    metadata under :data:`EXPOSED_FIELD_KEY`. A film without a frame is returned unchanged (with its box, the
    whole film, ``found`` false).

    Args:
        kwargs: the detector's settings, as :func:`exposed_field` takes them (its defaults are the shipped ones).
    """

    def __init__(self, **kwargs: float) -> None:
        exposed_field(np.zeros((4, 4), np.float32), **kwargs)  # unknown or out-of-range settings fail here
        self.kwargs = dict(kwargs)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img, dtype=np.float32))
        if t.ndim != 3 or t.shape[0] != 1:
            raise ValueError(f"image must be (1, H, W), got {tuple(t.shape)}")
        field = exposed_field(t, **self.kwargs)
        meta = dict(getattr(img, "meta", {}) or {})
        meta[EXPOSED_FIELD_KEY] = field.as_dict()
        raw = t.as_tensor() if isinstance(t, MetaTensor) else t
        if field.found:
            y0, x0, y1, x1 = box_pixels(field.as_dict(), int(t.shape[-2]), int(t.shape[-1]), eps=1e-6)
            raw = raw[:, y0:y1, x0:x1].clone()
        return MetaTensor(raw.float(), meta=meta)


class ExposedFieldCropd(MapTransform):
    """Dictionary version of :class:`ExposedFieldCrop`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: float) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop = ExposedFieldCrop(**kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.crop(d[key])
        return d


ExposedFieldCropD = ExposedFieldCropDict = ExposedFieldCropd
