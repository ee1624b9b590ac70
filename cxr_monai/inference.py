"""Running the deployable models on images of the cxr_monai image contract.

Used by the MONAI Deploy operators (``deploy/cxr_enhance_classify``), the MONAI Label infer tasks and
the SR bundle's inference config, so that tiling, preprocessing, calibration and Grad-CAM have one
definition. Inputs are ``(1, H, W)`` float32 arrays in ``[0, 1]`` (what :func:`cxr_monai.io.load_cxr`
returns); models are the TorchScript files of :mod:`cxr_monai.export`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose

from cxr_monai.explain import gradcam_split
from cxr_monai.transforms import classifier_preprocessing
from cxr_monai.transforms.exposed_field import box_pixels
from cxr_monai.utils import DeployModelError

__all__ = [
    "DEFAULT_SR_MAX_SIDE",
    "DEFAULT_CALIBRATION",
    "select_device",
    "cpu_has_bf16_units",
    "bf16_autocast_enabled",
    "channels_last_default",
    "inference_layout",
    "sr_inferer",
    "sr_decision",
    "super_resolve",
    "classifier_input",
    "check_lung_field",
    "view_to_film",
    "classify",
    "check_scope",
]

DEFAULT_SR_MAX_SIDE = 1024
"""Images whose longest side is above this many pixels are already high resolution: no SR."""

DEFAULT_CALIBRATION: dict[str, Any] = {"source": "default", "id": "default", "date": None}
"""The calibration record of a classifier file exported before site calibrations existed."""


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def channels_last_default(device: str | torch.device) -> bool:
    """Whether the networks run in ``channels_last`` memory format on ``device``: yes on the CPU, where oneDNN
    convolutions skip their NCHW reorders (measured on this project's 2-core Xeon: 1.1-1.3x for the SR generators,
    full and lite, 1.5-1.8x for the classifier ensemble at batch 32; ``python -m cxr_monai.studies.layout_study`` and
    ``python -m benchmarks.run``), and on CUDA, where it is the layout tensor-core convolutions prefer (not
    measured here)."""
    return torch.device(device).type in ("cpu", "cuda")


def inference_layout(model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model`` with its 4-D parameters in ``channels_last`` when :func:`channels_last_default` says so
    (converted in place, once: a model already in that layout is returned as it is). Outputs are unchanged to
    float rounding (max abs difference ~1e-6); inputs may stay NCHW (a channels_last weight makes the convolution
    run in channels_last)."""
    if not channels_last_default(device):
        return model
    weights = [p for p in model.parameters() if p.ndim == 4]
    if weights and not all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        model.to(memory_format=torch.channels_last)
    return model


def sr_inferer(tile_size: int = 128, tile_overlap: float = 0.25, sw_batch_size: int = 1) -> SlidingWindowInferer:
    """Tiled (sliding-window) inference for the 4x generator: Gaussian-weighted blending of
    ``tile_size`` input tiles overlapping by ``tile_overlap``, replicate padding at the border.
    Memory is bounded by the output buffer (the 4x image and its weight map) plus one batch of tiles.
    The SR bundle's ``inference.json`` and the deploy app both use it."""
    if tile_size < 8:
        raise ValueError(f"tile_size must be >= 8, got {tile_size}")
    if not 0 <= tile_overlap < 1:
        raise ValueError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
    return SlidingWindowInferer(roi_size=(tile_size, tile_size), sw_batch_size=sw_batch_size, overlap=tile_overlap,
                                mode="gaussian", padding_mode="replicate")


