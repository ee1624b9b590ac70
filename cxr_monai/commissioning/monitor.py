"""Drift monitor: does a site's recent stream of images still look like the sample it was commissioned on?

Commissioning (:func:`cxr_monai.commissioning.run.run_commissioning`) leaves ``SITE/monitor_reference.json``
(:func:`build_reference`): per image of the commissioning sample, the intended-population gate's two scores, a
few image statistics of the image as read (:func:`image_statistics`, independent of any model preprocessing),
whether it was in scope, its label and its out-of-fold decisions. :func:`run_monitor` reads the ``results.json``
files the deploy app, the MAP and the PACS loop write (:mod:`cxr_monai.results`), takes the most recent
``window`` assessed images and runs three checks against that reference:

* ``out_of_scope_rate``: the share of images the gate refused, one-sided (more than at commissioning);
* ``input_distribution``: the largest standardised shift of the window's mean of any input feature (gate
  probability and distance, image statistics) from the reference mean, two-sided;
* ``positive_share``: the share of PNEUMONIA calls among in-scope images against the share expected at the
  stated prevalence (the commissioning sample's out-of-fold sensitivity and specificity), two-sided.

Each statistic is z-like (scaled by the window's and the reference's sizes). Its threshold is the ``1 - alpha/3``
quantile of the statistic over windows drawn from the commissioning sample and compared with the rest of it
(leave-out resampling: a window never overlaps the reference it is compared with), and at least the normal
quantile: the false-alarm rate of one run is calibrated on the commissioning sample itself, nominally at most
``alpha`` (:data:`DEFAULT_ALPHA`). :func:`measure_false_alarms` measures it on halves of the sample.

The result is ``OUT/monitor.json`` (top-level ``alert``, ``checks``, ``window``) and ``OUT/monitor.png``; an
alert is data, not an error (``python -m cxr_monai monitor`` exits 0 either way).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_monai.commissioning.drift import (CHECKS, Reference, at_prevalence, expected_share, null_statistics,
                                          oos_stat, share_stat, shift_stat, thresholds)
from cxr_monai.commissioning.site import CommissioningError, json_clean

__all__ = [
    "REFERENCE_FILE",
    "MONITOR_FILE",
    "MONITOR_FIGURE",
    "REFERENCE_KIND",
    "IMAGE_FEATURES",
    "GATE_FEATURES",
    "DEFAULT_ALPHA",
    "DEFAULT_WINDOW",
    "MIN_WINDOW",
    "MonitorError",
    "Check",
    "WindowImage",
    "image_statistics",
    "build_reference",
    "write_reference",
    "load_reference",
    "read_results",
    "run_monitor",
    "measure_false_alarms",
    "main",
]

logger = logging.getLogger("cxr_monai.commissioning.monitor")

REFERENCE_FILE = "monitor_reference.json"
MONITOR_FILE = "monitor.json"
MONITOR_FIGURE = "monitor.png"
REFERENCE_KIND = "monitor_reference"
STATS_SIDE = 128
"""Images are resized (area average) to this square side before :func:`image_statistics`."""
IMAGE_FEATURES = ("mean", "std", "p05", "p50", "p95", "dark_fraction", "border_mean", "center_mean", "detail")
GATE_FEATURES = ("gate_logit_probability", "gate_log_distance")
DEFAULT_ALPHA = 0.03
"""Nominal false-alarm rate of one monitor run (split evenly over the three checks)."""
DEFAULT_WINDOW = 100
"""Most recent assessed images a run looks at."""
MIN_WINDOW = 30
"""Fewer images in the window: no check runs (``status`` ``"too_few_images"``, no alert)."""
N_NULL = 2000


class MonitorError(CommissioningError):
    """A monitor input that cannot be used (no reference, unreadable results), naming the file and the reason."""


@dataclass(frozen=True)
class Check:
    """One check of a monitor run.

    Attributes:
        name: ``out_of_scope_rate``, ``input_distribution`` or ``positive_share``.
        statistic: the z-like statistic of the window.
        threshold: the alert threshold (the check fails when ``statistic > threshold``).
        passed: ``statistic <= threshold``.
        observed: the window's value in plain terms (a rate, a share).
        expected: the reference's value in the same terms.
        detail: a sentence for the site lead.
        false_alarm_rate: the nominal false-alarm rate of this check.
    """

    name: str
    statistic: float
    threshold: float
    passed: bool
    observed: float | None
    expected: float | None
    detail: str
    false_alarm_rate: float


@dataclass(frozen=True)
class WindowImage:
    """What the monitor reads of one image of a ``results.json``.

    Attributes:
        file: the input file (or its SOP Instance UID).
        in_scope: the gate's decision (status ``ok``) or not (``out_of_scope``).
        features: the input features (:data:`GATE_FEATURES` + :data:`IMAGE_FEATURES`); NaN where absent.
        positive: PNEUMONIA call of an in-scope image (``None`` when out of scope).
        source: the ``results.json`` it came from.
    """

    file: str
    in_scope: bool
    features: tuple[float, ...]
    positive: bool | None
    source: str


# ------------------------------------------------------------------------------------------------- features


def image_statistics(image: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Statistics of an image as read (``(1, H, W)`` or ``(H, W)`` in ``[0, 1]``, the image contract), after an
    area resize to :data:`STATS_SIDE` square: intensity mean, std and percentiles, the share of dark pixels
    (< 0.1), the mean of the outer eighth frame and of the central half (collimation, framing), and ``detail``:
    the mean absolute difference from a 3x3 box blur (noise, sharpness: a detector's look)."""
    x = torch.as_tensor(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image),
                        dtype=torch.float32)
    x = x.reshape(1, 1, *x.shape[-2:])
    x = torch.nn.functional.interpolate(x, size=(STATS_SIDE, STATS_SIDE), mode="area")[0, 0].clamp(0, 1)
    s, e = STATS_SIDE, STATS_SIDE // 8
    border = torch.cat([x[:e].ravel(), x[-e:].ravel(), x[e:-e, :e].ravel(), x[e:-e, -e:].ravel()])
    center = x[s // 4: 3 * s // 4, s // 4: 3 * s // 4]
    blur = torch.nn.functional.avg_pool2d(x[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    q = torch.quantile(x.ravel(), torch.tensor([0.05, 0.5, 0.95]))
    values = (x.mean(), x.std(), q[0], q[1], q[2], (x < 0.1).float().mean(), border.mean(), center.mean(),
              (x - blur).abs()[1:-1, 1:-1].mean())
    return {k: float(v) for k, v in zip(IMAGE_FEATURES, values)}


def _gate_features(probability: Any, distance: Any) -> tuple[float, float]:
    p = float(probability) if probability is not None else math.nan
    d = float(distance) if distance is not None else math.nan
    p = min(max(p, 1e-6), 1 - 1e-6) if math.isfinite(p) else math.nan
    return (math.log(p / (1 - p)) if math.isfinite(p) else math.nan,
            math.log(max(d, 1e-6)) if math.isfinite(d) else math.nan)


def _feature_vector(gate_probability: Any, gate_distance: Any, stats: Mapping[str, Any] | None) -> tuple[float, ...]:
    stats = stats or {}
    return _gate_features(gate_probability, gate_distance) + tuple(
        float(stats[k]) if stats.get(k) is not None else math.nan for k in IMAGE_FEATURES)


# ------------------------------------------------------------------------------------------------ reference


def build_reference(report: Mapping[str, Any], image_stats: Sequence[Mapping[str, float] | None],
                    gate_scores: Sequence[tuple[float | None, float | None]]) -> dict[str, Any]:
    """The monitor's reference from :func:`cxr_monai.commissioning.run.commission`'s report (with its private
    ``_cv``, ``_labels``, ``_in_scope`` arrays) and, per image of the sample (in scope or not, in order), its
    :func:`image_statistics` and the gate's (probability, distance) (``None`` where there is no gate)."""
    keep = np.asarray(report["_in_scope"], dtype=bool)
    if len(image_stats) != keep.size or len(gate_scores) != keep.size:
        raise ValueError(f"{len(image_stats)} statistics and {len(gate_scores)} gate scores for {keep.size} images")
    features = [list(_feature_vector(p, d, s)) for (p, d), s in zip(gate_scores, image_stats)]
    cal = report["calibration"]
    return {
        "kind": REFERENCE_KIND,
        "site_id": report["site_id"],
        "date": report["date"],
        "model": {k: report["model"].get(k) for k in ("name", "version", "weights_sha256")},
        "prevalence": float(cal["prevalence"]),
        "prevalence_source": cal.get("prevalence_source"),
        "threshold": float(cal["threshold"]),
        "feature_names": list(GATE_FEATURES + IMAGE_FEATURES),
        "features": [[None if not math.isfinite(v) else v for v in row] for row in features],
        "in_scope": keep.tolist(),
        "labels": np.asarray(report["_labels"]).astype(int).tolist(),  # of the in-scope images
        "oof_decisions": np.asarray(report["_cv"]["decisions"]).astype(int).tolist(),  # (repeats, in-scope)
    }


def write_reference(reference: Mapping[str, Any], site_dir: str | os.PathLike) -> Path:
    """Write ``site_dir/monitor_reference.json`` atomically; returns its path."""
    path = Path(site_dir) / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_clean(dict(reference))))
    os.replace(tmp, path)
    return path


def load_reference(site_dir: str | os.PathLike) -> Reference:
    """Read ``site_dir/monitor_reference.json``.

    Raises:
        MonitorError: no such file, or not a monitor reference.
    """
    path = Path(site_dir)
    path = path / REFERENCE_FILE if path.is_dir() else path
    if not path.is_file():
        raise MonitorError(f"{path}: no monitor reference (commission the site with configs/commission.json; it "
                           f"writes {REFERENCE_FILE} beside site_calibration.json)")
    try:
        ref = json.loads(path.read_text())
        if ref.get("kind") != REFERENCE_KIND:
            raise MonitorError(f"{path}: kind {ref.get('kind')!r}, expected {REFERENCE_KIND!r}")
        if list(ref["feature_names"]) != list(GATE_FEATURES + IMAGE_FEATURES):
            raise MonitorError(f"{path}: features {ref['feature_names']} are not this version's; commission again")
        feats = np.array([[math.nan if v is None else float(v) for v in row] for row in ref["features"]], dtype=float)
        return Reference(feats.reshape(-1, len(GATE_FEATURES + IMAGE_FEATURES)),
                         np.asarray(ref["in_scope"], dtype=bool), np.asarray(ref["labels"], dtype=int),
                         np.asarray(ref["oof_decisions"], dtype=bool), float(ref["prevalence"]),
                         {k: ref.get(k) for k in ("site_id", "date", "model", "prevalence_source", "threshold")})
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        if isinstance(err, MonitorError):
            raise
        raise MonitorError(f"{path}: not a monitor reference ({type(err).__name__}: {err})") from err


# ---------------------------------------------------------------------------------------------------- results


def _results_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.rglob("results.json"))
            if not found:
                raise MonitorError(f"{p}: no results.json under this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise MonitorError(f"{p}: no such file or folder")
    return sorted(set(files), key=lambda f: (f.stat().st_mtime, str(f)))


def read_results(paths: Sequence[str | os.PathLike]) -> list[WindowImage]:
    """The assessed images (status ``ok`` or ``out_of_scope``) of ``results.json`` files or folders holding them,
    oldest first (files by modification time, images in their listed order). Skipped and failed images are not
    part of the stream.

    Raises:
        MonitorError: a path that does not exist, a folder with no ``results.json``, a file that is not one.
    """
    out: list[WindowImage] = []
    for f in _results_files(paths):
        try:
            images = json.loads(f.read_text())["images"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise MonitorError(f"{f}: not a results.json ({type(err).__name__}: {err})") from err
        for rec in images:
            status = rec.get("status")
            if status not in ("ok", "out_of_scope"):
                continue
            scope = rec.get("scope") or {}
            cls = rec.get("classification") or {}
            positive = None
            if status == "ok" and cls:
                positive = bool(int(cls["label_index"])) if "label_index" in cls else cls.get("label") == "PNEUMONIA"
            out.append(WindowImage(str(rec.get("file") or rec.get("sop_uid")), status == "ok",
                                   _feature_vector(scope.get("probability"), scope.get("distance"),
                                                   rec.get("image_stats")), positive, str(f)))
    return out


def _evaluate(ref: Reference, images: Sequence[WindowImage], alpha: float, n_null: int, seed: int
              ) -> tuple[list[Check], np.ndarray, np.ndarray]:
    n = len(images)
    in_scope = np.array([im.in_scope for im in images], dtype=bool)
    feats = np.array([im.features for im in images], dtype=float).reshape(n, -1)
    calls = [im.positive for im in images if im.in_scope and im.positive is not None]
    thr = thresholds(null_statistics(ref, n, len(calls), n_null, seed), alpha)
    a = alpha / len(CHECKS)
    m, m_out = ref.in_scope.size, int((~ref.in_scope).sum())
    k_out = int((~in_scope).sum())
    z_oos = oos_stat(k_out, n, m_out, m)
    z_in, z_feat = shift_stat(feats, ref.features)
    names = GATE_FEATURES + IMAGE_FEATURES
    order = [j for j in np.argsort(-np.nan_to_num(np.abs(z_feat), nan=-1.0)) if np.isfinite(z_feat[j])][:3]
    moved = ", ".join(f"{names[j]} {z_feat[j]:+.1f}" for j in order)
    q, var = expected_share(ref.decisions, ref.labels, ref.prevalence)
    checks = [
        Check("out_of_scope_rate", z_oos, thr["out_of_scope_rate"], z_oos <= thr["out_of_scope_rate"], k_out / n,
              m_out / m, f"{k_out} of {n} images refused by the intended-population gate ({k_out / n:.1%}); "
                         f"{m_out} of {m} ({m_out / m:.1%}) at commissioning", a),
        Check("input_distribution", z_in, thr["input_distribution"], z_in <= thr["input_distribution"], None, None,
              f"largest standardised shifts of the window's mean from the commissioning sample's: {moved}", a),
    ]
    if len(calls) >= 2:
        z_pos = share_stat(int(sum(calls)), len(calls), q, var)
        checks.append(Check("positive_share", z_pos, thr["positive_share"], z_pos <= thr["positive_share"],
                            sum(calls) / len(calls), q,
                            f"{sum(calls)} of {len(calls)} in-scope images called PNEUMONIA ({sum(calls) / len(calls):.1%});"
                            f" expected {q:.1%} at the prevalence {ref.prevalence:.2f} "
                            f"({ref.info.get('prevalence_source') or 'recorded at commissioning'})", a))
    else:
        checks.append(Check("positive_share", 0.0, thr["positive_share"], True, None, q,
                            "fewer than 2 in-scope images: not checked", a))
    return checks, feats, z_feat


def run_monitor(site_dir: str | os.PathLike, results_paths: Sequence[str | os.PathLike] | str | os.PathLike,
                output_dir: str | os.PathLike, window: int = DEFAULT_WINDOW, alpha: float = DEFAULT_ALPHA,
                n_null: int = N_NULL, seed: int = 0, figure: bool = True) -> dict[str, Any]:
    """Compare the most recent ``window`` assessed images of ``results_paths`` with the site's commissioning
    reference; write ``output_dir/monitor.json`` (and ``monitor.png``) and return its contents.

    Args:
        site_dir: the site's commissioning folder (``monitor_reference.json``).
        results_paths: ``results.json`` files, or folders searched for them.
        output_dir: where ``monitor.json`` and ``monitor.png`` go.
        window: most recent assessed images to check (at least :data:`MIN_WINDOW`, else no check runs).
        alpha: nominal false-alarm rate of the run (split over the three checks).
        n_null: resampled windows that calibrate the thresholds.
        seed: resampling seed.
        figure: also write the figure.

    Returns:
        ``{"alert": bool, "status", "checks": [Check as dict], "window": {...}, "reference": {...},
        "message": str, ...}``.

    Raises:
        MonitorError: no reference in ``site_dir``; unreadable results.
    """
    if not 0.0 < alpha < 1.0 or window < 1:
        raise ValueError(f"need 0 < alpha < 1 and window >= 1, got {alpha}, {window}")
    ref = load_reference(site_dir)
    paths = [results_paths] if isinstance(results_paths, (str, os.PathLike)) else list(results_paths)
    stream = read_results(paths)
    images = stream[-int(window):]
    info = {"n": len(images), "window": int(window), "n_in_stream": len(stream),
            "n_in_scope": sum(im.in_scope for im in images),
            "first": images[0].file if images else None, "last": images[-1].file if images else None,
            "results_files": sorted({im.source for im in images})}
    out: dict[str, Any] = {"kind": "monitor", "date": _dt.datetime.now().isoformat(timespec="seconds"),
                           "site_dir": str(site_dir), "reference": {**ref.info, "n": int(ref.in_scope.size)},
                           "window": info, "alpha": float(alpha)}
    if len(images) < MIN_WINDOW:
        out.update(alert=False, status="too_few_images", checks=[],
                   message=f"{len(images)} assessed images in the window, fewer than {MIN_WINDOW}: nothing checked")
    else:
        checks, feats, z_feat = _evaluate(ref, images, alpha, n_null, seed)
        failed = [c for c in checks if not c.passed]
        out.update(alert=bool(failed), status="alert" if failed else "ok", checks=[asdict(c) for c in checks],
                   feature_shifts={n: (None if not math.isfinite(z) else float(z))
                                   for n, z in zip(GATE_FEATURES + IMAGE_FEATURES, z_feat)},
                   message=("RE-COMMISSION: the recent images no longer look like the commissioning sample ("
                            + "; ".join(f"{c.name}: {c.detail}" for c in failed) + ")") if failed else
                   f"no drift detected in the last {len(images)} images (nominal false-alarm rate {alpha:.0%} per run)")
        if figure:
            out["figure"] = _plot(out, ref, feats, Path(output_dir) / MONITOR_FIGURE).name
    dest = Path(output_dir)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / (MONITOR_FILE + ".tmp")
    tmp.write_text(json.dumps(json_clean(out), indent=2))
    os.replace(tmp, dest / MONITOR_FILE)
    (logger.warning if out["alert"] else logger.info)("monitor %s: %s", site_dir, out["message"])
    return out


def _plot(result: Mapping[str, Any], ref: Reference, feats: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = GATE_FEATURES + IMAGE_FEATURES
    shifts = result["feature_shifts"]
    top = sorted((n for n in names if shifts.get(n) is not None), key=lambda n: -abs(shifts[n]))[:3]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    ax = axes[0]
    checks = result["checks"]
    colours = ["tab:green" if c["passed"] else "tab:red" for c in checks]
    ax.barh([c["name"] for c in checks], [c["statistic"] for c in checks], color=colours)
    for i, c in enumerate(checks):
        ax.plot([c["threshold"]] * 2, [i - 0.4, i + 0.4], "k-", lw=2)
    ax.set(xlabel="statistic (black bar: alert threshold)", title="checks: green passed, red alert")
    for ax, name in zip(axes[1:], top):
        j = names.index(name)
        r, w = ref.features[:, j], feats[:, j]
        r, w = r[np.isfinite(r)], w[np.isfinite(w)]
        bins = np.histogram_bin_edges(np.r_[r, w], bins=20)
        ax.hist(r, bins=bins, density=True, alpha=0.5, label=f"commissioning sample (n={r.size})")
        ax.hist(w, bins=bins, density=True, alpha=0.5, label=f"recent window (n={w.size})")
        ax.set(title=f"{name}: shift {shifts[name]:+.1f}", xlabel=name)
        ax.legend(fontsize=7)
    for ax in axes[1 + len(top):]:
        ax.axis("off")
    verdict = "ALERT - re-commission" if result["alert"] else "no drift detected"
    fig.suptitle(f"site {result['reference'].get('site_id')}: {verdict} (last {result['window']['n']} images; "
                 f"nominal false-alarm rate {result['alpha']:.0%} per run)", fontsize=11,
                 color="tab:red" if result["alert"] else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure_false_alarms(site_dir: str | os.PathLike, window: int = 50, n_splits: int = 200,
                         alpha: float = DEFAULT_ALPHA, n_null: int = 500, seed: int = 0) -> dict[str, Any]:
    """The monitor's false-alarm rate measured on the commissioning sample itself, honestly: for each split the
    sample is halved at random, one half is the reference (thresholds calibrated on it alone) and a window drawn
    from the other half at the reference's prevalence is checked against it; returns the share of alerting
    windows, overall and per check.

    Args:
        site_dir: the commissioning folder (``monitor_reference.json``).
        window: most images per checked window (drawn without replacement from the held-out half, so fewer when
            the half is short of a class at the stated prevalence).
        n_splits: random halvings.
        alpha: the monitor's nominal false-alarm rate.
        n_null: resampled windows per threshold calibration.
        seed: seed.
    """
    ref = load_reference(site_dir)
    rng = np.random.default_rng(seed)
    m = ref.in_scope.size
    in_idx = np.flatnonzero(ref.in_scope)
    alerts, per, sizes = 0, dict.fromkeys(CHECKS, 0), []
    for s in range(int(n_splits)):
        perm = rng.permutation(m)
        half_r, half_w = np.sort(perm[: m // 2]), np.sort(perm[m // 2:])
        sub = _subset(ref, half_r, in_idx)
        w_in = half_w[ref.in_scope[half_w]]
        lab = ref.labels[np.searchsorted(in_idx, w_in)]
        draw = at_prevalence(w_in[lab == 1], w_in[lab == 0], int(window), ref.prevalence, rng)
        outs = half_w[~ref.in_scope[half_w]]  # out-of-scope images keep their share of the half
        n_outs = min(outs.size, int(round(draw.size * outs.size / max(w_in.size, 1))))
        draw = np.r_[draw, rng.choice(outs, n_outs, replace=False)].astype(int)
        draw = draw[rng.permutation(draw.size)]
        sizes.append(int(draw.size))
        r = rng.integers(0, ref.decisions.shape[0])
        images = [WindowImage(str(i), bool(ref.in_scope[i]), tuple(ref.features[i]),
                              bool(ref.decisions[r, np.searchsorted(in_idx, i)]) if ref.in_scope[i] else None, "")
                  for i in draw]
        checks, _, _ = _evaluate(sub, images, alpha, n_null, seed + 1 + s)
        alerts += any(not c.passed for c in checks)
        for c in checks:
            per[c.name] += not c.passed
    return {"kind": "monitor_false_alarms", "site_dir": str(site_dir), "reference": ref.info,
            "window": int(window), "n_splits": int(n_splits), "alpha": float(alpha), "n_null": int(n_null),
            "window_sizes": {"min": min(sizes), "median": float(np.median(sizes)), "max": max(sizes)},
            "false_alarm_rate": alerts / n_splits, "per_check": {k: v / n_splits for k, v in per.items()},
            "method": "the commissioning sample halved at random n_splits times; the monitor's reference and its "
                      "thresholds from one half only; a window drawn without replacement from the other half "
                      "(in-scope images at the stated prevalence, as many as the half allows up to `window`, its "
                      "out-of-scope images in their share); false_alarm_rate = share of windows that alert"}


def _subset(ref: Reference, idx: np.ndarray, in_idx: np.ndarray) -> Reference:
    pos = np.searchsorted(in_idx, idx[ref.in_scope[idx]])
    return Reference(ref.features[idx], ref.in_scope[idx], ref.labels[pos], ref.decisions[:, pos], ref.prevalence,
                     ref.info)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxr_monai monitor --site_dir SITE --results PATH... --output_dir OUT [--window N]``; exits 0
    whether or not it alerts (2 on unusable inputs, with the reason)."""
    parser = argparse.ArgumentParser(prog="python -m cxr_monai monitor", description=__doc__.split("\n")[0])
    parser.add_argument("--site_dir", required=True, help="the site's commissioning folder")
    parser.add_argument("--results", required=True, nargs="+", help="results.json files or folders holding them")
    parser.add_argument("--output_dir", required=True, help="where monitor.json and monitor.png go")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="most recent assessed images checked")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="nominal false-alarm rate per run")
    args = parser.parse_args(argv)
    try:
        result = run_monitor(args.site_dir, args.results, args.output_dir, window=args.window, alpha=args.alpha)
    except MonitorError as err:
        print(f"monitor: {err}")
        return 2
    print(json.dumps({"alert": result["alert"], "message": result["message"],
                      "monitor": str(Path(args.output_dir) / MONITOR_FILE)}, indent=2))
    return 0
