"""TensorBoard logging of a run (``train.tensorboard=true``): scalars, sample grids and the config.

Events go to RUN/tensorboard/ through ``torch.utils.tensorboard.SummaryWriter``; view them with
``tensorboard --logdir RUN/tensorboard`` (or the parent of several runs). TensorBoard is the optional
extra ``ganforge[tensorboard]``. A resumed run continues the same event directory: the writer purges
events after the checkpoint's step (logged by the interrupted session, then replayed) and the observer
skips records at or before it, so every step appears once.

Tags: ``train/*`` (each log window: losses, D outputs, images/s, ``augment_p`` when present),
``epoch/*`` (per-epoch means), ``eval/*`` (quality metrics), ``samples`` (the grid images), and the
flattened config as hyper-parameters (the HPARAMS tab).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ganforge import extras

EVENTS_DIR = "tensorboard"
# record keys written as scalars, by record kind (eval records: every numeric key that is a metric)
TRAIN_KEYS = ("d_loss", "g_loss", "d_real", "d_fake", "d_fake_after", "images_per_s", "augment_p")
EVAL_BOOKKEEPING = {"step", "epoch", "epoch_progress", "time_s", "tracked_lower_is_better"}


def check_available() -> None:
    """Fail with the one-line fix if TensorBoard is not installed (call before training starts)."""
    extras.require("tensorboard", "train.tensorboard=true")


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The config as ``section.field -> value`` with the types TensorBoard's hparams accept (lists as text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class TensorBoardObserver:
    """Writes a run's records and grids as TensorBoard events (rank 0 only)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.log_dir = Path(run_dir) / EVENTS_DIR
        self.resume_step = resume_step
        # purge_step: TensorBoard hides events of the earlier session from this step on (logged after the
        # checkpoint we resume from, so the new session logs those steps again)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        # session start info only: the hparams plugin then offers every scalar tag as a metric
        _, session_start, self._session_end = hparams(flat_hparams(config), {})
        self.writer.file_writer.add_summary(session_start)

    def _is_new(self, step: Any) -> bool:
        return isinstance(step, int) and (self.resume_step is None or step > self.resume_step)

    def on_record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: step -> train/*, epoch -> epoch/*, eval -> eval/*; others are ignored."""
        step = record.get("step")
        kind = record.get("kind")
        if not self._is_new(step) or kind not in ("step", "epoch", "eval"):
            return
        if kind == "eval":
            keys = [k for k in record if k not in EVAL_BOOKKEEPING]
        else:
            keys = [k for k in TRAIN_KEYS if k in record]
        group = {"step": "train", "epoch": "epoch", "eval": "eval"}[kind]
        for key in keys:
            value = _number(record.get(key))
            if value is not None:
                self.writer.add_scalar(f"{group}/{key}", value, global_step=step)

    def on_grid(self, path: Path, step: int) -> None:
        """The sample grid PNG just written, as the image ``samples`` at ``step``."""
        if not self._is_new(step):
            return
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
        self.writer.add_image("samples", pixels, global_step=step, dataformats="HWC")

    def close(self) -> None:
        self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
