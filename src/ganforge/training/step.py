"""One training batch: the update orders of the reference systems, over any objective.

Update orders (``train.g_update``):
  same-fake     z -> x_fake = G(z); D phase on (x_real, x_fake.detach()); G phase on the same x_fake with
                the updated D (no second G forward)                              [mnist-mlp, mnist-cgan]
  fresh-noise   D phase on G(z1) computed without a graph; G phase on a new z2    [mnist-conv, anime-dcgan]
  simultaneous  one forward G(z), D(x_real), D(x_fake); both losses from it, both networks stepped (the
                Keras/TF custom train_step)                                       [mnist-mlp-bn]
  kept-noise    one noise tensor that only the G phase redraws (then uses); each D phase scores G of the
                tensor as it stands, so with g_every=5 the D phases between two G phases see the same
                noise (and, G unchanged, the same fakes)                          [anime-dcgan]
``d_every``/``g_every``: a D (G) phase happens on batches whose index in the epoch is a multiple of it.

The objective (``ganforge.objectives``) decides what each phase minimises; this module decides which
batches each phase sees, and steps the optimisers. Statistics stay on the device (one host read per
log window, in ``StepStats.read``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ganforge.augment import AdaptiveAugment, Augmentation
from ganforge.config import AugmentConfig, TrainConfig
from ganforge.objectives import Batch, Objective, PhaseLoss
from ganforge.training.distributed import DistContext

STAT_FIELDS = ("d_loss", "d_real", "d_fake", "n_d", "g_loss", "d_fake_after", "n_g", "n_images")
_D_FIELDS = [STAT_FIELDS.index(k) for k in ("d_loss", "d_real", "d_fake", "n_d")]
_G_FIELDS = [STAT_FIELDS.index(k) for k in ("g_loss", "d_fake_after", "n_g")]
_MEANS = [STAT_FIELDS.index(k) for k in ("d_loss", "d_real", "d_fake", "g_loss", "d_fake_after")]


@dataclass
class StatsSummary:
    """Means over a window of steps (None where no D or G phase ran in it)."""

    d_loss: float | None
    g_loss: float | None
    d_real: float | None  # mean sigmoid(D(x_real))
    d_fake: float | None  # mean sigmoid(D(G(z))) in the D phase
    d_fake_after: float | None  # the same in the G phase, after D's update
    n_images: float


class StepStats:
    """Sums of per-batch statistics, one float64 device tensor in ``STAT_FIELDS`` order (saved in checkpoints
    as ``acc_epoch``): adding a step's statistics costs no host sync."""

    def __init__(self, totals: torch.Tensor) -> None:
        self.totals = totals  # float64 [8]

    @classmethod
    def zeros(cls, device: torch.device) -> StepStats:
        return cls(torch.zeros(len(STAT_FIELDS), device=device, dtype=torch.float64))

    def add_(self, other: StepStats) -> None:
        self.totals += other.totals

    def zero_(self) -> None:
        self.totals.zero_()

    def any(self) -> bool:
        return bool(self.totals[STAT_FIELDS.index("n_d")] + self.totals[STAT_FIELDS.index("n_g")] > 0)

    def read(self, ctx: DistContext) -> StatsSummary:
        """The window's means over steps (and ranks): the one host sync of a log window."""
        values = ctx.mean(self.totals).tolist()
        values[STAT_FIELDS.index("n_images")] = self.totals[STAT_FIELDS.index("n_images")].item()
        v = dict(zip(STAT_FIELDS, values))
        n_d, n_g = v["n_d"], v["n_g"]
        return StatsSummary(
            d_loss=v["d_loss"] / n_d if n_d else None,
            g_loss=v["g_loss"] / n_g if n_g else None,
            d_real=v["d_real"] / n_d if n_d else None,
            d_fake=v["d_fake"] / n_d if n_d else None,
            d_fake_after=v["d_fake_after"] / n_g if n_g else None,
            n_images=v["n_images"],
        )


