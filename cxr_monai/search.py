"""Hyperparameter search over a bundle's training config with Optuna (``configs/search.json`` calls
:func:`run_search`).

Each trial is one run of the bundle's own ``train.json`` (through :class:`monai.bundle.ConfigWorkflow`) with the
fixed overrides of the search (e.g. ``max_epochs``) and the trial's sampled config ids. Pruning: Optuna's Ignite
integration (:class:`optuna_integration.PyTorchIgnitePruningHandler`, or a minimal handler of the same behaviour
when the integration package is absent) reports the per-epoch validation AUC of the trainer's evaluator and
stops trials that the pruner finds unpromising. Score (maximised), fixed before any search: the stress-suite
criterion of the model card on the validation split, i.e. the mean over the suite's shifts of the worst-strength
balanced accuracy at the member's own calibrated equal-prior threshold (:func:`stress_criterion`); the test
split and the site samples are never read.

The study lives in a database (SQLite by default, any SQLAlchemy URL), so a search resumes where it stopped and
several processes or machines can add trials to one study at once. The first trial of a new study is the
hand-made recipe (the config's own values of the searched ids), so the search is compared with it at equal
budget.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["suggest", "stress_criterion", "run_trial", "run_search", "write_study_outputs", "DEFAULT_SPACE"]

logger = logging.getLogger(__name__)

#: the searched training config ids (``train.json``) and their ranges
DEFAULT_SPACE: dict[str, dict] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "augment": {"type": "categorical", "choices": ["none", "mild", "strong"]},
    "ema_decay": {"type": "float", "low": 0.9, "high": 0.999},
}


def suggest(trial, space: Mapping[str, Mapping]) -> dict[str, Any]:
    """Sample one value per config id of ``space`` (``type`` float/int with ``low``, ``high``, optional ``log``
    and ``step``; or categorical with ``choices``)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec.get("type", "float")
        if kind == "float":
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=bool(spec.get("log", False)), step=spec.get("step"))
        elif kind == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]),
                                             log=bool(spec.get("log", False)), step=int(spec.get("step", 1)))
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        else:
            raise ValueError(f"search space entry {name!r}: unknown type {kind!r}")
    return params


def stress_criterion(report: Mapping, threshold_name: str = "shipped") -> float:
    """The model card's criterion from a :func:`cxr_monai.metrics.stress.stress_suite` report: the mean over the
    shifts of the worst-strength balanced accuracy ((sensitivity + specificity) / 2) at one named threshold (the
    same number as ``cxr_monai.studies.classifier_recipes.score``'s ``mean_worst_balanced_accuracy``)."""
    worst = []
    for shift in report["shifts"].values():
        levels = [lv for lv in shift["levels"] if not lv["clean"]]
        worst.append(min(0.5 * (float(lv["at"][threshold_name]["recall"]) + float(lv["at"][threshold_name]["specificity"]))
                         for lv in levels))
    return float(np.mean(worst))


class _PruningHandler:
    """Fallback with the behaviour of ``optuna_integration.PyTorchIgnitePruningHandler``."""

    def __init__(self, trial, metric: str, trainer) -> None:
        self._trial, self._metric, self._trainer = trial, metric, trainer

    def __call__(self, engine) -> None:
        import optuna

        self._trial.report(float(engine.state.metrics[self._metric]), self._trainer.state.epoch)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {self._trainer.state.epoch}")


def _pruning_handler(trial, metric: str, trainer):
    try:
        from optuna_integration import PyTorchIgnitePruningHandler
    except ImportError:  # the integration package is optional
        return _PruningHandler(trial, metric, trainer)
    return PyTorchIgnitePruningHandler(trial, metric, trainer)


