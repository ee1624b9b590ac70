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

from cxr_monai.engines.sr import PrepareSRBatch, SRImageWriter, SRTrainer, make_ema
from cxr_monai.engines.sr_metrics import SRMetricsWriter
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
    assert [p.name for p in (p_png, p_nii)] == ["a_sr.png", "c_sr.nii.gz"]
    for p, tol in ((p_png, 1e-4), (p_nii, 1e-6)):
        img, meta = load_cxr(p)
        assert img.shape == (1, 32, 24)
        assert float(abs(torch.from_numpy(img) - sr).max()) < tol, p
    _, meta = load_cxr(p_nii)
    assert meta["spacing"] == pytest.approx((0.2, 0.15))
    with pytest.raises(ValueError):
        SRImageWriter(tmp_path, output_format="jpg")


# ------------------------------------------------------------- DICOM outputs: cxr_monai.dicom, as the deploy app

_SHA = "0123456789ab" + "f" * 52
_INFO = {"name": "CXR 4x super-resolution (CSAEGAN)", "version": "9.8.7", "weights_sha256": _SHA}


def _upsampled(path: Path, factor: int) -> torch.Tensor:
    """The source image repeated ``factor`` x ``factor`` (a stand-in for an SR output of that scale)."""
    from cxr_monai.io import load_cxr

    image, _ = load_cxr(path)
    return torch.from_numpy(image).repeat_interleave(factor, 1).repeat_interleave(factor, 2)


def test_image_writer_dicom_is_the_deploy_enhanced_sc(tmp_path: Path) -> None:
    """A DICOM source gets cxr_monai.dicom.enhanced_image_sc: in its study, source referenced, spacing / scale,
    provenance and the "not for primary diagnosis" wording; one series per study; dciodvfy-clean; reads back."""
    import pydicom

    from cxr_monai import dicom
    from cxr_monai.io import is_chest, load_cxr
    from tests.conftest import require_shared
    from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe

    exe = dciodvfy_exe()
    src_path = require_shared("dicom", "dx_thorax_mono1_small.dcm")  # MONOCHROME1 DX, PixelSpacing 1.2 x 1.2012
    src = pydicom.dcmread(src_path)
    sr = _upsampled(src_path, 2)
    w = SRImageWriter(tmp_path / "out", scale=2, model_info=_INFO)
    out = w.write(sr, None, str(src_path))
    out2 = w.write(sr, None, str(src_path))  # same name: the second instance replaces the file, same series
    assert out == out2 == tmp_path / "out" / "dx_thorax_mono1_small_sr.dcm"
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.InstanceNumber == 2
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.PatientName == src.PatientName and ds.BodyPartExamined == src.BodyPartExamined
    assert ds.SeriesInstanceUID == w._series[src.StudyInstanceUID][0] != src.SeriesInstanceUID
    assert ds.SeriesNumber == 9001 and ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 16 and ds.BurnedInAnnotation == "NO"
    assert ds.SeriesDescription == "AI-enhanced 2x - NOT FOR PRIMARY DIAGNOSIS"
    assert "CXR 4x super-resolution (CSAEGAN) 9.8.7" in ds.DerivationDescription
    assert "0123456789ab" in ds.DerivationDescription and "not for primary diagnosis" in ds.DerivationDescription
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.6, 1.2012 / 2], rel=1e-6)
    # the same object the deploy app writes (UIDs apart)
    ref = dicom.enhanced_image_sc(src, sr[0].numpy(), {**_INFO, "model_name": _INFO["name"], "scale": 2},
                                  series_uid=dicom.new_uid(), series_number=9001)
    for key in ("SeriesDescription", "DerivationDescription", "PixelSpacing", "WindowCenter", "WindowWidth",
                "ImageType", "LossyImageCompression", "Manufacturer", "PatientOrientation", "Laterality"):
        assert ds.get(key) == ref.get(key), key
    assert ds.PixelData == ref.PixelData
    back, meta = load_cxr(out)
    assert back.shape == tuple(sr.shape)
    assert float((torch.from_numpy(back) - sr).abs().max()) <= 0.5 / 65535 + 1e-6
    assert meta["spacing"] == pytest.approx((0.6, 1.2012 / 2), rel=1e-6) and is_chest(meta)
    assert dciodvfy_errors(exe, out) == []


