"""Commissioning a site: the shipped model's scores on the site's labelled sample -> ``SITE/site_calibration.json``
(:func:`commission`, :func:`write_site_calibration`), and the bundle's run of it (:class:`CommissioningCollector`,
:func:`run_commissioning`, ``configs/commission.json``), which also leaves the drift monitor's reference in ``SITE``
(:mod:`cxr_monai.commissioning.monitor`)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_monai.commissioning.fit import (
    METHOD,
    METRICS,
    N_BOOT,
    N_FOLDS,
    N_REPEATS,
    RIDGE,
    THRESHOLD_RULE,
    check_scores,
    cross_validate,
    cv_bootstrap,
    fit_site_calibration,
    logodds_from_logits,
    prevalence_shift,
    sigmoid,
)
from cxr_monai.commissioning.patients import (
    MAX_PATIENT_SHARE,
    MIN_PATIENTS_PER_CLASS,
    check_grouping,
    resolve_patients,
)
from cxr_monai.commissioning.site import (
    FORMAT_VERSION,
    SITE_FIGURE,
    SITE_FILE,
    SITE_KIND,
    CommissioningError,
    MostlyOutOfScopeError,
    ScopeGateError,
    TooFewImagesError,
    json_clean,
    model_identity,
    sha256_file,
)
from cxr_monai.metrics.classification import (
    bootstrap_ci,
    classification_report,
    expected_calibration_error,
    roc_auc,
)
from cxr_monai.metrics.classification import reliability_bins, roc_curve
from cxr_monai.scope import load_scope_check, require_own_view
from cxr_monai.commissioning.monitor import image_statistics
from cxr_monai.io import CXRInputError, load_cxr
from cxr_monai.commissioning.monitor import build_reference, write_reference
from ignite.engine import Events
from cxr_monai.utils import item_name

__all__ = [
    "MIN_PER_CLASS",
    "MAX_OUT_OF_SCOPE_FRACTION",
    "SELECTION_NOTE",
    "commission",
    "write_site_calibration",
    "default_scope_check",
    "CommissioningCollector",
    "run_commissioning",
]

logger = logging.getLogger("cxr_monai.commissioning")

MIN_PER_CLASS = 20
"""Fewest in-scope images per class that commissioning accepts."""
MAX_OUT_OF_SCOPE_FRACTION = 0.5
"""Commissioning refuses a sample of which more than this fraction is out of the intended population."""
SELECTION_NOTE = ("no parameter of this run was fitted on these images, but they are not untouched when the model or "
                  "its threshold was chosen with them: the shipped classifier was selected over five rounds that "
                  "scored the shared Kermany site sample, so on that sample these figures are selection-biased "
                  "(optimistic); on a site's own, unseen sample they are not")
"""What ``default_on_sample`` is, said honestly (the shipped model was selected with the shared site sample)."""

# ------------------------------------------------------------------------------------------------- commissioning


def _default_metrics(logodds: np.ndarray, y: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    p = sigmoid(logodds)
    report = classification_report(p, y, threshold)
    ci = bootstrap_ci(p, y, threshold, n_boot=n_boot, seed=seed)
    return {"accuracy": ci["accuracy"], "sensitivity": ci["sensitivity"], "specificity": ci["specificity"],
            "auc": ci["auc"], "ece": ci["ece"], "confusion_matrix": report["confusion_matrix"],
            "threshold": float(threshold), "n": int(y.size),
            "method": "the default calibration scored on the in-scope sample; stratified percentile bootstrap "
                      "(bootstrap_ci)", "provenance": SELECTION_NOTE, "n_boot": int(n_boot)}


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
    prevalence: float | None = None,
    patients: Mapping[str, Any] | None = None,
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
    max_patient_share: float = MAX_PATIENT_SHARE,
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
        groups: patient of each image (folds keep a patient whole and the bootstrap resamples patients; the
            grouping is checked, :func:`cxr_monai.commissioning.patients.check_grouping`; ``None``: each image its
            own patient, for synthetic tests only).
        class_names: names by label.
        date: ISO date (default today).
        default_threshold, default_temperature: the shipped calibration, recorded and scored for comparison.
        scope_check: what decided ``in_scope`` (recorded).
        dataset_dir: the sample's folder (recorded).
        ridge, n_folds, n_repeats, n_boot, seed: the rule's constants (model card).
        min_per_class, max_out_of_scope_fraction: the refusal limits.
        prevalence: the site's expected PNEUMONIA prevalence among its in-scope films: the site probabilities and the
            threshold are corrected to it (:func:`cxr_monai.commissioning.fit.prevalence_shift`; ``b`` moves by
            ``logit(prevalence) - logit(sample prevalence)``, the threshold becomes ``prevalence``; the decisions
            are unchanged). ``None``: the sample's prevalence is used and the report warns.
        patients: where the groups came from (:meth:`cxr_monai.commissioning.patients.Patients.summary`), recorded.
        min_patients_per_class, max_patient_share: the patient grouping's refusal limits.

    Raises:
        MostlyOutOfScopeError: more than ``max_out_of_scope_fraction`` of the images are out of scope.
        TooFewImagesError: a class has fewer than ``min_per_class`` in-scope images.
        PatientGroupingError: the grouping collapsed (too few patients per class, one patient with most images).
        CommissioningError: a prevalence outside (0, 1), or a model that ranks the classes backwards here.
    """
    x, y = check_scores(logodds, labels)
    if prevalence is not None and not 0.0 < float(prevalence) < 1.0:
        raise CommissioningError(f"--prevalence must be in (0, 1) (the share of PNEUMONIA among the site's in-scope "
                                 f"films), got {prevalence!r}")
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
    grouping = check_grouping(g, yk, names, min_patients_per_class, max_patient_share) if g is not None else None
    a, b, threshold, sample_prevalence = fit_site_calibration(xk, yk, ridge)
    if not a > 0:
        raise CommissioningError(
            f"the fitted slope a = {a:.3f} is not positive: on this sample the model's scores do not rank PNEUMONIA "
            "above NORMAL, so no recalibration can make it usable here (check the labels and the images)")
    warnings: list[str] = []
    if prevalence is not None:
        b, threshold, prevalence_source = b + prevalence_shift(sample_prevalence, float(prevalence)), float(prevalence), \
            "stated by the site (--prevalence)"
    else:
        prevalence, prevalence_source = sample_prevalence, "the commissioning sample's (NOT stated by the site)"
        warnings.append(
            f"PREVALENCE NOT STATED: the site probabilities and the threshold carry the commissioning sample's "
            f"prevalence {sample_prevalence:.2f}, which is the site's only if the sample was drawn at random from its "
            "films; an enriched sample makes every probability too high. Commission again with --prevalence P "
            "(the expected share of PNEUMONIA among the site's in-scope films).")
    cv = cross_validate(xk, yk, g, n_folds, n_repeats, seed, ridge)
    expected = cv_bootstrap(cv["probs"], cv["decisions"], yk, n_boot, seed, groups=g)
    expected["method"] = (f"repeated cross-validation inside the sample: {n_folds} folds stratified by class and "
                          f"grouped by patient, {n_repeats} repeats, the rule fitted on {n_folds - 1} folds and "
                          "applied to the held-out one; estimate = mean over repeats of the pooled out-of-fold "
                          f"metric; 95 % interval = bootstrap over {expected['resampled']} within class ({n_boot} "
                          "resamples); the out-of-fold probabilities (and so the ECE) are at the sample's "
                          "prevalence, sensitivity and specificity do not depend on it")
    expected["fold_fits"] = {k: {"min": float(np.nanmin(cv[k])), "median": float(np.nanmedian(cv[k])),
                                 "max": float(np.nanmax(cv[k]))} for k in ("a", "b", "threshold")}
    files_l = [str(f) for f in files] if files is not None else None
    reasons = list(scope_reasons) if scope_reasons is not None else [""] * y.size
    out_list = [{"file": files_l[i] if files_l else str(i), "true_label": names[int(y[i])], "reason": reasons[i]}
                for i in np.flatnonzero(~keep)]
    n_patients = grouping["n_patients"] if grouping else int(keep.sum())
    for w in warnings:
        logger.warning("site %s: %s", site_id, w)
    return {
        "format_version": FORMAT_VERSION,
        "kind": SITE_KIND,
        "site_id": str(site_id),
        "date": date or _dt.date.today().isoformat(),
        "model": {"name": model["name"], "version": model["version"],
                  "weights_file": model.get("weights_file", "models/model.pt"),
                  "weights_sha256": model["weights_sha256"], "default_temperature": float(default_temperature),
                  "default_threshold": float(default_threshold)},
        "warnings": warnings,
        "calibration": {"a": a, "b": b, "threshold": threshold, "prevalence": float(prevalence),
                        "prevalence_source": prevalence_source, "sample_prevalence": sample_prevalence,
                        "method": METHOD + ("; b then moved by logit(prevalence) - logit(sample prevalence) "
                                            "(prior shift to the stated prevalence)" if prevalence_source.startswith(
                                                "stated") else ""),
                        "ridge": float(ridge), "threshold_rule": THRESHOLD_RULE,
                        "apply": "p_site = sigmoid(a * L + b) with L = log-odds of the default calibration; "
                                 "PNEUMONIA when p_site >= threshold"},
        "sample": {"dataset_dir": dataset_dir, "n": int(y.size), "n_in_scope": int(keep.sum()),
                   "n_out_of_scope": n_out, "in_scope_per_class": per_class, "out_of_scope_per_class": per_class_out,
                   "n_patients_in_scope": n_patients,
                   "patients_in_scope_per_class": grouping["per_class"] if grouping else None,
                   "patients": dict(patients) if patients is not None else (
                       "grouped by the caller" if g is not None else "none given: each image its own patient"),
                   "scope_check": scope_check, "out_of_scope": out_list},
        "expected": expected,
        "default_on_sample": _default_metrics(xk, yk, default_threshold, n_boot, seed),
        "_cv": cv,  # arrays for the figure and the monitor's reference; dropped by write_site_calibration
        "_in_scope": keep,
        "_labels": yk,
        "_logodds": xk,
    }


