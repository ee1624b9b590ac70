"""The package side of the deploy app: model export, inference, DICOM result objects, atomic writing.

Runs in the core venv (no MONAI Deploy SDK); tests/deploy runs the app itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from cxr_monai.data.phantom import write_phantom_dicom
from cxr_monai.export import (DeployModelError, export_deploy_models, find_model_file, load_deploy_model)
from cxr_monai.inference import check_lung_field, classifier_input, classify, sr_decision, super_resolve
from cxr_monai.io import load_cxr, skip_reason
from cxr_monai.records import ImageRecord
from cxr_monai.scope import load_scope_gate
from cxr_monai.transforms import load_lung_field
from cxr_monai.utils import file_sha256
from tests.conftest import PROJECT_ROOT, require_shared
from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe

CLS_BUNDLE = PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier"
SR_BUNDLE = PROJECT_ROOT / "bundles" / "cxr_sr_csaegan"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    export_deploy_models(CLS_BUNDLE.parent, out)
    return out


def test_named_model_layout_and_embedded_metadata(models: Path) -> None:
    assert sorted(p.name for p in models.iterdir()) == ["cxr_lung", "cxr_pneumonia", "cxr_scope", "cxr_sr"]
    for name in ("cxr_lung", "cxr_pneumonia", "cxr_scope", "cxr_sr"):
        assert [p.name for p in (models / name).iterdir()] == ["model.ts"]  # the SDK wants exactly one file
    _, info = load_deploy_model(find_model_file(models, "cxr_pneumonia"), kind="classifier")
    cal = json.loads((CLS_BUNDLE / "models" / "calibration.json").read_text())
    meta = json.loads((CLS_BUNDLE / "configs" / "metadata.json").read_text())
    assert info["temperature"] == pytest.approx(cal["temperature"]) and info["threshold"] == pytest.approx(cal["threshold"])
    assert info["version"] == meta["version"] and len(info["weights_sha256"]) == 64
    _, sinfo = load_deploy_model(models / "cxr_sr" / "model.ts", kind="super_resolution")
    assert sinfo["scale"] == 4 and sinfo["tile_size"] > 0
    _, ginfo = load_deploy_model(models / "cxr_scope" / "model.ts", kind="scope_gate")
    shipped = json.loads((CLS_BUNDLE / "docs" / "results" / "scope_gate.json").read_text())["gate"]["thresholds"]
    assert ginfo["thresholds"] == shipped and ginfo["bundle_version"] == meta["version"]
    assert oct((models / "cxr_scope" / "model.ts").stat().st_mode & 0o777) == "0o644"  # readable by a container user
    # the lung-field network travels as its own model, with the hash of the bundle's file; the classifier and the
    # gate name the one they were trained through (none: they read the whole film), as their bundle files say
    lung = load_lung_field(models / "cxr_lung" / "model.ts")
    assert lung.info["source_sha256"] == file_sha256(CLS_BUNDLE / "models" / "lung_field.ts")
    assert info.get("lung_field_sha256") == cal.get("lung_field_sha256")
    assert ginfo.get("lung_field_sha256") == load_scope_gate(CLS_BUNDLE / "models" / "scope_gate.ts").info.get(
        "lung_field_sha256")
    assert (check_lung_field(info, lung) is lung) == bool(cal.get("lung_field_sha256"))
    # both crop to the exposed field (shutter frames) exactly when their bundle files say so
    assert info.get("exposed_field") == bool(cal.get("exposed_field"))
    assert bool(ginfo.get("exposed_field")) == bool(load_scope_gate(CLS_BUNDLE / "models" / "scope_gate.ts").info.get(
        "exposed_field"))


def test_load_deploy_model_refuses_wrong_files(models: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployModelError, match="expected 'super_resolution'"):
        load_deploy_model(models / "cxr_pneumonia" / "model.ts", kind="super_resolution")
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(DeployModelError, match="no embedded cxr_monai.json"):
        load_deploy_model(plain)
    (tmp_path / "junk.ts").write_text("not a model")
    with pytest.raises(DeployModelError, match="not a TorchScript archive"):
        load_deploy_model(tmp_path / "junk.ts")
    with pytest.raises(DeployModelError, match="make deploy-models"):
        find_model_file(tmp_path, "cxr_sr")


def test_exported_classifier_equals_bundle_network_with_temperature(models: Path) -> None:
    from cxr_monai.utils import load_bundle_network

    module, info = load_deploy_model(models / "cxr_pneumonia" / "model.ts")
    net = load_bundle_network(CLS_BUNDLE)
    lung = load_lung_field(models / "cxr_lung" / "model.ts")
    image, _ = load_cxr(require_shared("dicom", "dx_thorax_mono1_small.dcm"))
    x = classifier_input(image, info["image_size"], check_lung_field(info, lung), info.get("views"),
                         bool(info.get("exposed_field")))
    with torch.no_grad():
        ref = torch.softmax(net(x.as_tensor()) / info["temperature"], dim=1)
        got = module(x.as_tensor())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    out = classify(module, image, info, with_cam=True, lung_field=lung)
    assert out["probability"] == pytest.approx(float(ref[0, 1]), abs=1e-5)
    assert out["label"] == ("PNEUMONIA" if out["probability"] >= info["threshold"] else "NORMAL")
    view = out["cam_view"]  # on the network input; out["cam"] on the film (the overlay's size)
    assert view.shape == (info["image_size"],) * 2 and 0.0 <= view.min() and view.max() == pytest.approx(1.0)
    assert out["cam"].shape == image.shape[1:] and out["cam"].max() == pytest.approx(1.0, abs=0.02)
    assert (out["lung_field"] is not None) == bool(info.get("lung_field_sha256"))


def test_gradcam_split_matches_monai_gradcam(models: Path) -> None:
    """Our hook-free Grad-CAM on a TorchScript module equals MONAI's GradCAM on the eager network (up to
    normalisation), for one shipped ensemble member; the whole ensemble's split gives a peak-normalised map."""
    from cxr_monai.explain import gradcam, gradcam_split
    from cxr_monai.export import CalibratedClassifier
    from cxr_monai.utils import load_bundle_network

    module, info = load_deploy_model(models / "cxr_pneumonia" / "model.ts")
    ens = load_bundle_network(CLS_BUNDLE)
    member = ens.members[0]
    image, _ = load_cxr(require_shared("dicom", "cr_chest_pa_mono2_jpeg.dcm"))
    full = classifier_input(image, info["image_size"],
                            check_lung_field(info, load_lung_field(models / "cxr_lung" / "model.ts")),
                            info.get("views")).as_tensor()
    x = full[:, ens.views[0]:ens.views[0] + 1]  # the view the first member reads
    scripted = torch.jit.script(CalibratedClassifier(member, 1.0).eval())
    ours = gradcam_split(scripted.cam_features, scripted.cam_head, x, 1)[0]
    ref = gradcam(member, x, "layer4", class_idx=1)[0]  # min-max normalised
    ours_mm = (ours - ours.min()) / (ours.max() - ours.min())
    assert np.corrcoef(ours_mm.ravel(), ref.ravel())[0, 1] > 0.99
    groups = info.get("view_channels")  # a two-view model: one map per view
    cam = gradcam_split(module.cam_features, module.cam_head, full, 1, groups=groups)[0]
    assert cam.shape == ((len(groups),) if groups else ()) + tuple(x.shape[-2:]) and cam.max() == pytest.approx(1.0)


