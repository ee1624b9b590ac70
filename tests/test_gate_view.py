"""The classifier bundle's scope gate decides on its own view of each film: a gate that names a lung-field network,
behind the shipped classifier, gives in the bundle's inference and commissioning runs the decisions
of :func:`cxr_monai.inference.check_scope` (the deploy app's), while the classifier's outputs stay those of the run
with the shipped gate."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from cxr_monai.cli import BUNDLES_DIR, run_workflow
from cxr_monai.inference import check_scope
from cxr_monai.io import load_cxr, save_png
from cxr_monai.scope import (ScopeCheck, ScopeGateModule, gate_with_pass_region, load_scope_check, load_scope_gate,
                             save_scope_gate, scope_net)
from cxr_monai.scope.training import fit_feature_stats
from cxr_monai.engines import ClassificationWriter
from cxr_monai.commissioning import CommissioningCollector
from cxr_monai.transforms import classifier_preprocessing, load_lung_field
from cxr_monai.utils import file_sha256
from tests.conftest import SHARED_DATA

BUNDLE = (BUNDLES_DIR / "cxr_pneumonia_classifier").resolve()
MODELS = BUNDLE / "models"
CONFIGS = BUNDLE / "configs"
SIZE = 160
SITE = SHARED_DATA / "kermany_site_sample"
ADULTS = SHARED_DATA / "adult_normal_nih"

needs_data = pytest.mark.skipif(not (SITE.is_dir() and ADULTS.is_dir() and (MODELS / "model.pt").is_file()),
                                reason=f"real data or bundle weights not found ({SHARED_DATA}; CXR_SHARED_DATA)")


def _crop(image: np.ndarray, keep: float) -> np.ndarray:
    """The central ``keep`` of a ``(1, H, W)`` film (a tight collimation)."""
    h, w = image.shape[-2:]
    dy, dx = round(h * (1 - keep) / 2), round(w * (1 - keep) / 2)
    return image[:, dy:h - dy, dx:w - dx]


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    """Children of the site sample (2 per class), an adult film and the 0.6 central crop of one child per class."""
    if not (SITE.is_dir() and ADULTS.is_dir()):
        pytest.skip(f"real data not found: {SHARED_DATA} (set CXR_SHARED_DATA)")
    root = tmp_path_factory.mktemp("gate_view_films")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir()
        children = sorted(f for f in (SITE / cls).iterdir() if f.suffix in (".jpeg", ".png"))[:2]
        for f in children:
            shutil.copy(f, root / cls / f.name)
        save_png(root / cls / f"crop60_{children[0].stem}.png", _crop(load_cxr(children[0])[0], 0.6))
    adult = sorted(ADULTS.glob("*.png"))[0]
    shutil.copy(adult, root / "NORMAL" / f"adult_{adult.name}")
    return root


def _gate_network(lung_field) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny gate network whose feature statistics are those of children's lung-field views (films the tests do
    not read: the site sample's later files)."""
    torch.manual_seed(0)
    net = scope_net("tiny").eval()
    fit = [f for cls in ("NORMAL", "PNEUMONIA") for f in sorted((SITE / cls).iterdir())[10:16]]
    pre = Compose(classifier_preprocessing(["image"], SIZE, lung_field=lung_field))
    x = torch.stack([pre({"image": str(f)})["image"].as_tensor() for f in fit])
    with torch.no_grad():
        mean, precision = fit_feature_stats(net.features(x))
    return ScopeGateModule(net, mean, precision), mean, precision