class NoiseSource:
    """Training noise from one dedicated generator (its state is checkpointed), seeded alike on every rank:
    each rank draws the global batch and keeps its shard, so N ranks see the noise one process would."""

    def __init__(self, latent_dim: int, num_classes: int, seed: int, ctx: DistContext) -> None:
        self.latent_dim, self.num_classes, self.ctx = latent_dim, num_classes, ctx
        self.rng = torch.Generator(device=ctx.device).manual_seed(seed)
        self.kept: Batch | None = None  # kept-noise: the noise the last G phase drew (checkpointed)

    def draw(self, n_global: int) -> Batch:
        """This rank's shard of a global batch of noise (and uniformly drawn fake labels)."""
        shard = self.ctx.shard(n_global)
        z = torch.randn(n_global, self.latent_dim, device=self.ctx.device, generator=self.rng)  # [n, latent]
        labels = None
        if self.num_classes > 0:
            labels = torch.randint(self.num_classes, (n_global,), device=self.ctx.device, generator=self.rng)[shard]
        return Batch(z[shard], labels)  # z [b, latent_dim], labels [b]

    def kept_or_first(self, n_global: int) -> Batch:
        """kept-noise: the kept tensor, drawn once before the first G phase has drawn one."""
        if self.kept is None:
            self.kept = self.draw(n_global)
        return self.kept


