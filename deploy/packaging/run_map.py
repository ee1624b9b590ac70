"""Run the MAP image the way ``monai-deploy run`` does, with podman (``make map-run INPUT=dir OUTPUT=dir``).

    python deploy/packaging/run_map.py --image localhost/cxr-enhance-classify:0.1.0 --input IN --output OUT [--cpus N]

What ``monai-deploy run`` (holoscan-cli 3.11, ``common/dockerutils.docker_run``) does, by hand: the input folder
mounted read-only and the output folder read-write at the paths of ``app.json`` (``workingDirectory`` +
``input.path``/``output.path``), the ``app.json`` environment with ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``
set to those paths, a 64 MB stack ulimit, the container removed afterwards. Differences: no network at all
(``--network none``; the packager creates a bridge network for multi-fragment apps); ``--cpus`` (default: the
``resources.cpu`` of ``pkg.json``) becomes the container's CPU quota, which the app's thread budget follows
(``cxr_monai.utils.configure_threads``); the container runs as the image's own non-root user (``monai-deploy run``
passes the caller's uid:gid, root here), so a root caller hands the output folder to that user; podman needs
``--runtime runc`` and explicit ``nofile``/``nproc`` ulimits on this kind of machine.

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


def unreadable_by(uid: int, gid: int, folder: Path) -> list[Path]:
    """Entries of ``folder`` (itself included) that user uid:gid cannot read (or enter, for folders); the host's
    parent folders do not matter (the container reaches the folder through its mount point)."""
    bad = []
    for p in [folder, *folder.rglob("*")]:
        st = p.stat()
        need = 0o5 if p.is_dir() else 0o4
        if st.st_uid == uid:
            ok = (st.st_mode >> 6) & need == need
        elif st.st_gid == gid:
            ok = (st.st_mode >> 3) & need == need
        else:
            ok = st.st_mode & need == need
        if not ok:
            bad.append(p)
    return bad


def build_command(podman: str, image: str, input_dir: Path, output_dir: Path, app: dict, cpus: float | None,
                  extra_env: dict[str, str] | None = None, name: str | None = None) -> list[str]:
    workdir = app.get("workingDirectory", "/var/holoscan")
    in_path = posixpath.join(workdir, app["input"]["path"])
    out_path = posixpath.join(workdir, app["output"]["path"])
    env = dict(app.get("environment", {}))
    env["HOLOSCAN_INPUT_PATH"] = in_path
    env["HOLOSCAN_OUTPUT_PATH"] = out_path
    env.update(extra_env or {})
    cmd = [podman, "run", "--rm", "--runtime", "runc", "--network", "none", *[f"--ulimit={u}" for u in ULIMITS],
           "-v", f"{input_dir}:{in_path.rstrip('/')}:ro", "-v", f"{output_dir}:{out_path.rstrip('/')}"]
    if name:
        cmd += ["--name", name]
    if cpus:
        cmd += ["--cpus", str(cpus)]
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
    if args.as_caller:  # exactly monai-deploy run's --user: the caller's uid:gid (root when root calls)
        uid, gid = os.getuid(), os.getgid()
    elif os.geteuid() == 0:  # the image's non-root user writes the results
        os.chown(output_dir, uid, gid)
    bad = unreadable_by(uid, gid, input_dir)
    if bad:
        print(f"error: the image's user (uid {uid}) cannot read {len(bad)} entries of {input_dir}, e.g. {bad[0]}: "
              f"`chmod -R o+rX {input_dir}`, or --as-caller to run as your own uid", file=sys.stderr)
        return 2
    extra = dict(kv.split("=", 1) for kv in args.env)
    cmd = build_command(podman, args.image, input_dir, output_dir, app, cpus, extra, args.name)
    if args.as_caller:
        cmd[-1:-1] = ["--user", f"{uid}:{gid}"]
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
