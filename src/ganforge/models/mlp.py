"""Fully connected GANs: ``mlp`` (mnist-mlp) and ``mlp-bn`` (mnist-mlp-bn, the loss reference)."""

from __future__ import annotations

import torch
from torch import nn

from ganforge.config import ModelConfig
from ganforge.models.base import Discriminator, Generator, require, require_unconditional

# Hidden sizes are fixed by both specs; g_width/d_width size the conv nets only.
G_HIDDEN = (256, 512)
D_HIDDEN = (512, 256)


class MLPGenerator(Generator):
    """latent -> 256 -> 512 -> C*R*R, Tanh, reshaped to [C, R, R].

    ``batchnorm=False`` (mnist-mlp): Linear with bias, then ReLU.
    ``batchnorm=True`` (mnist-mlp-bn): Linear without bias (BN's shift makes it redundant), BN,
    LeakyReLU(0.01); the output Linear is bias-free as well, as in that spec.
    """

    def __init__(self, latent_dim: int, channels: int, resolution: int, batchnorm: bool = False) -> None:
        super().__init__(latent_dim, 0, channels, resolution)
        layers: list[nn.Module] = []
        width = latent_dim
        for hidden in G_HIDDEN:
            if batchnorm:
                layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.01)]
            else:
                layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers += [nn.Linear(width, channels * resolution * resolution, bias=not batchnorm), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_latent(z)
        self._one_hot(labels, z.shape[0], z.dtype)  # rejects labels: this net is unconditional
        flat = self.net(z)  # [B, C*R*R]
        return flat.view(z.shape[0], self.channels, self.resolution, self.resolution)  # [B, C, R, R]


class MLPDiscriminator(Discriminator):
    """flatten C*R*R -> 512 -> 256 -> 1 with LeakyReLU(0.01); the same net in both MLP specs."""

    def __init__(self, channels: int, resolution: int, latent_dim: int) -> None:
        super().__init__(latent_dim, 0, channels, resolution)
        width = channels * resolution * resolution
        layers: list[nn.Module] = []
        for hidden in D_HIDDEN:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.01)]
            width = hidden
        # No Sigmoid: the spec's sigmoid is applied by the loss in logit space (stable BCE).
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(x)
        self._one_hot(labels, x.shape[0], x.dtype)
        return self.net(x.flatten(1)).squeeze(1)  # [B, C*R*R] -> [B, 1] -> [B]


def _check(cfg: ModelConfig, arch: str) -> None:
    require_unconditional(cfg, arch)
    require(cfg, "g_width", 64, arch, "its hidden sizes are fixed at 256/512 by the spec")
    require(cfg, "d_width", 64, arch, "its hidden sizes are fixed at 512/256 by the spec")


def build_mlp(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """mnist-mlp: ReLU generator with biases, LeakyReLU(0.01) discriminator."""
    _check(cfg, "mlp")
    generator = MLPGenerator(cfg.latent_dim, cfg.channels, cfg.resolution, batchnorm=False)
    return generator, MLPDiscriminator(cfg.channels, cfg.resolution, cfg.latent_dim)


def build_mlp_bn(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """mnist-mlp-bn: bias-free Linear + BatchNorm + LeakyReLU(0.01) generator."""
    _check(cfg, "mlp-bn")
    generator = MLPGenerator(cfg.latent_dim, cfg.channels, cfg.resolution, batchnorm=True)
    return generator, MLPDiscriminator(cfg.channels, cfg.resolution, cfg.latent_dim)
