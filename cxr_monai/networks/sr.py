"""Super-resolution networks: CSAEGAN generator (RRDB trunk + CSA attention), discriminators and baselines.

One file per family (BasicSR style): small blocks (:class:`ResidualDenseBlock`, :class:`RRDB`,
:class:`PoolFreeChannelAttention`, :class:`CSABlock`) composed into :class:`CSAEGANGenerator`; presets are
thin typed factories (timm style): :func:`csaegan_full` (paper: 23 RRDBs, 64 features, ~16.7 M parameters),
:func:`csaegan_lite` (trains on a CPU), :func:`rrdbnet` (plain ESRGAN generator, ``csa=False``).
Baselines: :class:`SRCNN`, :class:`EDSR` (:func:`edsr_lite`). Discriminators: :class:`UNetDiscriminatorSN`
(Real-ESRGAN style, spectral norm) and :class:`VGGStyleDiscriminator` (ESRGAN style).

Every generator takes a single-channel (N, 1, H, W) tensor in [0, 1] and returns (N, 1, scale*H, scale*W);
in ``eval()`` mode the output is clamped to [0, 1] (training keeps it unclamped so gradients flow).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from .blocks import SpatialAttention

__all__ = [
    "ResidualDenseBlock",
    "RRDB",
    "PoolFreeChannelAttention",
    "CSABlock",
    "CSAEGANGenerator",
    "csaegan_full",
    "csaegan_lite",
    "rrdbnet",
    "SRCNN",
    "srcnn",
    "EDSR",
    "edsr_lite",
    "UNetDiscriminatorSN",
    "VGGStyleDiscriminator",
    "SelfEnsemble",
]

_UPSAMPLERS = ("nearest_conv", "pixelshuffle")
_PLACEMENTS = ("trunk", "rrdb")


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling with the project's convention (``align_corners=False``, no clamp inside the net)."""
    size = [x.shape[-2] * scale, x.shape[-1] * scale]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def _check_scale(scale: int) -> None:
    if scale not in (1, 2, 4, 8):
        raise ValueError(f"scale must be 1, 2, 4 or 8, got {scale}.")


