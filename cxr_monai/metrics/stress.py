"""Stress suite: a classifier scored under controlled acquisition shifts, per shift and strength, and worst case.

Validation data made from the training split shares its acquisition: clean validation AUC saturates and says
little about another site. The suite applies each shift of :mod:`cxr_monai.transforms.stress` to the *loaded*
[0, 1] image, then the model's own preprocessing (``cxr_monai.transforms.classifier_preprocessing``), runs the
network, applies the temperature, and reports for every (shift, strength): AUC, ECE, the mean predicted
probability and, at each named threshold, accuracy, recall (sensitivity) and specificity. Per shift it reports the
worst value of each over its strengths; over all shifts the overall worst case; for the clean images bootstrap
confidence intervals. The clean condition is evaluated once and shared by every shift (its identity strength).

Everything is deterministic: the shifts are, and the noise is seeded per (shift, strength) from ``seed``, with the
images processed in datalist order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_monai.metrics.classification import bootstrap_ci, classification_report, expected_calibration_error, roc_auc
from cxr_monai.transforms.stress import STRESS_TRANSFORMS, make_stress_transform
from cxr_monai.transforms.presets import LoadCXRImaged

__all__ = [
    "StressShift",
    "default_stress_shifts",
    "load_images",
    "predict_probabilities",
    "stress_suite",
    "plot_stress",
    "stress_table",
    "write_stress_report",
]


@dataclass(frozen=True)
class StressShift:
    """One named acquisition shift and the strengths to score it at.

    Args:
        name: name in the report (unique within a suite).
        transform: registry name in :data:`cxr_monai.transforms.stress.STRESS_TRANSFORMS`.
        values: strength values (the transform's strength argument), in plotting order; the transform's neutral
            value marks where the clean images sit on the curve and is scored once for all shifts.
        label: axis label (the argument and its unit).
        kwargs: further constructor arguments of the transform, used at every non-neutral strength.
    """

    name: str
    transform: str
    values: tuple
    label: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.transform not in STRESS_TRANSFORMS:
            raise KeyError(f"unknown stress transform {self.transform!r}; known: {sorted(STRESS_TRANSFORMS)}")
        if not self.values:
            raise ValueError(f"shift {self.name!r} needs at least one strength")

    @property
    def identity(self) -> Any:
        """The neutral strength of the transform (the clean images)."""
        return STRESS_TRANSFORMS[self.transform][2]

    def is_identity(self, value: Any) -> bool:
        """Whether ``value`` is the neutral strength."""
        return value == self.identity or (value is None and self.identity is None)

    def make(self, value: Any, seed: int = 0) -> Callable | None:
        """The array transform at strength ``value`` (None at the neutral strength); noise gets ``seed``."""
        if self.is_identity(value):
            return None
        kwargs = dict(self.kwargs)
        if self.transform == "noise":
            kwargs.setdefault("seed", seed)
        return make_stress_transform(self.transform, value, **kwargs)


def default_stress_shifts() -> list[StressShift]:
    """The default suite: 11 shifts, 4 strengths each around the clean image, both directions where both exist.

    Strengths are in units of the stored image given to the suite (224 px for ``kermany224``). Noise: photons per
    pixel of the unattenuated beam (display noise standard deviation at mid-grey about ``0.69 / sqrt(photons)``:
    0.007, 0.013, 0.022, 0.040) with read-out noise 2e-4 of the unattenuated signal.
    """
    return [
        StressShift("gamma", "gamma", (0.5, 0.7, 1.0, 1.4, 2.0), "gamma (x ** gamma)"),
        StressShift("exposure", "exposure", (-2.0, -1.0, 0.0, 1.0, 2.0), "exposure change, stops (clipped)"),
        StressShift("contrast", "contrast", (0.25, 0.5, 1.0, 1.5, 2.0), "contrast factor (8-bit stored)"),
        StressShift("lut", "lut", (-8.0, -4.0, 0.0, 4.0, 8.0), "sigmoid LUT strength (<0 inverse)"),
        StressShift("noise", "noise", (None, 1e4, 3e3, 1e3, 3e2), "photons per pixel (unattenuated)",
                    {"electronic_std": 2e-4}),
        StressShift("blur", "blur", (0.0, 0.75, 1.5, 2.25, 3.0), "Gaussian blur sigma, px"),
        StressShift("low_resolution", "low_resolution", (1.0, 1.5, 2.0, 3.0, 4.0), "down-up scale factor"),
        StressShift("jpeg", "jpeg", (None, 90, 50, 20, 5), "JPEG quality"),
        StressShift("collimation", "collimation", (0.0, 0.05, 0.1, 0.15, 0.2), "black frame, fraction per side"),
        StressShift("field_of_view", "field_of_view", (0.8, 0.9, 1.0, 1.1, 1.25), "zoom (<1 wider, >1 tighter)"),
        StressShift("rotation", "rotation", (-10.0, -5.0, 0.0, 5.0, 10.0), "rotation, degrees (clockwise)"),
    ]


def load_images(datalist: Sequence[Mapping], image_key: str = "image", label_key: str = "label",
                loader: Callable | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Load every item once as the image contract (``(1, H, W)`` float32 in [0, 1]) and collect its label.

    Args:
        datalist: items with ``image_key`` (a path or an in-memory image) and ``label_key``.
        image_key: key of the image.
        label_key: key of the label.
        loader: dictionary transform that loads ``image_key``; default
            :class:`cxr_monai.transforms.LoadCXRImaged` (what the preprocessing starts with).
    """
    if loader is None:

        loader = LoadCXRImaged([image_key])
    images, labels = [], []
    for item in datalist:
        img = loader({image_key: item[image_key]})[image_key]
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        images.append(np.ascontiguousarray(arr, dtype=np.float32))
        labels.append(int(item[label_key]))
    return images, np.asarray(labels, dtype=np.int64)


@torch.no_grad()
def predict_probabilities(
    network: nn.Module,
    images: Sequence[np.ndarray],
    preprocessing: Callable[[dict], Mapping[Hashable, Any]],
    shift: Callable | None = None,
    temperature: float = 1.0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    image_key: str = "image",
) -> np.ndarray:
    """Probabilities of the positive class (index 1) for ``images``, each shifted, then preprocessed.

    Args:
        network: classifier returning logits ``(N, 2)``; put in eval mode here.
        images: loaded images ``(1, H, W)`` in [0, 1].
        preprocessing: dictionary transform applied to ``{image_key: shifted image}`` (the model's own).
        shift: array transform applied to each loaded image first; None for the clean images.
        temperature: logits are divided by it before the softmax (calibration).
        batch_size: images per forward pass.
        device: where the network runs.
        image_key: key the preprocessing reads.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    network.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = []
        for img in images[start : start + batch_size]:
            x = img if shift is None else shift(img)
            t = preprocessing({image_key: x})[image_key]
            batch.append(torch.as_tensor(t, dtype=torch.float32).as_subclass(torch.Tensor))
        logits = network(torch.stack(batch).to(device)).float().cpu()
        out.append(torch.softmax(logits / temperature, dim=1)[:, 1].numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def _score(probs: np.ndarray, labels: np.ndarray, thresholds: Mapping[str, float]) -> dict:
    at = {}
    for name, thr in thresholds.items():
        r = classification_report(probs, labels, thr)
        at[name] = {"threshold": float(thr), "accuracy": r["accuracy"], "recall": r["recall"],
                    "specificity": r["specificity"], "confusion_matrix": r["confusion_matrix"]}
    return {"auc": roc_auc(probs, labels), "ece": expected_calibration_error(probs, labels),
            "mean_probability": float(np.mean(probs)), "at": at}


def _metric_paths(thresholds: Mapping[str, float]) -> list[tuple[str, Callable[[dict], float]]]:
    paths: list[tuple[str, Callable[[dict], float]]] = [("auc", lambda s: s["auc"])]
    for name in thresholds:
        for m in ("recall", "specificity", "accuracy"):
            paths.append((f"{m}@{name}", lambda s, n=name, m=m: s["at"][n][m]))
    return paths


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    return float(v)


def stress_suite(
    network: nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    preprocessing: Callable[[dict], Mapping[Hashable, Any]],
    shifts: Sequence[StressShift] | None = None,
    thresholds: Mapping[str, float] | None = None,
    temperature: float = 1.0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    n_boot: int = 1000,
    image_key: str = "image",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Score ``network`` on ``images`` under every shift and strength of the suite.

    Args:
        network: classifier (logits ``(N, 2)``, PNEUMONIA = 1), weights loaded.
        images: loaded images ``(1, H, W)`` in [0, 1] (:func:`load_images`).
        labels: their labels (0 NORMAL, 1 PNEUMONIA); both classes must be present.
        preprocessing: the model's dictionary preprocessing (applied after the shift).
        shifts: the suite; default :func:`default_stress_shifts`.
        thresholds: named decision thresholds on the calibrated probability, e.g. ``{"shipped": 0.165,
            "equal_prior": 0.743}``; default ``{"0.5": 0.5}``.
        temperature: calibration temperature of the logits.
        batch_size: images per forward pass.
        device: where the network runs.
        seed: base seed of the noise (strength ``k`` of shift ``j`` uses ``seed + 1000 * j + k``).
        n_boot: bootstrap resamples for the clean-image confidence intervals (0: none).
        image_key: key the preprocessing reads.
        progress: called with a short message after each condition (e.g. ``print``).

    Returns:
        A JSON-serialisable dict: ``n``, ``n_positive``, ``thresholds``, ``temperature``, ``seed``, ``clean``
        (scores + ``ci``: bootstrap intervals per threshold), ``shifts`` (per shift: ``transform``, ``label``,
        ``values``, ``levels`` (scores per strength, the clean one marked ``clean: true``), ``worst`` (per metric:
        value, strength, drop from clean)) and ``worst_case`` (per metric over all shifts: value, shift, strength).

    Raises:
        ValueError: for unequal images and labels, a single class, or duplicate shift names.
    """
    y = np.asarray(labels, dtype=np.int64)
    if len(images) != y.size or y.size == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(images)} images, {y.size} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("the stress suite needs both classes among the labels")
    shifts = list(default_stress_shifts() if shifts is None else shifts)
    names = [s.name for s in shifts]
    if len(set(names)) != len(names):
        raise ValueError(f"shift names must be unique, got {names}")
    thresholds = {str(k): float(v) for k, v in (thresholds or {"0.5": 0.5}).items()}
    say = progress or (lambda msg: None)

    def run(shift: Callable | None) -> np.ndarray:
        return predict_probabilities(network, images, preprocessing, shift, temperature, batch_size, device, image_key)

    clean_probs = run(None)
    clean = _score(clean_probs, y, thresholds)
    if n_boot:
        clean["ci"] = {name: bootstrap_ci(clean_probs, y, thr, n_boot=n_boot, seed=seed)
                       for name, thr in thresholds.items()}
    say(f"clean: AUC {clean['auc']:.4f}")
    paths = _metric_paths(thresholds)
    report: dict = {"n": int(y.size), "n_positive": int(y.sum()), "thresholds": thresholds,
                    "temperature": float(temperature), "seed": int(seed), "clean": clean, "shifts": {}}
    for j, spec in enumerate(shifts):
        levels = []
        for k, value in enumerate(spec.values):
            transform = spec.make(value, seed=seed + 1000 * j + k)
            if transform is None:
                levels.append({"value": _json_value(value), "clean": True,
                               **{key: clean[key] for key in ("auc", "ece", "mean_probability", "at")}})
                continue
            levels.append({"value": _json_value(value), "clean": False, **_score(run(transform), y, thresholds)})
            say(f"{spec.name}={value}: AUC {levels[-1]['auc']:.4f}")
        shifted = [lv for lv in levels if not lv["clean"]] or levels
        worst = {}
        for metric, get in paths:
            lv = min(shifted, key=get)
            worst[metric] = {"value": get(lv), "strength": lv["value"], "drop": get(clean) - get(lv)}
        report["shifts"][spec.name] = {"transform": spec.transform, "label": spec.label,
                                       "values": [_json_value(v) for v in spec.values],
                                       "kwargs": {k: _json_value(v) for k, v in spec.kwargs.items()},
                                       "levels": levels, "worst": worst}
    report["worst_case"] = {}
    for metric, _ in paths:
        name = min(report["shifts"], key=lambda s: report["shifts"][s]["worst"][metric]["value"]) \
            if report["shifts"] else None
        if name is not None:
            w = report["shifts"][name]["worst"][metric]
            report["worst_case"][metric] = {"value": w["value"], "shift": name, "strength": w["strength"],
                                            "drop": w["drop"]}
    return report