def sr_decision(shape: tuple[int, ...], sr_max_side: int = DEFAULT_SR_MAX_SIDE) -> tuple[bool, str]:
    """Whether to super-resolve an image of ``shape`` (``(..., H, W)``), and why (a sentence)."""
    h, w = int(shape[-2]), int(shape[-1])
    if max(h, w) > sr_max_side:
        return False, (f"SR skipped: the image is {h}x{w} px, longest side above {sr_max_side} px "
                       "(already high resolution); classified as it is")
    return True, f"SR applied: {h}x{w} px -> 4x (longest side at most {sr_max_side} px)"


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bf16 matrix units that torch's oneDNN uses (Intel AMX: the ``amx_bf16`` flag of
    ``/proc/cpuinfo``), read at run time. AVX512-BF16 alone (e.g. AMD EPYC Zen 4) does not count: the 3.4x SR speed-up
    was measured with AMX; on such a CPU the models stay in float32."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def bf16_autocast_enabled(device: str | torch.device) -> bool:
    """Whether inference on ``device`` runs under bfloat16 autocast: on CUDA, and on a CPU with bf16 matrix units
    (:func:`cpu_has_bf16_units`); fp32 elsewhere. The switch ``CXR_BF16``: ``0`` turns it off everywhere, ``1``
    forces it on any CPU or CUDA device (to measure its cost), unset or ``auto`` detects."""
    setting = os.environ.get("CXR_BF16", "auto").strip().lower()
    kind = torch.device(device).type
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return kind in ("cpu", "cuda")
    return kind == "cuda" or (kind == "cpu" and cpu_has_bf16_units())


def _autocast(device: torch.device, bf16: bool):
    if bf16 and bf16_autocast_enabled(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def super_resolve(model: torch.nn.Module, image: np.ndarray | torch.Tensor, info: Mapping[str, Any],
                  device: str | torch.device = "cpu", bf16: bool = True) -> np.ndarray:
    """4x super-resolve one image with tiled inference.

    Args:
        model: the SR generator (TorchScript from :func:`cxr_monai.export.load_deploy_model`); put in the
            layout of :func:`inference_layout` (in place).
        image: ``(1, H, W)`` in ``[0, 1]``.
        info: the model's embedded metadata (``tile_size``, ``tile_overlap``, ``scale``).
        device: device of ``model``.
        bf16: allow bfloat16 autocast where :func:`bf16_autocast_enabled` says (CUDA, a CPU with AMX; switch
            ``CXR_BF16``).

    Returns:
        ``(1, sH, sW)`` float32 in ``[0, 1]``.
    """
    device = torch.device(device)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if not isinstance(image, torch.Tensor) else image)
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"image must be (1, H, W), got {tuple(x.shape)}")
    inferer = sr_inferer(int(info.get("tile_size", 128)), float(info.get("tile_overlap", 0.25)))
    model = inference_layout(model, device)
    with torch.inference_mode(), _autocast(device, bf16):
        y = inferer(x[None].to(device, torch.float32), model)
    y = y.float().clamp(0.0, 1.0)[0].cpu().numpy()
    scale = int(info.get("scale", 4))
    if y.shape[-2:] != (scale * x.shape[-2], scale * x.shape[-1]):
        raise RuntimeError(f"SR output shape {y.shape} is not {scale}x the input {tuple(x.shape)}")
    return y


