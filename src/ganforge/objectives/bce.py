"""The reference systems' objective: binary cross-entropy on D's logits (``losses.py`` has the maths)."""

from __future__ import annotations

from ganforge.config import LossConfig
from ganforge.losses import bce_discriminator_loss, nonsaturating_generator_loss, saturating_generator_loss
from ganforge.objectives import OBJECTIVES, LogitObjective


@OBJECTIVES.register("bce")
def bce(cfg: LossConfig) -> LogitObjective:
    return LogitObjective(
        bce_discriminator_loss,
        lambda logits_fake, _real: nonsaturating_generator_loss(logits_fake),
        "BCE, non-saturating G loss -log D(G(z))",
    )


@OBJECTIVES.register("bce-saturating")
def bce_saturating(cfg: LossConfig) -> LogitObjective:
    return LogitObjective(
        bce_discriminator_loss,
        lambda logits_fake, _real: saturating_generator_loss(logits_fake),
        "BCE, minimax G loss log(1 - D(G(z)))",
    )
