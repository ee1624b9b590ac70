"""The cxr_sr_csaegan bundle driven through monai.bundle.ConfigWorkflow on phantom images (model-zoo style)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cxr_monai.cli import run_workflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "cxr_sr_csaegan"
CONFIGS = BUNDLE / "configs"
TINY_NET = {"network_def#num_block": 1, "network_def#num_feat": 16, "network_def#num_grow_ch": 8,
            "network_def#csa_reduction": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _workflow(config, workflow_type, **overrides):
    return run_workflow(CONFIGS.parent, config, workflow_type, **overrides)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Four 160x160 phantom CXRs as 16-bit PNG plus one as a CR DICOM."""
    from cxr_monai.data.phantom import make_phantom, write_phantom_dicom
    from cxr_monai.io import save_png

    root = tmp_path_factory.mktemp("sr_phantoms")
    for i in range(4):
        img, _ = make_phantom(size=160, seed=i)
        save_png(root / f"ph{i}.png", img, bits=16)
    write_phantom_dicom(root / "ph4.dcm", size=160, seed=4)
    return root


@pytest.fixture(scope="module")
def lite_bundle(tmp_path_factory) -> Path:
    """A copy of the bundle configs with untrained lite weights (zero residual: the SR equals bicubic)."""
    from cxr_monai.networks import csaegan_lite

    root = tmp_path_factory.mktemp("sr_bundle")
    shutil.copytree(CONFIGS, root / "configs")
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(csaegan_lite().state_dict(), root / "models" / "model.pt")
    return root


def test_config_files_and_ids() -> None:
    for name in ("metadata.json", "train_psnr.json", "train_gan.json", "evaluate.json", "inference.json",
                 "multi_gpu_train.json", "train_full_gpu.json", "train_full_gpu_gan.json", "logging.conf",
                 "datalist.json"):
        assert (CONFIGS / name).is_file(), name
    train = json.loads((CONFIGS / "train_psnr.json").read_text())
    for key in ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "preprocessing",
                "postprocessing", "inferer", "train", "validate", "initialize", "run", "finalize"):
        assert key in train, key
    assert "trainer" in train["train"] and "evaluator" in train["validate"]
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    split = json.loads((CONFIGS / "datalist.json").read_text())
    names_t = {d["image"] for d in split["training"]}
    names_v = {d["image"] for d in split["validation"]}
    assert names_t.isdisjoint(names_v) and len(names_v) >= 20
    assert all(not os.path.isabs(n) for n in names_t | names_v)


def test_datalist_split_is_patient_disjoint() -> None:
    from cxr_monai.data import patient_id

    split = json.loads((CONFIGS / "datalist.json").read_text())
    train = {patient_id(d["image"]) for d in split["training"]}
    val = {patient_id(d["image"]) for d in split["validation"]}
    assert train.isdisjoint(val)


def test_evaluate_datalist_lists_the_image_files(tmp_path: Path) -> None:
    """evaluate.json's folder datalist: cxr_monai.data.list_images (sorted, recursive, extension-less DICOM) under 'hr'."""
    from monai.bundle import ConfigParser

    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.dcm", "sub/c.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)  # extension-less DICOM
    (tmp_path / "README").write_bytes(b"not an image")

    def datalist(source: Path, **overrides) -> list[dict]:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "evaluate.json"))
        parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(source), **overrides})
        return parser.get_parsed_content("datalist")

    assert [Path(i["hr"]).name for i in datalist(tmp_path)] == ["IM0001", "a.dcm", "b.png", "c.nii.gz"]
    assert datalist(tmp_path / "b.png") == [{"hr": str(tmp_path / "b.png")}]
    assert len(datalist(tmp_path, max_items=2)) == 2
    with pytest.raises(RuntimeError) as info:  # the parser wraps list_images' FileNotFoundError
        datalist(tmp_path / "missing")
    assert isinstance(info.value.__cause__, FileNotFoundError) and "no such file" in str(info.value.__cause__)


def test_sr_configs_share_the_sr_preprocessing_loader(tmp_path: Path) -> None:
    """Training, validation, evaluation and inference all load through cxr_monai.transforms.sr_preprocessing."""
    from monai.bundle import ConfigParser

    from cxr_monai.transforms import LoadCXRImaged, sr_preprocessing

    ref = [type(t) for t in sr_preprocessing(["hr"])]
    for config, ids in (("train_psnr.json", ("preprocessing", "train#preprocessing")),
                        ("evaluate.json", ("preprocessing",)), ("inference.json", ("preprocessing",))):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path)})
        for id_ in ids:
            xs = parser.get_parsed_content(id_).transforms
            assert isinstance(xs[0], LoadCXRImaged), (config, id_)
            if id_ != "train#preprocessing":  # the patch pipeline takes the loader only (its last step casts)
                assert [type(t) for t in xs[: len(ref)]] == ref, (config, id_)


