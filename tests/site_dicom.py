"""Test fixture builder: the shared site sample exported the way a site exports it, DICOM CR files named by their
SOPInstanceUID in ``NORMAL/`` and ``PNEUMONIA/``, with ``PatientID`` set (from the Kermany file-name rule, which is
what the true patient is here), so the file names say nothing about the patient."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_monai.data.splits import kermany_patient_id


def export_site_sample_dicom(src: Path, dst: Path, patient_id: str | None = None) -> dict[str, str]:
    """Write every JPEG of ``src/{NORMAL,PNEUMONIA}`` as an 8-bit MONOCHROME2 DICOM CR chest PA
    ``dst/<class>/<SOPInstanceUID>.dcm``; returns ``{written file: true patient}``.

    Args:
        src: the sample folder (Kermany-style names).
        dst: where the export goes (created).
        patient_id: write this PatientID into every file instead of the true one (an anonymiser gone wrong).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr_storage = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

    truth: dict[str, str] = {}
    study_by_patient: dict[str, str] = {}
    for folder in ("NORMAL", "PNEUMONIA"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        for jpeg in sorted((src / folder).glob("*.jpeg")):
            patient = kermany_patient_id(jpeg.name)
            assert patient is not None, jpeg
            pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
            sop = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = cr_storage, sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = cr_storage, sop
            ds.StudyInstanceUID = study_by_patient.setdefault(patient, generate_uid())
            ds.SeriesInstanceUID = generate_uid()
            ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
            ds.PatientID = patient_id if patient_id is not None else patient
            ds.PatientName, ds.PatientAge = "ANON", "003Y"
            ds.StudyDate = _dt.date(2026, 1, 2).strftime("%Y%m%d")
            ds.Rows, ds.Columns = pixels.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = pixels.tobytes()
            out = dst / folder / f"{sop}.dcm"
            ds.save_as(out, enforce_file_format=True)
            truth[str(out)] = patient
    return truth
