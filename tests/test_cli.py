"""`python -m cxr_monai demo`: the default phantom run and a run on the shared DICOMs (non-chest skipped)."""

from __future__ import annotations

import json

import pytest

from cxr_monai.cli import demo
from tests.conftest import PROJECT_ROOT, require_shared


def _classifier_bundle_with_threshold(tmp_path, threshold: float):
    """A copy of the bundles whose classifier calls every in-scope image PNEUMONIA (threshold 0): the constant
    model the demo's checks must tell from the shipped one."""
    import shutil

    root = tmp_path / "constant_bundles"
    shutil.copytree(PROJECT_ROOT / "bundles", root, ignore=shutil.ignore_patterns("runs", "eval*", "docs"))
    cal = root / "cxr_pneumonia_classifier" / "models" / "calibration.json"
    cal.write_text(json.dumps({**json.loads(cal.read_text()), "threshold": threshold}))
    return root


def _demo_labels(summary) -> dict[str, str]:
    cls = [s for s in summary["steps"] if s["step"] == "pneumonia_classification"][0]
    return {p["file"].rsplit("/", 1)[-1]: p["label"] for p in cls["predictions"]}


def _assert_reads_both_classes(labels: dict[str, str]) -> None:
    assert labels["NORMAL_IM-0261-0001.dcm"] == "NORMAL", labels
    assert labels["PNEUMONIA_person1030_virus_1722.dcm"] == "PNEUMONIA", labels


def test_demo_default_reads_a_normal_and_a_pneumonia_film(tmp_path):
    """The default demo: the two real example films (one NORMAL, one PNEUMONIA, never trained on) and the phantom;
    each real film gets its own class, so a model that always answers PNEUMONIA fails here."""
    summary = demo(None, str(tmp_path), bundles_dir=PROJECT_ROOT / "bundles",
                   examples_dir=PROJECT_ROOT / "examples" / "kermany")
    names = sorted(i["file"].rsplit("/", 1)[-1] for i in summary["inputs"])
    assert names == ["NORMAL_IM-0261-0001.dcm", "PNEUMONIA_person1030_virus_1722.dcm", "phantom_cxr.dcm"]
    assert all(i["modality"] == "CR" for i in summary["inputs"])
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert len(list((tmp_path / "preview").glob("*.png"))) == 3
    _assert_reads_both_classes(_demo_labels(summary))
    assert len(list((tmp_path / "classification" / "gradcam").glob("*.png"))) >= 2  # the in-scope ones


@pytest.mark.slow
def test_demo_checks_fail_for_a_constant_pneumonia_model(tmp_path):
    """The same demo (without SR, to keep it short) with the classifier's threshold at 0 (everything in scope called
    PNEUMONIA): the check of the previous test must fail, or it could not tell a working classifier from a
    constant one."""
    bundles = _classifier_bundle_with_threshold(tmp_path, 0.0)
    summary = demo(None, str(tmp_path / "out"), sr_max_side=0, bundles_dir=bundles,
                   examples_dir=PROJECT_ROOT / "examples" / "kermany")
    with pytest.raises(AssertionError):
        _assert_reads_both_classes(_demo_labels(summary))


def test_demo_on_shared_dicoms_skips_the_extremity(tmp_path):
    folder = require_shared("dicom")
    summary = demo(str(folder), str(tmp_path), bundles_dir=PROJECT_ROOT / "bundles")
    skipped = {s["file"].rsplit("/", 1)[-1] for s in summary["skipped"]}
    assert "cr_extremity_mono1_j2k.dcm" in skipped
    assert len(summary["inputs"]) == 3
    sr = [s for s in summary["steps"] if s["step"] == "super_resolution_x4"]
    # only the small DX image is super-resolved; the 1024 px CR images are already full resolution
    assert len(sr) == 1 and [f.rsplit("/", 1)[-1] for f in sr[0]["files"]] == ["dx_thorax_mono1_small.dcm"]
