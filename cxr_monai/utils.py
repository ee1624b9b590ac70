"""Small helpers shared by bundles, the CLI and the deploy apps."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from torch import nn
import tempfile
from monai.bundle import ConfigParser
import hashlib

__all__ = ["find_bundles", "resolve_bundle", "bundle_checks", "latest_checkpoint", "load_bundle_network", "read_json", "bare_state_dict", "require_arg", "cpu_budget",
           "configure_threads", "META_FILE", "DeployModelError", "save_torchscript_with_meta",
           "load_torchscript_with_meta", "item_name"]

META_FILE = "cxr_monai.json"
"""Name of the metadata embedded in every deployable TorchScript file (``torch.jit.save(..., _extra_files=...)``)."""


class DeployModelError(RuntimeError):
    """A deployable model file or folder that is missing or lacks its embedded metadata."""


def save_torchscript_with_meta(module: torch.jit.ScriptModule, meta: dict, path: str | os.PathLike) -> Path:
    """Write ``module`` with ``meta`` embedded as :data:`META_FILE`, atomically (temporary name, then rename;
    readable by every user, so that a container running as another user can load it)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.jit.save(module, tmp, _extra_files={META_FILE: json.dumps(dict(meta), indent=1)})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_torchscript_with_meta(path: str | os.PathLike, device: str | torch.device = "cpu",
                               kind: str | None = None) -> tuple[torch.jit.ScriptModule, dict]:
    """Load a file written by :func:`save_torchscript_with_meta` with its embedded metadata.

    Args:
        path: the ``.ts`` file.
        device: where to map the module.
        kind: expected ``"classifier"``, ``"super_resolution"`` or ``"scope_gate"`` (checked when given).

    Raises:
        DeployModelError: the file is missing, not TorchScript, has no :data:`META_FILE`, or is of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise DeployModelError(f"{path}: model file not found")
    extra = {META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/ValueError on bad archives
        raise DeployModelError(f"{path}: not a TorchScript archive ({type(err).__name__}: {err})") from err
    if not extra[META_FILE]:
        raise DeployModelError(f"{path}: no embedded {META_FILE}; export it with `make deploy-models`")
    info = json.loads(extra[META_FILE])
    if kind is not None and info.get("kind") != kind:
        raise DeployModelError(f"{path}: is a {info.get('kind')!r} model, expected {kind!r}")
    return module.eval(), info


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


BUNDLE_METADATA = Path("configs") / "metadata.json"
"""What makes a folder a bundle: MONAI's metadata file, relative to the bundle root."""


def find_bundles(bundles_dir: str | os.PathLike) -> dict[str, Path]:
    """The bundles in ``bundles_dir``: every sub-folder holding ``configs/metadata.json``, by folder name (sorted).
    Tests, the deploy-model export and the Makefile discover bundles this way; none is listed by hand.

    Raises:
        FileNotFoundError: ``bundles_dir`` is not a folder or holds no bundle.
    """
    root = Path(bundles_dir)
    found = {p.name: p for p in sorted(root.iterdir()) if (p / BUNDLE_METADATA).is_file()} if root.is_dir() else {}
    if not found:
        raise FileNotFoundError(f"{root}: no bundle (a folder with {BUNDLE_METADATA}) found")
    return found


def resolve_bundle(reference: str | os.PathLike, bundle_root: str | os.PathLike) -> Path:
    """The bundle a config refers to (``reference_bundle``): a bundle folder given by path, or a bundle name found
    beside ``bundle_root`` by :func:`find_bundles` (the collection the referring bundle belongs to).

    Raises:
        FileNotFoundError: neither a bundle folder nor the name of a bundle beside ``bundle_root``.
    """
    path = Path(reference)
    if (path / BUNDLE_METADATA).is_file():
        return path
    try:
        found = find_bundles(Path(bundle_root).resolve().parent)
    except FileNotFoundError:
        found = {}
    if str(reference) in found:
        return found[str(reference)]
    raise FileNotFoundError(f"reference bundle {str(reference)!r}: not a bundle folder, and no bundle of that name "
                            f"beside {bundle_root} (found: {', '.join(found) or 'none'}); pass --reference_bundle PATH")


def bundle_checks(bundle_root: str | os.PathLike) -> dict[str, list[list[str]]]:
    """The config sets a bundle declares for MONAI's property checks, by workflow type: the ``checks`` entry of
    its ``metadata.json`` (``{"infer": [["inference.json"]], "train": [["train.json"], ...]}``, each inner list
    merged in order); ``{"infer": [["inference.json"]]}`` when the entry is absent."""
    meta = read_json(Path(bundle_root) / BUNDLE_METADATA)
    checks = meta.get("checks") or {"infer": [["inference.json"]]}
    return {str(k): [list(c) for c in v] for k, v in checks.items()}


def require_arg(value, name: str, what: str = "a value"):
    """Return ``value``; raise a clear error at run time when a bundle argument that has no usable default
    was not given (so that ``initialize()`` and MONAI's property checks work without it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"bundle argument '{name}' is required: pass --{name} <{what}>")
    return value


def _cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), or
    ``None`` when unlimited or unreadable."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_budget(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """The CPU threads this process should use: ``CXR_NUM_THREADS`` when set, else the smaller of the CPUs in its
    affinity mask and its cgroup CPU quota (rounded up; at least 1).

    PyTorch sizes its thread pool from the cores it can see, not from a container's CPU quota: a MAP limited to
    2 CPUs on a 64-core node would run 64 OpenMP threads that spin against each other.
    """
    env = os.environ.get("CXR_NUM_THREADS", "").strip()
    if env:
        n = int(env)
        if n < 1:
            raise ValueError(f"CXR_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(cgroup_root)
    return max(1, min(visible, math.ceil(limit)) if limit is not None else visible)


def configure_threads(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """``torch.set_num_threads(cpu_budget())``; returns the number set."""
    n = cpu_budget(cgroup_root)
    torch.set_num_threads(n)
    return n


def item_name(item: dict, key: str = "image", index: int = 0) -> str:
    """Source name of a decollated item: ``id`` if present, else the image's ``filename_or_obj`` meta."""
    if item.get("id") is not None:
        return str(item["id"])
    img = item.get(key)
    meta = getattr(img, "meta", None) or item.get(f"{key}_meta_dict") or {}
    name = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    return str(name) if name else f"item_{index}"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file (read in 1 MiB blocks)."""

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
