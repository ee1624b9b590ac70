"""The classifier bundle, driven through monai.bundle.ConfigWorkflow on phantom data (model-zoo style)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxr_monai.cli import BUNDLES_DIR, run_workflow

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
                  val_fraction=0.34, num_workers=0)
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
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["temperature"] > 0 and 0 < cal["threshold"] < 1 and cal["validation"]["n"] > 0
    assert (out / "model.pt").is_file() and (out / "best_key_metric.pt").is_file()


def test_evaluate_and_inference_on_trained_weights(trained, tmp_path, monkeypatch):
    models = tmp_path / "bundle_models"
    models.mkdir()
    (models / "model.pt").write_bytes((trained["out"] / "model.pt").read_bytes())
    (models / "calibration.json").write_bytes((trained["out"] / "calibration.json").read_bytes())
    # evaluate.json reads <bundle_root>/models: point a throwaway bundle root at the trained weights
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "models").symlink_to(models)
    ev = tmp_path / "eval"
    _workflow("evaluate.json", "eval", bundle_root=str(root), dataset_dir=str(trained["data"]), output_dir=str(ev),
              image_size=64)
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "confusion_matrix", "threshold", "n"):
        assert key in metrics
    assert metrics["n"] == 12 and sum(map(sum, metrics["confusion_matrix"])) == 12
    assert metrics["threshold"] == pytest.approx(json.loads((models / "calibration.json").read_text())["threshold"])
    assert (ev / "roc.png").is_file() and (ev / "confusion_matrix.png").is_file()
    assert len((ev / "predictions.csv").read_text().strip().splitlines()) == 13

    inf = tmp_path / "inf"
    one = sorted((trained["data"] / "PNEUMONIA").iterdir())[0]
    _workflow("inference.json", "infer", bundle_root=str(root), dataset_dir=str(one.parent), output_dir=str(inf),
              image_size=64)
    preds = json.loads((inf / "predictions.json").read_text())
    assert len(preds) == 6 and all(0.0 <= p["probability"] <= 1.0 for p in preds)
    assert all(p["label"] in ("NORMAL", "PNEUMONIA") for p in preds)
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
    assert scripted(torch.rand(1, 1, 224, 224)).shape == (1, 2)
