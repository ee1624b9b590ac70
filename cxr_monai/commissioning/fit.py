"""The commissioning rule's arithmetic: logistic recalibration of the ensemble's log-odds, the equal-prior threshold,
the correction to a stated prevalence (prior shift), patient-grouped stratified cross-validation and the
patient bootstrap of its estimates. Pure numpy; no files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cxr_monai.commissioning.site import TooFewImagesError
from cxr_monai.metrics.classification import equal_prior_threshold

__all__ = [
    "RIDGE",
    "N_FOLDS",
    "N_REPEATS",
    "N_BOOT",
    "METHOD",
    "THRESHOLD_RULE",
    "METRICS",
    "sigmoid",
    "logit",
    "logodds_from_logits",
    "check_scores",
    "fit_logistic_recalibration",
    "fit_site_calibration",
    "prevalence_shift",
    "grouped_stratified_folds",
    "cross_validate",
    "cv_bootstrap",
]

RIDGE = 1.0
"""Strength of the penalty ``(ridge / 2) * ((a - 1)^2 + b^2)`` toward the shipped calibration."""
N_FOLDS, N_REPEATS, N_BOOT = 5, 20, 2000
METHOD = ("logistic recalibration of the ensemble log-odds: p = sigmoid(a * L + b), L = (z_PNEUMONIA - z_NORMAL) / T; "
          "a, b by maximum likelihood with the ridge penalty (ridge / 2) * ((a - 1)^2 + b^2)")
THRESHOLD_RULE = ("equal class priors: PNEUMONIA when the site probability, corrected from the stated prevalence "
                  "(or the commissioning sample's) to 50/50, is >= 0.5 (threshold = that prevalence)")
METRICS = ("accuracy", "sensitivity", "specificity", "auc", "ece")

# ------------------------------------------------------------------------------------------------------ the fit


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-free."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def logit(p: float | np.ndarray) -> float | np.ndarray:
    """``log(p / (1 - p))``."""
    return np.log(p) - np.log1p(-np.asarray(p)) if isinstance(p, np.ndarray) else math.log(p) - math.log1p(-p)


def prevalence_shift(sample_prevalence: float, prevalence: float) -> float:
    """Offset to add to the site log-odds ``a * L + b`` so that probabilities fitted on a sample with
    ``sample_prevalence`` carry ``prevalence`` instead (prior shift: class-conditional score distributions kept,
    only the class priors change): ``logit(prevalence) - logit(sample_prevalence)``.

    Raises:
        ValueError: a prevalence outside (0, 1).
    """
    for name, v in (("sample prevalence", sample_prevalence), ("prevalence", prevalence)):
        if not (isinstance(v, (int, float)) and 0.0 < float(v) < 1.0):
            raise ValueError(f"{name} must be in (0, 1), got {v!r}")
    return float(logit(float(prevalence)) - logit(float(sample_prevalence)))


def logodds_from_logits(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log-odds of PNEUMONIA ``(z1 - z0) / T`` from the network output ``z`` (N, 2) (for the ensemble, the log of
    the mean calibrated probabilities, so that ``sigmoid`` of the log-odds is the default probability)."""
    z = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    z = z.astype(np.float64).reshape(-1, z.shape[-1])
    if z.shape[1] != 2:
        raise ValueError(f"logits must be (N, 2), got {z.shape}")
    return (z[:, 1] - z[:, 0]) / float(temperature)


def check_scores(logodds: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
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
    x, y = check_scores(logodds, labels)
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
        p = sigmoid(u @ theta)
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
    x, y = check_scores(logodds, labels)
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
    x, y = check_scores(logodds, labels)
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
            probs[r, test] = sigmoid(a * x[test] + b)
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


def _strata(y: np.ndarray, groups: Sequence[str] | None) -> list[list[np.ndarray]]:
    """Per class (by the patient's majority label), the image indices of each patient (one image each when
    ``groups`` is ``None``, in image order)."""
    if groups is None:
        return [[np.array([i]) for i in np.flatnonzero(y == c)] for c in np.unique(y)]
    g = np.asarray(groups).astype(str).ravel()
    if g.shape != y.shape:
        raise ValueError(f"{g.size} groups for {y.size} labels")
    _, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)]
    label = np.array([int(round(y[m].mean())) for m in members])
    return [[members[k] for k in np.flatnonzero(label == c)] for c in np.unique(label)]


def cv_bootstrap(probs: np.ndarray, decisions: np.ndarray, labels: Sequence[int] | np.ndarray, n_boot: int = N_BOOT,
                 seed: int = 0, confidence: float = 0.95, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Point estimates and bootstrap intervals of the cross-validated metrics.

    The estimate of each metric is its mean over repeats on the pooled out-of-fold predictions; a resample draws
    patients with replacement within each class (a patient's class is the majority label of its images; a drawn
    patient brings all its images, each keeping its out-of-fold prediction of every repeat) and recomputes that
    mean. Images of one patient are correlated, so resampling images would make the intervals too narrow. Intervals are percentile intervals, ECE's moved down by the bootstrap bias as in
    :func:`cxr_monai.metrics.classification.bootstrap_ci`.

    Args:
        probs, decisions: (R, N) from :func:`cross_validate`.
        labels: (N,) true labels.
        n_boot: resamples (>= 10).
        seed: resampling seed.
        confidence: interval coverage.
        groups: patient of each image (``None``: each image its own patient).
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    probs, decisions = np.atleast_2d(probs), np.atleast_2d(decisions).astype(bool)
    if probs.shape != decisions.shape or probs.shape[1] != y.size:
        raise ValueError(f"probs {probs.shape}, decisions {decisions.shape} and labels {y.shape} do not match")
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    point = _cv_metrics(probs, decisions, y)
    rng = np.random.default_rng(seed)
    strata = _strata(y, groups)
    boots = np.empty((int(n_boot), len(METRICS)))
    for i in range(int(n_boot)):
        idx = np.concatenate([stratum[j] for stratum in strata for j in rng.integers(0, len(stratum), len(stratum))])
        boots[i] = _cv_metrics(probs[:, idx], decisions[:, idx], y[idx])
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2
    out: dict[str, Any] = {}
    for j, name in enumerate(METRICS):
        col = boots[:, j][np.isfinite(boots[:, j])]
        lo, hi, mean = (float(np.quantile(col, lo_q)), float(np.quantile(col, hi_q)), float(col.mean())) if col.size \
            else (math.nan,) * 3
        method = "percentile"
        if name == "ece" and col.size:
            bias = mean - point[j]
            lo, hi, method = max(0.0, lo - bias), max(0.0, hi - bias), "bias_shifted_percentile"
        out[name] = {"estimate": float(point[j]), "low": lo, "high": hi, "mean": mean, "method": method}
    out.update({"n": int(y.size), "n_repeats": int(probs.shape[0]), "n_boot": int(n_boot),
                "confidence": float(confidence), "stratified": True, "seed": int(seed),
                "resampled": "patients" if groups is not None else "images",
                "n_patients": int(sum(len(st) for st in strata))})
    return out


