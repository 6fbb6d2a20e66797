"""Each GAN objective against its closed form, including extreme logits."""

import math

import pytest
import torch

from ganforge.losses import LOSSES


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Closed forms written with probabilities, as the reference systems state them.
CLOSED_FORMS = {
    "bce": (
        lambda r, f: -math.log(sigmoid(r)) - math.log(1 - sigmoid(f)),
        lambda f: -math.log(sigmoid(f)),
    ),
    "bce-saturating": (
        lambda r, f: -math.log(sigmoid(r)) - math.log(1 - sigmoid(f)),
        lambda f: math.log(1 - sigmoid(f)),
    ),
}


def test_every_registered_loss_has_a_closed_form():
    assert set(LOSSES.names()) == set(CLOSED_FORMS)


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("logit_real,logit_fake", [(0.0, 0.0), (2.0, -1.5), (-3.0, 4.0), (0.7, 0.2)])
def test_loss_matches_closed_form(name, logit_real, logit_fake):
    loss = LOSSES.get(name)
    d_form, g_form = CLOSED_FORMS[name]
    real = torch.tensor([logit_real], dtype=torch.float64)
    fake = torch.tensor([logit_fake], dtype=torch.float64)
    assert loss.d_loss(real, fake).item() == pytest.approx(d_form(logit_real, logit_fake), rel=1e-12)
    assert loss.g_loss(fake).item() == pytest.approx(g_form(logit_fake), rel=1e-12)


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_is_a_batch_mean(name):
    loss = LOSSES.get(name)
    real = torch.tensor([0.5, -2.0, 3.0])
    fake = torch.tensor([1.0, 0.0, -4.0])
    per_item = torch.stack([loss.d_loss(real[i : i + 1], fake[i : i + 1]) for i in range(3)])
    assert loss.d_loss(real, fake).item() == pytest.approx(per_item.mean().item(), rel=1e-6)
    per_item_g = torch.stack([loss.g_loss(fake[i : i + 1]) for i in range(3)])
    assert loss.g_loss(fake).item() == pytest.approx(per_item_g.mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("extreme", [-1e4, -100.0, 100.0, 1e4])
def test_extreme_logits_stay_finite_with_finite_gradients(name, extreme):
    loss = LOSSES.get(name)
    real = torch.full((4,), extreme, requires_grad=True)
    fake = torch.full((4,), -extreme, requires_grad=True)
    d = loss.d_loss(real, fake)
    g = loss.g_loss(fake)
    (d + g).backward()
    assert torch.isfinite(d) and torch.isfinite(g)
    assert torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()
    # a D that is confidently wrong pays about |logit| per term, not a clamped 100
    if extreme < 0:
        assert d.item() == pytest.approx(2 * abs(extreme), rel=1e-3)


def test_saturating_gradient_vanishes_where_nonsaturating_does_not():
    """The reason for the non-saturating default: with D rejecting fakes (logit -10), the minimax
    G loss gives almost no gradient while -log D(G(z)) still pushes."""
    fake = torch.tensor([-10.0], requires_grad=True)
    LOSSES.get("bce-saturating").g_loss(fake).backward()
    saturating = fake.grad.abs().item()
    fake.grad = None
    LOSSES.get("bce").g_loss(fake).backward()
    nonsaturating = fake.grad.abs().item()
    assert saturating < 1e-4 < 0.99 < nonsaturating
