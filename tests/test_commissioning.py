"""Site commissioning (cxr_monai.commissioning, configs/commission.json): the fit recovers known parameters, the
refusals, honest cross-validated intervals, and a site calibration carried into the deployed classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_monai import commissioning as C
from cxr_monai.data.splits import patient_id
from cxr_monai.transforms import load_lung_field
from tests.conftest import PROJECT_ROOT, SHARED_DATA

BUNDLE = PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier"
MODEL = {"name": "test model", "version": "9.9.9", "weights_sha256": "ab" * 32}


def _scores(n: int, a: float, b: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds L of a shipped model and labels drawn from the true site probability sigmoid(a * L + b)."""
    rng = np.random.default_rng(seed)
    logodds = rng.normal(1.0, 3.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-(a * logodds + b)))).astype(int)
    return logodds, labels


@pytest.mark.parametrize("a,b", [(0.6, -1.5), (1.4, 0.8), (1.0, 0.0)])
def test_fit_recovers_known_parameters(a: float, b: float) -> None:
    x, y = _scores(20000, a, b)
    fa, fb = C.fit_logistic_recalibration(x, y)
    assert fa == pytest.approx(a, abs=0.06) and fb == pytest.approx(b, abs=0.08)
    # the ridge is mild: at 20,000 images it moves the fit by far less than the tolerance
    ua, ub = C.fit_logistic_recalibration(x, y, ridge=0.0)
    assert abs(fa - ua) < 1e-3 and abs(fb - ub) < 1e-3


def test_ridge_keeps_a_separable_sample_finite_and_near_identity() -> None:
    x = np.r_[np.linspace(-6, -1, 25), np.linspace(1, 6, 25)]
    y = np.r_[np.zeros(25, int), np.ones(25, int)]  # perfectly separated: plain ML would run to infinity
    a, b = C.fit_logistic_recalibration(x, y)
    assert np.isfinite([a, b]).all() and 1.0 < a < 5.0 and abs(b) < 0.5


def test_site_rule_threshold_is_the_sample_prevalence() -> None:
    x, y = _scores(300, 0.7, -1.0, seed=3)
    a, b, thr, prev = C.fit_site_calibration(x, y)
    assert prev == pytest.approx(y.mean()) and thr == pytest.approx(prev)


def test_refuses_too_few_images_per_class() -> None:
    x, y = _scores(400, 0.8, 0.5, seed=1)
    keep = np.r_[np.flatnonzero(y == 0)[:19], np.flatnonzero(y == 1)[:60]]
    with pytest.raises(C.TooFewImagesError, match="at least 20 per class"):
        C.commission(x[keep], y[keep], MODEL, "site", n_repeats=2, n_boot=20)
    # 20 in scope is enough; out-of-scope images do not count toward the 20
    keep = np.r_[np.flatnonzero(y == 0)[:22], np.flatnonzero(y == 1)[:40]]
    in_scope = np.ones(keep.size, bool)
    in_scope[:3] = False
    with pytest.raises(C.TooFewImagesError):
        C.commission(x[keep], y[keep], MODEL, "site", in_scope=in_scope, n_repeats=2, n_boot=20)
    rep = C.commission(x[keep], y[keep], MODEL, "site", in_scope=np.ones(keep.size, bool), n_repeats=2, n_boot=20)
    assert rep["sample"]["in_scope_per_class"] == {"NORMAL": 22, "PNEUMONIA": 40}


def test_refuses_a_mostly_out_of_scope_sample() -> None:
    x, y = _scores(200, 0.8, 0.5, seed=2)
    in_scope = np.zeros(y.size, bool)
    in_scope[: y.size // 2 - 1] = True
    with pytest.raises(C.MostlyOutOfScopeError, match="outside the intended population"):
        C.commission(x, y, MODEL, "site", in_scope=in_scope, n_repeats=2, n_boot=20)


def test_refuses_a_sample_the_model_ranks_backwards() -> None:
    x, y = _scores(200, -1.0, 0.0, seed=9)  # swapped labels: the model's log-odds point the wrong way
    with pytest.raises(C.CommissioningError, match="not positive"):
        C.commission(x, y, MODEL, "site", n_repeats=2, n_boot=20)


def test_refuses_a_calibration_for_other_weights(tmp_path: Path) -> None:
    x, y = _scores(120, 0.7, -0.5, seed=4)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"the weights it was fitted for")
    model = {**MODEL, "weights_sha256": C.sha256_file(weights)}
    C.write_site_calibration(C.commission(x, y, model, "site-A", date="2026-01-02", n_repeats=2, n_boot=20),
                             tmp_path / "site", figure=False)
    site = C.load_site_calibration(tmp_path / "site", weights=weights)
    assert (site.site_id, site.date) == ("site-A", "2026-01-02")
    other = tmp_path / "other.pt"
    other.write_bytes(b"retrained weights")
    with pytest.raises(C.ModelMismatchError, match="commission the site again"):
        C.load_site_calibration(tmp_path / "site", weights=other)
    with pytest.raises(C.ModelMismatchError):
        C.load_site_calibration(tmp_path / "site" / C.SITE_FILE, weights_sha256="0" * 64)
    with pytest.raises(C.CommissioningError, match="no site calibration"):
        C.load_site_calibration(tmp_path / "nowhere", weights=weights)


