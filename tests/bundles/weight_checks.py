"""Quality checks of the three bundles' shipped weights on small fixed sets of real images, written as functions
of the networks so that a test can also run them on deliberately broken (permuted) weights and see them fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.conftest import PROJECT_ROOT, require_shared

BUNDLES = PROJECT_ROOT / "bundles"
# Floors of the checks below; the comments quote what these very functions measure on the shipped weights
# (`python -m tests.bundles.weight_checks benchmarks/results/weight_checks.json` on this repository's models/).
CLASSIFIER_AUC_FLOOR = 0.95      # classifier_auc (30 + 30 validation images): 0.9978
SR_GAIN_FLOOR_DB = 0.3           # sr_gain_db (3 validation images, 256 px centre crops): +0.40 dB
GENERATOR_FIDELITY_FLOOR = 0.8   # generator_fidelity (24 per class, seed 123): 1.000 (NORMAL) / 0.917 (PNEUMONIA)
MNIST28_AUC_FLOOR = 0.95         # model_mnist28.pt on PneumoniaMNIST val: 0.9968 (= docs/results/metrics_mnist28_val.json)
REFERENCE_AUC_FLOOR = 0.9        # feature_extractor.pt, reference_auc (30 + 30 validation images, 224 px): 0.9956


def permuted(net: nn.Module, seed: int = 0) -> nn.Module:
    """The same network with every parameter tensor's values randomly permuted (same values, wrong places)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: (v.flatten()[torch.randperm(v.numel(), generator=g)].reshape(v.shape) if v.is_floating_point() else v)
             for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    return net


def classifier_network() -> nn.Module:
    from cxr_monai.utils import load_bundle_network

    return load_bundle_network(BUNDLES / "cxr_pneumonia_classifier")


def classifier_image_size() -> int:
    """The shipped classifier's input side (written by its training into ``models/calibration.json``)."""
    from cxr_monai.utils import read_json

    return int(read_json(BUNDLES / "cxr_pneumonia_classifier" / "models" / "calibration.json")["image_size"])


def classifier_lung_field() -> Path | None:
    """The lung-field network the shipped classifier reads through (``models/lung_field.ts``, named by its hash in
    ``models/calibration.json``), or ``None`` for a classifier that reads the whole film."""
    from cxr_monai.utils import file_sha256, read_json

    cal = read_json(BUNDLES / "cxr_pneumonia_classifier" / "models" / "calibration.json")
    if not cal.get("lung_field_sha256"):
        return None
    path = BUNDLES / "cxr_pneumonia_classifier" / "models" / "lung_field.ts"
    assert file_sha256(path) == cal["lung_field_sha256"], "models/lung_field.ts is not the one the classifier was trained through"
    return path


def classifier_input_shape(batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, C, S, S)`` of the shipped classifier's network input, from ``configs/metadata.json``."""
    from cxr_monai.utils import read_json

    image = read_json(BUNDLES / "cxr_pneumonia_classifier" / "configs" / "metadata.json")["network_data_format"]["inputs"]["image"]
    return (batch, int(image["num_channels"]), *map(int, image["spatial_shape"]))


def classifier_views() -> list[str] | None:
    """The input views of the shipped classifier (``views`` in ``models/calibration.json``; ``None``: one view)."""
    from cxr_monai.utils import read_json

    return read_json(BUNDLES / "cxr_pneumonia_classifier" / "models" / "calibration.json").get("views")


def classifier_exposed_field() -> bool:
    """Whether the shipped classifier reads the film's exposed field (``exposed_field`` in ``models/calibration.json``)."""
    from cxr_monai.utils import read_json

    return bool(read_json(BUNDLES / "cxr_pneumonia_classifier" / "models" / "calibration.json").get("exposed_field"))


def classifier_auc(net: nn.Module, per_class: int = 30) -> float:
    """AUC of PNEUMONIA on the first ``per_class`` images of each class of the patient-aware validation split
    of kermany224/train (the split the shipped model was validated on, never trained on)."""
    from monai.transforms import Compose

    from cxr_monai.data import training_split
    from cxr_monai.metrics.classification import roc_auc
    from cxr_monai.transforms import classifier_preprocessing

    _, val = training_split(require_shared("kermany224", "train"), 0.15, 0)
    items = [d for d in val if int(d["label"]) == 0][:per_class] + [d for d in val if int(d["label"]) == 1][:per_class]
    pre = Compose(classifier_preprocessing(["image"], classifier_image_size(), lung_field=classifier_lung_field(),
                                           views=classifier_views(), exposed_field=classifier_exposed_field()))
    x = torch.stack([torch.as_tensor(pre({"image": d["image"]})["image"]) for d in items])
    with torch.no_grad():
        p = torch.softmax(net.eval()(x), 1)[:, 1].numpy()
    return float(roc_auc(p, np.array([int(d["label"]) for d in items])))


