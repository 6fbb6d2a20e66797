"""The train state and the training checkpoint: what resuming needs, and its key layout.

A training checkpoint is one ``ganforge.checkpoint`` file of kind ``training``:
  tensors  generator.* discriminator.* ema.* (weights and buffers), optim_g.* optim_d.* (Adam moments),
           rng.torch rng.cuda rng.noise (RNG states), acc_epoch (the epoch's statistics so far)
  meta     config, state (TrainState), optimizers (Adam skeletons), rng (Python, NumPy), world_size,
           versions, runtime (the kernel and precision choices the run made on its machine, and why: a
           resumed run keeps them, setup.py)
Reproducibility: the data order of epoch e is a pure function of (seed, e), and every random stream is
saved, so N epochs + resume M epochs gives the same weights as N+M epochs straight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ganforge
from ganforge.checkpoint import (
    flatten_state,
    load_meta,
    load_module,
    load_tensors,
    module_tensors,
    save_tensors,
    unflatten_state,
)
from ganforge.config import RUNTIME_KEY, RunConfig, from_dict, to_dict
from ganforge.errors import CheckpointError, ConfigError
from ganforge.objectives import Batch
from ganforge.training.step import DiscriminatorAugment, Networks, NoiseSource, StepStats


@dataclass
class TrainState:
    step: int = 0  # batches done in total
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # the next batch of that epoch
    elapsed: float = 0.0  # seconds of training so far, over all sessions of the run
    best: float | None = None  # best value of the tracked quality metric
    best_epoch: float | None = None  # fractional when evaluated mid-epoch (eval.every_steps)


def save_training_checkpoint(
    path: Path,
    cfg: RunConfig,
    nets: Networks,
    noise: NoiseSource,
    acc_epoch: StepStats,
    state: TrainState,
    world_size: int,
    extra: dict[str, Any] | None = None,
    augment: DiscriminatorAugment | None = None,
) -> None:
    """Everything ``load_training_checkpoint`` needs to continue bit for bit; ``extra``: more JSON meta."""
    tensors: dict[str, torch.Tensor] = {}
    tensors.update(module_tensors("generator", nets.generator_core))
    tensors.update(module_tensors("discriminator", nets.discriminator_core))
    if nets.ema is not None:
        tensors.update(module_tensors("ema", nets.ema))
    optim = {
        "g": flatten_state("optim_g", nets.opt_g.state_dict(), tensors),
        "d": flatten_state("optim_d", nets.opt_d.state_dict(), tensors),
    }
    tensors["rng.torch"] = torch.get_rng_state()
    device = noise.ctx.device
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    tensors["rng.noise"] = noise.rng.get_state()
    if noise.kept is not None:  # kept-noise: the noise the next D phase scores
        tensors["noise.kept_z"] = noise.kept.x
        if noise.kept.y is not None:
            tensors["noise.kept_labels"] = noise.kept.y
    tensors["acc_epoch"] = acc_epoch.totals
    if augment is not None:  # its random stream and ADA's p
        tensors["rng.augment"] = augment.rng.get_state()
        extra = {**(extra or {}), "augment": augment.state_dict()}
    meta = {
        "config": to_dict(cfg),
        "state": dict(vars(state)),
        "optimizers": optim,
        "rng": {**_host_rng_states(), "noise_device": device.type},
        "world_size": world_size,
        "versions": {"ganforge": ganforge.__version__, "torch": torch.__version__, "python": platform.python_version()},
        **(extra or {}),
    }
    save_tensors(path, tensors, meta, kind="training")


def save_weight_exports(run_dir: Path, cfg: RunConfig, nets: Networks, step: int, epoch: int) -> None:
    """``generator.safetensors`` (G, and its EMA) and ``discriminator.safetensors``: weights only, for sampling."""
    meta = {"config": to_dict(cfg), "step": step, "epoch": epoch}
    g_tensors = module_tensors("generator", nets.generator_core)
    if nets.ema is not None:
        g_tensors.update(module_tensors("ema", nets.ema))
    save_tensors(run_dir / "generator.safetensors", g_tensors, meta, kind="generator")
    d_tensors = module_tensors("discriminator", nets.discriminator_core)
    save_tensors(run_dir / "discriminator.safetensors", d_tensors, meta, kind="discriminator")


def load_training_checkpoint(
    path: Path,
    cfg: RunConfig,
    nets: Networks,
    noise: NoiseSource,
    log: Any = print,
    augment: DiscriminatorAugment | None = None,
) -> tuple[TrainState, StepStats, dict[str, Any]]:
    """Restore networks, optimisers and RNG streams in place; returns (state, epoch statistics, meta)."""
    tensors, meta, kind = load_tensors(path)
    if kind != "training":
        raise ConfigError(
            f"{path} is a {kind or 'non-training'} export, not a training checkpoint; "
            "resume from RUN_DIR or RUN_DIR/checkpoints/latest.safetensors"
        )
    load_module("generator", nets.generator_core, tensors, path)
    load_module("discriminator", nets.discriminator_core, tensors, path)
    if nets.ema is not None:
        if any(k.startswith("ema.") for k in tensors):
            load_module("ema", nets.ema, tensors, path)
        else:  # EMA switched on at resume: start it from G
            nets.ema.load_state_dict(nets.generator_core.state_dict())
    nets.opt_g.load_state_dict(unflatten_state(meta["optimizers"]["g"], tensors))
    nets.opt_d.load_state_dict(unflatten_state(meta["optimizers"]["d"], tensors))
    # the resumed run keeps the learning rates of its (possibly overridden) config
    for opt, lr in ((nets.opt_g, cfg.optim.lr_g), (nets.opt_d, cfg.optim.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr
    device = noise.ctx.device
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    rng = meta["rng"]
    if rng.get("noise_device") == device.type:
        noise.rng.set_state(tensors["rng.noise"])
    else:  # a CUDA noise stream cannot continue on the CPU: reseed deterministically from the step
        noise.rng.manual_seed(cfg.train.seed + 7919 + meta["state"]["step"])
        log(f"note: checkpoint made on {rng.get('noise_device')}; the noise stream restarts here")
    _set_host_rng_states(rng)
    if "noise.kept_z" in tensors:
        labels = tensors.get("noise.kept_labels")
        noise.kept = Batch(tensors["noise.kept_z"].to(device), None if labels is None else labels.to(device))
    if augment is not None and "rng.augment" in tensors:
        augment.rng.set_state(tensors["rng.augment"])
        augment.load_state_dict(meta.get("augment", {}))
    known = {f.name for f in dataclasses.fields(TrainState)}  # older checkpoints carry retired fields
    state = TrainState(**{k: v for k, v in meta["state"].items() if k in known})
    return state, StepStats(tensors["acc_epoch"].to(device)), meta


def restore_networks(path: Path, cfg: RunConfig, nets: Networks) -> None:
    """G, D, EMA and both optimisers' states from a training checkpoint, with ``cfg``'s learning rates; the
    step counters and random streams go on (a rollback, not a resume)."""
    tensors, meta, _ = load_tensors(path)
    load_module("generator", nets.generator_core, tensors, path)
    load_module("discriminator", nets.discriminator_core, tensors, path)
    if nets.ema is not None and any(k.startswith("ema.") for k in tensors):
        load_module("ema", nets.ema, tensors, path)
    nets.opt_g.load_state_dict(unflatten_state(meta["optimizers"]["g"], tensors))
    nets.opt_d.load_state_dict(unflatten_state(meta["optimizers"]["d"], tensors))
    for opt, lr in ((nets.opt_g, cfg.optim.lr_g), (nets.opt_d, cfg.optim.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr


def _host_rng_states() -> dict[str, Any]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[v.item() if hasattr(v, "item") else v for v in np_state[2:]]],
    }


def _set_host_rng_states(rng: dict[str, Any]) -> None:
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = rng["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Restore torch's (CPU and this CUDA device's), Python's and NumPy's global RNG states on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def runtime_of(checkpoint: Path) -> dict[str, Any] | None:
    """The run-time choices (kernels, precision and why) a training checkpoint recorded, or None (older ones)."""
    meta, _ = load_meta(checkpoint)
    runtime = meta.get(RUNTIME_KEY)
    return runtime if isinstance(runtime, dict) else None


def load_resume_config(resume: Path) -> tuple[Path, RunConfig]:
    """The checkpoint a ``--resume`` argument names and the config it was trained with."""
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


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (RUN/checkpoints/x.safetensors -> RUN)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
