"""Operators of the CXR enhance-and-classify app. Each is thin: it adapts its ports to a ``cxr_monai``
function and back. What flows between them is a list of :class:`cxr_monai.records.ImageRecord` (one per SOP
instance); each operator fills its field.

An image that fails in one operator is marked ``failed`` with the reason and passes through the rest
untouched, so one bad file never stops the study.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pydicom
from monai.deploy.conditions import CountCondition
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from monai.deploy.operators import DICOMDataLoaderOperator

from cxr_monai.commissioning.monitor import image_statistics
from cxr_monai.explain import overlay_rgb
from cxr_monai.export import load_deploy_model
from cxr_monai.inference import check_scope, classify, sr_decision, super_resolve
from cxr_monai.io import CXRInputError, load_cxr
from cxr_monai.io.rules import modality_names
from cxr_monai.records import ImageRecord, RejectedFile, SkippedSeries, run_each
from cxr_monai.results import write_study_results
from cxr_monai.scope import load_scope_gate
from cxr_monai.transforms import load_lung_field

logger = logging.getLogger("cxr_enhance_classify")

RECORDS = "records"


def _log_failure(record: ImageRecord, step: str, err: BaseException) -> None:
    logger.error("%s failed at %s: %s", record.file or record.sop_uid, step, err)


def _each_ok(records: list[ImageRecord], step: str, fn, statuses: tuple[str, ...] = ("ok",)) -> None:
    """``fn(record)`` for every record whose status is in ``statuses`` (still ``ok`` by default), timed; an
    exception fails that record only (:func:`cxr_monai.records.run_each`) and is logged."""
    run_each(records, step, fn, statuses, on_error=_log_failure)


def _unreadable(file: str) -> str | None:
    """Why :func:`cxr_monai.io.load_cxr` cannot read ``file`` (truncated, corrupt...), or ``None`` when it can."""
    try:
        load_cxr(file)
    except CXRInputError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - any failure to decode is a reason to report
        return f"{type(err).__name__}: {err}"
    return None


class CheckedDICOMDataLoaderOperator(DICOMDataLoaderOperator):
    """The SDK's DICOM loader, made safe for a folder with bad files.

    The SDK loader reads every file with ``dcmread`` and only survives ``InvalidDicomError``; any other
    exception (a file pydicom chokes on) would stop the whole app. Each file's header is read first
    (``stop_before_pixels``); files that fail are left out of the SDK's load and reported on the
    ``rejected_files`` port as ``[{"file", "status", "reason"}]``.

    Every file is accounted for by its name, whatever its UIDs: a file without one of the UIDs the SDK needs
    (SOP Instance, SOP Class, Study, Series) is ``skipped`` with the missing attributes named; of files sharing a
    SOPInstanceUID, the first complete one (name order) is loaded, an unreadable one (e.g. a truncated copy)
    ``failed`` with the reason, and a further complete one ``skipped`` as ``duplicate SOPInstanceUID of
    <file>``; a file the SDK drops all the same is ``failed`` with the reason.
    """

    REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")

    REJECTED = "rejected_files"

    def __init__(self, fragment: Fragment, *args, input_folder: Path, **kwargs) -> None:
        self.rejected: list[RejectedFile] = []
        # run once: the loader's input port is optional, so without a count it would run forever
        super().__init__(fragment, CountCondition(fragment, 1), *args, input_folder=Path(input_folder),
                         must_load=False, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        super().setup(spec)
        spec.output(self.REJECTED)

    def _load_data(self, files: list[str]):
        by_uid: dict[str, list[str]] = {}
        for file in sorted(files):
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True)
            except Exception as err:  # noqa: BLE001 - any failure means "not a readable DICOM instance"
                self._reject(file, None, "skipped", f"not a DICOM file ({type(err).__name__}: {err})")
                continue
            missing = [k for k in self.REQUIRED_UIDS if not str(ds.get(k, "") or "").strip()]
            uid = str(ds.get("SOPInstanceUID", "") or "") or None
            if missing:
                self._reject(file, uid, "skipped", f"no {', '.join(missing)}: the instance cannot be placed in a "
                                                   "study and series")
                continue
            by_uid.setdefault(str(uid), []).append(file)
        good: dict[str, str] = {}
        for uid, group in by_uid.items():
            if len(group) == 1:
                good[group[0]] = uid
                continue
            kept = None
            for file in group:  # name order: the first complete file is the instance, the others are reported
                broken = _unreadable(file)
                if broken is not None:
                    self._reject(file, uid, "failed", f"load: {broken}")
                elif kept is None:
                    kept, good[file] = file, uid
                else:
                    self._reject(file, uid, "skipped", f"duplicate SOPInstanceUID of {kept}")
        studies = super()._load_data(sorted(good))
        loaded = {str(Path(getattr(sop.get_native_sop_instance(), "filename", "") or ""))
                  for study in studies for series in study.get_all_series() for sop in series.get_sop_instances()}
        for file, uid in good.items():
            if str(Path(file)) in loaded:
                continue
            # the SDK loader dropped it (a truncated or corrupt file): report why, in the project's words
            reason = _unreadable(file) or ("the SDK's DICOM loader left it out (an ignored SOP class, or the same "
                                           "ImagePositionPatient as another instance of its series)")
            self._reject(file, uid, "failed", f"load: {reason}")
        return studies

    def _reject(self, file: str, uid: str | None, status: str, reason: str) -> None:
        self.rejected.append({"file": file, "sop_uid": uid, "status": status, "reason": reason})
        (logger.error if status == "failed" else logger.warning)("%s %s: %s", file, status, reason)

    def compute(self, op_input, op_output, context) -> None:
        self.rejected = []
        super().compute(op_input, op_output, context)
        op_output.emit(list(self.rejected), self.REJECTED)


class CXRImageLoaderOperator(Operator):
    """Selected series (CR/DX: :data:`cxr_monai.io.rules.PROJECTION_MODALITIES`) -> one
    :class:`~cxr_monai.records.ImageRecord` per SOP instance, decoded with :func:`cxr_monai.io.load_cxr`
    (MONOCHROME1, VOI LUT/window, rescale: the project's one implementation)."""

    def __init__(self, fragment: Fragment, *args, **kwargs) -> None:
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.output(RECORDS)

    def compute(self, op_input, op_output, context) -> None:
        records: list[ImageRecord] = []
        for study_selected in op_input.receive("study_selected_series_list") or []:
            for selected in study_selected.selected_series:
                series = selected.series
                for sop in series.get_sop_instances():
                    ds = sop.get_native_sop_instance()
                    rec = ImageRecord.from_dataset(ds)
                    start = time.perf_counter()
                    try:
                        rec.image, rec.meta = load_cxr(ds)
                        rec.dataset, rec.shape = ds, list(rec.image.shape[1:])
                    except CXRInputError as err:
                        rec.fail("load", err)
                        _log_failure(rec, "load", err)
                    rec.timed("load", start)
                    records.append(rec)
        op_output.emit(records, RECORDS)


class _ModelOperator(Operator):
    """An operator with one model file, loaded on first use by :meth:`load_model`, passing the record list from
    its input port to its output port."""

    def __init__(self, fragment: Fragment, *args, model_file: Path, device: str, lung_file: Path | None = None,
                 **kwargs) -> None:
        self.model_file = Path(model_file)
        self.lung_file = Path(lung_file) if lung_file is not None else None
        self.device = device
        self._model = None
        super().__init__(fragment, *args, **kwargs)

    @property
    def lung_field(self):
        """The lung-field network (model ``cxr_lung``) whose view the classifier and the gate read, or ``None``."""
        if self.lung_file is None:
            return None
        return load_lung_field(self.lung_file, self.device)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(RECORDS)
        spec.output(RECORDS)

    def load_model(self):
        raise NotImplementedError

    @property
    def model(self):
        if self._model is None:
            key = (type(self).__name__, str(self.model_file), self.model_file.stat().st_mtime_ns, self.device)
            if key not in _MODEL_CACHE:
                _MODEL_CACHE[key] = self.load_model()
            self._model = _MODEL_CACHE[key]
        return self._model


_MODEL_CACHE: dict[tuple, object] = {}
"""Loaded models by (operator, file, modification time, device): a process that runs the app many times (the PACS
worker's warm app, ``deploy/pacs/warm_app.py``) loads each model once."""


class ScopeGateOperator(_ModelOperator):
    """The intended-population check (:func:`cxr_monai.inference.check_scope`: header rules + the image
    check on the un-enhanced image): an image outside the population gets status ``out_of_scope`` with the
    reason; it is still super-resolved (when SR applies) and gets a report saying it was not assessed, but no
    classification and no Grad-CAM. Model ``cxr_scope`` from the app's models folder."""

    def __init__(self, fragment: Fragment, *args, classifier_info: dict, **kwargs) -> None:
        self.classifier_info = dict(classifier_info)
        super().__init__(fragment, *args, **kwargs)

    def load_model(self):
        return load_scope_gate(self.model_file, self.device)

    def compute(self, op_input, op_output, context) -> None:
        records = op_input.receive(RECORDS)
        gate = self.model

        def check(rec: ImageRecord) -> None:
            decision = check_scope(gate, rec.image, rec.meta,
                                   image_size=int(self.classifier_info.get("image_size", 160)),
                                   lung_field=self.lung_field)
            rec.scope = {**decision.as_dict(), "gate": gate.info.get("name"),
                         "classifier": self.classifier_info.get("model_name"),
                         "classifier_version": self.classifier_info.get("version")}
            rec.image_stats = image_statistics(rec.image)  # what the drift monitor compares (as read, pre-SR)
            if not decision.in_scope:
                rec.status, rec.reason = "out_of_scope", decision.reason
                logger.info("%s out of scope: %s", rec.sop_uid or rec.file, decision.reason)

        _each_ok(records, "scope", check)
        op_output.emit(records, RECORDS)


class SuperResolutionOperator(_ModelOperator):
    """4x tiled super-resolution (:func:`cxr_monai.inference.super_resolve`) of images whose longest side
    is at most ``sr_max_side`` (:func:`cxr_monai.inference.sr_decision`); larger ones pass unchanged with
    the reason recorded. Model ``cxr_sr`` from the app's models folder."""

    def __init__(self, fragment: Fragment, *args, sr_max_side: int = 1024, **kwargs) -> None:
        self.sr_max_side = int(sr_max_side)
        super().__init__(fragment, *args, **kwargs)

    def load_model(self):
        return load_deploy_model(self.model_file, self.device, kind="super_resolution")

    def compute(self, op_input, op_output, context) -> None:
        records = op_input.receive(RECORDS)
        model, info = self.model

        def enhance(rec: ImageRecord) -> None:
            apply, why = sr_decision(rec.image.shape, self.sr_max_side)
            rec.sr = {"applied": apply, "note": why, "model": info["model_name"], "version": info["version"],
                      "weights_sha256": info.get("weights_sha256"), "device": self.device}
            logger.info("%s: %s", rec.sop_uid, why)
            if apply:
                rec.enhanced = super_resolve(model, rec.image, info, self.device)
                rec.sr["output_shape"] = list(rec.enhanced.shape[1:])

        _each_ok(records, "super_resolution", enhance, statuses=("ok", "out_of_scope"))
        op_output.emit(records, RECORDS)


class PneumoniaClassifierOperator(_ModelOperator):
    """Calibrated pneumonia probability (:func:`cxr_monai.inference.classify`) of the image the app reports on (the
    enhanced one when SR ran) and its Grad-CAM of the predicted class (:func:`cxr_monai.explain.gradcam_split`), with
    the RGB overlay (:func:`cxr_monai.explain.overlay_rgb`) on the source image; the probability on the un-enhanced
    image is recorded beside it. One model load; the classifier runs once on the image it reads (with its Grad-CAM)
    and once more on the un-enhanced image when SR ran."""

    CAM_KEYS = ("cam", "cam_view", "cam_class", "network_input")
    """What :func:`~cxr_monai.inference.classify` returns for the Grad-CAM, kept out of the classification record."""

    def load_model(self):
        return load_deploy_model(self.model_file, self.device, kind="classifier")

    def compute(self, op_input, op_output, context) -> None:
        records = op_input.receive(RECORDS)
        model, info = self.model

        def run(rec: ImageRecord) -> None:
            lung = self.lung_field
            out = classify(model, rec.read_image, info, self.device, with_cam=True, lung_field=lung)
            result = {k: v for k, v in out.items() if k not in self.CAM_KEYS}
            result["probability_unenhanced"] = (
                classify(model, rec.image, info, self.device, lung_field=lung)["probability"]
                if rec.enhanced is not None else None)
            result.update(model=info["model_name"], version=info["version"], device=self.device,
                          read_enhanced=rec.enhanced is not None)
            rec.classification = result
            rec.gradcam = {"class": out["cam_class"], "normalisation": "divided by the map's maximum",
                           "region": ("the lung-field view (zero outside it)" if out.get("lung_field")
                                      else "the whole film")}
            rec.overlay = overlay_rgb(rec.image, out["cam"])

        _each_ok(records, "classification", run)
        op_output.emit(records, RECORDS)


class ResultsWriterOperator(Operator):
    """Writes the DICOM results (:func:`cxr_monai.results.write_study_results`: the output kinds of
    :mod:`cxr_monai.dicom`), the overlay PNGs and ``results.json``; every file is written to a temporary name and
    renamed. Also reports the series the selector left out (not CR/DX) and the files the loader rejected."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, run_info: dict, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.run_info = run_info
        self.summary: dict[str, Any] | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(RECORDS)
        spec.input("dicom_study_list")
        spec.input("rejected_files").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        records: list[ImageRecord] = op_input.receive(RECORDS)
        studies = op_input.receive("dicom_study_list") or []
        try:
            rejected = op_input.receive("rejected_files") or []
        except Exception:  # noqa: BLE001 - optional port
            rejected = []
        selected = {r.series_uid for r in records}
        not_selected: list[SkippedSeries] = []
        for study in studies:
            for series in study.get_all_series():
                if series.SeriesInstanceUID not in selected:
                    modality = getattr(series, "Modality", None) or "?"
                    files = [str(getattr(sop.get_native_sop_instance(), "filename", "") or "")
                             for sop in series.get_sop_instances()]
                    not_selected.append({"study_uid": study.StudyInstanceUID, "series_uid": series.SeriesInstanceUID,
                                         "modality": modality, "status": "skipped", "files": files,
                                         "reason": f"series modality {modality!r} is not {modality_names()}"})
                    logger.info("skipping series %s: modality %s is not %s", series.SeriesInstanceUID, modality,
                                modality_names())
        self.summary = write_study_results(records, self.output_folder, run_info=self.run_info,
                                           extra_skipped=not_selected, rejected_files=rejected)