class DiscriminatorCritic:
    """D as an objective calls it: float logits under the run's autocast.

    ``per_sample``: every layer of D treats each image on its own (no batch statistics, no dropout), so one
    forward over reals and fakes together gives the same logits as two, with half the calls and taller
    matrix products; otherwise two forwards, as the reference systems do.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        autocast: Callable[[], contextlib.AbstractContextManager],
        per_sample: bool,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        plain: nn.Module | None = None,
    ) -> None:
        self.discriminator, self.autocast, self.per_sample = discriminator, autocast, per_sample
        self.augment = augment  # applied to every batch D sees (DiffAugment / ADA), or None
        self.plain = plain if plain is not None else discriminator  # D without DDP, for penalties

    def for_penalty(self) -> DiscriminatorCritic:
        return DiscriminatorCritic(self.plain, self.autocast, self.per_sample, self.augment)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.augment is not None:
            x = self.augment(x)
        with self.autocast():
            return self.discriminator(x, y).float()  # [b]

    def pair(self, real: Batch, fake: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            real, fake = Batch(self.augment(real.x), real.y), Batch(self.augment(fake.x), fake.y)
        with self.autocast():
            if not self.per_sample:
                return self.discriminator(real.x, real.y).float(), self.discriminator(fake.x, fake.y).float()
            labels = None if real.y is None else torch.cat([real.y, fake.y])  # [2b]
            logits = self.discriminator(torch.cat([real.x, fake.x.to(real.x.dtype)]), labels).float()  # [2b]
        # the reals' share of the logits: a packed D (PacGAN) gives one per pack, and both halves are whole packs
        n_real = logits.shape[0] * real.x.shape[0] // (real.x.shape[0] + fake.x.shape[0])
        return logits[:n_real], logits[n_real:]


@dataclass
class Networks:
    """What a step needs: the plain modules, what to call them through, and their optimisers."""

    generator_core: nn.Module  # the plain G (state_dict, sampling, EMA)
    discriminator_core: nn.Module
    generator: nn.Module  # G as called in the steps (DDP / torch.compile wrappers)
    discriminator: nn.Module  # D for the D phase (DDP-wrapped under torchrun)
    discriminator_for_g: nn.Module  # D for the G phase: never DDP (its parameter gradients are not wanted)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: nn.Module | None  # exponential moving average of G, or None
    d_per_sample: bool  # see DiscriminatorCritic


class TrainStep:
    """``step(x_real, y_real, batch_index, n_global) -> StepStats`` for one recipe's update order."""

    def __init__(
        self,
        nets: Networks,
        objective: Objective,
        tcfg: TrainConfig,
        noise: NoiseSource,
        ctx: DistContext,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.nets, self.objective, self.tcfg, self.noise, self.ctx = nets, objective, tcfg, noise, ctx
        self.autocast_dtype = autocast_dtype
        self.step_count = 0  # the global step, for objectives with schedules (lazy regularisation)
        self.augment: DiscriminatorAugment | None = None  # set by the trainer when augment.policy is given

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype)

    def critic(self, discriminator: nn.Module) -> DiscriminatorCritic:
        augment = self.augment if self.augment is not None and self.augment.active else None
        return DiscriminatorCritic(
            discriminator, self.autocast, self.nets.d_per_sample, augment, self.nets.discriminator_core
        )

    def __call__(self, x_real: torch.Tensor, y_real: torch.Tensor | None, batch_index: int, n_global: int):
        if self.noise.num_classes == 0:
            y_real = None  # labelled data, unconditional model: the labels are not an input
        stats = StepStats.zeros(self.ctx.device)
        stats.totals[STAT_FIELDS.index("n_images")] = n_global
        real = Batch(x_real, y_real)
        # this rank's share of the global batch mean (1.0 unless the last batch splits unevenly over ranks)
        weight = self.ctx.shard_weight(n_global)
        if self.tcfg.g_update == "simultaneous":
            self._simultaneous(real, n_global, weight, stats)
        else:
            self._alternating(real, batch_index, n_global, weight, stats)
        if weight != 1.0:  # the logged means weighted like the losses, so their mean over ranks is global
            stats.totals[_MEANS] *= weight
        return stats

    def _draw(self, n_global: int) -> Batch:
        """Noise for a batch of ``n_global`` images (``full_noise_batch``: a whole batch's worth, always)."""
        return self.noise.draw(self.tcfg.batch_size if self.tcfg.full_noise_batch else n_global)

    def _generate(self, noise: Batch) -> Batch:
        with self.autocast():
            return Batch(self.nets.generator(noise.x, noise.y), noise.y)  # x [b, C, H, W]

    def _alternating(self, real: Batch, batch_index: int, n_global: int, weight: float, stats: StepStats) -> None:
        do_d = batch_index % self.tcfg.d_every == 0
        do_g = batch_index % self.tcfg.g_every == 0
        kept = self.tcfg.g_update == "kept-noise"
        fake = None
        if do_d:
            noise = self.noise.kept_or_first(n_global) if kept else self._draw(n_global)
            if self.tcfg.g_update == "same-fake" and do_g:
                fake = self._generate(noise)  # graph kept for the G phase
                fake_for_d = Batch(fake.x.detach(), fake.y)
            else:
                with torch.no_grad():
                    fake_for_d = self._generate(noise)  # no graph: D's phase never reaches G
            self._d_phase(real, fake_for_d, weight, stats)
        if do_g:
            if fake is None:
                noise = self._draw(n_global)
                if kept:
                    self.noise.kept = noise
                fake = self._generate(noise)
            self._g_phase(fake, real, weight, stats)
        self.step_count += 1

    def _d_phase(self, real: Batch, fake: Batch, weight: float, stats: StepStats) -> None:
        nets = self.nets
        d = self.objective.d_phase(self.critic(nets.discriminator), real, fake, self.step_count)
        nets.opt_d.zero_grad(set_to_none=True)
        _weighted(d.loss, weight).backward()
        nets.opt_d.step()
        if self.augment is not None:
            self.augment.after_d_phase(d.logits_real, self.ctx)
        _record_d(stats, d)

    def _g_phase(self, fake: Batch, real: Batch, weight: float, stats: StepStats) -> None:
        nets = self.nets
        # the G phase differentiates D's logits with respect to the fakes only: freezing D's parameters
        # skips their gradients (and keeps DDP from all-reducing them)
        nets.discriminator_core.requires_grad_(False)
        try:
            g = self.objective.g_phase(self.critic(nets.discriminator_for_g), fake, real, self.step_count)
            nets.opt_g.zero_grad(set_to_none=True)
            _weighted(g.loss, weight).backward()
        finally:
            nets.discriminator_core.requires_grad_(True)
        nets.opt_g.step()
        update_ema(nets.ema, nets.generator_core, self._ema_decay())
        _record_g(stats, g)

    def _simultaneous(self, real: Batch, n_global: int, weight: float, stats: StepStats) -> None:
        nets = self.nets
        fake = self._generate(self._draw(n_global))
        d, g = self.objective.joint(self.critic(nets.discriminator), real, fake, self.step_count)
        nets.opt_d.zero_grad(set_to_none=True)
        nets.opt_g.zero_grad(set_to_none=True)
        # each loss differentiates only its own network's parameters, as two GradientTapes would
        _weighted(d.loss, weight).backward(inputs=list(nets.discriminator_core.parameters()), retain_graph=True)
        _weighted(g.loss, weight).backward(inputs=list(nets.generator_core.parameters()))
        nets.opt_d.step()
        nets.opt_g.step()
        update_ema(nets.ema, nets.generator_core, self._ema_decay())
        _record_d(stats, d)
        _record_g(stats, g)
        self.step_count += 1

    def _ema_decay(self) -> float:
        """train.ema_rampup: (1 + t) / (10 + t) until it reaches ema_decay, so early EMAs follow G closely
        instead of averaging in its random start."""
        if not self.tcfg.ema_rampup:
            return self.tcfg.ema_decay
        return min(self.tcfg.ema_decay, (1 + self.step_count) / (10 + self.step_count))


