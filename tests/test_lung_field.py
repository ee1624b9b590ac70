"""The lung-field view: box rule, crop, scope rule, re-framing, the model-pairing check, and the shipped network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_monai.inference import check_lung_field, classifier_input, view_to_film
from cxr_monai.networks import lung_field_net
from cxr_monai.scope import lung_field_reason
from cxr_monai.transforms import LungField, LungFieldCrop, lung_box, reframe
from cxr_monai.utils import DeployModelError

BUNDLE_LUNG = "bundles/cxr_pneumonia_classifier/models/lung_field.ts"


def _two_lungs(size: int = 128, top: int = 30, bottom: int = 100, left: int = 20, right: int = 108) -> np.ndarray:
    p = np.zeros((size, size), np.float32)
    mid = (left + right) // 2
    p[top:bottom, left:mid - 6] = 0.9
    p[top:bottom, mid + 6:right] = 0.9
    return p


def test_lung_box_is_the_lung_extent_widened_by_the_margin():
    box = lung_box(_two_lungs(), margin=0.1, tail=0.0)
    assert box.found
    h, w = 100 - 30, 108 - 20
    assert box.top == pytest.approx((30 - 0.1 * h) / 128)
    assert box.bottom == pytest.approx((100 + 0.1 * h) / 128)
    assert box.left == pytest.approx((20 - 0.1 * w) / 128)
    assert box.right == pytest.approx(min(1.0, (108 + 0.1 * w) / 128))
    assert box.edge_contact == 0.0
    assert box.lung_fraction == pytest.approx((_two_lungs() > 0.5).mean())


def test_lung_box_ignores_specks_and_reports_edges_and_absence():
    p = _two_lungs()
    p[2, 2] = 1.0  # a speck far away: inside the 0.5 % tails
    assert lung_box(p, margin=0.0).top == pytest.approx(30 / 128)
    cut = _two_lungs(top=0, bottom=128, left=0, right=128)  # lungs run off all four edges, but for the midline
    assert lung_box(cut).edge_contact == pytest.approx((1 + 1 + (116 / 128) * 2) / 4)
    top_only = lung_box(_two_lungs(top=0))
    assert top_only.edge_contact == pytest.approx((38 + 38) / 128 / 4)
    empty = lung_box(np.zeros((64, 64)))
    assert not empty.found and (empty.top, empty.left, empty.bottom, empty.right) == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        lung_box(np.zeros((2, 3, 4)))


def test_lung_field_rule_refuses_missing_small_and_cut_off_lungs():
    ok = lung_box(_two_lungs()).as_dict()
    assert lung_field_reason(ok) is None
    assert lung_field_reason(None) is None  # no view taken: nothing to refuse
    assert "cover" in lung_field_reason({**ok, "found": False})
    assert "cover" in lung_field_reason({**ok, "lung_fraction": 0.01})
    assert "cut off" in lung_field_reason({**ok, "edge_contact": 0.9})


class _Fixed(torch.nn.Module):
    """A stand-in lung network that answers a fixed mask (logits), to test the crop plumbing exactly."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(np.where(mask > 0.5, 10.0, -10.0), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 1, *self.logits.shape)


def test_crop_takes_the_box_at_the_films_own_resolution_and_keeps_it_in_meta():
    lf = LungField(_Fixed(_two_lungs()), {"input_size": 128, "margin": 0.0})
    film = np.random.default_rng(0).random((1, 512, 512)).astype(np.float32)
    out = LungFieldCrop(lf)(film)
    box = out.meta["lung_field"]
    y0, x0, y1, x1 = int(np.floor(box["top"] * 512)), int(np.floor(box["left"] * 512)), \
        int(np.ceil(box["bottom"] * 512)), int(np.ceil(box["right"] * 512))
    assert tuple(out.shape) == (1, y1 - y0, x1 - x0)
    np.testing.assert_array_equal(out.numpy(), film[:, y0:y1, x0:x1])
    x = classifier_input(film, 160, lf)  # the one preprocessing, box carried through
    assert tuple(x.shape) == (1, 1, 160, 160) and x.meta["lung_field"]["top"] == box["top"]


