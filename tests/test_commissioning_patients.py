"""Commissioning on a site's own export (cxr_monai.commissioning): patients from DICOM PatientID / patients.csv /
Kermany names and the refusals when the grouping collapses, the patient bootstrap, the correction to a stated
prevalence, and the scope gate's hash checked wherever a site calibration is loaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cxr_monai import commissioning as C
from cxr_monai.commissioning import patients as P
from tests.conftest import PROJECT_ROOT, SHARED_DATA
from tests.site_dicom import export_site_sample_dicom

BUNDLE = PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier"
MODEL = {"name": "test model", "version": "9.9.9", "weights_sha256": "ab" * 32}


def _clustered(n_patients: int, per_patient: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores where a patient's images are near copies (one patient-level score): correlated images."""
    rng = np.random.default_rng(seed)
    y_p = (np.arange(n_patients) % 2).astype(int)
    x_p = rng.normal(np.where(y_p == 1, 1.0, -1.0), 1.6)
    x = np.repeat(x_p, per_patient) + rng.normal(0, 0.01, n_patients * per_patient)
    return x, np.repeat(y_p, per_patient), np.repeat([f"p{i}" for i in range(n_patients)], per_patient)


# --------------------------------------------------------------------------------------------- patients


@pytest.fixture(scope="module")
def dicom_sample(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    data = SHARED_DATA / "kermany_site_sample"
    if not data.is_dir():
        pytest.skip(f"real data not found: {data} (set CXR_SHARED_DATA)")
    out = tmp_path_factory.mktemp("dicom_site")
    return out, export_site_sample_dicom(data, out)


def test_patients_come_from_dicom_patient_id(dicom_sample) -> None:
    root, truth = dicom_sample
    files = sorted(truth)
    assert all(P.kermany_patient_id(f) is None for f in files)  # the names say nothing about the patient
    pats = C.resolve_patients(files, root)
    assert list(pats.ids) == [truth[f] for f in files]
    assert len(set(pats.ids)) == 67 and set(pats.sources) == {P.SOURCE_DICOM}
    assert pats.summary()["images_by_source"][P.SOURCE_DICOM] == 101


def test_unknown_patients_are_refused_and_patients_csv_names_them(tmp_path: Path) -> None:
    files = []
    for i in range(6):
        f = tmp_path / "NORMAL" / f"anon_{i:03d}.png"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"not read")
        files.append(f)
    with pytest.raises(C.UnknownPatientError, match="no known patient.*patients.csv"):
        C.resolve_patients(files, tmp_path)
    (tmp_path / "patients.csv").write_text("file,patient\n" + "".join(
        f"NORMAL/{f.name},P{i // 2}\n" for i, f in enumerate(files)))
    pats = C.resolve_patients(files, tmp_path)
    assert pats.ids == ("P0", "P0", "P1", "P1", "P2", "P2") and set(pats.sources) == {P.SOURCE_CSV}
    # Kermany-style names still work without a csv, and are reported as the file-name rule
    k = C.resolve_patients([tmp_path / "person12_virus_3.jpeg", tmp_path / "IM-0001-0002.jpeg"])
    assert k.ids == ("person12", "IM-0001") and set(k.sources) == {P.SOURCE_FILE_NAME}
    (tmp_path / "patients.csv").write_text("image,who\nx,y\n")
    with pytest.raises(C.PatientGroupingError, match="columns 'file' and 'patient'"):
        C.resolve_patients(files, tmp_path)


def test_refuses_too_few_patients_per_class() -> None:
    x, y, g = _clustered(60, 3)
    g = np.where(y == 1, np.char.add("pos", (np.arange(y.size) % 19).astype(str)), g)  # 19 PNEUMONIA patients
    with pytest.raises(C.PatientGroupingError, match="at least 20 distinct patients per class"):
        C.commission(x, y, MODEL, "site", groups=g, n_repeats=2, n_boot=20)
    x, y, g = _clustered(40, 3)  # 20 per class: accepted
    rep = C.commission(x, y, MODEL, "site", groups=g, n_repeats=2, n_boot=20, prevalence=0.3)
    assert rep["sample"]["n_patients_in_scope"] == 40
    assert rep["sample"]["patients_in_scope_per_class"] == {"NORMAL": 20, "PNEUMONIA": 20}