def _fmt_value(v: Any) -> str:
    if v is None:
        return "off"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 100:
        return f"{int(v)}"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def plot_stress(report: Mapping, path: str | Path, thresholds: Sequence[str] | None = None) -> Path:
    """Save one panel per shift: AUC and specificity (solid) and recall (dashed) at each threshold vs strength.

    The clean strength is marked by a grey vertical line; the x axis lists the strengths in suite order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = report["shifts"]
    thr_names = list(thresholds or report["thresholds"])
    n = len(shifts)
    cols = min(4, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, s) in zip(axes.ravel(), shifts.items()):
        xs = np.arange(len(s["levels"]))
        ax.plot(xs, [lv["auc"] for lv in s["levels"]], "k-o", ms=3, lw=1.8, label="AUC")
        for i, t in enumerate(thr_names):
            c = colors[(i + 1) % len(colors)]
            ax.plot(xs, [lv["at"][t]["specificity"] for lv in s["levels"]], "-s", color=c, ms=3,
                    label=f"specificity @{t}")
            ax.plot(xs, [lv["at"][t]["recall"] for lv in s["levels"]], "--", color=c, lw=1, label=f"recall @{t}")
        for x, lv in zip(xs, s["levels"]):
            if lv["clean"]:
                ax.axvline(x, color="0.7", lw=0.8, zorder=0)
        ax.set_xticks(xs, [_fmt_value(lv["value"]) for lv in s["levels"]], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(s.get("label", ""), fontsize=7)
        ax.set_ylim(0.0, 1.02)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(f"Stress suite (n = {report['n']}, {report['n_positive']} positive)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def stress_table(report: Mapping, thresholds: Sequence[str] | None = None) -> str:
    """Markdown table: per shift, clean and worst AUC (with its strength), and clean / worst specificity and
    worst recall at each threshold; a last row with the overall worst case."""
    thr_names = list(thresholds or report["thresholds"])
    clean = report["clean"]
    head = ["shift", "strengths", "AUC clean", "AUC worst (at)"]
    for t in thr_names:
        head += [f"spec @{t} clean", f"spec @{t} worst (at)", f"recall @{t} worst (at)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(w: Mapping) -> str:
        return f"{w['value']:.3f} ({_fmt_value(w['strength'])})"

    for name, s in report["shifts"].items():
        vals = ", ".join(_fmt_value(v) for v in s["values"])
        row = [name, vals, f"{clean['auc']:.3f}", cell(s["worst"]["auc"])]
        for t in thr_names:
            row += [f"{clean['at'][t]['specificity']:.3f}", cell(s["worst"][f"specificity@{t}"]),
                    cell(s["worst"][f"recall@{t}"])]
        lines.append("| " + " | ".join(row) + " |")
    wc = report["worst_case"]

    def wcell(metric: str) -> str:
        w = wc[metric]
        return f"{w['value']:.3f} ({w['shift']} {_fmt_value(w['strength'])})"

    row = ["**worst case**", "", f"{clean['auc']:.3f}", wcell("auc")]
    for t in thr_names:
        row += [f"{clean['at'][t]['specificity']:.3f}", wcell(f"specificity@{t}"), wcell(f"recall@{t}")]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_stress_report(report: Mapping, output_dir: str | Path, name: str = "stress",
                        extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<name>.json`` (the report plus ``extra``), ``<name>.png`` (:func:`plot_stress`) and ``<name>.md``
    (:func:`stress_table`) into ``output_dir``; returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "png": out / f"{name}.png", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps({**report, **(extra or {})}, indent=2))
    plot_stress(report, paths["png"])
    paths["md"].write_text(stress_table(report) + "\n")
    return paths