def _is_pruned(exc: BaseException) -> BaseException | None:
    """The :class:`optuna.TrialPruned` in ``exc``'s chain of causes (MONAI wraps what a handler raises), or None."""
    import optuna

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, optuna.TrialPruned):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_trial(trial, bundle_root: str | Path, overrides: Mapping[str, Any], output_dir: str | Path,
              train_configs: Sequence[str] = ("train.json",), metric: str = "val_auc",
              stress_max_items: int | None = None) -> float:
    """One trial: ``train_configs`` of the bundle with ``overrides`` (fixed ids + the trial's parameters), pruned on
    the evaluator's ``metric`` each epoch; then the trained member (final EMA weights, its calibration) is scored
    by :func:`stress_criterion` on the validation split (``stress_max_items`` first items; ``None``: all)."""
    import monai
    from monai.bundle import ConfigWorkflow

    from cxr_monai.metrics.stress import load_images, stress_suite
    from cxr_monai.networks import ClassifierEnsemble
    from cxr_monai.transforms import classifier_preprocessing

    root = Path(bundle_root)
    out = Path(output_dir)
    files = [str(root / "configs" / c) for c in train_configs]
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0],
                        meta_file=str(root / "configs" / "metadata.json"), logging_file=False, workflow_type="train",
                        bundle_root=str(root), output_dir=str(out), **dict(overrides))
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    from ignite.engine import Events

    evaluator.add_event_handler(Events.COMPLETED, _pruning_handler(trial, metric, trainer))
    t0 = time.perf_counter()
    try:
        wf.run()
    except Exception as exc:  # MONAI/Ignite may wrap the TrialPruned raised in the evaluator
        pruned = _is_pruned(exc)
        if pruned is not None:
            import optuna

            raise optuna.TrialPruned(str(pruned)) from None
        raise
    wf.finalize()  # calibrate_member: model.pt, calibration.json (temperature, bias, equal-prior threshold)
    trial.set_user_attr("train_s", round(time.perf_counter() - t0, 1))
    cal = json.loads((out / "calibration.json").read_text())
    member = wf.parser.get_parsed_content("ema").module.eval()
    calibrated = ClassifierEnsemble([member], temperatures=[cal["temperature"]], biases=[cal["bias"]]).eval()
    val = list(wf.parser.get_parsed_content("val_datalist"))[:stress_max_items]
    images, labels = load_images(val)
    pre = monai.transforms.Compose(classifier_preprocessing(["image"], int(wf.parser.get_parsed_content("image_size"))))
    t1 = time.perf_counter()
    report = stress_suite(calibrated, images, labels, pre, thresholds={"shipped": float(cal["threshold"])},
                          device=wf.parser.get_parsed_content("device"), n_boot=0)
    value = stress_criterion(report)
    trial.set_user_attr("stress_s", round(time.perf_counter() - t1, 1))
    trial.set_user_attr("clean_auc", float(report["clean"]["auc"]))
    trial.set_user_attr("threshold", float(cal["threshold"]))
    trial.set_user_attr("val_auc", float(cal.get("validation", {}).get("auc", float("nan"))))
    (out / "stress_criterion.json").write_text(json.dumps({"mean_worst_balanced_accuracy": value,
                                                           "clean_auc": report["clean"]["auc"], "n": len(labels)}, indent=1))
    return value


def _storage(storage: str | None, output_dir: Path):
    import optuna

    url = storage or f"sqlite:///{(output_dir / 'study.db').resolve()}"
    if url.startswith("sqlite"):  # several processes on one file: wait for the lock instead of failing
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


