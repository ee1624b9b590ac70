"""Build the MAP image with podman, laid out as holoscan-cli 3.11's packager lays it out.

    python deploy/packaging/build_image.py --models .deploy_models --map-dir map_build [--tag cxr-enhance-classify:0.1.0]

Run after ``make_map.py`` (which keeps the packager's own ``app.json``, ``pkg.json`` and rendered ``Dockerfile``
in ``--map-dir``). The packager's Dockerfile cannot be built here (it pulls ``nvcr.io`` images, installs a CUDA
keyring from the network and pins Ubuntu 24.04 packages), so this script builds an adapted copy,
``deploy/packaging/Containerfile``, whose ``LABEL`` and ``ENV HOLOSCAN_*`` lines are taken verbatim from the
packager's rendered Dockerfile:

1. base image (cached: reused while it exists): ``--base IMAGE`` if given (e.g. the packager's CUDA base on a
   site with a registry), else a Debian bookworm ``minbase`` + ``python3`` root file system made here with
   ``debootstrap`` and ``podman import``;
2. wheelhouse (cached under ``MAP_DIR/wheelhouse``, keyed by the lock): every distribution of the deploy venv
   (``pip freeze``) except the ones the app never imports (``PRUNE``), built with the host's ``pip wheel``
   (the local CPU torch wheel included), plus this project's own wheel (rebuilt every time);
3. build context ``MAP_DIR/context``: ``app/`` (the app folder), ``models/<name>/`` (every model folder found),
   ``map/app.json``, ``map/pkg.json``, ``app.config`` (app.yaml), ``tools`` (``map_tools.sh``), ``wheels/``;
4. ``podman build --network none``; the last line printed is ``MAP image built: NAME:TAG``;
5. clean-up (unless ``--keep-old``): the image this tag named before the build, once nothing else names it, and
   the leftover images of the ``project`` stage (label ``org.cxr-monai.build-stage=project``). Without it every
   rebuild left gigabytes of untagged images behind. The ``deps`` stage is built first and tagged
   ``DEPS_IMAGE``, so it stays: it is the cache that spares re-installing the third-party packages while the
   lock is unchanged (the one it replaces when the lock changes is removed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APP = ROOT / "deploy" / "cxr_enhance_classify"
CONTAINERFILE = HERE / "Containerfile"
TOOLS = HERE / "map_tools.sh"
DEFAULT_BASE = "localhost/cxr-map-base:bookworm-py311"
PRUNE = {
    # never imported by the app (checked by running it, then by the image's own run in tests/deploy/test_map.py):
    # ITK alone is 1.5 GB; ONNX is the export path; TensorBoard is training; the rest are test/packaging tools.
    "itk", "itk-core", "itk-filtering", "itk-io", "itk-numerics", "itk-registration", "itk-segmentation",
    "onnx", "onnx-ir", "onnxruntime", "onnxscript",
    "tensorboard", "tensorboard-data-server", "werkzeug", "markdown",
    "pytest", "pytest-timeout", "iniconfig", "pluggy", "pygments", "pynetdicom",
    "python-on-whales", "holoscan-cli", "jinja2", "markupsafe", "pydantic", "pydantic-core",
    "annotated-types", "typing-inspection", "wheel",
    # CuPy (200 MB): holoscan imports it only for GPU tensors and decorators (guarded); the app ran with it blocked
    "cupy-cuda13x",
}


def log(msg: str) -> None:
    print(f"[build_image] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def image_exists(podman: str, name: str) -> bool:
    return subprocess.run([podman, "image", "exists", name]).returncode == 0


PROJECT_STAGE_LABEL = "org.cxr-monai.build-stage=project"
DEPS_IMAGE = "localhost/cxr-map-deps:cache"  # the third-party stage, tagged: the build cache clean-ups keep


def image_id(podman: str, name: str) -> str | None:
    """The full ID of the image ``name`` names, or None when there is none."""
    proc = subprocess.run([podman, "image", "inspect", name, "--format", "{{.Id}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def remove_leftovers(podman: str, replaced: dict[str, str | None]) -> list[str]:
    """Remove each image a rebuild replaced (``{name: ID the name had before}``; only when no tag names it any
    more and no container uses it) and the untagged images of the ``project`` build stage; return what was
    removed."""
    removed = []
    for name, old in replaced.items():
        if not old or old == image_id(podman, name):
            continue
        tags = subprocess.run([podman, "image", "inspect", old, "--format", "{{len .RepoTags}}"],
                              capture_output=True, text=True).stdout.strip()
        if tags == "0" and subprocess.run([podman, "rmi", old], capture_output=True).returncode == 0:
            removed.append(old[:12])
    proc = subprocess.run([podman, "image", "prune", "-f", "--filter", f"label={PROJECT_STAGE_LABEL}"],
                          capture_output=True, text=True)
    removed += [line[:12] for line in proc.stdout.split() if line.strip()]
    return removed


def debian_mirror() -> str:
    """The Debian URI apt already uses (deb822 ``.sources`` or a one-line ``sources.list``)."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text()
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if "security" not in m.group(1):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m.group(1)
    return "http://deb.debian.org/debian"


