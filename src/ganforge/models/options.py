"""Options applied to built networks: spectral normalisation of D, FreezeD and PacGAN's packing.

They act on any registered discriminator through the modules it holds, so an arch needs no code for
them (an arch with residual blocks names its FreezeD blocks with ``Discriminator.feature_blocks``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ganforge.errors import ConfigError
from ganforge.models.base import Discriminator

# Every weight D multiplies its input by: SNGAN normalises convs and linears, and the projection
# discriminator its class embedding too (otherwise the <embed(y), h> term is the one unconstrained path).
SPECTRAL_NORM_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """In place, ``torch.nn.utils.parametrizations.spectral_norm`` on every Conv/Linear/Embedding; returns it.

    Each weight becomes ``original / sigma``, sigma estimated by one power iteration per training-mode
    forward; the iteration's vectors ``_u``/``_v`` are buffers, so they are in the state_dict and a
    checkpoint resumes them exactly. Apply after any weight init (init writes ``original`` then).
    """
    for layer in [m for m in module.modules() if isinstance(m, SPECTRAL_NORM_LAYERS)]:
        parametrizations.spectral_norm(layer)
    return module


def freeze_discriminator_blocks(discriminator: nn.Module, n: int) -> list[str]:
    """FreezeD (Mo et al. 2020): ``requires_grad=False`` on the parameters of D's first ``n`` blocks.

    Returns the frozen parameters' names (as in ``discriminator.named_parameters()``) so the caller can leave
    them out of D's optimiser. ``n = 0`` freezes nothing; ``n`` must leave at least the last block (the
    logit) trainable. Buffers (BatchNorm statistics) are not parameters and still update in train mode.
    """
    if not isinstance(discriminator, Discriminator):
        raise TypeError(f"expected a ganforge Discriminator, got {type(discriminator).__name__}")
    blocks = discriminator.feature_blocks()
    if not 0 <= n < len(blocks):
        raise ConfigError(
            f"train.freeze_d_layers={n} but this discriminator has {len(blocks)} blocks: "
            f"freeze 0 to {len(blocks) - 1} of them (the last one makes the logit)"
        )
    frozen = {id(p) for block in blocks[:n] for p in block.parameters()}
    names = []
    for name, p in discriminator.named_parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
            names.append(name)
    return names


class PackedDiscriminator(Discriminator):
    """PacGAN's D (Lin et al. 2018): ``forward(x [B, C, H, W]) -> logits [B / pack]``, one per pack.

    Images ``pack * i`` to ``pack * i + pack - 1`` go side by side along the channels of one input of
    ``packed``, a discriminator built for ``pack * C`` channels. Every pack holds images of one kind (all
    real or all fake) because the training step passes reals and fakes as separate halves of whole packs,
    and the objectives only take means over the logits, so they need no change. Unconditional only.
    """

    def __init__(self, packed: Discriminator, pack: int) -> None:
        if packed.channels % pack:
            raise ValueError(f"a D for {packed.channels} channels cannot take packs of {pack} images")
        super().__init__(packed.latent_dim, packed.num_classes, packed.channels // pack, packed.resolution)
        self.packed, self.pack = packed, pack

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._one_hot(labels, x.shape[0], x.dtype)  # unconditional: refuses labels
        self._check_images(x)
        # (an export traces the batch as a symbol: a Python test on it would freeze one batch size in)
        if not torch.jit.is_tracing() and x.shape[0] % self.pack:
            raise ValueError(f"a packed D (model.d_pack={self.pack}) needs a batch divisible by {self.pack}, "
                             f"got {x.shape[0]}")  # fmt: skip
        _, c, h, w = x.shape
        packs = x.reshape(-1, self.pack * c, h, w)  # [B / pack, pack * C, H, W]
        return self.packed(packs)  # [B / pack]

    def feature_blocks(self) -> list[nn.Module]:
        return self.packed.feature_blocks()
