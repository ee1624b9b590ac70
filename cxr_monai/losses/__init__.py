"""Losses: pixel, perceptual (injectable extractor) and adversarial."""

from .adversarial import *  # noqa: F401,F403
from .pixel import *  # noqa: F401,F403
from .perceptual import *  # noqa: F401,F403
