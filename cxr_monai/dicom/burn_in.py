"""Burned-in text: the AI finding written into the pixels of the images the deploy app stores, so that any
viewer shows it (many PACS viewers, and OHIF, do not render the content of a DICOM SR).

* :func:`finding_lines` — the text of one image's result (label, probability, threshold, scope, calibration in
  force, model and version, "AI result - not for primary diagnosis"), composed from the classifier's result dict.
* :func:`burn_in` — an image (RGB overlay or grey radiograph) with those lines in a black band above it.

The band is added above the image rather than drawn over it, so no pixel of the radiograph or of the heat map
is hidden. Images narrower than ``min_width`` are first enlarged by a whole factor (nearest neighbour) so that
the text stays readable at the stored resolution. The font is Pillow's built-in default (no font file, nothing
downloaded): the scalable one (Pillow >= 10.1 with FreeType) at a size that follows the image width, otherwise
Pillow's bitmap font enlarged by a whole factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr_monai.dicom.codes import DISCLAIMER

__all__ = ["DISCLAIMER", "calibration_line", "finding_lines", "burn_in", "text_band"]


_TEXT = (255, 255, 255)
_WARN = (255, 215, 0)
_BITMAP_PX = 11  # line height of Pillow's bitmap default font


def calibration_line(calibration: Mapping[str, Any] | None) -> str:
    """The calibration in force, short: ``default`` or the site's id and commissioning date.

    Args:
        calibration: the ``calibration`` record of :func:`cxr_monai.inference.classify` (``source``
            ``"default"`` or ``"site"``, ``id``, ``date``); ``None`` reads as the default.
    """
    cal = dict(calibration or {"source": "default"})
    if cal.get("source") != "site":
        return "Calibration: default (shipped with the model)"
    return f"Calibration: site '{cal.get('id')}', commissioned {cal.get('date')}"


def finding_lines(result: Mapping[str, Any] | None, model_info: Mapping[str, Any], *,
                  scope_reason: str | None = None, cam_class: str | None = None,
                  failure_reason: str | None = None) -> list[str]:
    """The burned-in text of one image, one string per line.

    Args:
        result: :func:`cxr_monai.inference.classify` output (``label``, ``probability``, ``threshold``,
            ``calibration``); ignored when ``scope_reason`` is given.
        model_info: the classifier's ``model_name`` and ``version``.
        scope_reason: why the image is outside the intended population (``None``: in scope, assessed).
        cam_class: the class the Grad-CAM colours show (for the overlay), or ``None``.
        failure_reason: why the AI processing failed (the image was not assessed), or ``None``.
    """
    model = f"Model: {model_info.get('model_name', 'cxr_pneumonia_classifier')} {model_info.get('version', 'unknown')}"
    if failure_reason is not None:
        return [DISCLAIMER, "Pneumonia: NOT ASSESSED - AI processing failed", f"Reason: {failure_reason}", model]
    if scope_reason is not None:
        return [DISCLAIMER, "Pneumonia: NOT ASSESSED",
                f"Scope: outside the intended population - {scope_reason}",
                "Calibration: not applied (image not assessed)", model]
    if result is None:
        raise ValueError("finding_lines needs the classifier's result for an image in scope")
    lines = [DISCLAIMER,
             f"Finding: {str(result['label']).upper()}   probability {float(result['probability']):.3f}"
             f"   threshold {float(result['threshold']):.3f}",
             "Scope: in the intended population (frontal chest radiograph of a child)",
             calibration_line(result.get("calibration")), model]
    if cam_class is not None:
        lines.append(f"Colours: Grad-CAM of the class {cam_class}")
    return lines


def _scalable_font(px: int):
    """Pillow's built-in scalable font at ``px`` pixels, or ``None`` where Pillow has none (< 10.1, no FreeType)."""
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: load_default() takes no size
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


def _wrap(text: str, width: float, measure) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` (``measure(s)`` is the drawn length of ``s``); a word longer than
    the width is cut between characters."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while measure(word) > width and len(word) > 1:
            cut = 1
            while cut < len(word) and measure(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    lines.append(current)
    return lines


def text_band(lines: Sequence[str], width: int, font_px: int, *, bitmap: bool = False) -> np.ndarray:
    """``lines`` drawn on a black band ``width`` pixels wide, wrapped to it: ``(h, width, 3)`` uint8 RGB. The first
    line (the disclaimer) is yellow, the others white.

    Args:
        lines: the text, one string per line (long lines are wrapped).
        width: the band's width in pixels.
        font_px: the text height in pixels.
        bitmap: use Pillow's bitmap font enlarged by a whole factor (what Pillow < 10.1 offers) even where the
            scalable font exists.
    """
    from PIL import Image, ImageDraw, ImageFont

    if width < 1 or font_px < 1:
        raise ValueError(f"width and font_px must be positive, got {width}, {font_px}")
    font = None if bitmap else _scalable_font(int(font_px))
    scale = 1
    if font is None:
        font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
        scale = max(1, math.ceil(font_px / _BITMAP_PX))
    canvas_w = max(1, width // scale)
    margin = max(2, canvas_w // 60)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    measure = lambda s: probe.textlength(s, font=font)  # noqa: E731
    line_h = math.ceil(font.getbbox("Hg")[3] * 1.3)
    wrapped = [(i, part) for i, text in enumerate(lines) for part in _wrap(str(text), canvas_w - 2 * margin, measure)]
    band = Image.new("RGB", (canvas_w, 2 * margin + line_h * len(wrapped)), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for row, (i, part) in enumerate(wrapped):
        draw.text((margin, margin + row * line_h), part, fill=_WARN if i == 0 else _TEXT, font=font)
    out = np.asarray(band, dtype=np.uint8)
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    if out.shape[1] < width:  # width not a multiple of the scale: pad on the right
        out = np.pad(out, ((0, 0), (0, width - out.shape[1]), (0, 0)))
    return np.ascontiguousarray(out[:, :width])


def _rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
        return arr
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB or a (1, H, W) / (H, W) grey image, got {arr.shape}")
    grey = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def burn_in(image: np.ndarray, lines: Sequence[str], *, min_width: int = 512, max_width: int | None = None,
            bitmap: bool = False) -> np.ndarray:
    """``image`` with ``lines`` burned in, in a black band above it: ``(H' + band, W', 3)`` uint8 RGB.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (the Grad-CAM overlay) or a grey ``(1, H, W)`` / ``(H, W)`` image in
            ``[0, 1]`` (the radiograph, for a summary image).
        lines: the text (:func:`finding_lines`).
        min_width: an image narrower than this is enlarged by the smallest whole factor that reaches it.
        max_width: an image wider than this is reduced by the smallest whole factor that reaches it (mean of
            each block; the last rows and columns that do not fill a block are dropped). ``None``: no limit.
        bitmap: see :func:`text_band`.
    """
    rgb = _rgb(image)
    if max_width is not None and rgb.shape[1] > max_width:
        f = math.ceil(rgb.shape[1] / int(max_width))
        h, w = rgb.shape[0] // f * f, rgb.shape[1] // f * f
        blocks = rgb[:h, :w].reshape(h // f, f, w // f, f, 3).astype(np.float32).mean(axis=(1, 3))
        rgb = np.round(blocks).astype(np.uint8)
    factor = max(1, math.ceil(int(min_width) / rgb.shape[1]))
    if factor > 1:
        rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    width = rgb.shape[1]
    band = text_band(lines, width, max(16, width // 36), bitmap=bitmap)
    return np.ascontiguousarray(np.concatenate([band, rgb], axis=0))
