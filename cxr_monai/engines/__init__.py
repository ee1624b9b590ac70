"""Ignite workflows: SR GAN trainer, latent GAN trainer."""
