"""Command line: ``python -m cxr_monai demo [--input PATH] [--output_dir DIR]``, ``deploy_models``, ``phantom``, and
``monitor --site_dir SITE --results PATH... --output_dir OUT`` (the drift monitor,
:func:`cxr_monai.commissioning.monitor.main`)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from monai.bundle import ConfigWorkflow
from cxr_monai.data import list_images
import shutil
from cxr_monai.data.phantom import write_phantom_dicom
from cxr_monai.io import CXRInputError, is_chest, load_cxr, save_png
from cxr_monai.export import export_deploy_models
from cxr_monai.commissioning.monitor import main as monitor_main

__all__ = ["BUNDLES_DIR", "demo", "deploy_models", "main", "phantom", "run_bundle", "run_workflow"]

logger = logging.getLogger("cxr_monai")
BUNDLES_DIR = Path("bundles")
"""Default folder of the project's bundles, relative to the working directory (the repository root, where
``make`` runs); commands take ``bundles_dir`` to point elsewhere. The package never locates bundles from its
own source path (a non-editable install has no ``bundles/`` beside it)."""


def run_workflow(bundle_dir: str | Path, config: str | list[str], workflow_type: str = "infer", **overrides):
    """Run a bundle config (``<bundle_dir>/configs/<config>``, or a list merged in order) through MONAI's
    ConfigWorkflow, as ``python -m monai.bundle run`` would; ``overrides`` set config ids (``bundle_root``
    defaults to ``bundle_dir``). Returns the workflow."""

    root = Path(bundle_dir)
    files = [str(root / "configs" / c) for c in ([config] if isinstance(config, str) else config)]
    overrides.setdefault("bundle_root", str(root))
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0],
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), workflow_type=workflow_type, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def run_bundle(name: str, config: str | list[str], workflow_type: str = "infer", bundles_dir: str | Path = BUNDLES_DIR,
               **overrides) -> None:
    """Run one of the project's bundles (``<bundles_dir>/<name>``) through :func:`run_workflow`."""
    run_workflow(Path(bundles_dir) / name, config, workflow_type, **overrides)


EXAMPLES_DIR = Path("examples") / "kermany"
"""The two real paediatric films shipped with the repository (one NORMAL, one PNEUMONIA; CC BY 4.0, see
``examples/kermany/README.md``), relative to the working directory, like :data:`BUNDLES_DIR`."""


def _inputs(input: str | None, output_dir: Path, examples_dir: Path = EXAMPLES_DIR) -> list[Path]:

    if input is None:


        films = sorted(Path(examples_dir).glob("*.dcm"))
        if len(films) < 2:
            raise SystemExit(f"{Path(examples_dir).resolve()}: the example films are missing; pass --input")
        (output_dir / "input").mkdir(parents=True, exist_ok=True)
        copies = [Path(shutil.copy(f, output_dir / "input" / f.name)) for f in films]
        path = write_phantom_dicom(output_dir / "input" / "phantom_cxr.dcm", size=512, seed=7, consolidation=True)
        logger.info("no --input given: the example films %s and a phantom %s", [f.name for f in films], path)
        return [*copies, Path(path)]
    return list_images(input)