def classifier_input(image: np.ndarray | torch.Tensor, image_size: int = 224, lung_field: Any = None,
                     views: Sequence[str] | None = None, exposed_field: bool = False) -> torch.Tensor:
    """``(1, V, S, S)`` network input from a ``(1, H, W)`` image, through the one classifier preprocessing
    definition (:func:`cxr_monai.transforms.classifier_preprocessing`); with ``lung_field`` (a
    :class:`~cxr_monai.transforms.LungField` or its file) the lung-field view, whose box is in the returned
    MetaTensor's ``meta["lung_field"]``; ``views`` as the preprocessing takes them (``None``: one view); with
    ``exposed_field`` the film is first cropped to its exposed field (``meta["exposed_field"]``)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    out = Compose(classifier_preprocessing(["image"], int(image_size), lung_field=lung_field,
                                           views=views, exposed_field=exposed_field))({"image": arr})["image"]
    meta = dict(getattr(out, "meta", {}) or {})
    x = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
    return MetaTensor(x[None].float(), meta={k: meta[k] for k in ("lung_field", "exposed_field") if k in meta})


def check_lung_field(info: Mapping[str, Any], lung_field: Any) -> Any:
    """The lung-field network a model reads through, checked: ``lung_field`` when the model's embedded metadata
    names one (``lung_field_sha256``), ``None`` for a model that reads the whole film (whatever was given).

    Args:
        info: the classifier's or gate's embedded metadata.
        lung_field: the :class:`~cxr_monai.transforms.LungField` at hand (``None``: none).

    Raises:
        DeployModelError: the model needs a lung-field network and none was given, or its hash differs.
    """
    want = info.get("lung_field_sha256")
    if not want:
        return None
    if lung_field is None:
        raise DeployModelError(f"{info.get('name', 'model')} reads the lung-field view: give it the lung-field "
                               "network it was trained with (deploy model cxr_lung, `make deploy-models`)")
    have = lung_field.info.get("source_sha256") or lung_field.info.get("weights_sha256")
    if have and have != want:
        raise DeployModelError(f"{info.get('name', 'model')} was trained through lung-field network {want[:12]}, "
                               f"given {have[:12]}: export the models together (`make deploy-models`)")
    return lung_field


def view_to_film(cam: np.ndarray, box: Mapping[str, Any] | None, shape: tuple[int, int]) -> np.ndarray:
    """A map on a view (``(S, S)``) placed back on the film (``shape``): resized into the view's box (the lung-field
    box, or the exposed field for the whole view of a framed film; fractions of the film), zero outside it. Without
    a box the map is resized to the whole film."""
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    h, w = int(shape[0]), int(shape[1])
    if not box:
        return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    y0, x0, y1, x1 = box_pixels(box, h, w, eps=1e-6)
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = torch.nn.functional.interpolate(t, size=(y1 - y0, x1 - x0), mode="bilinear",
                                                        align_corners=False)[0, 0].numpy()
    return out


def exposed_box(x: Any) -> dict[str, Any] | None:
    """The exposed-field box of a preprocessed input's metadata when the film was cropped to it, else ``None``."""
    field = (getattr(x, "meta", {}) or {}).get("exposed_field") or {}
    return dict(field) if field.get("found") else None


