"""ONNX export of the bundles' networks with MONAI's own `python -m monai.bundle onnx_export`, run with ONNX Runtime
on the CPU and compared with PyTorch (max abs error below 1e-4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort  # a project dependency (pyproject.toml): missing is an error, not a skip
import pytest
import torch

from tests.bundles import weight_checks as W
from tests.conftest import PROJECT_ROOT

CASES = {
    "cxr_pneumonia_classifier": dict(args=["--input_shape", str(list(W.classifier_input_shape(2))).replace(" ", "")],
                                     shapes=[W.classifier_input_shape(2)]),
    # dynamic height and width: exported at 32 px, run at other sizes
    "cxr_sr_csaegan": dict(args=["--use_trace", "True", "--input_shape", "[1,1,32,32]", "--converter_kwargs",
                                 "{'dynamic_axes': {'x': {2: 'h', 3: 'w'}}}"], shapes=[(1, 1, 32, 32), (1, 1, 48, 40)]),
}
# the generator takes z and a class index, MONAI's onnx_export feeds one dummy tensor: the bundle's onnx_network_def
# (SAGANGeneratorPackedInput, same state dict) takes x = [z, float(class)] of shape (N, 129); dynamic batch,
# exported at 2, run at 1 and 3
SYNTH = "cxr_synth_sgan"
SYNTH_ARGS = ["--input_shape", "[2,129]", "--converter_kwargs",
              "{'dynamic_axes': {'x': {0: 'batch'}}, 'output_names': ['pred']}"]


def _onnx_export(bundle: str, out: Path, args: list[str], net_id: str = "network_def") -> None:
    root = PROJECT_ROOT / "bundles" / bundle
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", net_id, "--filepath", str(out),
           "--ckpt_file", str(root / "models" / "model.pt"), "--meta_file", str(root / "configs" / "metadata.json"),
           "--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # the converter's own error (e.g. a models/model.pt that does not fit the config's network_def) in the report,
    # its last lines cut short (a state-dict mismatch lists every key)
    rc, tail = proc.returncode, "\n".join(line[:300] for line in proc.stderr.strip().splitlines()[-6:])
    assert rc == 0, f"onnx_export failed (exit {rc}):\n{tail}"


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(CASES))
def test_onnx_export_matches_pytorch(bundle: str, tmp_path: Path) -> None:
    from cxr_monai.utils import load_bundle_network

    out = tmp_path / "model.onnx"
    _onnx_export(bundle, out, CASES[bundle]["args"])
    net = load_bundle_network(PROJECT_ROOT / "bundles" / bundle)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for shape in CASES[bundle]["shapes"]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = net(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) < 1e-4, shape


@pytest.mark.slow
def test_onnx_export_synthesis_generator_matches_pytorch_per_class(tmp_path: Path) -> None:
    """The exported generator (spectral norm folded, self-attention with its trained gamma, conditional batch norm
    in eval mode) gives PyTorch's `network_def(z, y)` for both classes, a mixed batch and batch sizes 1 and 3."""
    from cxr_monai.utils import load_bundle_network

    out = tmp_path / "model.onnx"
    _onnx_export(SYNTH, out, SYNTH_ARGS, net_id="onnx_network_def")
    net = load_bundle_network(PROJECT_ROOT / "bundles" / SYNTH)  # the plain SAGANGenerator, forward(z, y)
    assert float(net.attention.gamma.detach().abs()) > 0  # the attention branch contributes
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape[1], outp.name) == ("x", net.latent_dim + 1, "pred")
    gen = torch.Generator().manual_seed(0)
    for n in (1, 3):
        z = torch.randn(n, net.latent_dim, generator=gen)
        got = {}
        for y in (torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long), torch.arange(n) % 2):
            with torch.no_grad():
                ref = net(z, y).numpy()
            got[tuple(y.tolist())] = res = session.run(None, {"x": torch.cat([z, y[:, None].float()], 1).numpy()})[0]
            assert res.shape == ref.shape == (n, 1, 64, 64)
            assert float(np.abs(res - ref).max()) < 1e-4, (n, y.tolist())
        # the class input is used: the same z gives other images for the other class (an export that dropped y
        # would give PyTorch's unconditional output for both)
        assert float(np.abs(got[(0,) * n] - got[(1,) * n]).mean()) > 0.01


def test_packed_input_generator_is_the_bundle_generator() -> None:
    """onnx_network_def loads models/model.pt and computes network_def(z, y) from one (N, latent_dim + 1) tensor."""
    from cxr_monai.networks import SAGANGeneratorPackedInput
    from cxr_monai.utils import load_bundle_network

    root = PROJECT_ROOT / "bundles" / SYNTH
    net, packed = load_bundle_network(root), load_bundle_network(root, net_id="onnx_network_def")
    assert isinstance(packed, SAGANGeneratorPackedInput)
    z, y = torch.randn(3, net.latent_dim, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 0, 1])
    with torch.no_grad():
        # two code paths (packed input vs z, y): float32 agreement, not bit-exact (4.8e-7 seen on an AMD CPU);
        # outputs are in [-1, 1], so atol 1e-6 is ~1e-6 of the range
        torch.testing.assert_close(packed(torch.cat([z, y[:, None].float()], 1)), net(z, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="latent"):
        packed(z)
