"""Two real paediatric chest films shipped with the repository as DICOM CRs (``examples/kermany``), for the demo and
the tests that must tell a working classifier from a constant one.

Source: Kermany, Zhang, Goldbaum (2018), "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification", Mendeley Data V2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0 (official train split). Rule of choice,
written before any model read them: the first file (sorted by name) of each class of ``kermany_hr`` whose image is
in the classifier's validation split (``training_split(kermany224/train, 0.15, 0)``: never trained on). The films
are resized to a longest side of :data:`EXAMPLE_SIDE` px (8-bit, MONOCHROME2) and wrapped in CR headers with
made-up, de-identified patient and study tags; the pixels are the dataset's.

    python -m cxr_monai.data.examples ../shared/data/kermany_hr examples/kermany
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from cxr_monai.data.phantom import write_phantom_dicom

__all__ = ["EXAMPLES", "EXAMPLE_SIDE", "write_example_films"]

EXAMPLES = {"NORMAL": "IM-0261-0001.jpeg", "PNEUMONIA": "person1030_virus_1722.jpeg"}
"""Class -> file of ``kermany_hr`` (the rule in the module docstring)."""

EXAMPLE_SIDE = 320
"""Longest side of the shipped films, in pixels."""

_ROOT_UID = "1.2.826.0.1.3680043.8.498.77"  # pydicom's example root plus a project branch: made-up, stable UIDs


def write_example_films(kermany_hr: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<CLASS>_<stem>.dcm`` for each of :data:`EXAMPLES` and return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (label, name) in enumerate(sorted(EXAMPLES.items()), start=1):
        img = Image.open(Path(kermany_hr) / label / name).convert("L")
        scale = EXAMPLE_SIDE / max(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.LANCZOS)
        pixels = np.asarray(img, dtype=np.uint8)
        with tempfile.TemporaryDirectory() as tmp:  # the phantom's CR header, then the real pixels and tags
            ds = pydicom.dcmread(write_phantom_dicom(Path(tmp) / "t.dcm", size=pixels.shape, seed=i))
        uid = f"{_ROOT_UID}.{i}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.3"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{uid}.1", f"{uid}.2"
        ds.PatientName, ds.PatientID = f"EXAMPLE^{label}", f"KERMANY-EXAMPLE-{i}"
        ds.PatientAge = "003Y"  # the cohort's ages are 1-5 years; the dataset gives none per film
        ds.DeidentificationMethod = f"Kermany 2018 CC BY 4.0 {Path(name).stem}; made-up tags"[:64]
        ds.StudyID, ds.StudyDescription = f"EX{i}", "CHEST PA (example)"
        ds.SeriesDescription = f"Kermany example {label.lower()}"
        ds.Manufacturer, ds.ManufacturerModelName, ds.InstitutionName = "unknown", "unknown", "EXAMPLE"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.LossyImageCompression = "01"  # the source is a JPEG
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.WindowCenter, ds.WindowWidth = 128, 256
        for tag in ("ImagerPixelSpacing", "PixelSpacing"):  # unknown for a resized JPEG
            if tag in ds:
                delattr(ds, tag)
        ds.PixelData = pixels.tobytes()
        path = out / f"{label}_{Path(name).stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_example_films(sys.argv[1], sys.argv[2]):
        print(p)
