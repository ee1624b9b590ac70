"""Dataset sources: class folders, MedMNIST ``.npz`` files and MONAI datalist JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_CLASSES",
    "list_images",
    "class_folder_datalist",
    "load_medmnist_npz",
    "load_datalist_json",
    "medmnist_datalist",
    "labelled_datalist",
    "unlabelled_datalist",
    "training_split",
]

from cxr_monai.io import SUPPORTED_SUFFIXES as IMAGE_SUFFIXES  # one suffix list: what load_cxr reads  # noqa: E402
DEFAULT_CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    """A file :func:`cxr_monai.io.load_cxr` reads: a supported ending, or no ending and the DICOM magic."""
    name = path.name.lower()
    if not path.is_file() or name.startswith("."):
        return False
    return any(name.endswith(s) for s in IMAGE_SUFFIXES) or (not path.suffix and _has_dicom_magic(path))


def list_images(path: str | Path) -> list[Path]:
    """Sorted image files under ``path`` (recursively), or ``[path]`` when it is a single file. Image files are
    those with an ending of :data:`cxr_monai.io.SUPPORTED_SUFFIXES` and extension-less DICOM files.

    Raises:
        FileNotFoundError: when ``path`` does not exist or holds no image.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if _is_image(p))
    if not files:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def class_folder_datalist(root: str | Path, classes: Sequence[str] = DEFAULT_CLASSES) -> list[dict]:
    """Datalist of a ``<root>/<CLASS>/*`` dataset (Kermany layout).

    Args:
        root: folder holding one sub-folder per class.
        classes: class folder names, in label order (label = index); matched case-insensitively.

    Returns:
        ``[{"image": str path, "label": int}, ...]`` sorted by class then file name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    folders = {p.name.upper(): p for p in root.iterdir() if p.is_dir()}
    items: list[dict] = []
    for label, name in enumerate(classes):
        folder = folders.get(name.upper())
        if folder is None:
            raise FileNotFoundError(f"{root}: class folder {name!r} missing (found {sorted(folders)})")
        items += [{"image": str(p), "label": label} for p in sorted(folder.rglob("*")) if _is_image(p)]
    if not items:
        raise FileNotFoundError(f"{root}: no images in class folders {list(classes)}")
    return items


def load_medmnist_npz(path: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of a MedMNIST-format ``.npz`` (no network access needed).

    Args:
        path: the ``.npz`` file (keys ``{split}_images`` and ``{split}_labels``).
        split: ``train``, ``val`` or ``test``.

    Returns:
        ``(images uint8 (N, H, W), labels int64 (N,))``.
    """
    path = Path(path)
    with np.load(path) as npz:
        key_i, key_l = f"{split}_images", f"{split}_labels"
        if key_i not in npz or key_l not in npz:
            have = sorted({k.rsplit("_", 1)[0] for k in npz.files})
            raise KeyError(f"{path}: split {split!r} not found (splits present: {have})")
        images, labels = npz[key_i], npz[key_l]
    if images.ndim == 4:  # (N, H, W, C) colour MedMNIST: collapse to gray
        images = images.mean(axis=-1).round().astype(np.uint8)
    return images.astype(np.uint8), labels.reshape(-1).astype(np.int64)


def load_datalist_json(path: str | Path, key: str = "training", base_dir: str | Path | None = None) -> list[dict]:
    """Read one list of a MONAI datalist JSON, resolving relative image paths against ``base_dir``
    (default: the JSON's folder)."""
    from monai.data import load_decathlon_datalist

    path = Path(path)
    return load_decathlon_datalist(str(path), is_segmentation=False, data_list_key=key,
                                   base_dir=str(base_dir if base_dir is not None else path.parent))


def medmnist_datalist(path: str | Path, split: str = "train") -> list[dict]:
    """Datalist of a MedMNIST split with the images held in memory (``image``: uint8 (H, W)) and an
    ``id`` naming the source (``<file>:<split>:<index>``)."""
    images, labels = load_medmnist_npz(path, split)
    name = Path(path).name
    return [{"image": img, "label": int(lab), "id": f"{name}:{split}:{i}"} for i, (img, lab) in enumerate(zip(images, labels))]


def labelled_datalist(source: str | Path, split: str = "test", classes: Sequence[str] = DEFAULT_CLASSES) -> list[dict]:
    """Datalist with labels from a class-folder dataset or a MedMNIST ``.npz`` (then ``split`` is used)."""
    source = Path(source)
    if source.suffix == ".npz":
        return medmnist_datalist(source, split)
    return class_folder_datalist(source, classes)


def unlabelled_datalist(source: str | Path) -> list[dict]:
    """Datalist of every image in a file or folder (for inference): ``[{"image": path}, ...]``."""
    return [{"image": str(p)} for p in list_images(source)]


def training_split(source: str | Path, val_fraction: float = 0.15, seed: int = 0,
                   classes: Sequence[str] = DEFAULT_CLASSES) -> tuple[list[dict], list[dict]]:
    """(train, validation) datalists for training: a MedMNIST ``.npz`` uses its official train/val
    splits; a class-folder dataset (Kermany) gets a patient-aware split (:func:`patient_aware_split`)."""
    from .splits import patient_aware_split

    source = Path(source)
    if source.suffix == ".npz":
        return medmnist_datalist(source, "train"), medmnist_datalist(source, "val")
    return patient_aware_split(class_folder_datalist(source, classes), val_fraction, seed)
