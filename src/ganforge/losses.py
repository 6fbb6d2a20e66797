"""GAN objectives as pure functions of discriminator logits.

The reference systems put a Sigmoid at the end of D and use ``BCELoss`` on the
probability. We keep the same maths but work in logit space:
``-log sigmoid(l) = softplus(-l)`` and ``-log(1 - sigmoid(l)) = softplus(l)``,
which stays finite for any logit (BCELoss clamps log at -100 and loses gradient).

Every adversarial term returns a scalar mean over the batch. The objectives that recipes name
(``loss.name``) are registered in ``ganforge.objectives``, which composes these terms; this module
holds the terms only: BCE's discriminator loss and its two generator losses, the building blocks of
the modern objectives
(hinge, least squares, Wasserstein, R3GAN's relativistic pairing) and the gradient penalties
(R1, R2, WGAN-GP). They are pure functions: the adversarial terms take logits, the penalties take a
``critic(x, labels) -> logits [B]`` callable (the discriminator with whatever augmentation and
autocast the caller wraps around it) so the penalty is taken through exactly what D sees. Nothing
here steps an optimiser or knows about the training loop; objectives compose these and apply the
weights (gamma, lambda).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


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


# The critic a penalty differentiates: images [B, C, H, W] (and labels [B] or None) -> logits [B].
Critic = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """SNGAN / projection-D hinge: E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The hinge objective's generator loss: -E[D(G(z))] (G is not hinged)."""
    return -logits_fake.mean()


def lsgan_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Least squares GAN (Mao et al. 2017) on D's raw output, targets a=0 (fake), b=1 (real):
    1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2]."""
    return 0.5 * (logits_real - 1.0).square().mean() + 0.5 * logits_fake.square().mean()


def lsgan_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Least squares generator loss with target c=1 (G wants D to call fakes real): 1/2 E[(D(G(z)) - 1)^2]."""
    return 0.5 * (logits_fake - 1.0).square().mean()


def wgan_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss: E[D(G(z))] - E[D(x)] (needs a Lipschitz constraint, e.g. ``gradient_penalty``)."""
    return logits_fake.mean() - logits_real.mean()


def wgan_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein generator loss: -E[D(G(z))]."""
    return -logits_fake.mean()


def rpgan_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """R3GAN's relativistic pairing loss for D: E[softplus(-(D(x_i) - D(G(z_i))))] = -E[log sigmoid(real - fake)].

    Real i is paired with fake i, so both batches must have the same size.
    """
    _check_paired(logits_real, logits_fake)
    return F.softplus(logits_fake - logits_real).mean()


def rpgan_g_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """R3GAN's relativistic pairing loss for G: E[softplus(-(D(G(z_i)) - D(x_i)))].

    ``logits_real`` enter as constants for G (detach them or compute them without grad: D is not stepped here).
    """
    _check_paired(logits_real, logits_fake)
    return F.softplus(logits_real - logits_fake).mean()


def _check_paired(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
    if logits_real.shape != logits_fake.shape:
        raise ValueError(
            "the relativistic pairing loss pairs real i with fake i: logits must have one shape, got "
            f"{tuple(logits_real.shape)} and {tuple(logits_fake.shape)}"
        )


def _input_gradient_sq_norm(
    critic: Critic, x: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(||grad_x D(x)||^2 per sample [B], the logits [B], the gradient [B, ...]) at ``x`` (detached, so the
    penalty reaches D's parameters only). ``create_graph=True`` keeps the gradient differentiable: a
    backward of the penalty is the double backward that moves D's parameters."""
    x = x.detach().requires_grad_(True)
    logits = critic(x, labels)  # [B]
    # Summing the logits gives each sample's own input gradient: sample i's logit depends on x_i only
    # (true of every ganforge D in eval mode, and of train mode without BatchNorm in D).
    (grad,) = torch.autograd.grad(_at_least_fp32(logits).sum(), x, create_graph=True)  # [B, C, H, W]
    grad = _at_least_fp32(grad)
    return grad.square().flatten(1).sum(1), logits, grad  # [B], [B], [B, C, H, W]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast) -> fp32 for the squared norms; fp32 and fp64 stay as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def r1_penalty(
    critic: Critic, x_real: torch.Tensor, labels_real: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 (Mescheder et al. 2018): E_x ||grad_x D(x)||^2 on real images, UNSCALED; also returns D(x_real) [B].

    Convention: the objective adds ``gamma / 2 * r1_penalty(...)`` (StyleGAN2 and R3GAN), times the lazy
    interval k when it is applied only every k steps (StyleGAN2's lazy regularisation). The logits are
    returned so an objective can put its adversarial real term on the same forward pass.
    """
    sq_norm, logits_real, _ = _input_gradient_sq_norm(critic, x_real, labels_real)
    return sq_norm.mean(), logits_real


def r2_penalty(
    critic: Critic, x_fake: torch.Tensor, labels_fake: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """R2: E_z ||grad_x D(G(z))||^2 on (detached) fakes, UNSCALED, with the same convention as ``r1_penalty``
    (R3GAN adds ``gamma / 2 * (R1 + R2)``); also returns D(x_fake) [B]."""
    sq_norm, logits_fake, _ = _input_gradient_sq_norm(critic, x_fake, labels_fake)
    return sq_norm.mean(), logits_fake


def gradient_penalty(
    critic: Critic,
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    labels: torch.Tensor | None,
    generator_for_alpha: torch.Generator,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_hat)||_2 - 1)^2] at x_hat = alpha x_real + (1 - alpha) x_fake.

    alpha ~ U(0, 1), one per sample, is drawn from ``generator_for_alpha`` (on its own device, then moved
    to the images'), so a checkpointed generator state reproduces the draws on resume. ``labels`` belong to
    both batches (the conditional WGAN-GP interpolates within a class). The caller applies lambda (10).
    """
    if x_real.shape != x_fake.shape:
        raise ValueError(f"x_real {tuple(x_real.shape)} and x_fake {tuple(x_fake.shape)} must have one shape")
    batch = x_real.shape[0]
    alpha = torch.rand(batch, generator=generator_for_alpha, device=generator_for_alpha.device)  # [B]
    alpha = alpha.to(device=x_real.device, dtype=x_real.dtype).view(batch, *([1] * (x_real.dim() - 1)))
    x_hat = torch.lerp(x_fake.detach(), x_real.detach(), alpha)  # [B, C, H, W]: alpha x_real + (1 - alpha) x_fake
    _, _, grad = _input_gradient_sq_norm(critic, x_hat, labels)
    # vector_norm's backward is 0 (not NaN) where a gradient is exactly 0.
    return (torch.linalg.vector_norm(grad.flatten(1), dim=1) - 1.0).square().mean()
