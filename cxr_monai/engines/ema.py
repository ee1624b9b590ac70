"""Exponential moving average (EMA) of a network's weights: one definition for the three bundles (the classifier's
:class:`cxr_monai.engines.ModelEMA`, the SR stage-2 generator and the synthesis generator)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["make_ema", "update_ema"]


def make_ema(network: nn.Module) -> nn.Module:
    """A frozen deep copy (eval mode, no gradients) of ``network``, or of the module inside its DDP wrapper, to
    hold its exponential moving average."""
    from cxr_monai.engines.distributed import unwrap

    ema = copy.deepcopy(unwrap(network))
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for the parameters (``lerp``); buffers (batch-norm statistics,
    spectral-norm vectors) are copied. ``model`` may be DDP-wrapped."""
    from cxr_monai.engines.distributed import unwrap

    if not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    model = unwrap(model)
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