def _plot(report: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    cv, y, x = report["_cv"], report["_labels"], report["_logodds"]
    site_p, site_y = cv["probs"].ravel(), np.tile(y, cv["probs"].shape[0])
    default_p = sigmoid(x)
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
    tmp.write_text(json.dumps(json_clean(report), indent=2))
    os.replace(tmp, path)
    return path



# ------------------------------------------------------------------------------------------- the bundle's run


def default_scope_check(gate_file: str | os.PathLike | None, device: str | torch.device = "cpu",
                        image_size: int | None = None, classifier_lung_field: str | os.PathLike | None = None,
                        classifier_views: Sequence[str] | None = None) -> Callable[..., list]:
    """The decisions of the bundle's intended-population gate on the classifier batches, the same as inference's
    (:func:`cxr_monai.scope.load_scope_check`: the gate's own view of each film, as
    :func:`cxr_monai.inference.check_scope`; the gate's ``check`` on the network input when that is its view).

    Args:
        gate_file: the gate (``models/scope_gate.ts``).
        device: where it runs.
        image_size: the classifier's input side (``None``: the gate's own).
        classifier_lung_field: the lung-field network the classifier's input is made through (``None``: the whole
            film).
        classifier_views: the classifier's input views (``None``: one view).

    Raises:
        ScopeGateError: no gate at ``gate_file``: a site calibration must be fitted on the in-scope set of the gate
            the deployed model runs with; ``--use_scope_gate False`` (no check at all) is the explicit way without.
    """
    if gate_file is None or not Path(gate_file).is_file():
        raise ScopeGateError(f"{gate_file}: intended-population gate not found; commissioning needs the gate the "
                             "model will run with (or --use_scope_gate False to commission without it, explicitly)")
    return load_scope_check(gate_file, image_size, classifier_lung_field, device, classifier_views)


class CommissioningCollector:
    """Ignite handler: per image of an evaluator run, the network output's log-odds, the label, the file and
    the intended-population decision.

    Args:
        scope_check: ``f(x, metas) -> decisions`` with ``in_scope`` and ``reason``, given the network input batch
            (:func:`default_scope_check`: the same decisions as the bundle's inference; a gate's own ``check`` only
            for a gate that names no lung-field network); ``None``: every image in scope.
        temperature: the default temperature (log-odds are ``(z1 - z0) / T``).
        image_key, label_key, pred_key: item keys (``pred``: the raw network output, no softmax).
    """

    def __init__(self, scope_check: Callable[..., Sequence[Any]] | None = None, temperature: float = 1.0,
                 image_key: str = "image", label_key: str = "label", pred_key: str = "pred") -> None:
        require_own_view(scope_check, "CommissioningCollector")
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
        self.gate_scores: list[tuple[float | None, float | None]] = []

    def attach(self, engine) -> None:

        engine.add_event_handler(Events.STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def iteration_completed(self, engine) -> None:

        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        z = torch.stack([torch.as_tensor(o[self.pred_key]).reshape(-1).float() for o in outputs])
        self.logodds += logodds_from_logits(z, self.temperature).tolist()
        self.labels += [int(torch.as_tensor(o[self.label_key]).reshape(-1)[0]) for o in outputs]
        self.files += [item_name(o, self.image_key, len(self.files) + i) for i, o in enumerate(outputs)]
        if self.scope_check is None:
            decisions = [(True, "", None, None)] * len(outputs)
        else:
            x = torch.stack([torch.as_tensor(o[self.image_key]) for o in outputs])
            metas = [getattr(o[self.image_key], "meta", None) for o in outputs]
            decisions = [(bool(d.in_scope), str(d.reason or ""), getattr(d, "probability", None),
                          getattr(d, "distance", None)) for d in self.scope_check(x, metas)]
        self.in_scope += [d[0] for d in decisions]
        self.reasons += [d[1] for d in decisions]
        self.gate_scores += [(d[2], d[3]) for d in decisions]


def _image_stats(files: Sequence[str]) -> list[dict[str, float] | None]:
    """:func:`cxr_monai.commissioning.monitor.image_statistics` of each file as read (``None`` where unreadable)."""

    out: list[dict[str, float] | None] = []
    for f in files:
        try:
            out.append(image_statistics(load_cxr(f)[0]))
        except (CXRInputError, OSError) as err:
            logger.warning("monitor reference: %s unreadable (%s)", f, err)
            out.append(None)
    return out


def run_commissioning(collector: CommissioningCollector, output_dir: str | os.PathLike,
                      bundle_root: str | os.PathLike, site_id: str, date: str | None = None,
                      default_threshold: float = 0.5, weights_name: str = "model.pt",
                      class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"), dataset_dir: str | None = None,
                      scope_check: str = "none", prevalence: float | None = None,
                      patients_csv: str | os.PathLike | None = None, exit_on_refusal: bool = True,
                      **kwargs: Any) -> Path:
    """:func:`commission` on what ``collector`` gathered, then :func:`write_site_calibration` and the drift
    monitor's reference (:func:`cxr_monai.commissioning.monitor.build_reference`, ``monitor_reference.json``).

    The patients come from DICOM ``PatientID``, else ``patients.csv``, else Kermany-style names
    (:func:`cxr_monai.commissioning.patients.resolve_patients`). ``prevalence``: the site's expected PNEUMONIA
    prevalence (``--prevalence``). ``kwargs`` go to :func:`commission` (``n_repeats``, ``n_boot``, ...).

    A refusal (:class:`CommissioningError`) is logged and, with ``exit_on_refusal`` (the bundle's run), ends the
    program with its message and no traceback (``SystemExit``; the typed error is its ``__cause__``).
    Returns the JSON's path.
    """

    try:
        if not collector.labels:
            raise CommissioningError(f"{dataset_dir}: no images were read")
        patients = resolve_patients(collector.files, dataset_dir, patients_csv)
        report = commission(collector.logodds, collector.labels, model_identity(bundle_root, weights_name), site_id,
                            in_scope=collector.in_scope, scope_reasons=collector.reasons, files=collector.files,
                            groups=list(patients.ids), patients=patients.summary(), class_names=class_names,
                            date=date, default_threshold=default_threshold, default_temperature=collector.temperature,
                            scope_check=scope_check, dataset_dir=dataset_dir, prevalence=prevalence, **kwargs)
    except CommissioningError as err:
        logger.error("commissioning refused: %s", err)
        if exit_on_refusal:
            raise SystemExit(f"commissioning refused ({type(err).__name__}): {err}") from err
        raise
    gate = sha256_file(scope_check) if Path(scope_check).is_file() else None
    report["sample"]["scope_gate_sha256"] = gate  # the in-scope set depends on the gate: checked on load
    report["calibration"]["scope_gate_sha256"] = gate
    path = write_site_calibration(report, output_dir)
    gate_scores = collector.gate_scores or [(None, None)] * len(collector.files)
    write_reference(build_reference(report, _image_stats(collector.files), gate_scores), output_dir)
    e = report["expected"]
    logger.info("site %s: a=%.3f b=%.3f threshold=%.3f (prevalence %.3f, %s); %d patients; expected (CV) %s", site_id,
                report["calibration"]["a"], report["calibration"]["b"], report["calibration"]["threshold"],
                report["calibration"]["prevalence"], report["calibration"]["prevalence_source"],
                report["sample"]["n_patients_in_scope"],
                {k: f"{e[k]['estimate']:.3f} [{e[k]['low']:.3f}, {e[k]['high']:.3f}]" for k in METRICS})
    return path
