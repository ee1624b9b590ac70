"""``cxr_pneumonia``: the calibrated classifier of ``MODELS/cxr_pneumonia/model.ts``."""

from __future__ import annotations

from cxr_monai.commissioning import check_deployed_gate
from cxr_monai.export import CLASSIFIER_NAME, LUNG_NAME, SCOPE_NAME, SR_NAME, find_model_file, load_deploy_model
from cxr_monai.scope import load_scope_gate
from cxr_monai.transforms import load_lung_field

from lib.configs.base import CXRTaskConfig
from lib.infers import CXRPneumoniaInfer


class CXRPneumoniaConfig(CXRTaskConfig):
    model_name = CLASSIFIER_NAME
    model_kind = "classifier"

    def infer(self) -> CXRPneumoniaInfer:
        # the SR model too, for the `enhance` request parameter (classify the enhanced image, as the deploy app)
        sr = load_deploy_model(find_model_file(self.model_dir, SR_NAME), self.device, kind="super_resolution")
        # the intended-population gate (the same file and check as the deploy app)
        gate = load_scope_gate(find_model_file(self.model_dir, SCOPE_NAME), self.device)
        check_deployed_gate(self.model_info, gate.info)  # a site calibration runs only with its own gate
        # the lung-field network whose view the classifier and the gate read (classifiers from 0.5.0)
        lung = (load_lung_field(find_model_file(self.model_dir, LUNG_NAME), self.device)
                if self.model_info.get("lung_field_sha256") or gate.info.get("lung_field_sha256") else None)
        return CXRPneumoniaInfer(self.model, self.model_info, self.device, sr_model=sr, sr_max_side=self.sr_max_side,
                                 model_file=self.path, scope_gate=gate, lung_field=lung)