def sr_network() -> nn.Module:
    from cxr_monai.utils import load_bundle_network

    return load_bundle_network(BUNDLES / "cxr_sr_csaegan")


def sr_gain_db(net: nn.Module, n_images: int = 3, crop: int = 256) -> float:
    """Mean PSNR gain (dB) of the SR model over bicubic on centre crops of validation images of kermany_hr
    (blur sigma 1 reflect + antialiased bicubic x4, 4 px border excluded)."""
    import torch.nn.functional as F

    from cxr_monai.io import load_cxr
    from cxr_monai.metrics.sr import psnr
    from cxr_monai.transforms import SimulateLowResolution

    root = require_shared("kermany_hr")
    val = json.loads((BUNDLES / "cxr_sr_csaegan" / "configs" / "datalist.json").read_text())["validation"][:n_images]
    degrade = SimulateLowResolution(sigma=1.0, scale=4)
    gains = []
    for item in val:
        hr, _ = load_cxr(root / item["image"])
        h, w = hr.shape[1:]
        top, left = (h - crop) // 2, (w - crop) // 2
        hr = torch.as_tensor(hr[:, top:top + crop, left:left + crop])[None]
        lr = torch.as_tensor(degrade(hr[0]))[None]
        bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            sr = net.eval()(lr).clamp(0, 1)
        gains.append(float(psnr(sr, hr)) - float(psnr(bic, hr)))
    return float(np.mean(gains))


def generator_network() -> nn.Module:
    from monai.bundle import ConfigParser

    from cxr_monai.utils import bare_state_dict

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "cxr_synth_sgan" / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(bare_state_dict(torch.load(BUNDLES / "cxr_synth_sgan" / "models" / "model.pt",
                                                   weights_only=True)))
    return net.eval()


def generator_fidelity(net: nn.Module, per_class: int = 24) -> tuple[float, float]:
    """Share of generated NORMAL / PNEUMONIA samples that the shipped classifier (with its calibration and
    threshold) assigns to the asked class."""
    from monai.transforms import Compose

    from cxr_monai.engines.gan import generate
    from cxr_monai.transforms import classifier_preprocessing
    from cxr_monai.utils import read_json

    cls = classifier_network()
    cal = read_json(BUNDLES / "cxr_pneumonia_classifier" / "models" / "calibration.json")
    pre = Compose(classifier_preprocessing(["image"], classifier_image_size(), lung_field=classifier_lung_field(),
                                           views=classifier_views(), exposed_field=classifier_exposed_field()))
    out = []
    for c in (0, 1):
        imgs, _ = generate(net, per_class, c, seed=123)
        x = torch.stack([torch.as_tensor(pre({"image": i.numpy()})["image"]) for i in imgs])
        with torch.no_grad():
            p = torch.softmax(cls(x) / cal["temperature"], 1)[:, 1]
        called = (p >= cal["threshold"]).long()
        out.append(float((called == c).float().mean()))
    return out[0], out[1]


