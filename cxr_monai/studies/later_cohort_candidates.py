"""Compare classifier candidates on the later cohort's site sample, by the rule written before training.

The rule and the candidates are in ``bundles/cxr_pneumonia_classifier/docs/recipes/later_cohort_plan.md``
(committed before any candidate was trained). Each candidate is a models folder as ``ensemble.json`` writes it
(``model.pt`` = a ``ClassifierEnsemble`` state dict, ``calibration.json`` with its threshold and members).

Measured here, inference only: (a) AUC on the 101-image site sample (no parameter fitted on it; but these figures
choose the candidate, so after the five rounds they are selection-biased, as is the validation AUC), with a paired
stratified bootstrap (2,000 resamples) of the difference to the baseline, and specificity / sensitivity at the
candidate's own threshold; (c) validation AUC on the 785-image validation split. Read from files written by the
bundle's own commands: (b) ``commission.json``'s cross-validated estimates (``site_calibration.json``) and (d) the
stress suite's mean worst balanced accuracy (``stress.json`` + ``stress.json``'s report).

    .venv/bin/python -m cxr_monai.studies.later_cohort_candidates --baseline B \\
        --candidate B=bundles/cxr_pneumonia_classifier/models,runs/commission_B,docs/recipes/stress_ensemble_mild_x3.json \\
        --candidate F=runs/ens_framing,runs/commission_F,runs/ens_framing/stress/stress.json ... \\
        --out bundles/cxr_pneumonia_classifier/docs/recipes/later_cohort_candidates.json

``--round 2`` applies round 2's rule (adds the shipped-default accuracy on the in-scope site images, read from
``site_calibration.json``'s ``default_on_sample``).

Helper: ``--extract_member MODELS_DIR INDEX OUT_DIR`` writes one member of a shipped ensemble as a member folder
(``model.pt`` + ``calibration.json``) that ``ensemble.json --member_dirs`` accepts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from cxr_monai.data import class_folder_datalist, training_split
from cxr_monai.metrics.classification import roc_auc
from cxr_monai.studies.classifier_recipes import score
from cxr_monai.studies.framing import load_ensemble
from cxr_monai.studies.site_shift_probe import _paired_auc_diff
from cxr_monai.transforms import classifier_preprocessing
from cxr_monai.utils import read_json

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))
BUNDLE = ROOT / "bundles" / "cxr_pneumonia_classifier"

# the rules of later_cohort_plan.md, one per round, as written before that round's training
RULES = {
    1: {"min_site_auc_gain": 0.010, "min_validation_auc": 0.995, "stress_margin": 0.020, "tie": 0.005,
        "preference": ["F", "M", "G"], "min_default_accuracy": None},
    2: {"min_site_auc_gain": 0.0, "min_validation_auc": 0.995, "stress_margin": 0.020, "tie": 0.005,
        "preference": ["H"], "min_default_accuracy": 0.90},
}
RULES[3] = {**RULES[2], "preference": ["R"]}  # round 2's rule, the candidate trained at 224 px
RULES[4] = {**RULES[2], "preference": ["L"]}  # round 2's rule, M's members behind a 3x3 low-pass input filter
RULES[5] = {**RULES[2], "preference": ["E", "N"]}  # round 2's rule; framing members trained 24 epochs (E), in M (N)


def load_candidate(models_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    return load_ensemble(models_dir)


def extract_member(models_dir: str | Path, index: int, out_dir: str | Path) -> Path:
    """One member of a shipped ensemble as a member folder: its network weights and its temperature/bias."""

    cal = read_json(Path(models_dir) / "calibration.json")
    state = torch.load(Path(models_dir) / "model.pt", map_location="cpu", weights_only=True)
    prefix = f"members.{int(index)}."
    member = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not member:
        raise ValueError(f"{models_dir}: no member {index} in the ensemble state dict")
    m = cal["members"][int(index)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(member, out / "model.pt")
    (out / "calibration.json").write_text(json.dumps({
        "temperature": m["temperature"], "bias": m["bias"], "validation": {"auc": m["validation_auc"]},
        "extracted_from": str(models_dir), "member_index": int(index), "member_dir": m.get("dir")}, indent=2))
    return out


def _probs(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([torch.softmax(net(x[i:i + 64]), 1)[:, 1].numpy() for i in range(0, len(x), 64)])


def _inputs(items: list[dict], image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    pre = Compose(classifier_preprocessing(["image"], image_size))
    x = torch.stack([torch.as_tensor(pre({"image": it["image"]})["image"]).float() for it in items])
    return x, np.asarray([int(it["label"]) for it in items])


def _paired_diff(p0: np.ndarray, p1: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """The AUC difference p1 - p0 with the site-shift probe's paired stratified bootstrap interval."""

    return {"estimate": float(roc_auc(p1, y) - roc_auc(p0, y)), **_paired_auc_diff(p0, p1, y, n_boot, seed)}


def _estimates(block: dict) -> dict:
    out = {}
    for k in ("accuracy", "specificity", "sensitivity", "ece", "auc"):
        v = block.get(k)
        out[k] = float(v["estimate"]) if isinstance(v, dict) else (float(v) if v is not None else None)
    return out


def _commissioned(path: Path) -> tuple[dict, dict]:
    """``commission.json``'s cross-validated estimates and its shipped-default metrics on the in-scope sample."""

    site = read_json(path / "site_calibration.json")
    return _estimates(site.get("expected") or site), _estimates(site.get("default_on_sample") or {})