def _create_or_load_study(study_name: str, storage: str | None, out: Path, sampler, pruner, attempts: int = 6):
    """``optuna.create_study(..., load_if_exists=True)``, retried: two processes that start on a new database at
    the same instant race to create its tables, version row and study (an IntegrityError or
    DuplicatedStudyError in the loser); the loser retries and loads what the winner created."""
    import random
    import time

    import optuna

    for attempt in range(attempts):
        try:
            return optuna.create_study(study_name=study_name, storage=_storage(storage, out), direction="maximize",
                                       load_if_exists=True, sampler=sampler, pruner=pruner)
        except Exception as err:  # noqa: BLE001 - sqlalchemy/optuna raise several types for the same race
            if attempt == attempts - 1:
                raise
            logger.warning("creating/loading study %s failed (%s: %s); retrying", study_name, type(err).__name__, err)
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def write_study_outputs(study, output_dir: str | Path, fixed: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``trials.csv`` (number, state, value, duration, parameters, user attributes), ``best_overrides.json``
    (the fixed ids and the best trial's parameters: config ids ``train.json`` accepts, e.g. as ``--args_file``),
    ``best_trial.json`` and Optuna's optimisation-history and parameter-importance figures (PNG)."""
    import optuna

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    attrs = sorted({a for t in trials for a in t.user_attrs})
    paths = {"trials": out / "trials.csv"}
    with open(paths["trials"], "w", newline="") as f:
        w = csv.writer(f)
        # value: the criterion (complete trials only; Optuna stores a pruned trial's last reported validation AUC
        # as its value, which is another quantity: it goes to last_reported / last_epoch)
        w.writerow(["number", "state", "value", "duration_s", "last_epoch", "last_reported"] + params + attrs)
        for t in trials:
            dur = t.duration.total_seconds() if t.duration is not None else ""
            last = max(t.intermediate_values) if t.intermediate_values else None
            value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
            w.writerow([t.number, t.state.name, "" if value is None else value, dur, "" if last is None else last,
                        "" if last is None else t.intermediate_values[last]]
                       + [t.params.get(p, "") for p in params] + [t.user_attrs.get(a, "") for a in attrs])
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        keep = {k: v for k, v in dict(fixed or {}).items() if k not in ("output_dir", "ckpt_dir", "bundle_root")}
        paths["best_overrides"] = out / "best_overrides.json"
        paths["best_overrides"].write_text(json.dumps({**keep, **best.params}, indent=1, default=str))
        paths["best_trial"] = out / "best_trial.json"
        paths["best_trial"].write_text(json.dumps({
            "number": best.number, "value": best.value, "params": best.params, "user_attrs": best.user_attrs,
            "baseline_value": next((t.value for t in complete if t.user_attrs.get("baseline")), None),
            "n_trials": len(trials), "n_complete": len(complete),
            "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "criterion": "mean over the stress-suite shifts of the worst-strength balanced accuracy at the "
                         "member's equal-prior threshold, validation split (maximised)"}, indent=1, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    figures = {"optimization_history": ovm.plot_optimization_history,
               "param_importances": ovm.plot_param_importances,
               "intermediate_values": ovm.plot_intermediate_values}
    for name, fn in figures.items():
        try:
            ax = fn(study)
            fig = (ax if not isinstance(ax, np.ndarray) else ax.flat[0]).figure
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            paths[name] = out / f"{name}.png"
        except Exception as exc:  # e.g. importances need >= 2 complete trials with varied parameters
            logger.info("figure %s skipped: %s", name, exc)
    return paths


def run_search(bundle_root: str | Path, output_dir: str | Path, n_trials: int, fixed: Mapping[str, Any],
               space: Mapping[str, Mapping] | None = None, storage: str | None = None,
               study_name: str = "cxr_pneumonia_classifier", train_configs: Sequence[str] = ("train.json",),
               metric: str = "val_auc", pruner_startup_trials: int = 3, sampler_seed: int | None = None,
               stress_max_items: int | None = None, show_progress_bar: bool = True) -> dict[str, Path]:
    """Add ``n_trials`` trials to the study ``study_name`` in ``storage`` (default
    ``sqlite:///<output_dir>/study.db``), each :func:`run_trial` in ``<output_dir>/trials/trial_<number>``, then
    :func:`write_study_outputs`. Running it again (or in another process/machine with the same storage) adds trials
    to the same study. A new study starts with the hand-made recipe (``fixed``'s values of the searched ids).

    Args:
        bundle_root: the bundle folder (``configs/train.json`` inside).
        output_dir: the search folder.
        n_trials: trials to add in this process.
        fixed: config ids every trial gets (dataset, image size, epochs, ... and the recipe's values).
        space: searched config ids (:func:`suggest`); default :data:`DEFAULT_SPACE`.
        storage: SQLAlchemy URL of the study database.
        study_name: the study in that database.
        train_configs: the bundle configs of one trial, merged in order.
        metric: the evaluator metric reported each epoch for pruning.
        pruner_startup_trials: trials before the median pruner may prune.
        sampler_seed: seed of the TPE sampler (``None``: random; processes sharing a study should differ).
        stress_max_items: score each trial on the first items of the validation split only (``None``: all).
        show_progress_bar: Optuna's progress bar.
    """
    import optuna

    space = dict(DEFAULT_SPACE if space is None else space)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixed = {k: v for k, v in dict(fixed).items() if v is not None or k in ("max_train_items", "max_val_items")}
    study = _create_or_load_study(
        study_name=study_name, storage=storage, out=out, sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=0))
    study.set_user_attr("criterion", "mean worst-strength balanced accuracy over the stress-suite shifts, "
                                     "validation split, equal-prior threshold (maximise)")
    baseline = {k: fixed[k] for k in space if k in fixed}
    if len(baseline) == len(space):
        study.enqueue_trial(baseline, user_attrs={"baseline": True}, skip_if_exists=True)

    def objective(trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr("baseline", params == baseline)
        return run_trial(trial, bundle_root, {**fixed, **params}, out / "trials" / f"trial_{trial.number:04d}",
                         train_configs=train_configs, metric=metric, stress_max_items=stress_max_items)

    study.optimize(objective, n_trials=int(n_trials), show_progress_bar=show_progress_bar, gc_after_trial=True)
    paths = write_study_outputs(study, out, fixed)
    logger.info("study %s: %d trials, best %s", study_name, len(study.trials), paths.get("best_overrides"))
    return paths
