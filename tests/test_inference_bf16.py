"""bf16 autocast at inference: detected at run time (CPU bf16 matrix units, AMX), switched by ``CXR_BF16``."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from cxr_monai.inference import _autocast, bf16_autocast_enabled, cpu_has_bf16_units


def _conv_dtype(device: str = "cpu") -> torch.dtype:
    conv = torch.nn.Conv2d(1, 2, 3)
    with torch.inference_mode(), _autocast(torch.device(device), True):
        return conv(torch.rand(1, 1, 8, 8)).dtype


def test_switch_turns_bf16_off_and_on(monkeypatch) -> None:
    monkeypatch.setenv("CXR_BF16", "0")
    assert not bf16_autocast_enabled("cpu") and not bf16_autocast_enabled("cuda")
    assert _conv_dtype() == torch.float32
    monkeypatch.setenv("CXR_BF16", "1")
    assert bf16_autocast_enabled("cpu")
    assert _conv_dtype() == torch.bfloat16
    with torch.inference_mode(), _autocast(torch.device("cpu"), False):  # the caller's own opt-out wins
        assert torch.nn.Conv2d(1, 2, 3)(torch.rand(1, 1, 8, 8)).dtype == torch.float32


def test_auto_follows_the_cpu_flags(monkeypatch) -> None:
    monkeypatch.delenv("CXR_BF16", raising=False)
    if shutil.which("lscpu") is None:
        pytest.skip("lscpu not installed")
    flags = next((ln.split(":", 1)[1].split() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Flags:")), [])
    has_amx = "amx_bf16" in flags and torch.backends.mkldnn.is_available()
    assert cpu_has_bf16_units() == has_amx
    assert bf16_autocast_enabled("cpu") == has_amx
    assert _conv_dtype() == (torch.bfloat16 if has_amx else torch.float32)
    assert bf16_autocast_enabled("cuda")  # CUDA keeps its bf16 default
