"""The full-preset GPU training configs of cxr_sr_csaegan (train_full_gpu.json, train_full_gpu_gan.json), run on
the CPU with tiny overrides: the defaults switch every GPU feature off there, and bf16 autocast + channels_last
still train when switched on by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "cxr_sr_csaegan"
CONFIGS = BUNDLE / "configs"
STAGE1 = ["train_psnr.json", "train_full_gpu.json"]
STAGE2 = ["train_psnr.json", "train_gan.json", "train_full_gpu.json", "train_full_gpu_gan.json"]
# the full preset's layout (nearest+conv upsampler, no bicubic residual) at a CPU-test size
TINY_FULL = {"network_def#num_block": 1, "network_def#num_feat": 16, "network_def#num_grow_ch": 8,
             "network_def#csa_reduction": 4}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Three 96x96 phantom CXRs as 16-bit PNG."""
    from cxr_monai.data.phantom import make_phantom
    from cxr_monai.io import save_png

    root = tmp_path_factory.mktemp("sr_gpu_phantoms")
    for i in range(3):
        img, _ = make_phantom(size=96, seed=20 + i)
        save_png(root / f"ph{i}.png", img, bits=16)
    return root


def _tiny(phantoms: Path, out: Path, **extra) -> dict:
    return dict(
        bundle_root=str(BUNDLE), full_psnr_dir=str(out / "psnr"),
        train_datalist=[{"hr": str(phantoms / f"ph{i}.png")} for i in range(2)],
        val_datalist=[{"hr": str(phantoms / "ph2.png")}],
        max_epochs=1, epoch_length=2, patch_size=32, patches_per_image=1, images_per_batch=1, val_crop=32,
        val_interval=1, **TINY_FULL, **extra,
    )


def _workflow(files: list[str], overrides: dict) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=[str(CONFIGS / f) for f in files], meta_file=str(CONFIGS / "metadata.json"),
                        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", **overrides)
    wf.initialize()
    return wf


def _run(wf: ConfigWorkflow) -> None:
    wf.run()
    wf.finalize()


def _changed(before: dict, after: dict) -> float:
    return max(float((after[k].float() - v.float()).abs().max()) for k, v in before.items() if v.is_floating_point())


def test_full_gpu_stage1_defaults_on_cpu(phantoms: Path, tmp_path: Path) -> None:
    from cxr_monai.networks import CSAEGANGenerator, csaegan_full

    wf = _workflow(STAGE1, _tiny(phantoms, tmp_path))
    net = wf.parser.get_parsed_content("network")
    before = copy.deepcopy(net.state_dict())
    trainer = wf.parser.get_parsed_content("train#trainer")
    # the full preset's architecture, not the lite one
    assert isinstance(net, CSAEGANGenerator) and net.upsampler == "nearest_conv" and not net.residual_bicubic
    # on the CPU every GPU switch is off: float32, contiguous, no pinning, no compile, no scaler
    assert wf.parser.get_parsed_content("on_cuda") is False
    assert trainer.amp is False and trainer.to_kwargs == {} and trainer.non_blocking is False
    assert trainer.g_network is net
    assert wf.parser.get_parsed_content("train#dataloader").pin_memory is False
    assert wf.parser.get_parsed_content("validate#evaluator").amp is False
    assert net.conv_first.weight.is_contiguous()
    _run(wf)
    assert trainer.state.iteration == 2 and trainer.scaler is None
    assert np.isfinite(float(trainer.state.output["loss"]))
    assert trainer.state.output["pred"].dtype == torch.float32
    assert "val_psnr" in wf.parser.get_parsed_content("validate#evaluator").state.metrics
    out = tmp_path / "psnr"
    assert (out / "checkpoint_epoch=1.pt").is_file() and (out / "model.pt").is_file()
    saved = torch.load(out / "model.pt", weights_only=True)
    assert _changed(before, saved) > 0  # trained
    ref = csaegan_full(num_block=1, num_feat=16, num_grow_ch=8, csa_reduction=4)
    ref.load_state_dict(saved)  # strict: the file is a full-preset generator


def test_full_gpu_bf16_autocast_and_channels_last_on_cpu(phantoms: Path, tmp_path: Path) -> None:
    wf = _workflow(STAGE1, _tiny(phantoms, tmp_path, amp=True, amp_dtype="bfloat16", channels_last=True))
    net = wf.parser.get_parsed_content("network")
    assert net.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    before = copy.deepcopy(net.state_dict())
    seen: dict[str, torch.dtype | bool] = {}

    def hook(module, inputs, output):
        if module.training:
            seen["out"] = output.dtype
            seen["in_channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)

    net.conv_first.register_forward_hook(hook)
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.amp is True and trainer.amp_kwargs["dtype"] == torch.bfloat16
    assert trainer.to_kwargs == {"memory_format": torch.channels_last}
    _run(wf)
    assert trainer.state.iteration == 2
    assert seen == {"out": torch.bfloat16, "in_channels_last": True}  # autocast ran on a channels_last batch
    assert trainer.scaler is None  # bfloat16 needs no GradScaler
    assert np.isfinite(float(trainer.state.output["loss"]))
    assert trainer.state.output["pred"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay float32
    assert _changed(before, net.state_dict()) > 0
    assert (tmp_path / "psnr" / "model.pt").is_file()


def test_full_gpu_fp16_on_cpu_is_refused(phantoms: Path, tmp_path: Path) -> None:
    wf = _workflow(STAGE1, _tiny(phantoms, tmp_path, amp=True, amp_dtype="float16"))
    with pytest.raises(Exception) as info:
        wf.parser.get_parsed_content("train#trainer")
    chain, err = [], info.value
    while err is not None:  # the config parser wraps the trainer's ValueError
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, ValueError) and "float16 autocast needs a CUDA device" in str(e) for e in chain)


