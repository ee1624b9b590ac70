"""``cxr_sr``: the 4x generator of ``MODELS/cxr_sr/model.ts``."""

from __future__ import annotations

from cxr_monai.export import SR_NAME

from lib.configs.base import CXRTaskConfig
from lib.infers import CXRSuperResolutionInfer


class CXRSRConfig(CXRTaskConfig):
    model_name = SR_NAME
    model_kind = "super_resolution"

    def infer(self) -> CXRSuperResolutionInfer:
        return CXRSuperResolutionInfer(self.model, self.model_info, self.device, sr_max_side=self.sr_max_side,
                                       model_file=self.path)
