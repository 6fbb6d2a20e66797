"""``dcgan28``: a small DCGAN for 28x28 images, the network of the ``mnist-quick`` recipe.

Built for the most sample quality per CPU second on MNIST, not to reproduce a reference system:
G: [z, onehot(y)] -> Linear -> 4w x 7 x 7 -> BN ReLU -> ConvT(4w, 2w, 4, 2, 1) BN ReLU (14x14)
   -> ConvT(2w, C, 4, 2, 1) Tanh (28x28); bias-free before BatchNorm.
D: Conv(C, w, 4, 2, 1) LReLU(0.2) (14x14) -> Conv(w, 2w, 4, 2, 1) LReLU(0.2) (7x7) -> flatten h
   -> Linear(h, 1) + <embed(y), h> (a projection discriminator, Miyato & Koyama 2018, when conditional).
Widths: w = ``model.d_width`` for D and ``model.g_width`` for G (``mnist-quick`` uses 32 and 32).
Class-conditional when ``model.num_classes > 0`` (one-hot into G, projection in D), else plain.
"""

from __future__ import annotations

import torch
from torch import nn

from ganforge.config import ModelConfig
from ganforge.models.base import Discriminator, Generator, require

RESOLUTION = 28
_BASE = 7  # 7 -> 14 -> 28


class QuickGenerator(Generator):
    def __init__(self, latent_dim: int, num_classes: int, channels: int, width: int) -> None:
        super().__init__(latent_dim, num_classes, channels, RESOLUTION)
        self.top = 4 * width
        self.fc = nn.Linear(latent_dim + num_classes, self.top * _BASE * _BASE, bias=False)
        self.net = nn.Sequential(
            nn.BatchNorm2d(self.top),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(self.top, 2 * width, 4, 2, 1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, channels, 4, 2, 1),  # 14 -> 28
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_latent(z)
        code = self._one_hot(labels, z.shape[0], z.dtype)  # [B, K] or None
        if code is not None:
            z = torch.cat([z, code], dim=1)  # [B, nz + K]
        plane = self.fc(z).view(z.shape[0], self.top, _BASE, _BASE)  # [B, 4w, 7, 7]
        return self.net(plane)  # [B, C, 28, 28]


class QuickDiscriminator(Discriminator):
    def __init__(self, latent_dim: int, num_classes: int, channels: int, width: int) -> None:
        super().__init__(latent_dim, num_classes, channels, RESOLUTION)
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),  # 28 -> 14
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # 14 -> 7
            nn.LeakyReLU(0.2, inplace=True),
        )
        features = 2 * width * _BASE * _BASE
        self.head = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(x)
        self._one_hot(labels, x.shape[0], x.dtype)  # checks the labels (or their absence)
        h = self.features(x).flatten(1)  # [B, 2w*49]
        logits = self.head(h).squeeze(1)  # [B]
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(1)  # projection: <embed(y), h>
        return logits


def build_dcgan28(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """mnist-quick's network; ``g_width``/``d_width`` set the widths, conditional when num_classes > 0."""
    require(cfg, "resolution", RESOLUTION, "dcgan28", "its two stride-2 layers map 7x7 <-> 28x28")
    generator = QuickGenerator(cfg.latent_dim, cfg.num_classes, cfg.channels, cfg.g_width)
    discriminator = QuickDiscriminator(cfg.latent_dim, cfg.num_classes, cfg.channels, cfg.d_width)
    return generator, discriminator
