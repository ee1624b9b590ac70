"""The ``map-warm`` runner: a PACS worker's warm app inside the MAP image, one long-lived hardened container.

The MAP image stays the unit that runs the models: the worker (outside, it alone talks to Orthanc and the queue)
starts one container of the image with exactly the confinement ``run_map.py`` gives a per-study run (no network,
``--cap-drop ALL``, ``no-new-privileges``, read-only root with a tmpfs, the CPU and memory limits of ``pkg.json``,
the image's non-root user mapped onto the worker's uid), but with stdin attached and ``warm_app.py`` (mounted
read-only) as its process instead of the app's entrypoint: the models load once, then each study is one JSON line
in and one out, as with the ``warm`` runner. The container sees two folders of the worker: ``WORK/map_in``
(read-only, at the image's input path) and ``WORK/map_out`` (at its output path); a study's run uses
``map_in/<run>`` and ``map_out/<run>``, both removed after the run.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "packaging"))

import run_map  # noqa: E402

__all__ = ["WarmMap", "container_name"]

WARM_APP_IN_IMAGE = "/opt/cxr_pacs/warm_app.py"
APP_DIR_IN_IMAGE = "/opt/holoscan/app"


def container_name(worker: str) -> str:
    """The worker's container name (one per worker; a predecessor's leftover is removed by name)."""
    return "cxr-warm-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", worker)[:60]


class WarmMap:
    """The command line of the worker's warm container and the path mapping host <-> container.

    Args:
        image: the MAP image.
        work: the worker's folder (``map_in``, ``map_out`` are made there).
        worker: the worker's name (the container's name follows it).
        cpus: CPU quota (default ``pkg.json``'s ``resources.cpu``, at most the machine's CPUs).
    """

    def __init__(self, image: str, work: Path, worker: str, cpus: float | None = None) -> None:
        self.podman = run_map.podman_cmd()
        if subprocess.run([self.podman, "image", "exists", image]).returncode != 0:
            raise RuntimeError(f"MAP image {image} not found (make map)")
        self.image, self.name = image, container_name(worker)
        self.in_root, self.out_root = Path(work) / "map_in", Path(work) / "map_out"
        self.in_root.mkdir(parents=True, exist_ok=True)
        self.out_root.mkdir(parents=True, exist_ok=True)
        app, pkg, uid, gid = run_map.image_facts(self.podman, image)
        workdir = app.get("workingDirectory", "/var/holoscan")
        self.in_path = posixpath.join(workdir, app["input"]["path"]).rstrip("/")
        self.out_path = posixpath.join(workdir, app["output"]["path"]).rstrip("/")
        self.models = app.get("environment", {}).get("HOLOSCAN_MODEL_PATH", "/opt/holoscan/models")
        quota = cpus if cpus is not None else pkg.get("resources", {}).get("cpu")
        self.cpus = min(float(quota), float(os.cpu_count() or 1)) if quota else None
        self.memory = run_map.memory_limit(pkg.get("resources", {}).get("memory"))
        self.user, self.app = (uid, gid), app

    def command(self) -> list[str]:
        cmd = run_map.build_command(self.podman, self.image, self.in_root, self.out_root, self.app, self.cpus,
                                    {"CXR_APP_DIR": APP_DIR_IN_IMAGE}, self.name, self.memory, user=self.user)
        assert cmd[-1] == self.image
        return [*cmd[:-1], "-i", "-v", f"{HERE / 'warm_app.py'}:{WARM_APP_IN_IMAGE}:ro", "--entrypoint", "python3",
                self.image, WARM_APP_IN_IMAGE, "--models", self.models]

    def remove(self) -> None:
        """Remove the container (stopped or not); nothing when there is none."""
        subprocess.run([self.podman, "rm", "-f", "-t", "0", self.name], capture_output=True, timeout=120)

    def run_dirs(self, tag: str) -> tuple[Path, Path]:
        return self.in_root / tag, self.out_root / tag

    def request(self, input_dir: Path, output_dir: Path) -> dict[str, str]:
        """The warm app's request for a run's host folders, in the container's paths."""
        return {"input": f"{self.in_path}/{input_dir.name}", "output": f"{self.out_path}/{output_dir.name}"}
