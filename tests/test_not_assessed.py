"""The PACS loop's "nothing twice" and "a result for every image" rest on two package pieces, checked here without a
PACS: output UIDs are functions of the source's UIDs, and the "not assessed: AI processing failed" objects."""

from __future__ import annotations

from pathlib import Path

import pydicom

from cxr_monai.data.phantom import write_phantom_dicom
from cxr_monai.io import load_cxr
from cxr_monai.results import SERIES_NUMBERS, output_series_uid, report_uid, write_not_assessed
from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe


def _texts(ds) -> list[str]:
    out = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "CODE":
                out.append(f"{name}={it.ConceptCodeSequence[0].CodeMeaning}")
            elif it.ValueType == "TEXT":
                out.append(f"{name}={it.TextValue}")
            walk(it.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return out


def test_not_assessed_objects_are_the_same_on_every_run(tmp_path: Path) -> None:
    src = write_phantom_dicom(tmp_path / "src.dcm", size=128, seed=3)
    ds = pydicom.dcmread(src)
    runs = [write_not_assessed(ds, "the app exited with status 2", tmp_path / f"run{i}", image=load_cxr(src)[0])
            for i in (0, 1)]
    objs = [{k: pydicom.dcmread(p) for k, p in run.items()} for run in runs]
    for kind in ("report", "summary"):
        assert objs[0][kind].SOPInstanceUID == objs[1][kind].SOPInstanceUID  # a second store stores nothing new
        assert objs[0][kind].SeriesInstanceUID == output_series_uid(str(ds.StudyInstanceUID), kind)
        assert objs[0][kind].StudyInstanceUID == ds.StudyInstanceUID
        assert int(objs[0][kind].SeriesNumber) == SERIES_NUMBERS[kind]
    sr = objs[0]["report"]
    assert sr.SOPInstanceUID == report_uid(str(ds.SOPInstanceUID))  # what the worker looks up
    assert sr.SOPInstanceUID != objs[0]["summary"].SOPInstanceUID
    texts = _texts(sr)
    assert "AI processing=Not assessed: AI processing failed" in texts, texts
    assert "Reason not assessed=the app exited with status 2" in texts, texts
    assert not any(t.startswith("Finding=") for t in texts)
    assert objs[0]["summary"].BurnedInAnnotation == "YES"
    # another source image: other UIDs
    other = write_phantom_dicom(tmp_path / "other.dcm", size=128, seed=4)
    assert report_uid(str(pydicom.dcmread(other).SOPInstanceUID)) != sr.SOPInstanceUID


def test_not_assessed_without_pixels_and_conformance(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "src.dcm", size=128, seed=3))
    written = write_not_assessed(ds, "failed: pixel data cut short", tmp_path / "out", image=None)
    assert set(written) == {"report", "summary"} and list(written)[-1] == "report"  # stored in this order
    exe = dciodvfy_exe()
    for path in written.values():
        assert dciodvfy_errors(exe, Path(path)) == [], path
