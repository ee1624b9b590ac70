"""MONAI Label app serving the cxr_monai models to viewers (OHIF, 3D Slicer, plain HTTP).

Two infer tasks over the files `make deploy-models` writes (``MODELS/cxr_pneumonia/model.ts``,
``MODELS/cxr_sr/model.ts``), both reading images through :func:`cxr_monai.io.load_cxr` and running
:mod:`cxr_monai.inference` (one preprocessing definition, shared with the deploy app):

* ``cxr_pneumonia``: JSON with the calibrated probability of PNEUMONIA, the label, the threshold and the model
  version; image output: the Grad-CAM overlay (RGB PNG).
* ``cxr_sr``: the 4x enhanced image (16-bit PNG); inputs with a side above 1,024 px come back unchanged with a
  note.

Datastores: a local folder of PNG/JPEG/DICOM files (``--studies DIR``), or a PACS over DICOMweb
(``--studies http://HOST:PORT/dicom-web``; an image id is then a SeriesInstanceUID of a one-image series).
No trainers, no SAM, no model zoo, no downloads. Conf options (``--conf KEY VALUE``): ``models_dir``
(default ``$CXR_LABEL_MODELS``, else ``<repository>/.deploy_models``), ``device`` (default CUDA when available,
else CPU), ``sr_max_side`` (1024).

Bad input gets an HTTP error with the reason in ``detail``: 404 for an unknown model or image id, 422 for a file
that cannot be read as a radiograph (undecodable, truncated, not an image) or must not reach the chest models
(non-chest body part, non-projection modality, lateral view), 502 when the PACS cannot be reached.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import requests
from fastapi import HTTPException
from dicomweb_client import DICOMwebClient
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

import cxr_monai
from lib.configs import CXRPneumoniaConfig, CXRSRConfig
from lib.configs.base import models_dir
from lib.infers import InferRequestError

logger = logging.getLogger(__name__)

CXR_FILE_EXT = ["*.png", "*.jpg", "*.jpeg", "*.dcm", "*.dicom", "*.tif", "*.tiff", "*.nii", "*.nii.gz"]
"""Local datastore extensions when ``MONAI_LABEL_DATASTORE_FILE_EXT`` is not set (MONAI Label's default list
leaves out ``.dcm`` and ``.jpeg``)."""


def _is_upload(path: str) -> bool:
    """Whether ``path`` is the temporary file MONAI Label's ``/infer`` endpoint wrote for an uploaded file (a
    ``tmp*`` file directly in the temp folder). Any other string is an image id of the configured study source,
    never a path elsewhere on the server (a request naming ``/etc/passwd`` or another patient's folder gets 404)."""
    p = Path(path)
    return (p.is_absolute() and p.name.startswith("tmp") and p.is_file()
            and p.parent.resolve() == Path(tempfile.gettempdir()).resolve())

class AsStoredDICOMwebClient(DICOMwebClientX):
    """MONAI Label's DICOMweb client, retrieving series in the transfer syntax the PACS stores them in.

    MONAI Label asks for a series without a transfer syntax, which DICOMweb answers in Explicit VR Little
    Endian: the PACS then decodes JPEG/JPEG 2000 itself (Orthanc 1.10 with another JPEG decoder than ours,
    one grey level apart, and failing on JPEG 2000). Asking for ``transfer-syntax=*`` gets the stored bytes,
    which :func:`cxr_monai.io.load_cxr` decodes as it decodes the same file anywhere else.
    """

    def retrieve_series(self, study_instance_uid, series_instance_uid, media_types=None, **kwargs):
        if media_types is None:
            media_types = (("application/dicom", "*"),)
        return super().retrieve_series(study_instance_uid, series_instance_uid, media_types=media_types, **kwargs)


def _is_default(name: str) -> bool:
    """Whether a MONAI Label setting still has MONAI Label's default value (the user did not set it; the
    ``monailabel`` command exports every setting to the environment, so the environment cannot tell)."""
    return getattr(settings, name) == type(settings).model_fields[name].default


class CXRMonaiApp(MONAILabelApp):
    """The cxr_monai MONAI Label app: ``cxr_pneumonia`` and ``cxr_sr`` infer tasks, no trainers."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.models_dir = models_dir(conf, app_dir)
        self.task_configs = {"cxr_pneumonia": CXRPneumoniaConfig(), "cxr_sr": CXRSRConfig()}
        for name, config in self.task_configs.items():
            config.init(name, str(self.models_dir), conf, None)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="cxr_monai",
            description="Chest X-ray pneumonia classifier (calibrated, Grad-CAM) and 4x super-resolution",
            version=cxr_monai.__version__,
        )

    # ------------------------------------------------------------------------------------------ datastores

    def init_datastore(self) -> Datastore:
        if _is_default("MONAI_LABEL_DATASTORE_FILE_EXT"):
            settings.MONAI_LABEL_DATASTORE_FILE_EXT = list(CXR_FILE_EXT)
        return super().init_datastore()

    def init_remote_datastore(self) -> Datastore:
        # MONAI Label's DICOMweb defaults are for CT volumes: list only Modality CT, convert series to NIfTI.
        # Radiographs are CR/DX (and DX/SC derived objects); load_cxr reads the DICOM instance itself
        # (modality LUT, VOI LUT/window, MONOCHROME1), which a NIfTI conversion would lose.
        if _is_default("MONAI_LABEL_DICOMWEB_SEARCH_FILTER"):
            settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {}
        settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI = False
        return super().init_remote_datastore()

    def _init_dicomweb_datastore(self) -> Datastore:
        datastore = super()._init_dicomweb_datastore()
        client = getattr(datastore, "_client", None)
        if isinstance(client, DICOMwebClient) and not isinstance(client, AsStoredDICOMwebClient):
            # same connection and session (credentials, URL prefixes), one retrieval method changed
            client.__class__ = AsStoredDICOMwebClient
        return datastore

    def _download_dcmqi_tools(self) -> None:
        # Never download at run time. dcmqi's itkimage2segimage only writes DICOM SEG labels, which these
        # tasks do not produce; the label venv installs it (PyPI package dcmqi) for MONAI Label's SEG paths.
        if shutil.which("itkimage2segimage") is None:
            logger.warning("itkimage2segimage (dcmqi) not on PATH: saving DICOM SEG labels will not work; "
                           "the CXR infer tasks do not need it (make label-serve puts .venv-label/bin on PATH)")

    # --------------------------------------------------------------------------------------------- tasks

    def init_infers(self) -> dict[str, InferTask]:
        return {name: config.infer() for name, config in self.task_configs.items()}

    def init_trainers(self) -> dict:
        return {}

    # --------------------------------------------------------------------------------------------- infer

    def _resolve_image(self, image_id: str, datastore: Datastore) -> str:
        """The local path of a datastore image id (a file, or a DICOMweb series folder); 404 when unknown."""
        try:
            uri = datastore.get_image_uri(image_id)
        except (IndexError, KeyError) as err:
            raise HTTPException(404, f"image {image_id!r} not found in the datastore "
                                     f"({'a SeriesInstanceUID of ' if self._is_dicomweb() else ''}"
                                     f"{datastore.name()})") from err
        except requests.exceptions.HTTPError as err:
            code = err.response.status_code if err.response is not None else None
            if code in (400, 404):
                raise HTTPException(404, f"image {image_id!r} not found in the PACS ({code})") from err
            raise HTTPException(502, f"image {image_id!r}: the PACS answered {code}: {err}") from err
        except requests.exceptions.RequestException as err:
            raise HTTPException(502, f"image {image_id!r}: the PACS cannot be reached ({err})") from err
        if not uri or not os.path.exists(uri):
            raise HTTPException(404, f"image {image_id!r} not found in the datastore ({datastore.name()})")
        return uri

    def _is_dicomweb(self) -> bool:
        return self.studies.startswith(("http://", "https://"))

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer with the answers a client can act on: unknown model or image -> 404, an image
        the models cannot or must not read -> 422 (the reason in ``detail``). Results are never saved as labels
        (an overlay or an enhanced image is not a segmentation)."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(404, f"no infer task {model!r}; this app serves {sorted(self._infers)}")
        request = dict(request, save_label=False)
        image = request.get("image")
        if isinstance(image, str):
            if not image:
                raise HTTPException(422, "no image id given (?image=ID) and no file uploaded")
            request["image_id"] = image
            if not (_is_upload(image) or request.get("session")):  # an id names an image of the study source only
                request["image"] = self._resolve_image(image, datastore or self.datastore())
        try:
            return super().infer(request, datastore)
        except InferRequestError as err:
            logger.info(f"infer {model} refused ({err.status}): {err.message}")
            raise HTTPException(err.status, err.message) from err
