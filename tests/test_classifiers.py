"""Classifier networks, classification metrics and calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_monai.metrics.classification import (
    choose_threshold,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    roc_auc,
)
from cxr_monai.networks import ResNet18SA, SABasicBlock, SpatialAttention, densenet121, pneumonia_cnn, resnet, resnet18_sa


def test_resnet18sa_has_attention_in_every_block_and_shapes():
    net = resnet18_sa("lite")
    blocks = [m for m in net.modules() if isinstance(m, SABasicBlock)]
    assert len(blocks) == 8
    assert all(isinstance(b.attention, SpatialAttention) for b in blocks)
    x = torch.rand(2, 1, 224, 224)
    assert net(x).shape == (2, 2)
    assert net.features(x).shape == (2, 256)
    maps = net.feature_maps(x)
    assert [m.shape[-1] for m in maps] == [56, 56, 28, 14, 7]
    assert 2.5e6 < sum(p.numel() for p in net.parameters()) < 3.0e6
    assert 11.0e6 < sum(p.numel() for p in resnet18_sa("full").parameters()) < 11.4e6
    plain = ResNet18SA(attention=False)
    assert not any(isinstance(m, SpatialAttention) for m in plain.modules())


def test_spatial_attention_gate_is_a_bounded_map():
    sa = SpatialAttention(7)
    x = torch.randn(3, 8, 16, 16)
    g = sa.gate(x)
    assert g.shape == (3, 1, 16, 16) and float(g.min()) > 0 and float(g.max()) < 1
    assert torch.allclose(sa(x), x * g)
    with pytest.raises(ValueError):
        SpatialAttention(6)


def test_presets_and_baselines_forward():
    assert resnet18_sa("mnist")(torch.rand(2, 1, 28, 28)).shape == (2, 2)
    assert pneumonia_cnn()(torch.rand(2, 1, 128, 128)).shape == (2, 2)
    assert densenet121()(torch.rand(2, 1, 64, 64)).shape == (2, 2)
    assert resnet(18)(torch.rand(2, 1, 64, 64)).shape == (2, 2)
    with pytest.raises(ValueError):
        resnet18_sa("huge")
    torch.jit.script(resnet18_sa("lite"))


def test_local_pretrained_weights_round_trip(tmp_path):
    net = resnet18_sa("lite")
    torch.save({"network": net.state_dict()}, tmp_path / "w.pt")
    other = resnet18_sa("lite", pretrained_path=tmp_path / "w.pt")
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError):
        resnet18_sa("lite", pretrained_path=tmp_path / "missing.pt")


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.6 + 0.4 * y, 1)  # coarse values -> many ties
    pos, neg = p[y == 1], p[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert roc_auc(p, y) == pytest.approx(pairwise, abs=1e-12)
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_report_counts_and_threshold():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.7, 0.3, 0.6, 0.8, 0.9])
    r = classification_report(p, y, threshold=0.5)
    assert r["confusion_matrix"] == [[2, 1], [1, 3]]
    assert r["accuracy"] == pytest.approx(5 / 7)
    assert r["precision"] == pytest.approx(3 / 4) and r["recall"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(2 / 3) and r["n"] == 7
    t = choose_threshold(p, y)
    best = classification_report(p, y, t)
    assert best["recall"] + best["specificity"] >= r["recall"] + r["specificity"]


def test_temperature_scaling_reduces_overconfidence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    true_logit = (2 * y - 1) * 1.0 + rng.normal(0, 1.0, 2000)
    labels = (rng.random(2000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = np.stack([np.zeros_like(true_logit), true_logit * 4.0], 1)  # 4x overconfident
    t = fit_temperature(logits, labels)
    assert 3.0 < t < 5.0
    raw = 1 / (1 + np.exp(-logits[:, 1]))
    cal = 1 / (1 + np.exp(-logits[:, 1] / t))
    assert expected_calibration_error(cal, labels) < expected_calibration_error(raw, labels)
