"""SR workflows: the trainer (stage 1 L1, stage 2 GAN + EMA, bf16 autocast), metric and image writers; the
back-projection transform they post-process with."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, MetaTensor
from monai.utils import CommonKeys as Keys

from cxr_monai.engines.sr import PrepareSRBatch, SRImageWriter, SRMetricsWriter, SRTrainer, make_ema
from cxr_monai.metrics.sr import back_projection, consistency_psnr, degrade
from cxr_monai.transforms import BackProjection, BackProjectiond, back_project
from cxr_monai.networks import UNetDiscriminatorSN, csaegan_lite


pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_feat=16, num_block=1, num_grow_ch=8, csa_reduction=4)


def _pairs(n: int = 4, size: int = 32) -> list[dict[str, torch.Tensor]]:
    from cxr_monai.data.phantom import make_phantom

    out = []
    for i in range(n):
        img, _ = make_phantom(size=128, seed=i, noise=False)
        hr = torch.from_numpy(img)[:, 40 : 40 + size, 40 : 40 + size].contiguous()
        out.append({"hr": hr, "lr": degrade(hr, 1.0, 4)})
    return out


def test_prepare_batch() -> None:
    batch = {"lr": torch.zeros(1, 1, 4, 4), "hr": torch.ones(1, 1, 16, 16)}
    lr, hr = PrepareSRBatch()(batch, "cpu")
    assert lr.shape == (1, 1, 4, 4) and hr.shape == (1, 1, 16, 16)
    lr, hr = PrepareSRBatch("lr", "absent")(batch, "cpu")
    assert hr is None
    with pytest.raises(KeyError):
        PrepareSRBatch("image")(batch, "cpu")


def test_stage1_l1_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    net = csaegan_lite(**TINY)
    loader = DataLoader(_pairs(), batch_size=4, shuffle=False)
    trainer = SRTrainer("cpu", max_epochs=25, train_data_loader=loader, g_network=net,
                        g_optimizer=torch.optim.Adam(net.parameters(), 2e-3))
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[Keys.LOSS])))
    trainer.run()
    assert len(losses) == 25
    assert min(losses[-5:]) < losses[0]
    assert trainer.state.output[Keys.PRED].shape == (4, 1, 32, 32)


def test_stage2_shows_hr_as_real_and_updates_ema() -> None:
    torch.manual_seed(0)
    g = csaegan_lite(**TINY)
    d = UNetDiscriminatorSN(num_feat=8)
    seen: list[tuple[int, ...]] = []
    d.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    ema = make_ema(g)
    before = [p.clone() for p in ema.parameters()]
    d_before = [p.clone() for p in d.parameters()]
    loader = DataLoader(_pairs(2), batch_size=2)
    for gan_loss in ("relativistic", "hinge"):
        trainer = SRTrainer(
            "cpu", 2, loader, g, torch.optim.Adam(g.parameters(), 1e-3),
            d_network=d, d_optimizer=torch.optim.Adam(d.parameters(), 1e-3), gan_loss=gan_loss, gan_weight=0.1,
            consistency_loss=lambda sr, lr: (degrade(sr, 1.0, 4) - lr).abs().mean(), consistency_weight=1.0,
            ema_network=ema, ema_decay=0.5,
        )
        trainer.run()
        out = trainer.state.output
        assert {"loss_pixel", "loss_g_adv", "loss_d", "loss_consistency"} <= set(out)
    # the discriminator only ever sees HR-sized images (HR real, SR fake), never the LR input
    assert seen and all(s[-2:] == (32, 32) for s in seen)
    assert any(not torch.equal(a, b) for a, b in zip(before, ema.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d.parameters()))
    assert all(not p.requires_grad for p in ema.parameters())


def test_trainer_checks_arguments() -> None:
    g = csaegan_lite(**TINY)
    opt = torch.optim.Adam(g.parameters())
    loader = DataLoader(_pairs(1), batch_size=1)
    with pytest.raises(ValueError, match="together"):
        SRTrainer("cpu", 1, loader, g, opt, d_network=UNetDiscriminatorSN(num_feat=8))
    with pytest.raises(ValueError):
        SRTrainer("cpu", 1, loader, g, opt, gan_loss="wgan")
    with pytest.raises(ValueError):
        SRTrainer("cpu", 1, loader, g, opt, ema_decay=1.0)
    with pytest.raises(ValueError, match="float16 autocast needs a CUDA device"):
        SRTrainer("cpu", 1, loader, g, opt, amp=True, amp_kwargs={"dtype": torch.float16})
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        SRTrainer("cpu", 1, loader, g, opt, amp=True, amp_kwargs={"dtype": "float32"})


def _one_step(amp: bool, **kwargs) -> tuple[SRTrainer, dict[str, torch.dtype]]:
    torch.manual_seed(0)
    g = csaegan_lite(**TINY)
    torch.nn.init.normal_(g.conv_last.weight, std=1e-2)  # a non-zero residual, so that the loss has a gradient
    dtypes: dict[str, torch.dtype] = {}
    def record(name: str):
        def hook(module, inputs, output) -> None:
            dtypes.setdefault(name, output.dtype)
        return hook

    g.conv_first.register_forward_hook(record("g"))
    d = UNetDiscriminatorSN(num_feat=8)
    d.register_forward_hook(record("d"))
    trainer = SRTrainer("cpu", 1, DataLoader(_pairs(2), batch_size=2), g, torch.optim.SGD(g.parameters(), 0.1),
                        d_network=d, d_optimizer=torch.optim.SGD(d.parameters(), 0.1), gan_weight=0.1,
                        grad_clip=1.0, amp=amp, **kwargs)
    trainer.run()
    return trainer, dtypes


def test_bf16_autocast_on_cpu_matches_float32() -> None:
    ref, ref_dtypes = _one_step(False)
    amp, amp_dtypes = _one_step(True, amp_kwargs={"dtype": "bfloat16"})
    assert ref_dtypes == {"g": torch.float32, "d": torch.float32}
    assert amp_dtypes == {"g": torch.bfloat16, "d": torch.bfloat16}  # both networks ran under autocast
    assert ref.scaler is None and amp.scaler is None  # a GradScaler only for float16
    assert amp.state.output[Keys.PRED].dtype == torch.float32 and amp.state.output[Keys.LOSS].dtype == torch.float32
    for key in (Keys.LOSS, "loss_d", "loss_g_adv"):
        assert float(amp.state.output[key]) == pytest.approx(float(ref.state.output[key]), rel=0.05, abs=1e-3), key
    # the parameters stay float32 and take (nearly) the same step
    for p_amp, p_ref in zip(amp.g_network.parameters(), ref.g_network.parameters()):
        assert p_amp.dtype == torch.float32
    step = [float((pa - pr).abs().max()) for pa, pr in zip(amp.g_network.parameters(), ref.g_network.parameters())]
    assert max(step) < 5e-3
    # amp off: the default path (no autocast) is bit-for-bit the float32 path
    again, _ = _one_step(False)
    assert all(torch.equal(a, b) for a, b in zip(again.g_network.parameters(), ref.g_network.parameters()))


def test_back_projectiond_restores_consistency() -> None:
    pair = _pairs(1, size=64)[0]
    sr = (pair["hr"] + 0.05).clamp(0, 1)
    d = BackProjectiond("pred", lr_key="image", iterations=8)({"pred": sr, "image": pair["lr"]})
    assert float(consistency_psnr(d["pred"], pair["lr"])) > float(consistency_psnr(sr, pair["lr"])) + 5
    assert BackProjectiond("pred", iterations=0)({"pred": sr, "image": pair["lr"]})["pred"] is sr
    with pytest.raises(ValueError):
        BackProjectiond("pred", step=0)


def test_back_projection_transform_matches_the_metric_and_keeps_meta() -> None:
    pair = _pairs(2, size=32)
    sr = torch.stack([(p["hr"] * 0.9 + 0.05) for p in pair])
    lr = torch.stack([p["lr"] for p in pair])
    ours = back_project(sr, lr, 1.0, 4, iterations=5, step=0.8)
    assert torch.allclose(ours, back_projection(sr, lr, 1.0, 4, iterations=5, step=0.8), atol=1e-6)
    img = MetaTensor(sr[0], meta={"filename_or_obj": "a.png"})
    out = BackProjection(iterations=3)(img, lr[0])
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    assert torch.allclose(out.as_tensor(), back_project(sr[0], lr[0], iterations=3))
    assert not torch.equal(out.as_tensor(), sr[0])


def test_metrics_writer_files(tmp_path: Path) -> None:
    writer = SRMetricsWriter(tmp_path, figure_cases=1, figure_crop=32, extra={"crop": 64})
    for i, pair in enumerate(_pairs(2, size=64)):
        writer.add(pair["hr"], pair["hr"], pair["lr"], f"case{i}.png")  # a perfect SR
    summary = writer.completed()
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["n"] == 2 and data["crop"] == 64
    assert data["psnr_sr"] == float("inf") or data["psnr_sr"] > data["psnr_bicubic"] + 10
    assert data["ssim_sr"] > data["ssim_bicubic"]
    assert summary["consistency"] > 60
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    assert [r["image"] for r in rows] == ["case0.png", "case1.png"]
    assert (tmp_path / "figure.png").stat().st_size > 1000


def test_image_writer_formats_round_trip(tmp_path: Path) -> None:
    from cxr_monai.io import load_cxr

    sr = torch.rand(1, 32, 24)
    src = MetaTensor(torch.rand(1, 8, 6), meta={"spacing": (0.8, 0.6), "filename_or_obj": "x.nii.gz"})
    w = SRImageWriter(tmp_path, scale=4)
    p_png = w.write(sr, src, "/in/a.png")
    p_nii = w.write(sr, src, "/in/c.nii.gz")
    p_dcm = w.write(sr, None, "/in/b.dcm")
    assert [p.name for p in (p_png, p_nii, p_dcm)] == ["a_sr.png", "c_sr.nii.gz", "b_sr.dcm"]
    for p, tol in ((p_png, 1e-4), (p_nii, 1e-6), (p_dcm, 1e-3)):
        img, meta = load_cxr(p)
        assert img.shape == (1, 32, 24)
        assert float(abs(torch.from_numpy(img) - sr).max()) < tol, p
    _, meta = load_cxr(p_nii)
    assert meta["spacing"] == pytest.approx((0.2, 0.15))
    with pytest.raises(ValueError):
        SRImageWriter(tmp_path, output_format="jpg")
