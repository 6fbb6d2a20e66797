"""Non-saturating BCE with an R1 penalty on the reals (StyleGAN2), lazily every ``reg_every`` D steps."""

from __future__ import annotations

from ganforge.config import LossConfig
from ganforge.losses import bce_discriminator_loss, nonsaturating_generator_loss, r1_penalty
from ganforge.objectives import OBJECTIVES, Batch, Critic, Objective, PhaseLoss


class R1Objective(Objective):
    def __init__(self, gamma: float, reg_every: int) -> None:
        self.gamma, self.reg_every = gamma, reg_every
        self.description = f"BCE (non-saturating) + R1, gamma {gamma:g}, every {reg_every} D step(s)"

    def d_phase(self, critic: Critic, real: Batch, fake: Batch, step: int) -> PhaseLoss:
        logits_real, logits_fake = critic.pair(real, fake)  # [b] each
        loss = bce_discriminator_loss(logits_real, logits_fake)
        terms = {}
        if self.gamma > 0 and step % self.reg_every == 0:
            r1, _ = r1_penalty(critic.for_penalty(), real.x, real.y)
            # lazy regularisation: k times the weight every k-th step keeps the penalty's average strength
            loss = loss + (self.gamma / 2) * self.reg_every * r1
            terms["r1"] = r1.detach()
        return PhaseLoss(loss, logits_real, logits_fake, terms)

    def g_phase(self, critic: Critic, fake: Batch, real: Batch, step: int) -> PhaseLoss:
        logits_fake = critic(fake.x, fake.y)  # [b]
        return PhaseLoss(nonsaturating_generator_loss(logits_fake), None, logits_fake)


@OBJECTIVES.register("r1")
def r1(cfg: LossConfig) -> R1Objective:
    return R1Objective(cfg.r1_gamma, cfg.reg_every)
