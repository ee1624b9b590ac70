"""Compare classifier recipes on the stress suite (acquisition shifts on the patient-aware validation split).

Each recipe is scored from the ``stress.json`` its stress-suite run wrote (``configs/stress.json``), at the
threshold that recipe ships (``shipped``, or another named threshold of the run: ``NAME=PATH#equal_prior``). The selection criterion was fixed before any run:

    primary:    the mean over the shift families of the worst-strength balanced accuracy
                ((sensitivity + specificity) / 2) at the shipped threshold;
    tie-break:  the worst-case AUC over all shifted conditions.

Clean validation AUC is reported but not used (it is saturated near 0.99 for every recipe).

Usage::

    python -m cxr_monai.studies.classifier_recipes --run "shipped 0.2.x (lite 224, mild, best epoch)=bundles/.../stress.json" \\
        --run "slim 160, mild, EMA=runs/cls_mild_s0/stress/stress.json" --out bundles/cxr_pneumonia_classifier/docs/recipes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def balanced_accuracy(at: dict) -> float:
    return 0.5 * (float(at["recall"]) + float(at["specificity"]))


def score(stress: dict, threshold_name: str = "shipped") -> dict:
    """Per-shift worst balanced accuracy / specificity / recall at one named threshold, and the summary."""
    per_shift = {}
    for name, shift in stress["shifts"].items():
        levels = [lv for lv in shift["levels"] if not lv["clean"]]
        bal = [balanced_accuracy(lv["at"][threshold_name]) for lv in levels]
        k = min(range(len(bal)), key=bal.__getitem__)
        per_shift[name] = {
            "worst_balanced_accuracy": bal[k],
            "at_strength": levels[k]["value"],
            "worst_specificity": min(float(lv["at"][threshold_name]["specificity"]) for lv in levels),
            "worst_recall": min(float(lv["at"][threshold_name]["recall"]) for lv in levels),
            "worst_auc": min(float(lv["auc"]) for lv in levels),
        }
    clean = stress["clean"]["at"][threshold_name]
    return {
        "threshold": float(stress["thresholds"][threshold_name]),
        "clean_auc": float(stress["clean"]["auc"]),
        "clean_ece": float(stress["clean"]["ece"]),
        "clean_sensitivity": float(clean["recall"]),
        "clean_specificity": float(clean["specificity"]),
        "clean_balanced_accuracy": balanced_accuracy(clean),
        "mean_worst_balanced_accuracy": sum(s["worst_balanced_accuracy"] for s in per_shift.values()) / len(per_shift),
        "worst_auc": min(s["worst_auc"] for s in per_shift.values()),
        "worst_specificity": min(s["worst_specificity"] for s in per_shift.values()),
        "worst_recall": min(s["worst_recall"] for s in per_shift.values()),
        "n": int(stress["n"]),
        "per_shift": per_shift,
    }


def table(results: dict[str, dict]) -> str:
    head = ("| recipe | threshold | clean AUC | clean sens / spec | mean worst bal. acc. (primary) | worst AUC "
            "| worst spec | worst recall |\n|---|---|---|---|---|---|---|---|\n")
    rows = [f"| {name} | {r['threshold']:.3f} | {r['clean_auc']:.4f} | {r['clean_sensitivity']:.3f} / "
            f"{r['clean_specificity']:.3f} | **{r['mean_worst_balanced_accuracy']:.3f}** | {r['worst_auc']:.3f} | "
            f"{r['worst_specificity']:.3f} | {r['worst_recall']:.3f} |" for name, r in results.items()]
    shifts = list(next(iter(results.values()))["per_shift"])
    per = ("\n\nWorst-strength balanced accuracy per shift (at the recipe's shipped threshold):\n\n| shift | "
           + " | ".join(results) + " |\n|---|" + "---|" * len(results) + "\n")
    per += "\n".join(f"| {s} | " + " | ".join(f"{r['per_shift'][s]['worst_balanced_accuracy']:.3f}"
                                            for r in results.values()) + " |" for s in shifts)
    return head + "\n".join(rows) + per + "\n"


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(next(iter(results.values()))["per_shift"])
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(14, 4.2), dpi=120)
    for i, (name, r) in enumerate(results.items()):
        vals = [r["per_shift"][s]["worst_balanced_accuracy"] for s in shifts]
        ax.bar(np.arange(len(shifts)) + (i - (len(results) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(shifts)), shifts, rotation=30, ha="right")
    ax.set(ylabel="worst balanced accuracy", ylim=(0.4, 1.0),
           title="Stress suite: worst-strength balanced accuracy per shift (validation split)")
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True,
                   help="NAME=path/to/stress.json, optionally #THRESHOLD_NAME to score another named threshold (repeat)")
    p.add_argument("--out", type=Path, required=True, help="folder for recipes.json, recipes.md, recipes.png")
    p.add_argument("--threshold_name", default="shipped")
    args = p.parse_args(argv)
    results = {}
    for spec in args.run:
        name, _, path = spec.rpartition("=")
        if not name:
            raise SystemExit(f"--run needs NAME=PATH, got {spec!r}")
        path, _, thr = path.partition("#")
        thr = thr or args.threshold_name
        results[name] = {**score(json.loads(Path(path).read_text()), thr), "stress_json": path, "threshold_name": thr}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipes.json").write_text(json.dumps(results, indent=1))
    (args.out / "recipes.md").write_text(table(results))
    plot(results, args.out / "recipes.png")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
