"""Latent GANs for class-conditional CXR synthesis: SAGAN ("Double SGAN") and the DCGAN seed baseline.

All generators map a latent vector (and a class index) to a (N, 1, H, W) image in [0, 1] (the project's
image contract: ``(tanh + 1) / 2`` at the output); all discriminators take such images (and the class
index) and return raw logits of shape (N,).

SAGAN (Zhang et al. 2019, with the SN-GAN projection discriminator of Miyato & Koyama 2018):
spectral normalisation on every convolution, linear and embedding layer of both networks, a self-attention
layer whose residual weight ``gamma`` starts at 0, class-conditional batch normalisation in the generator
and a projection term in the discriminator, trained with the hinge loss
(:func:`cxr_monai.losses.hinge_d_loss`). ``spectral_norm=False`` builds the same topology with plain layers:
used for export, after :func:`bake_spectral_norm` has folded the normalisation into the weights.

DCGAN (the 2024 CXR GAN seed): noise 100 -> dense -> (S/4)x(S/4)x256 -> two 4x4 stride-2 transposed convs
with LeakyReLU -> 4x4 conv, tanh; discriminator 64/128/128/256 3x3 convs (the last three stride 2) with
LeakyReLU, dropout 0.4 and a single logit (the seed's sigmoid is folded into the BCE-with-logits loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = [
    "SelfAttention2d",
    "ConditionalBatchNorm2d",
    "SAGANGeneratorBlock",
    "SAGANDiscriminatorBlock",
    "SAGANGenerator",
    "SAGANGeneratorPackedInput",
    "SAGANDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "sagan_generator",
    "sagan_discriminator",
    "has_spectral_norm",
    "bake_spectral_norm",
    "SAGAN_PRESETS",
]

# base channel width of the SAGAN presets (widths double per halving of resolution, capped at 16x base)
SAGAN_PRESETS: dict[str, int] = {"tiny": 8, "lite": 16, "base": 32, "full": 64}


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap ``module`` in spectral normalisation (one power iteration per training step) when enabled."""
    return _spectral_norm(module) if enabled else module


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether ``module``'s ``weight`` is spectrally normalised (parametrised or legacy hook form)."""
    if parametrize.is_parametrized(module, "weight"):
        return any(type(p).__name__ == "_SpectralNorm" for p in module.parametrizations["weight"])
    return hasattr(module, "weight_orig") and hasattr(module, "weight_u")


def bake_spectral_norm(module: nn.Module) -> nn.Module:
    """Fold spectral normalisation into plain weights, in place (for export and fast inference).

    The state dict of the result loads into the same network built with ``spectral_norm=False``.
    Call it on a network in ``eval()`` mode so that no further power iteration changes the estimate.
    """
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module


def _widths(num_levels: int, base: int) -> list[int]:
    """Channel widths from the finest (index 0, ``base``) to the coarsest level, capped at ``16 * base``."""
    return [base * min(2**i, 16) for i in range(num_levels)]


def _check_size(img_size: int) -> int:
    """Number of 2x levels between 4x4 and ``img_size`` (a power of two >= 16)."""
    levels = int(round(math.log2(img_size))) - 2 if img_size > 0 else -1
    if img_size < 16 or 2 ** (levels + 2) != img_size:
        raise ValueError(f"img_size must be a power of two >= 16, got {img_size}")
    return levels


