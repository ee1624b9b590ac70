"""Which patient each image of a site's commissioning sample belongs to, and the refusal when the grouping collapses.

The rule, per image, first that applies:

1. DICOM ``PatientID`` (0010,0020) when the file is DICOM and the tag is not empty;
2. the site's ``patients.csv`` (columns ``file``, ``patient``; ``file`` relative to the sample folder, or a bare
   file name when names are unique) when the folder has one (or one is given);
3. the Kermany file-name rule (:func:`cxr_monai.data.splits.kermany_patient_id`), for Kermany-style names only.

An image none of these places is refused (:class:`UnknownPatientError`): an anonymised file name is not a patient,
and treating each image as its own patient would silently ungroup the cross-validation and the bootstrap.
:func:`check_grouping` refuses a grouping that collapsed (:class:`PatientGroupingError`): fewer than
:data:`MIN_PATIENTS_PER_CLASS` patients in a class, or one patient holding more than :data:`MAX_PATIENT_SHARE` of
the images (an anonymiser that wrote one ``PatientID`` for everyone).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_monai.commissioning.site import CommissioningError
from cxr_monai.data.splits import kermany_patient_id
from cxr_monai.data.datasets import _has_dicom_magic

__all__ = [
    "PATIENTS_CSV",
    "MIN_PATIENTS_PER_CLASS",
    "MAX_PATIENT_SHARE",
    "SOURCE_DICOM",
    "SOURCE_CSV",
    "SOURCE_FILE_NAME",
    "PatientGroupingError",
    "UnknownPatientError",
    "Patients",
    "dicom_patient_id",
    "read_patients_csv",
    "resolve_patients",
    "check_grouping",
]

PATIENTS_CSV = "patients.csv"
"""Optional file in the sample folder mapping images to patients (columns ``file``, ``patient``)."""
MIN_PATIENTS_PER_CLASS = 20
"""Fewest distinct in-scope patients per class that commissioning accepts."""
MAX_PATIENT_SHARE = 0.5
"""Commissioning refuses a sample in which one patient holds more than this share of the in-scope images."""
SOURCE_DICOM = "dicom_patient_id"
SOURCE_CSV = "patients_csv"
SOURCE_FILE_NAME = "kermany_file_name_rule"
_DESCRIBE = {SOURCE_DICOM: "DICOM PatientID (0010,0020)", SOURCE_CSV: f"the sample's {PATIENTS_CSV}",
             SOURCE_FILE_NAME: "the Kermany file-name rule (person123_..., IM-0115-..., NORMAL2-IM-1427-...): "
                               "valid only for Kermany-style names"}


class PatientGroupingError(CommissioningError):
    """The images cannot be grouped into enough patients to cross-validate and bootstrap by patient."""


class UnknownPatientError(PatientGroupingError):
    """Images whose patient no rule can tell (no DICOM PatientID, not in ``patients.csv``, not a Kermany name)."""


@dataclass(frozen=True)
class Patients:
    """The patient of each image and where it came from.

    Attributes:
        ids: patient key of each image, in the order of the files (prefixed by nothing: keys from different
            sources are compared as they are).
        sources: :data:`SOURCE_DICOM`, :data:`SOURCE_CSV` or :data:`SOURCE_FILE_NAME` per image.
        csv_file: the ``patients.csv`` read (``None`` when none).
    """

    ids: tuple[str, ...]
    sources: tuple[str, ...]
    csv_file: str | None = None

    def summary(self) -> dict[str, Any]:
        """What ``site_calibration.json`` records under ``sample.patients``."""
        counts = Counter(self.sources)
        return {"images_by_source": {k: int(counts.get(k, 0)) for k in (SOURCE_DICOM, SOURCE_CSV, SOURCE_FILE_NAME)},
                "rule": "per image, the first that applies: " + "; ".join(
                    f"{i + 1}. {_DESCRIBE[k]}" for i, k in enumerate((SOURCE_DICOM, SOURCE_CSV, SOURCE_FILE_NAME))),
                "sources": sorted({_DESCRIBE[k] for k in counts}), "patients_csv": self.csv_file}


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    return not path.suffix and _has_dicom_magic(path)


def dicom_patient_id(path: str | os.PathLike) -> str | None:
    """The non-empty ``PatientID`` of a DICOM file (header only), ``None`` for other files or an empty tag."""
    path = Path(path)
    if not _is_dicom(path):
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as err:  # noqa: BLE001 - any unreadable header is the file's fault, named
        raise PatientGroupingError(f"{path}: DICOM header unreadable ({type(err).__name__}: {err})") from err
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def read_patients_csv(path: str | os.PathLike) -> dict[str, str]:
    """``{file: patient}`` from a ``patients.csv`` with a ``file,patient`` header.

    Raises:
        PatientGroupingError: no such columns, an empty patient, or a file listed twice with different patients.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "file" not in fields or "patient" not in fields:
            raise PatientGroupingError(f"{path}: needs a header with columns 'file' and 'patient', got {fields}")
        out: dict[str, str] = {}
        for n, row in enumerate(reader, start=2):
            row = {str(k).strip().lower(): str(v or "").strip() for k, v in row.items() if k is not None}
            file, patient = row.get("file", ""), row.get("patient", "")
            if not file or not patient:
                raise PatientGroupingError(f"{path}, line {n}: empty file or patient")
            key = Path(file).as_posix()
            if out.get(key, patient) != patient:
                raise PatientGroupingError(f"{path}, line {n}: {file} listed with two patients")
            out[key] = patient
    return out


