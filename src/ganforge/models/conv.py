"""``conv``: the mnist-conv GAN, a 28x28 convolutional pair built around a 56x56 upsampled plane."""

from __future__ import annotations

import torch
from torch import nn

from ganforge.config import ModelConfig
from ganforge.models.base import Discriminator, Generator, require, require_unconditional

RESOLUTION = 28
_PLANE = 56  # the generator's Linear output is one 56x56 plane; a stride-2 conv halves it to 28


class ConvGenerator(Generator):
    """Linear(nz, 3136) -> 1x56x56 -> BN ReLU -> Conv(1,50,3,1,1) BN ReLU -> Conv(50,25,3,1,1) BN ReLU
    -> Conv(25,C,2,2,0) Tanh -> [C, 28, 28]. Convs keep their biases (the spec does not drop them)."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__(latent_dim, 0, channels, RESOLUTION)
        self.fc = nn.Linear(latent_dim, _PLANE * _PLANE)
        self.net = nn.Sequential(
            nn.BatchNorm2d(1),
            nn.ReLU(inplace=True),
            nn.Conv2d(1, 50, 3, 1, 1),
            nn.BatchNorm2d(50),
            nn.ReLU(inplace=True),
            nn.Conv2d(50, 25, 3, 1, 1),
            nn.BatchNorm2d(25),
            nn.ReLU(inplace=True),
            nn.Conv2d(25, channels, 2, 2, 0),  # 56 -> 28
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_latent(z)
        self._one_hot(labels, z.shape[0], z.dtype)
        plane = self.fc(z).view(z.shape[0], 1, _PLANE, _PLANE)  # [B, 3136] -> [B, 1, 56, 56]
        return self.net(plane)  # [B, C, 28, 28]


class ConvDiscriminator(Discriminator):
    """Conv(C,32,5,1,2) LReLU(0.2) AvgPool(2) -> Conv(32,64,5,1,2) LReLU(0.2) AvgPool(2)
    -> flatten 64*7*7 -> Linear(3136,1024) LReLU(0.2) -> Linear(1024,1), a logit."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__(latent_dim, 0, channels, RESOLUTION)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, 1, 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AvgPool2d(2, 2),  # 28 -> 14
            nn.Conv2d(32, 64, 5, 1, 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AvgPool2d(2, 2),  # 14 -> 7
        )
        self.head = nn.Sequential(
            nn.Linear(64 * 7 * 7, 1024),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(1024, 1),  # the spec's Sigmoid lives in the loss
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(x)
        self._one_hot(labels, x.shape[0], x.dtype)
        feats = self.features(x).flatten(1)  # [B, 64, 7, 7] -> [B, 3136]
        return self.head(feats).squeeze(1)  # [B, 1] -> [B]


def build_conv(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """mnist-conv; ``channels`` and ``latent_dim`` are free, the 28x28 layout and widths are fixed."""
    arch = "conv"
    require_unconditional(cfg, arch)
    require(cfg, "resolution", RESOLUTION, arch, "its layers are laid out for 28x28 images")
    require(cfg, "g_width", 64, arch, "its generator widths are fixed at 50/25 by the spec")
    require(cfg, "d_width", 64, arch, "its discriminator widths are fixed at 32/64/1024 by the spec")
    return ConvGenerator(cfg.latent_dim, cfg.channels), ConvDiscriminator(cfg.channels, cfg.latent_dim)
