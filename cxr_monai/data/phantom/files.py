"""The phantom as files: a valid DICOM CR/DX chest PA image (:func:`write_phantom_dicom`) and a class-folder
dataset of phantoms (:func:`write_phantom_dataset`), for tests and the demo.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from cxr_monai.data.phantom.render import _shape2d, make_phantom, phantom_pixel_spacing

__all__ = ["PHANTOM_PATIENT_NAME", "PHANTOM_PATIENT_ID", "write_phantom_dicom", "write_phantom_dataset"]

PHANTOM_PATIENT_NAME = "PHANTOM^CXR"
PHANTOM_PATIENT_ID = "PHANTOM-0001"
_UID_ROOT_ENTROPY = "cxr_monai.data.phantom"
_BITS = 12


def _uid(deterministic: bool, *parts: object) -> str:
    if deterministic:
        return generate_uid(entropy_srcs=[_UID_ROOT_ENTROPY, *map(str, parts)])
    return generate_uid()


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    """A DICOM code sequence item."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def write_phantom_dicom(
    path: str | Path,
    size: int | Sequence[int] = 512,
    seed: int = 0,
    consolidation: bool = False,
    modality: str = "CR",
    dose: float = 1.0,
    deterministic_uids: bool = True,
) -> Path:
    """Write the phantom as a valid, uncompressed DICOM CR (or DX for presentation) chest PA image.

    The pixel data are 12-bit MONOCHROME2 (stored in 16 bits), the patient and study tags carry obviously fake
    values (``PHANTOM^CXR``, ``PHANTOM-0001``) and the UIDs come from :func:`pydicom.uid.generate_uid`.

    Args:
        path: output file (parent folders are created).
        size: an int or ``(H, W)``, as for :func:`make_phantom`.
        seed: the phantom's seed.
        consolidation: include a consolidation (the mask is not stored).
        modality: ``"CR"`` (CR Image Storage) or ``"DX"`` (Digital X-Ray Image Storage - For Presentation).
        dose: relative exposure, as for :func:`make_phantom`.
        deterministic_uids: derive the UIDs from the arguments (same call, same file); False draws fresh UIDs.

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown modality, a size out of range or a non-positive dose.
    """
    modality = modality.upper()
    sop_classes = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
    if modality not in sop_classes:
        raise ValueError(f"modality must be 'CR' or 'DX', got {modality!r}")
    hw = _shape2d(size)
    image, _ = make_phantom(hw, seed=seed, consolidation=consolidation, noise=True, dose=dose)
    pixels = np.round(image[0].astype(np.float64) * (2**_BITS - 1)).astype(np.uint16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    key = (seed, hw[0], hw[1], bool(consolidation), modality, dose)
    study_uid = _uid(deterministic_uids, "study", seed)
    series_uid = _uid(deterministic_uids, "series", *key)
    sop_uid = _uid(deterministic_uids, "sop", *key)
    when = datetime.datetime(2000, 1, 1, 12, 0, 0)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_classes[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_classes[modality]
    ds.SOPInstanceUID = sop_uid
    # patient (fake)
    ds.PatientName = PHANTOM_PATIENT_NAME
    ds.PatientID = PHANTOM_PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom (cxr_monai.data.phantom), no real patient"
    # study / series / equipment
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "PHANTOM"
    ds.StudyDescription = "PHANTOM CHEST PA"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"cxr_monai phantom seed {seed}" + (" consolidation" if consolidation else "")
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "cxr_monai"
    ds.ManufacturerModelName = "procedural phantom"
    ds.InstitutionName = "PHANTOM"
    # image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.KVP = 110
    spacing = [DSfloat(x, auto_format=True) for x in phantom_pixel_spacing(hw)]
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hw
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS
    ds.HighBit = _BITS - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2**(_BITS - 1)
    ds.WindowWidth = 2**_BITS
    if modality == "DX":
        ds.ImageType = ["DERIVED", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.DetectorType = ""
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = DicomSequence([])
        ds.AnatomicRegionSequence = DicomSequence([_code("51185008", "Chest")])
        view = _code("272479007", "postero-anterior")
        view.ViewModifierCodeSequence = DicomSequence([])
        ds.ViewCodeSequence = DicomSequence([view])
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_phantom_dataset(
    root: str | Path,
    n_per_class: int = 8,
    size: int | Sequence[int] = 256,
    seed: int = 0,
    fmt: str = "png",
    classes: Sequence[str] = ("NORMAL", "PNEUMONIA"),
) -> Path:
    """Write a class-folder dataset of phantoms (Kermany layout) for bundle tests and demos.

    ``<root>/<classes[0]>/`` holds phantoms without, ``<root>/<classes[1]>/`` with a consolidation. Each image
    has its own seed (``seed + 2 i`` for the first class, ``seed + 2 i + 1`` for the second) and its own file
    name stem ``phantom<seed>``, so every image is its own patient.

    Args:
        root: output folder (created).
        n_per_class: images per class, at least 1.
        size: an int or ``(H, W)``.
        seed: base seed.
        fmt: ``"png"`` (8-bit grayscale) or ``"dcm"`` (12-bit CR DICOM).
        classes: the two class folder names (normal, pneumonia).

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: for ``n_per_class < 1``, an unknown ``fmt`` or not exactly two classes.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "dcm"):
        raise ValueError(f"fmt must be 'png' or 'dcm', got {fmt!r}")
    if len(classes) != 2:
        raise ValueError(f"classes must name two folders (normal, pneumonia), got {classes!r}")
    hw = _shape2d(size)
    root = Path(root)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            s = int(seed) + 2 * i + label
            target = folder / f"phantom{s:05d}.{fmt}"
            if fmt == "dcm":
                write_phantom_dicom(target, size=hw, seed=s, consolidation=bool(label))
            else:
                img, _ = make_phantom(hw, seed=s, consolidation=bool(label))
                Image.fromarray(np.round(img[0] * 255.0).astype(np.uint8), mode="L").save(target)
    return root
