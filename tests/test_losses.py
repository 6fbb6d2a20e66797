"""Each GAN loss term against its closed form, including extreme logits."""

import math
from types import SimpleNamespace

import pytest
import torch

from ganforge import losses
from ganforge.objectives import OBJECTIVES

# The BCE objectives' terms, as the registered ``bce`` and ``bce-saturating`` objectives use them.
BCE_TERMS = {
    "bce": SimpleNamespace(d_loss=losses.bce_discriminator_loss, g_loss=losses.nonsaturating_generator_loss),
    "bce-saturating": SimpleNamespace(d_loss=losses.bce_discriminator_loss, g_loss=losses.saturating_generator_loss),
}


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


def test_both_bce_objectives_are_registered():
    assert set(CLOSED_FORMS) <= set(OBJECTIVES.names())


@pytest.mark.parametrize("name", sorted(BCE_TERMS))
@pytest.mark.parametrize("logit_real,logit_fake", [(0.0, 0.0), (2.0, -1.5), (-3.0, 4.0), (0.7, 0.2)])
def test_loss_matches_closed_form(name, logit_real, logit_fake):
    loss = BCE_TERMS.get(name)
    d_form, g_form = CLOSED_FORMS[name]
    real = torch.tensor([logit_real], dtype=torch.float64)
    fake = torch.tensor([logit_fake], dtype=torch.float64)
    assert loss.d_loss(real, fake).item() == pytest.approx(d_form(logit_real, logit_fake), rel=1e-12)
    assert loss.g_loss(fake).item() == pytest.approx(g_form(logit_fake), rel=1e-12)


@pytest.mark.parametrize("name", sorted(BCE_TERMS))
def test_loss_is_a_batch_mean(name):
    loss = BCE_TERMS.get(name)
    real = torch.tensor([0.5, -2.0, 3.0])
    fake = torch.tensor([1.0, 0.0, -4.0])
    per_item = torch.stack([loss.d_loss(real[i : i + 1], fake[i : i + 1]) for i in range(3)])
    assert loss.d_loss(real, fake).item() == pytest.approx(per_item.mean().item(), rel=1e-6)
    per_item_g = torch.stack([loss.g_loss(fake[i : i + 1]) for i in range(3)])
    assert loss.g_loss(fake).item() == pytest.approx(per_item_g.mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(BCE_TERMS))
@pytest.mark.parametrize("extreme", [-1e4, -100.0, 100.0, 1e4])
def test_extreme_logits_stay_finite_with_finite_gradients(name, extreme):
    loss = BCE_TERMS.get(name)
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
    BCE_TERMS.get("bce-saturating").g_loss(fake).backward()
    saturating = fake.grad.abs().item()
    fake.grad = None
    BCE_TERMS.get("bce").g_loss(fake).backward()
    nonsaturating = fake.grad.abs().item()
    assert saturating < 1e-4 < 0.99 < nonsaturating


# ---- the building blocks of the modern objectives: adversarial terms in logit space ----

# name -> (function, closed form of one real/fake logit pair; None where the term takes fakes only)
TERM_FORMS = {
    "hinge_d_loss": (losses.hinge_d_loss, lambda r, f: max(0.0, 1 - r) + max(0.0, 1 + f)),
    "lsgan_d_loss": (losses.lsgan_d_loss, lambda r, f: 0.5 * (r - 1) ** 2 + 0.5 * f**2),
    "wgan_d_loss": (losses.wgan_d_loss, lambda r, f: f - r),
    "rpgan_d_loss": (losses.rpgan_d_loss, lambda r, f: -math.log(sigmoid(r - f))),
    "rpgan_g_loss": (lambda r, f: losses.rpgan_g_loss(f, r), lambda r, f: -math.log(sigmoid(f - r))),
    "hinge_g_loss": (lambda r, f: losses.hinge_g_loss(f), lambda r, f: -f),
    "lsgan_g_loss": (lambda r, f: losses.lsgan_g_loss(f), lambda r, f: 0.5 * (f - 1) ** 2),
    "wgan_g_loss": (lambda r, f: losses.wgan_g_loss(f), lambda r, f: -f),
}
PAIRS = [(0.0, 0.0), (2.0, -1.5), (-3.0, 4.0), (0.7, 0.2), (1.0, -1.0), (0.5, -0.99)]


