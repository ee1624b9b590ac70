"""Runtime settings that make inference fast on the CPU: the channels_last layout (same outputs, converted once)
and a thread count that follows the container's CPU quota."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_monai.inference import channels_last_default, inference_layout, sr_inferer, super_resolve
from cxr_monai.networks import csaegan_lite, resnet18_sa
from cxr_monai.utils import configure_threads, cpu_budget


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Random non-zero weights everywhere (the lite generator starts equal to bicubic: its last conv is zero)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def test_channels_last_on_cpu_and_cuda_only() -> None:
    assert channels_last_default("cpu") and channels_last_default(torch.device("cuda"))
    assert not channels_last_default("meta")


@pytest.mark.parametrize("make,shape", [(lambda: csaegan_lite(num_block=1), (1, 1, 24, 20)),
                                        (lambda: resnet18_sa("slim"), (2, 1, 64, 64))])
def test_inference_layout_keeps_outputs_and_converts_once(make, shape) -> None:
    net = _trained_like(make())
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    out = inference_layout(net, "cpu")
    assert out is net
    convs = [p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]  # formats differ
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    before = [p.data_ptr() for p in net.parameters()]
    inference_layout(net, "cpu")  # already converted: nothing is copied again
    assert [p.data_ptr() for p in net.parameters()] == before
    with torch.no_grad():
        got = net(x)  # an NCHW input: the channels_last weights make the convolutions run in channels_last
    assert torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())
    assert not torch.equal(ref, torch.zeros_like(ref))


def test_super_resolve_in_channels_last_matches_nchw() -> None:
    net = _trained_like(csaegan_lite(num_block=1))
    scripted = torch.jit.script(net)
    image = np.random.default_rng(0).random((1, 40, 36), dtype=np.float32)
    info = {"tile_size": 16, "tile_overlap": 0.25, "scale": 4}
    nchw = _trained_like(csaegan_lite(num_block=1))  # the same weights, left in NCHW
    with torch.no_grad():
        ref = sr_inferer(16, 0.25)(torch.from_numpy(image)[None], nchw).clamp(0, 1)[0].numpy()
    got = super_resolve(scripted, image, info)
    assert next(p for p in nchw.parameters() if p.ndim == 4).is_contiguous()
    assert next(p for p in scripted.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    assert got.shape == (1, 160, 144)
    assert np.abs(got - ref).max() < 1e-5


def _cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


def test_cpu_budget_follows_the_cgroup_quota(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CXR_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))  # a large node
    assert cpu_budget(_cgroup(tmp_path / "a", v2="150000 100000")) == 2  # 1.5 CPUs -> 2 threads
    assert cpu_budget(_cgroup(tmp_path / "b", v2="max 100000")) == 64
    assert cpu_budget(_cgroup(tmp_path / "c", v1=("400000", "100000"))) == 4
    assert cpu_budget(_cgroup(tmp_path / "d", v1=("-1", "100000"))) == 64
    assert cpu_budget(_cgroup(tmp_path / "e", v2="50000 100000")) == 1
    assert cpu_budget(tmp_path / "missing") == 64
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert cpu_budget(_cgroup(tmp_path / "f", v2="800000 100000")) == 2  # affinity below the quota


def test_cxr_num_threads_overrides_and_is_checked(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("CXR_NUM_THREADS", "3")
    assert cpu_budget(_cgroup(tmp_path / "a", v2="100000 100000")) == 3
    monkeypatch.setenv("CXR_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="CXR_NUM_THREADS"):
        cpu_budget(tmp_path / "b")
    old = torch.get_num_threads()
    try:
        monkeypatch.setenv("CXR_NUM_THREADS", "1")
        assert configure_threads(tmp_path / "b") == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
