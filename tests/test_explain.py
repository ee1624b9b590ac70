"""Tests for cxr_monai.explain: Grad-CAM orientation and normalisation, the mass-share metric, overlays, and an
end-to-end explainability check (a tiny classifier trained on phantoms looks at the consolidation).

End-to-end recipe and why each piece is there (see ``test_gradcam_mass_falls_inside_the_consolidation``):

* Paired phantoms: every training seed is rendered with and without a consolidation. The phantom's anatomy,
  consolidation and noise use independent random streams, so the pair differs only in and around the lesion
  (checked below): the lesion is the only cue the classifier can learn, there is no global shortcut. Each
  batch holds both renderings of its seeds, which shortens the initial loss plateau (finding a 1 % lesion
  from scratch) from 8-10 to 3-5 epochs and makes the run robust to the training seed.
* Resolution: the consolidation mask is about 7 px across in a 64 px phantom (~1 % of the image), so the
  explained layer must be fine. A ResNet18SA with a stride-1 stem and no stem pool has ``layer4`` at stride 8
  (an 8x8 map); with the standard stem it would be 2x2-4x4 and cannot localise anything this small.
* Global max pooling instead of average pooling (the weakly supervised localisation head of Oquab et al.,
  CVPR 2015): a NORMAL image must score low *everywhere*, so the evidence features become lesion-specific.
* Zero-initialised linear head: cross-entropy only trains the logit difference; the common-mode part
  ``(w_NORMAL + w_PNEUMONIA) / 2`` of the head keeps its random initial value forever (SGD and Adam updates of
  the two rows are exactly opposite) and adds label-free structure to the PNEUMONIA map. Zero init removes it.
* BatchNorm re-estimation after training: with ~200 Adam steps the momentum-0.1 running statistics lag the
  weights; in eval mode the held-out NORMAL phantoms were then called PNEUMONIA.
* Region: the mask dilated by one ``layer4`` cell (8 px). The mask is where the consolidation's occupancy
  exceeds 0.5; its soft rim still brightens the image up to ~6 px beyond it (20-30 % of the added density lies
  outside the mask), and nothing changes beyond 8 px. The map is 8x8, bilinearly upsampled, so it cannot
  place mass more finely than a cell; moreover MONAI's upsampler (``align_corners=False``) centres cell ``j`` at
  pixel ``8 j + 3.5`` while the network's stride-2 "same" convolutions centre its receptive field at ``8 j``,
  a systematic shift of ~3.5 px down-right. The mass share must also be far above the region's area share.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation
from torch import nn

from cxr_monai.data.phantom import make_phantom
from cxr_monai.explain import cam_mass_inside, gradcam, minmax_normalize, save_overlay
from cxr_monai.networks import ResNet18SA


@pytest.fixture
def one_thread():
    """Run on one CPU thread (deterministic and fair on a shared 2-core runner), restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ unit tests
def test_minmax_normalize_keeps_orientation():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 2.0]], [[4.0, 4.0], [4.0, 4.0]]])[:, None]  # (2, 1, 2, 2)
    out = minmax_normalize(maps)
    assert out.shape == maps.shape
    np.testing.assert_allclose(out[0, 0].numpy(), [[0.0, 0.5], [1.0, 0.25]])  # max -> 1, min -> 0 (not flipped)
    assert torch.all(out[1] == 0)  # a constant map carries no localisation


def test_cam_mass_inside():
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0], cam[3, 3] = 3.0, 1.0
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    assert cam_mass_inside(cam, mask) == pytest.approx(0.75)
    assert cam_mass_inside(cam, ~mask) == pytest.approx(0.25)
    assert cam_mass_inside(np.zeros((4, 4)), mask) == 0.0


class _BrightSpotNet(nn.Module):
    """Fixed weights: a 3x3 box filter and ReLU (``feat``), global average pooling, logits ``(-m, +m)``.

    Its class-1 evidence is exactly the brightness of the input, so its Grad-CAM for class 1 is the box-filtered
    image (up to scale) and its Grad-CAM for class 0 is empty.
    """

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1.0 / 9.0)
        self.feat = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.feat(x)), 1))


