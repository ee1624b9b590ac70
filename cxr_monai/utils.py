"""Small helpers shared by bundles, the CLI and the deploy apps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["latest_checkpoint", "load_bundle_network", "read_json", "bare_state_dict", "require_arg"]


def latest_checkpoint(folder: str | Path, pattern: str = "*checkpoint_epoch=*.pt") -> str | None:
    """Path of the checkpoint with the highest epoch number in ``folder`` (``None`` when there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None

    def epoch(p: Path) -> int:
        m = re.search(r"=(\d+)", p.name)
        return int(m.group(1)) if m else -1

    files = sorted(folder.glob(pattern), key=epoch)
    return str(files[-1]) if files else None


def bare_state_dict(obj: dict, key: str = "network") -> dict:
    """The network's state dict from a bare state dict or a checkpoint dict holding it under ``key``."""
    for k in (key, "model", "state_dict"):
        if k in obj and isinstance(obj[k], dict):
            return obj[k]
    # MONAI's key-metric saver stores a single object's state flat, beside its own tracking state
    return {k: v for k, v in obj.items() if k != "checkpointer"}


def read_json(path: str | Path, default: dict | None = None) -> dict:
    """JSON file as a dict; ``default`` (if given) when the file does not exist."""
    path = Path(path)
    if not path.is_file() and default is not None:
        return dict(default)
    return json.loads(path.read_text())


def load_bundle_network(
    bundle_root: str | Path,
    weights_name: str = "model.pt",
    config: str = "inference.json",
    net_id: str = "network_def",
    overrides: dict | None = None,
) -> nn.Module:
    """Instantiate a bundle's network from its config and load ``models/<weights_name>`` (eval mode, CPU).

    Args:
        bundle_root: the bundle folder.
        weights_name: file under ``models/``.
        config: config file under ``configs/`` that defines ``net_id``.
        net_id: config id of the network definition.
        overrides: config overrides (e.g. another preset).
    """
    from monai.bundle import ConfigParser

    bundle_root = Path(bundle_root)
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / config))
    parser["bundle_root"] = str(bundle_root)
    for k, v in (overrides or {}).items():
        parser[k] = v
    net = parser.get_parsed_content(net_id)
    weights = bundle_root / "models" / weights_name
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: bundle weights not found")
    net.load_state_dict(bare_state_dict(torch.load(weights, map_location="cpu", weights_only=True)))
    return net.eval()


def require_arg(value, name: str, what: str = "a value"):
    """Return ``value``; raise a clear error at run time when a bundle argument that has no usable default
    was not given (so that ``initialize()`` and MONAI's property checks work without it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"bundle argument '{name}' is required: pass --{name} <{what}>")
    return value
