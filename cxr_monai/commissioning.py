"""Site commissioning of the pneumonia classifier: recalibrate the shipped model on a small labelled local
sample and estimate, honestly, what the site should expect from it.

The rule (model card, "Site commissioning", fixed before any site result was seen):

* **Fit**: logistic recalibration of the ensemble's log-odds ``L = (z1 - z0) / T`` (``z`` the network output,
  ``T`` the default temperature): the site probability is ``sigmoid(a * L + b)``; ``a, b`` maximise the
  Bernoulli log-likelihood of the in-scope sample minus ``(ridge / 2) * ((a - 1)^2 + b^2)`` (:data:`RIDGE` = 1,
  mild shrinkage toward the shipped calibration), solved by Newton's method (:func:`fit_logistic_recalibration`).
* **Threshold**: the equal-prior rule of the default calibration: the fitted probabilities carry the sample's
  prevalence ``pi``, so PNEUMONIA when ``sigmoid(a * L + b) >= pi`` (:func:`fit_site_calibration`).
* **Estimates**: repeated cross-validation inside the sample (5 folds stratified by class and grouped by
  patient, 20 repeats; fit on 4 folds, score the fifth: :func:`cross_validate`), point estimate the mean over
  repeats of the pooled out-of-fold metric, 95 % interval from a stratified bootstrap over images carrying
  their out-of-fold predictions of every repeat (:func:`cv_bootstrap`). No image is scored by a fit that saw it.
* **Refusals** (:class:`CommissioningError` and subclasses): fewer than :data:`MIN_PER_CLASS` in-scope images in
  a class, more than :data:`MAX_OUT_OF_SCOPE_FRACTION` of the sample out of scope, a calibration loaded for
  other weights (sha256 of ``models/model.pt``).

The result is ``SITE/site_calibration.json`` (:func:`commission` builds it, :func:`write_site_calibration` writes
it with a reliability/ROC figure); :func:`load_site_calibration` reads it back for ``evaluate.json`` /
``inference.json`` (``--site_dir``) and :func:`cxr_monai.export.export_classifier` (``make deploy-models
SITE=...``), which apply ``a, b`` and the site threshold instead of the default ones.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_monai.metrics.classification import (
    bootstrap_ci,
    classification_report,
    equal_prior_threshold,
    expected_calibration_error,
    roc_auc,
)

__all__ = [
    "SITE_FILE",
    "SITE_FIGURE",
    "MIN_PER_CLASS",
    "MAX_OUT_OF_SCOPE_FRACTION",
    "RIDGE",
    "N_FOLDS",
    "N_REPEATS",
    "N_BOOT",
    "METHOD",
    "THRESHOLD_RULE",
    "CommissioningError",
    "TooFewImagesError",
    "MostlyOutOfScopeError",
    "ModelMismatchError",
    "SiteCalibration",
    "sha256_file",
    "model_identity",
    "logodds_from_logits",
    "fit_logistic_recalibration",
    "fit_site_calibration",
    "grouped_stratified_folds",
    "cross_validate",
    "cv_bootstrap",
    "commission",
    "write_site_calibration",
    "load_site_calibration",
    "calibration_in_force",
    "describe_calibration",
    "site_logits",
    "default_scope_check",
    "CommissioningCollector",
    "run_commissioning",
]

logger = logging.getLogger(__name__)

SITE_FILE = "site_calibration.json"
SITE_FIGURE = "site_calibration.png"
SITE_KIND = "site_calibration"
FORMAT_VERSION = 1
MIN_PER_CLASS = 20
"""Fewest in-scope images per class that commissioning accepts."""
MAX_OUT_OF_SCOPE_FRACTION = 0.5
"""Commissioning refuses a sample of which more than this fraction is out of the intended population."""
RIDGE = 1.0
"""Strength of the penalty ``(ridge / 2) * ((a - 1)^2 + b^2)`` toward the shipped calibration."""
N_FOLDS, N_REPEATS, N_BOOT = 5, 20, 2000
METHOD = ("logistic recalibration of the ensemble log-odds: p = sigmoid(a * L + b), L = (z_PNEUMONIA - z_NORMAL) / T; "
          "a, b by maximum likelihood with the ridge penalty (ridge / 2) * ((a - 1)^2 + b^2)")
THRESHOLD_RULE = ("equal class priors: PNEUMONIA when the site probability, corrected from the commissioning "
                  "sample's prevalence to 50/50, is >= 0.5 (threshold = that prevalence)")
_METRICS = ("accuracy", "sensitivity", "specificity", "auc", "ece")


class CommissioningError(ValueError):
    """A commissioning sample or a site calibration that cannot be used, with the reason."""


class TooFewImagesError(CommissioningError):
    """A class has fewer than :data:`MIN_PER_CLASS` in-scope images."""


class MostlyOutOfScopeError(CommissioningError):
    """More than :data:`MAX_OUT_OF_SCOPE_FRACTION` of the sample is outside the intended population."""


class ModelMismatchError(CommissioningError):
    """A site calibration fitted for other weights than the ones it would be applied to."""


@dataclass(frozen=True)
class SiteCalibration:
    """The parameters of a site calibration and where they come from.

    Attributes:
        a: slope on the ensemble's log-odds.
        b: offset of the log-odds.
        threshold: decision threshold on the site probability ``sigmoid(a * L + b)``.
        site_id: the site's name.
        date: ISO date of the commissioning.
        weights_sha256: sha256 of the ``models/model.pt`` it was fitted for.
        model_name: the bundle's name.
        model_version: the bundle's version.
        prevalence: PNEUMONIA prevalence of the in-scope sample (the threshold by the equal-prior rule).
        path: the file it was read from (``None`` when built in memory).
    """

    a: float
    b: float
    threshold: float
    site_id: str
    date: str
    weights_sha256: str
    model_name: str = ""
    model_version: str = ""
    prevalence: float | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise CommissioningError(f"site calibration a, b must be finite, got {self.a}, {self.b}")
        if not 0.0 < self.threshold < 1.0:
            raise CommissioningError(f"site threshold must be in (0, 1), got {self.threshold}")

    def probabilities(self, logodds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Site probabilities of PNEUMONIA from the ensemble's log-odds."""
        return _sigmoid(self.a * np.asarray(logodds, dtype=np.float64) + self.b)

    def summary(self) -> dict[str, Any]:
        """What outputs record as the calibration in force (``source`` ``"site"``)."""
        return {"source": "site", "id": self.site_id, "date": self.date, "a": self.a, "b": self.b,
                "threshold": self.threshold, "weights_sha256": self.weights_sha256, "file": self.path}

    @classmethod
    def from_report(cls, report: Mapping[str, Any], path: str | None = None) -> SiteCalibration:
        """From the contents of a ``site_calibration.json``."""
        try:
            cal, model = report["calibration"], report["model"]
            return cls(a=float(cal["a"]), b=float(cal["b"]), threshold=float(cal["threshold"]),
                       site_id=str(report["site_id"]), date=str(report["date"]),
                       weights_sha256=str(model["weights_sha256"]), model_name=str(model.get("name", "")),
                       model_version=str(model.get("version", "")), prevalence=cal.get("prevalence"), path=path)
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, CommissioningError):
                raise
            raise CommissioningError(f"{path or 'site calibration'}: not a site calibration ({type(err).__name__}: "
                                     f"{err})") from err


