"""``cxr_pneumonia``: the calibrated pneumonia classifier with the Grad-CAM of its decision."""

from __future__ import annotations

import time
from typing import Any

import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from cxr_monai.explain import overlay_rgb
from cxr_monai.inference import check_scope, classify, sr_decision, super_resolve

from .common import image_summary, load_request_image, result_file

__all__ = ["CXRPneumoniaInfer"]


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class CXRPneumoniaInfer(InferTask):
    """Calibrated probability of PNEUMONIA (:func:`cxr_monai.inference.classify`) as JSON, and the Grad-CAM
    overlay of the predicted class on the input (:func:`cxr_monai.explain.overlay_rgb`, RGB PNG) as the image.

    The probability is that of the image as stored, so it equals ``classify`` run on the same file anywhere
    (the deploy app reports it as ``probability_unenhanced`` when it enhanced the image first). With the
    request parameter ``enhance`` true, the image is first super-resolved under the deploy app's size policy
    (:func:`cxr_monai.inference.sr_decision`) and the classifier reads the enhanced image, as the deploy app
    does for its headline probability.

    Args:
        model: the classifier TorchScript module (:func:`cxr_monai.export.load_deploy_model`).
        info: its embedded metadata (threshold, temperature, version...).
        device: where the model runs.
        sr_model: optional ``(module, info)`` of the SR model, for ``enhance``.
        sr_max_side: longest side above which the image is not enhanced.
        model_file: the file the model came from (reported in ``/info/``).
        scope_gate: the intended-population gate (:class:`cxr_monai.scope.ScopeGate`). The JSON always has
            ``in_scope`` (1/0) and ``scope_reason``; an image outside the population gets no label (``label``
            null, no Grad-CAM: the image output is the input itself), its probability is still reported.
        lung_field: the lung-field network (:class:`cxr_monai.transforms.LungField`) the classifier and the gate
            read through (``None`` for classifiers that read the whole film).
    """

    def __init__(self, model: torch.nn.Module, info: dict[str, Any], device: torch.device,
                 sr_model: tuple[torch.nn.Module, dict[str, Any]] | None = None, sr_max_side: int = 1024,
                 model_file: str = "", scope_gate: Any | None = None, lung_field: Any | None = None) -> None:
        self.model, self.model_info, self.device = model, dict(info), torch.device(device)
        self.lung_field = lung_field
        self.scope_gate = scope_gate
        self.sr_model, self.sr_max_side, self.model_file = sr_model, int(sr_max_side), str(model_file)
        names = list(info.get("class_names", ["NORMAL", "PNEUMONIA"]))
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels={name: i for i, name in enumerate(names)},
            dimension=2,
            description=(f"{info.get('model_name', 'cxr_pneumonia')} {info.get('version', '')}: calibrated "
                         f"probability of PNEUMONIA (threshold {float(info['threshold']):.4f}); image output: "
                         "Grad-CAM overlay of the predicted class"),
            config={"enhance": False},
        )

    def is_valid(self) -> bool:
        return self.model is not None

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(model_file=self.model_file, version=self.model_info.get("version"),
                   threshold=float(self.model_info["threshold"]),
                   temperature=float(self.model_info.get("temperature", 1.0)))
        return out

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        image, meta = load_request_image(request)
        read, note = image, "classified as stored"
        if _truthy(request.get("enhance", False)):
            apply, note = sr_decision(image.shape, self.sr_max_side)
            if apply and self.sr_model is not None:
                read = super_resolve(self.sr_model[0], image, self.sr_model[1], self.device)
            elif apply:
                note = "enhance requested but no SR model is loaded; classified as stored"
        from PIL import Image

        from cxr_monai.scope import INTENDED_USE

        decision = (check_scope(self.scope_gate, image, meta, int(self.model_info.get("image_size", 160)),
                                lung_field=self.lung_field) if self.scope_gate is not None else None)
        in_scope = decision is None or decision.in_scope
        out = classify(self.model, read, self.model_info, self.device, with_cam=in_scope, lung_field=self.lung_field)
        names = list(self.model_info.get("class_names", ["NORMAL", "PNEUMONIA"]))
        if in_scope:
            overlay_file = result_file("cxr_pneumonia_gradcam_")
            Image.fromarray(overlay_rgb(image, out["cam"])).save(overlay_file, format="PNG")
        else:  # no finding, no Grad-CAM: the input itself, 8-bit grey
            overlay_file = result_file("cxr_pneumonia_out_of_scope_")
            Image.fromarray((image[0] * 255 + 0.5).clip(0, 255).astype("uint8")).save(overlay_file, format="PNG")
        result = {
            "in_scope": int(in_scope),
            "scope_reason": "" if in_scope else decision.reason,
            "intended_use": INTENDED_USE,
            "probability": out["probability"],
            "label": out["label"] if in_scope else None,
            "threshold": out["threshold"],
            "probabilities": dict(zip(names, out["probabilities"])),
            # MONAI Label's classification answer (BundleInferTask's writer), for clients that read that
            "prediction": [{"idx": i, "label": n, "score": p} for i, (n, p) in enumerate(zip(names, out["probabilities"]))]
            if in_scope else [],
            "label_names": {n: i for i, n in enumerate(names)},
            "model": self.model_info.get("model_name"),
            "version": self.model_info.get("version"),
            "temperature": float(self.model_info.get("temperature", 1.0)),
            "weights_sha256": self.model_info.get("weights_sha256"),
            "calibration": out["calibration"],  # default or the site's (id, date): cxr_monai.commissioning
            "enhanced": read is not image,
            "note": note,
            "gradcam": {"class": out["cam_class"], "image": "RGB PNG overlay on the input, same size",
                        "normalisation": "divided by the map's maximum",
                        "region": "the lung-field view (zero outside it)" if out.get("lung_field") else "the whole film"}
            if in_scope else None,
            "lung_field": out.get("lung_field"),
            "input": image_summary(image, meta),
            "latency": round(time.perf_counter() - start, 3),
        }
        return overlay_file, result
