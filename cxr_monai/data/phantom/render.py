"""Procedural chest radiograph phantom: license-free test data and the demo's default input.

The phantom is rendered analytically in normalised coordinates (``u`` from -1 at the left image edge to +1 at
the right, ``v`` from -1 at the top to +1 at the bottom), so the same seed gives the same anatomy at any size.
The image is built as a projected density map (soft tissue thickness, lung air, heart, mediastinum, bones,
vessels), blurred slightly by the detector, corrupted by quantum noise whose variance grows with attenuation,
and mapped to the display orientation of the image contract: single channel, float32 in [0, 1], bright bone,
dark lung, channel-first ``(1, H, W)``. The view is PA: the patient's right is on the image left and the heart
lies to the image right.

A pneumonia-like consolidation (soft-edged, mottled, with air bronchograms) can be placed in one lobe of one
lung; its mask is returned. The anatomy, the consolidation and the noise use independent random streams, so a
phantom with and without consolidation differs only where the consolidation is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "PHANTOM_PIXEL_SPACING_MM",
    "make_phantom",
    "phantom_anatomy",
    "phantom_pixel_spacing",
]

#: detector pixel pitch of the phantom at 2048 px (a typical CR plate: 0.143 mm); smaller images scale it up.
PHANTOM_PIXEL_SPACING_MM = 0.143
_FULL_SIZE = 2048

# Density levels; the displayed image is ``_OFFSET + _GAIN * density``, clipped to [0, 1].
_OFFSET = 0.03
_GAIN = 1.15
_BODY = 0.68  # soft tissue through the full torso thickness
_LUNG_AIR = 0.45  # density removed by the lungs' air at their thickest
_SPINE = 0.075
_RIB_POST = 0.085
_RIB_ANT = 0.04
_CLAVICLE = 0.15
_VESSEL = 7.0  # density per unit (normalised) vessel thickness
_NOISE_512 = 0.005  # quantum noise std in lung at 512 px and dose 1


# ----------------------------------------------------------------------------------------------------- helpers
def _shape2d(size: int | Sequence[int]) -> tuple[int, int]:
    """Validate ``size`` (an int or ``(H, W)``) and return ``(H, W)``."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        hw = tuple(int(s) for s in size)  # type: ignore[assignment]
        if len(hw) != 2:
            raise ValueError(f"size must be an int or (H, W), got {size!r}")
    if min(hw) < 16 or max(hw) > 8192:
        raise ValueError(f"phantom size must be within 16..8192 pixels per side, got {hw}")
    return hw  # type: ignore[return-value]


