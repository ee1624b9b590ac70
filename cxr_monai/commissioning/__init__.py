"""Site commissioning of the pneumonia classifier: recalibrate the shipped model on a small labelled local
sample, estimate honestly what the site should expect from it, and watch for drift after go-live.

The rule (model card, "Site commissioning", fixed before any site result was seen):

* **Patients** (:mod:`~cxr_monai.commissioning.patients`): DICOM ``PatientID`` when present, else the sample's
  ``patients.csv`` (file, patient), else the Kermany file-name rule (Kermany-style names only; reported as such).
  Refused (:class:`PatientGroupingError`) when an image has no known patient or the grouping collapses: fewer than
  :data:`MIN_PATIENTS_PER_CLASS` patients in a class, or one patient holding more than :data:`MAX_PATIENT_SHARE`.
* **Fit** (:mod:`~cxr_monai.commissioning.fit`): logistic recalibration of the ensemble's log-odds
  ``L = (z1 - z0) / T``: the site probability is ``sigmoid(a * L + b)``; ``a, b`` maximise the Bernoulli
  log-likelihood of the in-scope sample minus ``(ridge / 2) * ((a - 1)^2 + b^2)`` (:data:`RIDGE` = 1).
* **Prevalence**: with ``--prevalence P`` the probabilities move to the site's prevalence by prior shift
  (``b += logit(P) - logit(sample prevalence)``, :func:`prevalence_shift`) and ``calibration.prevalence`` is ``P``;
  without it the sample's prevalence is used and the report's ``warnings`` say so.
* **Threshold**: the equal-prior rule: PNEUMONIA when the site probability is ``>=`` the prevalence it carries
  (decisions do not depend on ``P``).
* **Estimates**: repeated cross-validation inside the sample (5 folds stratified by class and grouped by
  patient, 20 repeats), 95 % intervals from a bootstrap over patients within class (:func:`cv_bootstrap`).
* **Refusals** (:class:`CommissioningError` and subclasses): too few in-scope images per class, a mostly
  out-of-scope sample, a collapsed patient grouping, a missing gate (:class:`ScopeGateError`; ``--use_scope_gate
  False`` is the explicit way without one), a calibration loaded for other weights or another gate.

The results are ``SITE/site_calibration.json`` (+ figure) and ``SITE/monitor_reference.json``, which the drift
monitor (:mod:`~cxr_monai.commissioning.monitor`, ``python -m cxr_monai monitor``) compares recent results with.
:func:`load_site_calibration` reads the calibration back for the bundle (``--site_dir``), the deploy export
(``make deploy-models SITE=...``), the deploy app and the label server (:func:`check_deployed_gate`).
"""

from __future__ import annotations

from cxr_monai.commissioning.fit import (
    METHOD,
    N_BOOT,
    N_FOLDS,
    N_REPEATS,
    RIDGE,
    THRESHOLD_RULE,
    cross_validate,
    cv_bootstrap,
    fit_logistic_recalibration,
    fit_site_calibration,
    grouped_stratified_folds,
    logit,
    logodds_from_logits,
    prevalence_shift,
    sigmoid,
)
from cxr_monai.commissioning.patients import (
    MAX_PATIENT_SHARE,
    MIN_PATIENTS_PER_CLASS,
    PATIENTS_CSV,
    PatientGroupingError,
    Patients,
    UnknownPatientError,
    check_grouping,
    resolve_patients,
)
from cxr_monai.commissioning.run import (
    MAX_OUT_OF_SCOPE_FRACTION,
    MIN_PER_CLASS,
    SELECTION_NOTE,
    CommissioningCollector,
    commission,
    default_scope_check,
    run_commissioning,
    write_site_calibration,
)
from cxr_monai.commissioning.site import (
    SITE_FIGURE,
    SITE_FILE,
    CommissioningError,
    ModelMismatchError,
    MostlyOutOfScopeError,
    ScopeGateError,
    SiteCalibration,
    TooFewImagesError,
    calibration_in_force,
    check_deployed_gate,
    check_scope_gate,
    describe_calibration,
    load_site_calibration,
    model_identity,
    sha256_file,
    site_logits,
)

__all__ = [
    "SITE_FILE", "SITE_FIGURE", "MIN_PER_CLASS", "MAX_OUT_OF_SCOPE_FRACTION", "MIN_PATIENTS_PER_CLASS",
    "MAX_PATIENT_SHARE", "PATIENTS_CSV", "RIDGE", "N_FOLDS", "N_REPEATS", "N_BOOT", "METHOD", "THRESHOLD_RULE",
    "SELECTION_NOTE", "CommissioningError", "TooFewImagesError", "MostlyOutOfScopeError", "ModelMismatchError",
    "ScopeGateError", "PatientGroupingError", "UnknownPatientError", "Patients", "SiteCalibration", "sha256_file",
    "model_identity", "sigmoid", "logit", "logodds_from_logits", "fit_logistic_recalibration", "fit_site_calibration",
    "prevalence_shift", "grouped_stratified_folds", "cross_validate", "cv_bootstrap", "resolve_patients",
    "check_grouping", "commission", "write_site_calibration", "load_site_calibration", "check_scope_gate",
    "check_deployed_gate", "calibration_in_force", "describe_calibration", "site_logits", "default_scope_check",
    "CommissioningCollector", "run_commissioning",
]