@pytest.mark.parametrize("name", sorted(TERM_FORMS))
@pytest.mark.parametrize("logit_real,logit_fake", PAIRS)
def test_term_matches_closed_form(name, logit_real, logit_fake):
    fn, form = TERM_FORMS[name]
    real = torch.tensor([logit_real], dtype=torch.float64)
    fake = torch.tensor([logit_fake], dtype=torch.float64)
    assert fn(real, fake).item() == pytest.approx(form(logit_real, logit_fake), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", sorted(TERM_FORMS))
def test_term_is_the_batch_mean_of_its_closed_form(name):
    fn, form = TERM_FORMS[name]
    real = torch.tensor([0.5, -2.0, 3.0, 1.0], dtype=torch.float64)
    fake = torch.tensor([1.0, 0.0, -4.0, -0.5], dtype=torch.float64)
    expected = sum(form(r, f) for r, f in zip(real.tolist(), fake.tolist(), strict=True)) / 4
    assert fn(real, fake).item() == pytest.approx(expected, rel=1e-12)


def test_rpgan_pairs_each_real_with_its_own_fake():
    """Pairing, not two separate means: swapping fakes between pairs changes the loss (BCE's would not)."""
    real = torch.tensor([3.0, -3.0])
    fake = torch.tensor([2.0, -4.0])
    assert losses.rpgan_d_loss(real, fake) != pytest.approx(losses.rpgan_d_loss(real, fake.flip(0)).item())
    with pytest.raises(ValueError, match="pairs real i with fake i"):
        losses.rpgan_d_loss(real, torch.zeros(3))


@pytest.mark.parametrize("extreme", [-1e4, 1e4])
def test_rpgan_stays_finite_for_extreme_gaps(extreme):
    real = torch.full((4,), extreme, requires_grad=True)
    fake = torch.full((4,), -extreme, requires_grad=True)
    loss = losses.rpgan_d_loss(real, fake) + losses.rpgan_g_loss(fake, real)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(real.grad).all() and torch.isfinite(fake.grad).all()
    # D and G disagree on the sign, so exactly one of them is wrong and pays the gap |real - fake| = 2|extreme|
    assert loss.item() == pytest.approx(2 * abs(extreme), rel=1e-3)


# ---- gradient penalties: values and the penalty's gradient w.r.t. D's parameters ----


class LinearCritic(torch.nn.Module):
    """D(x) = <w, flatten(x)> + b: grad_x D = w everywhere, so R1 = R2 = ||w||^2 and d R1 / d w = 2 w."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, 1).double()

    def forward(self, x, labels=None):
        return self.linear(x.flatten(1)).squeeze(1)


class QuadraticCritic(torch.nn.Module):
    """D(x) = c/2 ||x||^2: grad_x D = c x, so R1 = c^2 E||x||^2 and d R1 / d c = 2 c E||x||^2."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x, labels=None):
        return 0.5 * self.c * x.flatten(1).square().sum(1)


@pytest.mark.parametrize("penalty", [losses.r1_penalty, losses.r2_penalty])
def test_r1_r2_on_a_linear_critic(penalty):
    torch.manual_seed(0)
    critic = LinearCritic(2 * 3 * 3)
    x = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    value, logits = penalty(critic, x, None)
    w = critic.linear.weight.detach().flatten()
    assert value.item() == pytest.approx(w.square().sum().item(), rel=1e-12)
    torch.testing.assert_close(logits, critic(x))  # the same forward, returned for the adversarial term
    value.backward()
    torch.testing.assert_close(critic.linear.weight.grad.flatten(), 2 * w)
    assert critic.linear.bias.grad is None  # the bias does not change grad_x D, so the penalty never sees it


@pytest.mark.parametrize("penalty", [losses.r1_penalty, losses.r2_penalty])
def test_r1_r2_on_a_quadratic_critic(penalty):
    torch.manual_seed(1)
    critic = QuadraticCritic(0.7)
    x = torch.randn(4, 1, 3, 5, dtype=torch.float64)
    value, _ = penalty(critic, x, None)
    mean_sq = x.flatten(1).square().sum(1).mean().item()
    assert value.item() == pytest.approx(0.7**2 * mean_sq, rel=1e-12)
    value.backward()
    assert critic.c.grad.item() == pytest.approx(2 * 0.7 * mean_sq, rel=1e-12)


def test_penalty_does_not_reach_the_images_source():
    """x is detached inside: R1/R2 regularise D only, never the generator that made the fakes."""
    source = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    x_fake = source * torch.ones(3, 1, 2, 2, dtype=torch.float64)
    critic = QuadraticCritic(1.5)
    value, _ = losses.r2_penalty(critic, x_fake, None)
    value.backward()
    assert source.grad is None and critic.c.grad is not None


def small_nonlinear_critic() -> torch.nn.Module:
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 2, 3, padding=1),
        torch.nn.Softplus(),
        torch.nn.Conv2d(2, 2, 3, stride=2, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 2 * 2, 1),
        torch.nn.Flatten(0),
    ).double()


