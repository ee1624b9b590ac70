"""The two-view classifier input: the preprocessing stacks the whole film and its lung-field view, each made as
the one-view preprocessing makes it; ensemble members read their own channel; Grad-CAM keeps the views apart;
compact weights load back into the float32 network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from cxr_monai.engines.views import compact_state_dict, source_view
from cxr_monai.explain import gradcam_split
from cxr_monai.networks import ClassifierEnsemble, classifier_ensemble
from cxr_monai.transforms import classifier_preprocessing, load_lung_field

ROOT = Path(__file__).resolve().parents[1]
LUNG = ROOT / "bundles" / "cxr_pneumonia_classifier" / "models" / "lung_field.ts"
DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _film() -> str:
    return str(sorted((DATA / "kermany_site_sample" / "PNEUMONIA").iterdir())[0])


def test_two_view_input_is_the_two_one_view_inputs_stacked() -> None:
    lung = load_lung_field(LUNG)
    item = {"image": _film()}
    whole = Compose(classifier_preprocessing(["image"], 96))(dict(item))["image"]
    view = Compose(classifier_preprocessing(["image"], 96, lung_field=lung))(dict(item))["image"]
    both = Compose(classifier_preprocessing(["image"], 96, lung_field=lung, views=("whole", "lung_field")))(dict(item))
    assert set(both) == {"image"} and tuple(both["image"].shape) == (2, 96, 96)
    torch.testing.assert_close(both["image"][0], whole[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both["image"][1], view[0], rtol=1e-5, atol=1e-6)
    assert both["image"].meta["lung_field"] == view.meta["lung_field"]
    assert float((both["image"][0] - both["image"][1]).abs().mean()) > 0.01  # two different views
    with pytest.raises(ValueError, match="lung-field network"):
        classifier_preprocessing(["image"], 96, views=("whole", "lung_field"))
    with pytest.raises(ValueError, match="distinct names"):
        classifier_preprocessing(["image"], 96, lung_field=lung, views=("whole", "whole"))


def _member_outputs(net: ClassifierEnsemble, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.member_probabilities(x)


def test_members_read_their_own_view_and_the_output_is_the_mean_probability() -> None:
    torch.manual_seed(0)
    net = classifier_ensemble("slim", 3, views=[0, 0, 1]).eval()
    x = torch.rand(2, 2, 64, 64)
    probs = _member_outputs(net, x)
    with torch.no_grad():
        for i, v in enumerate([0, 0, 1]):  # each member alone on its own channel
            m = net.members[i]
            ref = net._calibrated(m.cam_head(m.cam_features(x[:, v:v + 1])), i).softmax(1)
            torch.testing.assert_close(probs[i], ref, rtol=1e-5, atol=1e-6)
        out = net(x).softmax(1)
    torch.testing.assert_close(out, probs.mean(0), rtol=1e-5, atol=1e-6)
    # changing the lung-field channel moves only the member that reads it
    y = x.clone()
    y[:, 1] = torch.rand(2, 64, 64)
    moved = (_member_outputs(net, y) - probs).abs().amax(dim=(1, 2))
    assert moved[0] == 0 and moved[1] == 0 and moved[2] > 0
    assert net.view_channels() == [list(range(0, 2 * net.channels[0])),
                                   list(range(2 * net.channels[0], 3 * net.channels[0]))]
    # the view layout is part of the weights: a one-view ensemble refuses them
    with pytest.raises(RuntimeError, match="member_views"):
        classifier_ensemble("slim", 3).load_state_dict(net.state_dict())
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


def test_gradcam_keeps_views_apart() -> None:
    torch.manual_seed(1)
    net = classifier_ensemble("slim", 2, views=[0, 1]).eval()
    x = torch.rand(1, 2, 64, 64)
    per_view = gradcam_split(net.cam_features, net.cam_head, x, 1, groups=net.view_channels())
    assert per_view.shape == (1, 2, 64, 64) and per_view.max() == pytest.approx(1.0)
    # each view's map comes from its own member only: equal to that member's Grad-CAM up to the joint scale
    for v in range(2):
        m = net.members[v]

        def head(f: torch.Tensor, v: int = v) -> torch.Tensor:
            feats = [f if i == v else net.members[i].cam_features(x[:, i:i + 1]) for i in range(2)]
            return net.cam_head(torch.cat(feats, 1))

        alone = gradcam_split(lambda t, v=v: net.members[v].cam_features(t[:, v:v + 1]), head, x, 1)[0]
        if per_view[0, v].max() > 0 and alone.max() > 0:
            np.testing.assert_allclose(per_view[0, v] / per_view[0, v].max(), alone, atol=1e-4)


def test_compact_weights_load_back_within_float16_rounding() -> None:
    torch.manual_seed(2)
    net = classifier_ensemble("slim", 2, views=[0, 1]).eval()
    net.temperatures.copy_(torch.tensor([0.6170639521672315, 0.7946629810256142]))
    compact = compact_state_dict(net.state_dict())
    convs = [k for k, v in compact.items() if v.ndim >= 2]
    assert len(convs) > 20 and all(compact[k].dtype == torch.float16 for k in convs)
    assert compact["temperatures"].dtype == torch.float32 and compact["member_views"].dtype == torch.long
    again = classifier_ensemble("slim", 2, views=[0, 1]).eval()
    again.load_state_dict(compact)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    x = torch.rand(2, 2, 64, 64)
    with torch.no_grad():
        a, b = net(x).softmax(1), again(x).softmax(1)
    assert float((a - b).abs().max()) < 5e-3 and not torch.equal(a, b)
    assert source_view({"lung_field_sha256": "ab"}) == "lung_field" and source_view({}) == "whole"
    with pytest.raises(ValueError, match="cannot be a source"):
        source_view({"views": ["whole", "lung_field"]})
