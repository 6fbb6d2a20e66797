"""GAN objectives: what the D phase and the G phase minimise, given the networks and the batches.

This is StyleGAN2-ADA's ``loss.accumulate_gradients(phase, ...)`` split in two: an objective's
``d_phase`` returns the loss whose gradient steps D, its ``g_phase`` the loss whose gradient steps G.
Both get a ``Critic`` (D as a callable that already applies the run's augmentation and precision) and
the real and fake batches, so an objective can add a gradient penalty on the reals, score
interpolates, or pair reals with fakes without the training loop knowing. Who draws the noise, when
each phase runs and which fakes it sees is the update order's business (``training/step.py``).

Adding an objective: one file in this package that registers it (``@OBJECTIVES.register("name")``),
plus one import line below. ``tests/test_objectives.py`` runs every registered entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch

from ganforge.config import LossConfig
from ganforge.registry import Registry


class Batch(NamedTuple):
    x: torch.Tensor  # [b, C, H, W]
    y: torch.Tensor | None  # int64 [b] class labels (conditional models), else None


class Critic(Protocol):
    """D as the objectives see it: float logits [b]. Calls run under the run's autocast (and augmentation)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor: ...

    def for_penalty(self) -> Critic:
        """The same D for a gradient penalty's double backward: never through DDP's wrapper, whose hooks
        cannot take a second derivative (StyleGAN2-ADA takes its penalties on the plain module too)."""
        ...

    def pair(self, real: Batch, fake: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_real, logits_fake): the same numbers as two calls, possibly in one forward."""
        ...


@dataclass
class PhaseLoss:
    loss: torch.Tensor  # scalar: what this phase's backward differentiates
    logits_real: torch.Tensor | None  # [b], for the logged D(x); None if the phase did not score reals
    logits_fake: torch.Tensor  # [b], for the logged D(G(z))
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # named parts worth logging (e.g. r1)


class Objective:
    """Base: subclasses implement ``d_phase`` and ``g_phase``; ``joint`` serves the simultaneous order."""

    description = ""

    def d_phase(self, critic: Critic, real: Batch, fake: Batch, step: int) -> PhaseLoss:
        raise NotImplementedError

    def g_phase(self, critic: Critic, fake: Batch, real: Batch, step: int) -> PhaseLoss:
        raise NotImplementedError

    def joint(self, critic: Critic, real: Batch, fake: Batch, step: int) -> tuple[PhaseLoss, PhaseLoss]:
        """Both phases' losses from ONE forward of D over the reals and the (not detached) fakes, as the
        Keras custom train_step does. Objectives whose phases need more than logits refuse it."""
        raise NotImplementedError(f"{type(self).__name__} does not support train.g_update=simultaneous")


class LogitObjective(Objective):
    """An objective that is a pure function of D's logits: ``d_loss(real, fake)`` and ``g_loss(fake, real)``.

    ``g_needs_real``: the G loss compares fakes with reals (relativistic losses), so the G phase scores a
    real batch too.
    """

    def __init__(
        self,
        d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        g_loss: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        description: str,
        g_needs_real: bool = False,
    ) -> None:
        self.d_loss, self.g_loss, self.description, self.g_needs_real = d_loss, g_loss, description, g_needs_real

    def d_phase(self, critic: Critic, real: Batch, fake: Batch, step: int) -> PhaseLoss:
        logits_real, logits_fake = critic.pair(real, fake)  # [b] each
        return PhaseLoss(self.d_loss(logits_real, logits_fake), logits_real, logits_fake)

    def g_phase(self, critic: Critic, fake: Batch, real: Batch, step: int) -> PhaseLoss:
        if self.g_needs_real:
            logits_real, logits_fake = critic.pair(real, fake)  # [b] each
            return PhaseLoss(self.g_loss(logits_fake, logits_real), logits_real, logits_fake)
        logits_fake = critic(fake.x, fake.y)  # [b]
        return PhaseLoss(self.g_loss(logits_fake, None), None, logits_fake)

    def joint(self, critic: Critic, real: Batch, fake: Batch, step: int) -> tuple[PhaseLoss, PhaseLoss]:
        logits_real, logits_fake = critic.pair(real, fake)  # [b] each, graph into G kept
        d = PhaseLoss(self.d_loss(logits_real, logits_fake), logits_real, logits_fake)
        g = PhaseLoss(self.g_loss(logits_fake, logits_real), logits_real, logits_fake)
        return d, g


# name -> builder from the run's LossConfig (the penalties' weights and schedule live there)
OBJECTIVES: Registry[Callable[[LossConfig], Objective]] = Registry("objective")


def get_objective(name: str, cfg: LossConfig | None = None) -> Objective:
    return OBJECTIVES.get(name)(cfg or LossConfig(name=name))


# one line per objective file: importing it registers it
from ganforge.objectives import bce, hinge, lsgan, r1, rpgan, wgan_gp  # noqa: E402, F401
