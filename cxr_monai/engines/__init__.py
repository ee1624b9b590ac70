"""Ignite workflows and handlers: classifier writer/calibration, SR GAN trainer, latent GAN trainer."""

from .classification import *  # noqa: F401,F403
from .views import *  # noqa: F401,F403
from . import distributed  # noqa: F401  (multi_gpu_train.json: cxr_monai.engines.distributed.*)
from .ema import make_ema, update_ema  # noqa: F401  (one EMA definition for the three bundles)
