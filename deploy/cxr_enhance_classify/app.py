"""MONAI Deploy app: a DICOM study in -> 4x enhancement -> pneumonia classification -> Grad-CAM -> DICOM out.

Graph (``compose``)::

    CheckedDICOMDataLoader --dicom_study_list--> DICOMSeriesSelector (CR/DX) --> CXRImageLoader --> ScopeGate
        --> SuperResolution --> PneumoniaClassifier (finding + Grad-CAM) --> ResultsWriter
    (the loader's study list and rejected files also go to the writer, which reports what was left out)

What flows from the image loader to the writer is a list of :class:`cxr_monai.records.ImageRecord`; the writer
writes the DICOM output kinds of :mod:`cxr_monai.dicom`.

Models come from the SDK's named-model layout (``MODELS/cxr_sr/model.ts``, ``MODELS/cxr_pneumonia/model.ts``,
written by ``make deploy-models``).
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

from monai.deploy.core import Application
from monai.deploy.operators import DICOMSeriesSelectorOperator

from cxr_monai.io.rules import modality_names, modality_pattern

try:  # run as a package (python -m / tests) or as a folder (python deploy/cxr_enhance_classify)
    from .operators import (CheckedDICOMDataLoaderOperator, CXRImageLoaderOperator, PneumoniaClassifierOperator,
                            ResultsWriterOperator, ScopeGateOperator, SuperResolutionOperator)
except ImportError:  # pragma: no cover
    from operators import (CheckedDICOMDataLoaderOperator, CXRImageLoaderOperator,  # type: ignore
                           PneumoniaClassifierOperator, ResultsWriterOperator, ScopeGateOperator,
                           SuperResolutionOperator)

__all__ = ["CXREnhanceClassifyApp", "SELECTION_RULES", "AppSetupError"]

logger = logging.getLogger("cxr_enhance_classify")

SELECTION_RULES = json.dumps({"selections": [{"name": f"{modality_names()} radiographs",
                                               "conditions": {"Modality": modality_pattern()}}]})
"""The SDK series selector's rule: the project's modality rule (:data:`cxr_monai.io.rules.PROJECTION_MODALITIES`)."""


class AppSetupError(RuntimeError):
    """The app cannot run at all (missing models, bad input folder)."""


class CXREnhanceClassifyApp(Application):
    """The enhance-and-classify application.

    Args:
        sr_max_side: super-resolve only images whose longest side is at most this many pixels.
        device: ``cuda``/``cpu``; default CUDA when available.
        argv: SDK arguments (``-i``, ``-o``, ``-m``, ``-l``); default ``sys.argv``.
    """

    name = "cxr_enhance_classify"
    description = "CXR 4x enhancement + pneumonia classification with Grad-CAM, DICOM in / DICOM out"
    version = "0.1.0"

    def __init__(self, *args, sr_max_side: int = 1024, device: str | None = None, **kwargs) -> None:
        self.sr_max_side = int(sr_max_side)
        self.device_name = device
        self.writer: ResultsWriterOperator | None = None
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        import torch

        from cxr_monai import __version__ as cxr_version
        from cxr_monai.commissioning import CommissioningError, check_deployed_gate
        from cxr_monai.export import (
            CLASSIFIER_NAME, LUNG_NAME, SCOPE_NAME, SR_NAME, DeployModelError, find_model_file, load_deploy_model,
        )
        from cxr_monai.inference import select_device
        from cxr_monai.utils import configure_threads

        # holoscan keeps the program name in argv when it read sys.argv, drops it when given a list
        argv = list(self.argv)
        if not argv or argv[0].startswith("-"):
            argv = [self.name, *argv]
        ctx = Application.init_app_context(argv)
        input_path, output_path, model_path = Path(ctx.input_path), Path(ctx.output_path), Path(ctx.model_path)
        if not input_path.is_dir():
            raise AppSetupError(f"input folder {input_path} does not exist (set -i or HOLOSCAN_INPUT_PATH)")
        try:
            sr_file = find_model_file(model_path, SR_NAME)
            cls_file = find_model_file(model_path, CLASSIFIER_NAME)
            scope_file = find_model_file(model_path, SCOPE_NAME)
            files = {SR_NAME: sr_file, CLASSIFIER_NAME: cls_file, SCOPE_NAME: scope_file}
            lung_file = None
            if (model_path / LUNG_NAME).is_dir():  # classifiers from 0.5.0 read the lung-field view
                lung_file = files[LUNG_NAME] = find_model_file(model_path, LUNG_NAME)
            infos = {n: load_deploy_model(f)[1] for n, f in files.items()}
            for name in (CLASSIFIER_NAME, SCOPE_NAME):
                if infos[name].get("lung_field_sha256") and lung_file is None:
                    raise DeployModelError(f"{model_path}: model {name!r} reads the lung-field view but model "
                                           f"{LUNG_NAME!r} is missing (run `make deploy-models`)")
            # a site calibration runs only with the gate it was commissioned with
            check_deployed_gate(infos[CLASSIFIER_NAME], infos[SCOPE_NAME])
        except (DeployModelError, CommissioningError) as err:
            raise AppSetupError(str(err)) from err
        device = str(select_device(self.device_name))
        threads = configure_threads()  # the container's CPU quota, not the host's cores (or CXR_NUM_THREADS)
        logger.info("device: %s (torch %s, %d threads)", device, torch.__version__, threads)
        run_info = {
            "app": self.name, "app_version": self.version, "cxr_monai_version": cxr_version,
            "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "host": platform.node(), "sr_max_side": self.sr_max_side,
            "models": {n: {k: i.get(k) for k in ("model_name", "version", "weights_sha256", "threshold",
                                                 "temperature", "tile_size", "tile_overlap", "thresholds",
                                                 "source_sha256")
                           if i.get(k) is not None} for n, i in infos.items()},
            "input": str(input_path), "output": str(output_path),
        }

        loader = CheckedDICOMDataLoaderOperator(self, input_folder=input_path, name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=SELECTION_RULES, all_matched=True, name="series_selector")
        images = CXRImageLoaderOperator(self, name="cxr_image_loader")
        scope = ScopeGateOperator(self, model_file=scope_file, device=device, classifier_info=infos[CLASSIFIER_NAME],
                                  lung_file=lung_file, name="scope_gate")
        sr = SuperResolutionOperator(self, model_file=sr_file, device=device, sr_max_side=self.sr_max_side,
                                     name="super_resolution")
        cls = PneumoniaClassifierOperator(self, model_file=cls_file, device=device, lung_file=lung_file,
                                          name="pneumonia_classifier")
        self.writer = ResultsWriterOperator(self, output_folder=output_path, run_info=run_info, name="results_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, images, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(images, scope, {("records", "records")})
        self.add_flow(scope, sr, {("records", "records")})
        self.add_flow(sr, cls, {("records", "records")})
        self.add_flow(cls, self.writer, {("records", "records")})
        self.add_flow(loader, self.writer, {("dicom_study_list", "dicom_study_list"),
                                            ("rejected_files", "rejected_files")})

    @property
    def summary(self) -> dict | None:
        """What ``results.json`` holds, after :meth:`run`."""
        return None if self.writer is None else self.writer.summary

