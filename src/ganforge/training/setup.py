"""Everything a run builds before its first step: networks, optimisers, EMA, wrappers, CPU kernel choices.

Initial weights depend on the seed alone: the models are built right after seeding, before anything
else draws random numbers.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ganforge.config import RunConfig
from ganforge.errors import ConfigError
from ganforge.models import build_models
from ganforge.training.distributed import DistContext, convert_sync_batchnorm
from ganforge.training.fastpath import (
    THREADS_ENV,
    ThreadTuner,
    baseline_cpu_threads,
    cpu_channels_last_wanted,
    cpu_threads_wanted,
    onednn_linear_wanted,
    same_results_at_any_thread_count,
    set_cpu_threads,
    use_onednn_linear,
)
from ganforge.training.step import Networks


@dataclass
class Setup:
    nets: Networks
    channels_last: bool  # conv models keep their weights and inputs in NHWC
    thread_tuner: ThreadTuner | None  # live choice of the CPU thread count, or None
    choices: dict[str, Any] = field(default_factory=dict)  # what was chosen at run time, for config.json


def check_run_config(cfg: RunConfig, device: torch.device) -> None:
    """Combinations of fields that ``config.validate`` cannot judge alone (they depend on the device)."""
    tcfg = cfg.train
    if tcfg.g_update == "simultaneous" and (tcfg.d_every != 1 or tcfg.g_every != 1):
        raise ConfigError("train.g_update=simultaneous steps D and G together: d_every and g_every must be 1")
    if tcfg.precision == "bf16" and device.type == "mps":
        raise ConfigError("train.precision=bf16 is not supported on mps; use fp32")


def check_shards(cfg: RunConfig, num_images: int, world_size: int) -> None:
    """Under torchrun every rank needs images in every batch: a rank with an empty shard has no batch mean
    (the loaders can hand out empty shards; training cannot use them)."""
    last = 0 if cfg.train.drop_last else num_images % cfg.train.batch_size
    if 0 < last < world_size:
        raise ConfigError(
            f"the last batch of each epoch has {last} image(s) for {world_size} processes, so some "
            "would get none: set --set train.drop_last=true, or change --batch-size or data.max_images"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's seeds stop at 2**32; config seeds go to 2**63
    torch.manual_seed(seed)


def build_setup(cfg: RunConfig, ctx: DistContext) -> Setup:
    """Seed, build G and D, and make them ready to train on ``ctx.device`` (see the module doc)."""
    check_run_config(cfg, ctx.device)
    seed_everything(cfg.train.seed)
    generator, discriminator = build_models(cfg.model)
    if cfg.train.sync_batchnorm and ctx.enabled:  # BatchNorm statistics over the global batch (also on CPU)
        generator = convert_sync_batchnorm(generator, ctx.device)
        discriminator = convert_sync_batchnorm(discriminator, ctx.device)
    choices: dict[str, Any] = {}
    generator, discriminator, channels_last, tuner = _place_on_device(
        cfg, ctx.device, generator, discriminator, choices
    )
    ema = copy.deepcopy(generator).eval().requires_grad_(False) if cfg.train.ema_decay > 0 else None
    opt_g, opt_d = _optimizers(cfg, ctx.device, generator, discriminator, channels_last)
    g_called, d_called, d_for_g = _wrap(cfg, ctx, generator, discriminator)
    nets = Networks(
        generator, discriminator, g_called, d_called, d_for_g, opt_g, opt_d, ema, _per_sample(generator, discriminator)
    )
    return Setup(nets, channels_last, tuner, choices)


def _place_on_device(
    cfg: RunConfig, device: torch.device, generator: nn.Module, discriminator: nn.Module, choices: dict[str, Any]
) -> tuple[nn.Module, nn.Module, bool, ThreadTuner | None]:
    """Move the networks to the device with the memory layout and CPU kernels chosen for this machine."""
    tcfg = cfg.train
    threads = None
    if device.type == "cpu":  # small models train on one thread (fastpath.py: measured faster)
        threads = cpu_threads_wanted(generator, discriminator, tcfg.batch_size)
        set_cpu_threads(threads)
    # channels-last: asked for, or a conv model on the CPU, where oneDNN runs it faster in fp32 and bf16
    # (docs/performance.md); the maths is the same, only the memory layout changes
    channels_last = tcfg.channels_last or (device.type == "cpu" and cpu_channels_last_wanted(generator, discriminator))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = generator.to(device, memory_format=memory_format)
    discriminator = discriminator.to(device, memory_format=memory_format)
    onednn = device.type == "cpu" and tcfg.precision == "fp32" and not tcfg.compile and onednn_linear_wanted()
    if onednn:
        use_onednn_linear(generator, discriminator)  # fastpath.py: MKL is slow here
    tuner = None  # small models whose numbers do not depend on the thread count: tune it live
    counts = (1, baseline_cpu_threads())
    if threads == 1 and counts[1] > 1 and os.environ.get(THREADS_ENV, "auto") == "auto":
        if same_results_at_any_thread_count(generator, discriminator, tcfg.batch_size, counts):
            tuner = ThreadTuner(counts)
    choices.update(
        {"channels_last": channels_last, "linear": "onednn" if onednn else "default", "threads": threads or "torch"}
    )
    return generator, discriminator, channels_last, tuner


def _per_sample(generator: nn.Module, discriminator: nn.Module) -> bool:
    """Whether real and fake may share one D forward: every layer acts per image (no batch statistics, no
    dropout). Not with BatchNorm in G either: there Adam turns float noise in the zero-gradient biases before
    each BatchNorm into full-size updates, and the changed summation order would show as a departure from
    the reference step (tests/test_training.py) that is larger than rounding."""
    per_batch = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return not any(isinstance(m, per_batch) for net in (generator, discriminator) for m in net.modules())


def _optimizers(
    cfg: RunConfig, device: torch.device, generator: nn.Module, discriminator: nn.Module, channels_last: bool
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    adam = dict(betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    # fused Adam (one kernel per parameter for the whole update), else multi-tensor (foreach). On the CPU
    # fused makes mnist-mlp steps 17% faster, but it rounds differently from torch's default Adam, which
    # foreach matches; conv models spend ~1% of a CPU step in Adam, so they keep foreach there.
    fused = device.type in ("cuda", "mps") or (device.type == "cpu" and not channels_last)
    fast = {"fused": True} if fused else {"foreach": True}
    trainable_d = [p for p in discriminator.parameters() if p.requires_grad]  # FreezeD leaves some out
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.optim.lr_g, **adam, **fast)
    opt_d = torch.optim.Adam(trainable_d, lr=cfg.optim.lr_d, **adam, **fast)
    return opt_g, opt_d


def _wrap(
    cfg: RunConfig, ctx: DistContext, generator: nn.Module, discriminator: nn.Module
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D for the D phase, D for the G phase) as the steps call them: DDP under torchrun, compiled if asked."""
    g_called, d_called = generator, discriminator
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # DDP copies rank 0's buffers (BatchNorm running statistics) to the other ranks at each forward;
        # with SyncBatchNorm they are equal on every rank already.
        g_called, d_called = DDP(generator, device_ids=ids), DDP(discriminator, device_ids=ids)
    # The G phase scores fakes with the plain D: its parameter gradients are not needed (and DDP must not
    # all-reduce them), only the gradient flowing back into G.
    d_for_g = discriminator
    if cfg.train.compile:
        g_called, d_called, d_for_g = torch.compile(g_called), torch.compile(d_called), torch.compile(discriminator)
    return g_called, d_called, d_for_g


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Make CUDA pick deterministic kernels while training, then put the global switches back.

    cuDNN's convolution backward and cuBLAS's split reductions sum in an order that changes from run to
    run, so two CUDA runs (or a run and its resumed copy) drift apart by rounding. The CPU kernels used
    here are deterministic already. torch raises if an op has no deterministic CUDA version.
    """
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for reproducible sums
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]
