"""The one classifier feature wrapper (cxr_monai.networks.features) and the one reference-network loader, and the
legacy presets that delegate to them (losses.ClassifierFeatureExtractor, metrics.generative.ClassifierFeatures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxr_monai.losses import ClassifierFeatureExtractor, PerceptualLoss
from cxr_monai.losses import classifier_feature_extractor as loss_extractor
from cxr_monai.metrics.generative import ClassifierFeatures, extract_features
from cxr_monai.metrics.generative import classifier_feature_extractor as metric_extractor
from cxr_monai.networks import ClassifierFeatureWrapper, resnet18_sa
from cxr_monai.reference_network import load_reference_network
from cxr_monai.transforms import PercentileNormalize

pytestmark = pytest.mark.usefixtures("one_thread")


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Two code paths computing the same features agree to float32 precision (1e-5 relative; features are O(1),
    so 1e-6 absolute covers values near 0), not bit for bit: kernels differ across CPUs and batch sizes."""
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(123)
    return resnet18_sa("lite").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return 0.2 + 0.5 * torch.rand(3, 1, 96, 96, generator=gen)  # not in [0, 1] full range: normalisation matters


def _expected_pooled(net: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    """The pre-unification ClassifierFeatures pipeline written out: resize, per-image 1-99 % normalise, features."""
    x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    norm = PercentileNormalize(1.0, 99.0)
    x = torch.stack([torch.as_tensor(norm(xi)) for xi in x])
    return torch.flatten(net.features(x), 1)


@torch.no_grad()
def test_pooled_mode_equals_the_networks_own_features(net: nn.Module, images: torch.Tensor) -> None:
    for size in (64, 128):  # shrinking (anti-aliased) and enlarging
        expected = _expected_pooled(net, images, size)
        unified = ClassifierFeatureWrapper(net, output="pooled", input_size=size, normalise=True)(images)
        legacy = ClassifierFeatures(net, input_size=size)(images)
        assert unified.shape == (3, 256)
        close(unified, expected)
        close(legacy, expected)
    # no resize and no normalisation: net.features
    close(ClassifierFeatureWrapper(net)(images), net.features(images))
    # the normalised input really is what the network saw: each image spans [0, 1]
    prepared = ClassifierFeatures(net, input_size=64).prepare(images)
    assert prepared.shape == (3, 1, 64, 64)
    assert torch.allclose(prepared.amin(dim=(1, 2, 3)), torch.zeros(3)) and torch.allclose(
        prepared.amax(dim=(1, 2, 3)), torch.ones(3))


@torch.no_grad()
def test_maps_mode_equals_the_networks_own_feature_maps(net: nn.Module, images: torch.Tensor) -> None:
    expected = net.feature_maps(images)
    unified = ClassifierFeatureWrapper(net, output="maps", layers=(1, 2, 3))(images)
    legacy = ClassifierFeatureExtractor(net, layers=(1, 2, 3))(images)
    assert len(unified) == len(legacy) == 3
    for i, (u, lg) in enumerate(zip(unified, legacy), start=1):
        close(u, expected[i])
        close(lg, expected[i])
    every = ClassifierFeatureWrapper(net, output="maps")(images)  # layers=None: all five maps
    assert len(every) == 5
    for a, b in zip(every, expected):
        close(a, b)


def test_freeze_keeps_eval_mode_and_gradients_reach_the_input() -> None:
    torch.manual_seed(0)
    net = resnet18_sa("lite")
    wrapper = ClassifierFeatureWrapper(net, output="maps", layers=(1, 2), freeze=True)
    wrapper.train()
    assert wrapper.training and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = torch.rand(2, 1, 64, 64)
    pred = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    loss = PerceptualLoss(ClassifierFeatureExtractor(net, layers=(1, 2)))(pred, x)
    loss.backward()
    assert float(loss) > 0 and pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    # without freeze the wrapper leaves the network trainable (the metrics preset's default)
    torch.manual_seed(0)
    free = resnet18_sa("lite")
    ClassifierFeatures(free).train()
    assert free.training and all(p.requires_grad for p in free.parameters())


def test_wrapper_argument_checks(net: nn.Module) -> None:
    with pytest.raises(ValueError, match="output"):
        ClassifierFeatureWrapper(net, output="logits")
    with pytest.raises(ValueError, match="feature_maps"):
        ClassifierFeatureWrapper(nn.Conv2d(1, 1, 1), output="maps")
    with pytest.raises(ValueError, match="features"):
        ClassifierFeatures(nn.Identity())
    with pytest.raises(ValueError, match="empty"):
        ClassifierFeatureWrapper(net, output="maps", layers=())
    with pytest.raises(ValueError, match="maps"):
        ClassifierFeatureWrapper(net, output="pooled", layers=(1,))
    with pytest.raises(ValueError, match="input_size"):
        ClassifierFeatureWrapper(net, input_size=4)
    with pytest.raises(ValueError, match="percentiles"):
        ClassifierFeatureWrapper(net, percentiles=(50.0, 10.0))
    # method=None: the network itself is the extractor
    ext = ClassifierFeatureWrapper(lambda t: t.mean(dim=(2, 3)), method=None)
    assert torch.equal(ext(torch.ones(2, 1, 8, 8)), torch.ones(2, 1))


def _fake_bundle(root: Path, net: nn.Module) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    cfg = {"imports": ["$import cxr_monai"], "bundle_root": ".",
           "network_def": {"_target_": "cxr_monai.networks.resnet18_sa", "preset": "lite", "num_classes": 2}}
    (root / "configs" / "feature_extractor.json").write_text(json.dumps(cfg))
    torch.save(net.state_dict(), root / "models" / "feature_extractor.pt")
    return root


@torch.no_grad()
def test_one_loader_behind_both_entry_points(tmp_path: Path, net: nn.Module, images: torch.Tensor) -> None:
    bundle = _fake_bundle(tmp_path / "bundle", net)
    ref = load_reference_network(bundle)
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))
    maps = loss_extractor(bundle)
    assert isinstance(maps, ClassifierFeatureExtractor)
    for a, b in zip(maps(images), net.feature_maps(images)[1:4]):
        close(a, b)
    pooled = metric_extractor(bundle, input_size=64)
    assert isinstance(pooled, ClassifierFeatures) and pooled.freeze
    pooled.train()
    assert not pooled.network.training
    expected = _expected_pooled(net, images, 64).double()
    # batches of 2 against one batch of 3: oneDNN may pick other kernels per batch size (not bit-exact)
    close(extract_features(images, pooled, batch_size=2), expected)


