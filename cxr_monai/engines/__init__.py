"""Ignite workflows and handlers: classifier writer/calibration, SR GAN trainer, latent GAN trainer."""

from .classification import *  # noqa: F401,F403
