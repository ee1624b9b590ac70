"""Tests for cxr_monai.data: class-folder datalists, MedMNIST npz, patient ids and splits, class balancing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_monai.data import (
    balanced_sampler,
    class_folder_datalist,
    class_weights,
    labelled_datalist,
    labels_of,
    list_images,
    load_medmnist_npz,
    medmnist_datalist,
    patient_aware_split,
    patient_id,
    training_split,
    unlabelled_datalist,
)

from tests.conftest import SHARED_DATA as DATA  # CXR_SHARED_DATA, default ../shared/data


def real(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found: {path} (set CXR_SHARED_DATA)")
    return path


def write_png(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)
    return path


@pytest.fixture()
def png_folder(tmp_path: Path) -> Path:
    """NORMAL/ with 2 PNGs (one in a sub-folder), PNEUMONIA/ with 3; plus files that are not images."""
    root = tmp_path / "ds"
    write_png(root / "NORMAL" / "b.png")
    write_png(root / "NORMAL" / "nested" / "a.png")
    for name in ("z.png", "x.png", "y.PNG"):
        write_png(root / "PNEUMONIA" / name)
    (root / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "PNEUMONIA" / ".hidden.png").write_bytes(b"")
    (root / "OTHER").mkdir()
    write_png(root / "OTHER" / "o.png")
    return root


# ------------------------------------------------------------------------------------------- class folders
def test_class_folder_datalist(png_folder: Path):
    items = class_folder_datalist(png_folder)
    assert [Path(i["image"]).name for i in items] == ["b.png", "a.png", "x.png", "y.PNG", "z.png"]
    assert [i["label"] for i in items] == [0, 0, 1, 1, 1]
    assert all(isinstance(i["image"], str) and Path(i["image"]).is_file() for i in items)
    assert all(isinstance(i["label"], int) for i in items)
    assert set(items[0]) == {"image", "label"}
    # label = index into classes, whatever their order; folder names match case-insensitively
    flipped = class_folder_datalist(png_folder, classes=("pneumonia", "normal"))
    assert Counter(i["label"] for i in flipped) == {0: 3, 1: 2}
    assert {Path(i["image"]).name for i in flipped if i["label"] == 1} == {"a.png", "b.png"}
    three = class_folder_datalist(png_folder, classes=("NORMAL", "PNEUMONIA", "OTHER"))
    assert Counter(i["label"] for i in three) == {0: 2, 1: 3, 2: 1}


def test_class_folder_datalist_errors(tmp_path: Path, png_folder: Path):
    with pytest.raises(FileNotFoundError):
        class_folder_datalist(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="COVID"):
        class_folder_datalist(png_folder, classes=("NORMAL", "COVID"))
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)
    (tmp_path / "empty" / "PNEUMONIA").mkdir()
    with pytest.raises(FileNotFoundError):
        class_folder_datalist(tmp_path / "empty")


def test_list_and_unlabelled_datalist(png_folder: Path, tmp_path: Path):
    files = list_images(png_folder / "PNEUMONIA")
    assert [p.name for p in files] == ["x.png", "y.PNG", "z.png"]
    single = png_folder / "NORMAL" / "b.png"
    assert list_images(single) == [single]
    assert unlabelled_datalist(single) == [{"image": str(single)}]
    assert len(unlabelled_datalist(png_folder)) == 6
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nothing")


def test_kermany224_datalist():
    root = real("kermany224", "train")
    items = class_folder_datalist(root)
    counts = Counter(i["label"] for i in items)
    assert counts == {0: 1341, 1: 3875}  # official train split: NORMAL, PNEUMONIA
    assert all(Path(i["image"]).suffix == ".jpeg" for i in items)
    assert all(Path(i["image"]).parent.name == ("NORMAL", "PNEUMONIA")[i["label"]] for i in items)
    for i in items[:: len(items) // 5]:
        assert Path(i["image"]).is_file()


def test_phantom_dataset_as_class_folders(tmp_path: Path):
    from cxr_monai.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "ph", n_per_class=4, size=32, seed=0)
    items = class_folder_datalist(root)
    assert Counter(i["label"] for i in items) == {0: 4, 1: 4}
    assert len({patient_id(i["image"]) for i in items}) == 8  # each phantom is its own patient
    train, val = patient_aware_split(items, val_fraction=0.25, seed=0)
    assert Counter(i["label"] for i in val) == {0: 1, 1: 1}
    assert len(train) == 6


# ------------------------------------------------------------------------------------------- MedMNIST npz
def make_npz(path: Path, n_train: int = 10, n_val: int = 4, rgb: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (28, 28, 3) if rgb else (28, 28)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 2).reshape(-1, 1).astype(np.uint8),
        "val_images": rng.integers(0, 256, (n_val, *shape), dtype=np.uint8),
        "val_labels": np.ones((n_val, 1), dtype=np.uint8),
    }
    np.savez(path, **arrays)
    return arrays


def test_load_medmnist_npz(tmp_path: Path):
    arrays = make_npz(tmp_path / "toy.npz")
    images, labels = load_medmnist_npz(tmp_path / "toy.npz", "train")
    assert images.shape == (10, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, arrays["train_images"])
    assert labels.shape == (10,) and labels.dtype.kind == "i"
    assert labels.tolist() == [0, 1] * 5
    images, labels = load_medmnist_npz(str(tmp_path / "toy.npz"), split="val")
    assert images.shape == (4, 28, 28) and labels.tolist() == [1, 1, 1, 1]
    with pytest.raises(KeyError, match="test"):
        load_medmnist_npz(tmp_path / "toy.npz", "test")


def test_load_medmnist_npz_colour_collapses_to_gray(tmp_path: Path):
    arrays = make_npz(tmp_path / "rgb.npz", rgb=True)
    images, _ = load_medmnist_npz(tmp_path / "rgb.npz", "train")
    assert images.shape == (10, 28, 28) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - arrays["train_images"].mean(axis=-1)).max() <= 0.5


def test_medmnist_datalists(tmp_path: Path):
    make_npz(tmp_path / "toy.npz")
    items = medmnist_datalist(tmp_path / "toy.npz", "val")
    assert len(items) == 4 and items[0]["image"].shape == (28, 28) and items[0]["label"] == 1
    assert len({i["id"] for i in items}) == 4
    train, val = training_split(tmp_path / "toy.npz")  # official splits, untouched
    assert (len(train), len(val)) == (10, 4)
    assert len(labelled_datalist(tmp_path / "toy.npz", split="train")) == 10


def test_pneumoniamnist_npz():
    path = real("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
    images, labels = load_medmnist_npz(path, "train")
    assert images.shape == (4708, 28, 28) and images.dtype == np.uint8
    assert Counter(labels.tolist()) == {0: 1214, 1: 3494}  # label 1 = pneumonia
    images_val, labels_val = load_medmnist_npz(path, "val")
    assert images_val.shape == (524, 28, 28)
    assert Counter(labels_val.tolist()) == {0: 135, 1: 389}
    assert images.std() > 20  # real radiographs, not blank
    assert images[:, 10:18, 10:18].mean() > images[:, :, :3].mean()  # mediastinum brighter than the border


# ------------------------------------------------------------------------------------------- patient ids
@pytest.mark.parametrize(
    "name, expected",
    [
        ("person123_bacteria_4.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1_bacteria_1.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ],
)
def test_patient_id(name: str, expected: str):
    assert patient_id(name) == expected
    assert patient_id(Path("/some/where/PNEUMONIA") / name) == expected


def test_patient_id_distinguishes_patients():
    assert patient_id("person12_virus_1.jpeg") != patient_id("person1_virus_2.jpeg")
    assert patient_id("IM-0115-0001.jpeg") != patient_id("NORMAL2-IM-0115-0001.jpeg")
    assert patient_id("scan_a.png") != patient_id("scan_b.png")  # unknown names: one patient per file


# ------------------------------------------------------------------------------------------- splits
def synthetic_datalist() -> list[dict]:
    """60 patients, 1-4 images each, labels 0 (IM-...) and 1 (person...), 2:1 pneumonia."""
    rng = np.random.default_rng(1)
    items = []
    for p in range(20):
        items += [{"image": f"/d/NORMAL/IM-{p:04d}-{k + 1:04d}.jpeg", "label": 0} for k in range(rng.integers(1, 5))]
    for p in range(40):
        items += [{"image": f"/d/PNEUMONIA/person{p}_bacteria_{k}.jpeg", "label": 1} for k in range(rng.integers(1, 5))]
    return items


def patients(items: list[dict]) -> set[str]:
    return {patient_id(i["image"]) for i in items}


def test_patient_aware_split_synthetic():
    items = synthetic_datalist()
    train, val = patient_aware_split(items, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == len(items)
    assert sorted(i["image"] for i in train + val) == sorted(i["image"] for i in items)
    assert not patients(train) & patients(val)
    for label in (0, 1):
        n = sum(i["label"] == label for i in items)
        n_val = sum(i["label"] == label for i in val)
        assert 0.2 * n <= n_val <= 0.2 * n + 4  # stratified; overshoot at most one patient's images
    again = patient_aware_split(items, val_fraction=0.2, seed=0)
    assert again == (train, val)
    other = patient_aware_split(items, val_fraction=0.2, seed=1)
    assert patients(other[1]) != patients(val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_patient_aware_split_bad_fraction(fraction: float):
    with pytest.raises(ValueError):
        patient_aware_split(synthetic_datalist(), val_fraction=fraction)


def test_patient_aware_split_kermany224():
    items = class_folder_datalist(real("kermany224", "train"))
    train, val = patient_aware_split(items, val_fraction=0.15, seed=0)
    assert len(train) + len(val) == len(items) == 5216
    assert not patients(train) & patients(val)  # no patient on both sides
    assert 0.13 < len(val) / len(items) < 0.17
    val_counts = Counter(i["label"] for i in val)
    assert set(val_counts) == {0, 1}
    assert 0.13 < val_counts[0] / 1341 < 0.17 and 0.13 < val_counts[1] / 3875 < 0.17
    # the grouping is real: many Kermany patients have several images
    per_patient = Counter(patient_id(i["image"]) for i in items)
    assert len(per_patient) < 0.8 * len(items)
    tr, va = training_split(real("kermany224", "train"), val_fraction=0.15, seed=0)
    assert [i["image"] for i in va] == [i["image"] for i in val]


# ------------------------------------------------------------------------------------------- balancing
def test_class_weights():
    w = class_weights([0, 0, 0, 1])
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    counts = torch.tensor([3.0, 1.0])
    assert float((w * counts).sum()) == pytest.approx(4.0)  # sum_c w_c n_c = N
    assert class_weights(np.array([1, 1, 0]), num_classes=3).tolist() == pytest.approx([1.5, 0.75, 0.0])
    assert class_weights([2, 2]).tolist() == pytest.approx([0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        class_weights([])


def test_labels_of():
    assert labels_of([{"label": 1}, {"label": 0}, {"label": "1"}]).tolist() == [1, 0, 1]


def test_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 900 + [1] * 100)
    sampler = balanced_sampler(labels, seed=0)
    assert len(sampler) == len(labels)
    drawn = labels[list(sampler)]
    assert 0.45 < drawn.mean() < 0.55  # minority (10 %) oversampled to about half
    big = balanced_sampler(labels, seed=0, num_samples=20_000)
    frac = labels[list(big)].mean()
    assert abs(frac - 0.5) < 0.02
    assert list(balanced_sampler(labels, seed=3)) == list(balanced_sampler(labels, seed=3))
    assert list(balanced_sampler(labels, seed=3)) != list(balanced_sampler(labels, seed=4))
    three = np.array([0] * 50 + [1] * 30 + [2] * 20)
    counts = np.bincount(three[list(balanced_sampler(three, seed=1, num_samples=30_000))], minlength=3)
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.02)


def test_balanced_sampler_in_a_dataloader():
    labels = np.array([0] * 40 + [1] * 8)
    data = torch.utils.data.TensorDataset(torch.arange(48), torch.as_tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=balanced_sampler(labels, seed=0))
    seen = torch.cat([y for _, y in loader])
    assert seen.numel() == 48 and 0.3 < seen.float().mean() < 0.7