@pytest.fixture(scope="module")
def models(tmp_path_factory, films) -> Path:
    """A models folder: the shipped ensemble with a gate that reads its own lung-field view at 160 px;
    its distance threshold splits the films' distances (the image check is decisive), its lung-field rule refuses
    a film whose lungs run off more than 11 % of its perimeter (a tight crop)."""
    root = tmp_path_factory.mktemp("gate_view_models")
    for name in ("model.pt", "calibration.json"):
        os.symlink(MODELS / name, root / name)
    shutil.copy(MODELS / "lung_field.ts", root / "lung_field.ts")
    lung = load_lung_field(root / "lung_field.ts")
    module, _, _ = _gate_network(lung)
    info = {"name": "cxr_scope_gate", "image_size": SIZE, "thresholds": {"probability": 1.0, "distance": 1e9},
            "lung_field_sha256": file_sha256(root / "lung_field.ts")}
    wide = save_scope_gate(module, info, root / "wide" / "scope_gate.ts")
    gate = load_scope_gate(wide)
    children = sorted(f for f in films.rglob("*") if f.is_file() and not f.name.startswith(("crop", "adult")))
    d = sorted(check_scope(gate, *load_cxr(f), SIZE, lung).distance for f in children)
    gap = int(np.argmax(np.diff(d)))  # the threshold in the widest gap: some children pass, some do not
    info["thresholds"]["distance"] = float(d[gap] + d[gap + 1]) / 2
    save_scope_gate(module, info, wide)
    shutil.copy(root / "lung_field.ts", wide.parent / "lung_field.ts")
    gate_with_pass_region(wide, root / "scope_gate.ts", 0.12, 0.11, "test: tight crops refused")
    return root


def _expected(gate_file: Path, files) -> dict[str, tuple[int, str]]:
    """check_scope (the deploy app's decision) of each file, by name."""
    gate = load_scope_gate(gate_file)
    lung = load_lung_field(gate_file.parent / "lung_field.ts")
    out = {}
    for f in files:
        d = check_scope(gate, *load_cxr(f), SIZE, lung)
        out[Path(f).name] = (int(d.in_scope), d.reason)
    return out


def _infer(out: Path, data: Path, configs=("inference.json",), **overrides) -> dict[str, dict]:
    run_workflow(BUNDLE, list(configs), "infer", dataset_dir=str(data), output_dir=str(out), gradcam_layer=None,
                 **overrides)
    return {Path(r["file"]).name: r for r in json.loads((out / "predictions.json").read_text())}


@needs_data
def test_bundle_inference_decides_on_the_gates_own_view(films, models, tmp_path) -> None:
    """Every row's in_scope/scope_reason is check_scope's for that film; the crops are refused as cut off while
    their whole films pass the lung-field rule; the image check splits the children; probabilities are those of
    the run with the shipped gate (the classifier reads the same batch). On the old writer (the gate given the
    whole-film network input) no crop is refused by the lung-field rule and the image-check decisions differ."""
    gate_file = models / "scope_gate.ts"
    got = _infer(tmp_path / "own", films, models_dir=str(models), scope_gate_file=str(gate_file))
    files = sorted(f for f in films.rglob("*") if f.is_file())
    want = _expected(gate_file, files)
    assert set(got) == set(want) and len(got) == 7
    crops = [n for n in got if n.startswith("crop60_")]
    assert len(crops) == 2
    for n in crops:
        assert got[n]["in_scope"] == 0 and "cut off" in got[n]["scope_reason"], got[n]
    for name, (in_scope, reason) in want.items():
        assert (got[name]["in_scope"], got[name]["scope_reason"]) == (in_scope, reason), name
        assert got[name]["label"] == "OUT_OF_SCOPE" if not in_scope else got[name]["label"] in ("NORMAL", "PNEUMONIA")
    children = [n for n in got if not n.startswith(("crop60_", "adult_"))]
    assert not any("lung field" in got[n]["scope_reason"] for n in children)
    image_check = [got[n]["in_scope"] for n in children]
    assert 0 < sum(image_check) < len(children), image_check  # the image check is decisive on these films
    # evaluation (evaluate.json over inference.json): the same decisions, and metrics on the in-scope films only
    ev = _infer(tmp_path / "eval", films, ("inference.json", "evaluate.json"), models_dir=str(models),
                scope_gate_file=str(gate_file), n_boot=0, gradcam_max=0)
    assert {n: (r["in_scope"], r["scope_reason"]) for n, r in ev.items()} == want
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_out_of_scope"] == sum(1 for s, _ in want.values() if not s) and metrics["n"] == 7 - metrics[
        "n_out_of_scope"]
    shipped = _infer(tmp_path / "shipped", films)
    assert set(shipped) == set(got)
    for n in got:
        assert got[n]["probability"] == pytest.approx(shipped[n]["probability"], rel=1e-5, abs=1e-7)