def test_super_resolve_tiled_matches_whole_image(models: Path) -> None:
    module, info = load_deploy_model(models / "cxr_sr" / "model.ts")
    image, _ = load_cxr(require_shared("dicom", "dx_thorax_mono1_small.dcm"))
    tiled = super_resolve(module, image, info)
    assert tiled.shape == (1, 4 * image.shape[1], 4 * image.shape[2]) and tiled.dtype == np.float32
    with torch.no_grad():
        whole = module(torch.as_tensor(image)[None]).clamp(0, 1)[0].numpy()
    inner = (slice(None), slice(16, -16), slice(16, -16))
    assert np.abs(tiled[inner] - whole[inner]).mean() < 2e-3
    bicubic = torch.nn.functional.interpolate(torch.as_tensor(image)[None], scale_factor=4, mode="bicubic",
                                              align_corners=False).clamp(0, 1)[0].numpy()
    assert np.abs(tiled - bicubic).mean() < 0.05  # an enhancement, not another image


def test_sr_size_policy() -> None:
    assert sr_decision((1, 512, 512))[0] and sr_decision((1, 1024, 800))[0]
    applied, why = sr_decision((1, 2048, 1500))
    assert not applied and "2048x1500" in why and "1024" in why
    assert not sr_decision((1, 600, 600), sr_max_side=512)[0]


