"""Least-squares GAN (Mao et al.): D regresses reals to 1 and fakes to 0, G pushes fakes to 1."""

from __future__ import annotations

from ganforge.config import LossConfig
from ganforge.losses import lsgan_d_loss, lsgan_g_loss
from ganforge.objectives import OBJECTIVES, LogitObjective


@OBJECTIVES.register("lsgan")
def lsgan(cfg: LossConfig) -> LogitObjective:
    return LogitObjective(lsgan_d_loss, lambda logits_fake, _real: lsgan_g_loss(logits_fake), "least squares")
