"""``resnet``: SNGAN/BigGAN-style residual generator and discriminator for 32-256 px (and 48, 96, 192).

Layout. The resolution is ``base * 2**k`` with base 4 or 6 (4x4 or 6x6 at the bottom) and k >= 3:
32/64/128/256 start at 4x4, 48/96/192 at 6x6 (the anime faces are 96 = 6 * 16). The channel width at
resolution r is ``w * min(R / r, 8)`` (w at full resolution, doubling as it halves, at most 8w), with
w = ``model.g_width`` for G and ``model.d_width`` for D.

G: Linear(z, c(base) * base^2) -> k up-blocks -> BN ReLU Conv3x3(w, C) Tanh. An up-block (c_in -> c_out):
   main = Conv3x3(ReLU(BN(Conv3x3(Up(ReLU(BN(h)))))), shortcut = Up(Conv1x1(h)) (identity when
   c_in = c_out), nearest 2x upsampling. Conditional (``num_classes > 0``): the blocks' BatchNorms are
   class-conditional (per-class gain and bias offsets, as in SNGAN-projection / BigGAN), no one-hot input.
D: k down-blocks -> ReLU -> sum over pixels -> Linear(c, 1) (+ <embed(y), h>, the projection
   discriminator of Miyato & Koyama 2018, when conditional). A down-block (c_in -> c_out) at resolution r:
   main = AvgPool(Conv3x3(ReLU(Conv3x3(ReLU(h))))), shortcut = Conv1x1(AvgPool(h)) (identity when
   c_in = c_out); the first block skips the ReLU on the raw image. No normalisation in D, so R1/R2 see
   each sample on its own and ``model.spectral_norm`` is the way to constrain it.
Both shortcuts apply the 1x1 conv at the lower resolution: a 1x1 conv commutes exactly with nearest
upsampling and with average pooling, so this is the same function at a quarter of the shortcut's cost.
Biases only where no BatchNorm follows; PyTorch's default init (``model.init=dcgan`` also works).

Why this and not R3GAN's minimal convnet. R3GAN's blocks are inverted bottlenecks around a grouped 3x3
conv, with fix-up init, tuned on GPUs. On this CPU a grouped 3x3 conv runs at about half a dense one's
FLOP/s and a depthwise one at a few percent (``benchmarks/model_cost.py --grouped``, equal FLOPs, 32
images at 24x24: dense 64->64 11.6 GFLOP/s, 16 groups of 16 5.8, depthwise 0.4; a second, busier run
21.4 / 19.6 / 1.1). So at an equal time budget the dense two-conv block gets more capacity. It is also
the block whose behaviour with hinge + spectral norm and with R1 is best documented (SNGAN, BigGAN, the
projection discriminator). This is a choice by cost per CPU second, not by trained quality: that
comparison is a training benchmark this module does not run.

Cost per image (``benchmarks/model_cost.py``). FLOPs are exact (FlopCounterMode, convs and matmuls):
forward of G and of D, and one training step per image (D step on reals and detached fakes, G step on
the same fakes; BCE, Adam, batch 32). img/CPU-s: images per CPU second of the benchmark process, fp32, 2
threads, on an AMD EPYC 2-core VM shared with other jobs (load 5-9): wall-clock figures there measure
the neighbours, and even these vary up to 2x between runs (ranges are two runs).

    case                      G params  D params  G fwd MFLOP  D fwd MFLOP  step MFLOP  img/CPU-s
    dcgan28 (mnist-quick)      0.60M     0.07M        14            3            72      75
    cdcgan 64px (mnist-cgan)   3.66M     2.77M       205          224          2587      7.7
    dcgan96 (anime-dcgan)      3.58M     2.77M       213          211          2518      8.3-8.8
    resnet 64px w=8            0.22M     0.08M        55           28           412      9.9
    resnet 64px w=12           0.41M     0.17M       122           62           913      7.7
    resnet 64px w=16           0.66M     0.30M       215          108          1611      5.0-9.1
    resnet 64px w=32           2.22M     1.22M       851          426          6368      3.9
    resnet 96px w=8            0.35M     0.08M       123           63           927      9.8
    resnet 96px w=12           0.60M     0.17M       273          139          2054      4.6-5.8
    resnet 96px w=16           0.92M     0.30M       483          244          3624      4.5
    resnet 96px w=32           2.74M     1.22M      1915          958         14329      (not timed)

Narrow nets do not get faster in proportion to their FLOPs: 3x3 convs with 8-16 channels at full
resolution reach a fraction of the FLOP/s of the DCGANs' wide low-resolution layers (75% of a w=12
96 px step is convolution, profiled). Suggested widths for a 2-core CPU: w=16 at 64 px (0.64x
anime-dcgan's FLOPs, about its speed) and w=12 at 96 px (0.82x its FLOPs, about 0.6x its speed),
with w=32 or more where a GPU is available.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.config import ModelConfig
from ganforge.errors import ConfigError
from ganforge.models.base import Discriminator, Generator

BASES = (4, 6)  # bottom resolutions
MIN_BLOCKS = 3  # 4 -> 32 and 6 -> 48 at the least
MAX_MULT = 8  # widest stage: 8x the full-resolution width


def layout(resolution: int) -> tuple[int, int]:
    """(base, k) with resolution = base * 2**k, base in BASES, k >= MIN_BLOCKS; ConfigError otherwise."""
    for base in BASES:
        k = 0
        while base * 2 ** (k + 1) <= resolution:
            k += 1
        if base * 2**k == resolution and k >= MIN_BLOCKS:
            return base, k
    sizes = sorted(b * 2**k for b in BASES for k in range(MIN_BLOCKS, MIN_BLOCKS + 4))
    raise ConfigError(
        f"model.resolution={resolution} is not supported by arch 'resnet': it needs 4 * 2^k or 6 * 2^k "
        f"with k >= {MIN_BLOCKS} ({', '.join(map(str, sizes))}, ...)"
    )


def stage_widths(resolution: int, width: int) -> list[int]:
    """Channels at each resolution from the base up to ``resolution``: ``width * min(R / r, MAX_MULT)``."""
    base, k = layout(resolution)
    return [width * min(resolution // (base * 2**i), MAX_MULT) for i in range(k + 1)]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm2d whose gain and bias also get a per-class offset: ``BN(h) * (1 + dg[y]) + db[y]``.

    The shared affine learns what all classes share (and ``model.init=dcgan`` initialises it); the offsets
    start small, N(0, 0.02), so the conditional net starts close to the unconditional one yet already
    tells the classes apart.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.embed = nn.Embedding(num_classes, 2 * channels)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gain, bias = self.embed(labels)[:, :, None, None].chunk(2, dim=1)  # [B, c, 1, 1] each
        h = self.norm(h)
        return torch.addcmul(h + bias, h, gain)


class _Norm(nn.Module):
    """Plain BatchNorm2d, or its class-conditional form when ``num_classes > 0``; called with labels."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.norm(h, labels) if isinstance(self.norm, ConditionalBatchNorm2d) else self.norm(h)


class GeneratorBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_classes: int) -> None:
        super().__init__()
        self.norm1 = _Norm(c_in, num_classes)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)  # BN follows
        self.norm2 = _Norm(c_out, num_classes)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        skip = F.interpolate(self.shortcut(h), scale_factor=2.0, mode="nearest")  # [B, c_out, 2r, 2r]
        h = F.interpolate(F.relu(self.norm1(h, labels)), scale_factor=2.0, mode="nearest")  # [B, c_in, 2r, 2r]
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))  # [B, c_out, 2r, 2r]
        return h + skip


class DiscriminatorBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, first: bool) -> None:
        super().__init__()
        self.first = first  # the raw image gets no ReLU
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(F.avg_pool2d(h, 2))  # [B, c_out, r/2, r/2]
        h = self.conv1(h if self.first else F.relu(h))  # [B, c_out, r, r]
        h = F.avg_pool2d(self.conv2(F.relu(h)), 2)  # [B, c_out, r/2, r/2]
        return h + skip


class ResNetGenerator(Generator):
    def __init__(self, latent_dim: int, num_classes: int, channels: int, resolution: int, width: int) -> None:
        super().__init__(latent_dim, num_classes, channels, resolution)
        self.base, _ = layout(resolution)
        widths = stage_widths(resolution, width)
        self.fc = nn.Linear(latent_dim, widths[0] * self.base * self.base)
        self.blocks = nn.ModuleList(
            GeneratorBlock(c_in, c_out, num_classes) for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_latent(z)
        self._one_hot(labels, z.shape[0], z.dtype)  # checks the labels (or their absence)
        h = self.fc(z).view(z.shape[0], -1, self.base, self.base)  # [B, c0, base, base]
        for block in self.blocks:
            h = block(h, labels)  # doubles the resolution
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))  # [B, C, R, R]


class ResNetDiscriminator(Discriminator):
    def __init__(self, latent_dim: int, num_classes: int, channels: int, resolution: int, width: int) -> None:
        super().__init__(latent_dim, num_classes, channels, resolution)
        # D's block at resolution r outputs c(r) channels at r/2: the mirror of G, whose block into r makes c(r).
        widths = [channels, *stage_widths(resolution, width)[:0:-1]]  # [C, c(R), c(R/2), ..., c(2 base)]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(c_in, c_out, first=i == 0)
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        self.head = nn.Linear(widths[-1], 1)
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(x)
        self._one_hot(labels, x.shape[0], x.dtype)
        h = x
        for block in self.blocks:
            h = block(h)  # halves the resolution
        features = F.relu(h).sum(dim=(2, 3))  # [B, c]
        logits = self.head(features).squeeze(1)  # [B]
        if self.embed is not None:
            logits = logits + (self.embed(labels) * features).sum(1)  # projection: <embed(y), h>
        return logits

    def feature_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks: each residual block, then the head (Linear and projection embedding)."""
        head = nn.ModuleList([self.head] + ([self.embed] if self.embed is not None else []))
        return [*self.blocks, head]


def build_resnet(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Residual G and D; ``g_width``/``d_width`` are the full-resolution widths, conditional when num_classes > 0."""
    layout(cfg.resolution)  # a clear error before any layer is built
    generator = ResNetGenerator(cfg.latent_dim, cfg.num_classes, cfg.channels, cfg.resolution, cfg.g_width)
    discriminator = ResNetDiscriminator(cfg.latent_dim, cfg.num_classes, cfg.channels, cfg.resolution, cfg.d_width)
    return generator, discriminator