def test_train_psnr_then_resume(phantoms: Path, tmp_path: Path) -> None:
    common = dict(
        bundle_root=str(BUNDLE), output_dir=str(tmp_path),
        train_datalist=[{"hr": str(phantoms / f"ph{i}.png")} for i in range(3)],
        val_datalist=[{"hr": str(phantoms / "ph3.png")}],
        epoch_length=2, patch_size=32, patches_per_image=2, images_per_batch=1, val_crop=64, val_interval=1,
        **TINY_NET,
    )
    wf = _workflow("train_psnr.json", "train", max_epochs=1, **common)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    assert np.isfinite(float(trainer.state.output["loss"]))
    assert "val_psnr" in wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoint_epoch=1.pt").is_file()
    # restart: resumes from the last checkpoint instead of starting over
    wf2 = _workflow("train_psnr.json", "train", max_epochs=2, **common)
    assert wf2.parser.get_parsed_content("train#trainer").state.iteration == 4
    assert (tmp_path / "checkpoint_epoch=2.pt").is_file()


def test_train_gan_stage(phantoms: Path, tmp_path: Path) -> None:
    from cxr_monai.networks import csaegan_lite

    stage1 = tmp_path / "stage1.pt"
    torch.manual_seed(1)
    net = csaegan_lite(num_block=1, num_feat=16, num_grow_ch=8, csa_reduction=4)
    torch.nn.init.normal_(net.conv_last.weight, std=1e-3)
    torch.save(net.state_dict(), stage1)
    wf = _workflow(
        ["train_psnr.json", "train_gan.json"], "train",
        bundle_root=str(BUNDLE), output_dir=str(tmp_path / "gan"), stage1_weights=str(stage1),
        train_datalist=[{"hr": str(phantoms / f"ph{i}.png")} for i in range(2)],
        val_datalist=[{"hr": str(phantoms / "ph3.png")}],
        max_epochs=1, epoch_length=2, patch_size=32, patches_per_image=2, images_per_batch=1, val_crop=64,
        val_interval=1, d_features=8, use_perceptual=False, ema_decay=0.5, **TINY_NET,
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    out = trainer.state.output
    assert {"loss_g_adv", "loss_d", "loss_consistency"} <= set(out)
    assert trainer.d_network is not None and trainer.ema_network is not None
    ema_state = torch.load(tmp_path / "gan" / "model_gan.pt", weights_only=True)
    # started from the stage-1 weights and moved away from them
    diffs = [float((ema_state[k] - v).abs().max()) for k, v in net.state_dict().items()]
    assert max(diffs) > 0
    assert float((ema_state["conv_first.weight"] - net.state_dict()["conv_first.weight"]).abs().max()) < 0.1


def test_evaluate_writes_metrics(lite_bundle: Path, phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    _workflow("evaluate.json", "eval", bundle_root=str(lite_bundle), dataset_dir=str(phantoms),
              output_dir=str(out), crop=128, figure_cases=2)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic", "ms_ssim", "consistency", "n"):
        assert key in metrics, key
    assert metrics["n"] == 5  # 4 PNG + 1 DICOM
    # untrained zero-residual weights: the SR is the bicubic image (tiling must not change that)
    assert metrics["psnr_sr"] == pytest.approx(metrics["psnr_bicubic"], abs=0.01)
    assert metrics["ssim_sr"] == pytest.approx(metrics["ssim_bicubic"], abs=1e-3)
    assert 25 < metrics["psnr_bicubic"] < 60
    rows = (out / "per_image.csv").read_text().strip().splitlines()
    assert len(rows) == 6 and rows[0].startswith("image,psnr_sr")
    assert (out / "figure.png").is_file()


def test_evaluate_low_dose_and_back_projection(lite_bundle: Path, phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval_bp"
    _workflow("evaluate.json", "eval", bundle_root=str(lite_bundle), dataset_dir=str(phantoms / "ph0.png"),
              output_dir=str(out), crop=0, dose=2000.0, back_projection_iterations=3, figure_cases=0,
              self_ensemble=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 1 and metrics["dose"] == 2000.0 and metrics["self_ensemble"] is True
    # back-projection onto a noisy LR makes the output more consistent with that LR than bicubic is
    assert metrics["consistency_psnr_sr"] > metrics["consistency_psnr_bicubic"]


def test_inference_formats(lite_bundle: Path, tmp_path: Path) -> None:
    import nibabel as nib

    from cxr_monai.data.phantom import make_phantom, write_phantom_dicom
    from cxr_monai.io import load_cxr, save_png
    from cxr_monai.metrics.sr import bicubic_up, psnr

    src = tmp_path / "in"
    src.mkdir()
    img, _ = make_phantom(size=48, seed=7)
    save_png(src / "a.png", img)
    write_phantom_dicom(src / "b.dcm", size=48, seed=8)
    nii = nib.Nifti1Image(img[0].T.copy(), np.diag([0.5, 0.5, 1.0, 1.0]))
    nii.header.set_xyzt_units("mm")
    nib.save(nii, str(src / "c.nii.gz"))
    out = tmp_path / "out"
    _workflow("inference.json", "infer", bundle_root=str(lite_bundle), dataset_dir=str(src),
              output_dir=str(out), tile_size=32)
    for name_in, name_out in (("a.png", "a_sr.png"), ("b.dcm", "b_sr.dcm"), ("c.nii.gz", "c_sr.nii.gz")):
        x, meta_in = load_cxr(src / name_in)
        y, meta_out = load_cxr(out / name_out)
        assert y.shape == (1, 4 * x.shape[1], 4 * x.shape[2])
        # untrained zero-residual weights: the output is the bicubic upsampling
        assert float(psnr(torch.from_numpy(y), bicubic_up(torch.from_numpy(x)), 0)) > 50, name_in
        if meta_in["spacing"] is not None:
            assert meta_out["spacing"] == pytest.approx(tuple(s / 4 for s in meta_in["spacing"]), rel=1e-3)
    import pydicom

    from cxr_monai.commissioning import sha256_file
    from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe

    ds = pydicom.dcmread(out / "b_sr.dcm")
    src_ds = pydicom.dcmread(src / "b.dcm")
    assert "DERIVED" in list(ds.ImageType)
    assert ds.StudyInstanceUID == src_ds.StudyInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src_ds.SOPInstanceUID
    # the deploy app's enhanced SC (cxr_monai.dicom): wording and the bundle's provenance from its config
    version = json.loads((lite_bundle / "configs" / "metadata.json").read_text())["version"]
    assert ds.SeriesDescription == "AI-enhanced 4x - NOT FOR PRIMARY DIAGNOSIS"
    assert f"CSAEGAN) {version}" in ds.DerivationDescription
    assert sha256_file(lite_bundle / "models" / "model.pt")[:12] in ds.DerivationDescription
    assert dciodvfy_errors(dciodvfy_exe(), out / "b_sr.dcm") == []


def test_shipped_weights_load(project_root: Path) -> None:
    weights = BUNDLE / "models" / "model.pt"
    assert weights.is_file(), "the bundle ships trained weights"
    from cxr_monai.utils import load_bundle_network

    assert weights.stat().st_size < 25e6
    net = load_bundle_network(BUNDLE)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 1, 64, 64) and 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.slow
def test_verify_net_in_out_and_ckpt_export(lite_bundle: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    meta, cfg = str(lite_bundle / "configs" / "metadata.json"), str(lite_bundle / "configs" / "inference.json")
    r = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", meta,
         "--config_file", cfg, "--bundle_root", str(lite_bundle), "--n", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verified" in (r.stdout + r.stderr)
    ts = lite_bundle / "models" / "model.ts"
    r = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
         "--ckpt_file", str(lite_bundle / "models" / "model.pt"), "--meta_file", meta, "--config_file", cfg,
         "--bundle_root", str(lite_bundle)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ts_net = torch.jit.load(str(ts))
    from cxr_monai.networks import csaegan_lite

    ref = csaegan_lite()
    ref.load_state_dict(torch.load(lite_bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ts_net(x), ref.eval()(x), atol=1e-5)


_TILE_SCRIPT = r"""
import json, sys, threading, time
import numpy as np, torch
torch.set_num_threads(1)
from monai.bundle import ConfigParser
from cxr_monai.data.phantom import make_phantom
from cxr_monai.networks import csaegan_lite


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


mode, cfg, out = sys.argv[1], sys.argv[2], sys.argv[3]
parser = ConfigParser(); parser.read_config(cfg)
inferer = parser.get_parsed_content("inferer")
torch.manual_seed(0)
net = csaegan_lite().eval()
img, _ = make_phantom(size=512, seed=3)
x = torch.from_numpy(img)[None]
with torch.no_grad():
    net.conv_last.weight.normal_(0, 0.02)  # a non-trivial residual
    net(torch.rand(1, 1, 32, 32))
base, peak, done = rss_mb(), [0.0], [False]

def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.002)

t = threading.Thread(target=sample); t.start()
with torch.no_grad():
    y = inferer(x, net) if mode == "tiled" else net(x)
done[0] = True; t.join()
np.save(out, y.numpy().astype(np.float32))
print(json.dumps({"shape": list(y.shape), "extra_mb": peak[0] - base}))
"""


@pytest.mark.slow
def test_tiled_matches_untiled_on_2048_output_with_bounded_memory(lite_bundle: Path, tmp_path: Path) -> None:
    """Tiled (the SlidingWindowInferer of inference.json) vs whole-image inference of a 512 -> 2048 phantom with
    the lite preset: equal on the overlap-free interior, and the tiled peak memory is bounded by the output
    buffers while the whole-image run needs the full-size activations."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak-memory sampling needs /proc")
    from monai.bundle import ConfigParser

    cfg = str(lite_bundle / "configs" / "inference.json")
    parser = ConfigParser()
    parser.read_config(cfg)
    roi, overlap = int(parser["tile_size"]), float(parser["tile_overlap"])
    script = tmp_path / "tile_run.py"
    script.write_text(_TILE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(mode: str) -> tuple[dict, np.ndarray]:
        out = tmp_path / f"{mode}.npy"
        r = subprocess.run([sys.executable, str(script), mode, cfg, str(out)], capture_output=True, text=True,
                           env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out)

    (t_info, tiled), (w_info, whole) = run("tiled"), run("whole")
    assert tiled.shape == whole.shape == (1, 1, 2048, 2048)
    # LR pixels covered by exactly one tile (the overlap-free interior), away from the image border
    stride = int(roi * (1 - overlap))
    starts = list(range(0, 512 - roi + 1, stride))
    if starts[-1] != 512 - roi:
        starts.append(512 - roi)
    cover = np.zeros(512, int)
    for s in starts:
        cover[s : s + roi] += 1
    single = (cover == 1) & (np.arange(512) >= 16) & (np.arange(512) < 496)
    mask = np.kron(single[:, None] & single[None, :], np.ones((4, 4))).astype(bool)
    diff = np.abs(tiled - whole)[0, 0][mask]
    assert mask.sum() > 0.05 * mask.size
    assert float(diff.max()) < 2e-3 and float(diff.mean()) < 2e-4
    assert float(np.abs(tiled - whole).mean()) < 1e-3  # seams included, the blend stays close
    out_mb = 2048 * 2048 * 4 / 2**20  # one float32 output buffer: 16 MB
    assert t_info["extra_mb"] < 6 * out_mb + 64, t_info  # output + blending buffers, not activations
    assert w_info["extra_mb"] > 2 * t_info["extra_mb"], (w_info, t_info)


def test_downstream_study_mechanics(lite_bundle: Path, tmp_path: Path) -> None:
    """evaluate_downstream.json end to end on a tiny class-folder phantom set with a stand-in classifier bundle
    (random weights: this checks the plumbing, not the numbers)."""
    from cxr_monai.data.phantom import make_phantom
    from cxr_monai.io import save_png
    from cxr_monai.networks import resnet18_sa

    data = tmp_path / "data"
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            img, _ = make_phantom(size=64, seed=10 * label + i, consolidation=bool(label))
            save_png(data / cls / f"person{10 * label + i}_x_{i}.png", img)
    clf = tmp_path / "classifier"
    (clf / "configs").mkdir(parents=True)
    (clf / "models").mkdir()
    net_def = {"_target_": "cxr_monai.networks.resnet18_sa", "preset": "lite", "num_classes": 2}
    (clf / "configs" / "inference.json").write_text(json.dumps({"network_def": net_def}))
    (clf / "configs" / "metadata.json").write_text("{}")  # a bundle folder (--reference_bundle PATH)
    # the frozen reference classifier the study uses (configs/feature_extractor.json + models/feature_extractor.pt)
    (clf / "configs" / "feature_extractor.json").write_text(json.dumps({"network_def": net_def, "temperature": 1.0}))
    torch.manual_seed(0)
    torch.save(resnet18_sa("lite").state_dict(), clf / "models" / "model.pt")
    shutil.copy(clf / "models" / "model.pt", clf / "models" / "feature_extractor.pt")
    out = tmp_path / "out"
    _workflow("evaluate_downstream.json", "eval", bundle_root=str(lite_bundle), reference_bundle=str(clf),
              dataset_dir=str(data), use_classifier_val_split=False, output_dir=str(out), image_size=64,
              gradcam_cases=1)
    res = json.loads((out / "downstream.json").read_text())
    assert res["n"] == 6 and res["n_positive"] == 3
    for key in ("auc_lr_bicubic", "auc_sr", "auc_hr"):
        assert 0.0 <= res[key] <= 1.0
    # untrained zero-residual SR = bicubic: identical classifier inputs, identical AUC
    assert res["auc_sr"] == pytest.approx(res["auc_lr_bicubic"])
    assert res["psnr_sr"] == pytest.approx(res["psnr_bicubic"], abs=0.01)
    assert (out / "gradcam_0.png").is_file() and (out / "downstream_per_image.csv").is_file()
