"""Shared fixtures: where the real data lives, and the phantom images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# CXR_TEST_NO_MKLDNN=1 runs the suite with oneDNN off (other CPU kernels), to shake out bit-exact assumptions
# between code paths; ATEN_CPU_CAPABILITY=default (read by torch itself) does the same for the SIMD level.
if os.environ.get("CXR_TEST_NO_MKLDNN") == "1":
    torch.backends.mkldnn.enabled = False

# CXR_FAIL_ON_SKIP=1 (the Makefile's test targets set it): with the shared data present, a skipped test means
# something broke (a moved file, a missing tool), so the run fails and lists the skips. A user's clone without
# ../shared/data keeps skip-with-a-reason.
_SKIPPED: list[str] = []


def _fail_on_skip() -> bool:
    return os.environ.get("CXR_FAIL_ON_SKIP") == "1" and SHARED_DATA.is_dir()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(f"{report.nodeid}: {report.longrepr[2] if isinstance(report.longrepr, tuple) else ''}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _SKIPPED.append(f"{report.nodeid} (whole module): {report.longrepr[2] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _fail_on_skip() and _SKIPPED and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _fail_on_skip() and _SKIPPED:
        terminalreporter.section("skipped while the shared data is present (CXR_FAIL_ON_SKIP=1): failing", red=True)
        for line in _SKIPPED:
            terminalreporter.line(line, red=True)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; skips the test when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set CXR_SHARED_DATA); skipping real-data test")
    return SHARED_DATA


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the calling test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared 2-core machine OpenMP spinning costs more than it gains."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
