"""``python deploy/cxr_enhance_classify -i IN -o OUT -m MODELS [--sr-max-side N] [--strict] [--device D]``

The SDK's own options (``-i/-o/-m/-l``, or ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``/``HOLOSCAN_MODEL_PATH``)
select the folders; this app's options may also come from ``CXR_SR_MAX_SIDE``, ``CXR_STRICT=1``, ``CXR_DEVICE``.

Exit status: 0 when every input was processed or skipped with a reason (see ``results.json``); 1 with
``--strict`` when any image failed (files that are not DICOM at all are skipped, not failed); 2 when the app cannot run (no models, no input folder, bad arguments).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from launcher import ensure_stack_size, split_app_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    ensure_stack_size(argv)  # re-executes with a 32 MB stack when the limit is lower (holoscan's minimum)
    try:
        opts, sdk_argv = split_app_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from app import AppSetupError, CXREnhanceClassifyApp

    try:
        app = CXREnhanceClassifyApp(sdk_argv, sr_max_side=opts.sr_max_side, device=opts.device)
        app.run()
    except AppSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = app.summary
    if summary is None:
        print("error: the app did not write results", file=sys.stderr)
        return 2
    counts = summary["counts"]
    print(f"cxr_enhance_classify: {counts['ok']} processed, {counts['out_of_scope']} out of scope (not assessed), "
          f"{counts['skipped']} skipped, {counts['failed']} failed, {counts['series_not_selected']} series not selected, "
          f"{counts['files_rejected']} files rejected; "
          f"results in {summary['run']['output']}/results.json")
    return 1 if opts.strict and counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
