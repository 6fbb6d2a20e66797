"""R3GAN's objective: the relativistic pairing loss with R1 on the reals and R2 on the fakes.

D minimises softplus(-(D(x) - D(G(z)))), G the same with the roles swapped; the pairing is sample i with
sample i, so real and fake batches have one size. The penalties, gamma/2 * (R1 + R2), make the pairing
loss converge locally (Huang et al. 2024).
"""

from __future__ import annotations

from ganforge.config import LossConfig
from ganforge.losses import r1_penalty, r2_penalty, rpgan_d_loss, rpgan_g_loss
from ganforge.objectives import OBJECTIVES, Batch, Critic, Objective, PhaseLoss


class RelativisticPairing(Objective):
    def __init__(self, r1_gamma: float, r2_gamma: float, reg_every: int) -> None:
        self.r1_gamma, self.r2_gamma, self.reg_every = r1_gamma, r2_gamma, reg_every
        self.description = f"relativistic pairing + R1 ({r1_gamma:g}) + R2 ({r2_gamma:g}) (R3GAN)"

    def d_phase(self, critic: Critic, real: Batch, fake: Batch, step: int) -> PhaseLoss:
        logits_real, logits_fake = critic.pair(real, fake)  # [b] each
        loss = rpgan_d_loss(logits_real, logits_fake)
        terms = {}
        if step % self.reg_every == 0:
            plain = critic.for_penalty()
            if self.r1_gamma > 0:
                r1, _ = r1_penalty(plain, real.x, real.y)
                loss = loss + (self.r1_gamma / 2) * self.reg_every * r1
                terms["r1"] = r1.detach()
            if self.r2_gamma > 0:
                r2, _ = r2_penalty(plain, fake.x, fake.y)
                loss = loss + (self.r2_gamma / 2) * self.reg_every * r2
                terms["r2"] = r2.detach()
        return PhaseLoss(loss, logits_real, logits_fake, terms)

    def g_phase(self, critic: Critic, fake: Batch, real: Batch, step: int) -> PhaseLoss:
        logits_real, logits_fake = critic.pair(real, fake)  # [b] each: the G loss compares the two
        return PhaseLoss(rpgan_g_loss(logits_fake, logits_real), logits_real, logits_fake)


@OBJECTIVES.register("rpgan")
def rpgan(cfg: LossConfig) -> RelativisticPairing:
    return RelativisticPairing(cfg.r1_gamma, cfg.r2_gamma, cfg.reg_every)
