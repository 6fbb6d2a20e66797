"""GAN objectives as pure functions of discriminator logits.

The reference systems put a Sigmoid at the end of D and use ``BCELoss`` on the
probability. We keep the same maths but work in logit space:
``-log sigmoid(l) = softplus(-l)`` and ``-log(1 - sigmoid(l)) = softplus(l)``,
which stays finite for any logit (BCELoss clamps log at -100 and loses gradient).

Each objective is registered under the name recipes use (``loss.name``) and has a
discriminator loss ``d_loss(logits_real, logits_fake)`` and a generator loss
``g_loss(logits_fake)``; both return a scalar mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ganforge.registry import Registry


@dataclass(frozen=True)
class GanLoss:
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g_loss: Callable[[torch.Tensor], torch.Tensor]
    description: str


LOSSES: Registry[GanLoss] = Registry("loss")


def bce_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), each averaged over its batch, then summed.

    Equals ``BCELoss(D(x), 1) + BCELoss(D(G(z)), 0)`` of the originals.
    """
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def nonsaturating_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): ``BCELoss(D(G(z)), 1)``, strong gradients while D rejects fakes."""
    return F.softplus(-logits_fake).mean()


def saturating_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))): the textbook minimax objective, minimised by G.

    Its gradient vanishes when D confidently rejects the fakes (the reason the
    non-saturating form is the default); kept for study and comparison.
    """
    return -F.softplus(logits_fake).mean()


LOSSES.register("bce")(
    GanLoss(bce_discriminator_loss, nonsaturating_generator_loss, "BCE, non-saturating G loss -log D(G(z))")
)
LOSSES.register("bce-saturating")(
    GanLoss(bce_discriminator_loss, saturating_generator_loss, "BCE, minimax G loss log(1 - D(G(z)))")
)
