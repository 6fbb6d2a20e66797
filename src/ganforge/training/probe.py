"""Short timed probes of a run's own training step: the measurements behind choices that rules make badly.

``time_variants`` trains deep copies of the placed networks (with optimisers of the run's kind, their own
noise stream and one synthetic batch of the run's shape) for a few steps per variant, interleaved, and
returns each variant's median step time over its rounds. The run itself is untouched: its networks and optimiser states
are not used, every global RNG stream is restored afterwards (``rng_untouched``), and the steps run at
the thread count already chosen (or a variant's own). Under torchrun the ranks' times are averaged, so all
ranks choose alike.

The median of a few interleaved rounds, neither the mean nor the fastest: the median is the step the run
will typically make, and one outlier round, slow or fast, does not move it. The fastest was used first, on
the view that another process only ever makes a step slower; but on a 2-core VM single one-thread steps of
mnist-quick ranged over 117-267 ms within one probe (fast outliers as well as slow ones; the cause on the
host was not measured), and one lucky round decided the thread count.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ganforge.config import RunConfig
from ganforge.objectives import get_objective
from ganforge.training.distributed import DistContext
from ganforge.training.state import rng_untouched
from ganforge.training.step import Networks, NoiseSource, TrainStep

PROBE_BUDGET_S = 0.4  # timed rounds stop once this much has passed (the warm-up steps come on top)
MAX_ROUNDS = 3
MIN_ROUND_S = 0.02  # a round repeats a fast step until it lasts this long, so the clock's noise is small
# The thread count is probed longer: it stands for the whole run (a resume keeps it), and the wrong count costs a
# third of a small model's steps. Single steps of mnist-quick on a 2-core VM vary by +-15% or more, and with the
# default budget (two timed rounds) the two-thread gain read 1.08x once and 1.28-1.88x in eleven other start-ups;
# the extra second is paid by small models only.
THREAD_BUDGET_S = 1.5
THREAD_MAX_ROUNDS = 8

OptimizerFactory = Callable[[nn.Module, nn.Module], tuple[torch.optim.Optimizer, torch.optim.Optimizer]]


@dataclass
class Variant:
    """One way to run the step: a precision, a change of kernels on the copies, TF32 on CUDA."""

    autocast: torch.dtype | None = None
    prepare: Callable[[nn.Module, nn.Module], object] | None = None  # applied to the copies (e.g. oneDNN Linear)
    tf32: bool = False  # CUDA: fp32 matmuls on TF32 tensor cores while this variant runs
    threads: int | None = None  # CPU: the intra-op thread count while this variant runs (None: as chosen)


def time_variants(
    cfg: RunConfig,
    ctx: DistContext,
    generator: nn.Module,
    discriminator: nn.Module,
    per_sample: bool,
    make_optimizers: OptimizerFactory,
    variants: dict[str, Variant],
    budget_s: float = PROBE_BUDGET_S,
    max_rounds: int = MAX_ROUNDS,
) -> dict[str, float]:
    """Seconds per training step of each variant (the median of its rounds); see the module docstring."""
    device = ctx.device
    objective = get_objective(cfg.loss.name)
    with rng_untouched(device):
        steps = {
            name: _copied_step(cfg, device, generator, discriminator, per_sample, make_optimizers, variant, objective)
            for name, variant in variants.items()
        }
        x_real, y_real = _synthetic_batch(cfg, ctx)
        repeats = {}
        for name, step in steps.items():
            _run(step, variants[name], x_real, y_real, 1, device)  # untimed: oneDNN/cuDNN build their kernels
            estimate = _run(step, variants[name], x_real, y_real, 1, device)
            repeats[name] = max(1, min(20, math.ceil(MIN_ROUND_S / max(estimate, 1e-6))))
        rounds: dict[str, list[float]] = {name: [] for name in steps}
        start = time.perf_counter()
        for _ in range(max_rounds):
            for name, step in steps.items():
                rounds[name].append(_run(step, variants[name], x_real, y_real, repeats[name], device))
            if time.perf_counter() - start > budget_s:
                break
    names = list(rounds)
    medians = [statistics.median(rounds[n]) for n in names]
    times = ctx.mean(torch.tensor(medians, dtype=torch.float64, device=device)).tolist()
    return dict(zip(names, times))


def _copied_step(
    cfg: RunConfig,
    device: torch.device,
    generator: nn.Module,
    discriminator: nn.Module,
    per_sample: bool,
    make_optimizers: OptimizerFactory,
    variant: Variant,
    objective,
) -> TrainStep:
    g, d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    if variant.prepare is not None:
        variant.prepare(g, d)
    opt_g, opt_d = make_optimizers(g, d)
    ema = copy.deepcopy(g).requires_grad_(False) if cfg.train.ema_decay > 0 else None
    nets = Networks(g, d, g, d, d, opt_g, opt_d, ema, per_sample)
    alone = DistContext(device=device)  # the copies train in this process only: no collectives
    noise = NoiseSource(cfg.model.latent_dim, cfg.model.num_classes, 0, alone)
    return TrainStep(nets, objective, cfg.train, noise, alone, variant.autocast)


def _synthetic_batch(cfg: RunConfig, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch of this rank's shape, values in [-1, 1] (timing does not depend on the pixels)."""
    shard = ctx.shard(cfg.train.batch_size)
    b, model = shard.stop - shard.start, cfg.model
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(b, model.channels, model.resolution, model.resolution, generator=rng) * 2 - 1  # [b, C, H, W]
    y = torch.randint(model.num_classes, (b,), generator=rng) if model.num_classes > 0 else None  # [b]
    return x.to(ctx.device), None if y is None else y.to(ctx.device)


def _run(
    step: TrainStep, variant: Variant, x: torch.Tensor, y: torch.Tensor | None, repeats: int, device: torch.device
) -> float:
    """Seconds per step over ``repeats`` steps (batch indices counting on, so d_every/g_every cycles show)."""
    previous_tf32, previous_threads = torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = variant.tf32 if device.type == "cuda" else previous_tf32
    if variant.threads is not None:
        torch.set_num_threads(variant.threads)
    try:
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            step(x, y, step.step_count, x.shape[0])
        _sync(device)
        return (time.perf_counter() - start) / repeats
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
