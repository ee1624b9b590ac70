"""The one loader of the frozen reference classifier behind the perceptual loss and the feature-based metrics.

The reference network is the classifier bundle's ``models/feature_extractor.pt``, defined by its
``configs/feature_extractor.json`` (a 224-px ResNet18SA-lite that does not change with classifier releases, so
the SR perceptual loss and the synthesis FID/KID stay comparable). ``cxr_monai.losses.classifier_feature_extractor``
and ``cxr_monai.metrics.generative.classifier_feature_extractor`` wrap what this returns.

It sits beside :mod:`cxr_monai.utils` (whose :func:`~cxr_monai.utils.load_bundle_network` it uses), above
``networks`` and below ``losses``/``metrics``: the bundle folder is always an argument.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from cxr_monai.networks import freeze_module
from cxr_monai.utils import load_bundle_network
from cxr_monai.networks import resnet18_sa

__all__ = ["REFERENCE_CONFIG", "REFERENCE_WEIGHTS", "load_reference_network"]

REFERENCE_WEIGHTS = "feature_extractor.pt"
REFERENCE_CONFIG = "feature_extractor.json"


def load_reference_network(
    bundle_root: str | Path,
    weights_name: str = REFERENCE_WEIGHTS,
    config: str = REFERENCE_CONFIG,
    overrides: dict | None = None,
    allow_untrained: bool = False,
    seed: int = 0,
) -> nn.Module:
    """The classifier bundle's reference network, frozen (eval mode, no parameter gradients), on the CPU.

    Args:
        bundle_root: folder of the ``cxr_pneumonia_classifier`` bundle.
        weights_name: weights file under ``models/``.
        config: the config under ``configs/`` whose ``network_def`` matches the weights.
        overrides: config overrides of ``config`` (e.g. another ``network_def`` for other weights).
        allow_untrained: when the weights are missing, return a randomly initialised ResNet18SA-lite (seeded
            with ``seed`` through ``torch.manual_seed``) instead of raising; only for tests.
        seed: seed of that fallback.

    Raises:
        ValueError: ``bundle_root`` is ``None``.
        FileNotFoundError: the weights are missing and ``allow_untrained`` is False (a random extractor is never
            used silently).
    """

    if bundle_root is None:
        raise ValueError("bundle_root is required: the folder of the cxr_pneumonia_classifier bundle")
    weights = Path(bundle_root) / "models" / weights_name
    if weights.is_file():

        net = load_bundle_network(bundle_root, weights_name, config=config, overrides=overrides)
    elif allow_untrained:

        torch.manual_seed(seed)
        net = resnet18_sa("lite")
    else:
        raise FileNotFoundError(f"{weights}: reference classifier weights not found (no random fallback)")
    return freeze_module(net)
