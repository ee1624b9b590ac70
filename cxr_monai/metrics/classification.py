"""Binary classification report, calibration (ECE, temperature scaling) and threshold choice.

PNEUMONIA (label 1) is the positive class. AUC always comes from probabilities, never hard labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "roc_curve",
    "roc_auc",
    "choose_threshold",
    "classification_report",
    "expected_calibration_error",
    "fit_temperature",
    "plot_roc",
    "plot_confusion_matrix",
]


def roc_curve(probs: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (descending), ties handled jointly."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(p))[0], p.size - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(1 - y)[distinct]
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, p[distinct]]


def roc_auc(probs: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (trapezoids over the tie-aware curve); NaN when one class is absent."""
    y = np.asarray(labels)
    if y.min(initial=0) == y.max(initial=0) or len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(probs, labels)
    return float(np.trapezoid(tpr, fpr))


def choose_threshold(probs: Sequence[float], labels: Sequence[int]) -> float:
    """Threshold maximising Youden's J (sensitivity + specificity - 1); pick it on validation data only."""
    fpr, tpr, thr = roc_curve(probs, labels)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # skip the +inf sentinel
    # midpoint to the next lower score, so the threshold is not glued to one training image
    lower = thr[best + 1] if best + 1 < thr.size else 0.0
    return float((thr[best] + lower) / 2)


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int], n_bins: int = 15) -> float:
    """ECE of the positive-class probability: bin-weighted |accuracy - confidence| over predicted labels."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    conf = np.where(p >= 0.5, p, 1 - p)
    correct = ((p >= 0.5).astype(np.int64) == y).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: Sequence[int], max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


def classification_report(probs: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall (sensitivity), F1, specificity, AUC, confusion matrix, threshold, n.

    ``confusion_matrix`` is ``[[TN, FP], [FN, TP]]`` (rows: true NORMAL, PNEUMONIA).
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equal, non-empty probs and labels, got {p.shape} and {y.shape}")
    pred = (p >= threshold).astype(np.int64)
    tp, tn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    fp, fn = int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / y.size,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "auc": roc_auc(p, y),
        "ece": expected_calibration_error(p, y),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": float(threshold),
        "n": int(y.size),
    }


def plot_roc(probs: Sequence[float], labels: Sequence[int], path: str | Path, threshold: float | None = None,
             title: str = "ROC (PNEUMONIA positive)") -> Path:
    """Save the ROC curve (with the operating point at ``threshold``) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(probs, labels)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc(probs, labels):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    if threshold is not None:
        r = classification_report(probs, labels, threshold)
        ax.plot(1 - r["specificity"], r["recall"], "ro", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: str | Path,
                          class_names: Sequence[str] = ("NORMAL", "PNEUMONIA")) -> Path:
    """Save a 2x2 confusion matrix (rows true, columns predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=120)
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)), xticklabels=class_names,
           yticklabels=class_names, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
