"""Studies: end-to-end experiments that compose networks, transforms, metrics and explainability into a report
(above the engines layer; bundles call them, nothing in the package outside ``studies`` imports them).

Each is run by a bundle config (``bundles/<bundle>/configs/<config>``) with ``python -m monai.bundle run``:

============================  ==========================  ==============================================
module                        bundle                      config
============================  ==========================  ==============================================
``framing``                   cxr_pneumonia_classifier    ``framing_study.json``
``monitor_streams``           cxr_pneumonia_classifier    ``monitor_check.json``
``classifier_recipes``        cxr_pneumonia_classifier    ``study_recipes.json``
``site_shift_probe``          cxr_pneumonia_classifier    ``study_site_shift.json``
``later_cohort_candidates``   cxr_pneumonia_classifier    ``study_later_cohort.json``
``sr_downstream``             cxr_sr_csaegan              ``evaluate_downstream.json``
``sr_compare``                cxr_sr_csaegan              ``study_compare.json``
``synth_augmentation_study``  cxr_synth_sgan              ``study_augmentation.json``
``synth_budget_curve``        cxr_synth_sgan              ``study_budget_curve.json``
``layout_study``              (both; a speed study)       ``python -m cxr_monai.studies.layout_study``
============================  ==========================  ==============================================
"""

from __future__ import annotations

from .sr_downstream import *  # noqa: F401,F403
from .framing import *  # noqa: F401,F403
