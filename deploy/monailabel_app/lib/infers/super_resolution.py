"""``cxr_sr``: 4x super-resolution of a radiograph, under the deploy app's size policy."""

from __future__ import annotations

import time
from typing import Any

import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from cxr_monai.inference import sr_decision, super_resolve
from cxr_monai.io import save_png

from .common import image_summary, load_request_image, result_file

__all__ = ["CXRSuperResolutionInfer"]


class CXRSuperResolutionInfer(InferTask):
    """The 4x enhanced image (:func:`cxr_monai.inference.super_resolve`, tiled) as a 16-bit grayscale PNG.

    Inputs whose longest side is above ``sr_max_side`` px are already high resolution: they come back
    unchanged (the decoded input as the same 16-bit PNG) with a note saying so
    (:func:`cxr_monai.inference.sr_decision`, the policy of the deploy app).

    Args:
        model: the SR TorchScript module (:func:`cxr_monai.export.load_deploy_model`).
        info: its embedded metadata (scale, tile size and overlap, version...).
        device: where the model runs.
        sr_max_side: longest side above which the image is returned unchanged.
        model_file: the file the model came from (reported in ``/info/``).
    """

    def __init__(self, model: torch.nn.Module, info: dict[str, Any], device: torch.device, sr_max_side: int = 1024,
                 model_file: str = "") -> None:
        self.model, self.model_info, self.device = model, dict(info), torch.device(device)
        self.sr_max_side, self.model_file = int(sr_max_side), str(model_file)
        scale = int(info.get("scale", 4))
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description=(f"{info.get('model_name', 'cxr_sr')} {info.get('version', '')}: {scale}x enhanced image "
                         f"(16-bit PNG); inputs with a side above {self.sr_max_side} px are returned unchanged"),
        )

    def is_valid(self) -> bool:
        return self.model is not None

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(model_file=self.model_file, version=self.model_info.get("version"),
                   scale=int(self.model_info.get("scale", 4)), sr_max_side=self.sr_max_side)
        return out

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        image, meta = load_request_image(request)
        apply, note = sr_decision(image.shape, self.sr_max_side)
        output = super_resolve(self.model, image, self.model_info, self.device) if apply else image
        out_file = save_png(result_file("cxr_sr_"), output, bits=16)
        result = {
            "applied": bool(apply),
            "note": note if apply else (f"returned unchanged: the image is {image.shape[-2]}x{image.shape[-1]} px, "
                                        f"longest side above {self.sr_max_side} px (already high resolution)"),
            "scale": int(self.model_info.get("scale", 4)) if apply else 1,
            "output_shape": [int(output.shape[-2]), int(output.shape[-1])],
            "output": "16-bit grayscale PNG, values x 65535 (display orientation)",
            "model": self.model_info.get("model_name"),
            "version": self.model_info.get("version"),
            "weights_sha256": self.model_info.get("weights_sha256"),
            "input": image_summary(image, meta),
            "latency": round(time.perf_counter() - start, 3),
        }
        return str(out_file), result