def test_skip_reason_body_part_and_view(tmp_path: Path) -> None:
    _, meta = load_cxr(require_shared("dicom", "cr_extremity_mono1_j2k.dcm"))
    assert "EXTREMITY" in skip_reason(meta)
    path = write_phantom_dicom(tmp_path / "p.dcm", size=128, seed=1)
    ds = pydicom.dcmread(path)
    assert skip_reason(load_cxr(ds)[1]) is None
    ds.ViewPosition = "LL"
    assert "lateral" in skip_reason(load_cxr(ds)[1])
    del ds.BodyPartExamined
    ds.ViewPosition = "PA"
    assert skip_reason(load_cxr(ds)[1]) is None  # absent body part is accepted


def test_load_cxr_dataset_equals_file(tmp_path: Path) -> None:
    for name in ("cr_chest_pa_mono1_jpeg.dcm", "dx_thorax_mono1_small.dcm"):
        path = require_shared("dicom", name)
        a, ma = load_cxr(path)
        b, mb = load_cxr(pydicom.dcmread(path))
        np.testing.assert_array_equal(a, b)
        assert ma["inverted"] == mb["inverted"] and ma["spacing"] == mb["spacing"]


def _results_inputs(models: Path, src: Path):
    from cxr_monai.explain import overlay_rgb

    cls, cinfo = load_deploy_model(models / "cxr_pneumonia" / "model.ts")
    sr, sinfo = load_deploy_model(models / "cxr_sr" / "model.ts")
    ds = pydicom.dcmread(src)
    image, _ = load_cxr(ds)
    enhanced = super_resolve(sr, image, sinfo)
    lung = load_lung_field(models / "cxr_lung" / "model.ts")
    result = classify(cls, enhanced, cinfo, with_cam=True, lung_field=lung)
    result.update(model=cinfo["model_name"], version=cinfo["version"],
                  probability_unenhanced=classify(cls, image, cinfo, lung_field=lung)["probability"])
    return ImageRecord(file=str(src), study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                       sop_uid=str(ds.SOPInstanceUID), modality=str(ds.Modality), dataset=ds, image=image,
                       enhanced=enhanced,
                       sr={"applied": True, "model": sinfo["model_name"], "version": sinfo["version"],
                           "weights_sha256": sinfo["weights_sha256"]},
                       classification={k: v for k, v in result.items()
                                       if k not in ("cam", "cam_view", "network_input")},
                       overlay=overlay_rgb(image, result["cam"]))