def classify(model: torch.nn.Module, image: np.ndarray | torch.Tensor, info: Mapping[str, Any],
             device: str | torch.device = "cpu", with_cam: bool = False, lung_field: Any = None,
             bf16: bool = True) -> dict[str, Any]:
    """Calibrated pneumonia probability of one image (and optionally its Grad-CAM).

    Args:
        model: :class:`cxr_monai.export.CalibratedClassifier` (TorchScript); put in the layout of
            :func:`inference_layout` (in place).
        image: ``(1, H, W)`` in ``[0, 1]``, any size (resized by the preprocessing).
        info: the model's embedded metadata (``threshold``, ``image_size``, ``class_names``).
        device: device of ``model``.
        with_cam: also compute Grad-CAM of the predicted class (``cam``: on the film, ``(H, W)`` in ``[0, 1]``;
            with a lung field it is shown inside the lung mask widened by 5 % of the film and zero elsewhere, and
            divided by its maximum there; ``cam_view``: ``(S, S)`` on the network input, as computed; ``cam_class``:
            its name), see :func:`cxr_monai.explain.gradcam_split` (always in float32).
        lung_field: the lung-field network at hand; used when the model names one (:func:`check_lung_field`).
        bf16: allow bfloat16 autocast for the probabilities where :func:`bf16_autocast_enabled` says (CUDA, a
            CPU with AMX; switch ``CXR_BF16``).

    Returns:
        ``{"probability": p(PNEUMONIA), "label", "threshold", "probabilities": [p0, p1], "calibration",
        "lung_field", "exposed_field"}`` (+ cam); ``calibration`` is the calibration in force (the model's embedded record:
        ``source`` ``"default"`` or ``"site"``, ``id``, ``date``, ...; :data:`DEFAULT_CALIBRATION` for a model
        exported without one); ``lung_field`` the view's box on the film (``None`` without a lung field);
        ``exposed_field`` the exposed field the film was cropped to (``None``: no shutter frame, or a model that
        does not look for one).
    """
    lung_field = check_lung_field(info, lung_field)
    device = torch.device(device)
    views = list(info.get("views") or []) or None
    x = classifier_input(image, int(info.get("image_size", 224)), lung_field, views, bool(info.get("exposed_field")))
    box = x.meta.get("lung_field") if hasattr(x, "meta") else None
    field = exposed_box(x)
    x = x.as_tensor().to(device) if hasattr(x, "as_tensor") else x.to(device)
    model = inference_layout(model, device)
    with torch.inference_mode(), _autocast(device, bf16):
        probs = model(x)[0].float().cpu().numpy()
    names = list(info.get("class_names", ["NORMAL", "PNEUMONIA"]))
    threshold = float(info["threshold"])
    p = float(probs[1])
    label_idx = int(p >= threshold)
    out: dict[str, Any] = {"probability": p, "label": names[label_idx], "label_index": label_idx,
                           "threshold": threshold, "probabilities": [float(v) for v in probs],
                           "calibration": dict(info.get("calibration") or DEFAULT_CALIBRATION),
                           "lung_field": dict(box) if box else None, "exposed_field": field}
    if with_cam:
        shape = tuple(np.asarray(image.shape if not isinstance(image, torch.Tensor) else tuple(image.shape))[-2:])
        if views and len(views) > 1:  # one map per view, each placed back on the film through its own geometry
            cams = gradcam_split(model.cam_features, model.cam_head, x, label_idx, groups=info["view_channels"])[0]
            film = sum(view_to_film(c, box if v == "lung_field" else field, shape) for v, c in zip(views, cams))
            strongest = int(np.argmax([float(c.max()) for c in cams]))
            cam, channel = cams[strongest], strongest
            peak = float(film.max())
            out["cam"] = film / peak if peak > 0 else film
        else:
            cam, channel = gradcam_split(model.cam_features, model.cam_head, x, label_idx)[0], 0
            out["cam"] = view_to_film(cam, box or field, shape)
        out["cam_view"] = cam
        if lung_field is not None:  # shown inside the lung field (the mask widened by 5 % of the film)
            out["cam"] = out["cam"] * lung_field.mask_on_film(image, field=field)
            peak = float(out["cam"].max())
            out["cam"] = out["cam"] / peak if peak > 0 else out["cam"]
        out["cam_class"] = names[label_idx]
        out["network_input"] = x[0, channel].cpu().numpy()
    return out


def check_scope(gate: Any, image: np.ndarray | torch.Tensor, meta: Mapping[str, Any] | None = None,
                image_size: int = 160, lung_field: Any = None):
    """The intended-population decision (:class:`cxr_monai.scope.ScopeDecision`) of one image: the header
    rules on ``meta``, the lung-field rule (with ``lung_field``) and the image check on the classifier's network
    input of ``image``.

    Args:
        gate: :class:`cxr_monai.scope.ScopeGate` (:func:`cxr_monai.scope.load_scope_gate`).
        image: ``(1, H, W)`` in ``[0, 1]``: the image as read, before any super-resolution.
        meta: its metadata from :func:`cxr_monai.io.load_cxr` (``None``: no headers, image check only).
        image_size: the classifier's input side (the model's embedded ``image_size``).
        lung_field: the lung-field network at hand; used when the gate names one (:func:`check_lung_field`).
    """
    lung_field = check_lung_field(gate.info, lung_field)
    x = classifier_input(image, int(image_size), lung_field, exposed_field=bool(gate.info.get("exposed_field")))
    box = x.meta.get("lung_field") if hasattr(x, "meta") else None
    merged = {**dict(meta or {}), "lung_field": box} if box else meta
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    return gate.check(x, [merged])[0]