def test_view_to_film_places_the_map_in_the_box_and_zero_outside():
    box = {"top": 0.25, "left": 0.5, "bottom": 0.75, "right": 1.0, "lung_fraction": 0.3, "edge_contact": 0.0,
           "found": True}
    film = view_to_film(np.ones((16, 16), np.float32), box, (100, 80))
    assert film.shape == (100, 80)
    assert film[25:75, 40:80].min() == pytest.approx(1.0) and film[:25].max() == 0 and film[:, :40].max() == 0


def test_reframe_crops_pads_and_turns():
    x = np.arange(1 * 10 * 8, dtype=np.float32).reshape(1, 10, 8) / 80
    assert reframe(x, "crop:0.5").shape == (1, 5, 4)
    np.testing.assert_array_equal(reframe(x, "crop:0.5"), x[:, 2:7, 2:6])
    padded = reframe(x, "pad:1.4")
    assert padded.shape == (1, 14, 12) and padded[:, :2].max() == 0
    np.testing.assert_array_equal(reframe(x, "rot:180"), x[:, ::-1, ::-1])
    assert reframe(x, "rot:90").shape == (1, 8, 10)
    with pytest.raises(ValueError):
        reframe(x, "crop:1.5")
    with pytest.raises(ValueError):
        reframe(x, "zoom:2")


def test_models_trained_through_a_lung_field_refuse_to_run_without_it_or_with_another():
    lf = LungField(lung_field_net("tiny"), {"source_sha256": "a" * 64})
    assert check_lung_field({"lung_field_sha256": "a" * 64}, lf) is lf
    assert check_lung_field({}, lf) is None and check_lung_field({}, None) is None  # a whole-film model
    with pytest.raises(DeployModelError, match="lung-field view"):
        check_lung_field({"lung_field_sha256": "a" * 64}, None)
    with pytest.raises(DeployModelError, match="trained through"):
        check_lung_field({"lung_field_sha256": "b" * 64}, lf)


def test_bundle_configs_take_the_lung_field_the_calibration_names(tmp_path):
    from cxr_monai.transforms import lung_field_of
    from cxr_monai.utils import file_sha256

    (tmp_path / "calibration.json").write_text('{"threshold": 0.5}')
    assert lung_field_of(tmp_path) is None  # a whole-film classifier
    lung = tmp_path / "lung_field.ts"
    lung.write_bytes(b"weights")
    (tmp_path / "calibration.json").write_text('{"lung_field_sha256": "%s"}' % file_sha256(lung))
    assert lung_field_of(tmp_path) == str(lung)
    lung.write_bytes(b"other weights")
    with pytest.raises(ValueError, match="is not the lung-field network"):
        lung_field_of(tmp_path)
    lung.unlink()
    with pytest.raises(ValueError, match="missing"):
        lung_field_of(tmp_path)


def test_shipped_lung_field_network_finds_the_lungs_of_held_out_films_at_every_framing(shared_data, project_root):
    """Weights check: Dice >= 0.9 on masks of the classifier's validation images (never trained on), whole and
    at a 0.7 central crop; a wrong or untrained network fails."""
    from cxr_monai.engines.lung import central_crop, dice_score, load_lung_pairs, lung_datalists
    from cxr_monai.transforms import load_lung_field

    _, val = lung_datalists(shared_data / "kermany224" / "train", shared_data / "kermany_lung_masks")
    x, y = load_lung_pairs(val[:24])
    lf = load_lung_field(project_root / BUNDLE_LUNG)
    with torch.no_grad():
        whole = dice_score(torch.sigmoid(lf.module(x)), y).mean()
        crop = dice_score(torch.sigmoid(lf.module(central_crop(x, 0.7))), (central_crop(y, 0.7) > 0.5).float()).mean()
    assert whole >= 0.9 and crop >= 0.9, (float(whole), float(crop))