def test_folds_keep_patients_whole_and_classes_balanced() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(60)], rng.integers(1, 4, 60))
    y = np.array([int(g[1:]) % 3 != 0 for g in groups], dtype=int)
    folds = C.grouped_stratified_folds(y, groups, 5, rng)
    for g in np.unique(groups):
        assert np.unique(folds[groups == g]).size == 1
    for c in (0, 1):
        counts = np.bincount(folds[y == c], minlength=5)
        assert counts.max() - counts.min() <= 3


def test_cross_validation_never_scores_the_fitted_images(monkeypatch) -> None:
    x, y = _scores(100, 0.6, -1.0, seed=5)
    seen: list[np.ndarray] = []
    real = C.fit_site_calibration

    def spy(lx, ly, ridge=C.RIDGE):
        seen.append(np.asarray(lx).copy())
        return real(lx, ly, ridge)

    import cxr_monai.commissioning.fit as fit_module

    monkeypatch.setattr(fit_module, "fit_site_calibration", spy)
    cv = C.cross_validate(x, y, n_folds=5, n_repeats=3, seed=1)
    assert len(seen) == 15
    for r in range(3):  # every image scored once per repeat, by a fit on the other folds
        assert np.isfinite(cv["probs"][r]).all()
    for fit_x, (r, f) in zip(seen, [(r, f) for r in range(3) for f in range(5)]):
        assert fit_x.size in range(75, 86)
        held = np.setdiff1d(x, fit_x)
        a, b = cv["a"][r, f], cv["b"][r, f]
        idx = np.flatnonzero(np.isin(x, held))
        np.testing.assert_allclose(cv["probs"][r, idx], 1 / (1 + np.exp(-(a * x[idx] + b))), rtol=1e-12)


def test_cv_intervals_contain_the_point_estimate() -> None:
    x, y = _scores(101, 0.6, -1.8, seed=6)
    rep = C.commission(x, y, MODEL, "site", n_repeats=10, n_boot=400)
    for name in ("accuracy", "sensitivity", "specificity", "auc", "ece"):
        e = rep["expected"][name]
        assert e["low"] <= e["estimate"] <= e["high"], (name, e)
        assert e["high"] - e["low"] > 0.0
        d = rep["default_on_sample"][name]
        assert d["low"] <= d["estimate"] <= d["high"], (name, d)
    # the recalibration repairs a miscalibrated model: CV ECE well below the default's on the same images
    assert rep["expected"]["ece"]["estimate"] < rep["default_on_sample"]["ece"]["estimate"]


