"""What a run shows while it trains: sample grids from fixed noise, and quality evaluations.

Both sample the EMA generator when the run keeps one, in eval mode, and leave the training's random
streams exactly as they found them (so evaluating never changes what a resumed run computes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.config import RunConfig
from ganforge.data import denormalize
from ganforge.sampling import draw_noise, per_class_grid_inputs, save_grid
from ganforge.training.state import TrainState, rng_untouched


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class SampleGrids:
    """Grids of the same noise (and labels) at every epoch: drawn on the CPU so every device shows the
    same faces; conditional models get one row per class."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        tcfg, model = cfg.train, cfg.model
        if model.num_classes > 0:
            self.z, self.labels = per_class_grid_inputs(
                model.num_classes, tcfg.grid_columns, model.latent_dim, tcfg.seed + 1
            )
        else:
            self.z, self.labels = draw_noise(tcfg.grid_size, model.latent_dim, tcfg.seed + 1), None

    @torch.no_grad()
    def images(self, generator: nn.Module) -> torch.Tensor:
        """Denormalised float images [n, C, H, W] in [0, 1]."""
        with eval_mode(generator):
            labels = None if self.labels is None else self.labels.to(self.device)
            x = generator(self.z.to(self.device), labels).float().cpu()  # [n, C, H, W]
        return denormalize(x, self.cfg.data.mean, self.cfg.data.std)

    def save(self, generator: nn.Module, path: Path) -> Path:
        save_grid(self.images(generator), path, nrow=self.cfg.train.grid_columns)
        return path

    def save_real(self, x_real: torch.Tensor, path: Path) -> None:
        if path.exists():
            return
        count = min(x_real.shape[0], self.cfg.train.grid_size)
        real = denormalize(x_real[:count].float().cpu(), self.cfg.data.mean, self.cfg.data.std)
        save_grid(real, path, nrow=self.cfg.train.grid_columns)


class Evaluator:
    """The quality metric during training (rank 0): built on first use, the same noise every time."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.tracker: Any = None

    def __call__(
        self, generator: nn.Module, state: TrainState, per_epoch: int
    ) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """(the eval record, the metrics alone, whether the tracked one improved on ``state.best``, which is
        then updated)."""
        # Building the evaluator network draws from the global RNGs, and a resumed run builds it again:
        # evaluation must leave the training's random streams as it found them, or resume is not exact.
        with rng_untouched(self.device):
            if self.tracker is None:
                self.tracker = self._build_tracker()
            results = self.tracker(lambda num: self._sample(generator, num))
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
        value = results.get(self.tracker.primary)
        improved = False
        if value is not None and math.isfinite(value):
            lower = self.tracker.lower_is_better
            improved = state.best is None or (value < state.best if lower else value > state.best)
            if improved:
                state.best, state.best_epoch = value, record["epoch_progress"]
        return record, results, improved

    def _build_tracker(self) -> Any:
        from ganforge.data import load_dataset
        from ganforge.metrics import QualityTracker
        from ganforge.metrics.evaluator import real_shape_for_evaluation

        model = self.cfg.model
        shape = real_shape_for_evaluation(self.cfg.data.dataset, model.channels, model.resolution)
        return QualityTracker(self.cfg, load_dataset(self.cfg.data, *shape), self.device)

    @torch.no_grad()
    def _sample(self, generator: nn.Module, num: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        # the same noise at every evaluation, so differences are the generator's, not the draw's
        z = draw_noise(num, cfg.model.latent_dim, cfg.train.seed + 2)
        labels = torch.arange(num) % cfg.model.num_classes if cfg.model.num_classes > 0 else None
        images = []
        with eval_mode(generator):
            for start in range(0, num, 500):
                y = None if labels is None else labels[start : start + 500].to(self.device)
                images.append(generator(z[start : start + 500].to(self.device), y).float().cpu())
        return denormalize(torch.cat(images), cfg.data.mean, cfg.data.std), labels
