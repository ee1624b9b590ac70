"""Adversarial losses: hinge (SAGAN/SN-GAN), BCE (DCGAN) and relativistic average (ESRGAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hinge_d_loss", "hinge_g_loss", "bce_d_loss", "bce_g_loss", "relativistic_d_loss", "relativistic_g_loss"]


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: ``-E[D(G(z))]``."""
    return -fake_logits.mean()


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Original (DCGAN) discriminator loss: BCE with real = 1, fake = 0, on logits (the seed's sigmoid)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating (DCGAN) generator loss: BCE of the fakes against the "real" label."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def relativistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss (ESRGAN): real should look more real than the average fake."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    loss_real = F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
    loss_fake = F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel))
    return 0.5 * (loss_real + loss_fake)


def relativistic_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average generator loss (ESRGAN): the symmetric counterpart of :func:`relativistic_d_loss`."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    loss_real = F.binary_cross_entropy_with_logits(real_rel, torch.zeros_like(real_rel))
    loss_fake = F.binary_cross_entropy_with_logits(fake_rel, torch.ones_like(fake_rel))
    return 0.5 * (loss_real + loss_fake)