def test_gradcam_points_at_the_evidence_not_away_from_it(one_thread):
    """MONAI's default GradCAM post-processing maps (min, max) to (1, 0); the maps must not come out inverted."""
    net = _BrightSpotNet().eval()
    image = torch.zeros(2, 1, 32, 32)
    image[0, 0, 6:12, 20:26] = 1.0
    image[1, 0, 22:28, 4:10] = 1.0
    spot = image[:, 0].numpy() > 0.5
    cams = gradcam(net, image, "feat", class_idx=1)
    assert cams.shape == (2, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    for cam, m in zip(cams, spot):
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        assert m[peak], "Grad-CAM peak is not on the evidence (inverted map?)"
        assert cam_mass_inside(cam, binary_dilation(m, iterations=1)) > 0.9
    assert np.all(gradcam(net, image, "feat", class_idx=0) == 0)  # no evidence for class 0 anywhere
    pred = gradcam(net, image, "feat", class_idx=None)  # predicted class: 1 (logit +mean brightness)
    np.testing.assert_allclose(pred, cams, atol=1e-6)


def test_save_overlay_writes_png(tmp_path):
    img = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    path = save_overlay(img, img[0], tmp_path / "sub" / "o.png", title="PNEUMONIA p=0.9")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ end to end
SIZE = 64  # phantom side; the consolidation mask is ~1 % of the image (~7 px across)
N_TRAIN_SEEDS = 60  # each seed rendered with and without a consolidation: 120 training images
N_HELD_OUT = 12  # held-out seeds (disjoint from training), each with and without a consolidation
EPOCHS = 14
PAIRS_PER_BATCH = 4  # a batch holds both renderings of 4 seeds: its gradient is the lesion's, nothing else
TRAIN_SEED = 0
TARGET_LAYER, STRIDE = "layer4", 8  # stride-1 stem, no stem pool, three stride-2 stages
MARGIN_PX = STRIDE  # region = lesion mask dilated by one CAM cell


def _tiny_classifier() -> ResNet18SA:
    """A 40 k-parameter ResNet18SA (one block per stage) with a global-max-pool head, zero-initialised."""
    net = ResNet18SA(in_channels=1, num_classes=2, widths=(8, 16, 32, 32), blocks=(1, 1, 1, 1), attention=True,
                     dropout=0.2, stem_stride=1, stem_pool=False)
    net.pool = nn.AdaptiveMaxPool2d(1)
    nn.init.zeros_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)
    return net


