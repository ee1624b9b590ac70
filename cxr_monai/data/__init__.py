"""Datasets (class folders, MedMNIST npz, datalists), patient-aware splits, sampling, phantoms."""

from .datasets import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
from .splits import *  # noqa: F401,F403
