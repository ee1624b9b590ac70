"""Stress transforms (acquisition shifts), the stress suite, the equal-prior operating point and bootstrap CIs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import nn

from cxr_monai.data.phantom import make_phantom
from cxr_monai.metrics.classification import (
    bootstrap_ci,
    equal_prior_threshold,
    prior_shift,
    prior_shift_threshold,
)
from cxr_monai.metrics.stress import (
    StressShift,
    default_stress_shifts,
    load_images,
    stress_suite,
    stress_table,
    write_stress_report,
)
from cxr_monai.transforms import (
    DEFAULT_LOG_RANGE,
    STRESS_TRANSFORMS,
    BlurShift,
    BlurShiftd,
    CollimationBorder,
    CollimationBorderd,
    ContrastShift,
    DetectorNoise,
    DetectorNoised,
    ExposureShift,
    FieldOfViewShift,
    GammaShift,
    GammaShiftd,
    JPEGRecompression,
    JPEGRecompressiond,
    LUTShift,
    ResolutionShift,
    RotationShift,
    RotationShiftd,
    classifier_preprocessing,
    make_stress_transform,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier"

# one non-neutral strength per registry entry
STRONG = {"gamma": 2.0, "exposure": 1.0, "contrast": 0.5, "lut": 6.0, "noise": 1000.0, "blur": 1.5,
          "low_resolution": 2.5, "jpeg": 20, "collimation": 0.1, "field_of_view": 1.25, "rotation": 10.0}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return make_phantom(64, seed=3)[0]


def _ramp(h: int = 32, w: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))[None]


# ------------------------------------------------------------------------------------------------ transforms


def test_registry_covers_every_transform_and_strong_values():
    assert set(STRONG) == set(STRESS_TRANSFORMS)


@pytest.mark.parametrize("name", sorted(STRESS_TRANSFORMS))
def test_identity_at_zero_strength_for_every_type(name, phantom):
    neutral = STRESS_TRANSFORMS[name][2]
    t = make_stress_transform(name, neutral)
    for img in (phantom, torch.as_tensor(phantom), MetaTensor(torch.as_tensor(phantom))):
        out = t(img)
        assert type(out) is type(img)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img))
        assert out is not img


@pytest.mark.parametrize("name", sorted(STRESS_TRANSFORMS))
def test_shift_changes_image_keeps_contract_and_is_deterministic(name, phantom):
    out = make_stress_transform(name, STRONG[name])(phantom)
    again = make_stress_transform(name, STRONG[name])(phantom)  # fresh transform, same (default) seed
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == phantom.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - phantom).mean() > 1e-3
    np.testing.assert_array_equal(out, again)
    as_tensor = make_stress_transform(name, STRONG[name])(torch.as_tensor(phantom))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.numpy(), out, atol=1e-6)


def test_gamma_and_exposure_follow_their_formulas():
    x = _ramp()
    np.testing.assert_allclose(GammaShift(2.0)(x), x**2, atol=1e-6)
    assert GammaShift(0.5)(np.full((1, 4, 4), 0.25, np.float32)).mean() == pytest.approx(0.5)
    t = ExposureShift(1.0)
    assert t.offset == pytest.approx(math.log(2) / DEFAULT_LOG_RANGE) and 0.14 < t.offset < 0.16
    np.testing.assert_allclose(t(x), np.clip(x - t.offset, 0, 1), atol=1e-6)
    assert (t(x) == 0).mean() == pytest.approx((x <= t.offset).mean())  # overexposure burns out the darks
    assert (ExposureShift(-2.0)(x) == 1).mean() > 0.25  # underexposure saturates the brights


def test_contrast_scales_std_around_the_mean_and_quantises():
    rng = np.random.default_rng(0)
    x = (0.5 + 0.05 * rng.standard_normal((1, 64, 64))).astype(np.float32)
    y = ContrastShift(0.5, bits=None)(x)
    assert y.std() == pytest.approx(0.5 * x.std(), rel=1e-4)
    assert y.mean() == pytest.approx(x.mean(), abs=1e-6)
    ramp = _ramp(4, 1024)
    levels = np.unique(ContrastShift(0.25, bits=8)(ramp))
    assert 60 <= levels.size <= 66  # a quarter of the 256 grey levels survive
    np.testing.assert_allclose(levels * 255, np.round(levels * 255), atol=1e-4)
    assert (ContrastShift(2.0)(ramp) == 1.0).mean() > 0.2  # steeper: the ends clip


def test_lut_s_curve_and_its_inverse():
    x = _ramp(1, 1001)
    y = LUTShift(6.0)(x)
    assert y[0, 0, 0] == pytest.approx(0.0, abs=1e-6) and y[0, 0, -1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(y[0, 0]) >= 0)
    slope = (y[0, 0, 510] - y[0, 0, 490]) / (x[0, 0, 510] - x[0, 0, 490])
    assert slope > 1.3  # steeper mid-tones
    inv = LUTShift(-6.0)(x)
    assert (inv[0, 0, 510] - inv[0, 0, 490]) / 0.02 < 0.8  # flatter mid-tones
    np.testing.assert_allclose(LUTShift(-6.0)(y), x, atol=1e-4)


def test_detector_noise_std_mean_seed_and_attenuation_dependence():
    flat = np.full((1, 128, 128), 0.5, np.float32)
    t = DetectorNoise(photons=1000.0, electronic_std=1e-3, seed=7)
    y = t(flat)
    expected = DetectorNoise.expected_std(0.5, 1000.0, 1e-3)
    assert y.std() == pytest.approx(expected, rel=0.1)
    assert abs(float(y.mean()) - 0.5) < 0.2 * expected
    np.testing.assert_array_equal(DetectorNoise(1000.0, 1e-3, seed=7)(flat), y)
    assert not np.array_equal(DetectorNoise(1000.0, 1e-3, seed=8)(flat), y)
    assert not np.array_equal(t(flat), y)  # the stream moves on: the next image gets another realisation
    bright = DetectorNoise(1000.0, seed=7)(np.full((1, 128, 128), 0.8, np.float32))
    dark = DetectorNoise(1000.0, seed=7)(np.full((1, 128, 128), 0.2, np.float32))
    assert bright.std() > 2 * dark.std()  # more attenuation, fewer quanta, more display noise
    d1 = DetectorNoised("image", photons=1000.0, seed=1)({"image": flat})["image"]
    d2 = DetectorNoised("image", photons=1000.0, seed=5).set_random_state(1)({"image": flat})["image"]
    np.testing.assert_array_equal(d1, d2)


def test_blur_and_resolution_remove_detail_keep_flat_fields():
    rng = np.random.default_rng(1)
    noise = rng.random((1, 64, 64)).astype(np.float32)
    assert BlurShift(1.5)(noise).std() < 0.35 * noise.std()
    flat = np.full((1, 32, 32), 0.4, np.float32)
    np.testing.assert_allclose(BlurShift(2.0)(flat), flat, atol=1e-6)  # reflect padding: no dark border
    np.testing.assert_allclose(ResolutionShift(2.0)(flat), flat, atol=1e-5)
    checker = ((np.indices((64, 64)).sum(0) % 2) * 1.0).astype(np.float32)[None]
    assert ResolutionShift(2.0)(checker).std() < 0.05 * checker.std()  # Nyquist detail gone
    smooth = _ramp(64, 64)
    assert np.abs(ResolutionShift(2.0)(smooth) - smooth)[:, 4:-4, 4:-4].max() < 0.01  # low frequencies kept
    np.testing.assert_array_equal(BlurShiftd("image", sigma=1.5)({"image": noise})["image"], BlurShift(1.5)(noise))


def test_jpeg_is_eight_bit_and_worse_at_lower_quality(phantom):
    errors = []
    for q in (90, 50, 10):
        y = JPEGRecompression(q)(phantom)
        np.testing.assert_allclose(y * 255, np.round(y * 255), atol=1e-4)
        errors.append(float(np.abs(y - phantom).mean()))
        assert abs(float(y.mean() - phantom.mean())) < 2 / 255
    assert errors[0] < errors[1] < errors[2]
    np.testing.assert_array_equal(JPEGRecompressiond("image", quality=50)({"image": phantom})["image"],
                                  JPEGRecompression(50)(phantom))


def test_collimation_frame_is_exact(phantom):
    t = CollimationBorder(0.1, value=0.0)
    y = t(phantom)
    fh, fw = t.frame_size(64, 64)
    assert (fh, fw) == (6, 6)
    frame = np.ones((64, 64), bool)
    frame[fh:-fh, fw:-fw] = False
    assert np.all(y[0][frame] == 0.0)
    np.testing.assert_array_equal(y[0][~frame], phantom[0][~frame])
    white = CollimationBorderd("image", fraction=0.2, value=1.0)({"image": phantom})["image"]
    assert white[0, 0, 0] == 1.0 and white[0, 13:-13, 13:-13].max() == phantom[0, 13:-13, 13:-13].max()


def test_field_of_view_zoom_in_and_out():
    x = _ramp(64, 64)
    tight = FieldOfViewShift(2.0)(x)  # the central half of the ramp fills the image
    assert tight[0, 32, 0] == pytest.approx(x[0, 32, 16], abs=0.02)
    assert tight[0, 32, -1] == pytest.approx(x[0, 32, 47], abs=0.02)
    wide = FieldOfViewShift(0.5)(np.full((1, 64, 64), 0.6, np.float32))
    assert (wide == 0.0).mean() == pytest.approx(0.75)  # 32x32 image centred on a black 64x64 canvas
    np.testing.assert_allclose(wide[0, 16:48, 16:48], 0.6, atol=1e-6)


def test_rotation_is_clockwise_as_displayed_and_by_the_angle():
    dot = np.zeros((1, 33, 33), np.float32)
    dot[0, 2, 16] = 1.0  # top centre
    y = RotationShift(90.0)(dot)
    r, c = np.unravel_index(int(np.argmax(y[0])), y[0].shape)
    assert (r, c) == (16, 30)  # moved to the right: clockwise
    bar = np.zeros((1, 65, 65), np.float32)
    bar[0, 31:34, 8:57] = 1.0  # horizontal bar
    rb = RotationShiftd("image", degrees=10.0)({"image": bar})["image"][0]
    rows, cols = np.nonzero(rb > 0.5)
    slope = np.polyfit(cols, rows, 1)[0]  # rows grow downwards: clockwise = rows increase to the right
    assert math.degrees(math.atan(slope)) == pytest.approx(10.0, abs=1.5)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: GammaShift(0.0),
        lambda: GammaShift(float("nan")),
        lambda: GammaShift(True),
        lambda: ExposureShift(float("inf")),
        lambda: ExposureShift(1.0, log_range=0.0),
        lambda: ContrastShift(-1.0),
        lambda: ContrastShift(1.5, pivot=1.5),
        lambda: ContrastShift(1.5, bits=0),
        lambda: LUTShift(4.0, center=1.0),
        lambda: DetectorNoise(photons=0.0),
        lambda: DetectorNoise(photons=100.0, electronic_std=-1.0),
        lambda: BlurShift(-0.5),
        lambda: ResolutionShift(0.5),
        lambda: JPEGRecompression(0),
        lambda: JPEGRecompression(101),
        lambda: JPEGRecompression(50.5),
        lambda: CollimationBorder(0.5),
        lambda: CollimationBorder(0.1, value=2.0),
        lambda: FieldOfViewShift(0.0),
        lambda: FieldOfViewShift(1.2, pad_value=-0.1),
        lambda: RotationShift(270.0),
        lambda: make_stress_transform("sharpen", 1.0),
        lambda: StressShift("x", "sharpen", (1.0,)),
        lambda: StressShift("x", "gamma", ()),
    ],
)
def test_bad_arguments_raise_at_construction(factory):
    with pytest.raises((ValueError, TypeError, KeyError)):
        factory()


def test_dict_variant_equals_array_variant(phantom):
    np.testing.assert_array_equal(GammaShiftd("image", gamma=1.7)({"image": phantom})["image"],
                                  GammaShift(1.7)(phantom))


# ------------------------------------------------------------------------------------- operating point, CIs


def test_prior_shift_and_equal_prior_threshold():
    prior = 3875 / 5216
    assert prior_shift([prior], prior)[0] == pytest.approx(0.5)
    p = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(prior_shift(p, 0.3, 0.3), p)
    q = prior_shift(p, prior)
    assert np.all(np.diff(q) > 0) and q[0] == 0.0 and q[-1] == 1.0
    assert np.all(q[1:-1] < p[1:-1])  # a training mix rich in PNEUMONIA is discounted
    assert equal_prior_threshold(prior) == pytest.approx(prior)
    thr = prior_shift_threshold(0.2, 0.6, 0.4)
    np.testing.assert_array_equal(prior_shift(p, 0.2, 0.6) >= 0.4 - 1e-12, p >= thr - 1e-12)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            equal_prior_threshold(bad)


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(np.int64)
    z = rng.normal(0.0, 1.0, n) + 1.2 * (2 * y - 1)
    return 1.0 / (1.0 + np.exp(-2.4 * z)), y


def test_bootstrap_contains_estimate_shrinks_with_n_and_is_seeded():
    keys = ("accuracy", "auc", "sensitivity", "specificity", "ece")
    small, large = bootstrap_ci(*_scores(150), n_boot=300, seed=1), bootstrap_ci(*_scores(2400), n_boot=300, seed=1)
    for r in (small, large):
        for k in keys:
            assert r[k]["low"] <= r[k]["estimate"] <= r[k]["high"], (k, r[k])
    for k in keys:
        assert large[k]["high"] - large[k]["low"] < 0.6 * (small[k]["high"] - small[k]["low"]), k
    assert bootstrap_ci(*_scores(150), n_boot=300, seed=1) == small
    assert bootstrap_ci(*_scores(150), n_boot=300, seed=2) != small
    assert small["ece"]["method"] == "bias_shifted_percentile" and small["auc"]["method"] == "percentile"
    # many calibrated sets: the ECE interval holds the estimate (the plain percentile one did not, 3 in 20)
    for s in range(10):
        r = bootstrap_ci(*_scores(300, seed=100 + s), n_boot=100, seed=s)
        assert r["ece"]["low"] <= r["ece"]["estimate"] <= r["ece"]["high"]
        assert r["sensitivity"]["low"] <= r["sensitivity"]["estimate"] <= r["sensitivity"]["high"]
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.9], [0, 1], n_boot=5)
    with pytest.raises(ValueError):
        bootstrap_ci([0.1], [0, 1])


# ----------------------------------------------------------------------------------------------- the suite


class _LungBrightness(nn.Module):
    """A fixed 'classifier': PNEUMONIA logit from the mean brightness of the central region (no training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = x[..., h // 4 : 3 * h // 4, w // 8 : 7 * w // 8].mean(dim=(1, 2, 3))
        z = 40.0 * (m - 0.42)
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.fixture(scope="module")
def phantom_set() -> tuple[list[np.ndarray], np.ndarray]:
    items = [{"image": make_phantom(48, seed=s, consolidation=bool(s % 2))[0], "label": s % 2} for s in range(8)]
    return load_images(items)


def test_suite_on_phantoms_reports_every_shift_and_worst_case(phantom_set, tmp_path):
    images, labels = phantom_set
    pre = Compose(classifier_preprocessing(["image"], 32))
    thresholds = {"shipped": 0.165, "equal_prior": equal_prior_threshold(0.74)}
    kwargs = dict(thresholds=thresholds, batch_size=4, n_boot=20, seed=0)
    report = stress_suite(_LungBrightness(), images, labels, pre, **kwargs)
    shifts = default_stress_shifts()
    assert list(report["shifts"]) == [s.name for s in shifts]
    assert report["n"] == 8 and report["n_positive"] == 4
    clean = report["clean"]
    assert set(clean["ci"]) == set(thresholds)
    for spec in shifts:
        s = report["shifts"][spec.name]
        assert len(s["levels"]) == len(spec.values) == 5
        marked = [lv for lv in s["levels"] if lv["clean"]]
        assert len(marked) == 1 and marked[0]["auc"] == clean["auc"]
        for metric, w in s["worst"].items():
            values = [lv["auc"] if metric == "auc" else lv["at"][metric.split("@")[1]][metric.split("@")[0]]
                      for lv in s["levels"] if not lv["clean"]]
            assert w["value"] == min(values)
    for metric, w in report["worst_case"].items():
        assert w["value"] == min(s["worst"][metric]["value"] for s in report["shifts"].values())
    # a strong shift moves the brightness classifier: exposure +2 stops darkens everything -> fewer positives
    exp2 = next(lv for lv in report["shifts"]["exposure"]["levels"] if lv["value"] == 2.0)
    assert exp2["mean_probability"] < clean["mean_probability"] - 0.01
    assert stress_suite(_LungBrightness(), images, labels, pre, **kwargs) == report  # deterministic, noise too
    paths = write_stress_report(report, tmp_path, extra={"note": "phantoms"})
    assert json.loads(paths["json"].read_text())["note"] == "phantoms"
    assert paths["png"].stat().st_size > 10_000
    table = stress_table(report)
    assert table.count("\n") == len(shifts) + 2 and "worst case" in table


def test_suite_rejects_one_class_and_duplicate_names(phantom_set):
    images, labels = phantom_set
    pre = Compose(classifier_preprocessing(["image"], 32))
    with pytest.raises(ValueError):
        stress_suite(_LungBrightness(), images, np.zeros_like(labels), pre, n_boot=0)
    twice = [StressShift("g", "gamma", (1.0, 2.0)), StressShift("g", "gamma", (0.5, 1.0))]
    with pytest.raises(ValueError):
        stress_suite(_LungBrightness(), images, labels, pre, shifts=twice, n_boot=0)


def test_stress_config_runs_with_evaluate_json_on_phantoms(tmp_path):
    """configs/stress.json merged after evaluate.json: the validation side of a patient-aware split of a
    phantom class-folder dataset, the shipped weights at 32 px (a wiring test, not a quality test)."""
    from monai.bundle import ConfigWorkflow

    from cxr_monai.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n_per_class=4, size=64, seed=0)
    out = tmp_path / "out"
    cfg = BUNDLE / "configs"
    wf = ConfigWorkflow(config_file=[str(cfg / "inference.json"), str(cfg / "evaluate.json"), str(cfg / "stress.json")],
                        meta_file=str(cfg / "metadata.json"), workflow_type="eval", bundle_root=str(BUNDLE),
                        dataset_dir=str(data), output_dir=str(out), image_size=32, val_fraction=0.5, n_boot=20,
                        stress_shifts="$[s for s in cxr_monai.metrics.stress.default_stress_shifts() "
                                      "if s.name in ('gamma', 'jpeg', 'noise')]")
    wf.initialize()
    wf.run()
    wf.finalize()
    report = json.loads((out / "stress.json").read_text())
    calibration = json.loads((BUNDLE / "models" / "calibration.json").read_text())
    assert report["n"] == 4 and list(report["shifts"]) == ["gamma", "noise", "jpeg"]
    assert report["thresholds"]["shipped"] == pytest.approx(calibration["threshold"])
    assert list(report["thresholds"]) == ["shipped"]  # the shipped threshold IS the equal-prior rule now
    assert report["threshold_rule"] == calibration["threshold_rule"] and "equal class priors" in report["threshold_rule"]
    assert calibration["threshold"] == pytest.approx(calibration["calibration_prior"])
    assert report["temperature"] == pytest.approx(calibration["temperature"])
    assert report["weights"] == "model.pt" and (out / "stress.png").is_file() and (out / "stress.md").is_file()
