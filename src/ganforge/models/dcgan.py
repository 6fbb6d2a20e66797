"""DCGAN-family networks: ``cdcgan`` (mnist-cgan, conditional 64x64) and ``dcgan96`` (anime-dcgan).

Both share one generator and one discriminator layout: five (transposed) convolutions with widths
width*8, *4, *2, *1 (512/256/128/64 at the default width 64), BatchNorm on all inner layers but
the discriminator's first, bias-free convs (BN's shift makes a bias redundant). They differ only in
the outermost conv's kernel/stride/padding, whether the final D conv has a bias, and conditioning.
"""

from __future__ import annotations

import torch
from torch import nn

from ganforge.config import ModelConfig
from ganforge.models.base import (
    Discriminator,
    Generator,
    require,
    require_conditional,
    require_unconditional,
)

# (kernel, stride, padding) of the outermost layer: 32 <-> 64 for cdcgan, 32 <-> 96 for dcgan96.
_OUTER_64 = (4, 2, 1)
_OUTER_96 = (5, 3, 1)


class DCGANGenerator(Generator):
    """[z, onehot(y)] as (nz+K)x1x1 -> ConvT(.,8w,4,1,0) BN ReLU -> ConvT(8w,4w,4,2,1) BN ReLU
    -> ConvT(4w,2w,4,2,1) BN ReLU -> ConvT(2w,w,4,2,1) BN ReLU -> ConvT(w,C,*outer) Tanh."""

    def __init__(
        self,
        latent_dim: int,
        num_classes: int,
        channels: int,
        resolution: int,
        width: int,
        outer: tuple[int, int, int],
    ) -> None:
        super().__init__(latent_dim, num_classes, channels, resolution)
        w = width
        layers: list[nn.Module] = []
        widths = [latent_dim + num_classes, 8 * w, 4 * w, 2 * w, w]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            k, s, p = (4, 1, 0) if i == 0 else (4, 2, 1)  # 1 -> 4, then doubling: 4 -> 8 -> 16 -> 32
            layers += [
                nn.ConvTranspose2d(cin, cout, k, s, p, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(w, channels, *outer, bias=False), nn.Tanh()]  # 32 -> resolution
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_latent(z)
        code = self._one_hot(labels, z.shape[0], z.dtype)  # [B, K] or None
        if code is not None:
            z = torch.cat([z, code], dim=1)  # [B, nz + K]
        return self.net(z[:, :, None, None])  # [B, nz+K, 1, 1] -> [B, C, R, R]


class DCGANDiscriminator(Discriminator):
    """[x, K label planes] -> Conv(C+K,w,*outer) LReLU(0.2) -> Conv(w,2w,4,2,1) BN LReLU(0.2)
    -> Conv(2w,4w,4,2,1) BN LReLU(0.2) -> Conv(4w,8w,4,2,1) BN LReLU(0.2) -> Conv(8w,1,4,1,0), a logit."""

    def __init__(
        self,
        latent_dim: int,
        num_classes: int,
        channels: int,
        resolution: int,
        width: int,
        outer: tuple[int, int, int],
        final_bias: bool,
    ) -> None:
        super().__init__(latent_dim, num_classes, channels, resolution)
        w = width
        # No BN after the first conv: the DCGAN recipe keeps raw image statistics at the input layer.
        layers: list[nn.Module] = [
            nn.Conv2d(channels + num_classes, w, *outer, bias=False),  # resolution -> 32
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):  # 32 -> 16 -> 8 -> 4
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, True),
            ]
        # 4x4 -> 1x1; the spec's Sigmoid lives in the loss.
        layers.append(nn.Conv2d(8 * w, 1, 4, 1, 0, bias=final_bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(x)
        batch = x.shape[0]
        code = self._one_hot(labels, batch, x.dtype)  # [B, K] or None
        if code is not None:
            # One constant plane per class, broadcast (a view, no copy) to the image size.
            planes = code[:, :, None, None].expand(batch, self.num_classes, *x.shape[2:])  # [B, K, R, R]
            x = torch.cat([x, planes], dim=1)  # [B, C + K, R, R]
        return self.net(x).view(batch)  # [B, 1, 1, 1] -> [B]


def build_cdcgan(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """mnist-cgan: class-conditional 64x64 DCGAN, all convs bias-free."""
    arch = "cdcgan"
    require_conditional(cfg, arch)
    require(cfg, "resolution", 64, arch, "its five stride-2 layers map 1x1 <-> 64x64")
    generator = DCGANGenerator(cfg.latent_dim, cfg.num_classes, cfg.channels, cfg.resolution, cfg.g_width, _OUTER_64)
    discriminator = DCGANDiscriminator(
        cfg.latent_dim,
        cfg.num_classes,
        cfg.channels,
        cfg.resolution,
        cfg.d_width,
        _OUTER_64,
        final_bias=False,
    )
    return generator, discriminator


def build_dcgan96(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """anime-dcgan: unconditional 96x96 DCGAN; only the last discriminator conv has a bias."""
    arch = "dcgan96"
    require_unconditional(cfg, arch)
    require(cfg, "resolution", 96, arch, "its outer 5x5 stride-3 layers map 32x32 <-> 96x96")
    generator = DCGANGenerator(cfg.latent_dim, 0, cfg.channels, cfg.resolution, cfg.g_width, _OUTER_96)
    discriminator = DCGANDiscriminator(
        cfg.latent_dim, 0, cfg.channels, cfg.resolution, cfg.d_width, _OUTER_96, final_bias=True
    )
    return generator, discriminator
