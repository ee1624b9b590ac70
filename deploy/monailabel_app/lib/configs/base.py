"""What the two task configs share: the model folder, the device, loading a deployable model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monailabel.interfaces.config import TaskConfig

from cxr_monai.export import find_model_file, load_deploy_model
from cxr_monai.inference import DEFAULT_SR_MAX_SIDE, select_device
from cxr_monai.utils import configure_threads

logger = logging.getLogger(__name__)

MODELS_ENV = "CXR_LABEL_MODELS"
"""Environment variable naming the model folder when the ``models_dir`` conf option is not given."""


def default_models_dir(app_dir: str | os.PathLike) -> Path:
    """``<repository>/.deploy_models`` (the app lives in ``<repository>/deploy/monailabel_app``)."""
    return Path(app_dir).resolve().parents[1] / ".deploy_models"


def models_dir(conf: dict[str, Any], app_dir: str | os.PathLike) -> Path:
    """The model folder: ``--conf models_dir DIR``, else ``$CXR_LABEL_MODELS``, else the repository's
    ``.deploy_models`` (what `make deploy-models` writes)."""
    value = (conf or {}).get("models_dir") or os.environ.get(MODELS_ENV) or default_models_dir(app_dir)
    return Path(value).expanduser().resolve()


class CXRTaskConfig(TaskConfig):
    """A task config over one model of the deploy layout (``MODELS/<name>/model.ts``); no trainer."""

    model_name: str = ""
    model_kind: str = ""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.device = select_device(conf.get("device") or None)
        threads = configure_threads()  # the container's CPU quota, not the host's cores (or CXR_NUM_THREADS)
        self.sr_max_side = int(conf.get("sr_max_side", DEFAULT_SR_MAX_SIDE))
        self.path = str(find_model_file(model_dir, self.model_name))
        self.model, self.model_info = load_deploy_model(self.path, self.device, kind=self.model_kind)
        logger.info(f"{name}: {self.path} ({self.model_info.get('model_name')} {self.model_info.get('version')}) "
                    f"on {self.device}, {threads} threads")

    def trainer(self):
        return None