class DiscriminatorAugment:
    """What D sees, augmented: DiffAugment's policy with a fixed probability or ADA's adaptive one. Its
    random draws come from its own generator, checkpointed with the run, so resume stays exact."""

    def __init__(self, cfg: AugmentConfig, device: torch.device, seed: int) -> None:
        self.augmentation = Augmentation(cfg.policy)
        self.rng = torch.Generator(device=device).manual_seed(seed)
        self.adaptive = AdaptiveAugment(cfg.target, cfg.interval, cfg.speed_images) if cfg.adaptive else None
        self.fixed_p = cfg.p

    @property
    def p(self) -> float:
        return self.adaptive.p if self.adaptive is not None else self.fixed_p

    @property
    def active(self) -> bool:
        # ADA starts at p = 0, where augmenting changes nothing but still observes D
        return bool(self.augmentation) and (self.adaptive is not None or self.fixed_p > 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.augmentation(x, self.rng, self.p)

    def after_d_phase(self, logits_real: torch.Tensor | None, ctx: DistContext) -> None:
        if self.adaptive is None or logits_real is None:
            return
        self.adaptive.observe(logits_real)
        self.adaptive.step(reduce=ctx.sum if ctx.enabled else None)

    def state_dict(self) -> dict:
        return {"ada": self.adaptive.state_dict() if self.adaptive is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.adaptive is not None and state.get("ada") is not None:
            self.adaptive.load_state_dict(state["ada"])


def _record_d(stats: StepStats, d: PhaseLoss) -> None:
    stats.totals[_D_FIELDS] = torch.stack(
        [
            d.loss.detach(),
            torch.sigmoid(d.logits_real.detach()).mean(),
            torch.sigmoid(d.logits_fake.detach()).mean(),
            torch.ones_like(d.loss),
        ]
    ).double()


def _record_g(stats: StepStats, g: PhaseLoss) -> None:
    stats.totals[_G_FIELDS] = torch.stack(
        [g.loss.detach(), torch.sigmoid(g.logits_fake.detach()).mean(), torch.ones_like(g.loss)]
    ).double()


@torch.no_grad()
def update_ema(ema: nn.Module | None, generator: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * generator for parameters; buffers (BatchNorm statistics) copied."""
    if ema is None:
        return
    torch._foreach_lerp_(list(ema.parameters()), list(generator.parameters()), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), generator.buffers()):
        ema_buffer.copy_(buffer)


def _weighted(loss: torch.Tensor, weight: float) -> torch.Tensor:
    """``loss * weight``, skipped when it is 1: under DDP the ranks' gradients of it average to the
    gradient of the global batch mean even when the ranks' shards differ in size."""
    return loss if weight == 1.0 else loss * weight