class ResidualDenseBlock(nn.Module):
    """Residual dense block: five 3x3 convolutions with dense connections and scaled residual (ESRGAN).

    Args:
        num_feat: channels of the block input/output.
        num_grow_ch: growth channels of each intermediate convolution.
        res_scale: scale of the residual branch before the addition (0.2 in ESRGAN).
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32, res_scale: float = 0.2) -> None:
        super().__init__()
        if num_feat < 1 or num_grow_ch < 1:
            raise ValueError(f"num_feat and num_grow_ch must be positive, got {num_feat}, {num_grow_ch}.")
        self.convs = nn.ModuleList(
            nn.Conv2d(num_feat + i * num_grow_ch, num_grow_ch if i < 4 else num_feat, 3, 1, 1) for i in range(5)
        )
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.res_scale = res_scale
        for conv in self.convs:  # small init keeps the deep residual trunk stable (ESRGAN: kaiming * 0.1)
            nn.init.kaiming_normal_(conv.weight, a=0.2, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        out = x
        for i, conv in enumerate(self.convs):  # (TorchScript-friendly: no ModuleList slicing)
            y = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(self.lrelu(y))
            else:
                out = x + self.res_scale * y
        return out


class PoolFreeChannelAttention(nn.Module):
    """Channel attention of the CSA block.

    Pool-free (CSAEGAN, ``pooling=False``): two 1x1 convolutions on the full-resolution map give a sigmoid
    gate per pixel AND channel, so local structure decides which channels pass. With ``pooling=True`` the map
    is first globally average-pooled (squeeze-and-excitation / CBAM style): one gate per channel, the ablation.

    Args:
        num_feat: channels of the input.
        reduction: channel reduction of the bottleneck.
        pooling: global average pooling before the 1x1 convolutions (the ablation).
    """

    def __init__(self, num_feat: int = 64, reduction: int = 16, pooling: bool = False) -> None:
        super().__init__()
        if reduction < 1 or num_feat < reduction:
            raise ValueError(f"need 1 <= reduction <= num_feat, got reduction={reduction}, num_feat={num_feat}.")
        hidden = max(1, num_feat // reduction)
        self.pooling = pooling
        self.fc = nn.Sequential(
            nn.Conv2d(num_feat, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_feat, 1)
        )

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid gate: (N, C, H, W) without pooling, (N, C, 1, 1) with pooling."""
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True) if self.pooling else x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CSABlock(nn.Module):
    """CSA hybrid attention: channel attention (pool-free by default) followed by spatial attention.

    The attended map is added back to the input (``x + attn(x)``) so that the block starts close to a scaled
    identity and cannot block the signal of the trunk.

    Args:
        num_feat: channels of the input.
        reduction: channel reduction of the channel attention bottleneck.
        pooling: use global pooling in the channel attention (ablation ``csa_pooling=True``).
        spatial_kernel: kernel size of the spatial attention (odd).
    """

    def __init__(self, num_feat: int = 64, reduction: int = 16, pooling: bool = False, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel = PoolFreeChannelAttention(num_feat, reduction, pooling)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.spatial(self.channel(x))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three :class:`ResidualDenseBlock` and a scaled outer residual.

    Args:
        num_feat: channels.
        num_grow_ch: growth channels of the dense blocks.
        res_scale: residual scaling of the inner and outer residuals.
        attention: optional module applied to the block output before the outer residual (CSA placement
            ``"rrdb"``).
    """

    def __init__(
        self, num_feat: int = 64, num_grow_ch: int = 32, res_scale: float = 0.2, attention: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch, res_scale)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch, res_scale)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch, res_scale)
        self.attention = attention if attention is not None else nn.Identity()
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.attention(self.rdb3(self.rdb2(self.rdb1(x))))


class CSAEGANGenerator(nn.Module):
    """CSAEGAN generator: RRDB trunk with CSA hybrid attention, x2/x4/x8 upsampling, single-channel CXR.

    Layout (ESRGAN): first conv -> ``num_block`` RRDBs -> trunk conv (+ CSA when ``csa_placement="trunk"``)
    -> long skip -> upsampler -> HR conv -> last conv. With ``residual_bicubic=True`` the network predicts the
    residual over the bicubic upsampling of its input (global residual learning), which trains much faster.

    Args:
        in_channels: input channels (1).
        out_channels: output channels (1).
        scale: upsampling factor: 1, 2, 4 or 8.
        num_feat: trunk channels.
        num_block: number of RRDBs.
        num_grow_ch: growth channels in the dense blocks.
        res_scale: residual scaling (0.2).
        csa: use the CSA attention block (``False``: plain RRDBNet, the ablation).
        csa_pooling: global pooling inside the CSA channel attention (the pooling ablation).
        csa_reduction: channel reduction in the CSA channel attention.
        csa_placement: ``"trunk"`` (one CSA block after the trunk conv) or ``"rrdb"`` (one inside every RRDB).
        upsampler: ``"nearest_conv"`` (ESRGAN: nearest x2 + 3x3 conv per step, at HR resolution) or
            ``"pixelshuffle"`` (sub-pixel convolution at LR resolution: much cheaper, used by the lite preset).
        residual_bicubic: add the bicubic upsampling of the input to the output (global residual).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        res_scale: float = 0.2,
        csa: bool = True,
        csa_pooling: bool = False,
        csa_reduction: int = 16,
        csa_placement: str = "trunk",
        upsampler: str = "nearest_conv",
        residual_bicubic: bool = False,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        if upsampler not in _UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, got {upsampler!r}.")
        if csa_placement not in _PLACEMENTS:
            raise ValueError(f"csa_placement must be one of {_PLACEMENTS}, got {csa_placement!r}.")
        if num_block < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("num_block, in_channels and out_channels must be positive.")
        if residual_bicubic and in_channels != out_channels:
            raise ValueError("residual_bicubic needs in_channels == out_channels.")
        self.scale = scale
        self.upsampler = upsampler
        self.residual_bicubic = residual_bicubic
        self.in_channels, self.out_channels = in_channels, out_channels
        use_block_csa = csa and csa_placement == "rrdb"

        def _csa() -> nn.Module:
            return CSABlock(num_feat, csa_reduction, csa_pooling)

        self.conv_first = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(RRDB(num_feat, num_grow_ch, res_scale, _csa() if use_block_csa else None) for _ in range(num_block))
        )
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.csa: nn.Module = _csa() if csa and csa_placement == "trunk" else nn.Identity()
        steps = int(round(math.log2(scale)))
        if upsampler == "nearest_conv":
            self.up_convs = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1) for _ in range(steps))
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)
        else:
            self.up_convs = nn.ModuleList()
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_channels * scale * scale, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(scale) if upsampler == "pixelshuffle" else nn.Identity()
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        if residual_bicubic:  # start from bicubic exactly: the learnt residual is zero at init
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.csa(self.conv_body(self.body(feat)))
        if self.upsampler == "nearest_conv":
            for conv in self.up_convs:
                feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
            out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        else:
            out = self.shuffle(self.conv_last(self.lrelu(self.conv_hr(feat))))
        if self.residual_bicubic:
            out = out + (_bicubic(x, self.scale) if self.scale > 1 else x)
        return out if self.training else out.clamp(0.0, 1.0)