def classifier_logits(net: nn.Module, items: list[dict], image_size: int, lung_field: Path | None = None,
                      views: list[str] | None = None, exposed_field: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Logits of ``net`` on ``items`` (the bundle's classifier preprocessing, with ``lung_field``, ``views`` and
    ``exposed_field`` as the classifier's calibration names them) and their labels."""
    from monai.transforms import Compose

    from cxr_monai.transforms import classifier_preprocessing

    pre = Compose(classifier_preprocessing(["image"], image_size, lung_field=lung_field, views=views,
                                           exposed_field=exposed_field))
    logits = []
    for i in range(0, len(items), 64):
        x = torch.stack([torch.as_tensor(pre({"image": d["image"]})["image"]) for d in items[i:i + 64]])
        with torch.no_grad():
            logits.append(net.eval()(x))
    return torch.cat(logits), np.array([int(d["label"]) for d in items])


def committed_metrics(logits: torch.Tensor, labels: np.ndarray, temperature: float, threshold: float) -> dict:
    """AUC, ECE and confusion matrix (rows true NORMAL/PNEUMONIA, columns called) at the given temperature and
    threshold: what the bundle's evaluation wrote into ``docs/results/metrics_*.json``."""
    from cxr_monai.metrics.classification import expected_calibration_error, roc_auc

    p = torch.softmax(logits / temperature, 1)[:, 1].numpy()
    called = (p >= threshold).astype(int)
    return {"auc": float(roc_auc(p, labels)), "ece": float(expected_calibration_error(p, labels)), "n": len(labels),
            "confusion_matrix": [[int(((labels == a) & (called == b)).sum()) for b in (0, 1)] for a in (0, 1)]}


def mnist28_network() -> nn.Module:
    """The 28-px PneumoniaMNIST classifier (models/model_mnist28.pt; configs/mnist28.json's preset)."""
    from cxr_monai.utils import load_bundle_network

    return load_bundle_network(BUNDLES / "cxr_pneumonia_classifier", weights_name="model_mnist28.pt",
                               overrides={"network_preset": "mnist_slim", "image_size": 28,
                                          "calibration_name": "calibration_mnist28.json"})


def mnist28_val_items() -> list[dict]:
    """PneumoniaMNIST's official val split (the split ``docs/results/metrics_mnist28_val.json`` reports)."""
    from cxr_monai.data import training_split

    return training_split(require_shared("pneumoniamnist", "pneumoniamnist_28_trainval.npz"), 0.15, 0)[1]


def kermany_val_items() -> list[dict]:
    """The patient-aware validation split of kermany224/train (``docs/results/metrics_val.json``)."""
    from cxr_monai.data import training_split

    return training_split(require_shared("kermany224", "train"), 0.15, 0)[1]


def reference_network() -> tuple[nn.Module, int, float]:
    """models/feature_extractor.pt (the reference network of the SR perceptual loss and the synthesis metrics)
    with its input size and temperature from configs/feature_extractor.json."""
    from cxr_monai.reference_network import load_reference_network

    root = BUNDLES / "cxr_pneumonia_classifier"
    cfg = json.loads((root / "configs" / "feature_extractor.json").read_text())
    return load_reference_network(root), int(cfg["image_size"]), float(cfg["temperature"])


def reference_auc(net: nn.Module, image_size: int, per_class: int = 30) -> float:
    """AUC of the reference network on the first ``per_class`` images per class of the kermany validation split."""
    val = kermany_val_items()
    items = [d for d in val if int(d["label"]) == 0][:per_class] + [d for d in val if int(d["label"]) == 1][:per_class]
    return committed_metrics(*classifier_logits(net, items, image_size), 1.0, 0.5)["auc"]


def measure_all(seed: int = 0) -> dict:
    """Every check above on the shipped networks and on ``permuted(..., seed)`` copies: the figures the README and
    the floors' comments quote."""
    ref, ref_size, _ = reference_network()
    out = {
        "classifier_auc": {"shipped": classifier_auc(classifier_network()),
                           "permuted": classifier_auc(permuted(classifier_network(), seed))},
        "sr_gain_db": {"shipped": sr_gain_db(sr_network()), "permuted": sr_gain_db(permuted(sr_network(), seed))},
        "generator_fidelity": {"shipped": list(generator_fidelity(generator_network())),
                               "permuted": list(generator_fidelity(permuted(generator_network(), seed)))},
        "reference_auc": {"shipped": reference_auc(ref, ref_size)},
        "floors": {"classifier_auc": CLASSIFIER_AUC_FLOOR, "sr_gain_db": SR_GAIN_FLOOR_DB,
                   "generator_fidelity": GENERATOR_FIDELITY_FLOOR, "reference_auc": REFERENCE_AUC_FLOOR},
        "permutation_seed": seed,
    }
    out["reference_auc"]["permuted"] = reference_auc(permuted(ref, seed), ref_size)
    return out


if __name__ == "__main__":  # .venv/bin/python -m tests.bundles.weight_checks OUT.json
    import sys

    result = measure_all()
    text = json.dumps(result, indent=1)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(sys.argv[1]).write_text(text + "\n")
    print(text)