def finite_difference_gradient(net: torch.nn.Module, value_fn, eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of ``value_fn()`` in every parameter entry: a reference for the double backward."""
    grads = []
    with torch.no_grad():
        params = list(net.parameters())
    for p in params:
        grad = torch.zeros_like(p)
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            keep = flat[i].item()
            flat[i] = keep + eps
            up = value_fn().item()
            flat[i] = keep - eps
            down = value_fn().item()
            flat[i] = keep
            grad.view(-1)[i] = (up - down) / (2 * eps)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("which", ["r1", "r2", "gp"])
def test_penalty_gradient_matches_finite_differences(which):
    """A real double backward: a nonlinear conv critic, the penalty's autograd gradient in every parameter
    against central finite differences of the penalty itself."""
    net = small_nonlinear_critic()

    def critic(x, labels):
        return net(x)

    torch.manual_seed(3)
    x_real = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    x_fake = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    seed = torch.Generator().manual_seed(7)

    def value():
        if which == "r1":
            return losses.r1_penalty(critic, x_real, None)[0]
        if which == "r2":
            return losses.r2_penalty(critic, x_fake, None)[0]
        return losses.gradient_penalty(critic, x_real, x_fake, None, torch.Generator().set_state(seed.get_state()))

    net.zero_grad()
    value().backward()
    # The output bias shifts D but not its input gradient: it alone gets no gradient from a penalty.
    names = [name for name, _ in net.named_parameters()]
    autograd_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]
    reference = finite_difference_gradient(net, value)
    for name, got, want in zip(names, autograd_grads, reference, strict=True):
        if name != "5.bias":
            assert want.abs().max() > 1e-6, name  # vacuous if the penalty ignored this parameter
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8, msg=name)


def test_gradient_penalty_closed_form_and_its_alpha_stream():
    """D = c/2 ||x||^2: ||grad D(x_hat)|| = c ||x_hat||; alpha is the generator's next B uniforms."""
    torch.manual_seed(4)
    x_real = torch.randn(6, 1, 2, 3, dtype=torch.float64)
    x_fake = torch.randn(6, 1, 2, 3, dtype=torch.float64)
    critic = QuadraticCritic(0.9)
    generator = torch.Generator().manual_seed(11)
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(11)).double().view(6, 1, 1, 1)
    x_hat = alpha * x_real + (1 - alpha) * x_fake
    norms = x_hat.flatten(1).norm(dim=1)  # [B]
    value = losses.gradient_penalty(critic, x_real, x_fake, None, generator)
    assert value.item() == pytest.approx(((0.9 * norms - 1) ** 2).mean().item(), rel=1e-10)
    value.backward()
    assert critic.c.grad.item() == pytest.approx((2 * (0.9 * norms - 1) * norms).mean().item(), rel=1e-10)
    # The generator advanced by exactly B draws, so a checkpointed state resumes the same stream.
    after = torch.Generator().manual_seed(11)
    torch.rand(6, generator=after)
    assert torch.equal(generator.get_state(), after.get_state())


def test_gradient_penalty_of_a_one_lipschitz_linear_critic_is_zero_with_finite_gradients():
    critic = LinearCritic(4)
    with torch.no_grad():
        critic.linear.weight.copy_(torch.tensor([[0.6, 0.0, 0.8, 0.0]], dtype=torch.float64))
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    value = losses.gradient_penalty(critic, x, -x, None, torch.Generator().manual_seed(0))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.isfinite(critic.linear.weight.grad).all()


def test_penalties_pass_labels_to_the_critic():
    seen = []

    def critic(x, labels):
        seen.append(labels)
        return x.flatten(1).sum(1)

    labels = torch.tensor([1, 0])
    x = torch.zeros(2, 1, 2, 2)
    losses.r1_penalty(critic, x, labels)
    losses.r2_penalty(critic, x, labels)
    losses.gradient_penalty(critic, x, x, labels, torch.Generator())
    assert all(s is labels for s in seen) and len(seen) == 3
