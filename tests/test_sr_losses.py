"""SR losses: pixel, Charbonnier, degradation consistency, perceptual with injectable extractors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cxr_monai.losses import (
    CharbonnierLoss,
    ClassifierFeatureExtractor,
    DegradationConsistencyLoss,
    PerceptualLoss,
    PixelLoss,
    VGG19FeatureExtractor,
    classifier_feature_extractor,
)
from cxr_monai.metrics.sr import degrade


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pixel_losses_values() -> None:
    pred, target = torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.5)
    assert float(PixelLoss("l1")(pred, target)) == pytest.approx(0.5)
    assert float(PixelLoss("l2", weight=2.0)(pred, target)) == pytest.approx(0.5)
    assert float(CharbonnierLoss(eps=1e-3)(pred, target)) == pytest.approx((0.25 + 1e-6) ** 0.5)
    # border: only the 4x4 center is compared
    target2 = target.clone()
    target2[..., 2:-2, 2:-2] = 0.0
    assert float(PixelLoss("l1", border=2)(pred, target2)) == 0.0
    assert PixelLoss("l1", reduction="none")(pred, target).shape == pred.shape


def test_pixel_loss_checks() -> None:
    with pytest.raises(ValueError):
        PixelLoss("l3")
    with pytest.raises(ValueError):
        PixelLoss(reduction="max")
    with pytest.raises(ValueError):
        PixelLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))


def test_degradation_consistency_loss() -> None:
    torch.manual_seed(0)
    hr = torch.rand(2, 1, 32, 32)
    lr = degrade(hr, 1.0, 4)
    loss = DegradationConsistencyLoss(1.0, 4)
    assert float(loss(hr, lr)) < 1e-6
    sr = hr.clone().requires_grad_(True)
    bad = loss(sr + 0.1, lr)
    assert float(bad) > 0.05
    bad.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0


class _TwoLayer(nn.Module):
    """Tiny fixed extractor returning two maps (stands in for any injected network)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.c1(x))
        return [a, self.c2(a)]


def test_perceptual_loss_with_injected_extractor() -> None:
    ext = _TwoLayer()
    loss = PerceptualLoss(ext, layer_weights=(1.0, 0.5))
    x = torch.rand(2, 1, 16, 16)
    assert float(loss(x, x)) == 0.0
    pred = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    val = loss(pred, x)
    assert float(val) > 0
    val.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in ext.parameters())
    with pytest.raises(ValueError):
        PerceptualLoss(ext, layer_weights=(1.0,))(pred, x)
    # a plain function works as an extractor too
    fn_loss = PerceptualLoss(lambda t: [t, t.mean(dim=(2, 3), keepdim=True)], criterion="l2")
    assert float(fn_loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))) == pytest.approx(2.0)


def test_classifier_feature_extractor_wraps_feature_maps() -> None:
    from cxr_monai.networks import resnet18_sa

    net = resnet18_sa("lite")
    ext = ClassifierFeatureExtractor(net, layers=(1, 2))
    ext.train()  # must stay frozen / in eval mode
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    feats = ext(torch.rand(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64]
    with pytest.raises(ValueError, match="feature_maps"):
        ClassifierFeatureExtractor(nn.Conv2d(1, 1, 1))


def test_default_extractor_refuses_missing_weights(tmp_path: Path, project_root: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    src = project_root / "bundles" / "cxr_pneumonia_classifier" / "configs" / "inference.json"
    assert src.is_file()
    (bundle / "configs" / "inference.json").write_text(src.read_text())
    with pytest.raises(FileNotFoundError):
        classifier_feature_extractor(bundle)  # never falls back to random weights


def test_default_extractor_loads_the_trained_classifier(project_root: Path) -> None:
    bundle = project_root / "bundles" / "cxr_pneumonia_classifier"
    assert (bundle / "models" / "model.pt").is_file(), "the classifier bundle ships trained weights"
    ext = classifier_feature_extractor(bundle)
    feats = ext(torch.rand(1, 1, 64, 64))
    assert len(feats) == 3 and all(torch.isfinite(f).all() for f in feats)


def test_vgg19_extractor_from_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # torchvision layout for the first two convs only (enough for conv1_2)
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3) * 0.1, "features.0.bias": torch.zeros(64),
        "features.2.weight": torch.randn(64, 64, 3, 3) * 0.05, "features.2.bias": torch.zeros(64),
    }
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    ext = VGG19FeatureExtractor(path, layers=("conv1_2",))
    out = ext(torch.rand(1, 1, 16, 16))
    assert len(out) == 1 and out[0].shape == (1, 64, 16, 16)
    assert torch.allclose(ext.features[0].weight, state["features.0.weight"])
    with pytest.raises(ValueError, match="not a VGG19"):
        VGG19FeatureExtractor(path, layers=("conv2_1",))
    with pytest.raises(FileNotFoundError):
        VGG19FeatureExtractor(tmp_path / "absent.pth")
    with pytest.raises(ValueError):
        VGG19FeatureExtractor(path, layers=("conv9_9",))
