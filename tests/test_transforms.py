"""Degradation transforms: blur + antialiased bicubic against independent references, noise statistics, pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, GaussianSmooth
from PIL import Image
from scipy import ndimage

from cxr_monai.data.phantom import make_phantom
from cxr_monai.transforms import (
    BicubicUpsample,
    BicubicUpsampled,
    LowDoseNoise,
    LowDoseNoised,
    PairedDegradationd,
    RandLowDoseNoise,
    RandLowDoseNoised,
    RandSimulateLowResolution,
    RandSimulateLowResolutiond,
    SimulateLowResolution,
    SimulateLowResolutiond,
    bicubic_upsample,
    gaussian_blur,
    low_dose_noise,
    simulate_low_resolution,
)
from tests.conftest import SHARED_DATA


# ----------------------------------------------------------------------------------------------------------------
# images and independent references
# ----------------------------------------------------------------------------------------------------------------


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A CXR-like test image (1, H, W) float32 in [0, 1]: smooth texture, bright ellipses, a sharp edge."""
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.random((height, width)), 2.0, mode="wrap")
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-12)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    img = 0.2 + 0.3 * tex
    for cy, cx, ry, rx in ((0.5, 0.3, 0.35, 0.15), (0.5, 0.7, 0.35, 0.15)):
        img = img - 0.15 * ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1)  # dark "lungs"
    img[:, : width // 10] = 0.95  # a sharp bright edge: bicubic overshoot must be clamped
    return np.clip(img, 0.0, 1.0).astype(np.float32)[None]


def radius_of(sigma: float, truncate: float = 4.0) -> int:
    return max(1, math.ceil(truncate * sigma))


def reference_blur(img2d: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's Gaussian with mode='mirror' (d c b | a b c d, = torch 'reflect') and the same kernel radius."""
    if sigma == 0:
        return img2d.astype(np.float64)
    return ndimage.gaussian_filter(img2d.astype(np.float64), sigma, mode="mirror", truncate=radius_of(sigma) / sigma)


def reference_pil_downsample(img2d: np.ndarray, scale: int) -> np.ndarray:
    """PIL's antialiased bicubic (a = -0.5, kernel widened by the scale) on a float 'F' image, after mod crop."""
    h, w = (img2d.shape[0] // scale) * scale, (img2d.shape[1] // scale) * scale
    pil = Image.fromarray(img2d[:h, :w].astype(np.float32), mode="F")
    return np.asarray(pil.resize((w // scale, h // scale), Image.BICUBIC), dtype=np.float64)


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t < 1,
        (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
    )


def keys_downsample_matrix(n: int, scale: int) -> np.ndarray:
    """Hand-written antialiased bicubic as a (n // scale, n) matrix: Keys kernel stretched by ``scale``,
    weights of out-of-range taps dropped and the rest renormalised (the MATLAB/PIL border rule)."""
    m = n // scale
    mat = np.zeros((m, n))
    j = np.arange(n)
    for i in range(m):
        center = (i + 0.5) * scale
        weights = keys_cubic((j + 0.5 - center) / scale)
        mat[i] = weights / weights.sum()
    return mat


def reference_degrade(img: np.ndarray, sigma: float, scale: int, resampler: str = "pil") -> np.ndarray:
    out = []
    for channel in img:
        h, w = (channel.shape[0] // scale) * scale, (channel.shape[1] // scale) * scale
        blurred = reference_blur(channel[:h, :w], sigma)
        if resampler == "pil":
            low = reference_pil_downsample(blurred, scale)
        else:
            low = keys_downsample_matrix(h, scale) @ blurred @ keys_downsample_matrix(w, scale).T
        out.append(np.clip(low, 0.0, 1.0))
    return np.stack(out)


def load_real_crop(size: int = 512) -> np.ndarray:
    folder = SHARED_DATA / "kermany_hr" / "NORMAL"
    files = sorted(folder.glob("*.jpeg")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"real data not found at {folder}")
    with Image.open(files[0]) as pil:
        arr = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])[None]


# ----------------------------------------------------------------------------------------------------------------
# blur + bicubic downsampling
# ----------------------------------------------------------------------------------------------------------------


def test_public_example_shape() -> None:
    assert SimulateLowResolution(sigma=1.0, scale=4)(torch.rand(1, 64, 64)).shape == (1, 16, 16)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5, 3.0])
def test_gaussian_blur_matches_scipy_mirror(sigma: float) -> None:
    img = smooth_image(37, 45, seed=1)
    ours = gaussian_blur(torch.from_numpy(img).double(), sigma).numpy()
    np.testing.assert_allclose(ours[0], reference_blur(img[0], sigma), atol=1e-10)


def test_gaussian_blur_kernel_wider_than_image() -> None:
    """Repeated mirroring when the kernel radius exceeds the image size (torch F.pad would refuse)."""
    img = smooth_image(6, 9, seed=2)
    ours = gaussian_blur(torch.from_numpy(img).double(), 2.5).numpy()
    np.testing.assert_allclose(ours[0], reference_blur(img[0], 2.5), atol=1e-10)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("sigma", [0.0, 0.8, 1.0, 1.5])
def test_degradation_matches_independent_reference(scale: int, sigma: float) -> None:
    img = smooth_image(70, 93, seed=scale)  # deliberately not a multiple of any scale
    ours = SimulateLowResolution(sigma=sigma, scale=scale)(img)
    expected_shape = (1, 70 // scale, 93 // scale)
    assert ours.shape == expected_shape
    ref_pil = reference_degrade(img, sigma, scale, "pil")
    ref_keys = reference_degrade(img, sigma, scale, "keys")
    # everywhere, borders included (same border rules), and a fortiori away from the borders
    np.testing.assert_allclose(ours, ref_pil, atol=2e-6)
    np.testing.assert_allclose(ours, ref_keys, atol=2e-6)
    # the references are not trivially close to something else: plain (aliased) bicubic differs clearly
    cropped = img[0, : expected_shape[1] * scale, : expected_shape[2] * scale]
    aliased = F.interpolate(
        torch.from_numpy(reference_blur(cropped, sigma))[None, None],
        size=expected_shape[1:],
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)[0].numpy()
    assert np.abs(aliased - ours).max() > 1e-3


def test_degradation_matches_reference_on_real_cxr() -> None:
    img = load_real_crop(512)
    ours = SimulateLowResolution(sigma=1.0, scale=4)(img)
    assert ours.shape == (1, 128, 128)
    ref = reference_degrade(img, 1.0, 4, "pil")
    np.testing.assert_allclose(ours[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=2e-6)
    np.testing.assert_allclose(ours, ref, atol=2e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_constant_image_stays_constant(scale: int) -> None:
    """No dark borders: reflect padding keeps a flat image flat (the zero-padding trap: a fake SR gain)."""
    img = torch.full((1, 96, 84), 0.6)
    lr = SimulateLowResolution(sigma=1.5, scale=scale)(img)
    assert torch.allclose(lr, torch.full_like(lr, 0.6), atol=1e-6)
    # the trap this guards against: MONAI's zero-padded GaussianSmooth darkens the border
    zero_padded = GaussianSmooth(sigma=1.5)(img)
    assert float(zero_padded[0, 0, 0]) < 0.5


def test_sigma_zero_is_plain_antialiased_bicubic() -> None:
    img = torch.from_numpy(smooth_image(64, 64, seed=3))
    expected = F.interpolate(img[None], size=(16, 16), mode="bicubic", antialias=True, align_corners=False)[0]
    assert torch.allclose(SimulateLowResolution(sigma=0.0, scale=4)(img), expected.clamp(0, 1), atol=1e-6)


def test_output_clamped_to_unit_range() -> None:
    img = torch.zeros(1, 64, 64)
    img[:, :, 30:] = 1.0  # a step: bicubic rings below 0 and above 1 without the clamp
    raw = F.interpolate(img[None], size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    assert raw.min() < 0 and raw.max() > 1
    lr = SimulateLowResolution(sigma=0.0, scale=4)(img)
    assert lr.min() >= 0 and lr.max() <= 1


def test_functional_works_on_batches() -> None:
    batch = torch.from_numpy(np.stack([smooth_image(48, 48, seed=s) for s in range(3)]))  # (3, 1, 48, 48)
    out = simulate_low_resolution(batch, sigma=1.0, scale=3)
    assert out.shape == (3, 1, 16, 16)
    for i in range(3):
        assert torch.allclose(out[i], SimulateLowResolution(1.0, 3)(batch[i]), atol=1e-7)


def test_input_and_output_types() -> None:
    img = smooth_image(64, 68, seed=4)
    out_np = SimulateLowResolution(1.0, 4)(img)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32 and out_np.shape == (1, 16, 17)
    out_t = SimulateLowResolution(1.0, 4)(torch.from_numpy(img))
    assert type(out_t) is torch.Tensor and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=0)
    affine = torch.diag(torch.tensor([0.2, 0.3, 1.0, 1.0], dtype=torch.float64))
    affine[0, 3], affine[1, 3] = 10.0, -5.0
    meta = MetaTensor(torch.from_numpy(img), affine=affine, meta={"filename_or_obj": "x.dcm"})
    out_m = SimulateLowResolution(1.0, 4)(meta)
    assert isinstance(out_m, MetaTensor) and out_m.meta["filename_or_obj"] == "x.dcm"
    np.testing.assert_allclose(out_m.as_tensor().numpy(), out_np, atol=0)
    # LR pixel (0, 0) covers HR pixels 0..3: its centre is HR index 1.5 in world coordinates
    centre = out_m.affine @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    hr_centre = affine @ torch.tensor([1.5, 1.5, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(centre, hr_centre)
    assert torch.allclose(meta.affine, affine)  # the input's metadata is untouched


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 5},
        {"scale": 1},
        {"scale": 2.5},
        {"scale": True},
        {"sigma": -0.1},
        {"sigma": float("nan")},
        {"truncate": 0},
    ],
)
def test_simulate_low_resolution_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SimulateLowResolution(**kwargs)
    with pytest.raises(ValueError):
        SimulateLowResolutiond(keys="hr", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"sigma_range": (-1.0, 1.0)}, {"sigma_range": (2.0, 1.0)}, {"scales": (2, 8)}, {"scales": ()}, {"prob": 1.5}],
)
def test_rand_simulate_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RandSimulateLowResolution(**kwargs)


def test_dict_variant_writes_lr_beside_hr() -> None:
    img = torch.from_numpy(smooth_image(70, 93, seed=5))
    out = SimulateLowResolutiond(keys="hr", lr_key="lr", sigma=1.0, scale=4)({"hr": img, "label": 1})
    assert out["label"] == 1
    assert out["hr"].shape == (1, 68, 92)  # HR cropped to a multiple of 4, top-left kept
    assert torch.equal(out["hr"], img[:, :68, :92])
    assert tuple(s * 4 for s in out["lr"].shape[1:]) == tuple(out["hr"].shape[1:])
    assert torch.allclose(out["lr"], SimulateLowResolution(1.0, 4)(img))
    in_place = SimulateLowResolutiond(keys=("a", "b"), lr_key=None, scale=2)({"a": img, "b": img.numpy()})
    assert in_place["a"].shape == (1, 35, 46) and isinstance(in_place["b"], np.ndarray)
    with pytest.raises(ValueError):
        SimulateLowResolutiond(keys=("a", "b"), lr_key="lr")


def test_rand_simulate_low_resolution_reproducible_and_in_range() -> None:
    img = torch.from_numpy(smooth_image(72, 72, seed=6))
    first = RandSimulateLowResolution(sigma_range=(0.5, 1.5), scales=(2, 3, 4))
    first.set_random_state(seed=7)
    second = RandSimulateLowResolution(sigma_range=(0.5, 1.5), scales=(2, 3, 4))
    second.set_random_state(seed=7)
    seen_scales = set()
    for _ in range(12):
        out1, out2 = first(img), second(img)
        assert torch.equal(out1, out2)
        assert 0.5 <= first.sigma <= 1.5 and first.scale in (2, 3, 4)
        assert out1.shape == (1, 72 // first.scale, 72 // first.scale)
        assert torch.allclose(out1, SimulateLowResolution(first.sigma, first.scale)(img))
        seen_scales.add(first.scale)
    assert seen_scales == {2, 3, 4}
    # prob 0: untouched
    assert RandSimulateLowResolution(prob=0.0)(img) is img


def test_rand_simulate_dict_shares_one_draw() -> None:
    img = torch.from_numpy(smooth_image(60, 60, seed=8))
    t = RandSimulateLowResolutiond(keys=("a", "b"), lr_key=("la", "lb"), sigma_range=(0.5, 1.5), scales=(2, 3))
    t.set_random_state(0)
    out = t({"a": img, "b": img.clone()})
    assert torch.equal(out["la"], out["lb"])
    scale = t.rand_simulate.scale
    assert out["a"].shape[-1] == out["la"].shape[-1] * scale
    skipped = RandSimulateLowResolutiond(keys="hr", prob=0.0)({"hr": img})
    assert torch.equal(skipped["lr"], img) and skipped["lr"] is not img


# ----------------------------------------------------------------------------------------------------------------
# low-dose noise
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.1, 0.3, 0.5, 0.7])
def test_poisson_noise_variance_is_signal_over_dose(level: float) -> None:
    dose = 1000.0
    flat = np.full((1, 256, 256), level, dtype=np.float32)
    noise = LowDoseNoise(dose=dose, sigma_e=0.0)
    noise.set_random_state(seed=int(level * 10))
    out = noise(flat)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert abs(out.mean() - level) < 3e-4  # unbiased
    assert out.var() == pytest.approx(level / dose, rel=0.05)
    # quantised on the photon grid 1/dose
    assert np.allclose(np.round(out * dose), out * dose, atol=1e-3)


def test_gaussian_part_variance_and_sum_of_both() -> None:
    flat = torch.full((1, 256, 256), 0.5)
    electronic = LowDoseNoise(dose=None, sigma_e=0.02).set_random_state(seed=1)(flat)
    assert type(electronic) is torch.Tensor
    assert float(electronic.var()) == pytest.approx(0.02**2, rel=0.05)
    both = LowDoseNoise(dose=2000.0, sigma_e=0.01).set_random_state(seed=2)(flat)
    assert float(both.var()) == pytest.approx(0.5 / 2000.0 + 0.01**2, rel=0.05)


def test_noise_clamped_and_dose_scaling() -> None:
    img = torch.from_numpy(smooth_image(128, 128, seed=9))
    noisy = LowDoseNoise(dose=50.0, sigma_e=0.05).set_random_state(3)(img)
    assert noisy.min() >= 0 and noisy.max() <= 1
    err_low = float((LowDoseNoise(dose=200.0).set_random_state(4)(img) - img).std())
    err_high = float((LowDoseNoise(dose=20000.0).set_random_state(4)(img) - img).std())
    assert err_low == pytest.approx(10 * err_high, rel=0.1)  # std ~ 1/sqrt(dose)


def test_noise_reproducibility() -> None:
    img = smooth_image(64, 64, seed=10)
    a = LowDoseNoise(dose=500.0, sigma_e=0.01).set_random_state(seed=11)
    b = LowDoseNoise(dose=500.0, sigma_e=0.01).set_random_state(seed=11)
    c = LowDoseNoise(dose=500.0, sigma_e=0.01).set_random_state(seed=12)
    out_a, out_b, out_c = a(img), b(img), c(img)
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(out_a, out_c)
    np.testing.assert_array_equal(a(img, randomize=False), out_a)  # reuses the last draw
    with pytest.raises(RuntimeError):
        LowDoseNoise().__call__(img, randomize=False)


def test_functional_low_dose_noise_statistics() -> None:
    flat = torch.full((4, 1, 128, 128), 0.4)
    gen = torch.Generator().manual_seed(0)
    out = low_dose_noise(flat, dose=1000.0, sigma_e=0.01, generator=gen)
    assert out.shape == flat.shape
    assert float(out.var()) == pytest.approx(0.4 / 1000.0 + 1e-4, rel=0.05)
    again = low_dose_noise(flat, dose=1000.0, sigma_e=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


@pytest.mark.parametrize("kwargs", [{"dose": 0.0}, {"dose": -5.0}, {"sigma_e": -0.1}, {"dose": float("nan")}])
def test_low_dose_noise_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LowDoseNoise(**kwargs)


def test_rand_low_dose_noise() -> None:
    img = torch.from_numpy(smooth_image(64, 64, seed=12))
    with pytest.raises(ValueError):
        RandLowDoseNoise(dose_range=(0.0, 10.0))
    with pytest.raises(ValueError):
        RandLowDoseNoise(sigma_e_range=(-0.1, 0.1))
    t = RandLowDoseNoise(dose_range=(100.0, 1000.0), sigma_e_range=(0.0, 0.02)).set_random_state(5)
    u = RandLowDoseNoise(dose_range=(100.0, 1000.0), sigma_e_range=(0.0, 0.02)).set_random_state(5)
    doses = []
    for _ in range(5):
        out = t(img)
        assert torch.equal(out, u(img))
        assert 100.0 <= t.dose <= 1000.0 and 0.0 <= t.sigma_e <= 0.02
        assert not torch.equal(out, img)
        doses.append(t.dose)
    assert len(set(doses)) == 5
    assert RandLowDoseNoise(prob=0.0)(img) is img


def test_dict_noise_variants() -> None:
    img = torch.full((1, 64, 64), 0.5)
    out = LowDoseNoised(keys=("a", "b"), dose=1000.0).set_random_state(0)({"a": img, "b": img, "y": 3})
    assert out["y"] == 3 and out["a"].shape == img.shape
    assert not torch.equal(out["a"], out["b"])  # independent realisations per key
    rand = RandLowDoseNoised(keys=("a", "b"), dose_range=(300.0, 3000.0)).set_random_state(1)
    out2 = rand({"a": img, "b": img})
    assert not torch.equal(out2["a"], out2["b"])
    dose = rand.rand_low_dose_noise.dose
    assert 300.0 <= dose <= 3000.0
    # both keys used the same dose: their variances agree with it
    for key in ("a", "b"):
        assert float(out2[key].var()) == pytest.approx(0.5 / dose, rel=0.2)
    assert RandLowDoseNoised(keys="a", prob=0.0)({"a": img})["a"] is img


# ----------------------------------------------------------------------------------------------------------------
# bicubic baseline
# ----------------------------------------------------------------------------------------------------------------


def test_bicubic_upsample() -> None:
    lr = torch.from_numpy(smooth_image(16, 20, seed=13))
    up = bicubic_upsample(lr, 4)
    assert up.shape == (1, 64, 80) and up.min() >= 0 and up.max() <= 1
    expected = F.interpolate(lr[None], scale_factor=4, mode="bicubic", align_corners=False)[0].clamp(0, 1)
    assert torch.allclose(up, expected, atol=1e-6)
    batch = bicubic_upsample(lr[None].repeat(2, 1, 1, 1), 2)
    assert batch.shape == (2, 1, 32, 40)
    as_np = BicubicUpsample(4)(lr.numpy())
    assert isinstance(as_np, np.ndarray) and np.allclose(as_np, up.numpy(), atol=1e-6)
    out = BicubicUpsampled(keys="lr", scale=4, output_key="bicubic")({"lr": lr})
    assert torch.allclose(out["bicubic"], up) and out["lr"] is lr
    with pytest.raises(ValueError):
        BicubicUpsample(0)
    # a smooth image survives degrade -> upsample closely (away from the border)
    hr = torch.from_numpy(ndimage.gaussian_filter(smooth_image(128, 128, seed=14)[0], 4.0, mode="mirror"))[None]
    restored = bicubic_upsample(SimulateLowResolution(1.0, 4)(hr), 4)
    assert float((restored - hr)[:, 8:-8, 8:-8].abs().mean()) < 0.01


# ----------------------------------------------------------------------------------------------------------------
# paired degradation for SR training
# ----------------------------------------------------------------------------------------------------------------


def test_paired_degradation_patch_alignment() -> None:
    img = smooth_image(150, 170, seed=15)
    t = PairedDegradationd(hr_key="hr", lr_key="lr", sigma=1.0, scale=4, patch_size=64, params_key="params")
    t.set_random_state(seed=3)
    origins = set()
    for _ in range(4):
        out = t({"hr": torch.from_numpy(img), "label": 0})
        hr, lr, params = out["hr"], out["lr"], out["params"]
        assert hr.shape == (1, 64, 64) and lr.shape == (1, 16, 16)
        top, left = int(params["top"]), int(params["left"])
        assert torch.equal(hr, torch.from_numpy(img[:, top : top + 64, left : left + 64]))
        assert torch.allclose(SimulateLowResolution(1.0, 4)(hr), lr, atol=0)  # degrading hr gives lr
        assert params["dose"] == math.inf and out["label"] == 0
        origins.add((top, left))
    assert len(origins) == 4


def test_paired_degradation_with_noise_and_ranges() -> None:
    img = torch.from_numpy(smooth_image(128, 128, seed=16))
    kwargs = dict(sigma=(0.5, 1.5), scale=(2, 4), dose=(500.0, 2000.0), sigma_e=(0.0, 0.01), patch_size=(48, 64))
    t = PairedDegradationd(params_key="p", **kwargs).set_random_state(9)
    u = PairedDegradationd(params_key="p", **kwargs).set_random_state(9)
    for _ in range(4):
        out, again = t({"hr": img}), u({"hr": img})
        assert torch.equal(out["lr"], again["lr"]) and torch.equal(out["hr"], again["hr"])
        p = out["p"]
        scale = int(p["scale"])
        assert 0.5 <= p["sigma"] <= 1.5 and scale in (2, 4) and 500.0 <= p["dose"] <= 2000.0
        assert out["lr"].shape == (1, 48 // scale, 64 // scale)
        clean = SimulateLowResolution(p["sigma"], scale)(out["hr"])
        residual = out["lr"] - clean
        assert float(residual.abs().max()) > 0  # noise was added to the LR ...
        assert float(residual.std()) < 0.05  # ... at a low-dose level, not garbage
        assert out["lr"].min() >= 0 and out["lr"].max() <= 1


def test_paired_degradation_whole_image_and_errors() -> None:
    img = smooth_image(66, 71, seed=17)
    out = PairedDegradationd(scale=3)({"hr": img})
    assert isinstance(out["hr"], np.ndarray) and out["hr"].shape == (1, 66, 69)
    assert out["lr"].shape == (1, 22, 23)
    np.testing.assert_allclose(out["lr"], SimulateLowResolution(1.0, 3)(img), atol=0)
    with pytest.raises(ValueError):
        PairedDegradationd(patch_size=30, scale=4)
    with pytest.raises(ValueError):
        PairedDegradationd(patch_size=48, scale=(3, 4, 5))
    with pytest.raises(ValueError):
        PairedDegradationd(sigma=-1.0)
    with pytest.raises(ValueError):
        PairedDegradationd(patch_size=96)({"hr": img})  # patch larger than the image


def test_paired_degradation_metatensor_and_compose_seed() -> None:
    meta = MetaTensor(torch.from_numpy(smooth_image(100, 100, seed=18)))
    pipeline = Compose([PairedDegradationd(patch_size=32, dose=1000.0, params_key="p")])
    pipeline.set_random_state(seed=21)
    first = pipeline({"hr": meta})
    pipeline.set_random_state(seed=21)
    second = pipeline({"hr": meta})
    assert isinstance(first["hr"], MetaTensor) and isinstance(first["lr"], MetaTensor)
    assert torch.equal(first["lr"], second["lr"])
    top, left = first["p"]["top"], first["p"]["left"]
    assert torch.allclose(first["hr"].affine[:2, 3], torch.tensor([top, left], dtype=torch.float64))


def test_degradation_on_phantom_matches_reference() -> None:
    img, _ = make_phantom(size=256, seed=3)
    pair = PairedDegradationd(sigma=1.0, scale=4, patch_size=128).set_random_state(0)({"hr": img})
    assert pair["hr"].shape == (1, 128, 128) and pair["lr"].shape == (1, 32, 32)
    np.testing.assert_allclose(pair["lr"], reference_degrade(np.asarray(pair["hr"]), 1.0, 4, "pil"), atol=2e-6)
