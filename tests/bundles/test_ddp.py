"""Multi-process training (DDP, gloo on the CPU) of every bundle through its multi_gpu_train.json on 2 processes:
parameters are identical across ranks and, where the network has no batch statistics, equal to a single-process
run with the same global batch (the same samples step by step)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import PROJECT_ROOT

DRIVER = Path(__file__).with_name("ddp_driver.py")
BUNDLES = PROJECT_ROOT / "bundles"
pytestmark = pytest.mark.slow
# plain SGD for the equality checks: Adam divides by sqrt(v), which turns float-rounding differences of
# near-zero gradients into full-size steps; the bundles' own optimizers run unchanged under DDP
SGD = {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": 0.05}


def _run(bundle: str, configs: list[str], overrides: dict, net_id: str, prefix: Path, nproc: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 \
        else [sys.executable]
    cmd = [*launcher, str(DRIVER), str(BUNDLES / bundle), json.dumps(configs), json.dumps(overrides), net_id, str(prefix)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                                   "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _load(prefix: Path, rank: int) -> dict:
    return torch.load(f"{prefix}_rank{rank}.pt", weights_only=True)


def _assert_equal(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from cxr_monai.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("ddp_data"), n_per_class=8, size=32, seed=0)


def test_classifier_ddp_equals_single_process(phantoms: Path, tmp_path: Path) -> None:
    # InstanceNorm network: no batch statistics, so 2 x 4 images per step equal 1 x 8 exactly (ResNet18SA's
    # BatchNorm needs SyncBatchNorm for that, which the CPU does not have; the config enables it on CUDA)
    common = {
        "dataset_dir": str(phantoms), "image_size": 32, "max_epochs": 2, "val_fraction": 0.25, "num_workers": 0,
        "network_def": {"_target_": "monai.networks.nets.Classifier", "in_shape": [1, 32, 32], "classes": 2,
                        "channels": [4, 8], "strides": [2, 2], "num_res_units": 0},
        "train#preprocessing#transforms": "$cxr_monai.transforms.classifier_train_transforms(['image'], @image_size, augment=False)",
        "use_balanced_sampler": True, "seed": 0, "optimizer": SGD,
    }
    ddp = tmp_path / "ddp"
    _run("cxr_pneumonia_classifier", ["train.json", "multi_gpu_train.json"],
         {**common, "batch_size": 4, "output_dir": str(ddp)}, "network", ddp / "params", 2)
    single = tmp_path / "single"
    _run("cxr_pneumonia_classifier", ["train.json"],
         {**common, "batch_size": 8, "output_dir": str(single),
          "train#sampler": "$cxr_monai.data.DistributedBalancedSampler(@train_labels, seed=@seed, num_replicas=1, rank=0)",
          "train#dataloader#shuffle": False}, "network", single / "params", 1)
    r0, r1, one = _load(ddp / "params", 0), _load(ddp / "params", 1), _load(single / "params", 0)
    _assert_equal(r0, r1, 0.0)
    _assert_equal(r0, one, 1e-5)
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in r0.values())
    # rank 0 alone wrote checkpoints, TensorBoard and the calibration
    assert list(ddp.rglob("checkpoint_epoch=*.pt")) and (ddp / "calibration.json").is_file()


def test_distributed_balanced_sampler_shares_one_balanced_epoch() -> None:
    from cxr_monai.data import DistributedBalancedSampler

    labels = [0] * 10 + [1] * 30
    one = list(DistributedBalancedSampler(labels, seed=3, num_replicas=1, rank=0))
    shares = [list(DistributedBalancedSampler(labels, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == sorted(one) and shares[0] == one[0::2] and shares[1] == one[1::2]
    frac = sum(labels[i] for i in one) / len(one)
    big = list(DistributedBalancedSampler(labels, seed=0, num_samples=4000, num_replicas=1, rank=0))
    # balanced, not 75 % class 1: one epoch of 40 draws (0.4 with this seed) and 4,000 draws
    assert abs(frac - 0.5) < 0.2 and abs(sum(labels[i] for i in big) / len(big) - 0.5) < 0.05
    s = DistributedBalancedSampler(labels, seed=3, num_replicas=1, rank=0)
    s.set_epoch(1)
    assert list(s) != one  # a new draw each epoch


def test_sr_ddp_equals_single_process(tmp_path: Path) -> None:
    from cxr_monai.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_per_class=4, size=64, seed=1)
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*.png"))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": f} for f in files[:8]], "validation": [{"image": files[-1]}]}))
    # deterministic preprocessing (whole-image patches, no flips) so that every process sees the same pixels
    common = {"dataset_dir": str(data), "datalist_file": str(datalist), "patch_size": 64, "patches_per_image": 1,
              "max_epochs": 1, "epoch_length": 2, "val_crop": 64, "num_workers": 0, "seed": 0,
              "train#preprocessing#transforms#4#prob": 0.0, "train#preprocessing#transforms#5#prob": 0.0,
              "optimizer": SGD}
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run("cxr_sr_csaegan", ["train_psnr.json", "multi_gpu_train.json"],
         {**common, "images_per_batch": 2, "output_dir": str(ddp)}, "network", ddp / "params", 2)
    _run("cxr_sr_csaegan", ["train_psnr.json"],
         {**common, "images_per_batch": 4, "output_dir": str(single),
          "train#dataloader#sampler": "$torch.utils.data.DistributedSampler(@train#dataset, num_replicas=1, rank=0, shuffle=True, seed=0)",
          "train#dataloader#shuffle": False}, "network", single / "params", 1)
    r0, r1, one = _load(ddp / "params", 0), _load(ddp / "params", 1), _load(single / "params", 0)
    _assert_equal(r0, r1, 0.0)
    _assert_equal(r0, one, 1e-5)
    assert (ddp / "model.pt").is_file()


def test_synthesis_gan_ddp_runs_and_ranks_agree(phantoms: Path, tmp_path: Path) -> None:
    """The GAN on 2 processes: generator and discriminator identical on both ranks, the EMA generator is a
    plain network (no ``module.`` keys), a time limit stops both ranks at the same iteration, a second run
    resumes. (Equality with one process is not claimed: the generator's conditional BatchNorm uses per-rank
    batch statistics on the CPU.)"""
    out = tmp_path / "gan"
    common = {"dataset_dir": str(phantoms), "output_dir": str(out), "network_preset": "tiny", "image_size": 32,
              "attn_resolution": 16, "batch_size": 4, "val_fraction": 0.2, "ema_start": 0, "log_every": 1,
              "epoch_length": 2, "num_workers": 0}
    _run("cxr_synth_sgan", ["train.json", "multi_gpu_train.json"], {**common, "max_epochs": 1}, "generator",
         out / "g", 2)
    _assert_equal(_load(out / "g", 0), _load(out / "g", 1), 0.0)
    _run("cxr_synth_sgan", ["train.json", "multi_gpu_train.json"], {**common, "max_epochs": 2}, "discriminator",
         out / "d", 2)
    _assert_equal(_load(out / "d", 0), _load(out / "d", 1), 0.0)
    state = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4  # resumed from epoch 1, not restarted
    assert not any(k.startswith("module.") for k in state["ema"])
    assert (out / "model.pt").is_file()
    # a time limit of 0 s: every rank stops after the same (first) iteration instead of one rank hanging
    limited = tmp_path / "limited"
    _run("cxr_synth_sgan", ["train.json", "multi_gpu_train.json"],
         {**common, "output_dir": str(limited), "max_epochs": 5, "time_limit_sec": 0.0}, "generator", limited / "g", 2)
    _assert_equal(_load(limited / "g", 0), _load(limited / "g", 1), 0.0)