def _pairs(seeds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phantoms of ``seeds`` without and with a consolidation, and the consolidation masks: (N, 1, H, W) each."""
    normal, pneumonia, masks = [], [], []
    for s in seeds:
        normal.append(make_phantom(SIZE, seed=s, consolidation=False)[0])
        img, mask = make_phantom(SIZE, seed=s, consolidation=True)
        pneumonia.append(img)
        masks.append(mask)
    return np.stack(normal), np.stack(pneumonia), np.stack(masks)


def _recalibrate_batchnorm(net: nn.Module, images: torch.Tensor, batch: int = 40) -> None:
    """Replace the BatchNorm running statistics by exact averages over ``images`` under the final weights."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net(images[i:i + batch])
    net.eval()


@pytest.mark.slow
def test_gradcam_mass_falls_inside_the_consolidation(one_thread, tmp_path):
    t0 = time.perf_counter()
    torch.manual_seed(TRAIN_SEED)
    normal, pneumonia, masks = _pairs(range(N_TRAIN_SEEDS))
    # premise: a pair differs only at its consolidation (no global cue such as a brightness change elsewhere);
    # the soft rim of the opacity reaches up to ~6 px beyond the mask (occupancy > 0.5) at this size
    far = ~np.stack([binary_dilation(m[0], iterations=MARGIN_PX) for m in masks])[:, None]
    assert np.abs(pneumonia - normal)[far].max() < 1e-3
    ho_normal, ho_pneumonia, ho_masks = _pairs(range(10_000, 10_000 + N_HELD_OUT))
    t_data = time.perf_counter() - t0

    x = torch.from_numpy(np.concatenate([normal, pneumonia]))
    y = torch.tensor([0] * len(normal) + [1] * len(pneumonia))
    net = _tiny_classifier()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    n = len(normal)
    for _ in range(EPOCHS):
        net.train()
        epoch_loss = 0.0
        seeds = torch.randperm(n, generator=gen)
        for i in range(0, n, PAIRS_PER_BATCH):
            pick = seeds[i:i + PAIRS_PER_BATCH]
            idx = torch.cat([pick, pick + n])  # the same chests without and with a consolidation
            flip = (torch.rand(len(pick), generator=gen) < 0.5).repeat(2)  # mirror a pair alike
            xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx])
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss += loss.item() * len(idx) / (2 * n)
    _recalibrate_batchnorm(net, x)
    t_train = time.perf_counter() - t0 - t_data

    # the classifier works on held-out phantoms
    with torch.no_grad():
        pred_normal = net(torch.from_numpy(ho_normal)).argmax(1)
        pred_pneumonia = net(torch.from_numpy(ho_pneumonia)).argmax(1)
    acc = 0.5 * ((pred_normal == 0).float().mean() + (pred_pneumonia == 1).float().mean()).item()
    assert acc >= 0.85, f"held-out balanced accuracy {acc:.2f}"

    # Grad-CAM for PNEUMONIA on the held-out consolidations
    cams = gradcam(net, torch.from_numpy(ho_pneumonia), TARGET_LAYER, class_idx=1)
    lesion = ho_masks[:, 0]
    region = np.stack([binary_dilation(m, iterations=MARGIN_PX) for m in lesion])
    inside = np.array([cam_mass_inside(c, r) for c, r in zip(cams, region)])
    area = region.mean(axis=(1, 2))
    inside_mask = np.array([cam_mass_inside(c, m) for c, m in zip(cams, lesion)])
    cams_normal = gradcam(net, torch.from_numpy(ho_pneumonia), TARGET_LAYER, class_idx=0)
    inside_normal = np.array([cam_mass_inside(c, r) for c, r in zip(cams_normal, region)])
    for k in range(3):  # for a look when it fails
        save_overlay(ho_pneumonia[k], cams[k], tmp_path / f"gradcam_{k}.png", title=f"in region {inside[k]:.2f}")
    report = (f"mass in region (mask + {MARGIN_PX} px) mean {inside.mean():.3f} (min {inside.min():.3f}), "
              f"region area {area.mean():.3f}; mass in bare mask {inside_mask.mean():.3f}, mask area "
              f"{lesion.mean():.4f}; NORMAL-class map in region {inside_normal.mean():.3f}; acc {acc:.2f}; "
              f"last-epoch loss {epoch_loss:.3f}; "
              f"data {t_data:.0f} s, train {t_train:.0f} s; overlays in {tmp_path}")
    print(report)
    assert inside.mean() > 0.5, report  # most of the mass is on the lesion
    assert inside.mean() >= 5 * area.mean(), report  # far above chance (the region's area share)
    assert np.all(inside > 2 * area), report  # every held-out case points at its lesion
    assert inside_mask.mean() >= 5 * lesion.mean(), report  # also on the bare mask
    assert inside_normal.mean() < area.mean(), report  # the NORMAL map avoids the lesion: the class index matters


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules())


def test_gradcam_leaves_no_hooks_behind(one_thread):
    """A server calls gradcam() once per request: MONAI's GradCAM registers hooks it never removes."""
    torch.manual_seed(0)
    net = ResNet18SA(in_channels=1, num_classes=2, widths=(4, 8, 8, 8)).eval()
    before = _hook_count(net)
    x = torch.rand(1, 1, 64, 64)
    first = gradcam(net, x, "layer4")
    for _ in range(3):
        again = gradcam(net, x, "layer4")
    assert _hook_count(net) == before
    np.testing.assert_allclose(again, first, atol=1e-6)
    # the network still works normally afterwards (no stale hook keeps activations)
    with torch.no_grad():
        assert net(x).shape == (1, 2)
