"""The intended-population gate: header rules, the image check of the shipped gate, its network pieces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_monai.io import load_cxr
from cxr_monai.scope import (MAX_AGE_YEARS, NEGATIVE_KINDS, OUT_OF_SCOPE, ScopeDecision, ScopeGateModule,
                             gate_lung_field_of, header_scope_reason, load_scope_gate, negative_set,
                             patient_age_years, scope_net)
from cxr_monai.transforms import load_lung_field
from cxr_monai.scope.training import adult_split, augment_batch, fit_feature_stats, preprocess_images

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "cxr_pneumonia_classifier"
GATE_FILE = BUNDLE / "models" / "scope_gate.ts"
REPORT = BUNDLE / "docs" / "results" / "scope_gate.json"
SHARED = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data not found at {SHARED} (CXR_SHARED_DATA)")


def _meta(**tags) -> dict:
    base = {"modality": tags.pop("modality", "CR"), "body_part": tags.pop("body_part", "CHEST"),
            "colourfulness": tags.pop("colourfulness", 0.0)}
    return {**base, "dicom_tags": {k: str(v) for k, v in tags.items()}}


# ------------------------------------------------------------------------------------------ header rules

@pytest.mark.parametrize(("tags", "years"), [
    ({"PatientAge": "003Y"}, 3.0), ({"PatientAge": "018M"}, 1.5), ({"PatientAge": "010W"}, 70 / 365.25),
    ({"PatientAge": "045Y"}, 45.0), ({"PatientAge": "garbage", "PatientBirthDate": "20100101", "StudyDate": "20150101"},
                                     1826 / 365.25),
    ({"PatientBirthDate": "20200101", "StudyDate": "20190101"}, None), ({}, None),
])
def test_patient_age_years(tags, years) -> None:
    got = patient_age_years(tags)
    if years is None:
        assert got is None
    else:
        assert got == pytest.approx(years, rel=1e-6)


def test_header_rules_each_refuse_with_their_reason() -> None:
    assert header_scope_reason(_meta(PatientAge="004Y", ViewPosition="PA")) is None
    assert header_scope_reason(None) is None
    assert header_scope_reason({"modality": None, "body_part": None, "dicom_tags": {}}) is None  # a PNG: no headers
    assert "age 45.0" in header_scope_reason(_meta(PatientAge="045Y"))
    assert "age" in header_scope_reason(_meta(PatientBirthDate="19700101", StudyDate="20200101"))
    assert header_scope_reason(_meta(PatientAge=f"{int(MAX_AGE_YEARS):03d}Y")) is None  # the limit itself is in
    assert header_scope_reason(_meta(PatientAge=f"{int(MAX_AGE_YEARS) + 1:03d}Y")) is not None
    assert "modality 'CT'" in header_scope_reason(_meta(modality="CT", body_part=None))
    assert "modality 'OT'" in header_scope_reason(_meta(modality="OT"))
    assert "HAND" in header_scope_reason(_meta(body_part="HAND"))
    assert "lateral" in header_scope_reason(_meta(ViewPosition="LL"))
    assert "colour" in header_scope_reason({"colourfulness": 0.2, "dicom_tags": {}})


def test_colourfulness_is_measured_on_colour_sources(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    colour = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert load_cxr(tmp_path / "grey_rgb.png")[1]["colourfulness"] == pytest.approx(0.0, abs=1e-9)
    assert load_cxr(tmp_path / "colour.png")[1]["colourfulness"] > 0.3
    assert "colour" in header_scope_reason(load_cxr(tmp_path / "colour.png")[1])
    assert header_scope_reason(load_cxr(tmp_path / "grey_rgb.png")[1]) is None


# ------------------------------------------------------------------------------------------ network pieces

def test_gate_module_distance_is_mahalanobis() -> None:
    torch.manual_seed(0)
    net = scope_net("tiny").eval()
    x = torch.rand(6, 1, 64, 64)
    with torch.no_grad():
        f = net.features(x)
    mean, precision = fit_feature_stats(torch.randn(200, net.feature_dim) * 0.1 + f.mean(0))
    out = ScopeGateModule(net, mean, precision).eval()(x).detach()
    d = (f - mean).double()
    expected = torch.sqrt(((d @ precision.double()) * d).sum(1))
    torch.testing.assert_close(out[:, 1].double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, 0], torch.sigmoid(net(x)).detach(), rtol=1e-5, atol=1e-6)


def test_fit_feature_stats_inverts_the_shrunk_covariance() -> None:
    f = torch.randn(500, 8) * torch.arange(1, 9)
    mean, precision = fit_feature_stats(f, shrinkage=0.0)
    torch.testing.assert_close(mean, f.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(precision.double() @ torch.cov(f.T.double()), torch.eye(8, dtype=torch.float64),
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError):
        fit_feature_stats(torch.randn(1, 8))


def test_augment_batch_keeps_range_and_changes_images() -> None:
    x = torch.rand(4, 1, 32, 32)
    y = augment_batch(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float((y - x).abs().mean()) > 0.05
    torch.testing.assert_close(augment_batch(x, torch.Generator().manual_seed(0)), y)


def test_negatives_are_images_of_the_contract() -> None:
    images, kinds = negative_set(2, seed=3, size=64)
    assert len(images) == 2 * len(NEGATIVE_KINDS) and set(kinds) == set(NEGATIVE_KINDS)
    for img in images:
        assert img.shape == (1, 64, 64) and img.dtype == np.float32
        assert float(img.min()) == 0.0 and float(img.max()) == 1.0


# ------------------------------------------------------------------------------------------ the shipped gate

@pytest.fixture(scope="module")
def gate():
    return load_scope_gate(GATE_FILE)


@pytest.fixture(scope="module")
def gate_lung():
    """The lung-field network the shipped gate reads its own view through (``None`` for a whole-film gate)."""
    path = gate_lung_field_of(GATE_FILE)
    return load_lung_field(path) if path else None


def _decide(gate, lung, items, framing=None):
    """The shipped gate's decisions on its own view of ``items`` (paths or arrays), with the lung-field rule."""
    x, boxes = preprocess_images(items, gate.image_size, lung_field=lung, framing=framing, return_boxes=True)
    return gate.check(x.float() / 255.0, [{"lung_field": b} if b else None for b in boxes])


