"""Start Orthanc with the AI router plugin (``make pacs PACS_DIR=dir HTTP_PORT=p DICOM_PORT=q``).

    python3 deploy/pacs/run_pacs.py --dir PACS_DIR --http-port 8042 --dicom-port 4242 [--stable-age 5]
        [--runner auto|map|venv] [--timeout 600] [--cpus N]

Writes ``PACS_DIR/orthanc.json`` (Orthanc on 127.0.0.1 only, AE title ORTHANC, storage and index under
``PACS_DIR/db``, DICOMweb at ``/dicom-web/``, the Python plugin with ``deploy/pacs/ai_router.py``, every transfer
syntax accepted) and replaces itself with Orthanc (``exec``: the PID written to ``PACS_DIR/orthanc.pid`` and the
process that ``make pacs`` or a test started is Orthanc's). Stop it with ``kill $(cat PACS_DIR/orthanc.pid)``.
The plugin's log is ``PACS_DIR/ai_router.log``; runs go under ``PACS_DIR/work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"


def orthanc_config(pacs_dir: Path, http_port: int, dicom_port: int, stable_age: int, runner: str, timeout: int,
                   cpus: float | None, image: str, models: Path) -> dict:
    work = pacs_dir / "work"
    return {
        "Name": "cxr_monai PACS",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        # HTTP answers loopback clients only; Orthanc 1.10 has no bind-address option, so the DICOM port listens on
        # every interface: firewall it, or register senders in DicomModalities and set DicomAlwaysAllowStore false.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "StorageDirectory": str(pacs_dir / "db"),
        "IndexDirectory": str(pacs_dir / "db"),
        "StableAge": stable_age,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": False,
        "Plugins": [DICOMWEB, PYTHON_PLUGIN],
        "PythonScript": str(HERE / "ai_router.py"),
        "PythonVerbose": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "CxrAiRouter": {
            "WorkDir": str(work),
            "StateFile": str(pacs_dir / "ai_router_state.json"),
            "LogFile": str(pacs_dir / "ai_router.log"),
            "Runner": runner,
            "MapImage": image,
            "RunMap": str(ROOT / "deploy" / "packaging" / "run_map.py"),
            "HostPython": sys.executable,
            "VenvPython": str(ROOT / ".venv-deploy" / "bin" / "python"),
            "AppDir": str(ROOT / "deploy" / "cxr_enhance_classify"),
            "ModelsDir": str(models),
            "TimeoutSeconds": timeout,
            "Cpus": cpus,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--http-port", type=int, default=8042)
    ap.add_argument("--dicom-port", type=int, default=4242)
    ap.add_argument("--stable-age", type=int, default=5, help="seconds without a new instance before a study runs")
    ap.add_argument("--runner", default="auto", choices=["auto", "map", "venv"])
    ap.add_argument("--timeout", type=int, default=600, help="time limit of one study's run (s)")
    ap.add_argument("--cpus", type=float, default=None)
    ap.add_argument("--image", default="localhost/cxr-enhance-classify:0.1.0")
    ap.add_argument("--models", default=str(ROOT / ".deploy_models"))
    args = ap.parse_args(argv)

    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    missing = [p for p in (orthanc, DICOMWEB, PYTHON_PLUGIN) if not os.path.exists(p)]
    if missing:
        print(f"error: missing {missing}: install orthanc orthanc-dicomweb orthanc-python (make pacs-tools)",
              file=sys.stderr)
        return 1
    pacs_dir = Path(args.dir).resolve()
    (pacs_dir / "db").mkdir(parents=True, exist_ok=True)
    cfg = orthanc_config(pacs_dir, args.http_port, args.dicom_port, args.stable_age, args.runner, args.timeout,
                         args.cpus, args.image, Path(args.models).resolve())
    cfg_file = pacs_dir / "orthanc.json"
    cfg_file.write_text(json.dumps(cfg, indent=2))
    (pacs_dir / "orthanc.pid").write_text(f"{os.getpid()}\n")
    print(f"Orthanc on http://127.0.0.1:{args.http_port}/ (DICOM port {args.dicom_port}, AE ORTHANC), "
          f"config {cfg_file}, pid {os.getpid()}", flush=True)
    os.execv(orthanc, [orthanc, str(cfg_file)])


if __name__ == "__main__":
    sys.exit(main())