def demo(input: str | None = None, output_dir: str = "demo_output", sr_max_side: int = 640,
         bundles_dir: str | Path = BUNDLES_DIR, examples_dir: str | Path = EXAMPLES_DIR) -> dict:
    """Run the end-to-end pipeline on a DICOM/PNG/JPEG/NIfTI file or folder (default: the two real example films
    of ``examples_dir``, one NORMAL and one PNEUMONIA, and the procedural phantom, which is not a child's film).

    Steps: load and validate every input (non-chest or unreadable files are reported and skipped) ->
    4x super-resolution (when the SR bundle ships weights) -> pneumonia classification with Grad-CAM.
    Images whose longer side exceeds ``sr_max_side`` pixels are not super-resolved (they are not low resolution,
    and a 4x output of a full-size radiograph is large and slow on a CPU); the summary says so.
    Writes into ``output_dir``: ``summary.json``, ``classification/`` (predictions.csv/json, Grad-CAM PNGs),
    ``sr/`` (super-resolved images) when available.
    """

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"inputs": [], "skipped": [], "steps": []}
    accepted = []
    for path in _inputs(input, out, Path(examples_dir)):
        try:
            image, meta = load_cxr(path)
        except CXRInputError as err:
            summary["skipped"].append({"file": str(path), "reason": str(err)})
            logger.warning("skipping %s", err)
            continue
        if not is_chest(meta):
            summary["skipped"].append({"file": str(path), "reason": f"body part {meta.get('body_part')!r} is not chest"})
            logger.warning("skipping %s: body part %s", path, meta.get("body_part"))
            continue
        accepted.append(str(path))
        preview = out / "preview" / f"{Path(path).name.split('.')[0]}.png"
        preview.parent.mkdir(parents=True, exist_ok=True)
        save_png(preview, image, bits=8)
        summary["inputs"].append({"file": str(path), "shape": list(image.shape[1:]), "modality": meta.get("modality"),
                                  "photometric": meta.get("photometric"), "spacing": meta.get("spacing")})
    if not accepted:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        raise SystemExit(f"no usable chest radiograph in {input}; see {out / 'summary.json'}")

    bundles_dir = Path(bundles_dir)
    if not (bundles_dir / "cxr_pneumonia_classifier").is_dir():
        raise SystemExit(f"{bundles_dir.resolve()}: no cxr_pneumonia_classifier bundle here; pass --bundles_dir")
    sr_root = bundles_dir / "cxr_sr_csaegan"
    small = [i["file"] for i in summary["inputs"] if max(i["shape"]) <= sr_max_side]
    if small and (sr_root / "models" / "model.pt").is_file() and (sr_root / "configs" / "inference.json").is_file():
        run_bundle("cxr_sr_csaegan", "inference.json", bundles_dir=bundles_dir, datalist=[{"image": p} for p in small],
                   output_dir=str(out / "sr"))
        summary["steps"].append({"step": "super_resolution_x4", "output_dir": str(out / "sr"), "files": small,
                                 "not_super_resolved": [p for p in accepted if p not in small],
                                 "sr_max_side": sr_max_side})

    cls_root = bundles_dir / "cxr_pneumonia_classifier"
    if (cls_root / "models" / "model.pt").is_file():
        run_bundle("cxr_pneumonia_classifier", "inference.json", bundles_dir=bundles_dir, datalist=[{"image": p} for p in accepted],
                   output_dir=str(out / "classification"))
        preds = json.loads((out / "classification" / "predictions.json").read_text())
        summary["steps"].append({"step": "pneumonia_classification", "output_dir": str(out / "classification"),
                                 "predictions": preds})
    else:
        summary["steps"].append({"step": "pneumonia_classification", "skipped": "no trained weights in the bundle"})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("demo finished: %s", out / "summary.json")
    return summary


def deploy_models(bundles_dir: str = str(BUNDLES_DIR), out_dir: str = ".deploy_models",
                  site_dir: str | None = None) -> None:
    """Export every registered deploy model (:data:`cxr_monai.export.DEPLOY_MODELS`: the classifier, the SR
    generator, the scope gate and the lung-field network) from the bundles in ``bundles_dir`` into the MONAI Deploy
    named-model layout (``OUT/<name>/model.ts``, metadata and calibration embedded). ``site_dir``: a site's
    commissioning folder (``configs/commission.json --output_dir``); its calibration replaces the default one in
    the classifier (the weights' hash must match)."""

    for name, path in export_deploy_models(bundles_dir, out_dir, site_dir=site_dir).items():
        print(f"{name}: {path}")
    print(f"calibration: {'site ' + str(site_dir) if site_dir else 'default'}")


def phantom(out_dir: str = "demo_output/input", size: int = 512, seed: int = 7) -> None:
    """Write the procedural phantom chest radiograph (CR, 12-bit, fake patient) as ``OUT/phantom_cxr.dcm``."""

    print(write_phantom_dicom(Path(out_dir) / "phantom_cxr.dcm", size=size, seed=seed, consolidation=True))


def main() -> None:
    import fire

    logging.basicConfig(level=os.environ.get("CXR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    if sys.argv[1:2] == ["monitor"]:  # several --results paths: argparse, not fire

        raise SystemExit(monitor_main(sys.argv[2:]))

    def _demo(input: str | None = None, output_dir: str = "demo_output", sr_max_side: int = 640,
              bundles_dir: str = "bundles", examples_dir: str = str(EXAMPLES_DIR)) -> None:
        demo(input, output_dir, sr_max_side, bundles_dir, examples_dir)

    _demo.__doc__ = demo.__doc__
    fire.Fire({"demo": _demo, "deploy_models": deploy_models, "phantom": phantom})


if __name__ == "__main__":
    main()
