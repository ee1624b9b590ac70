"""GAN networks (SAGAN, DCGAN), the adversarial losses they train with, the GAN engine and the
generative metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from torch import nn

from cxr_monai.engines.gan import (
    ConditionalGANTrainer,
    GANSampleGrid,
    generate,
    sample_grid,
    update_ema,
)
from cxr_monai.losses import bce_d_loss, bce_g_loss, hinge_d_loss, hinge_g_loss
from cxr_monai.metrics.generative import (
    class_matched_indices,
    generative_report,
    ClassifierFeatures,
    discriminator_report,
    fid,
    kid,
    knn_precision_recall,
    mmd,
    nearest_real_ssim,
    paired_ssim_mse,
    ssim_pairs,
)
from cxr_monai.networks import (
    ConditionalBatchNorm2d,
    DCGANDiscriminator,
    DCGANGenerator,
    SAGANDiscriminator,
    SAGANGenerator,
    SelfAttention2d,
    bake_spectral_norm,
    has_spectral_norm,
    sagan_discriminator,
    sagan_generator,
)

WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)


def _weighted_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in net.named_modules() if isinstance(m, WEIGHTED)]


def _phantoms(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    from cxr_monai.data.phantom import make_phantom

    return torch.stack([torch.from_numpy(make_phantom(size, seed=seed + i, noise=False)[0]) for i in range(n)])


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize("img_size", [64, 128])
def test_sagan_shapes_range_and_class_conditioning(img_size):
    torch.manual_seed(0)
    g, d = sagan_generator("tiny", img_size), sagan_discriminator("tiny", img_size)
    z, y = torch.randn(2, 128), torch.tensor([0, 1])
    x = g(z, y)
    assert x.shape == (2, 1, img_size, img_size) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    logits = d(x, y)
    assert logits.shape == (2,)
    # the class changes the image (conditional BN) and the critic's score (projection)
    g.eval()
    d.eval()
    with torch.no_grad():
        a, b = g(z[:1], torch.tensor([0])), g(z[:1], torch.tensor([1]))
        for m in g.modules():  # make the class embeddings differ, as training would
            if isinstance(m, ConditionalBatchNorm2d):
                m.embed.weight[1].mul_(1.5)
        b = g(z[:1], torch.tensor([1]))
        assert not torch.allclose(a, b)
        assert not torch.allclose(d(a, torch.tensor([0])), d(a, torch.tensor([1])))


@pytest.mark.parametrize("factory", [sagan_generator, sagan_discriminator])
def test_spectral_norm_on_every_layer(factory):
    net = factory("tiny", 64)
    layers = _weighted_layers(net)
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    assert len(convs) >= 10 and len(linears) == 1
    # every conv and linear layer (and the projection embedding of D) is spectrally normalised
    for name, m in layers:
        if isinstance(m, nn.Embedding) and isinstance(net, SAGANGenerator):
            continue  # conditional-BN gain/bias tables are not weight layers (SAGAN/BigGAN leave them plain)
        assert has_spectral_norm(m), f"{type(net).__name__}.{name} lacks spectral norm"
    if isinstance(net, SAGANDiscriminator):
        assert has_spectral_norm(net.embed)
    # and the normalised weights really have spectral norm ~1 once the power iteration has converged
    # (in training mode every access of .weight runs one power iteration, as every forward pass does)
    net.train()
    for layer in (net.linear, net.blocks[1].conv1):
        for _ in range(30):
            w = layer.weight
        sigma = torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.05


def test_plain_variant_has_no_spectral_norm_and_bake_matches():
    torch.manual_seed(0)
    g = sagan_generator("tiny", 64).eval()
    plain = sagan_generator("tiny", 64, spectral_norm=False).eval()
    assert not any(has_spectral_norm(m) for _, m in _weighted_layers(plain))
    z, y = torch.randn(4, 128), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        ref = g(z, y)
        plain.load_state_dict(bake_spectral_norm(g).state_dict())
        torch.testing.assert_close(plain(z, y), ref, rtol=1e-4, atol=1e-5)
    scripted = torch.jit.script(plain)
    torch.testing.assert_close(scripted(z, y), ref, rtol=1e-4, atol=1e-5)


def test_self_attention_shape_gamma_init_and_identity():
    attn = SelfAttention2d(16)
    assert float(attn.gamma) == 0.0 and attn.gamma.requires_grad
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(attn(x), x)  # gamma = 0: identity at init
    a = attn.attention_map(x)
    assert a.shape == (2, 64, 16)  # queries over all 8x8 positions, keys max-pooled to 4x4
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 64))
    with torch.no_grad():
        attn.gamma.fill_(1.0)
    out = attn(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert SelfAttention2d(16, pool=False).attention_map(x).shape == (2, 64, 64)
    with pytest.raises(ValueError):
        SelfAttention2d(12)


def test_generators_place_attention_where_asked():
    g = SAGANGenerator(img_size=64, base_channels=8, attn_resolution=32)
    seen = []
    g.attention.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    g(torch.randn(2, 128), torch.tensor([0, 1]))
    assert seen == [(2, 16, 32, 32)]
    assert float(g.attention.gamma) == 0.0
    d = SAGANDiscriminator(img_size=128, base_channels=8, attn_resolution=32)
    seen.clear()
    d.attention.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    d(torch.rand(2, 1, 128, 128), torch.tensor([0, 1]))
    assert seen == [(2, 16, 32, 32)]


@pytest.mark.parametrize("kwargs", [{"img_size": 48}, {"img_size": 8}, {"attn_resolution": 128}, {"base_channels": 4}])
def test_sagan_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SAGANGenerator(**kwargs)


def test_dcgan_matches_the_seed_architecture():
    g = DCGANGenerator()  # the seed: noise 100, 128x128, unconditional
    assert g.dense.in_features == 100 and g.dense.out_features == 32 * 32 * 256
    convt = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride) for m in convt] == [((4, 4), (2, 2))] * 2
    assert sum(isinstance(m, nn.LeakyReLU) for m in g.modules()) == 3
    last = [m for m in g.modules() if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d)][-1]
    assert last.kernel_size == (4, 4) and last.out_channels == 1
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 1, 128, 128) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    d = DCGANDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 128, 256] and all(m.kernel_size == (3, 3) for m in convs)
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.4]
    assert d(x).shape == (2,)
    # conditional variant (the budget-matched baseline): one model, both classes
    gc, dc = DCGANGenerator(img_size=64, num_classes=2), DCGANDiscriminator(img_size=64, num_classes=2)
    y = torch.tensor([0, 1])
    assert dc(gc(torch.randn(2, 100), y), y).shape == (2,)
    with pytest.raises(ValueError):
        gc(torch.randn(2, 100))


# ---------------------------------------------------------------- losses
def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1, 2] -> 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0 / 3)
    # a perfect, confident critic has zero hinge loss
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0
    # BCE (DCGAN) losses at logit 0: log 2 per term
    z = torch.zeros(5)
    assert bce_d_loss(z, z).item() == pytest.approx(2 * np.log(2), rel=1e-6)
    assert bce_g_loss(z).item() == pytest.approx(np.log(2), rel=1e-6)


# ---------------------------------------------------------------- engine pieces
def test_update_ema_moves_towards_model_and_copies_buffers():
    a, b = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    with torch.no_grad():
        a.weight.fill_(0.0)
        b.weight.fill_(1.0)
        b.running_mean.fill_(3.0)
    update_ema(a, b, 0.9)
    torch.testing.assert_close(a.weight, torch.full((2,), 0.1))
    torch.testing.assert_close(a.running_mean, torch.full((2,), 3.0))


def test_generate_is_reproducible_and_batch_independent():
    torch.manual_seed(0)
    g = sagan_generator("tiny", 64)
    a, ya = generate(g, 5, 1, seed=7, batch_size=2)
    b, _ = generate(g, 5, 1, seed=7, batch_size=5)
    c, _ = generate(g, 5, 1, seed=8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert ya.tolist() == [1] * 5 and a.shape == (5, 1, 64, 64)
    grid = sample_grid(a, nrow=3)
    assert grid.shape == (1, 2 * 66 + 2, 3 * 66 + 2)


def test_trainer_iteration_updates_both_networks_and_ema(tmp_path):
    torch.manual_seed(0)
    g, d = sagan_generator("tiny", 32, attn_resolution=16), sagan_discriminator("tiny", 32, attn_resolution=16)
    images = _phantoms(8, 32)
    labels = torch.tensor([0, 1] * 4)
    loader = torch.utils.data.DataLoader([{"image": images[i], "label": labels[i]} for i in range(8)], batch_size=4)
    g0 = [p.detach().clone() for p in g.parameters()]
    d0 = [p.detach().clone() for p in d.parameters()]
    trainer = ConditionalGANTrainer(
        "cpu", 1, loader, g, torch.optim.Adam(g.parameters(), 1e-4, betas=(0.0, 0.9)),
        d, torch.optim.Adam(d.parameters(), 4e-4, betas=(0.0, 0.9)), n_critic=2, ema_decay=0.5,
        train_handlers=[GANSampleGrid(per_class=2, output_dir=str(tmp_path))])
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    assert len(outputs) == 2
    assert np.isnan(outputs[0]["g_loss"]) and np.isfinite(outputs[1]["g_loss"])  # G every 2nd iteration
    assert all(np.isfinite(o["d_loss"]) and o["d_loss"] >= 0 for o in outputs)
    assert any(not torch.equal(p, q) for p, q in zip(g0, g.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(d0, d.parameters()))
    ema_p = next(trainer.ema_network.parameters())
    assert not torch.equal(ema_p, next(g.parameters())) and not torch.equal(ema_p, g0[0])
    assert (tmp_path / "samples_epoch=1.png").is_file()
    with pytest.raises(ValueError):
        ConditionalGANTrainer("cpu", 1, loader, g, None, d, None, n_critic=0)


# ---------------------------------------------------------------- metrics
def test_fid_kid_mmd_separate_distributions():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    c = torch.randn(300, 8, generator=gen, dtype=torch.float64) + 1.5
    assert fid(a, b) < 0.5 < 5.0 < fid(a, c)
    assert abs(kid(a, b, 20, 200)[0]) < 0.05 < kid(a, c, 20, 200)[0]
    assert abs(mmd(a, b)) < 0.05 < mmd(a, c)


def test_knn_precision_recall_detect_mode_collapse():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=gen, dtype=torch.float64)
    good = torch.randn(400, 4, generator=gen, dtype=torch.float64)
    collapsed = 0.05 * torch.randn(400, 4, generator=gen, dtype=torch.float64)  # all near the mean
    off = torch.randn(400, 4, generator=gen, dtype=torch.float64) + 6.0
    p, r = knn_precision_recall(real, good)
    assert p > 0.8 and r > 0.8
    p, r = knn_precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.3
    p, r = knn_precision_recall(real, off)
    assert p < 0.05 and r < 0.05


def test_ssim_and_memorisation_on_phantoms():
    real = _phantoms(12, 48)
    same = ssim_pairs(real, real)
    torch.testing.assert_close(same, torch.ones(12, dtype=torch.float64))
    noisy = (real + 0.3 * torch.randn_like(real)).clamp(0, 1)
    assert float(ssim_pairs(real, noisy).mean()) < 0.9
    # a "generator" that copies real images 3 and 7 (slightly noised) and invents two others
    fake = torch.cat([(real[[3, 7]] + 0.002 * torch.randn(2, 1, 48, 48)).clamp(0, 1), torch.rand(2, 1, 48, 48)])
    best, idx = nearest_real_ssim(fake, real, candidates=4)
    assert idx[:2].tolist() == [3, 7] and bool((best[:2] > 0.95).all()) and bool((best[2:] < 0.5).all())
    exhaustive, _ = nearest_real_ssim(fake, real, candidates=100)
    torch.testing.assert_close(best, exhaustive)
    s, m = paired_ssim_mse(real, real[torch.randperm(12)])
    assert 0 < s <= 1 and 0 <= m < 0.2


def test_generative_report_reuses_precomputed_features():
    real, fake = _phantoms(10, 32, seed=0), _phantoms(6, 32, seed=1)
    calls = []

    def extractor(x):
        calls.append(x.shape[0])
        return torch.cat([x.mean(dim=(1, 2, 3))[:, None], x.std(dim=(1, 2, 3))[:, None]], 1)

    direct = generative_report(fake, real, extractor, kid_subset_size=4, nearest_candidates=4)
    assert sum(calls) == 16
    calls.clear()
    reused = generative_report(fake, real, extractor, kid_subset_size=4, nearest_candidates=4,
                               real_features=extractor(real).double(), fake_features=extractor(fake).double())
    assert sum(calls) == 16  # only the two calls made here, none inside
    assert reused == pytest.approx(direct)
    with pytest.raises(ValueError, match="real_features has 3 rows for 10 images"):
        generative_report(fake, real, extractor, real_features=torch.zeros(3, 2))


def test_class_matched_indices_follow_the_generated_class_mix():
    real = torch.tensor([0] * 30 + [1] * 90)  # 25 % class 0, like Kermany's NORMAL share
    fake = torch.tensor([0] * 8 + [1] * 8)  # balanced generated set
    keep = class_matched_indices(real, fake, seed=0)
    assert (real[keep] == 0).sum() == 30 and (real[keep] == 1).sum() == 30  # all of the scarce class
    assert keep.unique().numel() == keep.numel()
    assert torch.equal(keep, class_matched_indices(real, fake, seed=0))
    assert not torch.equal(keep, class_matched_indices(real, fake, seed=1))
    keep = class_matched_indices(real, torch.tensor([0, 1, 1, 1]))  # 1:3 mix -> the real set as it is
    assert keep.numel() == 120
    with pytest.raises(ValueError, match="no real image"):
        class_matched_indices(real, torch.tensor([0, 2]))


def test_pooled_fid_is_not_moved_by_the_class_ratio(tmp_path):
    # two well separated "classes" in feature space; a perfect generator makes a balanced set of both
    gen = torch.Generator().manual_seed(0)
    real_labels = torch.tensor([0] * 60 + [1] * 180)
    fake_labels = torch.tensor([0] * 64 + [1] * 64)

    def images(labels):  # class 0 dark, class 1 bright, with noise
        base = 0.25 + 0.5 * labels.float()[:, None, None, None]
        return (base + 0.05 * torch.randn(labels.numel(), 1, 16, 16, generator=gen)).clamp(0, 1)

    real = images(real_labels)

    class PerfectG(nn.Module):
        latent_dim = 4

        def forward(self, z, y):
            return images(y)

    def extractor(x):
        return torch.cat([x.mean(dim=(1, 2, 3))[:, None], x.std(dim=(1, 2, 3))[:, None]], 1)

    from cxr_monai.metrics.synthesis import evaluate_generator
    from cxr_monai.metrics.generative import fid

    rep = evaluate_generator(PerfectG(), real, real_labels, tmp_path, extractor, num_per_class=64,
                             kid_subset_size=32, nearest_candidates=2)
    naive = fid(extractor(real).double(), extractor(images(fake_labels)).double())
    assert rep["all"]["num_real"] == 120
    assert rep["all"]["fid"] < 0.2 * naive  # the unmatched pooled FID is dominated by the 25/75 vs 50/50 mix


def test_discriminator_report_values():
    rep = discriminator_report(torch.tensor([2.0, 1.0, -1.0, 3.0]), torch.tensor([-2.0, -1.0, 0.5, -3.0]))
    # real predicted: 3 of 4 real + 1 fake -> precision 3/4, recall 3/4, accuracy 6/8
    assert rep == {"d_accuracy": 0.75, "d_precision": 0.75, "d_recall": 0.75}


def test_classifier_features_resizes_and_normalises():
    class Net(nn.Module):
        def features(self, x):
            assert x.shape[-2:] == (40, 40) and float(x.min()) >= 0 and float(x.max()) <= 1
            return x.mean(dim=(2, 3))

    ext = ClassifierFeatures(Net(), input_size=40)
    f = ext(0.5 * torch.rand(3, 1, 24, 24))
    assert f.shape == (3, 1)
    with pytest.raises(ValueError):
        ClassifierFeatures(nn.Identity(), method="features")


def test_class_fidelity_counts_agreement_with_the_classifier():
    """Class fidelity = share of class-c samples the trained classifier labels c (same figure on real images)."""
    from cxr_monai.metrics.generative import class_fidelity

    class Bright(nn.Module):  # "PNEUMONIA" (1) when the mean intensity after normalisation is high
        def features(self, x):
            return x.mean(dim=(2, 3))

        def forward(self, x):
            m = self.features(x)
            return torch.cat([0.5 - m, m - 0.5], 1) * 20

    ext = ClassifierFeatures(Bright(), input_size=None, normalise=False)
    dark, bright = 0.2 * torch.ones(6, 1, 8, 8), 0.8 * torch.ones(4, 1, 8, 8)
    images = torch.cat([dark, bright, bright[:2]])
    labels = torch.tensor([0] * 6 + [1] * 4 + [0] * 2)  # two "NORMAL" images look like PNEUMONIA
    out = class_fidelity(images, labels, ext, ("NORMAL", "PNEUMONIA"))
    assert out == {"NORMAL": pytest.approx(6 / 8), "PNEUMONIA": 1.0}
    with pytest.raises(ValueError):
        class_fidelity(images, labels, ClassifierFeatures(nn.Identity(), method=None), ("NORMAL", "PNEUMONIA"))
