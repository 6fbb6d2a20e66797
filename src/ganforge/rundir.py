"""The run directory: what a training run leaves for the user to look at.

runs/<recipe>-<time>/
  config.json            resolved config (updated when a resume overrides fields)
  metrics.jsonl          one JSON object per line; "kind" is step | epoch | eval | resume | stop
  loss_curves.png        D/G loss, D(x)/D(G(z)) and the quality metric against epoch
  samples/real.png       a grid of real training images
  samples/epoch_NNNN.png samples from a fixed noise (conditional: one row per class)
  checkpoints/latest.safetensors, epoch_NNNN.safetensors, best.safetensors
  generator.safetensors, discriminator.safetensors   weights-only exports at the end
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ganforge.checkpoint import atomic_write_text
from ganforge.errors import ConfigError, GanforgeError


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # --- layout -------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.safetensors"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def loss_curves(self) -> Path:
        return self.path / "loss_curves.png"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:04d}.safetensors"

    def prune_epoch_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the newest ``keep`` numbered checkpoints (latest and best are not numbered)."""
        numbered = self.checkpoints.glob("epoch_[0-9][0-9][0-9][0-9]*.safetensors")
        numbered = sorted(numbered, key=lambda path: int(path.stem.removeprefix("epoch_")))  # epoch 10000 > 9999
        removed = numbered[:-keep] if keep > 0 else []
        for path in removed:
            path.unlink()
        return removed

    def epoch_samples(self, epoch: int) -> Path:
        return self.samples / f"epoch_{epoch:04d}.png"

    # --- creation -----------------------------------------------------------------------------------
    @staticmethod
    def default_path(recipe: str) -> Path:
        return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"

    def check_new(self, overwrite: bool) -> None:
        """Fail early (before any data is loaded) if ``create`` would refuse."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file; choose a directory path")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise ConfigError(
                f"run directory {self.path} already exists; continue it with --resume {self.path}, "
                "start over with --overwrite, or choose another --out"
            )
        parent = next((p for p in self.path.parents if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise GanforgeError(
                f"cannot write the run directory {self.path} (no writable parent); choose another --out"
            )

    def create(self, overwrite: bool) -> None:
        """Make a fresh run directory; an existing non-empty one is kept unless ``overwrite``."""
        self.check_new(overwrite)
        if self.path.is_dir() and any(self.path.iterdir()):
            shutil.rmtree(self.path)
        try:
            self.samples.mkdir(parents=True, exist_ok=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise GanforgeError(
                f"cannot write the run directory {self.path} ({exc.strerror}); choose a writable --out"
            ) from None

    # --- metrics.jsonl ------------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def read_records(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (written after the checkpoint we resume from), so
        a resumed run appends its own records instead of duplicating those."""
        kept = [r for r in self.read_records() if r.get("step", 0) <= step or r.get("kind") == "resume"]
        payload = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_text(self.metrics, payload)
