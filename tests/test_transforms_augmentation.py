"""CXR augmentation preset: contract kept ([0, 1], shape), identity at prob 0, no black edges, relative shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image
from scipy import ndimage

from cxr_monai.transforms import (
    ClampIntensity,
    ClampIntensityd,
    RandCXRAffine,
    RandCXRAffined,
    cxr_augmentation,
    cxr_augmentation_array,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def smooth_image(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((size, size)), 3.0, mode="wrap")
    img = (img - img.min()) / np.ptp(img)
    return img.astype(np.float32)[None]


def load_real_image() -> np.ndarray:
    folder = SHARED_DATA / "kermany224" / "train" / "PNEUMONIA"
    files = sorted(folder.glob("*.jpeg")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"real data not found at {folder}")
    with Image.open(files[0]) as pil:
        return (np.asarray(pil.convert("L"), dtype=np.float32) / 255.0)[None]


def centroid(img: torch.Tensor) -> np.ndarray:
    arr = np.asarray(img[0], dtype=np.float64)
    return np.array(ndimage.center_of_mass(arr))


def test_augmentation_keeps_range_and_shape_on_real_cxr() -> None:
    img = load_real_image()
    pipeline = Compose(cxr_augmentation(keys=("image",), prob=1.0))
    pipeline.set_random_state(seed=0)
    changed = 0
    for _ in range(6):
        out = pipeline({"image": img, "label": 1})
        assert out["label"] == 1
        assert tuple(out["image"].shape) == img.shape
        assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
        changed += int(not np.allclose(np.asarray(out["image"]), img, atol=1e-3))
    assert changed == 6


def test_strong_intensity_jitter_is_clamped() -> None:
    img = torch.from_numpy(smooth_image())
    chain = cxr_augmentation(rotate_deg=0, zoom=0, shift=0, prob=1.0, scale_intensity=0.5, shift_intensity=0.5)
    pipeline = Compose(chain).set_random_state(seed=3)
    hit_bound = False
    for _ in range(10):
        out = pipeline({"image": img})["image"]
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        hit_bound |= bool((out == 0).any() or (out == 1).any())
    assert hit_bound  # the jitter did push values out of [0, 1]: the clamp is what keeps the contract
    assert isinstance(chain[-1], ClampIntensityd)


def test_prob_zero_is_identity() -> None:
    img = torch.from_numpy(smooth_image(seed=1))
    out = Compose(cxr_augmentation(keys="image", flip=True, prob=0.0))({"image": img})["image"]
    assert torch.equal(torch.as_tensor(out), img)
    out_arr = Compose(cxr_augmentation_array(flip=True, prob=0.0))(img.numpy())
    assert np.array_equal(np.asarray(out_arr), img.numpy())


def test_constant_image_has_no_black_edges() -> None:
    """Border padding: rotation, zoom-out and shift of a flat image stay flat (zeros would leave dark wedges)."""
    flat = torch.full((1, 80, 80), 0.7)
    pipeline = Compose(cxr_augmentation(rotate_deg=15, zoom=0.2, shift=0.15, intensity=False, prob=1.0))
    pipeline.set_random_state(seed=4)
    for _ in range(5):
        out = pipeline({"image": flat})["image"]
        assert torch.allclose(torch.as_tensor(out), flat, atol=1e-5)
    for mode in ("border", "reflection"):
        out = Compose(cxr_augmentation_array(rotate_deg=20, intensity=False, prob=1.0, padding_mode=mode))(flat)
        assert torch.allclose(torch.as_tensor(out), flat, atol=1e-5)


@pytest.mark.parametrize("size", [64, 160])
def test_shift_is_a_fraction_of_the_image_size(size: int) -> None:
    img = torch.zeros(1, size, size)
    c = size // 2
    img[:, c - 2 : c + 2, c - 2 : c + 2] = 1.0
    shift = 0.2
    t = RandCXRAffine(prob=1.0, rotate_deg=0, zoom=0, shift=shift).set_random_state(seed=5)
    td = RandCXRAffined(keys="image", prob=1.0, rotate_deg=0, zoom=0, shift=shift).set_random_state(seed=5)
    for transform in (lambda x: t(x), lambda x: td({"image": x})["image"]):
        moves = np.array([np.abs(centroid(transform(img)) - centroid(img)) for _ in range(20)])
        assert moves.max() <= shift * size + 1.0  # within +- shift * size pixels per axis
        assert moves.max() > 0.5 * shift * size  # and really of that order, not a fraction of a pixel


def test_reproducible_with_set_random_state() -> None:
    img = smooth_image(seed=6)
    first = Compose(cxr_augmentation(flip=True, prob=0.7)).set_random_state(seed=8)
    second = Compose(cxr_augmentation(flip=True, prob=0.7)).set_random_state(seed=8)
    other = Compose(cxr_augmentation(flip=True, prob=0.7)).set_random_state(seed=9)
    outs = [first({"image": img})["image"] for _ in range(3)]
    again = [second({"image": img})["image"] for _ in range(3)]
    for a, b in zip(outs, again):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert any(not torch.equal(torch.as_tensor(a), torch.as_tensor(other({"image": img})["image"])) for a in outs)


def test_flip_is_left_right() -> None:
    img = torch.from_numpy(smooth_image(seed=7))
    out = Compose(cxr_augmentation(rotate_deg=0, zoom=0, shift=0, flip=True, intensity=False, prob=1.0))(
        {"image": img}
    )["image"]
    assert torch.equal(torch.as_tensor(out), img.flip(-1))
    assert len(cxr_augmentation(flip=False, intensity=False)) == 2  # affine + clamp only


def test_mask_moves_with_image_and_stays_binary() -> None:
    img = torch.from_numpy(smooth_image(seed=8))
    mask = torch.zeros(1, 96, 96)
    mask[:, 30:60, 20:50] = 1.0
    chain = cxr_augmentation(
        keys=("image", "mask"), mode=("bilinear", "nearest"), intensity_keys="image", rotate_deg=10, prob=1.0
    )
    out = Compose(chain).set_random_state(seed=10)({"image": img, "mask": mask})
    values = torch.unique(torch.as_tensor(out["mask"]))
    assert set(values.tolist()) <= {0.0, 1.0}
    assert not torch.equal(torch.as_tensor(out["mask"]), mask)
    assert abs(float(out["mask"].sum()) - float(mask.sum())) < 0.35 * float(mask.sum())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding_mode": "zeros"},
        {"rotate_deg": -5},
        {"zoom": 1.5},
        {"shift": 1.0},
        {"prob": 2.0},
        {"gamma": (1.5, 0.8)},
        {"scale_intensity": -0.1},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        cxr_augmentation(**kwargs)
    with pytest.raises(ValueError):
        cxr_augmentation_array(**kwargs)


def test_clamp_intensity_keeps_type() -> None:
    arr = np.array([[[-0.5, 0.5, 1.5]]], dtype=np.float32)
    out = ClampIntensity()(arr)
    assert isinstance(out, np.ndarray) and out.tolist() == [[[0.0, 0.5, 1.0]]]
    out_t = ClampIntensityd(keys="x")({"x": torch.from_numpy(arr)})["x"]
    assert isinstance(out_t, torch.Tensor) and out_t.tolist() == [[[0.0, 0.5, 1.0]]]
    with pytest.raises(ValueError):
        ClampIntensity(1.0, 0.0)