def test_refuses_one_patient_holding_most_images() -> None:
    x, y, g = _clustered(60, 2)
    g = g.copy()
    g[: int(0.6 * g.size)] = "ANON"  # an anonymiser that wrote one PatientID for most files
    with pytest.raises(C.PatientGroupingError, match="holds .* of 120 in-scope images"):
        C.commission(x, y, MODEL, "site", groups=g, n_repeats=2, n_boot=20)


def test_bundle_run_refuses_with_a_message_not_a_traceback(dicom_sample, tmp_path: Path) -> None:
    """run_commissioning (the bundle's last step) on the DICOM export with one PatientID for all: SystemExit with
    the reason, the typed error as its cause."""
    root, _ = dicom_sample
    same = tmp_path / "same"
    truth = export_site_sample_dicom(SHARED_DATA / "kermany_site_sample", same, patient_id="1")
    files = sorted(truth)
    col = C.CommissioningCollector()
    col.files, col.labels = files, [int("PNEUMONIA" in f) for f in files]
    col.logodds, col.in_scope = list(np.linspace(-3, 3, len(files))), [True] * len(files)
    col.reasons, col.gate_scores = [""] * len(files), [(None, None)] * len(files)
    with pytest.raises(SystemExit, match="PatientGroupingError.*patient '1' holds 101 of 101") as err:
        C.run_commissioning(col, tmp_path / "site", BUNDLE, "s", dataset_dir=str(same), scope_check="none")
    assert isinstance(err.value.__cause__, C.PatientGroupingError)
    assert not (tmp_path / "site" / C.SITE_FILE).exists()


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_resamples_patients_and_widens_the_intervals() -> None:
    x, y, g = _clustered(40, 5, seed=3)  # 200 images, 40 patients of 5 near-identical images
    cv = C.cross_validate(x, y, g, n_repeats=3, seed=0)
    by_image = C.cv_bootstrap(cv["probs"], cv["decisions"], y, n_boot=400, seed=1)
    by_patient = C.cv_bootstrap(cv["probs"], cv["decisions"], y, n_boot=400, seed=1, groups=g)
    assert by_patient["resampled"] == "patients" and by_patient["n_patients"] == 40
    for name in ("accuracy", "auc"):
        w_img = by_image[name]["high"] - by_image[name]["low"]
        w_pat = by_patient[name]["high"] - by_patient[name]["low"]
        assert w_pat > 1.6 * w_img, (name, w_pat, w_img)  # about sqrt(5) wider: 5 images carry one patient's worth
        assert by_patient[name]["estimate"] == pytest.approx(by_image[name]["estimate"], rel=1e-9)
    # one image per patient (names in image order): exactly the image bootstrap
    single = C.cv_bootstrap(cv["probs"], cv["decisions"], y, n_boot=50, seed=2, groups=[f"{i:04d}" for i in range(y.size)])
    plain = C.cv_bootstrap(cv["probs"], cv["decisions"], y, n_boot=50, seed=2)
    for name in ("accuracy", "auc", "ece"):
        assert single[name]["low"] == pytest.approx(plain[name]["low"], rel=1e-5)
        assert single[name]["high"] == pytest.approx(plain[name]["high"], rel=1e-5)


# ----------------------------------------------------------------------------------------- prevalence