def test_image_writer_dicom_lossy_source_and_detector_spacing(tmp_path: Path) -> None:
    """A JPEG source marks the output lossy; a source with ImagerPixelSpacing only gets NominalScannedPixelSpacing
    (detector spacing / scale), never a PixelSpacing; two images of one study share the series."""
    import pydicom

    from cxr_monai.data.phantom import write_phantom_dicom
    from tests.conftest import require_shared
    from tests.dicom_checks import dciodvfy_errors, dciodvfy_exe

    exe = dciodvfy_exe()
    jpeg = require_shared("dicom", "cr_chest_pa_mono1_jpeg.dcm")  # 1024 x 1024, PixelSpacing 0.168
    w = SRImageWriter(tmp_path / "out", scale=4, model_info=_INFO)
    small = torch.rand(1, 256, 256)  # a quarter of the source size: the spacing follows the size ratio
    out = w.write(small, None, str(jpeg))
    ds = pydicom.dcmread(out)
    assert ds.LossyImageCompression == "01"
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.672, 0.672], rel=1e-6)
    assert dciodvfy_errors(exe, out) == []

    src = write_phantom_dicom(tmp_path / "in" / "ph.dcm", size=40, seed=3)
    ph = pydicom.dcmread(src)
    imager = [float(v) for v in ph.ImagerPixelSpacing]
    del ph.PixelSpacing
    ph.save_as(src)
    sr = _upsampled(src, 4)
    a = pydicom.dcmread(w.write(sr, None, str(src)))
    w.suffix = "_sr_b"
    b = pydicom.dcmread(w.write(sr, None, str(src)))
    assert "PixelSpacing" not in a and "PixelSpacing" not in b
    assert [float(v) for v in a.NominalScannedPixelSpacing] == pytest.approx([s / 4 for s in imager], rel=1e-5)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID and (a.InstanceNumber, b.InstanceNumber) == (1, 2)
    assert a.StudyInstanceUID == ph.StudyInstanceUID and a.SeriesInstanceUID != ds.SeriesInstanceUID
    assert dciodvfy_errors(exe, tmp_path / "out" / "ph_sr.dcm") == []


def test_image_writer_never_invents_a_study(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No DICOM source to reference (a PNG, a missing file, a header without SOP Instance UID): PNG and a warning,
    also with output_format='dcm'."""
    import logging

    import pydicom

    from cxr_monai.data.phantom import write_phantom_dicom
    from cxr_monai.io import load_cxr, save_png

    png = save_png(tmp_path / "in" / "a.png", torch.rand(1, 8, 6))
    src = write_phantom_dicom(tmp_path / "in" / "no_uid.dcm", size=16, seed=1)
    ds = pydicom.dcmread(src)
    del ds.SOPInstanceUID
    ds.save_as(src)
    sr = torch.rand(1, 32, 24)
    w = SRImageWriter(tmp_path / "out", scale=4, output_format="dcm", model_info=_INFO)
    with caplog.at_level(logging.WARNING, logger="cxr_monai.engines.sr"):
        outs = [w.write(sr, None, str(png)), w.write(sr, None, "/in/missing.dcm"), w.write(sr, None, str(src))]
    assert [p.name for p in outs] == ["a_sr.png", "missing_sr.png", "no_uid_sr.png"]
    assert not list((tmp_path / "out").glob("*.dcm"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all("PNG written instead of DICOM" in m for m in messages)
    assert "not DICOM" in messages[0] and "not a file" in messages[1] and "SOPInstanceUID" in messages[2]
    back, _ = load_cxr(outs[2])
    assert float((torch.from_numpy(back) - sr).abs().max()) < 1e-4
