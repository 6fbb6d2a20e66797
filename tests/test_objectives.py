"""Every registered objective, under every update order: the phases move only their own network, the
losses are finite, and logit objectives match their closed forms through the phase interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganforge.config import apply_overrides
from ganforge.objectives import OBJECTIVES, Batch, LogitObjective, Objective, get_objective
from ganforge.recipes import get_recipe
from ganforge.training.distributed import DistContext
from ganforge.training.loop import Trainer
from ganforge.training.step import STAT_FIELDS, DiscriminatorCritic

ORDERS = ["same-fake", "fresh-noise", "kept-noise", "simultaneous"]


def supports_joint(objective: Objective) -> bool:
    return type(objective).joint is not Objective.joint


def tiny_trainer(tmp_path, objective: str, order: str) -> Trainer:
    cfg = get_recipe("digits-quick")  # conditional dcgan28 with EMA: the most moving parts
    overrides = [
        f"loss.name={objective}",
        f"train.g_update={order}",
        "train.precision=fp32",
        "data.max_images=32",
        "train.batch_size=16",
        "model.g_width=8",
        "model.d_width=8",
        "train.progress=false",
    ]
    apply_overrides(cfg, overrides)
    return Trainer(cfg, DistContext(), tmp_path / "run")


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# the simultaneous order needs both losses from one forward: objectives with penalties refuse it (asserted below)
CASES = [(n, o) for n in OBJECTIVES.names() for o in ORDERS if o != "simultaneous" or supports_joint(get_objective(n))]


@pytest.mark.parametrize("name,order", CASES)
def test_every_objective_trains_under_every_update_order(tmp_path, name, order):
    trainer = tiny_trainer(tmp_path, name, order)
    x_real, y_real = next(iter(trainer.loader.epoch(0)))
    g, d = trainer.nets.generator_core, trainer.nets.discriminator_core
    # a pure D step (g_every=2 skips G on batch 1) moves D only, a pure G step (d_every=2 on batch 1) G only
    if order != "simultaneous":
        trainer.cfg.train.g_every = 2
        g_before, d_before = params(g), params(d)
        trainer.step(x_real, y_real, 1, x_real.shape[0])
        assert moved(d_before, d) and not moved(g_before, g)
        trainer.cfg.train.g_every, trainer.cfg.train.d_every = 1, 2
        g_before, d_before = params(g), params(d)
        trainer.step(x_real, y_real, 1, x_real.shape[0])
        assert moved(g_before, g) and not moved(d_before, d)
        assert all(p.requires_grad for p in d.parameters())
        trainer.cfg.train.d_every = 1
    stats = trainer.step(x_real, y_real, 0, x_real.shape[0]).totals
    assert torch.isfinite(stats).all()
    assert stats[STAT_FIELDS.index("n_d")] == 1 and stats[STAT_FIELDS.index("n_g")] == 1


def test_objectives_without_a_joint_form_refuse_the_simultaneous_order():
    for name in OBJECTIVES.names():
        objective = get_objective(name)
        if not supports_joint(objective):
            with pytest.raises(NotImplementedError, match="simultaneous"):
                objective.joint(None, None, None, 0)


class _LinearD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25]))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return x.flatten(1) @ self.weight  # [b]


@pytest.mark.parametrize("name", [n for n in OBJECTIVES.names() if isinstance(get_objective(n), LogitObjective)])
def test_logit_objectives_phases_equal_their_loss_functions(name):
    """The phase interface adds nothing to a logit objective: d_phase/g_phase/joint give d_loss/g_loss of D's
    logits, whether the critic scores reals and fakes in one forward or two."""
    objective = get_objective(name)
    real = Batch(torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0)), None)
    fake = Batch(torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1)), None)
    D = _LinearD()
    logits_real, logits_fake = D(real.x, None), D(fake.x, None)
    for per_sample in (True, False):
        critic = DiscriminatorCritic(D, lambda: torch.autocast("cpu", enabled=False), per_sample)
        d = objective.d_phase(critic, real, fake, 0)
        torch.testing.assert_close(d.loss, objective.d_loss(logits_real, logits_fake))
        g = objective.g_phase(critic, fake, real, 0)
        torch.testing.assert_close(g.loss, objective.g_loss(logits_fake, logits_real))
        d_joint, g_joint = objective.joint(critic, real, fake, 0)
        torch.testing.assert_close(d_joint.loss, d.loss)
        torch.testing.assert_close(g_joint.loss, g.loss)


def test_penalties_equal_their_closed_forms_for_a_linear_critic():
    """D(x) = <w, x>: grad_x D = w for every sample, so R1 = R2 = ||w||^2 and WGAN-GP = (||w|| - 1)^2."""
    from ganforge.config import LossConfig
    from ganforge.losses import bce_discriminator_loss, rpgan_d_loss, wgan_d_loss

    real = Batch(torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0)), None)
    fake = Batch(torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(1)), None)
    D = _LinearD()
    critic = DiscriminatorCritic(D, lambda: torch.autocast("cpu", enabled=False), True)
    w2 = float(D.weight.detach().square().sum())
    lr, lf = D(real.x, None).detach(), D(fake.x, None).detach()
    cfg = LossConfig(r1_gamma=4.0, r2_gamma=2.0, gp_lambda=10.0, reg_every=2)
    expected = {
        "r1": float(bce_discriminator_loss(lr, lf)) + 4.0 / 2 * 2 * w2,
        "rpgan": float(rpgan_d_loss(lr, lf)) + (4.0 / 2 + 2.0 / 2) * 2 * w2,
        "wgan-gp": float(wgan_d_loss(lr, lf)) + 10.0 * 2 * (w2**0.5 - 1) ** 2,
    }
    for name, value in expected.items():
        objective = get_objective(name, cfg)
        assert float(objective.d_phase(critic, real, fake, step=4).loss) == pytest.approx(value, rel=1e-5)
        # lazy regularisation: no penalty on steps that are not a multiple of reg_every
        unpenalised = objective.d_phase(critic, real, fake, step=3)
        assert not unpenalised.terms and float(unpenalised.loss) < value
