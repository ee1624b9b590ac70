"""Run the MAP image the way ``monai-deploy run`` does, with podman (``make map-run INPUT=dir OUTPUT=dir``).

    python deploy/packaging/run_map.py --image localhost/cxr-enhance-classify:0.1.0 --input IN --output OUT [--cpus N]

What ``monai-deploy run`` (holoscan-cli 3.11, ``common/dockerutils.docker_run``) does, by hand: the input folder
mounted read-only and the output folder read-write at the paths of ``app.json`` (``workingDirectory`` +
``input.path``/``output.path``), the ``app.json`` environment with ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``
set to those paths, a 64 MB stack ulimit, the container removed afterwards. Differences, all of them hardening:

* no network at all (``--network none``; the packager creates a bridge network for multi-fragment apps);
* ``--cpus`` (default: ``resources.cpu`` of ``pkg.json``) becomes the container's CPU quota, which the app's thread
  budget follows (``cxr_monai.utils.configure_threads``); ``--memory`` (default: ``resources.memory``) its memory
  limit, swap included (past it the kernel kills the app, the caller sees exit status 137);
* ``--cap-drop ALL`` and ``no-new-privileges``; a read-only root file system with tmpfs scratch at ``/tmp`` (and
  ``HOME``, ``XDG_CACHE_HOME`` pointed there);
* the image's own user (not root), mapped by a user namespace (``--uidmap``/``--gidmap``) onto the caller's uid/gid
  on the host: it reads the caller's private input folder and writes files the caller owns, and no patient folder
  is ever opened up (chmod) for another user (see :func:`id_maps`).
  (``--as-caller``: run as the caller's uid:gid inside the container too, ``monai-deploy run``'s default.)

podman needs ``--runtime runc`` and explicit ``nofile``/``nproc`` ulimits on this kind of machine.

Prints the app's summary line (and its exit status is the container's).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import resource
import shutil
import subprocess
import sys
from pathlib import Path

def _ulimit(name: str, res: int, want: int) -> str:
    """``name=v:v`` with v = want, or the caller's hard limit when lower (podman cannot raise it: EPERM)."""
    hard = resource.getrlimit(res)[1]
    v = want if hard == resource.RLIM_INFINITY else min(want, hard)
    return f"{name}={v}:{v}"


# podman's defaults (nofile 1048576, nproc 32768) exceed this machine's hard limits; the stack is monai-deploy run's
ULIMITS = [_ulimit("nofile", resource.RLIMIT_NOFILE, 4096), _ulimit("nproc", resource.RLIMIT_NPROC, 4096),
           _ulimit("stack", resource.RLIMIT_STACK, 67108864)]


def podman_cmd() -> str:
    podman = shutil.which("podman")
    if podman is None:
        raise SystemExit("error: podman is not installed (make map-tools)")
    return podman