def test_shipped_gate_refuses_generated_non_radiographs(gate, gate_lung) -> None:
    """New procedural images (a seed never used in training): every kind refused, by the image check or because
    no lungs are found on them."""
    images, kinds = negative_set(6, seed=12345, size=224)
    decisions = _decide(gate, gate_lung, images)
    refused = {k: 0 for k in NEGATIVE_KINDS}
    for k, d in zip(kinds, decisions):
        refused[k] += not d.in_scope
    assert all(v == 6 for v in refused.values()), refused
    assert all(d.reason.startswith(("image check:", "lung field:")) for d in decisions)


@needs_shared
def test_shipped_gate_keeps_validation_radiographs_and_refuses_held_out_adults(gate, gate_lung) -> None:
    """In-population validation images (the classifier's own validation split) are kept at the calibrated rate;
    adults the gate never trained on (the held-out 30 %) are refused."""
    from cxr_monai.data import training_split

    val = training_split(SHARED / "kermany224" / "train", 0.15, 0)[1][::4]  # every 4th: ~200 images
    refused_val = np.mean([not d.in_scope for d in _decide(gate, gate_lung, [it["image"] for it in val])])
    assert refused_val <= 0.03, refused_val  # calibrated to at most 2 % on the whole split
    adults = adult_split(SHARED / "adult_normal_nih")[1][::3]  # ~80 of the 240 held out
    refused_adults = np.mean([not d.in_scope for d in _decide(gate, gate_lung, adults)])
    assert refused_adults >= 0.9, refused_adults


