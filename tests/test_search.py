"""Optuna search over the classifier bundle's train.json (cxr_monai.search, configs/search.json): two processes
add trials to one SQLite study; the study's files are written; the criterion and the pruning handler."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import optuna  # noqa: E402 - a dev dependency (pyproject [dev]), installed by `make venv`

from cxr_monai.cli import BUNDLES_DIR  # noqa: E402
from cxr_monai.search import _is_pruned, _PruningHandler, stress_criterion  # noqa: E402

BUNDLE = BUNDLES_DIR / "cxr_pneumonia_classifier"


def test_stress_criterion_is_the_mean_of_worst_balanced_accuracies():
    def level(rec, spec, clean=False):
        return {"clean": clean, "at": {"shipped": {"recall": rec, "specificity": spec}}}

    report = {"shifts": {"a": {"levels": [level(0.0, 0.0, clean=True), level(1.0, 0.8), level(0.6, 0.8)]},
                         "b": {"levels": [level(1.0, 1.0, clean=True), level(1.0, 0.0)]}}}
    assert stress_criterion(report) == pytest.approx((0.7 + 0.5) / 2)


def test_pruning_handler_reports_and_prunes():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    trial = study.ask()

    class _State:
        metrics, epoch = {"val_auc": 0.5}, 1

    class _Engine:
        state = _State()

    with pytest.raises(optuna.TrialPruned) as info:
        _PruningHandler(trial, "val_auc", _Engine())(_Engine())
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.5}
    wrapped = RuntimeError("engine failed")
    wrapped.__cause__ = info.value
    assert _is_pruned(wrapped) is info.value and _is_pruned(RuntimeError("other")) is None


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path):
    from cxr_monai.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_per_class=6, size=64, seed=0)
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "search.json"),
           "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(out), "--n_trials", "1",
           "--max_epochs", "1", "--image_size", "64", "--batch_size", "4", "--val_fraction", "0.34",
           "--calib_fraction", "0.25", "--show_progress_bar", "False"]
    env = {**os.environ, "CXR_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd + ["--sampler_seed", str(s)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for s in (1, 2)]
    for p in procs:
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log[-3000:]
    study = optuna.load_study(study_name="cxr_pneumonia_classifier", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2 and {t.number for t in study.trials} == {0, 1}
    # the hand-made recipe is enqueued first (two processes starting at the same instant may both run it)
    assert any(t.user_attrs.get("baseline") for t in study.trials)
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["number"] for r in rows} <= {"0", "1"} and {"state", "value", "learning_rate", "augment"} <= set(rows[0])
    best = json.loads((out / "best_overrides.json").read_text())
    assert {"learning_rate", "weight_decay", "label_smoothing", "augment", "ema_decay", "max_epochs"} <= set(best)
    assert best["max_epochs"] == 1 and "output_dir" not in best
    assert (out / "optimization_history.png").is_file()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, [t.state for t in study.trials]  # a 1-epoch trial has nothing to prune it on
    for t in complete:
        assert 0.0 <= t.value <= 1.0
        assert (out / "trials" / f"trial_{t.number:04d}" / "calibration.json").is_file()
    # the same command again adds to the same study
    log = subprocess.run(cmd + ["--sampler_seed", "3"], env=env, capture_output=True, text=True, timeout=600)
    assert log.returncode == 0, log.stderr[-3000:]
    assert len(optuna.load_study(study_name="cxr_pneumonia_classifier",
                                 storage=f"sqlite:///{out / 'study.db'}").trials) == 3
