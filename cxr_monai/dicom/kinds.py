"""What a DICOM output kind is: its series (name, number, description), which records get one, how it is built.

A kind is one class (one module of :mod:`cxr_monai.dicom` each). The deploy app writes, for every record that gets
outputs, each kind of :data:`cxr_monai.dicom.STUDY_OUTPUTS` that :meth:`OutputKind.applies` to it, in that order
(:func:`cxr_monai.results.write_study_results`); adding an output means a class and its place in that list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydicom.dataset import Dataset

from cxr_monai.dicom.build import write_bytes, write_dataset
from cxr_monai.dicom.codes import NOT_FOR_DIAGNOSIS, derived_uid, result_uid
from cxr_monai.records import ImageRecord

__all__ = ["Built", "OutputKind"]


@dataclass
class Built:
    """One built output: the DICOM object and any further files beside it (``{key: (suffix, bytes)}``, e.g. the
    overlay as PNG)."""

    dataset: Dataset
    extras: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class OutputKind:
    """A DICOM output kind.

    Class attributes:
        name: its key in a record's ``outputs`` and the folder it is written to (``<StudyUID>/<name>/``).
        series: the output series it belongs to (default ``name``): the series UID is a function of the study and
            this name (:meth:`series_uid`), so every run on a study's images adds to the same series.
        series_number: the SeriesNumber; also what the SOPInstanceUID of an output is derived from
            (:meth:`sop_uid`): kinds of the same series share it, so a source image has one object per series.
        title: the series description before `` - NOT FOR PRIMARY DIAGNOSIS`` (:meth:`series_description`).
        evidence: whether later outputs of the same image (the report) refer to this one.
    """

    name: ClassVar[str]
    series: ClassVar[str]
    series_number: ClassVar[int]
    title: ClassVar[str]
    evidence: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "series" not in cls.__dict__ and "name" in cls.__dict__:
            cls.series = cls.name

    @classmethod
    def series_description(cls, title: str | None = None) -> str:
        """``title`` (default :attr:`title`) and the disclaimer, within the 64 characters of a LO value."""
        suffix = f" - {NOT_FOR_DIAGNOSIS}"
        return f"{(title or cls.title)[:64 - len(suffix)]}{suffix}"

    @classmethod
    def series_uid(cls, study_uid: str) -> str:
        """The UID of a study's output series of this kind."""
        return derived_uid(study_uid, cls.series)

    @classmethod
    def sop_uid(cls, source_sop_uid: str) -> str:
        """The SOPInstanceUID of this kind's output made from a source image."""
        return result_uid(source_sop_uid, cls.series_number)

    def applies(self, record: ImageRecord) -> bool:
        """Whether ``record`` (one that gets outputs) gets this kind."""
        raise NotImplementedError

    def build(self, record: ImageRecord, *, series_uid: str, instance_number: int,
              evidence: list[Dataset]) -> Built:
        """The output of ``record``.

        Args:
            record: the image's record.
            series_uid: the study's output series of this kind.
            instance_number: InstanceNumber within the series.
            evidence: the objects written before for this image that later outputs refer to.
        """
        raise NotImplementedError

    def write(self, built: Built, study_folder: Path) -> dict[str, str]:
        """Write ``built`` under ``study_folder/<name>/`` (atomically); returns ``{key: path}``."""
        folder = Path(study_folder) / self.name
        stem = built.dataset.SOPInstanceUID
        out = {self.name: str(write_dataset(built.dataset, folder / f"{stem}.dcm"))}
        for key, (suffix, data) in built.extras.items():
            out[key] = str(write_bytes(data, folder / f"{stem}{suffix}"))
        return out