@needs_shared
def test_shipped_gate_pass_region_edges(gate, gate_lung) -> None:
    """The tested pass region's edges (model card, "Intended use"): children's films collimated to 0.7 of each side
    stay in scope; the same films upside down or turned 90 degrees, and held-out adults cropped to 0.7 and 0.5,
    are refused."""
    if gate_lung is None:
        pytest.fail("the shipped gate reads no lung-field view: the pass region below is not its own")
    from cxr_monai.data import training_split

    kids = [it["image"] for it in training_split(SHARED / "kermany224" / "train", 0.15, 0)[1][::20]]  # 40 films
    kept = {f: np.mean([d.in_scope for d in _decide(gate, gate_lung, kids, f)]) for f in ("crop:0.7", "rot:180", "rot:90")}
    assert kept["crop:0.7"] >= 0.9 and kept["rot:180"] == 0.0 and kept["rot:90"] == 0.0, kept
    adults = adult_split(SHARED / "adult_normal_nih")[1][::6]  # 40 of the 240 held out
    for f in ("crop:0.7", "crop:0.5"):
        refused = np.mean([not d.in_scope for d in _decide(gate, gate_lung, adults, f)])
        assert refused >= 0.9, (f, refused)


@needs_shared
def test_shipped_gate_on_dicom_headers_and_pixels(gate, gate_lung) -> None:
    """The extremity CR is refused by its header and, with its tags ignored, by its pixels; a paediatric chest
    with an adult PatientAge is refused by the header rule only."""
    from cxr_monai.inference import check_scope

    image, meta = load_cxr(SHARED / "dicom" / "cr_extremity_mono1_j2k.dcm")
    d = check_scope(gate, image, meta, lung_field=gate_lung)
    assert not d.in_scope and d.reason.startswith("header:") and "EXTREMITY" in d.reason
    assert not check_scope(gate, image, None, lung_field=gate_lung).in_scope
    child = sorted((SHARED / "kermany224" / "train" / "NORMAL").iterdir())[0]
    image, meta = load_cxr(child)
    assert check_scope(gate, image, meta, lung_field=gate_lung).in_scope
    adult_tags = {**meta, "modality": "CR", "dicom_tags": {**meta["dicom_tags"], "PatientAge": "052Y"}}
    d = check_scope(gate, image, adult_tags, lung_field=gate_lung)
    assert not d.in_scope and "age 52.0" in d.reason


def test_shipped_gate_report_meets_its_targets() -> None:
    """The committed check report (configs/scope_train.json) shows the calibration rule held: at most 2 % of the
    in-population validation split refused, every held-out procedural kind refused."""
    report = json.loads(REPORT.read_text())
    val = report["in_population_validation"]
    if "whole" in val:  # a gate trained at every framing reports each: the pass region kept, turned films refused
        for framing in ("whole", "crop:0.85", "crop:0.7", "pad:1.3", "rot:10", "rot:-10"):
            assert val[framing]["fraction_out_of_scope"] <= 0.02, (framing, val[framing])
        assert val["rot:180"]["fraction_out_of_scope"] >= 0.99 and val["rot:90"]["fraction_out_of_scope"] >= 0.99
    else:
        assert val["fraction_out_of_scope"] <= 0.02
    assert all(v["fraction_out_of_scope"] == 1.0 for v in report["generated_held_out"].values())
    thresholds = report["gate"]["thresholds"]
    gate_info = load_scope_gate(GATE_FILE).info
    assert gate_info["thresholds"] == thresholds  # the report belongs to the shipped file


def test_scope_decision_defaults() -> None:
    assert ScopeDecision(True).as_dict() == {"in_scope": True, "reason": "", "probability": None, "distance": None,
                                             "lung_field": None}
    assert OUT_OF_SCOPE == "OUT_OF_SCOPE"
