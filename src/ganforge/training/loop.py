"""The training loop: one readable function from config to run directory.

Update orders (``train.g_update``), as the reference systems do them:
  same-fake     z -> x_fake = G(z); D step on (x_real, x_fake.detach()); G step on D(x_fake) with the
                updated D, reusing x_fake (no second G forward)                 [mnist-mlp, mnist-cgan]
  fresh-noise   D step on G(z1) computed without a graph; G step on a new z2    [mnist-conv, anime-dcgan]
  simultaneous  one forward G(z), D(x_real), D(x_fake); D's and G's gradients both from it, both
                stepped (the Keras/TF custom train_step)                        [mnist-mlp-bn]
``d_every``/``g_every``: a D (G) step happens on batches whose index in the epoch is a multiple of it.

Reproducibility and exact resume: the data order of epoch e is a pure function of (seed, e); the
noise comes from one dedicated generator whose state is checkpointed; so N epochs + resume M epochs
gives the same weights as N+M epochs straight. Under torchrun every rank draws the same global
noise and keeps its shard, so k steps on W processes equal k steps on one with the same global batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import ganforge
from ganforge.checkpoint import (
    flatten_state,
    load_module,
    load_tensors,
    module_tensors,
    save_tensors,
    unflatten_state,
)
from ganforge.config import RunConfig, to_dict, to_json
from ganforge.data import denormalize, make_loader
from ganforge.errors import ConfigError, DivergenceError
from ganforge.losses import LOSSES
from ganforge.models import build_models
from ganforge.plots import plot_training_curves
from ganforge.rundir import RunDir
from ganforge.sampling import draw_noise, per_class_grid_inputs, save_grid
from ganforge.training.distributed import (
    DistContext,
    convert_sync_batchnorm,
    init_distributed,
    launched_by_torchrun,
    rank_failure,
)
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

# Indices into the on-device statistics accumulator (summed per step, read every log_every steps).
D_LOSS, D_REAL, D_FAKE, N_D, G_LOSS, D_FAKE_AFTER, N_G, N_IMAGES = range(8)


@dataclass
class TrainState:
    step: int = 0  # batches done in total
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # the next batch of that epoch
    elapsed: float = 0.0  # seconds of training so far, over all sessions of the run
    best: float | None = None  # best value of the tracked quality metric
    best_epoch: float | None = None  # fractional when evaluated mid-epoch (eval.every_steps)
    events: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    stopped_early: str | None  # why training stopped before its last epoch, or None


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag that the loop checks between steps, so a checkpoint is saved."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._since = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            # torchrun passes on the Ctrl-C / SIGTERM that the terminal or the scheduler already sent
            # to every process: that copy is not a second request
            if launched_by_torchrun() and time.monotonic() - self._since < 2.0:
                return
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self.signum, self._since = signum, time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _core(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers (for state_dict, sampling, EMA)."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _all_finite(modules: list[nn.Module]) -> bool:
    return all(bool(torch.isfinite(t).all()) for m in modules for t in m.state_dict().values() if t.is_floating_point())


@contextlib.contextmanager
def _rng_untouched(device: torch.device) -> Iterator[None]:
    """Restore torch's (CPU and this CUDA device's), Python's and NumPy's global RNG states on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


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


def train(
    cfg: RunConfig,
    out: Path | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    resume_overrides: list[str] | None = None,
) -> TrainResult:
    """Train ``cfg`` into a run directory (``out`` or ``runs/<recipe>-<time>``), or continue ``resume``."""
    try:
        with deterministic_kernels(cfg.train.deterministic):
            ctx = init_distributed(cfg.train.device)  # under torchrun: the process group, kept until exit
            return _Trainer(cfg, ctx, out, resume, overwrite, resume_overrides or []).run()
    except Exception as exc:
        report = rank_failure(exc)  # under torchrun: names the rank, and is what torchrun's summary shows
        if report is exc:
            raise
        raise report from None


