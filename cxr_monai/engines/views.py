"""A classifier that reads two views of the film: ensembles trained on the whole film and on its lung-field view,
assembled into one :class:`~cxr_monai.networks.ClassifierEnsemble` whose members each read their own input
channel (``views``), and its compact weights file.

The members keep their calibrations (temperature and bias fitted on the calibration split when each ensemble was
built), so the assembled output is the mean of all members' calibrated probabilities — for source ensembles of
equal size, the mean of their outputs. Nothing is refitted on the validation split; the threshold follows the same
equal-prior rule on the calibration split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cxr_monai.engines.classification import ensemble_report
from cxr_monai.networks import classifier_ensemble
from cxr_monai.transforms.presets import VIEWS
from cxr_monai.utils import bare_state_dict, file_sha256, read_json

__all__ = ["source_view", "build_view_ensemble", "compact_state_dict"]

logger = logging.getLogger(__name__)


def source_view(calibration: Mapping[str, Any]) -> str:
    """The view an ensemble was trained on: its calibration's ``views`` when it has several (then it is already a
    view ensemble and cannot be nested), else ``lung_field`` when it names a lung-field network, else ``whole``."""
    if len(calibration.get("views") or []) > 1:
        raise ValueError("a view ensemble cannot be a source of another")
    return "lung_field" if calibration.get("lung_field_sha256") else "whole"


def compact_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every floating-point tensor of rank >= 2 (convolution and linear weights) stored in
    float16; biases, normalisation statistics, temperatures and integer buffers stay as they are. Loading into the
    float32 network casts back (``load_state_dict`` copies with a cast): the stored weights differ from the trained
    ones by float16 rounding (relative 5e-4), which keeps a six-member ensemble under the 25 MB a weights file
    may take."""
    return {k: (v.half() if v.is_floating_point() and v.ndim >= 2 else v) for k, v in state.items()}


def build_view_ensemble(models_dirs: Sequence[str | Path], calib_loader, val_loader, output_dir: str | Path,
                        device: str | torch.device = "cpu", weights_name: str = "model.pt",
                        calibration_name: str = "calibration.json", n_boot: int = 1000,
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble built ensembles (folders with ``model.pt`` and ``calibration.json`` as ``ensemble.json`` writes
    them), each trained on one view, into one ensemble reading the views in :data:`VIEWS` order.

    Args:
        models_dirs: the source ensembles' folders (one per view, e.g. the whole-film 0.4.0 and a lung-field one).
        calib_loader: the calibration split through the two-view preprocessing (for the prevalence).
        val_loader: the validation split through the two-view preprocessing (report only).
        output_dir: where ``weights_name`` (:func:`compact_state_dict`) and ``calibration_name`` are written.
        device: where the validation runs.
        n_boot: bootstrap resamples of the validation intervals.
        extra: more fields for the calibration file (split, sizes, lung-field hash).
    """
    sources = []
    for d in map(Path, models_dirs):
        cal = read_json(d / "calibration.json")
        sources.append({"dir": d, "cal": cal, "view": source_view(cal),
                        "state": bare_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))})
    views = [v for v in VIEWS if any(s["view"] == v for s in sources)]
    if len(views) != len(sources):
        raise ValueError(f"need one source ensemble per view, got views {[s['view'] for s in sources]}")
    sources.sort(key=lambda s: views.index(s["view"]))
    presets = {s["cal"].get("network_preset", "slim") for s in sources}
    blurs = {int(s["cal"].get("input_blur", 0)) for s in sources}
    sizes = {int(s["cal"].get("image_size", 160)) for s in sources}
    if len(presets) != 1 or len(blurs) != 1 or len(sizes) != 1:
        raise ValueError(f"sources differ in preset {presets}, input blur {blurs} or image size {sizes}")
    counts = [len(s["cal"]["members"]) for s in sources]
    member_views = [i for i, n in enumerate(counts) for _ in range(n)]
    net = classifier_ensemble(presets.pop(), sum(counts), blurs.pop(), views=member_views)
    state, offset, members = {}, 0, []
    for s, n in zip(sources, counts):
        for k, v in s["state"].items():
            if k.startswith("members."):
                i, rest = k[len("members."):].split(".", 1)
                state[f"members.{int(i) + offset}.{rest}"] = v
        members += [{**m, "view": s["view"], "source": str(s["dir"])} for m in s["cal"]["members"]]
        offset += n
    with torch.no_grad():
        state["temperatures"] = torch.tensor([float(m["temperature"]) for m in members])
        state["biases"] = torch.tensor([float(m.get("bias", 0.0)) for m in members])
        state["member_views"] = torch.tensor(member_views, dtype=torch.long)
        if "input_kernel" in net.state_dict():
            state["input_kernel"] = net.state_dict()["input_kernel"]
    net.load_state_dict(compact_state_dict(state))  # the network computes with the weights as stored
    net.to(device).eval()
    result = {
        **ensemble_report(net, calib_loader, val_loader, device, n_boot),
        "views": views, "member_views": member_views, "members": members,
        "sources": [{"dir": str(s["dir"]), "view": s["view"], "weights_sha256": file_sha256(s["dir"] / "model.pt"),
                     "members": n, "validation_auc": s["cal"]["validation"]["auc"]} for s, n in zip(sources, counts)],
        "network_preset": sources[0]["cal"].get("network_preset", "slim"), "ensemble_members": sum(counts),
        "image_size": int(sources[0]["cal"].get("image_size", 160)),
        "input_blur": int(sources[0]["cal"].get("input_blur", 0)),
        "lung_field_sha256": next((s["cal"]["lung_field_sha256"] for s in sources if s["view"] == "lung_field"), None),
        **dict(extra or {}),
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save(compact_state_dict({k: v.cpu() for k, v in net.state_dict().items()}), output_dir / weights_name)
    (output_dir / calibration_name).write_text(json.dumps(result, indent=2))
    logger.info("view ensemble of %d (%s): threshold=%.3f val AUC %.4f", sum(counts), views, result["threshold"],
                result["validation"]["auc"])
    return result