def csaegan_full(**kwargs) -> CSAEGANGenerator:
    """Paper preset: 23 RRDBs, 64 features, growth 32, CSA after the trunk, ESRGAN upsampler (~16.7 M params).

    Args:
        kwargs: override any :class:`CSAEGANGenerator` argument.
    """
    cfg = dict(num_feat=64, num_block=23, num_grow_ch=32, csa=True, upsampler="nearest_conv")
    return CSAEGANGenerator(**{**cfg, **kwargs})


def csaegan_lite(**kwargs) -> CSAEGANGenerator:
    """CPU preset: 6 RRDBs, 32 features, growth 16, CSA after the trunk, pixel-shuffle upsampler, residual
    over bicubic (~1.1 M params; trains on one CPU core, 512x512 -> 2048x2048 in a few seconds).

    Args:
        kwargs: override any :class:`CSAEGANGenerator` argument (e.g. ``csa=False`` or ``csa_pooling=True``).
    """
    cfg = dict(
        num_feat=32, num_block=6, num_grow_ch=16, csa=True, csa_reduction=8, upsampler="pixelshuffle",
        residual_bicubic=True,
    )
    return CSAEGANGenerator(**{**cfg, **kwargs})


def rrdbnet(num_block: int = 23, num_feat: int = 64, num_grow_ch: int = 32, **kwargs) -> CSAEGANGenerator:
    """Plain ESRGAN RRDBNet (no CSA attention): the generator CSAEGAN builds on.

    Args:
        num_block: number of RRDBs (23 in ESRGAN).
        num_feat: trunk channels (64).
        num_grow_ch: growth channels (32).
        kwargs: other :class:`CSAEGANGenerator` arguments (``csa`` is forced to ``False``).
    """
    kwargs["csa"] = False
    return CSAEGANGenerator(num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch, **kwargs)


class SRCNN(nn.Module):
    """SRCNN (Dong et al. 2014): three convolutions on the bicubic-upsampled input.

    Args:
        in_channels: input/output channels.
        scale: upsampling factor applied with bicubic interpolation first.
        features: channels of the first two convolutions (64, 32).
        kernels: kernel sizes of the three convolutions (9, 5, 5).
        residual: predict the residual over bicubic (VDSR-style; ``False`` reproduces SRCNN).
    """

    def __init__(
        self,
        in_channels: int = 1,
        scale: int = 4,
        features: tuple[int, int] = (64, 32),
        kernels: tuple[int, int, int] = (9, 5, 5),
        residual: bool = False,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        if len(features) != 2 or len(kernels) != 3 or any(k % 2 == 0 for k in kernels):
            raise ValueError(f"need 2 feature widths and 3 odd kernels, got {features}, {kernels}.")
        self.scale, self.residual = scale, residual
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, features[0], kernels[0], padding=kernels[0] // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(features[0], features[1], kernels[1], padding=kernels[1] // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(features[1], in_channels, kernels[2], padding=kernels[2] // 2),
        )
        if residual:
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = _bicubic(x, self.scale) if self.scale > 1 else x
        out = self.body(up) + (up if self.residual else 0.0)
        return out if self.training else out.clamp(0.0, 1.0)


def srcnn(**kwargs) -> SRCNN:
    """SRCNN 9-5-5 with 64/32 features (set ``residual=True`` for residual learning)."""
    return SRCNN(**kwargs)


class _ResBlock(nn.Module):
    """EDSR residual block without batch norm: conv-ReLU-conv, scaled residual."""

    def __init__(self, num_feat: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x), inplace=True))