def test_result_objects_conform_and_keep_the_study(models: Path, tmp_path: Path) -> None:
    from cxr_monai.results import SERIES_NUMBERS, write_study_results

    exe = dciodvfy_exe()
    src = require_shared("dicom", "dx_thorax_mono1_small.dcm")
    # a second source with detector spacing only (ImagerPixelSpacing, no PixelSpacing)
    ds2 = pydicom.dcmread(src)
    del ds2.PixelSpacing
    ds2.SOPInstanceUID = pydicom.uid.generate_uid()
    ds2.file_meta.MediaStorageSOPInstanceUID = ds2.SOPInstanceUID
    src2 = tmp_path / "detector_spacing.dcm"
    ds2.save_as(src2)
    recs = [_results_inputs(models, src), _results_inputs(models, src2)]
    summary = write_study_results(recs, tmp_path / "out")
    assert summary["counts"]["ok"] == 2
    source = pydicom.dcmread(src)
    kinds: dict[str, set] = {}
    for rec, src_path in zip(recs, (src, src2)):
        source = pydicom.dcmread(src_path)
        for kind in ("enhanced", "report", "gradcam"):
            ds = pydicom.dcmread(rec.outputs[kind])
            kinds.setdefault(kind, set()).add(ds.SeriesInstanceUID)
            assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
            assert ds.SeriesNumber == SERIES_NUMBERS[kind] and ds.SOPInstanceUID != source.SOPInstanceUID
            assert "NOT FOR PRIMARY DIAGNOSIS" in ds.SeriesDescription
            assert not dciodvfy_errors(exe, Path(rec.outputs[kind])), kind
        sc = pydicom.dcmread(rec.outputs["enhanced"])
        assert (sc.Rows, sc.Columns) == (4 * source.Rows, 4 * source.Columns)
        assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BitsAllocated == 16
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "super-resolution" in sc.DerivationDescription and rec.sr["version"] in sc.DerivationDescription
        assert rec.sr["weights_sha256"][:12] in sc.DerivationDescription
        np.testing.assert_allclose(sc.pixel_array / 65535.0, rec.enhanced[0], atol=1 / 65535)
        if "PixelSpacing" in source:
            assert [float(v) for v in sc.PixelSpacing] == pytest.approx([float(v) / 4 for v in source.PixelSpacing])
        else:  # detector spacing is not relabelled as PixelSpacing
            assert "PixelSpacing" not in sc
            assert [float(v) for v in sc.NominalScannedPixelSpacing] == pytest.approx(
                [float(v) / 4 for v in source.ImagerPixelSpacing], rel=1e-5)
        ov = pydicom.dcmread(rec.outputs["gradcam"])
        assert ov.PhotometricInterpretation == "RGB" and ov.BurnedInAnnotation == "YES"
        # the overlay (enlarged by a whole factor when narrower than 512 px) below a band of burned-in text
        k = ov.Columns // source.Columns
        assert ov.Columns == k * source.Columns and ov.Rows > k * source.Rows and Path(rec.outputs["gradcam_png"]).is_file()
        np.testing.assert_array_equal(ov.pixel_array[-k * source.Rows:], rec.overlay.repeat(k, 0).repeat(k, 1))
        assert ov.pixel_array[: ov.Rows - k * source.Rows].max() == 255  # text drawn in the band
        report = pydicom.dcmread(rec.outputs["report"])
        assert report.VerificationFlag == "UNVERIFIED" and report.CompletionFlag == "COMPLETE"
        values = _numeric_values(report)
        assert values["Pneumonia probability (calibrated)"] == pytest.approx(rec.classification["probability"], abs=1e-6)
        assert values["Pneumonia decision threshold"] == pytest.approx(rec.classification["threshold"], abs=1e-6)
        findings = [i for i in _walk(report.ContentSequence)
                    if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
        assert len(findings) == 1  # one finding, not a "finding type" beside it
        codes = _coded_values(report)
        assert codes["Finding"] == ("Pneumonia" if rec.classification["label"] == "PNEUMONIA" else "Normal")
        assert codes["AI super-resolution applied before classification"] == "Yes"
        refs = {r.ReferencedSOPInstanceUID for s in report.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
        assert {source.SOPInstanceUID, sc.SOPInstanceUID} <= refs
    assert all(len(v) == 1 for v in kinds.values())  # one series per output kind per study
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [i["classification"]["probability"] for i in written["images"]] == [r.classification["probability"] for r in recs]


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _numeric_values(report) -> dict[str, float]:
    return {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
            for i in _walk(report.ContentSequence) if i.ValueType == "NUM"}


def _coded_values(report) -> dict[str, str]:
    return {i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
            for i in _walk(report.ContentSequence) if i.ValueType == "CODE"}


def test_failing_writer_leaves_no_partial_files(models: Path, tmp_path: Path, monkeypatch) -> None:
    from pydicom.dataset import Dataset

    from cxr_monai.results import write_study_results

    recs = [_results_inputs(models, require_shared("dicom", "dx_thorax_mono1_small.dcm"))]
    real_save = Dataset.save_as
    calls = {"n": 0}

    def crashing_save(self, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second object: write half of it, then die
            Path(filename).write_bytes(b"DICM" * 1000)
            raise OSError("disk full (simulated)")
        return real_save(self, filename, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", crashing_save)
    summary = write_study_results(recs, tmp_path / "out")
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert summary["images"][0]["status"] == "failed" and "disk full" in summary["images"][0]["reason"]
    assert not [f for f in files if ".partial" in f or f.startswith(".")], files
    for f in files:
        if f.endswith(".dcm"):
            pydicom.dcmread(tmp_path / "out" / f)  # whatever is there is complete
    assert "results.json" in files
