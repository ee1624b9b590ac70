"""SR networks: shapes, parameter counts, ablation switches, discriminators, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxr_monai.networks import (
    EDSR,
    RRDB,
    SRCNN,
    CSABlock,
    CSAEGANGenerator,
    PoolFreeChannelAttention,
    UNetDiscriminatorSN,
    VGGStyleDiscriminator,
    csaegan_full,
    csaegan_lite,
    edsr_lite,
    rrdbnet,
    srcnn,
)
from cxr_monai.networks.sr import count_parameters


pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(num_feat=16, num_block=1, num_grow_ch=8, csa_reduction=4)


def _count(module: torch.nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in module.modules())


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("upsampler", ["nearest_conv", "pixelshuffle"])
def test_generator_shapes_and_range(scale: int, upsampler: str) -> None:
    net = CSAEGANGenerator(scale=scale, upsampler=upsampler, **TINY).eval()
    x = torch.rand(2, 1, 12, 20)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1, 12 * scale, 20 * scale)
    assert y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_full_preset_parameter_count() -> None:
    n_full = count_parameters(csaegan_full())
    n_rrdb = count_parameters(rrdbnet())
    # ESRGAN RRDBNet: 23 blocks, 64 features, growth 32 -> about 16.7 M (1-channel in/out)
    assert 16.6e6 < n_rrdb < 16.75e6
    assert 16.6e6 < n_full < 16.8e6
    assert n_full > n_rrdb  # the CSA block adds parameters


def test_lite_preset_is_small_and_starts_at_bicubic() -> None:
    net = csaegan_lite().eval()
    assert 0.5e6 < count_parameters(net) < 2e6
    x = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        y = net(x)
    bic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(y, bic, atol=1e-6)  # residual over bicubic, zero-initialised last conv


def test_ablation_switches() -> None:
    with_csa = csaegan_lite(**TINY)
    no_csa = csaegan_lite(csa=False, **TINY)
    pooled = csaegan_lite(csa_pooling=True, **TINY)
    per_block = csaegan_lite(csa_placement="rrdb", **{**TINY, "num_block": 3})
    assert _count(with_csa, CSABlock) == 1 and _count(no_csa, CSABlock) == 0
    assert _count(per_block, CSABlock) == 3
    assert count_parameters(no_csa) < count_parameters(with_csa)
    assert pooled.csa.channel.pooling and not with_csa.csa.channel.pooling
    # rrdbnet forces csa=False whatever is passed
    assert _count(rrdbnet(num_block=1, num_feat=16, num_grow_ch=8, csa=True), CSABlock) == 0


def test_pool_free_gate_is_per_pixel_and_pooled_gate_is_per_channel() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 11)
    free = PoolFreeChannelAttention(16, 4, pooling=False)
    pooled = PoolFreeChannelAttention(16, 4, pooling=True)
    g_free, g_pool = free.gate(x), pooled.gate(x)
    assert g_free.shape == (2, 16, 9, 11)
    assert g_pool.shape == (2, 16, 1, 1)
    assert float(g_free.std(dim=(2, 3)).mean()) > 1e-3  # varies over pixels
    assert ((g_free > 0) & (g_free < 1)).all()
    # same parameters: the pooled gate is the pool-free MLP applied to the mean feature
    pooled.load_state_dict(free.state_dict())
    expected = torch.sigmoid(free.fc(x.mean(dim=(2, 3), keepdim=True)))
    assert torch.allclose(pooled.gate(x), expected)


def test_rrdb_keeps_shape_and_scales_the_residual() -> None:
    block = RRDB(16, 8, res_scale=0.2)
    x = torch.randn(1, 16, 10, 10)
    y = block(x)
    assert y.shape == x.shape
    # small init: the dense chain starts near identity, so x + 0.2 * chain(x) is close to 1.2 x (ESRGAN)
    assert float((y - 1.2 * x).abs().mean()) < 0.05 * float(x.abs().mean())


@pytest.mark.parametrize("factory", [srcnn, edsr_lite])
def test_baselines_contract(factory) -> None:
    net = factory().eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 1, 64, 64)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_residual_baselines_start_at_bicubic() -> None:
    x = torch.rand(1, 1, 16, 16)
    bic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    for net in (SRCNN(residual=True).eval(), EDSR(num_feat=8, num_block=1, residual_bicubic=True).eval()):
        with torch.no_grad():
            assert torch.allclose(net(x), bic, atol=1e-6)


def test_discriminators() -> None:
    x = torch.rand(2, 1, 64, 64)
    unet = UNetDiscriminatorSN(num_feat=8)
    out = unet(x)
    assert out.shape == (2, 1, 64, 64)  # per-pixel realness map
    assert any(hasattr(m, "weight_orig") for m in unet.modules())  # spectral norm
    with pytest.raises(ValueError, match="divisible by 8"):
        unet(torch.rand(1, 1, 60, 64))
    for spectral in (False, True):
        vgg = VGGStyleDiscriminator(num_feat=8, num_stages=3, spectral=spectral)
        assert vgg(x).shape == (2, 1)


def test_gradients_flow_through_generator() -> None:
    net = csaegan_lite(**TINY).train()
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 32, 32)
    F.l1_loss(net(x), y).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert net.conv_last.weight.grad.abs().sum() > 0


def test_tiny_generator_learns_a_phantom_patch() -> None:
    """A few Adam steps on one real-looking phantom pair must beat bicubic on it."""
    from cxr_monai.data.phantom import make_phantom
    from cxr_monai.metrics.sr import bicubic_up, degrade, psnr

    torch.manual_seed(0)
    img, _ = make_phantom(size=64, seed=1, noise=False)
    hr = torch.from_numpy(img)[None]
    lr = degrade(hr, 1.0, 4)
    net = csaegan_lite(**TINY)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(40):
        opt.zero_grad()
        F.l1_loss(net.train()(lr), hr).backward()
        opt.step()
    with torch.no_grad():
        sr = net.eval()(lr)
    assert float(psnr(sr, hr)) > float(psnr(bicubic_up(lr), hr))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 3},
        {"upsampler": "deconv"},
        {"csa_placement": "everywhere"},
        {"num_block": 0},
        {"csa_reduction": 128},
        {"residual_bicubic": True, "out_channels": 2},
    ],
)
def test_generator_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CSAEGANGenerator(**{**TINY, **kwargs})


def test_baselines_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SRCNN(kernels=(9, 4, 5))
    with pytest.raises(ValueError):
        EDSR(num_block=0)
    with pytest.raises(ValueError):
        UNetDiscriminatorSN(num_feat=0)


def test_self_ensemble_averages_flipped_passes() -> None:
    from cxr_monai.networks import SelfEnsemble

    torch.manual_seed(0)
    net = csaegan_lite(**TINY).eval()
    with torch.no_grad():
        net.conv_last.weight.normal_(0, 0.1)
        x = torch.rand(1, 1, 8, 10)
        expected = torch.stack([net(x), net(x.flip(-1)).flip(-1), net(x.flip(-2)).flip(-2),
                                net(x.flip(-2, -1)).flip(-2, -1)]).mean(0)
        assert torch.allclose(SelfEnsemble(net)(x), expected, atol=1e-6)
        assert SelfEnsemble(net, transpose=True)(x).shape == (1, 1, 32, 40)
        # a flip-equivariant map (bicubic) is unchanged by the ensemble
        bic_net = csaegan_lite(**TINY).eval()
        assert torch.allclose(SelfEnsemble(bic_net)(x), bic_net(x), atol=1e-6)