@needs_data
def test_commissioning_collects_the_same_gate_decisions_as_inference(films, models) -> None:
    """The commissioning config's evaluator (its collector) gets check_scope's decision for every film."""
    gate_file = models / "scope_gate.ts"
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "commission.json")])
    parser.update({"bundle_root": str(BUNDLE), "models_dir": str(models), "scope_gate_file": str(gate_file),
                   "dataset_dir": str(films), "output_dir": None})
    parser.get_parsed_content("evaluator").run()
    collector = parser.get_parsed_content("collector")
    want = _expected(gate_file, collector.files)
    assert len(collector.files) == 7
    assert sum(1 for r in collector.reasons if "cut off" in r) == 2
    assert [(int(s), r) for s, r in zip(collector.in_scope, collector.reasons)] == [want[Path(f).name]
                                                                                   for f in collector.files]
    check = parser.get_parsed_content("scope_check")
    assert isinstance(check, ScopeCheck) and not check.reads_batch


@needs_data
def test_a_gate_reading_the_classifier_input_keeps_its_path(films, models, tmp_path) -> None:
    """A whole-film gate (no lung field) and a lung-view gate behind a one-view classifier of the same view check
    the batch as it is; the latter's decisions are check_scope's. Behind a two-view classifier the lung-view gate
    reads its own view. A bare gate that names a lung field is refused by the writer and the collector (it would
    decide on the classifier's input)."""
    files = sorted(str(f) for f in films.rglob("*") if f.is_file())
    module, _, _ = _gate_network(None)
    plain = save_scope_gate(module, {"name": "cxr_scope_gate", "image_size": SIZE,
                                     "thresholds": {"probability": 1.0, "distance": 1e9}}, tmp_path / "scope_gate.ts")
    shipped = load_scope_check(plain, SIZE, None)
    assert shipped.reads_batch and shipped.lung_field is None
    whole = Compose(classifier_preprocessing(["image"], SIZE))
    items = [whole({"image": f})["image"] for f in files]
    x, metas = torch.stack([i.as_tensor() for i in items]), [i.meta for i in items]
    for a, b in zip(shipped.check(x, metas), shipped.gate.check(x, metas)):
        assert (a.in_scope, a.reason) == (b.in_scope, b.reason)
        assert (a.probability, a.distance) == pytest.approx((b.probability, b.distance), rel=1e-5)

    lung_file = models / "lung_field.ts"
    same = load_scope_check(models / "scope_gate.ts", SIZE, lung_file)
    assert same.reads_batch
    assert not load_scope_check(models / "scope_gate.ts", SIZE, lung_file, classifier_views=("whole", "lung_field")
                                ).reads_batch  # a two-view input is never the gate's view
    view = Compose(classifier_preprocessing(["image"], SIZE, lung_field=str(lung_file)))
    items = [view({"image": f})["image"] for f in files]
    got = same.check(torch.stack([i.as_tensor() for i in items]), [i.meta for i in items])
    want = [check_scope(same.gate, *load_cxr(f), SIZE, same.lung_field) for f in files]
    assert [(g.in_scope, g.reason.split("(")[0]) for g in got] == [(w.in_scope, w.reason.split("(")[0]) for w in want]
    for g, w in zip(got, want):
        assert g.distance == pytest.approx(w.distance, rel=1e-5) and set(g.lung_field) == set(w.lung_field)
        for k, v in w.lung_field.items():
            assert g.lung_field[k] == (v if isinstance(v, (bool, str)) else pytest.approx(v, rel=1e-5, abs=1e-7)), k

    bare = load_scope_gate(models / "scope_gate.ts")
    with pytest.raises(ValueError, match="own lung-field view"):
        ClassificationWriter(models / "out", scope_gate=bare)
    with pytest.raises(ValueError, match="own lung-field view"):
        CommissioningCollector(scope_check=bare.check)
    with pytest.raises(ValueError, match="filename_or_obj"):
        load_scope_check(models / "scope_gate.ts", SIZE, None).check(x[:1], [{}])