def test_loader_refuses_missing_weights_unless_told(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    with pytest.raises(FileNotFoundError, match="feature_extractor.pt"):
        load_reference_network(tmp_path)
    with pytest.raises(FileNotFoundError):
        loss_extractor(tmp_path)
    with pytest.raises(FileNotFoundError):
        metric_extractor(tmp_path)
    with pytest.raises(ValueError, match="bundle_root"):
        metric_extractor(None)
    a = metric_extractor(tmp_path, allow_untrained=True, seed=3, input_size=64)
    b = metric_extractor(tmp_path, allow_untrained=True, seed=3, input_size=64)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))  # the seeded fallback is reproducible


@torch.no_grad()
def test_shipped_reference_network_loads(project_root: Path) -> None:
    bundle = project_root / "bundles" / "cxr_pneumonia_classifier"  # ships models/feature_extractor.pt
    cfg = json.loads((bundle / "configs" / "feature_extractor.json").read_text())
    ext = metric_extractor(bundle, input_size=int(cfg["image_size"]))
    feats = ext(torch.rand(2, 1, 100, 100))
    assert feats.shape == (2, 256) and bool(torch.isfinite(feats).all())
    maps = loss_extractor(bundle)(torch.rand(1, 1, 64, 64))
    assert [m.shape[1] for m in maps] == [32, 64, 128]
    assert np.isfinite(sum(float(m.abs().sum()) for m in maps))
