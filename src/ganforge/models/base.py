"""Shared pieces of every ganforge network: the uniform call interface and config checks.

Every generator is called as ``generator(z, labels=None)`` with ``z`` float ``[B, latent_dim]``
and returns images float ``[B, channels, resolution, resolution]``; every discriminator is called
as ``discriminator(x, labels=None)`` and returns one logit per image, float ``[B]``. ``labels`` are
int64 class indices ``[B]``, required exactly when ``num_classes > 0``; the one-hot encoding
happens inside the module so callers never build it themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.config import ModelConfig
from ganforge.errors import ConfigError

# Archs whose generator and discriminator take labels; named in the error for the others.
CONDITIONAL_ARCHS: tuple[str, ...] = ("cdcgan",)


class GanModule(nn.Module):
    """Base of generators and discriminators: carries the sizes callers need and encodes labels."""

    def __init__(self, latent_dim: int, num_classes: int, channels: int, resolution: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.channels = channels
        self.resolution = resolution

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def _one_hot(self, labels: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """``labels`` [B] int64 -> one-hot [B, num_classes] in ``dtype``; None for unconditional modules."""
        name = type(self).__name__
        if self.num_classes == 0:
            if labels is not None:
                raise ValueError(f"{name} is unconditional (num_classes=0) but was given labels")
            return None
        if labels is None:
            raise ValueError(f"{name} is conditional on {self.num_classes} classes: pass labels, int64 [B]")
        if labels.dtype != torch.long or tuple(labels.shape) != (batch,):
            raise ValueError(
                f"{name}: labels must be int64 of shape [{batch}], got {labels.dtype} {tuple(labels.shape)}"
            )
        # F.one_hot with an explicit num_classes range-checks on CPU and, on CUDA, relies on a
        # device-side assert instead of a host sync, so it costs nothing per training step.
        return F.one_hot(labels, self.num_classes).to(dtype)  # [B, K]


class Generator(GanModule):
    """``forward(z, labels=None) -> images [B, channels, resolution, resolution]`` in [-1, 1]."""

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{type(self).__name__}: z must be [B, {self.latent_dim}], got {tuple(z.shape)}")


# Layers that carry a block's weights: a FreezeD block starts at each of these (see feature_blocks).
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
# Treated as single layers even when they have children (spectral norm hangs a parametrization under them).
_LEAVES = (*_WEIGHT_LAYERS, nn.Embedding, nn.modules.batchnorm._BatchNorm)


def _layers(module: nn.Module) -> list[nn.Module]:
    """The leaf layers of ``module`` in registration order (the forward order of every ganforge D)."""
    if isinstance(module, _LEAVES) or not any(True for _ in module.children()):
        return [module]
    return [leaf for child in module.children() for leaf in _layers(child)]


class Discriminator(GanModule):
    """``forward(x, labels=None) -> logits [B]`` (no sigmoid: the losses work in logit space)."""

    pack = 1  # images per logit: > 1 only for PacGAN's PackedDiscriminator (ganforge.models.options)

    def feature_blocks(self) -> list[nn.Module]:
        """D's blocks from the input up, for FreezeD (``ganforge.models.freeze_discriminator_blocks``).

        By default a block is one weight layer (Conv/Linear) with the norms, activations and pools after it,
        and the last block is the one that makes the logit (with a projection embedding, if any). Archs with
        residual blocks override this to return those.
        """
        groups: list[list[nn.Module]] = []
        for layer in _layers(self):
            if isinstance(layer, _WEIGHT_LAYERS) or not groups:
                groups.append([])
            groups[-1].append(layer)
        return [nn.ModuleList(group) for group in groups]

    def _check_images(self, x: torch.Tensor) -> None:
        expected = (self.channels, self.resolution, self.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__}: x must be [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}"
            )


def require(cfg: ModelConfig, field: str, allowed: int, arch: str, why: str) -> None:
    """Raise ``ConfigError`` unless ``cfg.<field> == allowed`` (a value the arch's spec fixes)."""
    value = getattr(cfg, field)
    if value != allowed:
        raise ConfigError(
            f"model.{field}={value} is not supported by arch {arch!r}: it needs model.{field}={allowed} ({why})"
        )


def require_unconditional(cfg: ModelConfig, arch: str) -> None:
    if cfg.num_classes != 0:
        raise ConfigError(
            f"model.num_classes={cfg.num_classes} but arch {arch!r} is unconditional: "
            "set model.num_classes=0, "
            f"or use a conditional arch ({', '.join(CONDITIONAL_ARCHS)})"
        )


def require_conditional(cfg: ModelConfig, arch: str) -> None:
    if cfg.num_classes <= 0:
        raise ConfigError(
            f"model.num_classes={cfg.num_classes} but arch {arch!r} is class-conditional: "
            "set model.num_classes > 0 (e.g. 10 for MNIST)"
        )
