"""The drift monitor's statistics (:mod:`cxr_monai.commissioning.monitor`): the three z-like statistics of a
window against the commissioning sample, their null distribution over windows drawn from that sample (leave-out
resampling) and the thresholds at a false-alarm rate ``alpha`` shared by the three checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

__all__ = ["CHECKS", "Reference", "oos_stat", "shift_stat", "expected_share", "share_stat", "shift_stats_batch",
           "at_prevalence", "null_statistics", "thresholds"]

CHECKS = ("out_of_scope_rate", "input_distribution", "positive_share")


@dataclass(frozen=True)
class Reference:
    """The commissioning sample as the monitor compares with it (:func:`cxr_monai.commissioning.monitor.load_reference`)."""

    features: np.ndarray  # (m, k), NaN where absent
    in_scope: np.ndarray  # (m,)
    labels: np.ndarray  # (m_in,)
    decisions: np.ndarray  # (R, m_in)
    prevalence: float
    info: dict


def oos_stat(k_out: int, n: int, m_out: int, m: int) -> float:
    r = (m_out + 1.0) / (m + 2.0)  # Laplace: a sample with no refusal still has a rate above zero
    return (k_out / n - m_out / m) / math.sqrt(r * (1 - r) * (1.0 / n + 1.0 / m))


def shift_stat(window: np.ndarray, ref: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest |standardised mean shift| over features, and the per-feature values (NaN ignored)."""
    z = np.full(ref.shape[1], np.nan)
    for j in range(ref.shape[1]):
        w, r = window[:, j][np.isfinite(window[:, j])], ref[:, j][np.isfinite(ref[:, j])]
        if w.size < 2 or r.size < 2:
            continue
        sd = r.std(ddof=1)
        z[j] = (w.mean() - r.mean()) / (max(sd, 1e-9) * math.sqrt(1.0 / w.size + 1.0 / r.size))
    finite = np.abs(z[np.isfinite(z)])
    return (float(finite.max()) if finite.size else 0.0), z


def expected_share(decisions: np.ndarray, labels: np.ndarray, prevalence: float) -> tuple[float, float]:
    """Share of PNEUMONIA calls expected at ``prevalence`` from out-of-fold decisions (R, m_in), and its variance."""
    pos, neg = labels == 1, labels == 0
    sens = float(decisions[:, pos].mean()) if pos.any() else 0.5
    fpr = float(decisions[:, neg].mean()) if neg.any() else 0.5
    q = prevalence * sens + (1 - prevalence) * fpr
    var = (prevalence ** 2 * sens * (1 - sens) / max(pos.sum(), 1)
           + (1 - prevalence) ** 2 * fpr * (1 - fpr) / max(neg.sum(), 1))
    return q, var


def share_stat(k_pos: int, n: int, q: float, var_q: float) -> float:
    q_ = min(max(q, 1e-3), 1 - 1e-3)
    return abs(k_pos / n - q) / math.sqrt(q_ * (1 - q_) / n + var_q)


def shift_stats_batch(window: np.ndarray, rest: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """:func:`shift_stat` of many windows of the commissioning sample at once: ``window``, ``rest`` (B, m) masks of
    the images in each window and in the reference it is compared with; ``feats`` (m, k). Returns (B,)."""
    finite = np.isfinite(feats)
    f0 = np.where(finite, feats, 0.0)
    w, r, fin = window.astype(float), rest.astype(float), finite.astype(float)
    cw, cr = w @ fin, r @ fin
    with np.errstate(invalid="ignore", divide="ignore"):
        mw, mr = (w @ f0) / cw, (r @ f0) / cr
        var = ((r @ f0 ** 2) - cr * mr ** 2) / (cr - 1)
        z = (mw - mr) / (np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-9) * np.sqrt(1.0 / cw + 1.0 / cr))
    z[(cw < 2) | (cr < 2)] = np.nan
    z = np.abs(z)
    return np.where(np.isfinite(z).any(axis=1), np.nanmax(np.where(np.isfinite(z), z, -1.0), axis=1), 0.0)


def at_prevalence(pos: np.ndarray, neg: np.ndarray, k: int, prevalence: float, rng: np.random.Generator
                   ) -> np.ndarray:
    """Up to ``k`` of ``pos`` and ``neg``, drawn without replacement at ``prevalence`` (fewer when a class is short)."""
    k = int(min(k, math.floor(pos.size / prevalence) if prevalence > 0 else k,
                math.floor(neg.size / (1 - prevalence)) if prevalence < 1 else k))
    n_pos = int(round(prevalence * k))
    return np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, k - n_pos, replace=False)].astype(int)


def null_statistics(ref: Reference, n: int, n_in: int, n_null: int, seed: int) -> dict[str, np.ndarray]:
    """The three statistics over windows drawn from the commissioning sample (without replacement), each compared
    with the rest of it."""
    rng = np.random.default_rng(seed)
    m = ref.in_scope.size
    in_idx = np.flatnonzero(ref.in_scope)  # sample position -> position among the in-scope images: searchsorted
    nw = max(2, min(n, m // 2))
    order = np.argsort(rng.random((n_null, m)), axis=1)
    window = np.zeros((n_null, m), dtype=bool)
    window[np.arange(n_null)[:, None], order[:, :nw]] = True
    m_out = int((~ref.in_scope).sum())
    k_out = (window & ~ref.in_scope).sum(axis=1)
    r = (m_out - k_out + 1.0) / (m - nw + 2.0)
    out = {"out_of_scope_rate": (k_out / nw - (m_out - k_out) / (m - nw))
           / np.sqrt(r * (1 - r) * (1.0 / nw + 1.0 / (m - nw))),
           "input_distribution": shift_stats_batch(window, ~window, ref.features),
           "positive_share": np.zeros(n_null)}
    for b in range(n_null):
        # positive calls: in-scope images of the window part drawn at the stated prevalence, one CV repeat's calls,
        # against the share expected from the rest
        w_in = np.searchsorted(in_idx, np.flatnonzero(window[b] & ref.in_scope))
        r_in = np.searchsorted(in_idx, np.flatnonzero(~window[b] & ref.in_scope))
        draw = at_prevalence(w_in[ref.labels[w_in] == 1], w_in[ref.labels[w_in] == 0], n_in, ref.prevalence, rng)
        if draw.size < 2:
            continue
        calls = ref.decisions[rng.integers(0, ref.decisions.shape[0]), draw]
        q, var = expected_share(ref.decisions[:, r_in], ref.labels[r_in], ref.prevalence)
        out["positive_share"][b] = share_stat(int(calls.sum()), draw.size, q, var)
    return out


def thresholds(null: Mapping[str, np.ndarray], alpha: float) -> dict[str, float]:
    a = alpha / len(CHECKS)
    one_sided, two_sided = float(norm.ppf(1 - a)), float(norm.ppf(1 - a / 2))
    return {"out_of_scope_rate": max(float(np.quantile(null["out_of_scope_rate"], 1 - a, method="higher")), one_sided),
            "input_distribution": max(float(np.quantile(null["input_distribution"], 1 - a, method="higher")),
                                      two_sided),
            "positive_share": max(float(np.quantile(null["positive_share"], 1 - a, method="higher")), two_sided)}