# ------------------------------------------------------------------------------------------------ model identity


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(bundle_root: str | os.PathLike, weights_name: str = "model.pt") -> dict[str, Any]:
    """Name, version (``configs/metadata.json``) and weights sha256 of the bundle's ``models/<weights_name>``."""
    root = Path(bundle_root)
    meta_file, weights = root / "configs" / "metadata.json", root / "models" / weights_name
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: bundle weights not found")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return {"name": meta.get("name", root.name), "version": meta.get("version", ""),
            "weights_file": f"models/{weights_name}", "weights_sha256": sha256_file(weights)}


# ------------------------------------------------------------------------------------------------------ the fit


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def logodds_from_logits(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log-odds of PNEUMONIA ``(z1 - z0) / T`` from the network output ``z`` (N, 2) (for the ensemble, the log of
    the mean calibrated probabilities, so that ``sigmoid`` of the log-odds is the default probability)."""
    z = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    z = z.astype(np.float64).reshape(-1, z.shape[-1])
    if z.shape[1] != 2:
        raise ValueError(f"logits must be (N, 2), got {z.shape}")
    return (z[:, 1] - z[:, 0]) / float(temperature)


def _check_scores(logodds: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(logodds, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.int64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"need equal, non-empty log-odds and labels, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("log-odds must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    return x, y


def fit_logistic_recalibration(logodds: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                               ridge: float = RIDGE, max_iter: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """``(a, b)`` maximising ``sum log Bernoulli(y | sigmoid(a * L + b)) - (ridge / 2) * ((a - 1)^2 + b^2)``.

    Newton's method with step halving from ``a = 1, b = 0`` (the objective is concave; with ``ridge > 0`` strictly,
    so the fit exists even for a separable sample).

    Args:
        logodds: the ensemble's log-odds ``L`` of each image.
        labels: 0 (NORMAL) / 1 (PNEUMONIA).
        ridge: penalty strength (>= 0; 0 is plain maximum likelihood).
        max_iter: Newton steps at most.
        tol: stop when the step's largest component is below this.
    """
    x, y = _check_scores(logodds, labels)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    u = np.stack([x, np.ones_like(x)], axis=1)
    prior = np.array([1.0, 0.0])

    def objective(t: np.ndarray) -> float:
        s = u @ t
        # log sigmoid(s) = -log1p(exp(-s)), written stably with logaddexp
        ll = -(y * np.logaddexp(0.0, -s) + (1 - y) * np.logaddexp(0.0, s)).sum()
        return float(ll - 0.5 * ridge * ((t - prior) ** 2).sum())

    theta = prior.copy()
    value = objective(theta)
    for _ in range(int(max_iter)):
        p = _sigmoid(u @ theta)
        grad = u.T @ (y - p) - ridge * (theta - prior)
        hess = (u * (p * (1 - p))[:, None]).T @ u + ridge * np.eye(2)
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        scale = 1.0
        while scale > 1e-6:
            cand = theta + scale * step
            cand_value = objective(cand)
            if cand_value >= value - 1e-12:
                break
            scale *= 0.5
        theta, value = cand, cand_value
        if np.abs(scale * step).max() < tol:
            break
    return float(theta[0]), float(theta[1])


def fit_site_calibration(logodds: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                         ridge: float = RIDGE) -> tuple[float, float, float, float]:
    """The commissioning rule on one sample: ``(a, b, threshold, prevalence)``
    (:func:`fit_logistic_recalibration`, then the equal-prior threshold = the sample's PNEUMONIA prevalence)."""
    x, y = _check_scores(logodds, labels)
    prevalence = float(y.mean())
    if not 0.0 < prevalence < 1.0:
        raise TooFewImagesError("the sample needs images of both classes")
    a, b = fit_logistic_recalibration(x, y, ridge)
    return a, b, equal_prior_threshold(prevalence), prevalence


# ------------------------------------------------------------------------------------------- cross-validation


def grouped_stratified_folds(labels: Sequence[int] | np.ndarray, groups: Sequence[str] | None, n_folds: int,
                             rng: np.random.Generator) -> np.ndarray:
    """Fold index of each image: groups (patients) whole in one fold, each class spread evenly over the folds.

    Groups are labelled by their majority class, shuffled within each class, and dealt greedily (largest first,
    ties at random) to the fold holding the fewest images of that class so far.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    g = np.asarray(groups if groups is not None else np.arange(y.size)).astype(str).ravel()
    if g.shape != y.shape:
        raise ValueError(f"{g.size} groups for {y.size} labels")
    folds = np.empty(y.size, dtype=np.int64)
    names, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(names.size)]
    group_label = np.array([int(round(y[m].mean())) for m in members])
    for c in (0, 1):
        ids = np.flatnonzero(group_label == c)
        ids = ids[rng.permutation(ids.size)]
        ids = ids[np.argsort([-members[k].size for k in ids], kind="stable")]
        load = np.zeros(n_folds)
        for k in ids:
            f = int(rng.choice(np.flatnonzero(load == load.min())))
            folds[members[k]] = f
            load[f] += members[k].size
    return folds


def cross_validate(logodds: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                   groups: Sequence[str] | None = None, n_folds: int = N_FOLDS, n_repeats: int = N_REPEATS,
                   seed: int = 0, ridge: float = RIDGE) -> dict[str, np.ndarray]:
    """Out-of-fold site probabilities and decisions of the commissioning rule, repeated.

    For each repeat the sample is dealt into ``n_folds`` folds (:func:`grouped_stratified_folds`); the rule
    (:func:`fit_site_calibration`) is fitted on all folds but one and applied to that one.

    Returns:
        ``probs`` and ``decisions`` (``n_repeats``, N): out-of-fold site probability and PNEUMONIA decision;
        ``a``, ``b``, ``threshold`` (``n_repeats``, ``n_folds``): the fits.
    """
    x, y = _check_scores(logodds, labels)
    if n_folds < 2 or n_repeats < 1:
        raise ValueError(f"need n_folds >= 2 and n_repeats >= 1, got {n_folds}, {n_repeats}")
    rng = np.random.default_rng(seed)
    probs, decisions = np.empty((n_repeats, y.size)), np.empty((n_repeats, y.size), dtype=bool)
    fits = np.full((3, n_repeats, n_folds), np.nan)
    for r in range(n_repeats):
        folds = grouped_stratified_folds(y, groups, n_folds, rng)
        for f in range(n_folds):
            test = folds == f
            if not test.any():
                continue
            a, b, thr, _ = fit_site_calibration(x[~test], y[~test], ridge)
            probs[r, test] = _sigmoid(a * x[test] + b)
            decisions[r, test] = probs[r, test] >= thr
            fits[:, r, f] = a, b, thr
    return {"probs": probs, "decisions": decisions, "a": fits[0], "b": fits[1], "threshold": fits[2]}


def _ece_rows(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """:func:`expected_calibration_error` of each row of ``p`` (R, N) against ``y`` (R, N) or (N,)."""
    y = np.broadcast_to(y, p.shape)
    conf = np.where(p >= 0.5, p, 1 - p)
    correct = ((p >= 0.5) == (y == 1)).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1) + n_bins * np.arange(p.shape[0])[:, None]
    size = n_bins * p.shape[0]
    cnt = np.bincount(bins.ravel(), minlength=size).reshape(p.shape[0], n_bins)
    acc = np.bincount(bins.ravel(), correct.ravel(), minlength=size).reshape(p.shape[0], n_bins)
    cf = np.bincount(bins.ravel(), conf.ravel(), minlength=size).reshape(p.shape[0], n_bins)
    return np.abs(acc - cf).sum(axis=1) / p.shape[1]


def _auc_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tie-aware AUC (Mann-Whitney) of each row of ``p`` (R, N) against ``y`` (N,)."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return np.full(p.shape[0], np.nan)
    ranks = rankdata(p, axis=1)
    return (ranks[:, pos].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _cv_metrics(probs: np.ndarray, decisions: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean over repeats of (accuracy, sensitivity, specificity, AUC, ECE) of (R, N) out-of-fold predictions."""
    pos = y == 1
    correct = decisions == pos
    acc = correct.mean(axis=1)
    sens = decisions[:, pos].mean(axis=1) if pos.any() else np.full(len(probs), np.nan)
    spec = (~decisions[:, ~pos]).mean(axis=1) if (~pos).any() else np.full(len(probs), np.nan)
    return np.array([acc.mean(), sens.mean(), spec.mean(), _auc_rows(probs, y).mean(), _ece_rows(probs, y).mean()])


def cv_bootstrap(probs: np.ndarray, decisions: np.ndarray, labels: Sequence[int] | np.ndarray, n_boot: int = N_BOOT,
                 seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Point estimates and bootstrap intervals of the cross-validated metrics.

    The estimate of each metric is its mean over repeats on the pooled out-of-fold predictions; a resample draws
    images with replacement within each class (each image keeps its out-of-fold prediction of every repeat) and
    recomputes that mean. Intervals are percentile intervals, ECE's moved down by the bootstrap bias as in
    :func:`cxr_monai.metrics.classification.bootstrap_ci`.

    Args:
        probs, decisions: (R, N) from :func:`cross_validate`.
        labels: (N,) true labels.
        n_boot: resamples (>= 10).
        seed: resampling seed.
        confidence: interval coverage.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    probs, decisions = np.atleast_2d(probs), np.atleast_2d(decisions).astype(bool)
    if probs.shape != decisions.shape or probs.shape[1] != y.size:
        raise ValueError(f"probs {probs.shape}, decisions {decisions.shape} and labels {y.shape} do not match")
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    point = _cv_metrics(probs, decisions, y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    boots = np.empty((int(n_boot), len(_METRICS)))
    for i in range(int(n_boot)):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        boots[i] = _cv_metrics(probs[:, idx], decisions[:, idx], y[idx])
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2
    out: dict[str, Any] = {}
    for j, name in enumerate(_METRICS):
        col = boots[:, j][np.isfinite(boots[:, j])]
        lo, hi, mean = (float(np.quantile(col, lo_q)), float(np.quantile(col, hi_q)), float(col.mean())) if col.size \
            else (math.nan,) * 3
        method = "percentile"
        if name == "ece" and col.size:
            bias = mean - point[j]
            lo, hi, method = max(0.0, lo - bias), max(0.0, hi - bias), "bias_shifted_percentile"
        out[name] = {"estimate": float(point[j]), "low": lo, "high": hi, "mean": mean, "method": method}
    out.update({"n": int(y.size), "n_repeats": int(probs.shape[0]), "n_boot": int(n_boot),
                "confidence": float(confidence), "stratified": True, "seed": int(seed)})
    return out


# ------------------------------------------------------------------------------------------------- commissioning


def _default_metrics(logodds: np.ndarray, y: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    p = _sigmoid(logodds)
    report = classification_report(p, y, threshold)
    ci = bootstrap_ci(p, y, threshold, n_boot=n_boot, seed=seed)
    return {"accuracy": ci["accuracy"], "sensitivity": ci["sensitivity"], "specificity": ci["specificity"],
            "auc": ci["auc"], "ece": ci["ece"], "confusion_matrix": report["confusion_matrix"],
            "threshold": float(threshold), "n": int(y.size),
            "method": "the default calibration scored on the in-scope sample (nothing fitted on it); "
                      "stratified percentile bootstrap (bootstrap_ci)", "n_boot": int(n_boot)}


def commission(
    logodds: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    model: Mapping[str, Any],
    site_id: str,
    *,
    in_scope: Sequence[bool] | None = None,
    scope_reasons: Sequence[str] | None = None,
    files: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    date: str | None = None,
    default_threshold: float = 0.5,
    default_temperature: float = 1.0,
    scope_check: str = "none",
    dataset_dir: str | None = None,
    ridge: float = RIDGE,
    n_folds: int = N_FOLDS,
    n_repeats: int = N_REPEATS,
    n_boot: int = N_BOOT,
    seed: int = 0,
    min_per_class: int = MIN_PER_CLASS,
    max_out_of_scope_fraction: float = MAX_OUT_OF_SCOPE_FRACTION,
) -> dict[str, Any]:
    """Apply the commissioning rule to a site's labelled sample; returns the contents of ``site_calibration.json``.

    Args:
        logodds: the shipped model's log-odds of each image (:func:`logodds_from_logits`, default temperature).
        labels: 0 (NORMAL) / 1 (PNEUMONIA).
        model: ``name``, ``version``, ``weights_sha256`` (:func:`model_identity`).
        site_id: the site's name.
        in_scope: the intended-population decision of each image (``None``: all in scope).
        scope_reasons: why each image is out of scope (``""`` when in scope).
        files: the image files (recorded for the out-of-scope ones).
        groups: patient of each image (folds keep a patient whole; ``None``: each image its own patient).
        class_names: names by label.
        date: ISO date (default today).
        default_threshold, default_temperature: the shipped calibration, recorded and scored for comparison.
        scope_check: what decided ``in_scope`` (recorded).
        dataset_dir: the sample's folder (recorded).
        ridge, n_folds, n_repeats, n_boot, seed: the rule's constants (model card).
        min_per_class, max_out_of_scope_fraction: the refusal limits.

    Raises:
        MostlyOutOfScopeError: more than ``max_out_of_scope_fraction`` of the images are out of scope.
        TooFewImagesError: a class has fewer than ``min_per_class`` in-scope images.
    """
    x, y = _check_scores(logodds, labels)
    keep = np.ones(y.size, dtype=bool) if in_scope is None else np.asarray(in_scope, dtype=bool).ravel()
    if keep.shape != y.shape:
        raise ValueError(f"{keep.size} scope decisions for {y.size} images")
    n_out = int((~keep).sum())
    names = list(class_names)
    per_class = {names[c]: int(((y == c) & keep).sum()) for c in (0, 1)}
    per_class_out = {names[c]: int(((y == c) & ~keep).sum()) for c in (0, 1)}
    if n_out > max_out_of_scope_fraction * y.size:
        raise MostlyOutOfScopeError(
            f"{n_out} of {y.size} images ({n_out / y.size:.0%}) are outside the intended population "
            f"(frontal paediatric chest radiographs), more than {max_out_of_scope_fraction:.0%}: this sample cannot "
            "commission the model (wrong population, wrong images, or the wrong folder)")
    small = {k: v for k, v in per_class.items() if v < min_per_class}
    if small:
        raise TooFewImagesError(
            f"too few in-scope images to commission: {small} (at least {min_per_class} per class are needed; "
            f"in scope {per_class}, out of scope {n_out})")
    for key in ("name", "version", "weights_sha256"):
        if not model.get(key):
            raise ValueError(f"model identity lacks {key!r}")
    g = None if groups is None else np.asarray(groups).astype(str)[keep]
    xk, yk = x[keep], y[keep]
    a, b, threshold, prevalence = fit_site_calibration(xk, yk, ridge)
    if not a > 0:
        raise CommissioningError(
            f"the fitted slope a = {a:.3f} is not positive: on this sample the model's scores do not rank PNEUMONIA "
            "above NORMAL, so no recalibration can make it usable here (check the labels and the images)")
    cv = cross_validate(xk, yk, g, n_folds, n_repeats, seed, ridge)
    expected = cv_bootstrap(cv["probs"], cv["decisions"], yk, n_boot, seed)
    expected["method"] = (f"repeated cross-validation inside the sample: {n_folds} folds stratified by class and "
                          f"grouped by patient, {n_repeats} repeats, the rule fitted on {n_folds - 1} folds and "
                          "applied to the held-out one; estimate = mean over repeats of the pooled out-of-fold "
                          f"metric; 95 % interval = stratified bootstrap over images ({n_boot} resamples)")
    expected["fold_fits"] = {k: {"min": float(np.nanmin(cv[k])), "median": float(np.nanmedian(cv[k])),
                                 "max": float(np.nanmax(cv[k]))} for k in ("a", "b", "threshold")}
    files_l = [str(f) for f in files] if files is not None else None
    reasons = list(scope_reasons) if scope_reasons is not None else [""] * y.size
    out_list = [{"file": files_l[i] if files_l else str(i), "true_label": names[int(y[i])], "reason": reasons[i]}
                for i in np.flatnonzero(~keep)]
    n_patients = int(np.unique(g).size) if g is not None else int(keep.sum())
    return {
        "format_version": FORMAT_VERSION,
        "kind": SITE_KIND,
        "site_id": str(site_id),
        "date": date or _dt.date.today().isoformat(),
        "model": {"name": model["name"], "version": model["version"],
                  "weights_file": model.get("weights_file", "models/model.pt"),
                  "weights_sha256": model["weights_sha256"], "default_temperature": float(default_temperature),
                  "default_threshold": float(default_threshold)},
        "calibration": {"a": a, "b": b, "threshold": threshold, "prevalence": prevalence, "method": METHOD,
                        "ridge": float(ridge), "threshold_rule": THRESHOLD_RULE,
                        "apply": "p_site = sigmoid(a * L + b) with L = log-odds of the default calibration; "
                                 "PNEUMONIA when p_site >= threshold"},
        "sample": {"dataset_dir": dataset_dir, "n": int(y.size), "n_in_scope": int(keep.sum()),
                   "n_out_of_scope": n_out, "in_scope_per_class": per_class, "out_of_scope_per_class": per_class_out,
                   "n_patients_in_scope": n_patients, "scope_check": scope_check, "out_of_scope": out_list},
        "expected": expected,
        "default_on_sample": _default_metrics(xk, yk, default_threshold, n_boot, seed),
        "_cv": cv,  # arrays for the figure; dropped by write_site_calibration
        "_labels": yk,
        "_logodds": xk,
    }


def _plot(report: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr_monai.metrics.classification import reliability_bins, roc_curve

    cv, y, x = report["_cv"], report["_labels"], report["_logodds"]
    site_p, site_y = cv["probs"].ravel(), np.tile(y, cv["probs"].shape[0])
    default_p = _sigmoid(x)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    pooled = f"site, out-of-fold ({cv['probs'].shape[0]} repeats pooled)"
    for p, yy, name in ((default_p, y, "default"), (site_p, site_y, pooled)):
        rb = reliability_bins(p, yy, 1, 10)
        ax1.plot(rb["confidence"], rb["frequency"], "o-", label=f"{name}, ECE {expected_calibration_error(p, yy):.3f}")
        fpr, tpr, _ = roc_curve(p, yy)
        ax2.plot(fpr, tpr, label=f"{name}, AUC {roc_auc(p, yy):.3f}")
    ax1.plot([0, 1], [0, 1], "k:", lw=1)
    ax1.set(xlabel="predicted p(PNEUMONIA)", ylabel="observed fraction PNEUMONIA", title="reliability")
    ax1.legend(fontsize=8)
    e = report["expected"]
    spec, sens = e["specificity"]["estimate"], e["sensitivity"]["estimate"]
    ax2.plot([1 - spec], [sens], "ks", label=f"site threshold (CV): sens {sens:.2f}, spec {spec:.2f}")
    d = report["default_on_sample"]
    ax2.plot([1 - d["specificity"]["estimate"]], [d["sensitivity"]["estimate"]], "k^",
             label=f"default threshold {d['threshold']:.3f}")
    ax2.plot([0, 1], [0, 1], "k:", lw=1)
    ax2.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"site {report['site_id']} ({report['date']}): {report['sample']['n_in_scope']} in-scope images, "
                 f"{cv['probs'].shape[0]} CV repeats", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_site_calibration(report: Mapping[str, Any], output_dir: str | os.PathLike, figure: bool = True) -> Path:
    """Write ``output_dir/site_calibration.json`` (and the reliability/ROC figure of the out-of-fold predictions,
    ``site_calibration.png``) from :func:`commission`'s result; returns the JSON's path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report)
    if figure and "_cv" in report:
        report["figure"] = _plot(report, out / SITE_FIGURE).name
    path = out / SITE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_clean(report), indent=2))
    os.replace(tmp, path)
    return path


def load_site_calibration(site: str | os.PathLike, weights: str | os.PathLike | None = None,
                          weights_sha256: str | None = None) -> SiteCalibration:
    """Read ``SITE/site_calibration.json`` (or that file) and check it was fitted for these weights.

    Args:
        site: the commissioning output folder or its ``site_calibration.json``.
        weights: the ``models/model.pt`` it will be applied to (its sha256 is compared).
        weights_sha256: or the expected sha256 directly (e.g. from a deployed model's metadata).

    Raises:
        CommissioningError: no such file, or not a site calibration.
        ModelMismatchError: the calibration was fitted for other weights.
    """
    path = Path(site)
    path = path / SITE_FILE if path.is_dir() else path
    if not path.is_file():
        raise CommissioningError(f"{path}: no site calibration (run configs/commission.json with --output_dir "
                                 f"{path.parent})")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CommissioningError(f"{path}: not JSON ({err})") from err
    if report.get("kind") != SITE_KIND:
        raise CommissioningError(f"{path}: kind {report.get('kind')!r}, expected {SITE_KIND!r}")
    cal = SiteCalibration.from_report(report, str(path))
    expected = weights_sha256 or (sha256_file(weights) if weights is not None else None)
    if expected is not None and expected != cal.weights_sha256:
        raise ModelMismatchError(
            f"{path}: fitted for weights sha256 {cal.weights_sha256[:12]}... ({cal.model_name} {cal.model_version}), "
            f"but the model in use has {expected[:12]}...: commission the site again for this model")
    return cal


def calibration_in_force(site: SiteCalibration | None, default_threshold: float | None = None,
                         default_temperature: float | None = None) -> dict[str, Any]:
    """The ``calibration`` record outputs carry: the site's (:meth:`SiteCalibration.summary`) or the default."""
    if site is not None:
        return site.summary()
    out: dict[str, Any] = {"source": "default", "id": "default", "date": None}
    if default_threshold is not None:
        out["threshold"] = float(default_threshold)
    if default_temperature is not None:
        out["temperature"] = float(default_temperature)
    return out


def describe_calibration(calibration: Mapping[str, Any] | None) -> str:
    """One sentence naming the calibration in force (for the DICOM SR and other human-read outputs)."""
    cal = dict(calibration or {"source": "default"})
    thr = cal.get("threshold")
    thr_s = f", threshold {float(thr):.4f}" if thr is not None else ""
    if cal.get("source") != "site":
        return f"Calibration in force: default (shipped with the model{thr_s})."
    return (f"Calibration in force: site calibration '{cal.get('id')}' commissioned {cal.get('date')} "
            f"(log-odds -> {float(cal.get('a', 1.0)):.4f} x log-odds {float(cal.get('b', 0.0)):+.4f}{thr_s}).")


def site_logits(z: torch.Tensor, site: SiteCalibration | None) -> torch.Tensor:
    """Logits (..., 2) whose softmax is the site probability: ``a * z + [0, b]`` (``z`` the default-calibrated
    logits; its log-odds become ``a * L + b``). ``site`` ``None``: ``z`` unchanged."""
    if site is None:
        return z
    shift = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)
    shift[-1] = site.b
    return site.a * z + shift


# ------------------------------------------------------------------------------------------- the bundle's run


def default_scope_check(gate_file: str | os.PathLike | None, device: str | torch.device = "cpu"
                        ) -> Callable[..., list] | None:
    """``gate.check`` of the bundle's intended-population gate when ``gate_file`` exists, else ``None`` (every
    image in scope; the report says so)."""
    if gate_file is None or not Path(gate_file).is_file():
        logger.warning("no scope gate at %s: every commissioning image is treated as in scope", gate_file)
        return None
    from cxr_monai.scope import load_scope_gate

    return load_scope_gate(gate_file, device).check


class CommissioningCollector:
    """Ignite handler: per image of an evaluator run, the network output's log-odds, the label, the file and
    the intended-population decision.

    Args:
        scope_check: ``f(x, metas) -> decisions`` with ``in_scope`` and ``reason`` (``ScopeGate.check``) run on the
            network input batch; ``None``: every image in scope.
        temperature: the default temperature (log-odds are ``(z1 - z0) / T``).
        image_key, label_key, pred_key: item keys (``pred``: the raw network output, no softmax).
    """

    def __init__(self, scope_check: Callable[..., Sequence[Any]] | None = None, temperature: float = 1.0,
                 image_key: str = "image", label_key: str = "label", pred_key: str = "pred") -> None:
        self.scope_check = scope_check
        self.temperature = float(temperature)
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.reset()

    def reset(self) -> None:
        self.logodds: list[float] = []
        self.labels: list[int] = []
        self.files: list[str] = []
        self.in_scope: list[bool] = []
        self.reasons: list[str] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def iteration_completed(self, engine) -> None:
        from cxr_monai.utils import item_name

        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        z = torch.stack([torch.as_tensor(o[self.pred_key]).reshape(-1).float() for o in outputs])
        self.logodds += logodds_from_logits(z, self.temperature).tolist()
        self.labels += [int(torch.as_tensor(o[self.label_key]).reshape(-1)[0]) for o in outputs]
        self.files += [item_name(o, self.image_key, len(self.files) + i) for i, o in enumerate(outputs)]
        if self.scope_check is None:
            decisions = [(True, "")] * len(outputs)
        else:
            x = torch.stack([torch.as_tensor(o[self.image_key]) for o in outputs])
            metas = [getattr(o[self.image_key], "meta", None) for o in outputs]
            decisions = [(bool(d.in_scope), str(d.reason or "")) for d in self.scope_check(x, metas)]
        self.in_scope += [d[0] for d in decisions]
        self.reasons += [d[1] for d in decisions]


def run_commissioning(collector: CommissioningCollector, output_dir: str | os.PathLike,
                      bundle_root: str | os.PathLike, site_id: str, date: str | None = None,
                      default_threshold: float = 0.5, weights_name: str = "model.pt",
                      class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"), dataset_dir: str | None = None,
                      scope_check: str = "none", **kwargs: Any) -> Path:
    """:func:`commission` on what ``collector`` gathered, then :func:`write_site_calibration`; the patients come
    from the Kermany-style file names (:func:`cxr_monai.data.splits.patient_id`). ``kwargs`` go to
    :func:`commission` (``n_repeats``, ``n_boot``, ...). Returns the JSON's path."""
    from cxr_monai.data.splits import patient_id

    if not collector.labels:
        raise CommissioningError(f"{dataset_dir}: no images were read")
    report = commission(collector.logodds, collector.labels, model_identity(bundle_root, weights_name), site_id,
                        in_scope=collector.in_scope, scope_reasons=collector.reasons, files=collector.files,
                        groups=[patient_id(f) for f in collector.files],
                        class_names=class_names, date=date, default_threshold=default_threshold,
                        default_temperature=collector.temperature, scope_check=scope_check,
                        dataset_dir=dataset_dir, **kwargs)
    if Path(scope_check).is_file():  # the gate's identity: the in-scope set depends on it
        report["sample"]["scope_gate_sha256"] = sha256_file(scope_check)
    path = write_site_calibration(report, output_dir)
    e = report["expected"]
    logger.info("site %s: a=%.3f b=%.3f threshold=%.3f; expected (CV) %s", site_id, report["calibration"]["a"],
                report["calibration"]["b"], report["calibration"]["threshold"],
                {k: f"{e[k]['estimate']:.3f} [{e[k]['low']:.3f}, {e[k]['high']:.3f}]" for k in _METRICS})
    return path