def test_prevalence_correction_on_known_scores() -> None:
    """Class-conditional log-odds N(+1, 1) / N(-1, 1): the true posterior at prevalence pi is
    sigmoid(2 L + logit(pi)). Commissioned on an enriched sample (60 % PNEUMONIA) with --prevalence 0.2, the site
    probabilities are the posterior at 0.2 and the threshold is 0.2."""
    rng = np.random.default_rng(0)
    n = 20000
    y = (rng.random(n) < 0.6).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    rep = C.commission(x, y, MODEL, "site", prevalence=0.2, n_repeats=1, n_boot=10, ridge=0.0)
    cal = rep["calibration"]
    assert cal["prevalence"] == 0.2 and cal["threshold"] == 0.2 and cal["prevalence_source"].startswith("stated")
    assert cal["sample_prevalence"] == pytest.approx(y.mean(), rel=1e-9)
    assert cal["a"] == pytest.approx(2.0, abs=0.06) and cal["b"] == pytest.approx(math.log(0.2 / 0.8), abs=0.06)
    # the shift is exactly logit(0.2) - logit(sample prevalence) on top of the sample fit
    a0, b0, thr0, prev0 = C.fit_site_calibration(x, y, 0.0)
    assert cal["b"] == pytest.approx(b0 + math.log(0.2 / 0.8) - math.log(prev0 / (1 - prev0)), rel=1e-5)
    # decisions do not change: sigmoid(a L + b) >= 0.2 exactly where the sample fit's p >= its prevalence
    p_site = C.sigmoid(cal["a"] * x + cal["b"])
    p_sample = C.sigmoid(a0 * x + b0)
    assert np.mean((p_site >= 0.2) == (p_sample >= prev0)) > 0.999
    # calibrated in a population at prevalence 0.2: mean probability = observed share (resampled to 20 %)
    idx = np.r_[np.flatnonzero(y == 1)[:1000], np.flatnonzero(y == 0)[:4000]]
    assert p_site[idx].mean() == pytest.approx(0.2, abs=0.015) and p_sample[idx].mean() > 0.35
    assert rep["warnings"] == []
    with pytest.raises(C.CommissioningError, match="prevalence must be in"):
        C.commission(x, y, MODEL, "site", prevalence=1.2, n_repeats=1, n_boot=10)


def test_without_prevalence_the_report_says_so() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.6).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    rep = C.commission(x, y, MODEL, "site", n_repeats=1, n_boot=10)
    assert rep["calibration"]["prevalence"] == pytest.approx(y.mean()) == rep["calibration"]["threshold"]
    assert "NOT stated" in rep["calibration"]["prevalence_source"]
    assert len(rep["warnings"]) == 1 and rep["warnings"][0].startswith("PREVALENCE NOT STATED")


# ---------------------------------------------------------------------------------------- the gate's hash


def _site_file(folder: Path, gate_sha: str | None, weights: Path) -> Path:
    x, y, g = _clustered(44, 2, seed=5)
    rep = C.commission(x, y, {**MODEL, "weights_sha256": C.sha256_file(weights)}, "s", groups=g, n_repeats=2,
                       n_boot=20, prevalence=0.3)
    rep["calibration"]["scope_gate_sha256"] = gate_sha
    return C.write_site_calibration(rep, folder, figure=False)


def test_site_calibration_needs_its_own_scope_gate(tmp_path: Path) -> None:
    weights, gate, other = tmp_path / "model.pt", tmp_path / "gate.ts", tmp_path / "other_gate.ts"
    weights.write_bytes(b"weights")
    gate.write_bytes(b"the gate commissioned with")
    other.write_bytes(b"a retrained gate")
    _site_file(tmp_path / "site", C.sha256_file(gate), weights)
    cal = C.load_site_calibration(tmp_path / "site", weights=weights, scope_gate=gate)
    assert cal.scope_gate_sha256 == C.sha256_file(gate) and cal.prevalence == 0.3
    with pytest.raises(C.ScopeGateError, match="commission the site again for this gate"):
        C.load_site_calibration(tmp_path / "site", weights=weights, scope_gate=other)
    with pytest.raises(C.ScopeGateError, match="gate not found"):
        C.load_site_calibration(tmp_path / "site", weights=weights, scope_gate=tmp_path / "missing.ts")
    # --use_scope_gate False: the caller passes no gate, nothing to check
    assert C.load_site_calibration(tmp_path / "site", weights=weights).site_id == "s"
    # commissioned without a gate, loaded with one
    _site_file(tmp_path / "nogate", None, weights)
    with pytest.raises(C.ScopeGateError, match="commissioned without the intended-population gate"):
        C.load_site_calibration(tmp_path / "nogate", weights=weights, scope_gate=gate)
    # the deployed pair: the classifier's embedded calibration against the deployed gate's hash
    info = {"calibration": {**cal.summary(), "file": None}}
    C.check_deployed_gate(info, {"weights_sha256": C.sha256_file(gate)})
    with pytest.raises(C.ScopeGateError):
        C.check_deployed_gate(info, {"weights_sha256": C.sha256_file(other)})
    C.check_deployed_gate({"calibration": {"source": "default"}}, {"weights_sha256": "x"})