def _stress(path: Path) -> float | None:
    """The stress criterion, or None when that candidate's suite was not run (its check then fails)."""

    if not path.is_file():
        return None
    return float(score(json.loads(path.read_text()))["mean_worst_balanced_accuracy"])


def decide(rows: dict[str, dict], baseline: str, rule: dict | None = None) -> dict:
    """Apply a round's rule (default: round 1); return the pass/fail of each check per candidate and the choice.

    A candidate without a measure (stress suite not run, no default metrics) fails that check."""
    rule = RULES[1] if rule is None else rule
    b = rows[baseline]
    verdicts = {}
    for name, r in rows.items():
        if name == baseline:
            continue
        stress, b_stress = r["stress_mean_worst_balanced_accuracy"], b["stress_mean_worst_balanced_accuracy"]
        checks = {
            "site_auc_gain": r["site"]["auc"] - b["site"]["auc"] >= rule["min_site_auc_gain"],
            "commissioned_accuracy": r["commissioned"]["accuracy"] >= b["commissioned"]["accuracy"],
            "validation_auc": r["validation"]["auc"] >= rule["min_validation_auc"],
            "stress": stress is not None and stress >= b_stress - rule["stress_margin"],
        }
        if rule.get("min_default_accuracy") is not None:
            acc = (r.get("default_on_site") or {}).get("accuracy")
            checks["default_accuracy"] = acc is not None and acc >= rule["min_default_accuracy"]
        verdicts[name] = {"checks": checks, "passes": all(checks.values())}
    passing = [n for n, v in verdicts.items() if v["passes"]]
    choice = baseline
    if passing:
        pref = list(rule["preference"])
        best = max(rows[n]["site"]["auc"] for n in passing)
        near = [n for n in passing if rows[n]["site"]["auc"] >= best - rule["tie"]]
        choice = sorted(near, key=lambda n: pref.index(n) if n in pref else len(pref))[0]
    return {"verdicts": verdicts, "choice": choice}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", action="append", default=[],
                    help="NAME=MODELS_DIR,COMMISSION_DIR,STRESS_JSON (repeat)")
    ap.add_argument("--baseline", default="B")
    ap.add_argument("--round", type=int, default=1, choices=sorted(RULES), help="which round's rule to apply")
    ap.add_argument("--out", default=str(BUNDLE / "docs" / "recipes" / "later_cohort_candidates.json"))
    ap.add_argument("--extract_member", nargs=3, metavar=("MODELS_DIR", "INDEX", "OUT_DIR"))
    args = ap.parse_args(argv)
    if args.extract_member:
        print(extract_member(args.extract_member[0], int(args.extract_member[1]), args.extract_member[2]))
        return 0

    inputs: dict[int, tuple] = {}  # per input size (each candidate's own, from its calibration.json)
    rows, site_p = {}, {}
    for spec in args.candidate:
        name, paths = spec.split("=", 1)
        models_dir, commission_dir, stress_json = paths.split(",")
        net, cal = load_candidate(models_dir)
        size = int(cal.get("image_size", 160))
        if size not in inputs:
            inputs[size] = (*_inputs(class_folder_datalist(SHARED / "kermany_site_sample"), size),
                            *_inputs(training_split(SHARED / "kermany224" / "train", 0.15, 0)[1], size))
        site_x, site_y, val_x, val_y = inputs[size]
        thr = float(cal["threshold"])
        ps, pv = _probs(net, site_x), _probs(net, val_x)
        site_p[name] = ps
        commissioned, default_on_site = _commissioned(Path(commission_dir))
        rows[name] = {
            "models_dir": models_dir, "members": [m.get("dir") for m in cal["members"]], "threshold": thr,
            "image_size": size,
            "site": {"n": len(site_y), "auc": roc_auc(ps, site_y),
                     "specificity": float((ps[site_y == 0] < thr).mean()),
                     "sensitivity": float((ps[site_y == 1] >= thr).mean())},
            "validation": {"n": len(val_y), "auc": roc_auc(pv, val_y),
                           "specificity": float((pv[val_y == 0] < thr).mean()),
                           "sensitivity": float((pv[val_y == 1] >= thr).mean())},
            "commissioned": commissioned,
            "default_on_site": default_on_site,
            "commission_dir": commission_dir,
            "stress_mean_worst_balanced_accuracy": _stress(Path(stress_json)),
            "stress_file": stress_json,
        }
    for name in rows:
        if name != args.baseline:
            rows[name]["site"]["auc_minus_baseline_ci95"] = _paired_diff(site_p[args.baseline], site_p[name], site_y)
    report = {"plan": "bundles/cxr_pneumonia_classifier/docs/recipes/later_cohort_plan.md",
              "round": args.round, "rule": RULES[args.round],
              "baseline": args.baseline, "candidates": rows, **decide(rows, args.baseline, RULES[args.round])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for name, r in rows.items():
        c = r["commissioned"]
        print(f"{name}: site AUC {r['site']['auc']:.4f} spec {r['site']['specificity']:.3f} sens "
              f"{r['site']['sensitivity']:.3f} | val AUC {r['validation']['auc']:.4f} | commissioned acc "
              f"{c['accuracy']:.3f} spec {c['specificity']:.3f} sens {c['sensitivity']:.3f} | default acc "
              f"{r['default_on_site'].get('accuracy')} | stress "
              f"{r['stress_mean_worst_balanced_accuracy']}")
    print("choice:", report["choice"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
