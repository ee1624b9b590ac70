"""ONNX export of the bundles' networks with MONAI's own `python -m monai.bundle onnx_export`, run with ONNX Runtime
on the CPU and compared with PyTorch (max abs error below 1e-4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import PROJECT_ROOT

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a project dependency: `make venv` installs it")

CASES = {
    "cxr_pneumonia_classifier": dict(args=["--input_shape", "[2,1,160,160]"], shapes=[(2, 1, 160, 160)]),
    # dynamic height and width: exported at 32 px, run at other sizes
    "cxr_sr_csaegan": dict(args=["--use_trace", "True", "--input_shape", "[1,1,32,32]", "--converter_kwargs",
                                 "{'dynamic_axes': {'x': {2: 'h', 3: 'w'}}}"], shapes=[(1, 1, 32, 32), (1, 1, 48, 40)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(CASES))
def test_onnx_export_matches_pytorch(bundle: str, tmp_path: Path) -> None:
    from cxr_monai.utils import load_bundle_network

    root = PROJECT_ROOT / "bundles" / bundle
    out = tmp_path / "model.onnx"
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(out),
           "--ckpt_file", str(root / "models" / "model.pt"), "--meta_file", str(root / "configs" / "metadata.json"),
           "--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root), *CASES[bundle]["args"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # the converter's own error (e.g. a models/model.pt that does not fit the config's network_def) in the report,
    # its last lines cut short (a state-dict mismatch lists every key)
    rc, tail = proc.returncode, "\n".join(line[:300] for line in proc.stderr.strip().splitlines()[-6:])
    assert rc == 0, f"onnx_export failed (exit {rc}):\n{tail}"
    net = load_bundle_network(root)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for shape in CASES[bundle]["shapes"]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = net(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) < 1e-4, shape
