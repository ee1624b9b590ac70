"""SR metrics and the hallucination guard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_monai.metrics.sr import (
    back_projection,
    bicubic_up,
    consistency_psnr,
    crop_border,
    degrade,
    ms_ssim,
    psnr,
    sr_image_metrics,
    ssim,
)
from cxr_monai.transforms import SimulateLowResolution


pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom(size: int = 128, seed: int = 0) -> torch.Tensor:
    from cxr_monai.data.phantom import make_phantom

    img, _ = make_phantom(size=size, seed=seed)
    return torch.from_numpy(img)


def test_degrade_is_the_project_convention() -> None:
    hr = _phantom(64)
    lr = degrade(hr, 1.0, 4)
    assert lr.shape == (1, 16, 16)
    ref = SimulateLowResolution(sigma=1.0, scale=4)(hr)
    assert torch.allclose(lr, torch.as_tensor(ref), atol=1e-6)
    # batched input gives the same per-image result
    assert torch.allclose(degrade(hr[None], 1.0, 4)[0], lr, atol=1e-6)


def test_psnr_ssim_known_values() -> None:
    a = torch.full((1, 1, 32, 32), 0.5)
    b = a + 0.1
    assert float(psnr(b, a, border=4)) == pytest.approx(20.0, abs=1e-3)
    x = _phantom(64)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, x * 0.5)) < 0.99
    assert crop_border(torch.zeros(1, 1, 10, 12), 2).shape == (1, 1, 6, 8)


def test_border_is_excluded() -> None:
    a = torch.full((1, 1, 32, 32), 0.5)
    b = a.clone()
    b[..., :4, :] = 1.0  # damage only the excluded border
    assert math.isinf(float(psnr(b, a, border=4)))
    assert float(psnr(b, a, border=0)) < 20


def test_ms_ssim_needs_large_images() -> None:
    x = _phantom(192)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(float(ms_ssim(x[..., :64, :64], x[..., :64, :64])))


def test_consistency_flags_hallucinated_structure() -> None:
    hr = _phantom(128, seed=1)
    lr = degrade(hr, 1.0, 4)
    true_c = float(consistency_psnr(hr, lr))
    # invent low-frequency structure the LR does not contain: a bright blob
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    blob = 0.2 * torch.exp(-((yy - 64) ** 2 + (xx - 40) ** 2) / (2 * 6.0**2))
    fake = (hr + blob).clamp(0, 1)
    fake_c = float(consistency_psnr(fake, lr))
    assert true_c > 60  # the HR itself is exactly consistent (up to float error)
    assert fake_c < true_c - 20
    # back-projection restores consistency and moves the output towards the HR
    fixed = back_projection(fake, lr, iterations=10)
    assert float(consistency_psnr(fixed, lr)) > fake_c + 10
    assert float(psnr(fixed, hr)) > float(psnr(fake, hr))
    with pytest.raises(ValueError):
        back_projection(fake, lr, iterations=-1)


def test_sr_image_metrics_bicubic_vs_itself() -> None:
    hr = _phantom(192, seed=2)
    lr = degrade(hr, 1.0, 4)
    m = sr_image_metrics(bicubic_up(lr, 4), hr, lr)
    assert m["psnr_sr"] == pytest.approx(m["psnr_bicubic"])
    assert m["ssim_sr"] == pytest.approx(m["ssim_bicubic"])
    assert set(m) >= {"ms_ssim_sr", "consistency_psnr_sr", "consistency_psnr_bicubic"}
    assert 20 < m["psnr_bicubic"] < 60


def test_real_cxr_bicubic_baseline(shared_data: Path) -> None:
    """On a real Kermany original the bicubic baseline sits in the expected 30-45 dB band at 256 crops."""
    from cxr_monai.io import load_cxr

    files = sorted((shared_data / "kermany_hr" / "NORMAL").glob("*.jpeg"))
    assert files, "kermany_hr/NORMAL holds no JPEG: the shared data moved?"
    img, _ = load_cxr(files[0])
    h, w = img.shape[1:]
    hr = torch.from_numpy(np.ascontiguousarray(img[:, h // 2 - 128 : h // 2 + 128, w // 2 - 128 : w // 2 + 128]))
    lr = degrade(hr, 1.0, 4)
    m = sr_image_metrics(bicubic_up(lr), hr, lr, with_ms_ssim=False)
    assert 28 < m["psnr_bicubic"] < 48
    assert 0.6 < m["ssim_bicubic"] < 1.0
    assert m["consistency_psnr_bicubic"] > 30
