"""The MAP run's confinement (``deploy/packaging/run_map.py build_command``), checked in a real podman + runc container.

The MAP image itself is large and slow to build (tests/deploy/test_map.py builds it); the confinement does not depend
on its contents, so this runs the exact ``podman run`` options on a small image: the MAP's Debian base (made by
debootstrap, cached, as ``make map`` makes it) plus the MAP's non-root user (uid 1000). Checked from inside: the user
and its mapping onto the caller (reads a private 0600 input in a 0700 folder, its outputs belong to the caller on
the host, nothing chmod'ed), no capabilities, no-new-privileges, a read-only root with a writable /tmp, no network,
and the memory limit (an allocation past it is killed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PACKAGING = PROJECT_ROOT / "deploy" / "packaging"
sys.path.insert(0, str(PACKAGING))
import build_image  # noqa: E402
import run_map  # noqa: E402

sys.path.remove(str(PACKAGING))

IMAGE = "localhost/cxr-map-hardening-probe:test"
APP = {"workingDirectory": "/var/holoscan", "input": {"path": "input/"}, "output": {"path": "output/"},
       "environment": {}}
PROBE = r"""
import json, os, socket
st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
def can_write(p):
    try:
        open(p, 'w').write('x'); return True
    except OSError:
        return False
mem = None
for f in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
    if os.path.exists(f):
        mem = open(f).read().strip(); break
out = {'uid': os.getuid(), 'gid': os.getgid(), 'cap_eff': st['CapEff'].strip(), 'no_new_privs': st['NoNewPrivs'].strip(),
       'input': open('/var/holoscan/input/secret.dcm').read(), 'root_writable': can_write('/etc/probe'),
       'tmp_writable': can_write('/tmp/probe'), 'interfaces': sorted(n for _, n in socket.if_nameindex()), 'mem': mem}
open('/var/holoscan/output/result.json', 'w').write(json.dumps(out))
"""


def _podman_usable() -> str | None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "podman/runc not installed (`make map-tools`)"
    if os.geteuid() != 0:
        return "needs root podman (the id maps are explicit)"
    return None


@pytest.fixture(scope="module")
def probe_image() -> str:
    why = _podman_usable()
    if why:
        pytest.skip(why)
    if not build_image.image_exists("podman", build_image.DEFAULT_BASE):
        build_image.build_base("podman", build_image.DEFAULT_BASE)  # ~1 min, cached (make map reuses it)
    if not build_image.image_exists("podman", IMAGE):
        ctx = Path(__file__).parent / "_unused"
        containerfile = (f"FROM {build_image.DEFAULT_BASE}\nRUN groupadd -g 1000 holoscan && useradd -rm -u 1000 -g 1000 holoscan && "
                         "mkdir -p /var/holoscan/input /var/holoscan/output\nUSER holoscan\n")
        proc = subprocess.run(["podman", "build", "--network", "none", "-t", IMAGE, "-f", "-", str(ctx.parent)],
                              input=containerfile, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return IMAGE


def _run(image: str, tmp: Path, memory: str | None, code: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    inp, out = tmp / "in", tmp / "out"
    inp.mkdir(mode=0o700)
    out.mkdir(mode=0o700)
    secret = inp / "secret.dcm"
    secret.write_text("patient pixels")
    secret.chmod(0o600)
    cmd = run_map.build_command("podman", image, inp, out, APP, cpus=1, memory=memory, user=(1000, 1000))
    cmd[-1:] = ["--entrypoint", "python3", image, "-c", code]
    # cwd: conmon leaves an empty "oom" file in its working folder when the kernel kills the container for memory
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp), inp, out


def test_confined_container(probe_image: str, tmp_path: Path) -> None:
    proc, inp, out = _run(probe_image, tmp_path, "256m", PROBE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((out / "result.json").read_text())
    assert got["uid"] == 1000 and got["gid"] == 1000, got  # the image's non-root user ...
    assert got["input"] == "patient pixels"  # ... reads the caller's private input through the user namespace
    assert (out / "result.json").stat().st_uid == os.getuid()  # and its outputs belong to the caller
    assert (inp.stat().st_mode & 0o777, (inp / "secret.dcm").stat().st_mode & 0o777) == (0o700, 0o600)  # untouched
    assert int(got["cap_eff"], 16) == 0 and got["no_new_privs"] == "1", got
    assert not got["root_writable"] and got["tmp_writable"], got
    assert got["interfaces"] == ["lo"], got
    assert got["mem"] == str(256 * 1024**2), got


def test_memory_limit_kills_an_allocation_past_it(probe_image: str, tmp_path: Path) -> None:
    proc, _, _ = _run(probe_image, tmp_path, "128m", "b = bytearray(400 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])")
    assert proc.returncode == 137, (proc.returncode, proc.stderr[-500:])


def test_id_maps_are_a_permutation() -> None:
    args = run_map.id_maps(1000, 0, "--uidmap")
    pairs = [tuple(map(int, a.split(":"))) for a in args[1::2]]
    cont = sorted(c for c0, _, n in pairs for c in range(c0, c0 + n))
    host = sorted(h for _, h0, n in pairs for h in range(h0, h0 + n))
    assert cont == host == list(range(65536)) and (1000, 0, 1) in pairs


def test_memory_limit_comes_from_pkg_json() -> None:
    assert run_map.memory_limit("4Gi") == "4g" and run_map.memory_limit("512Mi") == "512m"
    assert run_map.memory_limit(None) is None
