"""Procedural images that are not chest radiographs, for training and testing the intended-population gate.

Every generator returns a ``(1, size, size)`` float32 image in ``[0, 1]`` (the image contract) and is
deterministic for a given ``numpy.random.Generator``. Kinds (:data:`NEGATIVE_KINDS`): uniform and Gaussian
noise, smooth random fields (photograph-like textures), text documents, geometric shapes and gradients,
CT/MR-like cross-sections (an elliptic body with organs in a dark field of view), and a crude
photograph-like scene (a figure against a textured background).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["NEGATIVE_KINDS", "make_negative", "negative_set", "bedside_like"]


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-12:
        a = a + np.linspace(0, 1e-3, a.size).reshape(a.shape)
        lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _uniform_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random((n, n))


def _gaussian_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.3), (n, n)), 0, 1)


def _smooth_field(rng: np.random.Generator, n: int) -> np.ndarray:
    a = np.zeros((n, n))
    for sigma in rng.uniform(1, n / 6, size=int(rng.integers(1, 4))):
        a += rng.uniform(0.3, 1.0) * ndimage.gaussian_filter(rng.normal(size=(n, n)), sigma)
    return a


def _document(rng: np.random.Generator, n: int) -> np.ndarray:
    scale = 4
    img = Image.new("L", (n * scale, n * scale), int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(4, 30))
    margin = int(rng.integers(8, 60))
    letters = "abcdefghijklmnopqrstuvwxyz      0123456789.,"
    while y < n * scale - 20:
        words = "".join(rng.choice(list(letters), size=int(rng.integers(20, 90))))
        draw.text((margin, y), words, fill=int(rng.integers(0, 60)))
        y += int(rng.integers(12, 26))
        if rng.random() < 0.1:
            y += 20
    a = np.asarray(img.resize((n, n), Image.BILINEAR), dtype=np.float64) / 255.0
    return 1.0 - a if rng.random() < 0.2 else a


def _shapes(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    a = rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy
    for _ in range(int(rng.integers(2, 12))):
        cx, cy, r = rng.random(), rng.random(), rng.uniform(0.03, 0.3)
        if rng.random() < 0.5:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        else:
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < rng.uniform(0.03, 0.3))
        a[mask] = rng.uniform(-1, 2)
    if rng.random() < 0.3:
        k = int(rng.integers(2, 16))
        a += ((np.floor(xx * k) + np.floor(yy * k)) % 2) * rng.uniform(0.2, 1)
    return a


def _cross_section(rng: np.random.Generator, n: int) -> np.ndarray:
    """A CT/MR-like slice: dark field, elliptic body, bright rim, organs, noise, often a circular FOV."""
    yy, xx = (np.mgrid[0:n, 0:n] / n - 0.5) * 2
    a = np.zeros((n, n))
    ax, ay = rng.uniform(0.5, 0.95), rng.uniform(0.4, 0.9)
    body = (xx / ax) ** 2 + (yy / ay) ** 2 < 1
    a[body] = rng.uniform(0.3, 0.6)
    rim = body & ~((xx / (ax - 0.05)) ** 2 + (yy / (ay - 0.05)) ** 2 < 1)
    a[rim] = rng.uniform(0.6, 1.0)
    for _ in range(int(rng.integers(2, 9))):
        cx, cy = rng.uniform(-ax * 0.6, ax * 0.6), rng.uniform(-ay * 0.6, ay * 0.6)
        rx, ry = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)
        organ = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        a[organ & body] = rng.uniform(0.0, 1.0)
    a = ndimage.gaussian_filter(a, rng.uniform(0.3, 1.5)) + rng.normal(0, rng.uniform(0.005, 0.05), (n, n))
    if rng.random() < 0.5:
        a[xx ** 2 + yy ** 2 > 1] = 0
    return a


def _scene(rng: np.random.Generator, n: int) -> np.ndarray:
    """Photograph-like: textured background, a figure (head and torso), soft lighting."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    a = ndimage.gaussian_filter(rng.normal(size=(n, n)), rng.uniform(2, 10)) * rng.uniform(0.5, 2)
    a += rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.4)
    head = ((xx - cx) / 0.12) ** 2 + ((yy - cy) / 0.16) ** 2 < 1
    torso = ((xx - cx) / 0.3) ** 2 + ((yy - cy - 0.5) / 0.35) ** 2 < 1
    a[head] = rng.uniform(-1, 2) + 0.2 * rng.normal(size=int(head.sum()))
    a[torso] = rng.uniform(-1, 2)
    eyes = (((xx - cx + 0.04) ** 2 + (yy - cy + 0.02) ** 2) < 0.0004) | (((xx - cx - 0.04) ** 2 + (yy - cy + 0.02) ** 2) < 0.0004)
    a[eyes] = a.min()
    return ndimage.gaussian_filter(a, rng.uniform(0.5, 1.5))