def test_commissioning_refuses_a_missing_gate(tmp_path: Path) -> None:
    with pytest.raises(C.ScopeGateError, match="use_scope_gate False"):
        C.default_scope_check(tmp_path / "scope_gate.ts")


# ------------------------------------------------------------------------------------------ the bundle


@pytest.mark.slow
def test_commission_bundle_on_a_dicom_export_with_prevalence(dicom_sample, tmp_path: Path) -> None:
    """The done-when check: commission.json --prevalence 0.3 on the site sample exported as DICOM named by
    SOPInstanceUID: groups by PatientID (the true 65 in-scope patients), records the prevalence, and leaves the
    monitor's reference."""
    from monai.bundle import ConfigWorkflow

    root, truth = dicom_sample
    out = tmp_path / "site_dcm"
    wf = ConfigWorkflow(config_file=[str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "commission.json")],
                        meta_file=str(BUNDLE / "configs" / "metadata.json"), workflow_type="infer",
                        bundle_root=str(BUNDLE), dataset_dir=str(root), output_dir=str(out), prevalence=0.3,
                        n_boot=200, n_repeats=3)
    wf.initialize()
    wf.run()
    wf.finalize()
    rep = json.loads((out / C.SITE_FILE).read_text())
    s, cal = rep["sample"], rep["calibration"]
    kept = [f for f in sorted(truth) if f not in {o["file"] for o in s["out_of_scope"]}]
    assert s["n"] == 101 and s["n_patients_in_scope"] == len({truth[f] for f in kept})
    assert 60 <= s["n_patients_in_scope"] <= 67
    assert s["patients"]["images_by_source"][P.SOURCE_DICOM] == 101
    assert cal["prevalence"] == 0.3 and cal["threshold"] == 0.3 and rep["warnings"] == []
    n_pos = s["in_scope_per_class"]["PNEUMONIA"]
    pi = n_pos / s["n_in_scope"]
    assert cal["sample_prevalence"] == pytest.approx(pi, rel=1e-9)
    assert rep["expected"]["resampled"] == "patients"
    assert cal["scope_gate_sha256"] == C.sha256_file(BUNDLE / "models" / "scope_gate.ts")
    assert (out / "monitor_reference.json").is_file()
    site = C.load_site_calibration(out, weights=BUNDLE / "models" / "model.pt",
                                   scope_gate=BUNDLE / "models" / "scope_gate.ts")
    assert site.prevalence == 0.3
    # the monitor on streams through the deployed path: like the sample (drawn at the stated prevalence) -> quiet;
    # tightly collimated (0.7 central crops) -> alert; 30 % adults mixed in -> alert (60-image windows)
    from cxr_monai.commissioning.monitor import run_monitor
    from cxr_monai.io import load_cxr
    from cxr_monai.studies.monitor_streams import alter, deployed_assessor

    assess = deployed_assessor(BUNDLE, out, tmp_path / "deploy")
    rng = np.random.default_rng(0)
    files = sorted(truth)
    pos = [f for f in files if "/PNEUMONIA/" in f]
    neg = [f for f in files if "/NORMAL/" in f]
    stream = list(rng.choice(pos, 18)) + list(rng.choice(neg, 42))  # 60 images at prevalence 0.3
    adults = sorted((SHARED_DATA / "adult_normal_nih").glob("*.png"))[:18]
    cache: dict = {}

    def rec(f: str, kind: str) -> dict:
        if (f, kind) not in cache:
            image, meta = load_cxr(f)
            cache[f, kind] = assess(alter(image, kind, np.random.default_rng(1)), meta, f)
        return cache[f, kind]

    alerts = {}
    for name, kind in (("as_is", "as_is"), ("collimated", "collimated"), ("adults", "as_is")):
        recs = [rec(str(f), kind) for f in stream]
        if name == "adults":
            for j, a in enumerate(adults):  # 30 % of the stream
                recs[(j * 10) // 3] = rec(str(a), "as_is")
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"images": recs}, default=float))
        res = run_monitor(out, [tmp_path / name], tmp_path / f"monitor_{name}", n_null=500, figure=False)
        alerts[name] = (res["alert"], {c["name"]: round(c["statistic"], 2) for c in res["checks"]})
    assert alerts["as_is"][0] is False and alerts["collimated"][0] is True and alerts["adults"][0] is True, alerts
