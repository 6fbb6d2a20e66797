"""The training loop: ``train(cfg)`` from config to run directory, read top to bottom.

    for each epoch:
        for each batch:   step (training/step.py) -> log every log_every -> evaluate every every_steps
                          -> stop on --max-steps / --max-time / Ctrl-C
        at the epoch end: epoch record, sample grid, evaluation, plot, checkpoints

Everything built before the first step is in ``setup.py``; the checkpoint layout and resume in
``state.py``; grids and evaluations in ``outputs.py``. Under torchrun every rank runs this same loop on
its shard; rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ganforge.augment import parse_policy
from ganforge.checkpoint import check_output_space, format_bytes, free_bytes
from ganforge.config import RUNTIME_KEY, RunConfig, to_dict, to_json
from ganforge.data import make_loader
from ganforge.errors import DivergenceError, GanforgeWarning
from ganforge.objectives import get_objective
from ganforge.plots import plot_training_curves
from ganforge.report import ReportObserver
from ganforge.rundir import RunDir
from ganforge.tensorboard import TensorBoardObserver
from ganforge.tensorboard import check_available as check_tensorboard
from ganforge.training.distributed import DistContext, init_distributed, rank_failure
from ganforge.training.guards import Alarm, CollapseAlarm, DivergenceGuard
from ganforge.training.outputs import Evaluator, SampleGrids
from ganforge.training.pacing import CHECKPOINT_SHARE, PLOT_MIN_INTERVAL_S, PLOT_SHARE, Pacer
from ganforge.training.setup import build_setup, check_shards, cuda_kernel_switches, runtime_record
from ganforge.training.signals import StopFlag
from ganforge.training.state import (
    TrainState,
    load_training_checkpoint,
    restore_networks,
    run_dir_of,
    runtime_of,
    save_training_checkpoint,
    save_weight_exports,
)
from ganforge.training.step import DiscriminatorAugment, NoiseSource, StatsSummary, StepStats, TrainStep


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    stopped_early: str | None  # why training stopped before its last epoch, or None
    signal: int | None = None  # the signal (SIGINT, SIGTERM) that stopped it
    alarm: bool = False  # an alarm with action stop (train.on_divergence / on_collapse) ended it: a failed run


def train(
    cfg: RunConfig,
    out: Path | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    resume_overrides: list[str] | None = None,
) -> TrainResult:
    """Train ``cfg`` into a run directory (``out`` or ``runs/<recipe>-<time>``), or continue ``resume``
    (a training checkpoint; ``resume_overrides`` are recorded with it). Returns where and how it ended."""
    try:
        with cuda_kernel_switches(cfg.train.deterministic):
            ctx = init_distributed(cfg.train.device)  # under torchrun: the process group, kept until exit
            out = out if out is not None or resume is not None else RunDir.default_path(cfg.recipe)
            run_dir = RunDir(out if out is not None else run_dir_of(resume))
            with run_dir.lock() if ctx.is_main else contextlib.nullcontext():  # before anything is read or removed
                return Trainer(cfg, ctx, out, resume, overwrite, resume_overrides or []).run()
    except Exception as exc:
        report = rank_failure(exc)  # under torchrun: names the rank, and is what torchrun's summary shows
        if report is exc:
            raise
        raise report from None


class Trainer:
    """One run: its networks, step, state and run directory. ``run()`` is the loop."""

    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        out: Path | None = None,
        resume: Path | None = None,
        overwrite: bool = False,
        resume_overrides: list[str] | None = None,
    ) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.objective = get_objective(cfg.loss.name, cfg.loss)
        parse_policy(cfg.augment.policy)  # an unknown augmentation is an error now, not after the data has loaded
        if cfg.train.tensorboard:
            check_tensorboard()  # a missing extra is an error now, not after the data has loaded
        if resume is None:
            out = out if out is not None else RunDir.default_path(cfg.recipe)
            if ctx.is_main:  # refuse to touch an existing run before spending time on data and models
                RunDir(out).check_new(overwrite)
        # seeds, then builds the networks (first of all random draws); chooses the kernels and resolves
        # train.precision=auto in cfg, or keeps the choices of the checkpoint it resumes
        self.setup = build_setup(cfg, ctx, runtime_of(resume) if resume is not None else None)
        self.runtime = runtime_record(self.setup.choices)
        self.nets = self.setup.nets
        self.loader = make_loader(cfg, ctx.device, ctx.rank, ctx.world_size)
        check_shards(cfg, self.loader.num_images, ctx.world_size)
        self.noise = NoiseSource(cfg.model.latent_dim, cfg.model.num_classes, cfg.train.seed + 7919, ctx)
        autocast = torch.bfloat16 if cfg.train.precision == "bf16" else None
        self.step = TrainStep(self.nets, self.objective, cfg.train, self.noise, ctx, autocast)
        if cfg.augment.policy:
            self.step.augment = DiscriminatorAugment(cfg.augment, ctx.device, cfg.train.seed + 104729)
        self.grids = SampleGrids(cfg, ctx.device)
        self.evaluator = Evaluator(cfg, ctx.device)
        self.state = TrainState()
        self.acc_epoch = StepStats.zeros(ctx.device)
        # pacing.py: short epochs do not pay for a plot and a latest checkpoint each (the last epoch and stops do)
        self._plot_pacer = Pacer(PLOT_SHARE, PLOT_MIN_INTERVAL_S)
        self._latest_pacer = Pacer(CHECKPOINT_SHARE)
        self._latest_step = -1  # the step latest.safetensors was last written at
        self._last_eval_step = -1  # an epoch end does not evaluate again what a step-triggered evaluation just did
        self.stop = StopFlag()
        self.divergence, self.collapse = DivergenceGuard(cfg.train), CollapseAlarm(cfg.train)
        self._alarm_stop: str | None = None  # an alarm whose action is stop
        self._rollback_wanted = False  # an evaluation's collapse alarm asks for best.safetensors back
        self._fresh = resume is None  # a new run directory, which an interrupt before any checkpoint removes
        self.run_dir = RunDir(out) if out is not None else RunDir(run_dir_of(resume))
        if ctx.is_main:
            self._check_space()  # before anything is written: a full disk leaves no half-made run
        if resume is not None:
            self._resume(resume, resume_overrides or [])
        elif ctx.is_main:
            self.run_dir.create(overwrite=overwrite)
            self.run_dir.append({"kind": "setup", "step": 0, "runtime": self.runtime})
        self.observers: list[Any] = []  # rank 0: the live report, TensorBoard
        if ctx.is_main:
            self.run_dir.write_config(to_json(cfg, self.runtime) + "\n")  # with what this machine chose
            self.observers = self._make_observers(resumed_from=self.state.step if resume is not None else None)
        ctx.barrier()

    def _check_space(self) -> None:
        """Room for the next checkpoints (latest, best, one numbered) or fail now; a warning when all the
        numbered checkpoints the config will keep do not fit."""
        nets, tcfg = self.nets, self.cfg.train
        weights = [t for m in (nets.generator_core, nets.discriminator_core) for t in m.state_dict().values()]
        one = 3 * sum(t.numel() * t.element_size() for t in weights)  # weights and two Adam moments
        if nets.ema is not None:
            one += sum(t.numel() * t.element_size() for t in nets.ema.state_dict().values())
        check_output_space(self.run_dir.path, 3 * one, "run directory")
        numbered = tcfg.keep_checkpoints or tcfg.epochs // tcfg.checkpoint_every
        free = free_bytes(self.run_dir.path)
        if free is not None and (2 + numbered) * one > free:
            warnings.warn(
                f"{numbered} numbered checkpoints of {format_bytes(one)} will not fit in the {format_bytes(free)} "
                f"free under {self.run_dir.path}; keep fewer with --set train.keep_checkpoints=N",
                GanforgeWarning,
                stacklevel=2,
            )

    def _make_observers(self, resumed_from: int | None) -> list[Any]:
        observers: list[Any] = []
        if self.cfg.train.report:
            observers.append(ReportObserver(self.run_dir.path, self.cfg.train.report_every_s))
        if self.cfg.train.tensorboard:
            observers.append(TensorBoardObserver(self.run_dir.path, to_dict(self.cfg), resume_step=resumed_from))
        return observers

    def _append(self, record: dict[str, Any]) -> None:
        """A record into metrics.jsonl (rank 0), and to every observer."""
        self.run_dir.append(record)
        for observer in self.observers:
            observer.on_record(record)

    def _save_grid(self, path: Path) -> None:
        self.grids.save(self._sampling_generator(), path)
        for observer in self.observers:
            observer.on_grid(path, self.state.step)

    def _resume(self, checkpoint: Path, overrides: list[str]) -> None:
        self.state, self.acc_epoch, meta = load_training_checkpoint(
            checkpoint, self.cfg, self.nets, self.noise, self.log, augment=self.step.augment
        )
        if "guards" in meta:  # the alarms' streaks and rollback count go on where they were
            self.divergence.load_state_dict(meta["guards"]["divergence"])
            self.collapse.load_state_dict(meta["guards"]["collapse"])
        self.step.step_count = self.state.step
        if not self.ctx.is_main:
            return
        if not self.run_dir.checkpoints.exists():  # --resume CHECKPOINT --out NEW_DIR
            self.run_dir.create(overwrite=False)
        self.run_dir.truncate_after(self.state.step)
        self.run_dir.append(  # before the observers exist: they read it from metrics.jsonl
            {
                "kind": "resume",
                "step": self.state.step,
                "from": str(checkpoint),
                "overrides": overrides,
                "runtime": self.runtime,
            }
        )
        if self.state.epoch >= self.cfg.train.epochs:
            self.log(f"the run already finished {self.state.epoch} epochs; raise --epochs to train further")

    # ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the configured end; Ctrl-C / SIGTERM saves and stops (a second one stops at once)."""
        try:
            with self.stop:
                return self._run()
        except KeyboardInterrupt:
            self._after_interrupt()
            raise

    def _run(self) -> TrainResult:
        tcfg, state, per_epoch = self.cfg.train, self.state, self.loader.batches_per_epoch
        if state.step == 0:
            self.log(f"run directory: {self.run_dir.path}")
        self.log(self.setup.summary)
        for warning in self.setup.warnings:
            self.log(warning)
        stopped: str | None = None
        clock = _Clock(state.elapsed)
        window = StepStats.zeros(self.ctx.device)
        while state.epoch < tcfg.epochs and stopped is None:
            if state.batch_in_epoch == 0:
                self.acc_epoch.zero_()
            with self._progress_bar(per_epoch) as bar:
                for x_real, y_real in self.loader.epoch(state.epoch, start_batch=state.batch_in_epoch):
                    self._train_one_batch(x_real, y_real, window)
                    state.elapsed = clock.elapsed()
                    bar.update(1)
                    if state.step % tcfg.log_every == 0:
                        bar.set_postfix_str(self._log_window(window, clock.lap(), per_epoch))
                    if self.cfg.eval.every_steps and state.step % self.cfg.eval.every_steps == 0:
                        self._evaluate_mid_epoch(per_epoch)
                    stopped = self._stop_reason()
                    if self.ctx.any_flag(stopped is not None):
                        stopped = stopped or "another process stopped"
                        break
            if state.batch_in_epoch >= per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                self._end_of_epoch(per_epoch)
        if window.any() and state.step % tcfg.log_every:
            self._log_window(window, clock.lap(), per_epoch)
        if stopped is not None and state.batch_in_epoch > 0:
            # every rank keeps the ranks' mean, which is what rank 0 saves: resuming on any number of
            # processes then continues the same epoch statistics
            self.acc_epoch = StepStats(self.ctx.mean(self.acc_epoch.totals))
        if stopped is not None and self._latest_step != state.step:  # mid-epoch, or an epoch end that paced it
            self._save_latest()
        self._finish(stopped)
        signum = self.stop.signum
        by_signal = signum is not None and stopped == f"stopped by {signal.Signals(signum).name}"
        by_alarm = stopped is not None and stopped == self._alarm_stop
        return TrainResult(self.run_dir.path, state, stopped, signum if by_signal else None, by_alarm)

    def _train_one_batch(self, x_real: torch.Tensor, y_real: torch.Tensor | None, window: StepStats) -> None:
        state, batch_size = self.state, self.cfg.train.batch_size
        if state.step == 0 and self.ctx.is_main:
            self.grids.save_real(x_real, self.run_dir.samples / "real.png")
        n_global = min(batch_size, self.loader.num_images - state.batch_in_epoch * batch_size)
        stats = self.step(x_real, y_real, state.batch_in_epoch, n_global)
        if self.setup.thread_tuner is not None:
            self.setup.thread_tuner.tick()
        window.add_(stats)
        self.acc_epoch.add_(stats)
        state.step += 1
        state.batch_in_epoch += 1

    def _stop_reason(self) -> str | None:
        tcfg, state = self.cfg.train, self.state
        if tcfg.max_steps and state.step >= tcfg.max_steps:
            return f"reached --max-steps {tcfg.max_steps}"
        if tcfg.max_time and state.elapsed >= tcfg.max_time * 60:
            return f"reached --max-time {tcfg.max_time:g} min"
        if self._alarm_stop is not None:
            return self._alarm_stop
        if self.stop.signum is not None:
            return f"stopped by {signal.Signals(self.stop.signum).name}"
        return None

    def _progress_bar(self, per_epoch: int) -> tqdm:
        show = self.cfg.train.progress and self.ctx.is_main
        return tqdm(
            total=per_epoch,
            initial=self.state.batch_in_epoch,
            desc=f"epoch {self.state.epoch + 1}/{self.cfg.train.epochs}",
            disable=None if show else True,
            leave=False,
            dynamic_ncols=True,
        )

    # --- logging ---------------------------------------------------------------------------------------
    def _log_window(self, window: StepStats, seconds: float, per_epoch: int) -> str:
        summary = window.read(self.ctx)  # the one host sync every log_every steps
        record = self._record("step", summary, per_epoch)
        record["images_per_s"] = round(summary.n_images / max(seconds, 1e-9), 1)
        self._check_finite(record)
        if self.ctx.is_main:
            self._append(record)
        # window records are the ranks' mean: every rank's guards see the same numbers and decide alike
        for alarm in (self.divergence.observe(record), self.collapse.observe(record, self.run_dir.best.exists())):
            self._on_alarm(alarm)
        window.zero_()
        return f"d {_fmt(record['d_loss'])} g {_fmt(record['g_loss'])} D(x) {_fmt(record['d_real'])}"

    def _record(self, kind: str, summary: StatsSummary, per_epoch: int) -> dict[str, Any]:
        state = self.state
        return {
            "kind": kind,
            "step": state.step,
            "epoch": state.epoch if kind == "step" else state.epoch - 1,
            "epoch_progress": round(state.epoch + state.batch_in_epoch / per_epoch, 4),
            "d_loss": summary.d_loss,
            "g_loss": summary.g_loss,
            "d_real": summary.d_real,
            "d_fake": summary.d_fake,
            "d_fake_after": summary.d_fake_after,
            **({"augment_p": round(self.step.augment.p, 5)} if self.step.augment is not None else {}),
            "time_s": round(state.elapsed, 2),
        }

    def _check_finite(self, record: dict[str, Any]) -> None:
        bad = [k for k in ("d_loss", "g_loss") if record[k] is not None and not math.isfinite(record[k])]
        if bad:
            last = self.run_dir.latest if self.run_dir.latest.exists() else None
            raise DivergenceError(
                f"training diverged: {', '.join(bad)} became {record[bad[0]]} by step {record['step']} "
                f"(in the last {self.cfg.train.log_every} steps); "
                + (f"the last good checkpoint is {last}; " if last else "nothing was saved yet (no checkpoint); ")
                + "try a lower learning rate (--set optim.lr_d=..., optim.lr_g=...)"
            )

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message, file=sys.stdout)

    # --- epoch end, evaluation, checkpoints -------------------------------------------------------------
    def _end_of_epoch(self, per_epoch: int) -> None:
        cfg, tcfg, epoch = self.cfg, self.cfg.train, self.state.epoch  # epoch: the one just finished, 1-based
        record = self._record("epoch", self.acc_epoch.read(self.ctx), per_epoch)
        record["images_per_s"] = None
        self._check_finite(record)
        last_epoch = epoch == tcfg.epochs
        if self.ctx.is_main:
            self._append(record)
            self.log(
                f"epoch {epoch}/{tcfg.epochs}  step {self.state.step}  d_loss {_fmt(record['d_loss'])}  "
                f"g_loss {_fmt(record['g_loss'])}  D(x) {_fmt(record['d_real'])}  D(G(z)) {_fmt(record['d_fake'])}"
            )
            if epoch % tcfg.sample_every == 0 or last_epoch:
                self._save_grid(self.run_dir.epoch_samples(epoch))
        evaluate = cfg.eval.every and (epoch % cfg.eval.every == 0 or last_epoch)
        improved = evaluate and self._last_eval_step != self.state.step and self._evaluate(per_epoch)
        if self.ctx.is_main:
            if last_epoch or self._plot_pacer.due():  # pacing.py: on tiny datasets epochs take under a second
                self._plot()
            self._check_weights_finite()
            if last_epoch or self._latest_pacer.due():
                self._save_latest()
            if epoch % tcfg.checkpoint_every == 0:
                self._save_checkpoint(self.run_dir.epoch_checkpoint(epoch))
                self.run_dir.prune_epoch_checkpoints(tcfg.keep_checkpoints)
            if improved:
                self._save_checkpoint(self.run_dir.best)
        if evaluate:
            self._rollback_if_wanted()
        self.ctx.barrier()

    def _evaluate_mid_epoch(self, per_epoch: int) -> None:
        """A step-triggered evaluation (eval.every_steps); saves best.safetensors if it improved."""
        if self.ctx.enabled:  # what the checkpoint holds: the ranks' mean (a collective, so every rank calls it)
            self.acc_epoch = StepStats(self.ctx.mean(self.acc_epoch.totals))
        if self._evaluate(per_epoch):
            self._save_checkpoint(self.run_dir.best)
        self._rollback_if_wanted()
        self.ctx.barrier()

    def _evaluate(self, per_epoch: int) -> bool:
        """Run the quality metric on rank 0 (the weights are identical on every rank); True if it improved."""
        self._last_eval_step = self.state.step
        if not self.ctx.is_main:
            return False
        record, results, improved = self.evaluator(self._sampling_generator(), self.state, per_epoch)
        self._append(record)
        self._on_alarm(self.collapse.observe(record, rollback_possible=self.run_dir.best.exists()))
        self.log(
            "  " + "  ".join(f"{k} {_fmt(v)}" for k, v in results.items()) + ("  (best so far)" if improved else "")
        )
        return improved

    def _on_alarm(self, alarm: Alarm | None) -> None:
        """Say it (console, metrics.jsonl) and do what the alarm's action asks."""
        if alarm is None:
            return
        if self.ctx.is_main:
            self._append(alarm.record())
            self.log(f"warning: {alarm.message}")
        if alarm.action == "stop":
            self._alarm_stop = f"stopped by the {alarm.guard} alarm ({', '.join(alarm.triggers)})"
        elif alarm.action == "rollback":
            self._rollback_wanted = True

    def _rollback_if_wanted(self) -> None:
        """Restart from best.safetensors (weights and both optimisers) with the learning rates lowered; every
        rank calls this after an evaluation (which ran on rank 0 alone)."""
        if not self.ctx.any_flag(self._rollback_wanted):
            return
        self._rollback_wanted = False
        optim = self.cfg.optim
        optim.lr_g, optim.lr_d = (
            optim.lr_g * self.cfg.train.rollback_lr_factor,
            optim.lr_d * self.cfg.train.rollback_lr_factor,
        )
        restore_networks(self.run_dir.best, self.cfg, self.nets)
        self.collapse.rolled_back()
        if self.ctx.is_main:
            self._append({"kind": "rollback", "step": self.state.step, "from": str(self.run_dir.best),
                          "lr_g": optim.lr_g, "lr_d": optim.lr_d})  # fmt: skip
            self.run_dir.write_config(to_json(self.cfg, self.runtime) + "\n")  # resumes keep the lowered rates
            self.log(f"rolled back to {self.run_dir.best} with lr_g {optim.lr_g:.3g}, lr_d {optim.lr_d:.3g}")

    def _check_weights_finite(self) -> None:
        tensors = [t for m in (self.nets.generator_core, self.nets.discriminator_core) for t in m.state_dict().values()]
        if all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
            return
        latest = self.run_dir.latest
        saved = f"the last good checkpoint is {latest}" if latest.exists() else "nothing was saved yet"
        raise DivergenceError(
            f"training diverged: a weight became NaN/inf by epoch {self.state.epoch} (step {self.state.step}); "
            f"{saved}; try lower learning rates"
        )

    def _save_latest(self) -> None:
        with self._latest_pacer.timed():
            self._save_checkpoint(self.run_dir.latest)
        self._latest_step = self.state.step

    def _save_checkpoint(self, path: Path) -> None:
        if self.ctx.is_main:
            with self.stop.protect():  # no Ctrl-C aborts a save half-way
                save_training_checkpoint(
                    path,
                    self.cfg,
                    self.nets,
                    self.noise,
                    self.acc_epoch,
                    self.state,
                    self.ctx.world_size,
                    extra={
                        RUNTIME_KEY: self.runtime,
                        "guards": {"divergence": self.divergence.state_dict(), "collapse": self.collapse.state_dict()},
                        # what the model card of an export names: the data it was trained on, and where
                        "data": {"fingerprint": self.loader.fingerprint, "num_images": self.loader.num_images},
                        "device": str(self.ctx.device),
                    },
                    augment=self.step.augment,
                )
            self.stop.saved()  # a second Ctrl-C waiting for this save stops here

    def _after_interrupt(self) -> None:
        """Say what a second Ctrl-C left; a new run with nothing saved leaves no directory behind."""
        if not self.ctx.is_main:
            return
        latest = self.run_dir.latest
        if latest.exists():
            self.log(f"interrupted at step {self.state.step}; the last checkpoint is {latest}. "
                     f"Resume with: ganforge train --resume {self.run_dir.path}")  # fmt: skip
        elif self._fresh and self.run_dir.path.exists():
            shutil.rmtree(self.run_dir.path, ignore_errors=True)
            self.log(f"interrupted at step {self.state.step}: nothing saved yet; removed {self.run_dir.path}")
        else:
            self.log(f"interrupted at step {self.state.step}: nothing saved yet")

    def _sampling_generator(self) -> torch.nn.Module:
        return self.nets.ema if self.nets.ema is not None else self.nets.generator_core

    def _plot(self) -> None:
        with self._plot_pacer.timed():
            plot_training_curves(self.run_dir.read_records(), self.run_dir.loss_curves, title=self.cfg.recipe)

    def _finish(self, stopped: str | None) -> None:
        if not self.ctx.is_main:
            return
        state = self.state
        self._append(
            {
                "kind": "stop",
                "step": state.step,
                "epoch": state.epoch,
                "reason": stopped or "finished",
                "time_s": round(state.elapsed, 2),
            }
        )
        save_weight_exports(self.run_dir.path, self.cfg, self.nets, state.step, state.epoch)
        if state.batch_in_epoch > 0:  # a partial epoch: show where it got to
            self._save_grid(self.run_dir.samples / f"step_{state.step:07d}.png")
        self._plot()
        for observer in self.observers:
            observer.close()
        if stopped:
            self.log(
                f"{stopped} at step {state.step} (epoch {state.epoch + 1}); checkpoint saved. "
                f"Resume with: ganforge train --resume {self.run_dir.path}"
            )
        else:
            self.log(
                f"finished {state.epoch} epochs, {state.step} steps in {state.elapsed:.1f}s; "
                f"outputs in {self.run_dir.path}"
            )


class _Clock:
    """Training time over all sessions of a run, and the length of the current log window."""

    def __init__(self, elapsed_before: float) -> None:
        self.elapsed_before, self.start = elapsed_before, time.perf_counter()
        self.window_start = self.start

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.window_start = now - self.window_start, now
        return seconds


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
