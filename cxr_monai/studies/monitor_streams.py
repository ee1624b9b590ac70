"""The drift monitor checked on streams with known drift (``configs/monitor_check.json``).

Streams of ``window`` images are built from a labelled folder (the site sample, or the classifier's own
validation split), drawn at the site's stated prevalence, and altered the way a site's images drift:

* ``as_is``: unchanged (the monitor should stay quiet);
* ``collimated``: each image cropped to its central 0.7 (tighter collimation);
* ``adults_mixed``: 30 % of the stream replaced by adult radiographs (a new referral pattern);
* ``detector``: gamma 1.6 and Gaussian noise of s.d. 0.03 (another detector's look);

and ``site_sample_unweighted``: the site sample drawn at its own prevalence, not the stated one (only the
positive-share check should fire). Every image goes through the deployed model's path as the deploy app runs it
(:func:`cxr_monai.inference.check_scope`, :func:`cxr_monai.inference.classify` of the classifier exported with the
site's calibration, :func:`cxr_monai.commissioning.monitor.image_statistics`; no super-resolution), each stream is
written as a ``results.json`` holding the fields the monitor reads, and :func:`run_monitor` checks it. The
monitor's false-alarm rate on the commissioning sample itself (:func:`measure_false_alarms`) is written beside.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_monai.commissioning.monitor import image_statistics, measure_false_alarms, run_monitor
from cxr_monai.commissioning import check_deployed_gate
from cxr_monai.export import export_classifier, load_deploy_model
from cxr_monai.inference import check_scope, classify
from cxr_monai.scope import gate_lung_field_of, load_scope_gate
from cxr_monai.transforms import load_lung_field, lung_field_of
from cxr_monai.commissioning import sha256_file
from cxr_monai.data import class_folder_datalist, list_images, training_split
from cxr_monai.io import load_cxr

__all__ = ["STREAM_KINDS", "alter", "deployed_assessor", "run_monitor_streams"]

logger = logging.getLogger("cxr_monai.studies.monitor_streams")

STREAM_KINDS = ("as_is", "collimated", "adults_mixed", "detector")
CROP = 0.7
GAMMA, NOISE_SD = 1.6, 0.03
ADULT_SHARE = 0.3


def alter(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` (1, H, W) in [0, 1] altered as stream ``kind`` alters it (``as_is`` and ``adults_mixed``:
    unchanged)."""
    if kind == "collimated":
        h, w = image.shape[-2:]
        ch, cw = int(round(CROP * h)), int(round(CROP * w))
        top, left = (h - ch) // 2, (w - cw) // 2
        return np.ascontiguousarray(image[:, top:top + ch, left:left + cw])
    if kind == "detector":
        out = np.power(np.clip(image, 0, 1), GAMMA) + rng.normal(0.0, NOISE_SD, image.shape)
        return np.clip(out, 0, 1).astype(np.float32)
    if kind in ("as_is", "adults_mixed"):
        return image
    raise ValueError(f"unknown stream kind {kind!r}, expected one of {STREAM_KINDS}")


def _draw(items: Sequence[dict], n: int, prevalence: float | None, rng: np.random.Generator) -> list[dict]:
    """``n`` items: at ``prevalence`` (classes weighted; with replacement when a class is short), or uniformly."""
    labels = np.array([int(i["label"]) for i in items])
    if prevalence is None:
        idx = rng.choice(len(items), size=n, replace=n > len(items))
    else:
        n_pos = int(round(prevalence * n))
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        idx = np.r_[rng.choice(pos, n_pos, replace=n_pos > pos.size), rng.choice(neg, n - n_pos,
                                                                                replace=n - n_pos > neg.size)]
        idx = idx[rng.permutation(idx.size)]
    return [items[int(i)] for i in idx]


def deployed_assessor(bundle_root: str | os.PathLike, site_dir: str | os.PathLike, work: str | os.PathLike,
                      device: str = "cpu") -> Callable[[np.ndarray, dict, str], dict]:
    """``assess(image, meta, name) -> record``: one image through the deployed path as the deploy app runs it (the
    classifier exported with the site's calibration into ``work``, the bundle's gate, the image statistics); the
    record holds the ``results.json`` fields the monitor reads (``status``, ``scope``, ``image_stats``,
    ``classification``)."""
    bundle_root, site_dir, work = Path(bundle_root), Path(site_dir), Path(work)

    model, info = load_deploy_model(export_classifier(bundle_root, work / "cxr_pneumonia" / "model.ts", site_dir),
                                    device, kind="classifier")
    gate = load_scope_gate(bundle_root / "models" / "scope_gate.ts", device)
    check_deployed_gate(info, {"weights_sha256": _sha(bundle_root / "models" / "scope_gate.ts")})
    lung_file = lung_field_of(bundle_root / "models") or gate_lung_field_of(bundle_root / "models" / "scope_gate.ts")
    lung = load_lung_field(lung_file, device) if lung_file else None  # what the app gets as cxr_lung

    def assess(image: np.ndarray, meta: dict, name: str) -> dict:
        decision = check_scope(gate, image, meta, image_size=int(info.get("image_size", 160)), lung_field=lung)
        rec: dict[str, Any] = {"file": name, "status": "ok" if decision.in_scope else "out_of_scope",
                               "reason": decision.reason, "shape": list(image.shape[1:]),
                               "scope": decision.as_dict(), "image_stats": image_statistics(image)}
        if decision.in_scope:
            out = classify(model, image, info, device, lung_field=lung)
            rec["classification"] = {k: out[k] for k in ("probability", "label", "label_index", "threshold")}
        return rec

    return assess