class SelfAttention2d(nn.Module):
    """SAGAN self-attention over the positions of a feature map, ``x + gamma * o(softmax(f^T g) h)``.

    Query/key use ``channels // 8`` channels, the value ``channels // 2``; keys and values are max-pooled
    2x (as in BigGAN's SAGAN layer) which cuts the cost of the attention matrix by 4. ``gamma`` is a learned
    scalar initialised to 0, so the layer starts as the identity and the network learns how much
    non-local evidence to mix in.

    Args:
        channels: input (= output) channels; a multiple of 8.
        spectral_norm: spectrally normalise the four 1x1 convolutions.
        pool: max-pool keys and values 2x (needs even H and W).
    """

    def __init__(self, channels: int, spectral_norm: bool = True, pool: bool = True) -> None:
        super().__init__()
        if channels < 8 or channels % 8:
            raise ValueError(f"channels must be a positive multiple of 8, got {channels}")
        self.channels = channels
        self.pool = pool
        self.query = _sn(nn.Conv2d(channels, channels // 8, 1, bias=False), spectral_norm)
        self.key = _sn(nn.Conv2d(channels, channels // 8, 1, bias=False), spectral_norm)
        self.value = _sn(nn.Conv2d(channels, channels // 2, 1, bias=False), spectral_norm)
        self.out = _sn(nn.Conv2d(channels // 2, channels, 1, bias=False), spectral_norm)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, H*W, H*W') of every query position over the (pooled) key positions."""
        n, _, h, w = x.shape
        q = self.query(x).reshape(n, self.channels // 8, h * w)
        k = self.key(x)
        if self.pool:
            k = F.max_pool2d(k, 2)
        k = k.reshape(n, self.channels // 8, -1)
        return torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        attn = self.attention_map(x)
        v = self.value(x)
        if self.pool:
            v = F.max_pool2d(v, 2)
        v = v.reshape(n, self.channels // 2, -1)
        o = torch.bmm(v, attn.transpose(1, 2)).reshape(n, self.channels // 2, h, w)
        return x + self.gamma * self.out(o)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose affine scale and shift are looked up per class (SAGAN/BigGAN generator).

    Args:
        num_features: channels.
        num_classes: classes; 0 gives an ordinary (unconditional) affine batch norm.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, affine=num_classes == 0)
        self.embed = nn.Embedding(max(num_classes, 1), 2 * num_features)
        with torch.no_grad():
            self.embed.weight[:, :num_features].fill_(1.0)
            self.embed.weight[:, num_features:].zero_()

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.bn(x)
        if self.num_classes == 0 or y is None:
            return out
        gamma, beta = self.embed(y).chunk(2, dim=1)
        return out * gamma[:, :, None, None] + beta[:, :, None, None]


class SAGANGeneratorBlock(nn.Module):
    """Residual up-sampling block: CBN-ReLU-up2x-conv3x3-CBN-ReLU-conv3x3, shortcut up2x-conv1x1.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        num_classes: classes of the conditional batch norms (0: unconditional).
        spectral_norm: spectrally normalise the convolutions.
    """

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, spectral_norm: bool = True) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_ch, num_classes)
        self.conv1 = _sn(nn.Conv2d(in_ch, out_ch, 3, padding=1), spectral_norm)
        self.bn2 = ConditionalBatchNorm2d(out_ch, num_classes)
        self.conv2 = _sn(nn.Conv2d(out_ch, out_ch, 3, padding=1), spectral_norm)
        self.shortcut = _sn(nn.Conv2d(in_ch, out_ch, 1), spectral_norm)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SAGANDiscriminatorBlock(nn.Module):
    """Residual discriminator block (SN-GAN): [ReLU]-conv3x3-ReLU-conv3x3-[avgpool2], learned 1x1 shortcut.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        downsample: average-pool 2x at the end of both paths.
        preactivation: apply ReLU before the first conv (False for the block that sees the image).
        spectral_norm: spectrally normalise the convolutions.
    """

    def __init__(self, in_ch: int, out_ch: int, downsample: bool = True, preactivation: bool = True,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = _sn(nn.Conv2d(in_ch, out_ch, 3, padding=1), spectral_norm)
        self.conv2 = _sn(nn.Conv2d(out_ch, out_ch, 3, padding=1), spectral_norm)
        self.shortcut = _sn(nn.Conv2d(in_ch, out_ch, 1), spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        s = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.preactivation:  # SN-GAN: conv then pool in inner blocks, pool then conv on the image block
            s = self.shortcut(s)
            if self.downsample:
                s = F.avg_pool2d(s, 2)
        else:
            if self.downsample:
                s = F.avg_pool2d(s, 2)
            s = self.shortcut(s)
        return h + s


class SAGANGenerator(nn.Module):
    """Class-conditional SAGAN generator for single-channel radiographs.

    z (N, latent_dim) -> SN-linear -> 4x4 x C -> log2(img_size/4) residual up-blocks with class-conditional
    batch norm (self-attention after the block that reaches ``attn_resolution``) -> BN-ReLU-SN-conv3x3 ->
    ``(tanh + 1) / 2``: a (N, out_channels, img_size, img_size) image in [0, 1].

    Args:
        latent_dim: length of the latent vector.
        num_classes: number of classes (0: unconditional).
        img_size: output side, a power of two >= 16 (64 and 128 are the intended sizes).
        base_channels: channels of the last block; widths double towards 4x4 (capped at 16x).
        out_channels: image channels.
        attn_resolution: feature-map side at which the self-attention layer sits (0 disables it).
        spectral_norm: spectral normalisation on every conv and linear layer (``False`` only for export).
    """

    def __init__(
        self,
        latent_dim: int = 128,
        num_classes: int = 2,
        img_size: int = 64,
        base_channels: int = 32,
        out_channels: int = 1,
        attn_resolution: int = 32,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        levels = _check_size(img_size)
        if latent_dim < 1 or base_channels < 8 or out_channels < 1:
            raise ValueError("latent_dim, out_channels must be >= 1 and base_channels >= 8")
        if attn_resolution and attn_resolution not in [2 ** (i + 3) for i in range(levels)]:
            raise ValueError(f"attn_resolution {attn_resolution} is not a feature-map side between 8 and {img_size}")
        self.latent_dim, self.num_classes, self.img_size = latent_dim, num_classes, img_size
        widths = _widths(levels + 1, base_channels)[::-1]  # coarse (4x4) to fine
        self.start_channels = widths[0]
        self.linear = _sn(nn.Linear(latent_dim, 16 * widths[0]), spectral_norm)
        self.blocks = nn.ModuleList(
            [SAGANGeneratorBlock(widths[i], widths[i + 1], num_classes, spectral_norm) for i in range(levels)]
        )
        attn_index = int(round(math.log2(attn_resolution))) - 3 if attn_resolution else -1
        self.attn_index = attn_index
        self.attention = SelfAttention2d(widths[attn_index + 1], spectral_norm) if attn_index >= 0 else nn.Identity()
        self.bn_out = nn.BatchNorm2d(widths[-1])
        self.conv_out = _sn(nn.Conv2d(widths[-1], out_channels, 3, padding=1), spectral_norm)

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.linear(z).reshape(z.shape[0], self.start_channels, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, y)
            if i == self.attn_index:
                h = self.attention(h)
        h = self.conv_out(F.relu(self.bn_out(h)))
        return 0.5 * (torch.tanh(h) + 1.0)


class SAGANGeneratorPackedInput(SAGANGenerator):
    """:class:`SAGANGenerator` with a single input tensor, for exporters that feed a network one dummy input
    (MONAI's ``python -m monai.bundle onnx_export``).

    ``x`` is (N, latent_dim + 1): the latent ``z`` in the first ``latent_dim`` columns and the class index as an
    integer-valued float (0.0, 1.0, ...) in the last one; ``forward(x)`` equals
    ``SAGANGenerator.forward(x[:, :latent_dim], x[:, latent_dim].round().long())``. Same arguments and the same
    state dict as :class:`SAGANGenerator`, so the bundle's ``models/model.pt`` loads into it unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.ndim != 2 or x.shape[1] != self.latent_dim + 1:
            raise ValueError(f"expected (N, {self.latent_dim + 1}) = latent + class index, got {tuple(x.shape)}")
        return super().forward(x[:, : self.latent_dim], x[:, self.latent_dim].round().long())


class SAGANDiscriminator(nn.Module):
    """Class-conditional SAGAN discriminator with a projection head.

    x (N, in_channels, S, S) in [0, 1] -> residual down-blocks to 4x4 (self-attention after the block that
    reaches ``attn_resolution``) -> a last residual block without down-sampling -> ReLU -> global sum ->
    ``linear(h) + <embed(y), h>`` (the projection discriminator). Every conv, linear and the class
    embedding are spectrally normalised. Returns logits of shape (N,).

    Args:
        num_classes: number of classes (0: unconditional, no projection).
        img_size: input side, a power of two >= 16.
        base_channels: channels of the first block; doubling per down-sampling (capped at 16x).
        in_channels: image channels.
        attn_resolution: feature-map side at which self-attention sits (0 disables it).
        spectral_norm: spectral normalisation on every layer (``False`` only for export/ablation).
    """

    def __init__(
        self,
        num_classes: int = 2,
        img_size: int = 64,
        base_channels: int = 32,
        in_channels: int = 1,
        attn_resolution: int = 32,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        levels = _check_size(img_size)
        if base_channels < 8 or in_channels < 1 or num_classes < 0:
            raise ValueError("base_channels must be >= 8, in_channels >= 1, num_classes >= 0")
        if attn_resolution and attn_resolution not in [img_size // 2 ** (i + 1) for i in range(levels)]:
            raise ValueError(f"attn_resolution {attn_resolution} is not a feature-map side below {img_size}")
        self.num_classes, self.img_size = num_classes, img_size
        widths = _widths(levels + 1, base_channels)  # fine to coarse
        blocks = [SAGANDiscriminatorBlock(in_channels, widths[0], True, False, spectral_norm)]
        blocks += [SAGANDiscriminatorBlock(widths[i], widths[i + 1], True, True, spectral_norm) for i in range(levels - 1)]
        blocks += [SAGANDiscriminatorBlock(widths[levels - 1], widths[levels], False, True, spectral_norm)]
        self.blocks = nn.ModuleList(blocks)
        attn_index = int(round(math.log2(img_size // attn_resolution))) - 1 if attn_resolution else -1
        self.attn_index = attn_index
        self.attention = SelfAttention2d(widths[attn_index], spectral_norm) if attn_index >= 0 else nn.Identity()
        self.linear = _sn(nn.Linear(widths[levels], 1), spectral_norm)
        self.embed = _sn(nn.Embedding(max(num_classes, 1), widths[levels]), spectral_norm)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = 2.0 * x - 1.0
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_index:
                h = self.attention(h)
        h = F.relu(h).sum(dim=(2, 3))
        out = self.linear(h).squeeze(1)
        if self.num_classes > 0 and y is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


class DCGANGenerator(nn.Module):
    """The DCGAN seed's generator: z -> dense -> (S/4)^2 x 256 -> two 4x4/2 transposed convs -> 4x4 conv.

    LeakyReLU(0.2) after the dense layer and each transposed convolution, no batch norm (as in the seed);
    the output ``(tanh + 1) / 2`` is in [0, 1]. With ``num_classes > 0`` the one-hot class is concatenated to
    the noise (a conditional GAN), so one model covers both classes like the SAGAN.

    Args:
        latent_dim: noise length (100 in the seed).
        img_size: output side, a multiple of 4 (128 in the seed; 64 for the budget-matched baseline).
        num_classes: classes for conditioning (0: unconditional, as the seed).
        channels: channels of the dense reshape and the two transposed convolutions.
        out_channels: image channels.
    """

    def __init__(self, latent_dim: int = 100, img_size: int = 128, num_classes: int = 0,
                 channels: tuple[int, int, int] = (256, 128, 128), out_channels: int = 1) -> None:
        super().__init__()
        if img_size < 8 or img_size % 4:
            raise ValueError(f"img_size must be a multiple of 4 and >= 8, got {img_size}")
        if latent_dim < 1 or num_classes < 0 or len(channels) != 3:
            raise ValueError("latent_dim >= 1, num_classes >= 0 and three channel widths are required")
        self.latent_dim, self.num_classes, self.img_size = latent_dim, num_classes, img_size
        self.start = img_size // 4
        self.start_channels = channels[0]
        self.dense = nn.Linear(latent_dim + num_classes, channels[0] * self.start**2)
        self.up = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(channels[0], channels[1], 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(channels[1], channels[2], 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels[2], out_channels, 4, padding="same"),
        )

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.num_classes > 0:
            if y is None:
                raise ValueError("a class-conditional DCGANGenerator needs class indices y")
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        h = self.dense(z).reshape(z.shape[0], self.start_channels, self.start, self.start)
        return 0.5 * (torch.tanh(self.up(h)) + 1.0)


class DCGANDiscriminator(nn.Module):
    """The DCGAN seed's discriminator: 3x3 convs 64 (stride 1), 128, 128, 256 (stride 2), LeakyReLU(0.2),
    flatten, dropout 0.4, dense -> one logit (apply ``sigmoid`` for the seed's probability).

    With ``num_classes > 0`` a projection term ``<embed(y), h>`` on the flattened features conditions it.

    Args:
        img_size: input side, a multiple of 8.
        num_classes: classes (0: unconditional, as the seed).
        channels: widths of the four convolutions.
        dropout: dropout before the dense layer (0.4 in the seed).
        in_channels: image channels.
    """

    def __init__(self, img_size: int = 128, num_classes: int = 0,
                 channels: tuple[int, int, int, int] = (64, 128, 128, 256), dropout: float = 0.4,
                 in_channels: int = 1) -> None:
        super().__init__()
        if img_size < 8 or img_size % 8:
            raise ValueError(f"img_size must be a multiple of 8, got {img_size}")
        if not 0.0 <= dropout < 1.0 or len(channels) != 4 or num_classes < 0:
            raise ValueError("dropout must be in [0, 1), four channel widths, num_classes >= 0")
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        ch = in_channels
        for i, w in enumerate(channels):
            layers += [nn.Conv2d(ch, w, 3, stride=1 if i == 0 else 2, padding=1), nn.LeakyReLU(0.2)]
            ch = w
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout))
        flat = ch * (img_size // 8) ** 2
        self.dense = nn.Linear(flat, 1)
        self.embed = nn.Embedding(max(num_classes, 1), flat)
        nn.init.normal_(self.embed.weight, std=0.01)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.features(2.0 * x - 1.0)
        out = self.dense(h).squeeze(1)
        if self.num_classes > 0 and y is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def sagan_generator(preset: str = "lite", img_size: int = 64, **kwargs) -> SAGANGenerator:
    """SAGAN generator preset: ``tiny`` (base 8, tests), ``lite`` (16, CPU), ``base`` (32), ``full`` (64).

    Args:
        preset: key of :data:`SAGAN_PRESETS`.
        img_size: output side (64 or 128).
        kwargs: any other :class:`SAGANGenerator` argument.
    """
    if preset not in SAGAN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(SAGAN_PRESETS)}")
    return SAGANGenerator(img_size=img_size, base_channels=SAGAN_PRESETS[preset], **kwargs)


def sagan_discriminator(preset: str = "lite", img_size: int = 64, **kwargs) -> SAGANDiscriminator:
    """SAGAN discriminator preset matching :func:`sagan_generator`."""
    if preset not in SAGAN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(SAGAN_PRESETS)}")
    return SAGANDiscriminator(img_size=img_size, base_channels=SAGAN_PRESETS[preset], **kwargs)


@torch.no_grad()
def generate(
    generator: nn.Module,
    num_images: int,
    class_index: int | Sequence[int] | None = 0,
    seed: int = 0,
    latent_dim: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproducible samples: ``num_images`` images (N, 1, H, W) in [0, 1] and their class indices.

    Latents are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (N x latent_dim at once), so
    the same seed gives the same images whatever the batch size or device.

    Args:
        generator: ``G(z, y)``; put in eval mode here.
        num_images: how many images.
        class_index: one class for all, a sequence of per-image classes, or ``None`` (unconditional).
        seed: noise seed.
        latent_dim: latent length (default: ``generator.latent_dim``).
        batch_size: images per forward pass.
        device: device to run on.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    latent_dim = int(latent_dim or getattr(generator, "latent_dim"))
    z = torch.randn(num_images, latent_dim, generator=torch.Generator().manual_seed(int(seed)))
    if class_index is None:
        y = torch.zeros(num_images, dtype=torch.long)
    elif isinstance(class_index, int):
        y = torch.full((num_images,), class_index, dtype=torch.long)
    else:
        y = torch.as_tensor(list(class_index), dtype=torch.long)
        if y.numel() != num_images:
            raise ValueError(f"{y.numel()} class indices for {num_images} images")
    generator = generator.eval().to(device)
    outs = []
    for i in range(0, num_images, batch_size):
        yy = None if class_index is None else y[i : i + batch_size].to(device)
        outs.append(generator(z[i : i + batch_size].to(device), yy).float().clamp(0, 1).cpu())
    return torch.cat(outs), y