class EDSR(nn.Module):
    """EDSR (Lim et al. 2017): BN-free residual blocks, long skip, sub-pixel upsampling.

    Args:
        in_channels: input/output channels.
        scale: upsampling factor (1, 2, 4, 8).
        num_feat: trunk channels (64 for EDSR-baseline).
        num_block: residual blocks (16 for EDSR-baseline).
        res_scale: residual scaling (1.0 for the baseline, 0.1 for the large model).
        residual_bicubic: add the bicubic upsampling of the input to the output.
    """

    def __init__(
        self,
        in_channels: int = 1,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 16,
        res_scale: float = 1.0,
        residual_bicubic: bool = False,
    ) -> None:
        super().__init__()
        _check_scale(scale)
        if num_block < 1 or num_feat < 1:
            raise ValueError("num_block and num_feat must be positive.")
        self.scale, self.residual_bicubic = scale, residual_bicubic
        self.head = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(_ResBlock(num_feat, res_scale) for _ in range(num_block)))
        self.body_conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        up: list[nn.Module] = []
        for _ in range(int(round(math.log2(scale)))):
            up += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(num_feat, in_channels, 3, 1, 1)
        if residual_bicubic:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.body_conv(self.body(feat))
        out = self.tail(self.upsample(feat))
        if self.residual_bicubic:
            out = out + (_bicubic(x, self.scale) if self.scale > 1 else x)
        return out if self.training else out.clamp(0.0, 1.0)


def edsr_lite(**kwargs) -> EDSR:
    """Small EDSR: 8 blocks, 32 features, residual over bicubic (CPU-trainable baseline).

    Args:
        kwargs: override any :class:`EDSR` argument.
    """
    cfg = dict(num_feat=32, num_block=8, res_scale=1.0, residual_bicubic=True)
    return EDSR(**{**cfg, **kwargs})


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral normalisation (Real-ESRGAN style): a per-pixel realness map.

    Three stride-2 encoder stages, three bilinear decoder stages with skip connections, two refinement
    convolutions and a 1-channel output at input resolution. Input height and width must be multiples of 8.

    Args:
        in_channels: input channels (1).
        num_feat: channels of the first stage (64).
        skip_connection: add encoder features to the decoder (U-Net skips).
    """

    def __init__(self, in_channels: int = 1, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        if num_feat < 1:
            raise ValueError(f"num_feat must be positive, got {num_feat}.")
        self.skip_connection = skip_connection
        f = num_feat
        self.conv0 = nn.Conv2d(in_channels, f, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"UNetDiscriminatorSN needs H and W divisible by 8, got {tuple(x.shape[-2:])}.")
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        x4 = x4 + x2 if self.skip_connection else x4
        x5 = act(self.conv5(up(x4)))
        x5 = x5 + x1 if self.skip_connection else x5
        x6 = act(self.conv6(up(x5)))
        x6 = x6 + x0 if self.skip_connection else x6
        out = act(self.conv8(act(self.conv7(x6))))
        return self.conv9(out)


class VGGStyleDiscriminator(nn.Module):
    """VGG-style discriminator (ESRGAN/SRGAN): conv stages halving the resolution, then a dense head.

    An adaptive average pool before the head makes it accept any input size >= 32 (ESRGAN fixes 128).

    Args:
        in_channels: input channels (1).
        num_feat: channels of the first stage (64); doubled per stage up to 8x.
        num_stages: number of stride-2 stages (5 for 128x128 inputs).
        spectral: wrap the convolutions in spectral normalisation instead of batch norm.
    """

    def __init__(self, in_channels: int = 1, num_feat: int = 64, num_stages: int = 5, spectral: bool = False) -> None:
        super().__init__()
        if num_stages < 1 or num_feat < 1:
            raise ValueError("num_stages and num_feat must be positive.")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = num_feat
        for i in range(num_stages):
            out = num_feat * min(2 ** (i + 1), 8)
            for conv in (nn.Conv2d(ch, out, 3, 1, 1, bias=False), nn.Conv2d(out, out, 4, 2, 1, bias=False)):
                layers.append(spectral_norm(conv) if spectral else conv)
                if not spectral:
                    layers.append(nn.BatchNorm2d(conv.out_channels))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 100), nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class SelfEnsemble(nn.Module):
    """Geometric self-ensemble (EDSR+): average the SR outputs of flipped copies of the input.

    The network sees each flipped input, its output is flipped back, and the outputs are averaged. Flips only
    (no transposes) by default, the augmentations the CPU presets are trained with; ``transpose=True`` adds the
    four transposed variants (8 passes, for networks trained with 90-degree rotations). Costs one forward pass
    per variant.

    Args:
        network: the SR network.
        transpose: also use the transposed variants.
    """

    def __init__(self, network: nn.Module, transpose: bool = False) -> None:
        super().__init__()
        self.network = network
        self.transpose = transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for t in ((False, True) if self.transpose else (False,)):
            xt = x.transpose(-1, -2) if t else x
            for dims in ([], [-1], [-2], [-2, -1]):
                xi = xt.flip(dims) if dims else xt
                y = self.network(xi)
                y = y.flip(dims) if dims else y
                outs.append(y.transpose(-1, -2) if t else y)
        return torch.stack(outs, 0).mean(0)