def test_full_gpu_stage1_then_stage2(phantoms: Path, tmp_path: Path) -> None:
    """The two commands of the documented single GPU command line, chained: stage 2 starts from stage 1's
    model.pt and writes the EMA generator."""
    _run(_workflow(STAGE1, _tiny(phantoms, tmp_path)))
    stage1 = torch.load(tmp_path / "psnr" / "model.pt", weights_only=True)
    from monai.bundle import ConfigParser

    parser = ConfigParser()  # the defaults, parsed only (initialize would create bundles/.../runs/)
    parser.read_config([str(CONFIGS / f) for f in STAGE2])
    parser.update({"bundle_root": str(BUNDLE)})
    assert Path(parser.get_parsed_content("output_dir")) == BUNDLE / "runs" / "train_full_gan"
    assert Path(parser.get_parsed_content("stage1_weights")) == BUNDLE / "runs" / "train_full_psnr" / "model.pt"
    out_dir = tmp_path / "gan"
    wf = _workflow(STAGE2, _tiny(phantoms, tmp_path, d_features=8, use_perceptual=False, ema_decay=0.5,
                                 output_dir=str(out_dir)))
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.d_network is not None and trainer.ema_network is not None and trainer.amp is False
    _run(wf)
    assert trainer.state.iteration == 2
    assert {"loss_g_adv", "loss_d", "loss_consistency"} <= set(trainer.state.output)
    ema = torch.load(out_dir / "model_gan.pt", weights_only=True)
    assert set(ema) == set(stage1)
    assert 0 < _changed(stage1, ema) < 0.1  # started from stage 1 and moved


def test_full_gpu_config_ids() -> None:
    cfg = json.loads((CONFIGS / "train_full_gpu.json").read_text())
    for key in ("amp", "amp_dtype", "channels_last", "compile", "pin_memory"):
        assert key in cfg, key
    assert cfg["compile"] is False and cfg["network_def#_target_"] == "cxr_monai.networks.csaegan_full"
    for key in ("amp", "channels_last", "pin_memory"):
        assert cfg[key] == "@on_cuda", key  # off on the CPU, on with CUDA


def test_full_gpu_compile_switch_wraps_only_the_trained_generator(phantoms: Path, tmp_path: Path) -> None:
    """compile=True hands the trainer a torch.compile wrapper of the same module (compiled lazily, at the first
    step: not run here); optimiser, checkpoints and validation keep the plain network."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in STAGE1])
    parser.update(_tiny(phantoms, tmp_path, compile=True))
    net = parser.get_parsed_content("network")
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.g_network is not net and getattr(trainer.g_network, "_orig_mod", None) is net
    assert all(a is b for a, b in zip(trainer.g_network.parameters(), net.parameters(), strict=True))
    assert parser.get_parsed_content("validate#evaluator").network is net


@pytest.mark.parametrize("files", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_full_gpu_configs_pass_monai_property_checks(files: list[str], phantoms: Path, tmp_path: Path) -> None:
    wf = _workflow(files, _tiny(phantoms, tmp_path, output_dir=str(tmp_path / "out")))
    assert isinstance(wf.check_properties(), list)  # raises on a missing required property
    assert wf.network_def is not None and wf.device is not None


def test_full_gpu_stage2_bf16_channels_last_on_cpu(phantoms: Path, tmp_path: Path) -> None:
    """Stage 2 with the GPU switches on (CPU bf16): discriminator, consistency loss and EMA under autocast."""
    from cxr_monai.networks import csaegan_full

    torch.manual_seed(0)
    stage1 = csaegan_full(num_block=1, num_feat=16, num_grow_ch=8, csa_reduction=4)
    (tmp_path / "psnr").mkdir()
    torch.save(stage1.state_dict(), tmp_path / "psnr" / "model.pt")
    wf = _workflow(STAGE2, _tiny(phantoms, tmp_path, d_features=8, use_perceptual=False, ema_decay=0.5,
                                 output_dir=str(tmp_path / "gan"), amp=True, channels_last=True))
    d = wf.parser.get_parsed_content("d_network")
    assert next(p for p in d.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    seen: list[torch.dtype] = []
    d.register_forward_hook(lambda m, i, o: seen.append(o.dtype) and None)
    trainer = wf.parser.get_parsed_content("train#trainer")
    _run(wf)
    assert trainer.state.iteration == 2 and trainer.amp and trainer.scaler is None
    assert seen and set(seen) == {torch.bfloat16}
    out = trainer.state.output
    assert all(np.isfinite(float(out[k])) for k in ("loss", "loss_d", "loss_g_adv", "loss_consistency"))
    ema = torch.load(tmp_path / "gan" / "model_gan.pt", weights_only=True)
    assert _changed(stage1.state_dict(), ema) > 0
