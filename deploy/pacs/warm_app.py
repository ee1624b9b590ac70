"""The warm app: one process that keeps the models loaded and runs the app on one folder per request.

    .venv-deploy/bin/python deploy/pacs/warm_app.py --models MODELS

or, inside the MAP image (the worker's ``map-warm`` runner: one long-lived hardened container that keeps the models
loaded), ``python3 warm_app.py --models /opt/holoscan/models`` with ``CXR_APP_DIR=/opt/holoscan/app``.

Started by a PACS worker (``worker.py --runner warm``) with pipes: it prints ``{"ready": true}`` once the models are
loaded, then for each line ``{"input": DIR, "output": DIR}`` on stdin runs the app (``deploy/cxr_enhance_classify``,
the same graph and operators as the MAP and ``make demo``; models cached in the process by the operators) and prints
``{"rc": 0}`` (or ``{"rc": 2, "error": "..."}``). The worker kills it past the time limit and starts a new one.
Everything the app logs goes to stderr; stdout carries only the answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

# the app beside this file, or CXR_APP_DIR: inside the MAP image (runner map-warm) /opt/holoscan/app
APP_DIR = Path(os.environ.get("CXR_APP_DIR") or Path(__file__).resolve().parents[1] / "cxr_enhance_classify")
sys.path.insert(0, str(APP_DIR))

from launcher import ensure_stack_size  # noqa: E402


def main() -> int:
    ensure_stack_size(sys.argv)  # holoscan's 32 MB stack (re-executes this process, pipes kept)
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    args = ap.parse_args()
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the app's prints go to stderr; the answers keep their own copy of stdout
    from app import AppSetupError, CXREnhanceClassifyApp

    def run(input_dir: str, output_dir: str) -> dict:
        try:
            app = CXREnhanceClassifyApp(["app", "-i", input_dir, "-o", output_dir, "-m", args.models])
            app.run()
        except AppSetupError as err:
            return {"rc": 2, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - reported to the worker, which retries
            traceback.print_exc()
            return {"rc": 1, "error": f"{type(err).__name__}: {err}"}
        return {"rc": 0} if app.summary is not None else {"rc": 2, "error": "the app did not write results"}

    # load the models now: one run on an empty folder composes the graph (the operators load lazily, so the first
    # study pays for the weights; a tiny warm-up study is the worker's job if it wants that too)
    from cxr_monai.export import CLASSIFIER_NAME, SCOPE_NAME, SR_NAME, find_model_file

    for name in (SR_NAME, CLASSIFIER_NAME, SCOPE_NAME):
        find_model_file(args.models, name)  # fail now, not on the first study
    _preload(args.models)
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        answers.write(json.dumps(run(req["input"], req["output"])) + "\n")
    return 0


def _preload(models: str) -> None:
    """Load every model into the operators' cache, as the app's operators would on their first image."""
    import operators as ops  # the app's module, as app.py imports it
    from cxr_monai.export import CLASSIFIER_NAME, LUNG_NAME, SCOPE_NAME, SR_NAME, find_model_file, load_deploy_model
    from cxr_monai.inference import select_device
    from cxr_monai.scope import load_scope_gate
    from cxr_monai.transforms import load_lung_field
    from cxr_monai.utils import configure_threads

    configure_threads()
    device = str(select_device(os.environ.get("CXR_DEVICE") or None))
    sr, cls, scope = (find_model_file(models, n) for n in (SR_NAME, CLASSIFIER_NAME, SCOPE_NAME))
    loaded = {}
    for op, f, load in (("ScopeGateOperator", scope, lambda: load_scope_gate(scope, device)),
                        ("SuperResolutionOperator", sr, lambda: load_deploy_model(sr, device, kind="super_resolution")),
                        ("PneumoniaClassifierOperator", cls, lambda: load_deploy_model(cls, device, kind="classifier"))):
        ops._MODEL_CACHE[(op, str(f), Path(f).stat().st_mtime_ns, device)] = loaded[op] = load()
    # one pass of each model on a small image: TorchScript optimises a graph on its first calls, which would
    # otherwise land on the first study (tens of seconds on two shared cores)
    import numpy as np

    from cxr_monai.inference import check_scope, classify, super_resolve

    image = np.random.default_rng(0).random((1, 128, 128), dtype=np.float32)
    (sr_model, sr_info), (cls_model, cls_info) = loaded["SuperResolutionOperator"], loaded["PneumoniaClassifierOperator"]
    lung_dir = Path(models) / LUNG_NAME  # the lung-field network the gate and the classifier may read through
    lung = load_lung_field(find_model_file(models, LUNG_NAME), device) if lung_dir.is_dir() else None
    check_scope(loaded["ScopeGateOperator"], image, None, image_size=int(cls_info.get("image_size", 160)),
                lung_field=lung)
    super_resolve(sr_model, image, sr_info, device)
    for _ in range(2):
        classify(cls_model, image, cls_info, device, lung_field=lung)
        classify(cls_model, image, cls_info, device, with_cam=True, lung_field=lung)


if __name__ == "__main__":
    sys.exit(main())