def test_site_calibration_changes_the_deployed_answer(tmp_path: Path) -> None:
    """Export with and without a site file; classify() of a fixed image gives sigmoid(a * L_default + b)."""
    from cxr_monai.export import load_deploy_model, export_classifier
    from cxr_monai.inference import classify

    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("classifier weights not in the bundle")
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 192), torch.linspace(-1, 1, 192), indexing="ij")
    image = (0.5 + 0.3 * torch.cos(3 * xx) * torch.exp(-yy**2) + 0.05 * torch.rand(192, 192)).clamp(0, 1)[None]
    identity = C.model_identity(BUNDLE)
    a, b, thr = 0.55, -1.7, 0.6
    report = {"kind": "site_calibration", "site_id": "test-site", "date": "2026-02-03",
              "model": {"name": identity["name"], "version": identity["version"],
                        "weights_sha256": identity["weights_sha256"]},
              "calibration": {"a": a, "b": b, "threshold": thr,
                              "scope_gate_sha256": C.sha256_file(BUNDLE / "models" / "scope_gate.ts")}}
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / C.SITE_FILE).write_text(json.dumps(report))
    default = load_deploy_model(export_classifier(BUNDLE, tmp_path / "d" / "model.ts"), kind="classifier")
    site = load_deploy_model(export_classifier(BUNDLE, tmp_path / "s" / "model.ts", site_dir=tmp_path / "site"),
                             kind="classifier")
    assert default[1]["calibration"]["source"] == "default"
    cal = site[1]["calibration"]
    assert (cal["source"], cal["id"], cal["date"], cal["a"], cal["b"]) == ("site", "test-site", "2026-02-03", a, b)
    assert site[1]["threshold"] == thr
    lung = load_lung_field(BUNDLE / "models" / "lung_field.ts")  # used when the classifier names it (0.5.0: two views)
    r0, r1 = classify(default[0], image, default[1], lung_field=lung), classify(site[0], image, site[1], lung_field=lung)
    p0 = np.asarray(r0["probabilities"], dtype=np.float64)
    expected = 1.0 / (1.0 + np.exp(-(a * (np.log(p0[1]) - np.log(p0[0])) + b)))
    assert r1["probability"] == pytest.approx(expected, abs=1e-5)
    assert r1["threshold"] == thr and r1["label"] == ("PNEUMONIA" if r1["probability"] >= thr else "NORMAL")
    assert r0["calibration"]["source"] == "default" and r1["calibration"]["id"] == "test-site"
    assert cal["scope_gate_sha256"] == C.sha256_file(BUNDLE / "models" / "scope_gate.ts")
    # a site file commissioned with another scope gate is refused at export
    report["calibration"]["scope_gate_sha256"] = "1" * 64
    (tmp_path / "site" / C.SITE_FILE).write_text(json.dumps(report))
    with pytest.raises(C.ScopeGateError):
        export_classifier(BUNDLE, tmp_path / "g" / "model.ts", site_dir=tmp_path / "site")
    # a site file fitted for other weights is refused at export
    report["model"]["weights_sha256"] = "0" * 64
    (tmp_path / "site" / C.SITE_FILE).write_text(json.dumps(report))
    with pytest.raises(C.ModelMismatchError):
        export_classifier(BUNDLE, tmp_path / "x" / "model.ts", site_dir=tmp_path / "site")


def test_commission_bundle_on_the_site_sample(tmp_path: Path) -> None:
    """configs/commission.json for real on ../shared/data/kermany_site_sample (101 images)."""
    from monai.bundle import ConfigWorkflow

    data = SHARED_DATA / "kermany_site_sample"
    if not data.is_dir():
        pytest.skip(f"real data not found: {data} (set CXR_SHARED_DATA)")
    out = tmp_path / "hospital_x"
    wf = ConfigWorkflow(config_file=[str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "commission.json")],
                        meta_file=str(BUNDLE / "configs" / "metadata.json"), workflow_type="infer",
                        bundle_root=str(BUNDLE), dataset_dir=str(data), output_dir=str(out), date="2026-03-04",
                        n_boot=300, n_repeats=5)
    wf.initialize()
    wf.run()
    wf.finalize()
    rep = json.loads((out / C.SITE_FILE).read_text())
    assert (out / C.SITE_FIGURE).is_file() and rep["figure"] == C.SITE_FIGURE
    assert rep["site_id"] == "hospital_x" and rep["date"] == "2026-03-04" and rep["kind"] == "site_calibration"
    assert rep["model"]["weights_sha256"] == C.sha256_file(BUNDLE / "models" / "model.pt")
    assert rep["model"]["version"] == json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    s = rep["sample"]
    assert s["n"] == 101 and s["n_in_scope"] + s["n_out_of_scope"] == 101
    assert sum(s["in_scope_per_class"].values()) == s["n_in_scope"] and len(s["out_of_scope"]) == s["n_out_of_scope"]
    cal = rep["calibration"]
    assert cal["threshold"] == pytest.approx(s["in_scope_per_class"]["PNEUMONIA"] / s["n_in_scope"])
    # no --prevalence: the sample's, said loudly; patients from the Kermany names, said so
    assert cal["prevalence"] == cal["threshold"] and rep["warnings"][0].startswith("PREVALENCE NOT STATED")
    assert s["patients"]["images_by_source"]["kermany_file_name_rule"] == 101
    refused = {Path(o["file"]).name for o in s["out_of_scope"]}
    in_scope = [f for c in ("NORMAL", "PNEUMONIA") for f in sorted((data / c).iterdir()) if f.name not in refused]
    assert s["n_patients_in_scope"] == len({patient_id(f) for f in in_scope}) < s["n_in_scope"]
    assert rep["expected"]["resampled"] == "patients"
    assert 0.2 < cal["a"] < 2.0 and np.isfinite(cal["b"])
    for name in ("accuracy", "sensitivity", "specificity", "auc", "ece"):
        e = rep["expected"][name]
        assert e["low"] <= e["estimate"] <= e["high"]
    assert rep["expected"]["n"] == s["n_in_scope"] and rep["expected"]["n_repeats"] == 5
    d = rep["default_on_sample"]
    assert d["threshold"] == pytest.approx(0.7434, abs=1e-3) and d["n"] == s["n_in_scope"]
    # the written file is what the bundle and the deploy export load
    site = C.load_site_calibration(out, weights=BUNDLE / "models" / "model.pt")
    assert site.a == cal["a"] and site.site_id == "hospital_x"
    # inference.json --site_dir applies it (a * L + b, site threshold) and says so; the default run says default
    image = sorted((data / "NORMAL").iterdir())[0]
    rows = {}
    for name, extra in (("default", {}), ("site", {"site_dir": str(out)})):
        wf = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "inference.json"),
                            meta_file=str(BUNDLE / "configs" / "metadata.json"), workflow_type="infer",
                            bundle_root=str(BUNDLE), dataset_dir=str(image), output_dir=str(tmp_path / name),
                            gradcam_layer=None, use_scope_gate=False, **extra)
        wf.initialize()
        wf.run()
        wf.finalize()
        rows[name] = json.loads((tmp_path / name / "predictions.json").read_text())[0]
    assert rows["default"]["calibration"] == "default" and rows["site"]["calibration"] == "site:hospital_x:2026-03-04"
    p = rows["default"]["probability"]
    assert rows["site"]["probability"] == pytest.approx(float(site.probabilities([np.log(p / (1 - p))])[0]), abs=1e-5)