def build_base(podman: str, name: str) -> None:
    """Debian bookworm minbase + python3 (3.11, glibc 2.36), docs/man/apt lists removed, imported as NAME."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    with tempfile.TemporaryDirectory(prefix="cxr-map-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run([debootstrap, "--variant=minbase", "--include=python3", "bookworm", str(rootfs), debian_mirror()],
            stdout=subprocess.DEVNULL)
        for sub in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/info",
                    "usr/share/locale", "var/log"):
            p = rootfs / sub
            if p.is_dir():
                for child in p.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([podman, "import", "--change", "CMD [\"/bin/bash\"]", "-", name], stdin=tar.stdout, check=True,
                       stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("error: tar of the base root file system failed")


EXTRA = [
    # the CUDA runtime holoscan's libraries link against (libcudart.so.13): nvcr.io's CUDA base image has it in
    # /usr/local/cuda, a Debian base does not; PyPI's wheel puts it in site-packages/nvidia/cu13/lib (2 MB)
    "nvidia-cuda-runtime==13.0.96",
]


def lock_lines(python: str) -> list[str]:
    """``pip freeze`` of the deploy venv without the editable project and without PRUNE."""
    out = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True,
                         text=True).stdout
    keep = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "==" not in line:
            continue
        name = re.split(r"[=<>\[ ]", line, 1)[0]
        if re.sub(r"[-_.]+", "-", name).lower() in PRUNE:
            continue
        keep.append(line)
    return sorted(keep + EXTRA, key=str.lower)


def build_wheelhouse(python: str, wheelhouse: Path) -> Path:
    """Third-party wheels (cached by the lock's hash) + this project's wheel (always rebuilt)."""
    lock = "\n".join(lock_lines(python)) + "\n"
    key = hashlib.sha256(lock.encode()).hexdigest()[:16]
    third = wheelhouse / "third_party"
    stamp = third / f".lock-{key}"
    if stamp.exists():
        log(f"wheelhouse: cached ({third}, lock {key})")
    else:
        new = wheelhouse / "third_party.new"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        (new / "requirements.lock").write_text(lock)
        # --no-deps: the lock is the whole closure; pip takes local files (the previous wheelhouse, /opt/wheels,
        # the pip cache) first, so a changed lock fetches only what changed
        run([python, "-m", "pip", "wheel", "-qq", "--no-deps", "-w", str(new), "-r", str(new / "requirements.lock"),
             *(["--find-links", str(third)] if third.is_dir() else [])])
        shutil.rmtree(third, ignore_errors=True)
        new.rename(third)
        # pip itself (holoscan declares it; the image's install step runs pip from its wheel: Debian's python3 has none)
        pip_version = subprocess.run([python, "-m", "pip", "--version"], check=True, capture_output=True,
                                     text=True).stdout.split()[1]
        run([python, "-m", "pip", "download", "-qq", "--no-deps", "-d", str(third), f"pip=={pip_version}"])
        stamp.write_text(lock)
    own = wheelhouse / "project"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="cxr-wheel-") as tmp:  # a copy: setuptools writes build/ in the tree
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).exists():
                shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "cxr_monai", src / "cxr_monai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        run([python, "-m", "pip", "wheel", "-qq", "--no-deps", "--no-build-isolation", "-w", str(own), str(src)])
    return wheelhouse


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def packager_lines(dockerfile: Path) -> str:
    """The packager's LABEL lines and ENV HOLOSCAN_* lines, verbatim (title/version from app.yaml)."""
    if not dockerfile.is_file():
        raise SystemExit(f"error: {dockerfile} is missing: run deploy/packaging/make_map.py first")
    keep = [ln for ln in dockerfile.read_text().splitlines()
            if ln.startswith("LABEL ") and not ln.startswith("LABEL base=") or ln.startswith("ENV HOLOSCAN_")]
    if not any("org.opencontainers.image.version" in ln for ln in keep):
        raise SystemExit(f"error: no OCI version label in {dockerfile}")
    return "\n".join(keep)


def make_context(map_dir: Path, models: Path, wheelhouse: Path, base: str) -> Path:
    ctx = map_dir / "context"
    shutil.rmtree(ctx, ignore_errors=True)
    (ctx / "map").mkdir(parents=True)
    if not (map_dir / "app.json").is_file() or not (map_dir / "pkg.json").is_file():
        raise SystemExit(f"error: {map_dir} lacks app.json/pkg.json: run deploy/packaging/make_map.py first")
    shutil.copytree(APP, ctx / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    found = sorted(p for p in models.iterdir() if p.is_dir() and any(p.iterdir()))
    if not found:
        raise SystemExit(f"error: no model folders in {models}: run `make deploy-models` first")
    for m in found:  # every named model the packager would copy (cxr_sr, cxr_pneumonia, cxr_scope, ...)
        shutil.copytree(m, ctx / "models" / m.name)
    pkg = json.loads((map_dir / "pkg.json").read_text())
    missing = set(pkg.get("models", {})) - {m.name for m in found}
    if missing:
        raise SystemExit(f"error: pkg.json lists models not in {models}: {sorted(missing)}")
    shutil.copy(map_dir / "app.json", ctx / "map" / "app.json")
    shutil.copy(map_dir / "pkg.json", ctx / "map" / "pkg.json")
    shutil.copy(APP / "app.yaml", ctx / "app.config")
    shutil.copy(TOOLS, ctx / "tools")
    # hard links: the context is rebuilt every time, the wheelhouse is about 1 GB
    shutil.copytree(wheelhouse / "third_party", ctx / "wheels" / "third_party", copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns(".lock-*"))
    shutil.copytree(wheelhouse / "project", ctx / "wheels" / "project", copy_function=_link_or_copy)
    text = CONTAINERFILE.read_text().replace("#@PACKAGER_LABELS_AND_ENV@", packager_lines(map_dir / "Dockerfile.packager"))
    text = text.replace("@BASE_IMAGE@", base)
    (ctx / "Containerfile").write_text(text)
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--map-dir", default="map_build", help="make_map.py's --out (manifests, packager Dockerfile)")
    ap.add_argument("--tag", default="cxr-enhance-classify:0.1.0")
    ap.add_argument("--base", default=None, help=f"base image (default: {DEFAULT_BASE}, made here by debootstrap)")
    ap.add_argument("--wheelhouse", default=None, help="wheelhouse cache folder (default: MAP_DIR/wheelhouse)")
    ap.add_argument("--python", default=sys.executable, help="the deploy venv's python (pip freeze, pip wheel)")
    ap.add_argument("--keep-old", action="store_true",
                    help="keep the image this tag named before and the project stage's untagged images")
    args = ap.parse_args(argv)

    podman = shutil.which("podman")
    if podman is None:
        print("error: podman is not installed (make map installs it with apt-get as root)", file=sys.stderr)
        return 1
    t0 = time.time()
    map_dir = Path(args.map_dir).resolve()
    base = args.base or DEFAULT_BASE
    if image_exists(podman, base):
        log(f"base image: cached ({base})")
    elif args.base:
        run([podman, "pull", base])
    else:
        log(f"base image: building {base} with debootstrap (mirror {debian_mirror()})")
        build_base(podman, base)
    wheelhouse = build_wheelhouse(args.python, Path(args.wheelhouse).resolve() if args.wheelhouse else map_dir / "wheelhouse")
    ctx = make_context(map_dir, Path(args.models).resolve(), wheelhouse, base)
    name = args.tag if "/" in args.tag.split(":")[0] else f"localhost/{args.tag}"
    replaced = {n: image_id(podman, n) for n in (name, DEPS_IMAGE)}
    build = [podman, "build", "--network", "none", "--layers", "-f", str(ctx / "Containerfile")]
    run([*build, "--target", "deps", "-t", DEPS_IMAGE, str(ctx)])  # tagged, so no clean-up removes the cache
    run([*build, "-t", name, str(ctx)])
    shutil.rmtree(ctx / "wheels", ignore_errors=True)  # a copy of the wheelhouse; the build cache keeps its layer
    if not args.keep_old:
        removed = remove_leftovers(podman, replaced)
        log(f"removed {len(removed)} replaced or leftover image(s): {' '.join(removed) or '-'}")
    size = subprocess.run([podman, "image", "inspect", name, "--format", "{{.Size}}"], capture_output=True,
                          text=True).stdout.strip()
    log(f"image size: {int(size) / 1e6:.0f} MB; build time {time.time() - t0:.0f} s")
    print(f"MAP image built: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
