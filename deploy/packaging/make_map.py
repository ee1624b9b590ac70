"""Package the deploy app as a MONAI Application Package (MAP) with ``monai-deploy package`` (holoscan-cli).

    python deploy/packaging/make_map.py --models .deploy_models --out map_build [--tag cxr-enhance-classify:0.1.0]

Offline, the packager's ``--source`` is this folder's ``holoscan-artifacts.json`` (top-level key = the
installed holoscan version). The packager writes the MAP manifests (``app.json``, ``pkg.json``) into a
temporary folder and then builds the image with Docker buildx; this script keeps the manifests
(``OUT/app.json``, ``OUT/pkg.json``) and its rendered Dockerfile (``OUT/Dockerfile.packager``), all from the
packager's own debug output, and, on a machine without a Docker engine with buildx, stops there and says so
(exit status 0); ``build_image.py`` then builds the image with podman. Any other packaging error exits 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "cxr_enhance_classify"
_BLOCK = re.compile(r"=+ Begin (app|pkg)\.json =+\n(.*?)\n=+ End \1\.json =+", re.S)
_DOCKERFILE = re.compile(r"=+ Begin Dockerfile =+\n(.*?)\n=+ End Dockerfile =+", re.S)


def docker_buildx_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        ok = subprocess.run([docker, "buildx", "version"], capture_output=True, timeout=30).returncode == 0
        return ok and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="named-model folder written by `make deploy-models`")
    ap.add_argument("--out", default="map_build", help="where app.json/pkg.json (and the build cache) go")
    ap.add_argument("--tag", default="cxr-enhance-classify:0.1.0")
    ap.add_argument("--platform", default="x86_64")
    ap.add_argument("--packager", default=str(Path(sys.executable).parent / "monai-deploy"))
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    (out / "cache").mkdir(parents=True, exist_ok=True)
    models = Path(args.models).resolve()
    if not (models / "cxr_sr").is_dir() or not (models / "cxr_pneumonia").is_dir():
        print(f"error: {models} lacks cxr_sr/ and cxr_pneumonia/: run `make deploy-models` first", file=sys.stderr)
        return 2
    cmd = [args.packager, "package", str(APP), "-c", str(APP / "app.yaml"), "-t", args.tag,
           "--platform", args.platform, "--timeout", "600", "-m", str(models), "--source", str(HERE / "holoscan-artifacts.json"),
           "--output", str(out), "--build-cache", str(out / "cache"), "-l", "DEBUG"]
    print("running:", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    log = proc.stdout + proc.stderr
    (out / "package.log").write_text(log)
    found = {name: json.loads(body) for name, body in _BLOCK.findall(log)}
    for name, manifest in found.items():
        (out / f"{name}.json").write_text(json.dumps(manifest, indent=2))
    if set(found) != {"app", "pkg"}:
        print(f"error: the packager wrote no manifests (see {out / 'package.log'})", file=sys.stderr)
        return 1
    print(f"manifests: {out / 'app.json'}, {out / 'pkg.json'}")
    dockerfile = _DOCKERFILE.search(log)
    if dockerfile:  # the packager's rendered Dockerfile: build_image.py builds an adapted copy with podman
        (out / "Dockerfile.packager").write_text(dockerfile.group(1) + "\n")
        print(f"packager's Dockerfile: {out / 'Dockerfile.packager'}")
    if proc.returncode == 0:
        print(f"MAP image built: {args.tag}")
        return 0
    if not docker_buildx_available():
        print("Docker with buildx is not available on this machine: the packager stopped after writing the MAP "
              "manifests and its Dockerfile (`make map` builds the image with podman: deploy/packaging/build_image.py).")
        return 0
    print(f"error: packaging failed (see {out / 'package.log'})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