class _Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        out: Path | None,
        resume: Path | None,
        overwrite: bool,
        resume_overrides: list[str],
    ) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device
        tcfg = cfg.train
        if tcfg.g_update == "simultaneous" and (tcfg.d_every != 1 or tcfg.g_every != 1):
            raise ConfigError("train.g_update=simultaneous steps D and G together: d_every and g_every must be 1")
        if tcfg.precision == "bf16" and self.device.type == "mps":
            raise ConfigError("train.precision=bf16 is not supported on mps; use fp32")
        self.loss = LOSSES.get(cfg.loss.name)
        if resume is None:
            out = out if out is not None else RunDir.default_path(cfg.recipe)
            if ctx.is_main:  # refuse to touch an existing run before spending time on data and models
                RunDir(out).check_new(overwrite)

        # Initial weights depend on the seed alone (built before anything else draws random numbers).
        random.seed(tcfg.seed)
        np.random.seed(tcfg.seed)
        torch.manual_seed(tcfg.seed)
        generator, discriminator = build_models(cfg.model)

        self.loader = make_loader(cfg, self.device, ctx.rank, ctx.world_size)
        self._check_labels()
        if ctx.enabled and self.loader.num_images < ctx.world_size:
            raise ConfigError(f"{ctx.world_size} processes but only {self.loader.num_images} images")
        last = 0 if tcfg.drop_last else self.loader.num_images % tcfg.batch_size
        if ctx.enabled and 0 < last < ctx.world_size:  # a rank with an empty shard has no batch mean
            raise ConfigError(
                f"the last batch of each epoch has {last} image(s) for {ctx.world_size} processes, so some "
                "would get none: set --set train.drop_last=true, or change --batch-size or data.max_images"
            )

        if tcfg.sync_batchnorm and ctx.enabled:  # BatchNorm statistics over the global batch (also on CPU)
            generator = convert_sync_batchnorm(generator, self.device)
            discriminator = convert_sync_batchnorm(discriminator, self.device)
        threads = None
        if self.device.type == "cpu":  # small models train on one thread (fastpath.py: measured faster)
            threads = cpu_threads_wanted(generator, discriminator, tcfg.batch_size)
            set_cpu_threads(threads)
        # channels-last: asked for, or a conv model on the CPU, where oneDNN runs it faster in fp32 and bf16
        # (docs/performance.md); the maths is the same, only the memory layout changes
        self.channels_last = tcfg.channels_last or (
            self.device.type == "cpu" and cpu_channels_last_wanted(generator, discriminator)
        )
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator_core = generator.to(self.device, memory_format=memory_format)
        self.discriminator_core = discriminator.to(self.device, memory_format=memory_format)
        if self.device.type == "cpu" and tcfg.precision == "fp32" and not tcfg.compile and onednn_linear_wanted():
            use_onednn_linear(self.generator_core, self.discriminator_core)  # fastpath.py: MKL is slow here
        self.thread_tuner = None  # small models whose numbers do not depend on the thread count: tune it live
        counts = (1, baseline_cpu_threads())
        if threads == 1 and counts[1] > 1 and os.environ.get(THREADS_ENV, "auto") == "auto":
            if same_results_at_any_thread_count(self.generator_core, self.discriminator_core, tcfg.batch_size, counts):
                self.thread_tuner = ThreadTuner(counts)
        # Real and fake share one D forward when every layer acts per image (no batch statistics, no dropout).
        # Not with BatchNorm in G either: there Adam turns float noise in the zero-gradient biases before each
        # BatchNorm into full-size updates, and the changed summation order would show as a departure from
        # the reference step (tests/test_training.py) that is larger than rounding.
        self.d_per_sample = not any(
            isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
            for net in (self.generator_core, self.discriminator_core)
            for m in net.modules()
        )
        self.ema = None
        if tcfg.ema_decay > 0:
            self.ema = copy.deepcopy(self.generator_core).eval().requires_grad_(False)

        adam = dict(betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
        # fused Adam (one kernel per parameter for the whole update), else multi-tensor (foreach). On the CPU
        # fused makes mnist-mlp steps 17% faster, but it rounds differently from torch's default Adam, which
        # foreach matches; conv models spend ~1% of a CPU step in Adam, so they keep foreach there.
        fused = self.device.type in ("cuda", "mps") or (self.device.type == "cpu" and not self.channels_last)
        fast = {"fused": True} if fused else {"foreach": True}
        self.opt_g = torch.optim.Adam(self.generator_core.parameters(), lr=cfg.optim.lr_g, **adam, **fast)
        self.opt_d = torch.optim.Adam(self.discriminator_core.parameters(), lr=cfg.optim.lr_d, **adam, **fast)

        self.generator: nn.Module = self.generator_core
        self.discriminator: nn.Module = self.discriminator_core
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # DDP copies rank 0's buffers (BatchNorm running statistics) to the other ranks at each forward;
            # with SyncBatchNorm they are equal on every rank already.
            self.generator = DDP(self.generator_core, device_ids=ids)
            self.discriminator = DDP(self.discriminator_core, device_ids=ids)
        # The G step scores fakes with the plain D: its parameter gradients are not needed (and DDP must
        # not all-reduce them), only the gradient flowing back into G.
        self.discriminator_for_g: nn.Module = self.discriminator_core
        if tcfg.compile:
            self.generator = torch.compile(self.generator)
            self.discriminator = torch.compile(self.discriminator)
            self.discriminator_for_g = torch.compile(self.discriminator_core)

        # Noise for training: one dedicated generator on the device, seeded identically on every rank.
        self.noise_rng = torch.Generator(device=self.device).manual_seed(tcfg.seed + 7919)
        # Fixed noise (and labels) for the sample grids: drawn on the CPU so every device shows the same faces.
        if cfg.model.num_classes > 0:
            self.grid_z, self.grid_labels = per_class_grid_inputs(
                cfg.model.num_classes, tcfg.grid_columns, cfg.model.latent_dim, tcfg.seed + 1
            )
        else:
            self.grid_z, self.grid_labels = draw_noise(tcfg.grid_size, cfg.model.latent_dim, tcfg.seed + 1), None

        self.state = TrainState()
        self._last_plot = -math.inf
        self.acc_epoch = torch.zeros(8, device=self.device, dtype=torch.float64)
        self.tracker = None
        self._last_eval_step = -1  # an epoch end does not evaluate again what a step-triggered evaluation just did
        if resume is not None:
            self.run_dir = RunDir(out) if out is not None else _run_dir_of(resume)
            self._load(resume)
            if ctx.is_main:
                self.run_dir.create(overwrite=False) if not self.run_dir.path.exists() else None
                self.run_dir.truncate_after(self.state.step)
                self.run_dir.append(
                    {"kind": "resume", "step": self.state.step, "from": str(resume), "overrides": resume_overrides}
                )
        else:
            self.run_dir = RunDir(out)
            if ctx.is_main:
                self.run_dir.create(overwrite=overwrite)
        if ctx.is_main:
            self.run_dir.config.write_text(to_json(cfg) + "\n")
        ctx.barrier()

    # ------------------------------------------------------------------------------------------------
    def _check_labels(self) -> None:
        classes = self.cfg.model.num_classes
        data_classes = getattr(self.loader, "num_classes", 0)
        if classes > 0 and data_classes == 0:
            raise ConfigError(
                f"model.num_classes={classes} (conditional) but dataset {self.cfg.data.dataset!r} gives no labels; "
                "use a labelled dataset (image-folder: --set data.labels=subfolders or csv)"
            )
        if classes > 0 and data_classes != classes:
            raise ConfigError(f"the dataset has {data_classes} classes; set --set model.num_classes={data_classes}")

    def _draw(self, n_global: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's shard of a global batch of noise (and uniformly drawn fake labels)."""
        shard = self.ctx.shard(n_global)
        z = torch.randn(n_global, self.cfg.model.latent_dim, device=self.device, generator=self.noise_rng)
        labels = None
        if self.cfg.model.num_classes > 0:
            labels = torch.randint(
                self.cfg.model.num_classes, (n_global,), device=self.device, generator=self.noise_rng
            )[shard]  # [b]
        return z[shard], labels  # [b, latent_dim]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------
    def _step(self, x_real: torch.Tensor, y_real: torch.Tensor | None, batch_index: int, n_global: int) -> torch.Tensor:
        """One batch: the D and/or G updates of the recipe. Returns the 8 statistics (on the device)."""
        tcfg = self.cfg.train
        G, D = self.generator, self.discriminator
        if self.cfg.model.num_classes == 0:
            y_real = None  # labelled data, unconditional model: the labels are not an input
        stats = torch.zeros(8, device=self.device, dtype=torch.float64)
        stats[N_IMAGES] = n_global
        # this rank's share of the global batch mean (1.0 unless the last batch splits unevenly over ranks)
        w = self.ctx.shard_weight(n_global)
        if tcfg.g_update == "simultaneous":
            z, y_fake = self._draw(n_global)
            with self._autocast():
                x_fake = G(z, y_fake)  # [b, C, H, W]
                logits_real, logits_fake = self._d_real_fake(D, x_real, y_real, x_fake, y_fake)  # [b] each
            d_loss = self.loss.d_loss(logits_real, logits_fake)
            g_loss = self.loss.g_loss(logits_fake)
            self.opt_d.zero_grad(set_to_none=True)
            self.opt_g.zero_grad(set_to_none=True)
            # each loss differentiates only its own network's parameters, as two GradientTapes would
            _weighted(d_loss, w).backward(inputs=list(self.discriminator_core.parameters()), retain_graph=True)
            _weighted(g_loss, w).backward(inputs=list(self.generator_core.parameters()))
            self.opt_d.step()
            self.opt_g.step()
            self._update_ema()
            d_fake = torch.sigmoid(logits_fake.detach()).mean()
            stats[[D_LOSS, D_REAL, D_FAKE, N_D, G_LOSS, D_FAKE_AFTER, N_G]] = torch.stack(
                [
                    d_loss.detach(),
                    torch.sigmoid(logits_real.detach()).mean(),
                    d_fake,
                    torch.ones_like(d_fake),
                    g_loss.detach(),
                    d_fake,
                    torch.ones_like(d_fake),
                ]
            ).double()
            return _weighted_stats(stats, w)

        do_d = batch_index % tcfg.d_every == 0
        do_g = batch_index % tcfg.g_every == 0
        x_fake = y_fake = None
        if do_d:
            z, y_fake = self._draw(n_global)
            if tcfg.g_update == "same-fake" and do_g:
                with self._autocast():
                    x_fake = G(z, y_fake)  # [b, C, H, W], graph kept for the G step
                x_fake_for_d = x_fake.detach()
            else:
                with torch.no_grad(), self._autocast():
                    x_fake_for_d = G(z, y_fake)  # no graph: D's step never reaches G
            with self._autocast():
                logits_real, logits_fake = self._d_real_fake(D, x_real, y_real, x_fake_for_d, y_fake)  # [b] each
            d_loss = self.loss.d_loss(logits_real, logits_fake)
            self.opt_d.zero_grad(set_to_none=True)
            _weighted(d_loss, w).backward()
            self.opt_d.step()
            stats[[D_LOSS, D_REAL, D_FAKE, N_D]] = torch.stack(
                [
                    d_loss.detach(),
                    torch.sigmoid(logits_real.detach()).mean(),
                    torch.sigmoid(logits_fake.detach()).mean(),
                    torch.ones_like(d_loss),
                ]
            ).double()
        if do_g:
            if x_fake is None:
                z, y_fake = self._draw(n_global)
                with self._autocast():
                    x_fake = G(z, y_fake)  # [b, C, H, W]
            self.discriminator_core.requires_grad_(False)
            try:
                with self._autocast():
                    logits_fake_g = self.discriminator_for_g(x_fake, y_fake).float()  # [b]
                g_loss = self.loss.g_loss(logits_fake_g)
                self.opt_g.zero_grad(set_to_none=True)
                _weighted(g_loss, w).backward()
            finally:
                self.discriminator_core.requires_grad_(True)
            self.opt_g.step()
            self._update_ema()
            stats[[G_LOSS, D_FAKE_AFTER, N_G]] = torch.stack(
                [g_loss.detach(), torch.sigmoid(logits_fake_g.detach()).mean(), torch.ones_like(g_loss)]
            ).double()
        return _weighted_stats(stats, w)

    def _d_real_fake(
        self, D: nn.Module, x_real: torch.Tensor, y_real: torch.Tensor | None, x_fake: torch.Tensor, y_fake
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """D's float logits on the real and on the fake batch. When every layer of D treats each image on its
        own (no BatchNorm, no dropout), one forward over both batches gives the same logits with half the
        calls and twice-as-tall matrix products; otherwise two forwards, as the reference systems do."""
        if not self.d_per_sample:
            return D(x_real, y_real).float(), D(x_fake, y_fake).float()
        labels = None if y_real is None else torch.cat([y_real, y_fake])  # [2b]
        logits = D(torch.cat([x_real, x_fake.to(x_real.dtype)]), labels).float()  # [2b]
        return logits[: x_real.shape[0]], logits[x_real.shape[0] :]

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.generator_core.parameters()), 1.0 - self.cfg.train.ema_decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.generator_core.buffers()):
            ema_buffer.copy_(buffer)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        tcfg, ctx, state = self.cfg.train, self.ctx, self.state
        per_epoch = self.loader.batches_per_epoch
        if per_epoch == 0:
            raise ConfigError(
                f"{self.loader.num_images} images make no batch of {tcfg.batch_size} with drop_last; "
                "lower train.batch_size"
            )
        if ctx.is_main and state.step == 0:
            self._print(f"run directory: {self.run_dir.path}")
        stopped: str | None = None
        session_start = time.perf_counter()
        elapsed_before = state.elapsed
        window = torch.zeros(8, device=self.device, dtype=torch.float64)
        window_start = time.perf_counter()
        with _StopFlag() as stop:
            while state.epoch < tcfg.epochs and stopped is None:
                epoch = state.epoch
                if state.batch_in_epoch == 0:
                    self.acc_epoch.zero_()
                bar = tqdm(
                    total=per_epoch,
                    initial=state.batch_in_epoch,
                    desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                    disable=None if (tcfg.progress and ctx.is_main) else True,
                    leave=False,
                    dynamic_ncols=True,
                )
                for x_real, y_real in self.loader.epoch(epoch, start_batch=state.batch_in_epoch):
                    batch_index = state.batch_in_epoch
                    if state.step == 0 and ctx.is_main:
                        self._save_real_grid(x_real)
                    n_global = min(tcfg.batch_size, self.loader.num_images - batch_index * tcfg.batch_size)
                    stats = self._step(x_real, y_real, batch_index, n_global)
                    if self.thread_tuner is not None:
                        self.thread_tuner.tick()
                    window += stats
                    self.acc_epoch += stats
                    state.step += 1
                    state.batch_in_epoch += 1
                    bar.update(1)
                    state.elapsed = elapsed_before + time.perf_counter() - session_start
                    if state.step % tcfg.log_every == 0:
                        record = self._log_window(window, time.perf_counter() - window_start, per_epoch)
                        bar.set_postfix_str(
                            f"d {record['d_loss']:.3f} g {record['g_loss']:.3f} "
                            f"D(x) {record['d_real']:.2f} D(G(z)) {record['d_fake']:.2f}"
                        )
                        window.zero_()
                        window_start = time.perf_counter()
                    if self.cfg.eval.every_steps and state.step % self.cfg.eval.every_steps == 0:
                        self._evaluate_and_keep_best(per_epoch)
                    if tcfg.max_steps and state.step >= tcfg.max_steps:
                        stopped = f"reached --max-steps {tcfg.max_steps}"
                    elif tcfg.max_time and state.elapsed >= tcfg.max_time * 60:
                        stopped = f"reached --max-time {tcfg.max_time:g} min"
                    elif stop.signum is not None:
                        stopped = f"stopped by {signal.Signals(stop.signum).name}"
                    if ctx.any_flag(stopped is not None):
                        stopped = stopped or "another process stopped"
                        break
                bar.close()
                if state.batch_in_epoch >= per_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    self._end_of_epoch(epoch, per_epoch)
        if window[N_D] + window[N_G] > 0 and state.step % tcfg.log_every:
            self._log_window(window, time.perf_counter() - window_start, per_epoch)
        if stopped is not None and state.batch_in_epoch > 0:
            # every rank keeps the ranks' mean, which is what rank 0 saves: resuming on any number of
            # processes then continues the same epoch statistics
            self.acc_epoch = ctx.mean(self.acc_epoch)
            self._save_checkpoint(self.run_dir.latest)  # mid-epoch: the epoch end did not save one
        self._finish(stopped)
        return TrainResult(self.run_dir.path, state, stopped)

    def _log_window(self, window: torch.Tensor, seconds: float, per_epoch: int) -> dict[str, Any]:
        values = self.ctx.mean(window).tolist()  # the one host sync every log_every steps
        values[N_IMAGES] = window[N_IMAGES].item()
        record = self._record("step", values, per_epoch)
        record["images_per_s"] = round(values[N_IMAGES] / max(seconds, 1e-9), 1)
        self._check_finite(record)
        if self.ctx.is_main:
            self.run_dir.append(record)
        return record

    def _record(self, kind: str, values: list[float], per_epoch: int) -> dict[str, Any]:
        state = self.state
        n_d, n_g = max(values[N_D], 1), max(values[N_G], 1)
        progress = state.epoch + state.batch_in_epoch / per_epoch
        return {
            "kind": kind,
            "step": state.step,
            "epoch": state.epoch if kind == "step" else state.epoch - 1,
            "epoch_progress": round(progress, 4),
            "d_loss": values[D_LOSS] / n_d if values[N_D] else None,
            "g_loss": values[G_LOSS] / n_g if values[N_G] else None,
            "d_real": values[D_REAL] / n_d if values[N_D] else None,
            "d_fake": values[D_FAKE] / n_d if values[N_D] else None,
            "d_fake_after": values[D_FAKE_AFTER] / n_g if values[N_G] else None,
            "time_s": round(state.elapsed, 2),
        }

    def _check_finite(self, record: dict[str, Any]) -> None:
        bad = [k for k in ("d_loss", "g_loss") if record[k] is not None and not math.isfinite(record[k])]
        if bad:
            last = self.run_dir.latest if self.run_dir.latest.exists() else None
            raise DivergenceError(
                f"training diverged: {', '.join(bad)} became {record[bad[0]]} by step {record['step']} "
                f"(in the last {self.cfg.train.log_every} steps); "
                + (f"the last good checkpoint is {last}; " if last else "")
                + "try a lower learning rate (--set optim.lr_d=..., optim.lr_g=...)"
            )

    def _end_of_epoch(self, epoch: int, per_epoch: int) -> None:
        cfg, tcfg, ctx = self.cfg, self.cfg.train, self.ctx
        values = ctx.mean(self.acc_epoch).tolist()
        record = self._record("epoch", values, per_epoch)
        record["images_per_s"] = None
        self._check_finite(record)
        if ctx.is_main:
            self.run_dir.append(record)
            self._print(
                f"epoch {epoch + 1}/{tcfg.epochs}  step {self.state.step}  d_loss {_fmt(record['d_loss'])}  "
                f"g_loss {_fmt(record['g_loss'])}  D(x) {_fmt(record['d_real'])}  D(G(z)) {_fmt(record['d_fake'])}"
            )
        last_epoch = epoch + 1 == tcfg.epochs
        if ctx.is_main and ((epoch + 1) % tcfg.sample_every == 0 or last_epoch):
            save_grid(self._grid_images(), self.run_dir.epoch_samples(epoch + 1), nrow=self._grid_nrow())
        improved = False
        if (
            cfg.eval.every
            and ((epoch + 1) % cfg.eval.every == 0 or last_epoch)
            and self._last_eval_step != self.state.step
        ):
            improved = self._evaluate(per_epoch)
        if ctx.is_main:
            # redrawn each epoch, but at most every 10 s: on tiny datasets epochs take well under a second
            if last_epoch or time.perf_counter() - self._last_plot > 10:
                plot_training_curves(self.run_dir.read_records(), self.run_dir.loss_curves, title=cfg.recipe)
                self._last_plot = time.perf_counter()
            if not _all_finite([self.generator_core, self.discriminator_core]):
                raise DivergenceError(
                    f"training diverged: a weight became NaN/inf by epoch {epoch + 1} (step {self.state.step}); "
                    f"the last good checkpoint is {self.run_dir.latest}; try lower learning rates"
                )
            self._save_checkpoint(self.run_dir.latest)
            if (epoch + 1) % tcfg.checkpoint_every == 0:
                self._save_checkpoint(self.run_dir.epoch_checkpoint(epoch + 1))
                self.run_dir.prune_epoch_checkpoints(tcfg.keep_checkpoints)
            if improved:
                self._save_checkpoint(self.run_dir.best)
        ctx.barrier()

    # ------------------------------------------------------------------------------------------------
    def _sampling_generator(self) -> nn.Module:
        return self.ema if self.ema is not None else self.generator_core

    @torch.no_grad()
    def _grid_images(self) -> torch.Tensor:
        with _eval_mode(self._sampling_generator()) as generator:
            labels = None if self.grid_labels is None else self.grid_labels.to(self.device)
            x = generator(self.grid_z.to(self.device), labels).float().cpu()  # [n, C, H, W]
        return denormalize(x, self.cfg.data.mean, self.cfg.data.std)

    def _grid_nrow(self) -> int:
        return self.cfg.train.grid_columns

    def _save_real_grid(self, x_real: torch.Tensor) -> None:
        path = self.run_dir.samples / "real.png"
        if not path.exists():
            count = min(x_real.shape[0], self.cfg.train.grid_size)
            save_grid(
                denormalize(x_real[:count].float().cpu(), self.cfg.data.mean, self.cfg.data.std),
                path,
                nrow=self.cfg.train.grid_columns,
            )

    def _evaluate_and_keep_best(self, per_epoch: int) -> None:
        """A step-triggered evaluation (eval.every_steps), possibly mid-epoch; saves best.safetensors if improved."""
        if self.ctx.enabled:  # what the checkpoint holds: the ranks' mean (a collective, so every rank calls it)
            self.acc_epoch = self.ctx.mean(self.acc_epoch)
        if self._evaluate(per_epoch):
            self._save_checkpoint(self.run_dir.best)
        self.ctx.barrier()

    def _evaluate(self, per_epoch: int) -> bool:
        """Run the quality metric (rank 0; the weights are identical on every rank); True if it improved."""
        self._last_eval_step = self.state.step
        improved = False
        if self.ctx.is_main:
            from ganforge.data import load_dataset
            from ganforge.metrics import QualityTracker

            # Building the evaluator network draws from the global RNGs, and a resumed run builds it again:
            # evaluation must leave the training's random streams as it found them, or resume is not exact.
            with _rng_untouched(self.device):
                if self.tracker is None:
                    from ganforge.metrics.evaluator import real_shape_for_evaluation

                    model = self.cfg.model
                    shape = real_shape_for_evaluation(self.cfg.data.dataset, model.channels, model.resolution)
                    real = load_dataset(self.cfg.data, *shape)
                    self.tracker = QualityTracker(self.cfg, real, self.device)
                results = self.tracker(self._sample_for_eval)
            state = self.state
            at_epoch_end = state.batch_in_epoch == 0  # the epoch counter has already moved on
            record = {
                "kind": "eval",
                "step": state.step,
                "epoch": state.epoch - 1 if at_epoch_end else state.epoch,
                "epoch_progress": round(state.epoch + state.batch_in_epoch / per_epoch, 4),
                **results,
                "tracked": self.tracker.primary,  # the key that ranks checkpoints (and that loss_curves.png draws)
                "tracked_lower_is_better": self.tracker.lower_is_better,
            }
            self.run_dir.append(record)
            value = results.get(self.tracker.primary)
            if value is not None and math.isfinite(value):
                better = self.state.best is None or (
                    value < self.state.best if self.tracker.lower_is_better else value > self.state.best
                )
                if better:
                    self.state.best, self.state.best_epoch, improved = value, record["epoch_progress"], True
            self._print(
                "  " + "  ".join(f"{k} {_fmt(v)}" for k, v in results.items()) + ("  (best so far)" if improved else "")
            )
        return improved

    @torch.no_grad()
    def _sample_for_eval(self, num: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        # the same noise at every evaluation, so differences are the generator's, not the draw's
        z = draw_noise(num, cfg.model.latent_dim, cfg.train.seed + 2)
        labels = None
        if cfg.model.num_classes > 0:
            labels = torch.arange(num) % cfg.model.num_classes
        images = []
        with _eval_mode(self._sampling_generator()) as generator:
            for start in range(0, num, 500):
                y = None if labels is None else labels[start : start + 500].to(self.device)
                images.append(generator(z[start : start + 500].to(self.device), y).float().cpu())
        return denormalize(torch.cat(images), cfg.data.mean, cfg.data.std), labels

    # ------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        if not self.ctx.is_main:
            return
        tensors: dict[str, torch.Tensor] = {}
        tensors.update(module_tensors("generator", self.generator_core))
        tensors.update(module_tensors("discriminator", self.discriminator_core))
        if self.ema is not None:
            tensors.update(module_tensors("ema", self.ema))
        optim = {
            "g": flatten_state("optim_g", self.opt_g.state_dict(), tensors),
            "d": flatten_state("optim_d", self.opt_d.state_dict(), tensors),
        }
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["rng.noise"] = self.noise_rng.get_state()
        tensors["acc_epoch"] = self.acc_epoch
        py_state = random.getstate()
        np_state = np.random.get_state()
        meta = {
            "config": to_dict(self.cfg),
            "state": {k: v for k, v in vars(self.state).items()},
            "optimizers": optim,
            "rng": {
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy": [
                    np_state[0],
                    np_state[1].tolist(),
                    *[v.item() if hasattr(v, "item") else v for v in np_state[2:]],
                ],
                "noise_device": self.device.type,
            },
            "world_size": self.ctx.world_size,
            "versions": {
                "ganforge": ganforge.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
        save_tensors(path, tensors, meta, kind="training")

    def _load(self, path: Path) -> None:
        tensors, meta, kind = load_tensors(path)
        if kind != "training":
            raise ConfigError(
                f"{path} is a {kind or 'non-training'} export, not a training checkpoint; "
                "resume from RUN_DIR or RUN_DIR/checkpoints/latest.safetensors"
            )
        load_module("generator", self.generator_core, tensors, path)
        load_module("discriminator", self.discriminator_core, tensors, path)
        if self.ema is not None:
            if any(k.startswith("ema.") for k in tensors):
                load_module("ema", self.ema, tensors, path)
            else:
                self.ema.load_state_dict(self.generator_core.state_dict())
        self.opt_g.load_state_dict(unflatten_state(meta["optimizers"]["g"], tensors))
        self.opt_d.load_state_dict(unflatten_state(meta["optimizers"]["d"], tensors))
        # the resumed run keeps the learning rates of its (possibly overridden) config
        for opt, lr in ((self.opt_g, self.cfg.optim.lr_g), (self.opt_d, self.cfg.optim.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr
        torch.set_rng_state(tensors["rng.torch"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        rng = meta["rng"]
        if rng.get("noise_device") == self.device.type:
            self.noise_rng.set_state(tensors["rng.noise"])
        else:  # a CUDA noise stream cannot continue on the CPU: reseed deterministically from the step
            self.noise_rng.manual_seed(self.cfg.train.seed + 7919 + meta["state"]["step"])
            self._print(f"note: checkpoint made on {rng.get('noise_device')}; the noise stream restarts here")
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npy = rng["numpy"]
        np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
        self.acc_epoch = tensors["acc_epoch"].to(self.device)
        self.state = TrainState(**meta["state"])
        if self.state.epoch >= self.cfg.train.epochs and self.ctx.is_main:
            self._print(f"the run already finished {self.state.epoch} epochs; raise --epochs to train further")

    def _finish(self, stopped: str | None) -> None:
        if not self.ctx.is_main:
            return
        state = self.state
        self.run_dir.append(
            {
                "kind": "stop",
                "step": state.step,
                "epoch": state.epoch,
                "reason": stopped or "finished",
                "time_s": round(state.elapsed, 2),
            }
        )
        meta = {"config": to_dict(self.cfg), "step": state.step, "epoch": state.epoch}
        g_tensors = module_tensors("generator", self.generator_core)
        if self.ema is not None:
            g_tensors.update(module_tensors("ema", self.ema))
        save_tensors(self.run_dir.path / "generator.safetensors", g_tensors, meta, kind="generator")
        save_tensors(
            self.run_dir.path / "discriminator.safetensors",
            module_tensors("discriminator", self.discriminator_core),
            meta,
            kind="discriminator",
        )
        if state.batch_in_epoch > 0:  # a partial epoch: show where it got to
            save_grid(self._grid_images(), self.run_dir.samples / f"step_{state.step:07d}.png", nrow=self._grid_nrow())
        plot_training_curves(self.run_dir.read_records(), self.run_dir.loss_curves, title=self.cfg.recipe)
        if stopped:
            self._print(
                f"{stopped} at step {state.step} (epoch {state.epoch + 1}); checkpoint saved. "
                f"Resume with: ganforge train --resume {self.run_dir.path}"
            )
        else:
            self._print(
                f"finished {state.epoch} epochs, {state.step} steps in {state.elapsed:.1f}s; "
                f"outputs in {self.run_dir.path}"
            )

    def _print(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message, file=sys.stdout)


def _weighted(loss: torch.Tensor, w: float) -> torch.Tensor:
    """``loss * w``, skipped when ``w`` is 1: under DDP the ranks' gradients of it average to the
    gradient of the global batch mean even when the ranks' shards differ in size."""
    return loss if w == 1.0 else loss * w


def _weighted_stats(stats: torch.Tensor, w: float) -> torch.Tensor:
    """The per-batch means of ``stats`` weighted like the losses, so their mean over ranks is global."""
    if w != 1.0:
        stats[[D_LOSS, D_REAL, D_FAKE, G_LOSS, D_FAKE_AFTER]] *= w
    return stats


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _run_dir_of(checkpoint: Path) -> RunDir:
    """The run directory a checkpoint belongs to (RUN/checkpoints/x.safetensors -> RUN)."""
    checkpoint = Path(checkpoint)
    return RunDir(checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent)


def load_resume_config(resume: Path) -> tuple[Path, RunConfig]:
    """The checkpoint a ``--resume`` argument names and the config it was trained with."""
    from ganforge.config import from_dict
    from ganforge.errors import CheckpointError

    resume = Path(resume)
    checkpoint = resume / "checkpoints" / "latest.safetensors" if resume.is_dir() else resume
    if not checkpoint.is_file():
        raise CheckpointError(
            f"cannot resume: {checkpoint} is missing (was the run started, and did it save a checkpoint?); "
            "pass a run directory holding checkpoints/latest.safetensors"
        )
    _, meta, _ = load_tensors(checkpoint)
    if "config" not in meta:
        raise CheckpointError(f"{checkpoint} carries no config; it was not written by ganforge train")
    return checkpoint, from_dict(meta["config"])


def dump_state(state: TrainState) -> str:
    return json.dumps(vars(state))