NEGATIVE_KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "uniform_noise": _uniform_noise,
    "gaussian_noise": _gaussian_noise,
    "smooth_field": _smooth_field,
    "document": _document,
    "shapes": _shapes,
    "cross_section": _cross_section,
    "scene": _scene,
}
"""Name -> generator ``(rng, size) -> (size, size)`` array (any range; :func:`make_negative` normalises)."""


def make_negative(kind: str, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One procedural out-of-scope image ``(1, size, size)`` float32 in [0, 1]."""
    if kind not in NEGATIVE_KINDS:
        raise KeyError(f"unknown negative kind {kind!r}; known: {sorted(NEGATIVE_KINDS)}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    return _norm(NEGATIVE_KINDS[kind](rng, size))[None]


def negative_set(n_per_kind: int, seed: int, size: int = 224,
                 kinds: tuple[str, ...] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """``n_per_kind`` images of each kind (all kinds by default) and their kind names."""
    rng = np.random.default_rng(seed)
    images, names = [], []
    for kind in kinds or tuple(NEGATIVE_KINDS):
        for _ in range(int(n_per_kind)):
            images.append(make_negative(kind, rng, size))
            names.append(kind)
    return images, names


def bedside_like(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An adult film made to look like a bedside (portable) one: lines and tubes (bright curves: an
    endotracheal tube down the midline, central lines, ECG leads with round electrodes), patchy opacities in
    the lung zones and a lower contrast. For training and checking the gate against the bedside films of other
    hospitals that the repository does not hold (a simulation: the card says so).

    Args:
        image: ``(1, H, W)`` in [0, 1].
        rng: the random source (deterministic per generator state).
    """
    x = np.asarray(image, dtype=np.float32)[0].copy()
    h, w = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lines = np.zeros_like(x)

    def curve(p0, p1, p2, width, value):
        t = np.linspace(0, 1, 4 * max(h, w))[:, None]
        pts = (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)
        r, c = np.clip(pts[:, 0].round().astype(int), 0, h - 1), np.clip(pts[:, 1].round().astype(int), 0, w - 1)
        canvas = np.zeros_like(x)
        canvas[r, c] = 1.0
        canvas = ndimage.maximum_filter(canvas, size=max(1, int(width)))
        np.maximum(lines, value * canvas, out=lines)

    if rng.random() < 0.8:  # endotracheal / nasogastric tube near the midline
        cx = w * rng.uniform(0.45, 0.55)
        curve((0, cx), (h * 0.3, cx + w * rng.uniform(-0.05, 0.05)), (h * rng.uniform(0.35, 0.9), cx + w * rng.uniform(-0.1, 0.1)),
              max(2, w // 60), rng.uniform(0.6, 1.0))
    for _ in range(rng.integers(1, 4)):  # central lines, leads
        p0 = (rng.uniform(0, h * 0.3), rng.choice([rng.uniform(0, w * 0.2), rng.uniform(w * 0.8, w)]))
        curve(p0, (rng.uniform(0, h), rng.uniform(0, w)), (rng.uniform(h * 0.2, h * 0.7), rng.uniform(w * 0.3, w * 0.7)),
              max(1, w // 100), rng.uniform(0.5, 1.0))
    for _ in range(rng.integers(0, 5)):  # ECG electrodes
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.015, 0.03) * w
        lines = np.maximum(lines, 0.9 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2))
    opac = np.zeros_like(x)
    for _ in range(rng.integers(1, 5)):  # patchy opacities in the lung zones
        cy, cx = rng.uniform(0.3, 0.75) * h, rng.choice([rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)]) * w
        r = rng.uniform(0.05, 0.15) * w
        opac += rng.uniform(0.1, 0.4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    x = 0.15 + 0.75 * x + opac
    x = np.maximum(x, lines)
    return _norm(x)[None].astype(np.float32)