def image_facts(podman: str, image: str) -> tuple[dict, dict, int, int]:
    """app.json, pkg.json and the image user's uid/gid, in one short container run."""
    script = 'id -u; id -g; cat "$HOLOSCAN_APP_MANIFEST_PATH"; echo; echo "@@"; cat "$HOLOSCAN_PKG_MANIFEST_PATH"'
    out = subprocess.run([podman, "run", "--rm", "--runtime", "runc", "--network", "none",
                          *[f"--ulimit={u}" for u in ULIMITS[:2]], "--entrypoint", "/bin/sh", image, "-c", script],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: cannot read the manifests from {image}: {out.stderr.strip()}")
    uid, gid, rest = out.stdout.split("\n", 2)
    app, pkg = rest.split("@@", 1)
    return json.loads(app), json.loads(pkg), int(uid), int(gid)


ID_RANGE = 65536
TMPFS_SIZE = "1g"


def id_maps(container_id: int, host_id: int, flag: str) -> list[str]:
    """``--uidmap``/``--gidmap`` arguments for root podman: ``container_id`` -> ``host_id`` (the caller, root: 0), the
    other container ids 0..65535 in order onto the other host ids 0..65535. With a root caller and the image user
    1000 that is: 1000 -> 0, 0..999 -> 1..1000, 1001.. -> 1001.. Podman 4.3 with runc refuses the overlay mount here
    for maps that leave holes (e.g. the other ids onto an unused range from 200000: "permission denied"; checked),
    hence a permutation. The container never becomes its own root: it runs as ``container_id``, with no
    capabilities and no-new-privileges (no setuid way up)."""
    if not 0 <= host_id < ID_RANGE or not 0 <= container_id < ID_RANGE:
        raise ValueError(f"ids must be below {ID_RANGE}: container {container_id}, host {host_id}")
    cont = [(0, container_id), (container_id + 1, ID_RANGE)]
    host = [(0, host_id), (host_id + 1, ID_RANGE)]
    maps = [f"{container_id}:{host_id}:1"]
    hi, hpos = 0, host[0][0]
    for c0, c1 in cont:
        c = c0
        while c < c1:
            while hpos >= host[hi][1]:
                hi += 1
                hpos = host[hi][0]
            n = min(c1 - c, host[hi][1] - hpos)
            maps.append(f"{c}:{hpos}:{n}")
            c += n
            hpos += n
    return [a for m in maps for a in (flag, m)]


def userns_args(user: tuple[int, int], host_user: tuple[int, int] | None = None) -> list[str]:
    """Run as the image's ``user`` (uid, gid), seen on the host as ``host_user`` (default the caller): explicit maps
    for root podman, ``keep-id`` for rootless podman (the caller's own namespace)."""
    hu, hg = host_user if host_user is not None else (os.getuid(), os.getgid())
    if os.geteuid() != 0:
        return ["--userns", f"keep-id:uid={user[0]},gid={user[1]}", "--user", f"{user[0]}:{user[1]}"]
    return [*id_maps(user[0], hu, "--uidmap"), *id_maps(user[1], hg, "--gidmap"), "--user", f"{user[0]}:{user[1]}"]


def memory_limit(value) -> str | None:
    """pkg.json's ``resources.memory`` (``4Gi``, ``512Mi``, ``2G``, bytes) as podman's ``--memory`` (``4g``...)."""
    if value in (None, "", 0):
        return None
    text = str(value).strip()
    units = {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t", "K": "k", "M": "m", "G": "g", "T": "t"}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return f"{float(text[: -len(suffix)]):g}{units[suffix]}"
    return f"{int(float(text))}b"


def build_command(podman: str, image: str, input_dir: Path, output_dir: Path, app: dict, cpus: float | None,
                  extra_env: dict[str, str] | None = None, name: str | None = None, memory: str | None = None,
                  user: tuple[int, int] | None = None, host_user: tuple[int, int] | None = None) -> list[str]:
    """The ``podman run`` command line.

    Args:
        user: the image's uid/gid (the container process runs as it); with ``host_user``, a user namespace maps it
            onto that host uid/gid (default: the caller's).
        memory: podman ``--memory`` value (swap limited to the same).
    """
    workdir = app.get("workingDirectory", "/var/holoscan")
    in_path = posixpath.join(workdir, app["input"]["path"])
    out_path = posixpath.join(workdir, app["output"]["path"])
    env = dict(app.get("environment", {}))
    env["HOLOSCAN_INPUT_PATH"] = in_path
    env["HOLOSCAN_OUTPUT_PATH"] = out_path
    env.setdefault("HOME", "/tmp")
    env.setdefault("XDG_CACHE_HOME", "/tmp/.cache")
    env.update(extra_env or {})
    cmd = [podman, "run", "--rm", "--runtime", "runc", "--network", "none", *[f"--ulimit={u}" for u in ULIMITS],
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only", "--read-only-tmpfs=false",
           "--tmpfs", f"/tmp:rw,nosuid,nodev,size={TMPFS_SIZE}",
           "-v", f"{input_dir}:{in_path.rstrip('/')}:ro", "-v", f"{output_dir}:{out_path.rstrip('/')}"]
    if user is not None:
        cmd += userns_args(user, host_user)
    if name:
        cmd += ["--name", name]
    if cpus:
        cmd += ["--cpus", str(cpus)]
    if memory:
        cmd += ["--memory", memory, "--memory-swap", memory]
    for k, v in sorted(env.items()):
        cmd += ["-e", f"{k}={v}"]
    return cmd + [image]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="localhost/cxr-enhance-classify:0.1.0")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--cpus", type=float, default=None, help="CPU quota (default: pkg.json resources.cpu)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE passed to the app (e.g. CXR_STRICT=1)")
    ap.add_argument("--name", default=None, help="container name")
    ap.add_argument("--memory", default=None, help="memory limit, podman syntax (default: pkg.json resources.memory)")
    ap.add_argument("--as-caller", action="store_true", help="run as the caller's uid:gid (monai-deploy run's default)")
    args = ap.parse_args(argv)

    podman = podman_cmd()
    if subprocess.run([podman, "image", "exists", args.image]).returncode != 0:
        print(f"error: image {args.image} not found: run `make map` first", file=sys.stderr)
        return 2
    input_dir, output_dir = Path(args.input).resolve(), Path(args.output).resolve()
    if not input_dir.is_dir():
        print(f"error: input folder {input_dir} does not exist", file=sys.stderr)
        return 2
    output_dir.mkdir(parents=True, exist_ok=True)
    app, pkg, uid, gid = image_facts(podman, args.image)
    cpus = args.cpus if args.cpus is not None else pkg.get("resources", {}).get("cpu")
    if cpus:
        cpus = min(float(cpus), float(os.cpu_count() or 1))
    memory = args.memory or memory_limit(pkg.get("resources", {}).get("memory"))
    extra = dict(kv.split("=", 1) for kv in args.env)
    if args.as_caller:  # exactly monai-deploy run's --user: the caller's uid:gid (root when root calls)
        cmd = build_command(podman, args.image, input_dir, output_dir, app, cpus, extra, args.name, memory)
        cmd[-1:-1] = ["--user", f"{os.getuid()}:{os.getgid()}"]
    else:  # the image's non-root user, mapped onto the caller: nothing to chmod or chown on the host
        cmd = build_command(podman, args.image, input_dir, output_dir, app, cpus, extra, args.name, memory,
                            user=(uid, gid))
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("cxr_enhance_classify:")]
    if proc.returncode != 0 or not summary:
        sys.stdout.write(proc.stdout[-4000:])
    for ln in summary:
        print(ln)
    if summary:
        print(f"results on the host: {output_dir / 'results.json'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
