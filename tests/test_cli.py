"""`python -m cxr_monai demo`: the default phantom run and a run on the shared DICOMs (non-chest skipped)."""

from __future__ import annotations

import json

from cxr_monai.cli import demo
from tests.conftest import PROJECT_ROOT, require_shared


def test_demo_default_phantom(tmp_path):
    summary = demo(None, str(tmp_path), bundles_dir=PROJECT_ROOT / "bundles")
    assert (tmp_path / "input" / "phantom_cxr.dcm").is_file()
    assert len(summary["inputs"]) == 1 and summary["inputs"][0]["modality"] == "CR"
    assert summary["inputs"][0]["shape"] == [512, 512]
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert len(list((tmp_path / "preview").glob("*.png"))) == 1
    cls = [s for s in summary["steps"] if s["step"] == "pneumonia_classification"][0]
    # the bundle ships weights: one prediction with a Grad-CAM overlay; the phantom has a consolidation, which the
    # shipped classifier must call PNEUMONIA at the shipped threshold
    threshold = json.loads((PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier" / "models" / "calibration.json")
                           .read_text())["threshold"]
    assert len(cls["predictions"]) == 1
    assert cls["predictions"][0]["label"] == "PNEUMONIA" and cls["predictions"][0]["probability"] >= threshold
    assert len(list((tmp_path / "classification" / "gradcam").glob("*.png"))) == 1


def test_demo_on_shared_dicoms_skips_the_extremity(tmp_path):
    folder = require_shared("dicom")
    summary = demo(str(folder), str(tmp_path), bundles_dir=PROJECT_ROOT / "bundles")
    skipped = {s["file"].rsplit("/", 1)[-1] for s in summary["skipped"]}
    assert "cr_extremity_mono1_j2k.dcm" in skipped
    assert len(summary["inputs"]) == 3
    sr = [s for s in summary["steps"] if s["step"] == "super_resolution_x4"]
    # only the small DX image is super-resolved; the 1024 px CR images are already full resolution
    assert len(sr) == 1 and [f.rsplit("/", 1)[-1] for f in sr[0]["files"]] == ["dx_thorax_mono1_small.dcm"]
