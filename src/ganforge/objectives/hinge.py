"""Hinge loss (SNGAN, BigGAN): D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z))."""

from __future__ import annotations

from ganforge.config import LossConfig
from ganforge.losses import hinge_d_loss, hinge_g_loss
from ganforge.objectives import OBJECTIVES, LogitObjective


@OBJECTIVES.register("hinge")
def hinge(cfg: LossConfig) -> LogitObjective:
    return LogitObjective(hinge_d_loss, lambda logits_fake, _real: hinge_g_loss(logits_fake), "hinge loss")