def test_lung_train_config_writes_a_loadable_network_with_its_rule(shared_data, project_root, tmp_path):
    """configs/lung_train.json end to end on a few pairs (one epoch): the TorchScript file loads as a lung field
    with the box rule embedded, the report holds the Dice at each framing."""
    import json

    from cxr_monai.cli import run_workflow
    from cxr_monai.transforms import load_lung_field

    run_workflow(project_root / "bundles" / "cxr_pneumonia_classifier", "lung_train.json", "infer",
                 output_file=str(tmp_path / "lung.ts"), report_file=str(tmp_path / "lung.json"), max_items=16,
                 epochs=1, preset="tiny", margin=0.05)
    lf = load_lung_field(tmp_path / "lung.ts")
    assert lf.margin == 0.05 and lf.input_size == 128 and lf.info["preset"] == "tiny"
    report = json.loads((tmp_path / "lung.json").read_text())
    assert report["n_train"] == 16 and set(report["val_dice"]) == {"1", "0.85", "0.7", "0.5"}
    assert lf.box(np.random.default_rng(0).random((1, 200, 180)).astype(np.float32)).lung_fraction >= 0


def test_gradcam_is_shown_inside_the_lung_field(project_root):
    """classify(with_cam) through the shipped lung-field network: the map on the film is zero outside the lung
    mask widened by 5 %, and its peak is 1 inside."""
    from cxr_monai.data.phantom import make_phantom
    from cxr_monai.export import CalibratedClassifier
    from cxr_monai.inference import classify
    from cxr_monai.networks import classifier_ensemble
    from cxr_monai.transforms import load_lung_field

    lf = load_lung_field(project_root / BUNDLE_LUNG)
    image, _ = make_phantom(256, seed=3, consolidation=True)
    torch.manual_seed(0)
    model = torch.jit.script(CalibratedClassifier(classifier_ensemble("slim", 1).eval()))
    info = {"threshold": 0.5, "image_size": 96, "lung_field_sha256": lf.info.get("source_sha256") or "x" * 64}
    lf_for_test = LungField(lf.module, {**lf.info, "source_sha256": info["lung_field_sha256"]})
    out = classify(model, image, info, with_cam=True, lung_field=lf_for_test)
    mask = lf_for_test.mask_on_film(image)
    assert out["cam"].shape == image.shape[1:] and 0.05 < mask.mean() < 0.95
    assert out["cam"][~mask].max(initial=0.0) == 0.0 and out["cam"][mask].max() == pytest.approx(1.0)


def test_framing_rule_verdict_on_synthetic_reports():
    """judge_framing applies points 1-4 of the framing plan: a report meeting every floor passes, and moving any one
    figure below its floor fails that point only."""
    import copy

    from cxr_monai.studies.framing import judge_framing

    good = {"model": {"validation_auc": 0.995}, "sets": {
        "site_sample": {
            "whole": {"in_scope_share": 0.97, "commissioned": {"accuracy": 0.95, "auc": 0.98, "specificity": 0.9,
                                                               "sensitivity": 0.96, "ece": 0.03}},
            "crop:0.7": {"in_scope_share": 0.95, "commissioned": {"accuracy": 0.93, "auc": 0.975, "specificity": 0.87,
                                                                  "sensitivity": 0.96, "ece": 0.04}},
            "rot:180": {"in_scope": 0, "pneumonia_findings": 0}},
        "adults_held_out": {"whole": {"out_of_scope_share": 0.99}, "crop:0.5": {"out_of_scope_share": 0.95}}}}
    assert judge_framing(good)["passes"]
    for path, value, point in ((("sets", "site_sample", "crop:0.7", "in_scope_share"), 0.8, "1_tight_collimation"),
                               (("sets", "site_sample", "whole", "commissioned", "auc"), 0.96, "2_uncropped"),
                               (("sets", "adults_held_out", "crop:0.5", "out_of_scope_share"), 0.5, "3_adults_and_turned"),
                               (("model", "validation_auc"), 0.985, "4_validation_auc")):
        bad = copy.deepcopy(good)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        verdict = judge_framing(bad)
        assert not verdict["passes"] and [k for k, v in verdict["points"].items() if not v["holds"]] == [point]
