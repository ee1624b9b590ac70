"""Helpers for checking the DICOM the project writes: dciodvfy (the conformance oracle) and Orthanc (a real PACS)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def dciodvfy_exe() -> str:
    """Path of dciodvfy; skips the calling test (before it checks anything) when it is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian dicom3tools) not installed: `make tools` installs it")
    return exe


def dciodvfy_errors(exe: str, path: Path) -> list[str]:
    """The 'Error' lines dciodvfy reports for one file."""
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 15.0) -> int | None:
    """Stop a server started with ``start_new_session=True`` by its PID: SIGTERM to its process group, SIGKILL
    after ``timeout`` seconds. Returns the exit status (``None`` when there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """A throw-away Orthanc on 127.0.0.1 (free HTTP and DICOM ports, storage in a temp folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.aet = "ORTHANCTEST"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: str):
        req = urllib.request.Request(self.url + path, data=body.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def start(self, timeout: float = 30.0) -> "Orthanc":
        exe = shutil.which("Orthanc")
        if exe is None:
            pytest.skip("Orthanc (Debian package orthanc) not installed: `make tools` installs it")
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cxr-monai-test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "HttpBindAddress": "127.0.0.1" , "DicomAlwaysAllowStore": True, "UnknownSopClassAccepted": False,
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)] if ORTHANC_DICOMWEB_PLUGIN.is_file() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = open(self.root / "orthanc.log", "w")
        self.proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s")

    def stop(self) -> None:
        stop_process_group(self.proc)


@contextmanager
def orthanc_server(root: Path):
    server = Orthanc(root).start()
    try:
        yield server
    finally:
        server.stop()


def c_store(files: list[Path], port: int, called_aet: str) -> dict[str, int]:
    """Send each file to a Storage SCP with pynetdicom (one association per file, so one refused object cannot
    take the others down); ``{sop_uid: status}`` (0 = success)."""
    import pydicom
    from pynetdicom import AE

    out = {}
    for f in files:
        ds = pydicom.dcmread(f)
        ae = AE(ae_title="CXRMONAI")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
        assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
        assert assoc.is_established, f"association with the Storage SCP was not established for {f}"
        try:
            status = assoc.send_c_store(ds)
            out[str(ds.SOPInstanceUID)] = int(status.Status) if status else -1
        finally:
            assoc.release()
    return out
