"""The synthesis bundle (class-conditional SAGAN), driven through monai.bundle.ConfigWorkflow on phantoms
(model-zoo ci/unit_tests style): train a few iterations and resume, export, sample reproducibly, evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cxr_monai.cli import run_workflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "cxr_synth_sgan"
CONFIGS = BUNDLE / "configs"
# a tiny, fast variant of the shipped configuration
TINY = {"network_preset": "tiny", "image_size": 32, "attn_resolution": 16}


def _workflow(config, workflow_type, **overrides):
    return run_workflow(CONFIGS.parent, config, workflow_type, **overrides)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    from cxr_monai.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("synth_phantoms"), n_per_class=6, size=64, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_dataset) -> dict:
    """One epoch of GAN training on phantoms, then a resume to a second epoch."""
    out = tmp_path_factory.mktemp("synth_train")
    common = dict(dataset_dir=str(phantom_dataset), output_dir=str(out), batch_size=4, val_fraction=0.2,
                  ema_start=0, log_every=1, epoch_length=2, **TINY)
    _workflow("train.json", "train", max_epochs=1, **common)
    first = sorted(p.name for p in out.glob("checkpoint_epoch=*.pt"))
    _workflow("train.json", "train", max_epochs=2, **common)
    return {"out": out, "first": first, "data": phantom_dataset}


def test_train_checkpoints_resume_samples_and_export(trained):
    out = trained["out"]
    assert trained["first"] == ["checkpoint_epoch=1.pt"]
    from cxr_monai.utils import latest_checkpoint

    assert Path(latest_checkpoint(out)).name == "checkpoint_epoch=2.pt"
    state = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4  # 2 epochs x 2 iterations: continued, not restarted
    assert {"generator", "discriminator", "ema", "g_optimizer", "d_optimizer"} <= set(state)
    # TTUR: the optimizers carry the two learning rates and betas (0, 0.9)
    assert state["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert state["d_optimizer"]["param_groups"][0]["lr"] == pytest.approx(4e-4)
    assert tuple(state["d_optimizer"]["param_groups"][0]["betas"]) == (0.0, 0.9)
    # the EMA generator differs from the raw one after training
    g, ema = state["generator"], state["ema"]
    assert any(not torch.equal(g[k], ema[k]) for k in g if g[k].is_floating_point())
    # fixed-noise grids each epoch, TensorBoard events, exported plain (spectral norm folded) weights
    assert (out / "samples" / "samples_epoch=1.png").is_file() and (out / "samples" / "samples_epoch=2.png").is_file()
    grid = _png(out / "samples" / "samples_epoch=2.png")
    assert grid.shape == (2 * 34 + 2, 8 * 34 + 2)  # one row per class, 8 fixed latents
    assert list((out / "tb").glob("events.out.tfevents.*"))
    plain = torch.load(out / "model.pt", weights_only=True)
    assert not any("parametrizations" in k for k in plain)


@pytest.mark.slow
def test_dcgan_baseline_config_trains(phantom_dataset, tmp_path):
    _workflow(["train.json", "train_dcgan.json"], "train", dataset_dir=str(phantom_dataset), output_dir=str(tmp_path),
              batch_size=4, val_fraction=0.2, max_epochs=1, epoch_length=1, image_size=32)
    state = torch.load(tmp_path / "checkpoint_final.pt", weights_only=True)
    assert state["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert (tmp_path / "model.pt").is_file()


def _infer(trained, out: Path, **kw) -> list[dict]:
    _workflow("inference.json", "infer", output_dir=str(out), weights_path=str(trained["out"] / "model.pt"), **TINY, **kw)
    with (out / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_inference_is_reproducible_for_a_seed(trained, tmp_path):
    rows_a = _infer(trained, tmp_path / "a", num_images=3, class_name="pneumonia", seed=5)
    rows_b = _infer(trained, tmp_path / "b", num_images=3, class_name="PNEUMONIA", seed=5)
    rows_c = _infer(trained, tmp_path / "c", num_images=3, class_name="PNEUMONIA", seed=6)
    assert [r["file"] for r in rows_a] == [f"PNEUMONIA_seed5_{i:05d}.png" for i in range(3)]
    assert {(r["class"], r["seed"]) for r in rows_a} == {("PNEUMONIA", "5")}
    imgs_a = [_png(tmp_path / "a" / r["file"]) for r in rows_a]
    assert all(i.shape == (32, 32) and i.dtype == np.uint8 for i in imgs_a)
    for r, img in zip(rows_b, imgs_a):
        np.testing.assert_array_equal(_png(tmp_path / "b" / r["file"]), img)
    assert any(not np.array_equal(_png(tmp_path / "c" / r["file"]), i) for r, i in zip(rows_c, imgs_a))
    with pytest.raises(Exception, match="class_name"):
        _infer(trained, tmp_path / "d", num_images=1, class_name="COVID", seed=0)


def test_ckpt_export_torchscript_matches(trained, tmp_path):
    from monai.bundle import ckpt_export

    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(trained["out"] / "model.pt"),
                meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
                bundle_root=str(BUNDLE), **TINY)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(TINY)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained["out"] / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(ts))
    z, y = torch.randn(2, 128), torch.tensor([0, 1])
    torch.testing.assert_close(scripted(z, y), net.eval()(z, y))


@pytest.mark.slow
def test_evaluate_writes_metrics_and_grid(trained, tmp_path):
    _workflow("evaluate.json", None, dataset_dir=str(trained["data"]), output_dir=str(tmp_path), val_fraction=0.2,
              weights_path=str(trained["out"] / "model.pt"), num_per_class=6, kid_subset_size=4,
              allow_untrained_features=True, classifier_bundle=str(tmp_path / "no_classifier"),
              discriminator_ckpt=str(trained["out"] / "checkpoint_final.pt"), **TINY)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # the real images compared are the training split's (real_split "train"), per class
    from cxr_monai.data import training_split

    real = training_split(str(trained["data"]), 0.2, 0, ["NORMAL", "PNEUMONIA"])[0]
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        m = metrics["per_class"][name]
        assert m["num_generated"] == 6 and m["num_real"] == sum(int(r["label"]) == c for r in real)
        # a 2-epoch tiny generator is far from the phantoms: a positive distance, no sample memorised
        assert m["fid"] > 0 and m["seed_mse_random_pair"] > 0  # (KID is unbiased: it can dip below 0)
        assert 0 <= m["knn_precision"] <= 1 and 0 <= m["knn_recall"] <= 1
        assert m["nearest_real_ssim_mean"] <= m["nearest_real_ssim_max"] <= m["memorisation_threshold"]
        assert m["memorised_share"] == 0.0
    assert metrics["nearest_real_ssim_max"] == max(m["nearest_real_ssim_max"] for m in metrics["per_class"].values())
    assert set(metrics["discriminator"]) == {"d_accuracy", "d_precision", "d_recall"}
    assert _png(tmp_path / "samples_grid.png").shape == (2 * 34 + 2, 8 * 34 + 2)


def test_shipped_generator_loads_and_generates():
    weights = BUNDLE / "models" / "model.pt"
    assert weights.is_file(), f"{weights}: the bundle ships trained weights (the card's training commands)"
    from monai.bundle import ConfigParser

    from cxr_monai.engines.gan import generate

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(weights, weights_only=True))
    imgs, _ = generate(net, 4, 0, seed=0)
    assert imgs.shape == (4, 1, 64, 64) and 0 <= float(imgs.min()) and float(imgs.max()) <= 1
    assert float(imgs.std()) > 0.05  # not a constant image
    assert weights.stat().st_size < 25e6


def test_shipped_torchscript_matches_the_weights():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(BUNDLE / "models" / "model.ts"))
    z, y = torch.randn(4, net.latent_dim, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(scripted(z, y), net(z, y))
