"""Feature-map figures (cxr_monai.explain.FeatureMapCollector / save_feature_maps) and ``inference.json
--feature_maps True`` on the shipped ensemble (phantom input, small image size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxr_monai.explain import FeatureMapCollector, feature_map_layers, save_feature_maps, top_channels
from cxr_monai.networks import classifier_ensemble, resnet18_sa


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Random non-zero BatchNorm scales (a fresh net zeroes bn2, so every block would be the identity)."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
    return net.eval()


def test_hooks_see_every_stage_with_the_network_shapes():
    net = _trained_like(resnet18_sa("slim"))
    fm = FeatureMapCollector(net)
    maps = fm.collect(torch.rand(2, 1, 64, 64))
    widths = (24, 48, 96, 192)
    # stem: 7x7/2 + max-pool/2 -> 16x16; stages at strides 1, 2, 2, 2
    expected = {"stem": (2, 24, 16, 16)}
    expected.update({f"layer{i + 1}": (2, w, 16 >> i, 16 >> i) for i, w in enumerate(widths)})
    for i in range(4):  # two blocks per stage, each with its spatial-attention gate (one channel)
        for b in range(2):
            expected[f"layer{i + 1}.{b}.attention.conv"] = (2, 1, 16 >> i, 16 >> i)
    assert {k: tuple(v.shape) for k, v in maps.items()} == expected
    for name, kind in fm.layers.items():
        if kind == "attention":
            assert float(maps[name].min()) >= 0 and float(maps[name].max()) <= 1
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_ensemble_members_are_all_hooked():
    net = classifier_ensemble("slim", members=3)
    layers = feature_map_layers(net)
    assert len(layers) == 3 * (5 + 8)
    assert {n.split(".")[1] for n in layers} == {"0", "1", "2"}


def test_a_channel_map_equals_that_layer_output():
    net = _trained_like(classifier_ensemble("slim", members=2))
    x = torch.rand(2, 1, 64, 64)
    fm = FeatureMapCollector(net)
    maps = fm.collect(x)
    with torch.no_grad():
        for prefix, member in (("members.0", net.members[0]), ("members.1", net.members[1])):
            direct = member.feature_maps(x)  # stem, layer1..4 by a direct forward of the member
            for name, ref in zip(("stem", "layer1", "layer2", "layer3", "layer4"), direct):
                got = maps[f"{prefix}.{name}"]
                for c in top_channels(got[1], 4):
                    torch.testing.assert_close(got[1, c], ref[1, c], atol=1e-5, rtol=1e-5)
                # and each stage from its recorded input through that submodule alone
                sub = dict(net.named_modules())[f"{prefix}.{name}"]
                torch.testing.assert_close(sub(fm.inputs[f"{prefix}.{name}"]), got, atol=1e-5, rtol=1e-5)
            att = dict(net.named_modules())[f"{prefix}.layer3.1.attention"]
            block_in = fm.inputs[f"{prefix}.layer3.1.attention.conv"]  # the (mean, max) stack the gate convolves
            torch.testing.assert_close(torch.sigmoid(att.conv(block_in)), maps[f"{prefix}.layer3.1.attention.conv"],
                                       atol=1e-5, rtol=1e-5)


def test_top_channels_orders_by_mean():
    f = torch.zeros(5, 3, 3)
    f[3] += 2.0
    f[1] += 1.0
    assert top_channels(f, 2) == [3, 1]
    assert len(top_channels(f, 9)) == 5


def test_figure_is_written(tmp_path):
    net = _trained_like(classifier_ensemble("slim", members=2))
    x = torch.rand(1, 1, 64, 64)
    fm = FeatureMapCollector(net)
    maps = fm.collect(x)
    path = save_feature_maps(x[0], maps, tmp_path / "fm" / "img.png", cam=torch.rand(64, 64).numpy(), layers=fm.layers)
    assert path.is_file() and path.stat().st_size > 10_000


def test_inference_bundle_writes_feature_maps(tmp_path):
    from cxr_monai.cli import BUNDLES_DIR, run_workflow
    from cxr_monai.data.phantom import write_phantom_dataset

    bundle = BUNDLES_DIR / "cxr_pneumonia_classifier"
    if not (bundle / "models" / "model.pt").is_file():
        pytest.skip("the bundle's trained weights are not present")
    data = write_phantom_dataset(tmp_path / "data", n_per_class=1, size=96, seed=0)
    out = tmp_path / "inf"
    run_workflow(bundle, "inference.json", "infer", dataset_dir=str(data), output_dir=str(out), image_size=64,
                 use_scope_gate=False, feature_maps=True)
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 2
    for p in preds:
        fig = Path(p["feature_maps"])
        assert fig.parent == out / "feature_maps" and fig.name == Path(p["file"]).name.split(".")[0] + ".png"
        assert fig.is_file()
    # off by default: nothing written
    out2 = tmp_path / "inf2"
    run_workflow(bundle, "inference.json", "infer", dataset_dir=str(data), output_dir=str(out2), image_size=64,
                 use_scope_gate=False)
    assert not (out2 / "feature_maps").exists()
    assert "feature_maps" not in json.loads((out2 / "predictions.json").read_text())[0]
