"""The model registry: ``MODELS`` maps an arch name to ``build(cfg) -> (generator, discriminator)``.

Every registered pair follows one interface (see ``ganforge.models.base``):
``generator(z [B, latent_dim], labels=None) -> images [B, C, R, R]`` in [-1, 1] and
``discriminator(x, labels=None) -> logits [B]``. Networks only: no I/O, no device choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from ganforge.config import ModelConfig, check_d_pack
from ganforge.errors import ConfigError
from ganforge.models.base import CONDITIONAL_ARCHS, Discriminator, GanModule, Generator
from ganforge.models.conv import ConvDiscriminator, ConvGenerator, build_conv
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator, build_cdcgan, build_dcgan96
from ganforge.models.init import dcgan_init_, keras_init_
from ganforge.models.mlp import MLPDiscriminator, MLPGenerator, build_mlp, build_mlp_bn
from ganforge.models.options import PackedDiscriminator, apply_spectral_norm, freeze_discriminator_blocks
from ganforge.models.quick import QuickDiscriminator, QuickGenerator, build_dcgan28
from ganforge.models.resnet import ResNetDiscriminator, ResNetGenerator, build_resnet
from ganforge.registry import Registry

Builder = Callable[[ModelConfig], tuple[nn.Module, nn.Module]]

MODELS: Registry[Builder] = Registry("model")
MODELS.register("mlp")(build_mlp)  # mnist-mlp
MODELS.register("mlp-bn")(build_mlp_bn)  # mnist-mlp-bn
MODELS.register("conv")(build_conv)  # mnist-conv
MODELS.register("cdcgan")(build_cdcgan)  # mnist-cgan
MODELS.register("dcgan96")(build_dcgan96)  # anime-dcgan
MODELS.register("dcgan28")(build_dcgan28)  # mnist-quick, digits-quick
MODELS.register("resnet")(build_resnet)  # residual G and D, 32-256 px, any width, optionally conditional

INITS = ("default", "dcgan", "keras")
_POSITIVE = ("latent_dim", "channels", "resolution", "g_width", "d_width", "d_pack")


def build_models(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Build ``(generator, discriminator)`` for ``cfg.arch``, apply ``cfg.init``, then ``cfg.spectral_norm``.

    ``init="default"`` keeps PyTorch's own init; ``"dcgan"`` applies ``dcgan_init_`` to both nets.
    ``spectral_norm=True`` parametrizes every Conv/Linear/Embedding of D (``apply_spectral_norm``).
    ``d_pack > 1``: D is the arch's D for ``d_pack * channels`` channels inside a ``PackedDiscriminator``.
    Raises ``ConfigError`` for an unknown arch or init, or a value the arch's spec contradicts.
    """
    # Checked here too because a ModelConfig can be built directly, bypassing config.validate.
    if cfg.init not in INITS:
        raise ConfigError(f"model.init={cfg.init!r} is not one of: {', '.join(INITS)}")
    for name in _POSITIVE:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"model.{name}={getattr(cfg, name)} must be > 0")
    if cfg.num_classes < 0:
        raise ConfigError(f"model.num_classes={cfg.num_classes} must be >= 0")
    generator, discriminator = MODELS.get(cfg.arch)(cfg)
    if cfg.d_pack > 1:
        discriminator = _packed_discriminator(cfg)
    if cfg.d_output_sigmoid and cfg.arch not in ("mlp", "mlp-bn"):
        raise ConfigError(f"model.d_output_sigmoid=true is supported by the MLP archs only, not {cfg.arch!r}")
    initialise = {"dcgan": dcgan_init_, "keras": keras_init_}.get(cfg.init)
    if initialise is not None:
        initialise(generator)
        initialise(discriminator)
    if cfg.spectral_norm:
        apply_spectral_norm(discriminator)  # after init: it normalises the initialised weights
    return generator, discriminator


def _packed_discriminator(cfg: ModelConfig) -> PackedDiscriminator:
    check_d_pack(cfg)
    wide = dataclasses.replace(cfg, channels=cfg.channels * cfg.d_pack)
    try:
        _, discriminator = MODELS.get(cfg.arch)(wide)
    except ConfigError as e:
        raise ConfigError(f"model.d_pack={cfg.d_pack}: arch {cfg.arch!r} cannot build a D for "
                          f"{wide.channels} input channels ({e})") from None  # fmt: skip
    return PackedDiscriminator(discriminator, cfg.d_pack)


__all__ = [
    "CONDITIONAL_ARCHS",
    "INITS",
    "MODELS",
    "Builder",
    "ConvDiscriminator",
    "ConvGenerator",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "Discriminator",
    "GanModule",
    "Generator",
    "MLPDiscriminator",
    "MLPGenerator",
    "PackedDiscriminator",
    "QuickDiscriminator",
    "QuickGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "apply_spectral_norm",
    "build_models",
    "dcgan_init_",
    "freeze_discriminator_blocks",
    "keras_init_",
]