def _csv_lookup(table: Mapping[str, str], file: Path, root: Path | None) -> str | None:
    if root is not None:
        try:
            rel = file.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = None
        if rel is not None and rel in table:
            return table[rel]
    return table.get(file.name)


def resolve_patients(files: Sequence[str | os.PathLike], dataset_dir: str | os.PathLike | None = None,
                     patients_csv: str | os.PathLike | None = None) -> Patients:
    """The patient of each file (module docstring for the rule).

    Args:
        files: the sample's image files.
        dataset_dir: the sample folder (its ``patients.csv`` is read when present; ``file`` entries are relative
            to it).
        patients_csv: a ``patients.csv`` elsewhere (overrides the folder's).

    Raises:
        UnknownPatientError: images no rule places, named (up to five).
        PatientGroupingError: an unreadable DICOM header or a malformed ``patients.csv``.
    """
    root = Path(dataset_dir) if dataset_dir is not None else None
    csv_path = Path(patients_csv) if patients_csv is not None else (
        root / PATIENTS_CSV if root is not None and (root / PATIENTS_CSV).is_file() else None)
    if csv_path is not None and not csv_path.is_file():
        raise PatientGroupingError(f"{csv_path}: patients file not found")
    table = read_patients_csv(csv_path) if csv_path is not None else {}
    ids, sources, unknown = [], [], []
    for f in files:
        path = Path(f)
        pid, source = dicom_patient_id(path), SOURCE_DICOM
        if pid is None and table:
            pid, source = _csv_lookup(table, path, root), SOURCE_CSV
        if pid is None:
            pid, source = kermany_patient_id(path), SOURCE_FILE_NAME
        if pid is None:
            unknown.append(str(path))
        ids.append(pid or "")
        sources.append(source)
    if unknown:
        raise UnknownPatientError(
            f"{len(unknown)} of {len(ids)} images have no known patient (no DICOM PatientID, "
            f"{'not in ' + str(csv_path) if csv_path else 'no ' + PATIENTS_CSV + ' in the sample folder'}, not a "
            f"Kermany-style name), e.g. {unknown[:5]}: export DICOM with PatientID, or add {PATIENTS_CSV} "
            "(columns file, patient) to the sample folder")
    return Patients(tuple(ids), tuple(sources), str(csv_path) if csv_path is not None else None)


def check_grouping(groups: Sequence[str], labels: Sequence[int], class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
                   min_patients_per_class: int = MIN_PATIENTS_PER_CLASS, max_patient_share: float = MAX_PATIENT_SHARE
                   ) -> dict[str, Any]:
    """Refuse a collapsed grouping of the in-scope images; returns the patient counts.

    Args:
        groups: patient of each in-scope image.
        labels: its label (0/1).
        class_names: names by label.
        min_patients_per_class: fewest distinct patients with an image of each class.
        max_patient_share: largest share of the images one patient may hold.

    Returns:
        ``{"n_patients": ..., "per_class": {name: n}, "largest_patient_share": ...}``.

    Raises:
        PatientGroupingError: too few patients in a class, or one patient holding too many images.
    """
    g, y = [str(v) for v in groups], [int(v) for v in labels]
    if len(g) != len(y) or not g:
        raise ValueError(f"need equal, non-empty groups and labels, got {len(g)} and {len(y)}")
    per_class = {class_names[c]: len({p for p, lab in zip(g, y) if lab == c}) for c in (0, 1)}
    top, top_n = Counter(g).most_common(1)[0]
    share = top_n / len(g)
    out = {"n_patients": len(set(g)), "per_class": per_class, "largest_patient_share": share}
    if share > max_patient_share:
        raise PatientGroupingError(
            f"patient {top!r} holds {top_n} of {len(g)} in-scope images ({share:.0%} > {max_patient_share:.0%}): the "
            "patient grouping collapsed (an anonymiser that wrote one PatientID for all, a folder per batch?); "
            f"fix the PatientIDs or give {PATIENTS_CSV}")
    small = {k: v for k, v in per_class.items() if v < min_patients_per_class}
    if small:
        raise PatientGroupingError(
            f"too few patients to commission: {small} (at least {min_patients_per_class} distinct patients per "
            f"class are needed; {out['n_patients']} patients for {len(g)} in-scope images, per class {per_class})")
    return out
