"""The classifier bundle, driven through monai.bundle.ConfigWorkflow on phantom data (model-zoo style)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxr_monai.cli import BUNDLES_DIR, run_workflow
from tests.bundles import weight_checks as W

BUNDLE = BUNDLES_DIR / "cxr_pneumonia_classifier"
CONFIGS = BUNDLE / "configs"


def _workflow(config, workflow_type, **overrides):
    return run_workflow(CONFIGS.parent, config, workflow_type, **overrides)


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    from cxr_monai.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_per_class=6, size=96, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_dataset) -> dict:
    """Train 1 epoch on phantoms, then resume to a 2nd epoch; returns the paths involved."""
    out = tmp_path_factory.mktemp("train")
    common = dict(dataset_dir=str(phantom_dataset), output_dir=str(out), image_size=64, batch_size=4,
                  val_fraction=0.34, calib_fraction=0.25, num_workers=0)
    _workflow("train.json", "train", max_epochs=1, **common)
    first = sorted(out.glob("checkpoint_epoch=*.pt"))
    _workflow("train.json", "train", max_epochs=2, **common)  # resumes from epoch 1
    return {"out": out, "first": first, "data": phantom_dataset}


def test_train_writes_checkpoints_calibration_and_resumes(trained):
    out = trained["out"]
    assert [p.name for p in trained["first"]] == ["checkpoint_epoch=1.pt"]
    assert (out / "checkpoint_epoch=2.pt").is_file()
    state = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]  # continued, not restarted
    assert state["ema"]["updates"] == state["trainer"]["iteration"]  # the EMA resumed with the trainer
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["temperature"] > 0 and cal["validation"]["n"] == 6 and cal["calibration_split"]["n"] == 2
    # equal-prior rule: the threshold is the calibration split's PNEUMONIA prevalence, not a tuned number
    assert cal["threshold"] == pytest.approx(cal["calibration_prior"]) == pytest.approx(0.5)
    # the shipped weights are the final EMA weights (no epoch selection on validation)
    ema = {k: v for k, v in state["ema"]["module"].items()}
    member = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(member[k], ema[k]) for k in member)
    assert not (out / "best_key_metric.pt").exists()


def test_ensemble_evaluate_and_inference_on_trained_weights(trained, tmp_path, monkeypatch):
    # two "members": the trained one twice (ensemble.json only needs their folders)
    models = tmp_path / "models"
    common = dict(dataset_dir=str(trained["data"]), image_size=64, val_fraction=0.34, calib_fraction=0.25)
    wf = _workflow(["train.json", "ensemble.json"], None, models_dir=str(models), n_boot=50,
                   member_dirs=[str(trained["out"]), str(trained["out"])], **common)
    cal = json.loads((models / "calibration.json").read_text())
    member = json.loads((trained["out"] / "calibration.json").read_text())
    assert cal["temperature"] == 1.0 and cal["threshold"] == pytest.approx(member["threshold"])
    assert [m["bias"] for m in cal["members"]] == [member["bias"]] * 2
    # two copies of one member average to that member
    assert cal["validation"]["auc"] == pytest.approx(member["validation"]["auc"])
    ci = cal["validation_ci95"]["auc"]
    assert ci["low"] <= cal["validation"]["auc"] <= ci["high"]
    with pytest.raises(RuntimeError, match="member_dirs"):  # MONAI wraps the ValueError naming the argument
        _workflow(["train.json", "ensemble.json"], None, models_dir=str(tmp_path / "none"), **common)
    ev = tmp_path / "eval"
    _workflow(["inference.json", "evaluate.json"], "eval", models_dir=str(models), dataset_dir=str(trained["data"]), output_dir=str(ev),
              image_size=64, ensemble_members=2, n_boot=50, use_scope_gate=False)
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "confusion_matrix", "threshold", "n"):
        assert key in metrics
    assert metrics["n"] == 12 and sum(map(sum, metrics["confusion_matrix"])) == 12
    assert metrics["threshold"] == pytest.approx(json.loads((models / "calibration.json").read_text())["threshold"])
    assert (ev / "roc.png").is_file() and (ev / "confusion_matrix.png").is_file() and (ev / "reliability.png").is_file()
    for name in ("accuracy", "auc", "sensitivity", "specificity", "ece"):
        ci = metrics["ci95"][name]
        assert ci["low"] <= ci["high"] and ci["method"]
    assert metrics["ci95"]["accuracy"]["low"] <= metrics["accuracy"] <= metrics["ci95"]["accuracy"]["high"]
    assert len((ev / "predictions.csv").read_text().strip().splitlines()) == 13

    inf = tmp_path / "inf"
    one = sorted((trained["data"] / "PNEUMONIA").iterdir())[0]
    _workflow("inference.json", "infer", models_dir=str(models), dataset_dir=str(one.parent), output_dir=str(inf),
              image_size=64, ensemble_members=2, use_scope_gate=False)
    preds = json.loads((inf / "predictions.json").read_text())
    # inference.json gives each file the probability evaluate.json gave it (same preprocessing, ensemble and
    # calibration), and the label the shipped threshold implies
    with open(ev / "predictions.csv", newline="") as f:
        evaluated = {Path(r["file"]).name: float(r["probability"]) for r in csv.DictReader(f)}
    assert len(preds) == 6
    for p in preds:
        assert p["probability"] == pytest.approx(evaluated[Path(p["file"]).name], abs=1e-5), p["file"]
        assert p["label"] == ("PNEUMONIA" if p["probability"] >= cal["threshold"] else "NORMAL")
    assert len(list((inf / "gradcam").glob("*.png"))) == 6


@pytest.mark.slow
def test_monai_verify_net_in_out_and_ckpt_export(tmp_path):
    assert (BUNDLE / "models" / "model.pt").is_file(), "the bundle ships trained weights"
    cmd = [sys.executable, "-m", "monai.bundle"]
    meta, cfg = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.json")
    subprocess.run(cmd + ["verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", cfg,
                          "--bundle_root", str(BUNDLE)], check=True)
    ts = tmp_path / "model.ts"
    subprocess.run(cmd + ["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
                          str(BUNDLE / "models" / "model.pt"), "--meta_file", meta, "--config_file", cfg,
                          "--bundle_root", str(BUNDLE)], check=True)
    scripted = torch.jit.load(str(ts))
    assert scripted(torch.rand(*W.classifier_input_shape(1))).shape == (1, 2)


def test_gpu_switches_default_off_on_cpu_and_channels_last_trains(phantom_dataset, tmp_path):
    """The GPU switches of train.json follow the device (amp, compile, pin_memory off here); channels_last is the
    default on the CPU too (faster oneDNN convolutions) and trains; --channels_last False gives NCHW."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["bundle_root"] = str(BUNDLE)
    if not torch.cuda.is_available():
        assert [parser.get_parsed_content(k) for k in ("amp", "compile", "pin_memory")] == [False] * 3
    assert parser.get_parsed_content("channels_last") is True
    parser["channels_last"] = False
    conv = parser.get_parsed_content("network").layer1[0].conv1.weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    out = tmp_path / "cl"
    wf = _workflow("train.json", "train", dataset_dir=str(phantom_dataset), output_dir=str(out), image_size=64,
                   batch_size=4, val_fraction=0.34, calib_fraction=0.25, max_epochs=1)
    conv = wf.parser.get_parsed_content("network").layer1[0].conv1.weight  # (C, C, 3, 3): formats differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert (out / "model.pt").is_file()


