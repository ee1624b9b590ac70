"""Patient-aware splits for Kermany-style file names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["kermany_patient_id", "patient_id", "patient_aware_split", "calibration_split"]

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)


def kermany_patient_id(filename: str | Path) -> str | None:
    """Patient key of a Kermany-style file name, ``None`` for any other name (the rule knows only Kermany's names).

    ``person123_bacteria_4.jpeg`` -> ``person123``; ``IM-0115-0001.jpeg`` -> ``IM-0115``;
    ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``.
    """
    name = Path(filename).name
    for pattern in (_PERSON, _IM):
        m = pattern.match(name)
        if m:
            return m.group(1).upper() if pattern is _IM else m.group(1).lower()
    return None


def patient_id(filename: str | Path) -> str:
    """Patient key of a Kermany file name (:func:`kermany_patient_id`); any other name is its own patient (its
    stem). For training splits of Kermany-style data; a site's sample gets its patients from
    :func:`cxr_monai.commissioning.patients.resolve_patients`."""
    key = kermany_patient_id(filename)
    return key if key is not None else Path(filename).name.split(".")[0]


def patient_aware_split(
    datalist: Sequence[dict], val_fraction: float = 0.15, seed: int = 0, key: str = "image"
) -> tuple[list[dict], list[dict]]:
    """Split a datalist so that no patient has images on both sides, stratified by label.

    Patients are grouped by :func:`patient_id`, assigned the label of their first image, shuffled per
    label with ``seed`` and moved to validation until each label holds about ``val_fraction`` of its images.

    Args:
        datalist: items with ``key`` (path) and optionally ``label``.
        val_fraction: share of images for validation, in (0, 1).
        seed: shuffling seed; the same seed gives the same split.
        key: the item key holding the file path.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(datalist):
        groups.setdefault(patient_id(item[key]), []).append(i)
    by_label: dict[int, list[str]] = {}
    for pid, idx in groups.items():
        by_label.setdefault(int(datalist[idx[0]].get("label", 0)), []).append(pid)
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for label in sorted(by_label):
        pids = sorted(by_label[label])
        rng.shuffle(pids)
        target = val_fraction * sum(len(groups[p]) for p in pids)
        taken = 0
        for pid in pids:
            if taken >= target:
                break
            val_idx.update(groups[pid])
            taken += len(groups[pid])
    train = [item for i, item in enumerate(datalist) if i not in val_idx]
    val = [item for i, item in enumerate(datalist) if i in val_idx]
    return train, val


def calibration_split(datalist: Sequence[dict], fraction: float = 0.12, seed: int = 1, key: str = "image"
                      ) -> tuple[list[dict], list[dict]]:
    """Split a calibration set off a training datalist: (train, calibration).

    Items whose ``key`` is a file path are split patient-aware (:func:`patient_aware_split`); in-memory items
    (MedMNIST arrays, no patient identity) by a label-stratified random draw. The calibration set fits the
    temperature and is never trained on or used to choose a recipe or checkpoint.

    Args:
        datalist: the training items (``label`` required).
        fraction: share of images for calibration, in (0, 1).
        seed: shuffling seed.
        key: the item key holding the image or its path.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if all(isinstance(item[key], (str, Path)) for item in datalist):
        return patient_aware_split(datalist, fraction, seed, key)
    rng = np.random.default_rng(seed)
    labels = np.array([int(item["label"]) for item in datalist])
    cal_idx: set[int] = set()
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        cal_idx.update(int(i) for i in idx[: int(round(fraction * idx.size))])
    train = [item for i, item in enumerate(datalist) if i not in cal_idx]
    cal = [item for i, item in enumerate(datalist) if i in cal_idx]
    return train, cal