@pytest.mark.parametrize("source", ["default", "site"])
def test_sr_report_states_the_calibration_in_force(tmp_path: Path, source: str) -> None:
    import pydicom

    from cxr_monai import dicom as D
    from cxr_monai.data.phantom import write_phantom_dicom

    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "p.dcm", size=128))
    site = C.SiteCalibration(0.62, -1.85, 0.594, "hospital_x", "2026-03-04", "ab" * 32)
    cal = site.summary() if source == "site" else C.calibration_in_force(None, 0.7434)
    result = {"probability": 0.7, "label": "PNEUMONIA", "threshold": cal["threshold"], "calibration": cal}
    report = D.pneumonia_report(ds, result, {"model_name": "m", "version": "1"}, sr_applied=False,
                                series_uid=D.new_uid(), series_number=9002)
    report = pydicom.dcmread(D.write_dataset(report, tmp_path / "sr.dcm"))

    def texts(items) -> list[tuple[str, str]]:
        out = []
        for item in items:
            if getattr(item, "ValueType", "") == "TEXT":
                out.append((item.ConceptNameCodeSequence[0].CodeMeaning, str(item.TextValue)))
            out += texts(getattr(item, "ContentSequence", []))
        return out

    found = dict(texts(report.ContentSequence))
    assert found["Calibration in force"] == C.describe_calibration(cal)
    named = "site calibration 'hospital_x' commissioned 2026-03-04" in found["Calibration in force"]
    assert named == (source == "site")


def test_collector_uses_the_scope_check_it_is_given() -> None:
    """The scope function is a parameter: a stand-in gate refusing some images keeps them out of the fit."""
    from types import SimpleNamespace

    from monai.data import MetaTensor

    from cxr_monai.scope import ScopeDecision

    calls = []

    def stand_in(x: torch.Tensor, metas) -> list:
        calls.append((tuple(x.shape), len(metas)))
        return [ScopeDecision(True) if m["adult"] == 0 else ScopeDecision(False, "header: adult") for m in metas]

    col = C.CommissioningCollector(scope_check=stand_in, temperature=2.0)
    x, y = _scores(60, 0.7, -0.3, seed=8)
    for start in range(0, 60, 16):
        batch = [{"pred": torch.tensor([0.0, float(2.0 * x[i])]), "label": torch.tensor(int(y[i])),
                  "image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": f"img{i}.png",
                                                                   "adult": i % 10 == 0})}
                 for i in range(start, min(start + 16, 60))]
        col.iteration_completed(SimpleNamespace(state=SimpleNamespace(output=batch)))
    assert calls[0] == ((16, 1, 8, 8), 16) and len(col.labels) == 60
    np.testing.assert_allclose(col.logodds, x, rtol=1e-6, atol=1e-5)  # (z1 - z0) / T
    assert sum(not s for s in col.in_scope) == 6 and col.reasons[0] == "header: adult"
    rep = C.commission(col.logodds, col.labels, MODEL, "s", in_scope=col.in_scope, scope_reasons=col.reasons,
                       files=col.files, n_repeats=2, n_boot=20, min_per_class=5)
    assert rep["sample"]["n_out_of_scope"] == 6 and rep["sample"]["out_of_scope"][0]["file"] == "img0.png"
    assert rep["expected"]["n"] == 54