def test_shipped_inference_and_evaluate_apply_the_scope_gate(tmp_path):
    """The shipped ensemble with its gate: a Kermany child is assessed; noise, a generated document and the
    shared adult film are labelled OUT_OF_SCOPE with a reason (probability still written, no Grad-CAM), and
    metrics.json counts only in-scope images and reports n_out_of_scope."""
    import numpy as np

    from cxr_monai.scope import make_negative
    from cxr_monai.io import save_png
    from tests.conftest import SHARED_DATA

    data = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / cls).mkdir(parents=True)
        for f in sorted((SHARED_DATA / "kermany224" / "train" / cls).glob("*.jpeg"))[:2]:
            (data / cls / f.name).write_bytes(f.read_bytes())
    rng = np.random.default_rng(5)
    save_png(data / "NORMAL" / "noise.png", make_negative("uniform_noise", rng, 224))
    save_png(data / "PNEUMONIA" / "document.png", make_negative("document", rng, 224))
    adult = sorted((SHARED_DATA / "adult_normal_nih").glob("*.png"))[0]
    (data / "NORMAL" / adult.name).write_bytes(adult.read_bytes())
    ev = tmp_path / "eval"
    _workflow(["inference.json", "evaluate.json"], "eval", dataset_dir=str(data), output_dir=str(ev), n_boot=20, gradcam_layer="cam_features")
    rows = {Path(r["file"]).name: r for r in json.loads((ev / "predictions.json").read_text())}
    assert len(rows) == 7
    out = {n for n, r in rows.items() if r["in_scope"] == 0}
    assert out == {"noise.png", "document.png", adult.name}
    for n in out:
        assert rows[n]["label"] == "OUT_OF_SCOPE" and rows[n]["scope_reason"].startswith("image check:")
        assert 0.0 <= rows[n]["probability"] <= 1.0 and "gradcam" not in rows[n]
    for n in set(rows) - out:
        assert rows[n]["label"] in ("NORMAL", "PNEUMONIA") and rows[n]["scope_reason"] == "" and rows[n]["gradcam"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["n_out_of_scope"] == 3
    header = (ev / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["file", "probability", "label", "in_scope", "scope_reason"]