def _check_seed(seed: int) -> int:
    """A non-negative integer seed."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (``e0 > e1`` gives a falling step)."""
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _coords(n: int) -> np.ndarray:
    """Pixel-centre coordinates of ``n`` pixels spanning (-1, 1), float32."""
    return ((np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0).astype(np.float32)


def _grid(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: ``v`` of shape (H, 1) and ``u`` of shape (1, W), both in (-1, 1)."""
    return _coords(hw[0])[:, None], _coords(hw[1])[None, :]


def _rbf_taps(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice indices (n, 6) and normalised Gaussian weights (n, 6) of ``n`` pixel centres."""
    pos = (_coords(n).astype(np.float64) + 1.0) * cells / 2.0 + 2.5  # lattice node k sits at pos == k
    idx = np.floor(pos).astype(np.int64)[:, None] - 2 + np.arange(6)[None, :]
    w = np.exp(-0.5 * ((pos[:, None] - idx) / 0.75) ** 2)
    return idx, (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _rbf_norm() -> float:
    """Standard deviation of the 1-D tap sum over unit white noise, averaged over the lattice phase."""
    pos = np.linspace(0.0, 1.0, 256, endpoint=False) + 2.5
    idx = np.floor(pos)[:, None] - 2 + np.arange(6)[None, :]
    w = np.exp(-0.5 * ((pos[:, None] - idx) / 0.75) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return float(np.mean((w**2).sum(axis=1)))


_RBF_NORM = _rbf_norm()


def _smooth_field(rng: np.random.Generator, hw: tuple[int, int], cells: int) -> np.ndarray:
    """Size-independent smooth random field with about unit standard deviation.

    White noise on a lattice of ``cells`` cells across the image is interpolated with Gaussian radial basis
    functions, separably and with six taps per axis (no BLAS: deterministic, thread-free), so the field seen
    at any image size is the same continuous function sampled at that size's pixel centres.
    """
    g = rng.standard_normal((cells + 6, cells + 6)).astype(np.float32)
    iy, wy = _rbf_taps(hw[0], cells)
    ix, wx = _rbf_taps(hw[1], cells)
    rows = np.einsum("ha,hak->hk", wy, g[iy])  # (H, cells + 6): small
    field = np.zeros(hw, dtype=np.float32)
    for b in range(6):
        field += rows[:, ix[:, b]] * wx[None, :, b]
    return field * (1.0 / _RBF_NORM)


def _draw_tubes(
    field: np.ndarray, segments: np.ndarray, density: float, hw: tuple[int, int], combine: str = "max"
) -> None:
    """Render cylinders (vessels, airways) projected side-on into ``field`` in place.

    Args:
        field: (H, W) float32 array to draw into.
        segments: (N, 5) rows ``x0, y0, x1, y1, radius`` in normalised coordinates.
        density: density per unit projected thickness (negative for air).
        hw: image shape.
        combine: ``"max"`` (union of a tree: no bright joints; ``min`` for negative densities) or ``"add"``.
    """
    h, w = hw
    du, dv = 2.0 / w, 2.0 / h
    cols, rows = _coords(w), _coords(h)
    min_r = 0.6 * max(du, dv)  # thinner tubes are widened with their density scaled to keep their integral
    for x0, y0, x1, y1, r in np.asarray(segments, dtype=np.float64).reshape(-1, 5).tolist():
        rr = max(r, min_r)
        scale = density * (r / rr) ** 2
        j0 = max(math.floor((min(x0, x1) - rr + 1.0) / du - 0.5), 0)
        j1 = min(math.ceil((max(x0, x1) + rr + 1.0) / du - 0.5) + 1, w)
        i0 = max(math.floor((min(y0, y1) - rr + 1.0) / dv - 0.5), 0)
        i1 = min(math.ceil((max(y0, y1) + rr + 1.0) / dv - 0.5) + 1, h)
        if j0 >= j1 or i0 >= i1:
            continue
        uu = (cols[j0:j1] - x0)[None, :]
        vv = (rows[i0:i1] - y0)[:, None]
        dx, dy = x1 - x0, y1 - y0
        inv = 1.0 / max(dx * dx + dy * dy, 1e-12)
        t = uu * (dx * inv) + vv * (dy * inv)
        np.clip(t, 0.0, 1.0, out=t)
        px, py = uu - t * dx, vv - t * dy
        val = rr * rr - (px * px + py * py)
        np.maximum(val, 0.0, out=val)
        np.sqrt(val, out=val)
        val *= scale
        sub = field[i0:i1, j0:j1]
        if combine == "add":
            sub += val
        elif density >= 0:
            np.maximum(sub, val, out=sub)
        else:
            np.minimum(sub, val, out=sub)


def _tree(
    rng: np.random.Generator, x: float, y: float, theta: float, length: float, radius: float, depth: int, side: int
) -> list[tuple[float, float, float, float, float]]:
    """Segments of a branching vessel tree growing from ``(x, y)``.

    ``theta`` is in radians (0 = lateral, positive = downwards), ``side`` is -1 (growing to the image left) or +1.
    Inner branches are two slightly bent sub-segments; children get shorter and thinner by about 25 %.
    """
    segs: list[tuple[float, float, float, float, float]] = []
    stack = [(x, y, theta, length, radius, depth)]
    while stack:
        x, y, th, ln, r, d = stack.pop()
        mid = th + rng.normal(0.0, 0.12)
        th2 = mid + rng.normal(0.0, 0.12)
        if d > 0:  # inner branches are bent (two sub-segments), leaves are straight
            xm, ym = x + side * math.cos(mid) * ln / 2, y + math.sin(mid) * ln / 2
            x1, y1 = xm + side * math.cos(th2) * ln / 2, ym + math.sin(th2) * ln / 2
            segs += [(x, y, xm, ym, r), (xm, ym, x1, y1, r * 0.92)]
        else:
            x1, y1 = x + side * math.cos(mid) * ln, y + math.sin(mid) * ln
            segs.append((x, y, x1, y1, r))
        if d > 0:
            spread = rng.uniform(0.30, 0.55)
            for sgn in (-1.0, 1.0):
                stack.append((x1, y1, th2 + sgn * spread * rng.uniform(0.7, 1.2),
                              ln * rng.uniform(0.68, 0.84), r * rng.uniform(0.66, 0.76), d - 1))
    return segs


# ----------------------------------------------------------------------------------------------------- anatomy
_LUNG_THR = 0.12  # lung thickness (relative) above which a pixel counts as lung in masks
_LUNG_BASE = 0.70  # costophrenic angles
_HILUM = (0.19, -0.06)


def _anatomy_params(seed: int) -> dict:
    """Seed-controlled anatomical variation, drawn in a fixed order from the anatomy stream."""
    rng = np.random.default_rng([int(seed), 0])
    p: dict = {
        "lung_top": -0.73 + rng.uniform(-0.03, 0.03),
        "lung_w": (0.68 * rng.uniform(0.95, 1.05), 0.66 * rng.uniform(0.95, 1.05)),  # image left, image right
        "dome_top": (0.36 + rng.uniform(-0.03, 0.03), 0.43 + rng.uniform(-0.03, 0.03)),
        "heart_scale": rng.uniform(0.9, 1.1),
        "heart_shift": rng.uniform(-0.03, 0.03),
        "rib_v1": -0.86 + rng.uniform(-0.035, 0.035),
        "rib_side": rng.uniform(-0.012, 0.012),
        "rib_sp": 0.112 * rng.uniform(0.96, 1.04),
        "rib_jitter": rng.normal(0.0, 0.006, size=(2, 14)),
        "ant_v1": -0.58 + rng.uniform(-0.03, 0.03),
        "spine_phase": rng.uniform(0.0, 1.0),
        "gastric": bool(rng.uniform() < 0.8),
        "gastric_pos": (0.42 + rng.uniform(-0.06, 0.06), rng.uniform(0.08, 0.12)),
        "trees": [(side, th + rng.normal(0.0, 0.08)) for side in (-1, 1) for th in (-1.45, -0.85, -0.25, 0.35, 0.95)],
    }
    p["tree_seed"] = int(rng.integers(2**31))
    p["tex_seed"] = int(rng.integers(2**31))
    return p


def _lung(v: np.ndarray, u: np.ndarray, t: np.ndarray, k: int, p: dict) -> np.ndarray:
    """Relative projected thickness (0..1) of lung ``k`` (0: image left, 1: image right) on one image half.

    ``t`` is the lateral distance from the midline; the lung is D-shaped (rounded apex, convex lateral border,
    straight medial border) and cut from below by its hemidiaphragm dome, leaving a sharp costophrenic angle.
    """
    top = p["lung_top"]
    y = (v - (top + _LUNG_BASE) / 2) * (2.0 / (_LUNG_BASE - top))  # -1 at the apex, +1 at the base
    up = np.clip(-y, 0.0, 1.0)
    t_med = 0.12 + 0.16 * np.clip((-y - 0.3) / 0.7, 0.0, 1.0) ** 2  # medial border bends laterally to the apex
    width = p["lung_w"][k] * np.sqrt(np.clip(1.0 - up**1.7, 0.0, 1.0)) * (1.0 + 0.10 * np.clip(y, 0.0, 1.0))
    xi = (t - t_med) / np.maximum(width, 1e-3)
    xi = np.clip(xi, 0.0, 1.0)
    prof = xi**0.6 * (1.0 - xi) ** 0.4 * (1.0 / (0.6**0.6 * 0.4**0.4))
    prof = prof * np.sqrt(np.clip((y + 1.0) / 0.25, 0.0, 1.0))
    side = (-1.0, 1.0)[k]
    dome_top, dome_c, dome_w = p["dome_top"][k], side * 0.45, 0.42
    vd = _LUNG_BASE - (_LUNG_BASE - dome_top) * np.clip(1.0 - ((u - dome_c) / dome_w) ** 2, 0.0, 1.0)
    below = np.sqrt(np.clip((vd - v) / 0.08, 0.0, 1.0))
    return prof * below


def _fields(hw: tuple[int, int], p: dict) -> dict[str, np.ndarray]:
    """Noise-free density components, each (H, W) float32, for anatomy parameters ``p``."""
    h, w = hw
    v, u = _grid(hw)
    f: dict[str, np.ndarray] = {k: np.zeros(hw, np.float32) for k in (
        "lung0", "lung1", "ribs", "clavicles", "scapulae")}

    # body: boxy torso with an elliptical cross-section (soft falloff to the skin line), sloping shoulders
    rs = ((np.abs(u) * (1 / 0.93)) ** 4 + (np.abs(v - 0.25) * (1 / 1.45)) ** 4) ** 0.25
    f["body"] = np.clip(1.0 - rs * rs, 0.0, 1.0) ** 0.35
    inside = _smoothstep(0.985, 0.90, rs)  # ribs stop at the inner chest wall

    # heart (rotated ellipse, apex to the image right and down) and aortic knob, which displace lung
    hs = p["heart_scale"]
    hu, hv = 0.12 + p["heart_shift"], 0.27
    ca, sa = np.cos(-0.45), np.sin(-0.45)
    xr, yr = (u - hu) * ca - (v - hv) * sa, (u - hu) * sa + (v - hv) * ca
    rh = np.sqrt((xr * (1 / (0.33 * hs))) ** 2 + (yr * (1 / (0.25 * hs))) ** 2)
    f["heart"] = _smoothstep(1.0, 0.90, rh)
    knob = _smoothstep(1.0, 0.8, np.sqrt(((u - 0.115) / 0.07) ** 2 + ((v + 0.31) / 0.07) ** 2))
    occl = np.clip(f["heart"] + knob, 0.0, 1.0)

    # per image half: lung, ribs, clavicle, scapula
    half_cols = (slice(0, w // 2), slice(w // 2, w))
    for k, side in enumerate((-1.0, 1.0)):
        cs = half_cols[k]
        uh = u[:, cs]
        t = side * uh  # lateral distance from the midline
        lung = _lung(v, uh, t, k, p)
        f[f"lung{k}"][:, cs] = lung * (1.0 - occl[:, cs])
        ins = inside[:, cs]

        # posterior ribs: one family of curves rendered at once through a continuous rib index
        bend = 0.55 + 0.9 * np.clip(-0.35 - v, 0.0, 1.0)  # upper ribs are shorter and more curved
        curve = bend * (t - 0.36) ** 2 - 0.07 + 1.6 * np.clip(t - 0.55, 0.0, None) ** 2
        wv = v - curve - (p["rib_v1"] + side * p["rib_side"])
        sp, dsp = p["rib_sp"], 0.0022
        kf = (-sp + np.sqrt(np.clip(sp * sp + 4 * dsp * wv, 0.0, None))) / (2 * dsp)
        n = np.clip(np.round(kf), 0, 13).astype(np.int64)
        dvv = wv - (n * sp + dsp * n * n + p["rib_jitter"][k][n]).astype(np.float32)
        hw_r = 0.030 + 0.010 * np.clip(t, 0.0, 1.0)
        outer = np.sqrt(np.clip(1.0 - (dvv / hw_r) ** 2, 0.0, 1.0))
        inner = np.sqrt(np.clip(1.0 - (dvv / (0.6 * hw_r)) ** 2, 0.0, 1.0))
        post = (outer - 0.45 * inner) * ((kf > -0.6) & (n <= 11)) * _smoothstep(0.05, 0.14, t)
        t_end = np.minimum(0.42 + 0.09 * n, 0.95).astype(np.float32)  # lateral end of rib n
        post = post * _smoothstep(0.80, 0.50, v) * _smoothstep(t_end + 0.03, t_end - 0.03, t)

        # anterior ribs: fainter, running down and medially, ending at the (invisible) costal cartilage
        wa = v - (-0.30 * (t - 0.85) + 0.25 * (t - 0.85) ** 2) - p["ant_v1"]
        spa, hwa = 0.165, 0.032
        dva = wa - np.clip(np.round(wa / spa), 0, 6) * spa
        ant = np.sqrt(np.clip(1.0 - (dva / hwa) ** 2, 0.0, 1.0)) - 0.4 * np.sqrt(
            np.clip(1.0 - (dva / (0.6 * hwa)) ** 2, 0.0, 1.0))
        ant = ant * ((wa > -0.5 * spa) & (wa < 6.5 * spa)) * _smoothstep(0.22, 0.34, t)
        f["ribs"][:, cs] = (post + (_RIB_ANT / _RIB_POST) * ant) * ins

        # clavicle: S-shaped, from the sternoclavicular joint up and out to the acromion
        tc = np.clip((t - 0.06) / 0.64, 0.0, 1.0)
        dc = v - (-0.62 - 0.13 * tc + 0.035 * np.sin(2 * np.pi * tc))
        hwc = 0.042 - 0.010 * tc
        clav = np.sqrt(np.clip(1.0 - (dc / hwc) ** 2, 0.0, 1.0)) - 0.35 * np.sqrt(
            np.clip(1.0 - (dc / (0.55 * hwc)) ** 2, 0.0, 1.0))
        f["clavicles"][:, cs] = clav * _smoothstep(0.04, 0.09, t) * _smoothstep(0.76, 0.68, t)

        # scapula: faint plate over the upper lateral lung with a visible medial border
        border = 0.60 + 0.18 * np.clip((v + 0.72) / 0.55, 0.0, 1.0)
        f["scapulae"][:, cs] = (_smoothstep(border - 0.01, border + 0.02, t) * _smoothstep(-0.80, -0.70, v)
                                * _smoothstep(-0.10, -0.25, v) * ins)

    # hila: vascular density at the lung roots
    f["hila"] = sum(np.exp(-0.5 * (((u - s * _HILUM[0]) / 0.045) ** 2 + ((v - _HILUM[1]) / 0.09) ** 2))
                    for s in (-1.0, 1.0))

    # spine: vertebral bodies with darker discs and pedicle ovals
    hw_s = 0.060 + 0.015 * (v + 1.0) / 2.0
    col = np.sqrt(np.clip(1.0 - (u / hw_s) ** 2, 0.0, 1.0))
    period = 0.11
    ph = (v + 1.0) / period + p["spine_phase"]
    disc = np.exp(-((np.abs(ph - np.round(ph)) * (period / 0.011)) ** 2))
    dcen = np.abs(ph - np.floor(ph) - 0.5) * period
    ped = np.exp(-(((np.abs(u) - 0.75 * hw_s) / 0.011) ** 2) - (dcen / 0.022) ** 2)
    f["spine"] = col * (1.0 - 0.35 * disc) + 0.45 * ped

    # airways: trachea and main bronchi (air, darker)
    air = np.zeros(hw, np.float32)
    _draw_tubes(air, np.array([(0.0, -1.1, 0.005, -0.30, 0.045), (0.005, -0.30, -0.16, -0.14, 0.028),
                               (0.005, -0.30, 0.17, -0.16, 0.026)]), -1.0 / 0.045, hw)
    f["airway"] = air

    # pulmonary vessels: branching trees from the hila
    vess = np.zeros(hw, np.float32)
    trng = np.random.default_rng(p["tree_seed"])
    segs: list[tuple[float, float, float, float, float]] = []
    for side, th in p["trees"]:
        segs += _tree(trng, side * _HILUM[0], _HILUM[1], th, 0.14, 0.012, 4, int(side))
    _draw_tubes(vess, np.asarray(segs), 1.0, hw)
    f["vessels"] = gaussian_filter(vess, sigma=(0.002 * h, 0.002 * w), mode="constant", truncate=3.0)

    # lung parenchyma texture (two scales)
    trng = np.random.default_rng(p["tex_seed"])
    f["texture"] = 0.6 * _smooth_field(trng, hw, 24) + 0.4 * _smooth_field(trng, hw, 72)

    # gastric air bubble under the left hemidiaphragm (image right)
    f["gastric"] = np.zeros(hw, np.float32)
    if p["gastric"]:
        gu, gdv = p["gastric_pos"]
        gv = p["dome_top"][1] + (_LUNG_BASE - p["dome_top"][1]) * ((gu - 0.45) / 0.42) ** 2 + gdv
        gb = np.sqrt(np.clip(1.0 - ((u - gu) / 0.10) ** 2 - ((v - gv) / 0.055) ** 2, 0.0, 1.0))
        f["gastric"] = gb * (v > gv - 0.025)
    return f


def _density(f: dict[str, np.ndarray], occ: np.ndarray | None = None, fill: np.ndarray | None = None) -> np.ndarray:
    """Combine the components into a projected density map (noise-free, before detector blur)."""
    lung = f["lung0"] + f["lung1"]
    lung_occ = np.clip(lung * 2.5, 0.0, 1.0)
    soft = np.clip(f["body"], 0.0, 1.0)
    vessels = f["vessels"] if occ is None else f["vessels"] * (1.0 - 0.85 * occ)  # silhouetted
    bone_gain = 0.55 + 0.45 * lung_occ  # bone contrast is lower over thick soft tissue (display processing)
    d = (_BODY * soft
         - _LUNG_AIR * lung * (1.0 + 0.10 * f["texture"])
         + 0.06 * f["hila"] * (0.4 + 0.6 * lung_occ)
         + bone_gain * (_RIB_POST * f["ribs"] + _CLAVICLE * f["clavicles"] + 0.035 * f["scapulae"])
         + _SPINE * f["spine"] * soft
         + 0.08 * f["airway"] * soft
         + _VESSEL * vessels * lung_occ
         - 0.10 * f["gastric"])
    if fill is not None:
        d = d + fill
    return d


def _consolidation(
    hw: tuple[int, int], seed: int, f: dict[str, np.ndarray], p: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A consolidation in one lobe of one lung: soft occupancy (H, W), added density (H, W) and mask (H, W)."""
    rng = np.random.default_rng([int(seed), 1])
    v, u = _grid(hw)
    k = int(rng.integers(2))  # 0: the patient's right lung (image left), 1: the left lung (image right)
    side = (-1.0, 1.0)[k]
    lobe = (("upper", "middle", "lower"), ("upper", "lingula", "lower"))[k][int(rng.integers(3))]
    top, dome = p["lung_top"] + 0.06, p["dome_top"][k]
    frac = {"upper": 0.22, "middle": 0.55, "lingula": 0.55, "lower": 0.82}[lobe] + rng.uniform(-0.05, 0.05)
    cv = top + frac * (dome - top)
    lateral = {"upper": 0.0, "middle": 0.0, "lingula": 0.05, "lower": 0.07}[lobe]
    cu = side * (0.10 + 0.55 * p["lung_w"][k] + lateral + rng.uniform(-0.04, 0.04))
    ra = rng.uniform(0.13, 0.20)
    edge = _smooth_field(rng, hw, 12)
    mottle = _smooth_field(rng, hw, 56)
    blobs = np.zeros(hw, np.float32)
    for b in range(3):  # a main blob and two satellites: patchy, lobulated outline
        off = np.clip(rng.normal(0.0, 0.45 * ra, size=2), -0.6 * ra, 0.6 * ra) if b else np.zeros(2)
        bu, bv = cu + off[0], cv + off[1]
        a1 = ra * (1.0 if b == 0 else rng.uniform(0.5, 0.8))
        a2 = a1 * rng.uniform(0.7, 1.3)
        ang = rng.uniform(0.0, np.pi)
        c, s = np.cos(ang), np.sin(ang)
        x, y = (u - bu) * c + (v - bv) * s, -(u - bu) * s + (v - bv) * c
        r = np.sqrt((x / a1) ** 2 + (y / a2) ** 2)
        blobs = np.maximum(blobs, _smoothstep(1.15, 0.25, r * (1.0 - 0.3 * np.tanh(edge) * np.clip(r, 0.0, 1.0))))
    lung = f[f"lung{k}"]
    lung_occ = np.clip(lung * 2.5, 0.0, 1.0)
    occ = blobs * lung_occ
    # air bronchograms: a few dark branching airways inside the consolidation
    bron = np.zeros(hw, np.float32)
    brng = np.random.default_rng([int(seed), 2])
    th = np.arctan2(cv - _HILUM[1], side * cu - _HILUM[0])
    segs: list[tuple[float, float, float, float, float]] = []
    for _ in range(3):
        x0, y0 = cu - side * np.cos(th) * ra * 0.9, cv - np.sin(th) * ra * 0.9
        segs += _tree(brng, x0, y0, th + brng.normal(0.0, 0.3), ra * 0.7, 0.006, 2, int(side))
    _draw_tubes(bron, np.asarray(segs), 1.0, hw)
    bron = gaussian_filter(bron, sigma=(0.003 * hw[0], 0.003 * hw[1]), mode="constant", truncate=3.0)
    bron = bron * (1.0 / max(float(bron.max()), 1e-6))
    fill_frac = np.clip(0.72 + 0.25 * mottle, 0.3, 1.0) * (1.0 - 0.35 * bron)
    fill = _LUNG_AIR * lung * occ * fill_frac
    mask = (occ > 0.5) & (lung > _LUNG_THR)
    return occ, fill, mask


def _render(
    hw: tuple[int, int], seed: int, consolidation: bool, noise: bool, dose: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The phantom image (1, H, W) float32 and the consolidation mask (1, H, W) bool or None."""
    p = _anatomy_params(seed)
    f = _fields(hw, p)
    occ = fill = mask = None
    if consolidation:
        occ, fill, mask = _consolidation(hw, seed, f, p)
    d = _density(f, occ, fill)
    d = gaussian_filter(d, sigma=0.5, mode="nearest")  # detector unsharpness, also anti-aliases the edges
    if noise:
        # quantum noise: fewer photons through denser parts and into smaller pixels (std in density units)
        rng = np.random.default_rng([int(seed), 3])
        pix = np.sqrt(hw[0] * hw[1]) / 512.0
        std = (_NOISE_512 * pix / np.sqrt(dose)) * np.exp(1.6 * (d - 0.3))
        d = d + std * rng.standard_normal(hw, dtype=np.float32)
    img = np.clip(_OFFSET + _GAIN * d, 0.0, 1.0).astype(np.float32)[None]
    return img, (mask[None] if mask is not None else None)


# ----------------------------------------------------------------------------------------------------- public API
def make_phantom(
    size: int | Sequence[int] = 512,
    seed: int = 0,
    consolidation: bool = False,
    noise: bool = True,
    dose: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render a procedural PA chest radiograph.

    Args:
        size: output size, an int (square) or ``(H, W)``; 16 to 8192 pixels per side. The anatomy is defined in
            normalised coordinates, so every size shows the same chest.
        seed: a non-negative integer; controls the anatomical variation (rib phase and spacing, heart size,
            lung size, diaphragm heights, vessel trees), the consolidation (lung, lobe, shape) and the noise.
            Same seed, same image.
        consolidation: add a pneumonia-like consolidation in one lobe of one lung and return its mask.
        noise: add quantum noise (Gaussian, variance growing with attenuation and with 1 / pixel area).
        dose: relative exposure; the noise standard deviation scales with ``1 / sqrt(dose)``.

    Returns:
        ``(image, mask)``: image float32 ``(1, H, W)`` in [0, 1] (display orientation: dark lung, bright bone);
        mask bool ``(1, H, W)`` of the consolidation, or ``None`` when ``consolidation`` is False.

    Raises:
        ValueError: for a size out of range, a negative seed or a non-positive dose.
    """
    hw = _shape2d(size)
    if not dose > 0:
        raise ValueError(f"dose must be positive, got {dose}")
    img, mask = _render(hw, _check_seed(seed), bool(consolidation), bool(noise), float(dose))
    return img, mask


def phantom_anatomy(size: int | Sequence[int] = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """Boolean anatomical masks of the phantom for ``size`` and ``seed`` (for tests and region statistics).

    Args:
        size: an int or ``(H, W)``, as for :func:`make_phantom`.
        seed: the phantom's seed.

    Raises:
        ValueError: for a size out of range or a negative seed.

    Returns:
        ``(H, W)`` bool masks: ``body``, ``right_lung`` (the patient's right, on the image left), ``left_lung``,
        ``lungs`` (relative lung thickness above 0.12, the threshold the consolidation mask uses), ``heart``
        (where it does not overlap lung), ``mediastinum`` (midline soft tissue between the upper lungs, above
        the heart) and ``spine`` (its midline strip).
    """
    hw = _shape2d(size)
    f = _fields(hw, _anatomy_params(_check_seed(seed)))
    v, u = _grid(hw)
    right, left = f["lung0"] > _LUNG_THR, f["lung1"] > _LUNG_THR
    body = f["body"] > 0.3
    near_lung = (f["lung0"] + f["lung1"]) > 0.01
    full = np.ones(hw, dtype=bool)
    return {
        "body": body,
        "right_lung": right,
        "left_lung": left,
        "lungs": right | left,
        "heart": (f["heart"] > 0.5) & ~near_lung,
        "mediastinum": body & ~near_lung & (np.abs(u) < 0.2) & (v > -0.55) & (v < 0.0) & full,
        "spine": (np.abs(u) < 0.04) & (v > -0.9) & (v < 0.9) & full,
    }


def phantom_pixel_spacing(size: int | Sequence[int]) -> tuple[float, float]:
    """Pixel spacing ``(row_mm, col_mm)`` of a phantom of ``size``: a 2048-px image has 0.143 mm pixels."""
    h, w = _shape2d(size)
    return PHANTOM_PIXEL_SPACING_MM * _FULL_SIZE / h, PHANTOM_PIXEL_SPACING_MM * _FULL_SIZE / w
