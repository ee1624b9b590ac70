"""Every bundle passes MONAI's own checks (ConfigWorkflow initialize + check_properties with no overrides beyond
bundle_root, verify_net_in_out, ckpt_export, verify_metadata), and its shipped weights pass quality floors on fixed real images
that permuted (broken) weights fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from cxr_monai.utils import bundle_checks, find_bundles
from tests.bundles import weight_checks as W
from tests.conftest import SHARED_DATA

BUNDLES = W.BUNDLES
BUNDLE_NAMES = list(find_bundles(BUNDLES))
# every bundle's declared property checks (metadata.json "checks"): a new bundle is checked without touching this file
CASES = [(b, configs, wtype) for b in BUNDLE_NAMES for wtype, sets in bundle_checks(BUNDLES / b).items()
         for configs in sets]


def test_bundles_are_discovered_with_their_checks() -> None:
    """The three shipped bundles are found from their metadata.json and each declares infer and train checks."""
    assert {"cxr_pneumonia_classifier", "cxr_sr_csaegan", "cxr_synth_sgan"} <= set(BUNDLE_NAMES)
    assert {b for b, _, t in CASES if t == "train"} == set(BUNDLE_NAMES)
    assert ("cxr_sr_csaegan", ["train_psnr.json", "train_gan.json"], "train") in CASES


@pytest.mark.parametrize("bundle,configs,workflow_type", CASES, ids=[f"{b}:{'+'.join(c)}" for b, c, _ in CASES])
def test_monai_property_checks(bundle: str, configs: list[str], workflow_type: str) -> None:
    root = BUNDLES / bundle
    if workflow_type == "train" and not SHARED_DATA.is_dir():
        pytest.skip(f"the train configs default to the training data under {SHARED_DATA}")
    files = [str(root / "configs" / c) for c in configs]
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], meta_file=str(root / "configs" / "metadata.json"),
                        workflow_type=workflow_type, bundle_root=str(root))
    wf.initialize()
    # raises on a missing required property; returns the optional properties whose ids are wrong (e.g. an
    # evaluator whose inferer is not @validate#inferer): the model-zoo's ci/verify_bundle.py fails a bundle on those
    assert wf.check_properties() == []
    assert wf.bundle_root == str(root) and wf.device is not None and wf.network_def is not None


def test_inference_without_input_fails_at_run_time_naming_the_argument() -> None:
    root = BUNDLES / "cxr_pneumonia_classifier"
    wf = ConfigWorkflow(config_file=str(root / "configs" / "inference.json"), meta_file=str(root / "configs" / "metadata.json"),
                        workflow_type="infer", bundle_root=str(root), output_dir="/tmp/cxr_no_input")
    wf.initialize()
    with pytest.raises(Exception, match="dataset_dir"):
        wf.run()


SCHEMA = Path(__file__).with_name("bundle_metadata_schema.json")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_metadata(bundle: str) -> None:
    """MONAI's own verify_metadata, with the project's offline schema (written from the MONAI Bundle
    Specification) as the local copy of the schema file: no download is attempted when the file exists."""
    verify_metadata(meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("breakage,match", [
    (lambda d: d.pop("network_data_format"), "network_data_format"),
    (lambda d: d["network_data_format"]["outputs"]["pred"].pop("dtype"), "dtype"),
    (lambda d: d["network_data_format"]["inputs"]["image"].update(value_range=[0]), r"\[0\] is not valid"),
    (lambda d: d.update(version="2"), "'2' does not match"),
    (lambda d: d.pop("required_packages_version"), "is not valid under any of the given schemas"),
])
def test_verify_metadata_rejects_broken_metadata(breakage, match: str, tmp_path: Path) -> None:
    meta = json.loads((BUNDLES / "cxr_sr_csaegan" / "configs" / "metadata.json").read_text())
    breakage(meta)
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_net_in_out_and_ckpt_export(bundle: str, tmp_path: Path) -> None:
    root = BUNDLES / bundle
    meta, cfg = str(root / "configs" / "metadata.json"), str(root / "configs" / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, bundle_root=str(root), n=1, any=8)
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(root / "models" / "model.pt"), meta_file=meta,
                config_file=cfg, bundle_root=str(root))
    assert ts.is_file() and (root / "models" / "model.pt").stat().st_size < 25e6


def test_shipped_classifier_separates_the_classes() -> None:
    auc = W.classifier_auc(W.classifier_network())
    assert auc >= W.CLASSIFIER_AUC_FLOOR, auc


def test_shipped_sr_model_beats_bicubic() -> None:
    gain = W.sr_gain_db(W.sr_network())
    assert gain >= W.SR_GAIN_FLOOR_DB, gain


def test_shipped_generator_makes_the_asked_class() -> None:
    normal, pneumonia = W.generator_fidelity(W.generator_network())
    assert normal >= W.GENERATOR_FIDELITY_FLOOR and pneumonia >= W.GENERATOR_FIDELITY_FLOOR, (normal, pneumonia)


def test_the_weight_checks_fail_on_permuted_weights() -> None:
    """The three checks above must tell trained weights from the same tensors shuffled."""
    assert W.classifier_auc(W.permuted(W.classifier_network())) < W.CLASSIFIER_AUC_FLOOR
    assert W.sr_gain_db(W.permuted(W.sr_network())) < W.SR_GAIN_FLOOR_DB
    normal, pneumonia = W.generator_fidelity(W.permuted(W.generator_network()))
    assert min(normal, pneumonia) < W.GENERATOR_FIDELITY_FLOOR, (normal, pneumonia)


def _committed(name: str) -> dict:
    return json.loads((BUNDLES / "cxr_pneumonia_classifier" / "docs" / "results" / name).read_text())


def _calibration(name: str) -> dict:
    return json.loads((BUNDLES / "cxr_pneumonia_classifier" / "models" / name).read_text())


def _assert_reproduces(got: dict, committed: dict) -> None:
    assert got["n"] == committed["n"] and got["confusion_matrix"] == committed["confusion_matrix"], (got, committed)
    assert got["auc"] == pytest.approx(committed["auc"], abs=1e-4) and got["ece"] == pytest.approx(committed["ece"], abs=1e-4)


def test_shipped_threshold_and_calibration_reproduce_the_committed_validation() -> None:
    """models/model.pt with models/calibration.json's temperature and threshold reproduces
    docs/results/metrics_val.json on the validation split (confusion matrix exactly, AUC and ECE to 1e-4); the
    threshold is the equal-prior rule's (the calibration split's PNEUMONIA prevalence, from its committed counts).
    A shifted threshold moves the confusion matrix, a wrong temperature the ECE (checked below)."""
    cal, committed = _calibration("calibration.json"), _committed("metrics_val.json")
    (tn, fp), (fn, tp) = cal["calibration_split"]["confusion_matrix"]
    assert cal["threshold"] == committed["threshold"] == pytest.approx((fn + tp) / (tn + fp + fn + tp), abs=1e-12)
    logits, labels = W.classifier_logits(W.classifier_network(), W.kermany_val_items(), W.classifier_image_size(),
                                         W.classifier_lung_field(), W.classifier_views(), W.classifier_exposed_field())
    _assert_reproduces(W.committed_metrics(logits, labels, cal["temperature"], cal["threshold"]), committed)
    # the same check fails on a shifted threshold and on a wrong temperature
    shifted = W.committed_metrics(logits, labels, cal["temperature"], cal["threshold"] + 0.05)
    assert shifted["confusion_matrix"] != committed["confusion_matrix"]
    hot = W.committed_metrics(logits, labels, cal["temperature"] * 1.5, cal["threshold"])
    assert abs(hot["ece"] - committed["ece"]) > 1e-3


def test_shipped_mnist28_model_and_calibration_reproduce_the_committed_validation() -> None:
    cal, committed = _calibration("calibration_mnist28.json"), _committed("metrics_mnist28_val.json")
    assert cal["threshold"] == committed["threshold"]
    net, items = W.mnist28_network(), W.mnist28_val_items()
    got = W.committed_metrics(*W.classifier_logits(net, items, 28), cal["temperature"], cal["threshold"])
    _assert_reproduces(got, committed)
    assert got["auc"] >= W.MNIST28_AUC_FLOOR
    broken = W.committed_metrics(*W.classifier_logits(W.permuted(net), items, 28), cal["temperature"], cal["threshold"])
    assert broken["auc"] < W.MNIST28_AUC_FLOOR, broken


def test_shipped_reference_network_separates_the_classes() -> None:
    """models/feature_extractor.pt (behind the SR perceptual loss and the synthesis metrics) is a working
    classifier; the same tensors permuted are not."""
    net, size, _ = W.reference_network()
    auc = W.reference_auc(net, size)
    print(f"reference network AUC {auc:.4f}")
    assert auc >= W.REFERENCE_AUC_FLOOR, auc
    assert W.reference_auc(W.permuted(net), size) < W.REFERENCE_AUC_FLOOR


@pytest.mark.parametrize("bundle,shape", [("cxr_sr_csaegan", (1, 1, 48, 40))])
def test_shipped_torchscript_equals_the_checkpoint(bundle: str, shape: tuple) -> None:
    """models/model.ts computes what models/model.pt does (float32 tolerance: other code paths). The classifier
    ships no model.ts since 0.5.0 (38 MB in float32): test_verify_net_in_out_and_ckpt_export writes it."""
    from cxr_monai.utils import load_bundle_network

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    scripted = torch.jit.load(str(BUNDLES / bundle / "models" / "model.ts"), map_location="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), load_bundle_network(BUNDLES / bundle)(x), rtol=1e-4, atol=1e-5)


def test_synthesis_inference_writes_what_generate_makes(tmp_path: Path) -> None:
    """The evaluator-driven inference config writes exactly the images of cxr_monai.engines.gan.generate."""
    import numpy as np
    from PIL import Image

    from cxr_monai.cli import run_workflow
    from cxr_monai.engines.gan import generate

    run_workflow(BUNDLES / "cxr_synth_sgan", "inference.json", "infer", output_dir=str(tmp_path), num_images=5,
                 class_name="PNEUMONIA", seed=3, batch_size=2)
    imgs, _ = generate(W.generator_network(), 5, 1, seed=3)
    for i in range(5):
        got = np.asarray(Image.open(tmp_path / f"PNEUMONIA_seed3_{i:05d}.png"), dtype=np.float32) / 255
        np.testing.assert_allclose(got, imgs[i, 0].numpy(), atol=0.5 / 255 + 1e-6)



def _documented_merges() -> list[tuple[str, list[str]]]:
    """Config merges a bundle's own docs (its card and the card's history and studies pages) tell a user to run (``$B`` = that bundle) in which a later file brings
    its own ``imports`` (which replaces the earlier list: the case where a merge can lose a module)."""
    import re

    cases = []
    for root in sorted(p for p in BUNDLES.iterdir() if (p / "configs").is_dir()):
        for doc in (root / "README.md", *sorted((root / "docs").glob("*.md"))):
            if not doc.is_file():
                continue
            for m in re.finditer(r"config_file \"\[([^\]]*)\]\"", doc.read_text()):
                names = [Path(n.strip(" '")).name for n in m.group(1).split(",")]
                later = [json.loads((root / "configs" / n).read_text()) for n in names[1:]]
                if any("imports" in c for c in later) and (root.name, names) not in cases:
                    cases.append((root.name, names))
    return cases


MERGES = _documented_merges()


def test_documented_merges_were_found() -> None:
    assert ("cxr_pneumonia_classifier", ["inference.json", "evaluate.json", "stress.json"]) in MERGES


@pytest.mark.parametrize("bundle,configs", MERGES, ids=[f"{b}:{'+'.join(c)}" for b, c in MERGES])
def test_merged_config_imports_every_module_it_uses(bundle: str, configs: list[str]) -> None:
    """A later config's ``imports`` replaces the earlier one's, so a merge can lose a module that an expression
    of the earlier config uses. Inside pytest that module is usually imported already and a ConfigWorkflow test
    passes, while ``python -m monai.bundle run`` in a fresh process fails (seen: evaluate.json + stress.json lost
    cxr_monai.inference). So: run the merged ``imports`` in a fresh interpreter and check that every
    ``cxr_monai.<module>`` an expression names is there."""
    import re
    import subprocess
    import sys

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    merged = parser.get()
    exprs = [v for v in re.findall(r'"(\$[^"]*)"', json.dumps({k: v for k, v in merged.items() if k != "imports"}))]
    used = sorted({m for e in exprs for m in re.findall(r"\bcxr_monai\.([a-z_]+)\.", e)})
    code = "\n".join(i[1:] for i in merged.get("imports", []) if i.startswith("$")) + (
        "\nimport cxr_monai\nprint(','.join(m for m in %r if not hasattr(cxr_monai, m)))" % (used,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(BUNDLES.parent))
    assert out.returncode == 0, out.stderr[-2000:]
    missing = out.stdout.strip()
    assert used and not missing, f"{'+'.join(configs)}: expressions use cxr_monai.{{{missing}}} that its imports never load"