def _sha(path: Path) -> str:

    return sha256_file(path)


def run_monitor_streams(bundle_root: str | os.PathLike, site_dir: str | os.PathLike, site_sample: str | os.PathLike,
                        validation_source: str | os.PathLike, adult_dir: str | os.PathLike,
                        output_dir: str | os.PathLike, result_file: str | os.PathLike | None = None,
                        false_alarm_file: str | os.PathLike | None = None, prevalence: float | None = None,
                        window: int = 100, val_fraction: float = 0.15, split_seed: int = 0, seed: int = 0,
                        n_splits: int = 200, device: str = "cpu") -> dict[str, Any]:
    """Build the streams (module docstring), run the monitor on each, measure its false-alarm rate.

    Args:
        bundle_root: the classifier bundle (weights, gate).
        site_dir: the site's commissioning folder (``configs/commission.json --output_dir``).
        site_sample: the labelled site sample it was commissioned on (``NORMAL/``, ``PNEUMONIA/``).
        validation_source: the classifier's training folder; its patient-aware validation split
            (``val_fraction``, ``split_seed`` as ``configs/train.json``) gives the second family of streams.
        adult_dir: adult radiographs mixed into the ``adults_mixed`` streams.
        output_dir: streams' ``results.json`` and ``monitor.json`` go under it.
        result_file: the summary JSON (default ``output_dir/monitor_streams.json``).
        false_alarm_file: :func:`measure_false_alarms`' JSON (default ``output_dir/monitor_false_alarms.json``).
        prevalence: the prevalence streams are drawn at (default: the one recorded at commissioning).
        window: images per stream (the monitor's window).
        val_fraction, split_seed: the validation split.
        seed: drawing and noise seed.
        n_splits: halvings of :func:`measure_false_alarms`.
        device: torch device.
    """

    root, site, out = Path(bundle_root), Path(site_dir), Path(output_dir)
    ref = json.loads((site / "monitor_reference.json").read_text())
    prevalence = float(ref["prevalence"]) if prevalence is None else float(prevalence)
    assess = deployed_assessor(root, site, out / "models", device)
    adults = sorted(list_images(adult_dir))
    bases = {"site_sample": class_folder_datalist(site_sample),
             "validation": training_split(validation_source, val_fraction, split_seed)[1]}
    cache: dict[tuple[str, str], dict] = {}
    rng = np.random.default_rng(seed)

    def record(file: str, kind: str) -> dict:
        key = (file, kind)
        if key not in cache:
            image, meta = load_cxr(file)
            altered = alter(image, kind, np.random.default_rng(zlib.crc32(f"{seed}:{file}:{kind}".encode())))
            cache[key] = assess(altered, meta, f"{kind}:{file}")
        return cache[key]

    plans: list[tuple[str, str, str, float | None]] = [(f"{b}_{k}", b, k, prevalence) for b in bases
                                                       for k in STREAM_KINDS]
    plans.append(("site_sample_unweighted", "site_sample", "as_is", None))
    summary: dict[str, Any] = {"streams": {}, "window": int(window), "prevalence": prevalence,
                               "site_dir": str(site), "expected_alert": {}}
    for name, base, kind, prev in plans:
        items = _draw(bases[base], window, prev, rng)
        files = [(str(i["image"]), kind) for i in items]
        if kind == "adults_mixed":
            n_adult = int(round(ADULT_SHARE * window))
            spots = rng.choice(window, n_adult, replace=False)
            for s, a in zip(spots, rng.choice(len(adults), n_adult, replace=False)):
                files[int(s)] = (str(adults[int(a)]), "as_is")
        recs = [record(f, k) for f, k in files]
        folder = out / "streams" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"run": {"study": "monitor_streams", "stream": name},
                                                          "images": recs}, indent=1, default=float))
        result = run_monitor(site, [folder / "results.json"], out / "monitor" / name, window=window)
        summary["streams"][name] = {
            "alert": result["alert"], "drawn_at_prevalence": prev,
            "n_out_of_scope": sum(r["status"] == "out_of_scope" for r in recs),
            "checks": {c["name"]: {"statistic": round(c["statistic"], 3), "threshold": round(c["threshold"], 3),
                                   "passed": c["passed"]} for c in result["checks"]}}
        summary["expected_alert"][name] = not (kind == "as_is" and prev is not None)
        logger.info("stream %s: alert %s", name, result["alert"])
    summary["all_as_expected"] = all(summary["streams"][n]["alert"] == summary["expected_alert"][n]
                                     for n in summary["streams"])
    summary["false_alarms"] = measure_false_alarms(site, window=min(window, 50), n_splits=n_splits)
    fa_path = Path(false_alarm_file) if false_alarm_file else out / "monitor_false_alarms.json"
    fa_path.parent.mkdir(parents=True, exist_ok=True)
    fa_path.write_text(json.dumps(summary["false_alarms"], indent=2))
    path = Path(result_file) if result_file else out / "monitor_streams.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary
