"""The DICOM output kinds (cxr_monai.dicom): their series numbers and descriptions are what PACS users and the PACS
worker rely on, and the worker's "is this our own output" follows from them; the modality rule has one source."""

from __future__ import annotations

import re

import pytest

from cxr_monai.dicom import (FAILURE_OUTPUTS, MANUFACTURER, SERIES_NUMBERS, STUDY_OUTPUTS, is_own_output,
                             result_uid)
from cxr_monai.io.rules import PROJECTION_MODALITIES, modality_names, modality_pattern
from cxr_monai.results import output_series_uid, report_uid
from cxr_monai.scope import IN_SCOPE_MODALITIES, header_scope_reason

ALL_KINDS = (*STUDY_OUTPUTS, *FAILURE_OUTPUTS)


def test_series_numbers_and_descriptions_are_fixed() -> None:
    assert SERIES_NUMBERS == {"enhanced": 9001, "report": 9002, "gradcam": 9003, "summary": 9004}
    assert [k.series_description() for k in ALL_KINDS] == [
        "AI-enhanced 4x - NOT FOR PRIMARY DIAGNOSIS", "AI pneumonia finding - NOT FOR PRIMARY DIAGNOSIS",
        "AI Grad-CAM pneumonia - NOT FOR PRIMARY DIAGNOSIS", "AI pneumonia: not assessed - NOT FOR PRIMARY DIAGNOSIS",
        "AI pneumonia: not assessed (AI faile - NOT FOR PRIMARY DIAGNOSIS",
        "AI pneumonia finding - NOT FOR PRIMARY DIAGNOSIS"]
    # a failure output takes the place of the normal one: same series, same SOPInstanceUID
    assert [(k.name, k.series, k.series_number) for k in FAILURE_OUTPUTS] == [("summary", "summary", 9004),
                                                                             ("report", "report", 9002)]
    assert FAILURE_OUTPUTS[1].sop_uid("1.2.3") == report_uid("1.2.3") == result_uid("1.2.3", 9002)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: type(k).__name__)
def test_the_pacs_worker_recognises_every_output_kind(kind) -> None:
    assert len(kind.series_description()) <= 64
    assert is_own_output({"Manufacturer": MANUFACTURER, "SeriesDescription": kind.series_description()})
    assert not is_own_output({"Manufacturer": "ACME", "SeriesDescription": kind.series_description()})
    assert output_series_uid("1.2.3", kind.series) == kind.series_uid("1.2.3") != kind.series_uid("1.2.4")


def test_the_phantom_input_is_not_an_output(tmp_path) -> None:
    import pydicom

    from cxr_monai.data.phantom import write_phantom_dicom

    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "p.dcm", size=64), stop_before_pixels=True)
    assert ds.Manufacturer == MANUFACTURER  # our manufacturer, but an input
    assert not is_own_output({"Manufacturer": str(ds.Manufacturer), "SeriesDescription": str(ds.SeriesDescription)})


def test_one_modality_rule() -> None:
    assert PROJECTION_MODALITIES == ("CR", "DX") and IN_SCOPE_MODALITIES == PROJECTION_MODALITIES
    assert modality_names() == "CR/DX" and modality_pattern() == "^(CR|DX)$"
    assert [m for m in ("CR", "DX", "CT", "SR", "OT", "XCR", "CRX") if re.match(modality_pattern(), m)] == ["CR", "DX"]
    assert header_scope_reason({"modality": "CT"}) == "modality 'CT' is not projection radiography (CR/DX)"
    assert header_scope_reason({"modality": "DX"}) is None
