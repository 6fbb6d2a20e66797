"""WGAN-GP (Gulrajani et al.): Wasserstein critic losses with a gradient penalty on interpolates.

The interpolation weights are drawn from a generator seeded by the step, so a resumed run draws what the
uninterrupted one would have, with no state to save.
"""

from __future__ import annotations

import torch

from ganforge.config import LossConfig
from ganforge.losses import gradient_penalty, wgan_d_loss, wgan_g_loss
from ganforge.objectives import OBJECTIVES, Batch, Critic, Objective, PhaseLoss

_ALPHA_SEED = 0x5EED_A1FA


class WassersteinGP(Objective):
    def __init__(self, gp_lambda: float, reg_every: int) -> None:
        self.gp_lambda, self.reg_every = gp_lambda, reg_every
        self.description = f"Wasserstein loss + gradient penalty, lambda {gp_lambda:g}"

    def d_phase(self, critic: Critic, real: Batch, fake: Batch, step: int) -> PhaseLoss:
        logits_real, logits_fake = critic.pair(real, fake)  # [b] each
        loss = wgan_d_loss(logits_real, logits_fake)
        terms = {}
        if self.gp_lambda > 0 and step % self.reg_every == 0:
            alpha_rng = torch.Generator().manual_seed(_ALPHA_SEED + step)
            # conditional runs interpolate within a label: the fakes' labels serve both ends
            gp = gradient_penalty(critic.for_penalty(), real.x, fake.x, fake.y, alpha_rng)
            loss = loss + self.gp_lambda * self.reg_every * gp
            terms["gp"] = gp.detach()
        return PhaseLoss(loss, logits_real, logits_fake, terms)

    def g_phase(self, critic: Critic, fake: Batch, real: Batch, step: int) -> PhaseLoss:
        logits_fake = critic(fake.x, fake.y)  # [b]
        return PhaseLoss(wgan_g_loss(logits_fake), None, logits_fake)


@OBJECTIVES.register("wgan-gp")
def wgan_gp(cfg: LossConfig) -> WassersteinGP:
    return WassersteinGP(cfg.gp_lambda, cfg.reg_every)
