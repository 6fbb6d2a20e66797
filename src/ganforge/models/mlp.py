"""Fully connected GANs: ``mlp`` (mnist-mlp) and ``mlp-bn`` (mnist-mlp-bn, the loss reference)."""

from __future__ import annotations

import torch
from torch import nn

from ganforge.config import ModelConfig
from ganforge.models.base import Discriminator, Generator, require, require_unconditional

# Hidden sizes are fixed by both specs; g_width/d_width size the conv nets only.
G_HIDDEN = (256, 512)
D_HIDDEN = (512, 256)
# Keras's defaults, which mnist-mlp-bn's original relies on without stating them
KERAS_LEAKY_SLOPE = 0.3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum=0.99 keeps 99% of the running statistic: PyTorch's momentum is 1 - that
KERAS_BN_EPS = 1e-3


class MLPGenerator(Generator):
    """latent -> 256 -> 512 -> C*R*R, Tanh, reshaped to [C, R, R].

    ``batchnorm=False`` (mnist-mlp): Linear with bias, then ReLU.
    ``batchnorm=True`` (mnist-mlp-bn, a Keras original): Dense without bias, BatchNormalization and
    LeakyReLU with Keras's defaults (momentum 0.99, i.e. PyTorch's 0.01; epsilon 1e-3; slope 0.3); the
    output Dense is bias-free as well, as in that spec.
    """

    def __init__(self, latent_dim: int, channels: int, resolution: int, batchnorm: bool = False) -> None:
        super().__init__(latent_dim, 0, channels, resolution)
        layers: list[nn.Module] = []
        width = latent_dim
        for hidden in G_HIDDEN:
            if batchnorm:
                bn = nn.BatchNorm1d(hidden, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
                layers += [nn.Linear(width, hidden, bias=False), bn, nn.LeakyReLU(KERAS_LEAKY_SLOPE)]
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
    """flatten C*R*R -> 512 -> 256 -> 1 with LeakyReLU(``slope``): 0.01 in mnist-mlp, Keras's 0.3 in mnist-mlp-bn.

    Without ``output_sigmoid`` it returns logits, and the loss applies the spec's sigmoid in logit space
    (stable BCE). ``output_sigmoid`` keeps mnist-mlp-bn's flaw: its D ends in a sigmoid, and the loss then
    treats that probability as a logit (a second sigmoid).
    """

    def __init__(
        self, channels: int, resolution: int, latent_dim: int, slope: float = 0.01, output_sigmoid: bool = False
    ) -> None:
        super().__init__(latent_dim, 0, channels, resolution)
        width = channels * resolution * resolution
        layers: list[nn.Module] = []
        for hidden in D_HIDDEN:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(slope)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        if output_sigmoid:
            layers.append(nn.Sigmoid())  # no parameters: the state_dict keys stay those of the logit net
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
    discriminator = MLPDiscriminator(cfg.channels, cfg.resolution, cfg.latent_dim, output_sigmoid=cfg.d_output_sigmoid)
    return generator, discriminator


def build_mlp_bn(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """mnist-mlp-bn: bias-free Dense + BatchNorm + LeakyReLU generator, LeakyReLU discriminator, with Keras's values."""
    _check(cfg, "mlp-bn")
    generator = MLPGenerator(cfg.latent_dim, cfg.channels, cfg.resolution, batchnorm=True)
    discriminator = MLPDiscriminator(
        cfg.channels, cfg.resolution, cfg.latent_dim, slope=KERAS_LEAKY_SLOPE, output_sigmoid=cfg.d_output_sigmoid
    )
    return generator, discriminator
