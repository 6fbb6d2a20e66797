"""What a run directory holds, read for a report: records, status, grids, checkpoints, exports.

Reading is tolerant of a run in progress: ``metrics.jsonl`` may end in a half-written line (skipped), the
config may not exist yet, a checkpoint may be mid-rename. Nothing here loads a tensor.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganforge.checkpoint import read_metadata
from ganforge.errors import CheckpointError, GanforgeError
from ganforge.rundir import RunDir

# keys of an eval record that are bookkeeping, not quality metrics
EVAL_BOOKKEEPING = {"kind", "step", "epoch", "epoch_progress", "tracked", "tracked_lower_is_better", "time_s"}
# a run without a stop record whose log has not changed for this long is reported as interrupted, not running
RUNNING_IF_UPDATED_WITHIN_S = 600.0
EXPORT_SUFFIXES = (".onnx", ".pt", ".pth", ".json", ".safetensors")
NOT_EXPORTS = {"config.json"}  # files of the run itself, listed elsewhere in the report
_EPOCH_GRID = re.compile(r"epoch_(\d+)\.png$")
_STEP_GRID = re.compile(r"step_(\d+)\.png$")
_EPOCH_CHECKPOINT = re.compile(r"epoch_(\d+)\.safetensors$")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


@dataclass
class Grid:
    """One sample grid: samples/epoch_NNNN.png (after that epoch) or samples/step_NNNNNNN.png (a stop mid-epoch)."""

    path: Path
    label: str
    epoch: float | None  # training progress in epochs when it was drawn (fractional for a mid-epoch grid)
    step: int | None


@dataclass
class FileInfo:
    """A checkpoint or export: its size and, from the safetensors header when it has one, epoch/step/kind."""

    path: Path
    size: int
    kind: str = ""
    epoch: int | None = None
    step: int | None = None
    note: str = ""
    device: str = ""  # training checkpoints: the device type it was made on
    world_size: int | None = None  # training checkpoints: processes that trained it


@dataclass
class RunView:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    status: str  # running | finished | stopped | interrupted | not started
    status_detail: str
    grids: list[Grid] = field(default_factory=list)
    real_grid: Path | None = None
    checkpoints: list[FileInfo] = field(default_factory=list)
    exports: list[FileInfo] = field(default_factory=list)
    device_used: str = ""  # the device type the latest checkpoint was made on (config may say "auto")
    world_size: int = 1

    # --- record subsets ------------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe", "?"))

    @property
    def description(self) -> str:
        return str(self.config.get("description", ""))

    def config_value(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def steps(self) -> int:
        return max((int(r["step"]) for r in self.records if isinstance(r.get("step"), int)), default=0)

    @property
    def epochs_done(self) -> int:
        stop = self.last_stop
        if stop is not None and isinstance(stop.get("epoch"), int):
            return stop["epoch"]
        return max((r["epoch"] + 1 for r in self.of_kind("epoch") if isinstance(r.get("epoch"), int)), default=0)

    @property
    def epochs_planned(self) -> int | None:
        return self.config_value("train.epochs")

    @property
    def time_s(self) -> float:
        return max((float(r["time_s"]) for r in self.records if _is_number(r.get("time_s"))), default=0.0)

    @property
    def last_stop(self) -> dict[str, Any] | None:
        """The stop record of the current session (a resume after it starts a new session)."""
        for record in reversed(self.records):
            if record.get("kind") == "resume":
                return None
            if record.get("kind") == "stop":
                return record
        return None

    # --- quality metrics -------------------------------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        names: list[str] = []
        for record in self.of_kind("eval"):
            for key, value in record.items():
                if key not in EVAL_BOOKKEEPING and _is_number(value) and key not in names:
                    names.append(key)
        return names

    @property
    def tracked(self) -> tuple[str | None, bool]:
        """(the metric that ranks checkpoints, whether lower is better), as the eval records say."""
        evals = self.of_kind("eval")
        if not evals:
            return None, True
        name = evals[-1].get("tracked")
        if name is None:  # records from before the key existed: the first FD-like number
            names = self.metric_names
            name = next((k for k in names if k.startswith("fd")), names[0] if names else None)
        default_lower = bool(name and name.startswith(("fd", "fid", "kid")))
        return name, bool(evals[-1].get("tracked_lower_is_better", default_lower))

    @property
    def best_eval(self) -> dict[str, Any] | None:
        name, lower = self.tracked
        scored = [r for r in self.of_kind("eval") if name and _is_number(r.get(name)) and math.isfinite(r[name])]
        if not scored:
            return None
        return min(scored, key=lambda r: r[name] if lower else -r[name])

    @property
    def resume_command(self) -> str:
        command = f"ganforge train --resume {self.path}"
        planned = self.epochs_planned
        if self.status == "finished" and isinstance(planned, int):
            command += f" --epochs {planned * 2}"  # a finished run continues only with more epochs
        return command


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a torn last line (a run being written, or killed mid-write) is skipped."""
    return [r for r in RunDir(run_dir).read_records() if isinstance(r, dict)]


def load_run(path: Path) -> RunView:
    """Everything a report shows of the run directory ``path``; a clear error if it is not one."""
    path = Path(path)
    layout = RunDir(path)
    if not path.is_dir():
        raise GanforgeError(f"{path} is not a directory; pass a run directory (made by ganforge train)")
    if not layout.config.exists() and not layout.metrics.exists():
        raise GanforgeError(f"{path} is not a ganforge run directory (no config.json or metrics.jsonl)")
    config = _read_json(layout.config)
    records = read_records(path)
    status, detail = _status(layout, records)
    view = RunView(path=path, config=config, records=records, status=status, status_detail=detail)
    view.grids = _grids(layout, records)
    real = layout.samples / "real.png"
    view.real_grid = real if is_complete_png(real) else None
    view.checkpoints = [_file_info(p) for p in sorted(layout.checkpoints.glob("*.safetensors"), key=_checkpoint_order)]
    view.exports = _exports(path)
    latest = next((c for c in view.checkpoints if c.path.name == "latest.safetensors"), None)
    if latest is not None:
        view.device_used, view.world_size = latest.device, latest.world_size or 1
    return view


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # not written yet (a run starting) or being replaced
    return value if isinstance(value, dict) else {}


def _status(layout: RunDir, records: list[dict[str, Any]]) -> tuple[str, str]:
    if not records:
        return "not started", "no records in metrics.jsonl yet"
    stop = None
    for record in reversed(records):
        if record.get("kind") == "resume":
            break
        if record.get("kind") == "stop":
            stop = record
            break
    if stop is not None:
        reason = str(stop.get("reason", "finished"))
        return ("finished", "finished") if reason == "finished" else ("stopped", reason)
    age = time.time() - layout.metrics.stat().st_mtime
    if age <= RUNNING_IF_UPDATED_WITHIN_S:
        return "running", f"last record {age:.0f} s ago"
    return "interrupted", f"no stop record and no record for {format_duration(age)} (killed?); it can be resumed"


def _grids(layout: RunDir, records: list[dict[str, Any]]) -> list[Grid]:
    """Sample grids in training order; a mid-epoch grid (written at a stop) sits at its step."""
    epoch_end_step = {r["epoch"] + 1: r["step"] for r in records if r.get("kind") == "epoch" and "epoch" in r}
    progress_at = {r["step"]: r.get("epoch_progress") for r in records if "step" in r and "epoch_progress" in r}
    grids = []
    for path in layout.samples.glob("*.png") if layout.samples.is_dir() else []:
        if not is_complete_png(path):
            continue  # being written (grids are saved in place): it appears in the next report
        if match := _EPOCH_GRID.fullmatch(path.name):
            epoch = int(match.group(1))
            grids.append(Grid(path, f"epoch {epoch}", float(epoch), epoch_end_step.get(epoch)))
        elif match := _STEP_GRID.fullmatch(path.name):
            step = int(match.group(1))
            earlier = [s for s in progress_at if s <= step and progress_at[s] is not None]
            progress = progress_at[max(earlier)] if earlier else None
            grids.append(Grid(path, f"step {step}", progress, step))
    return sorted(grids, key=lambda g: (g.epoch if g.epoch is not None else math.inf, g.step or 0))


def is_complete_png(path: Path) -> bool:
    """Whether ``path`` is a whole PNG file: one being written, or torn by a kill, lacks the final IEND chunk."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            if handle.tell() < len(PNG_END):
                return False
            handle.seek(-len(PNG_END), 2)
            return handle.read() == PNG_END
    except OSError:
        return False


def _checkpoint_order(path: Path) -> tuple[int, int, str]:
    match = _EPOCH_CHECKPOINT.fullmatch(path.name)
    return (1, int(match.group(1)), "") if match else (0, 0, path.name)


def _file_info(path: Path) -> FileInfo:
    try:
        info = FileInfo(path=path, size=path.stat().st_size)
    except FileNotFoundError:  # pruned or replaced between listing and stat
        return FileInfo(path=path, size=0, note="gone")
    if match := _EPOCH_CHECKPOINT.fullmatch(path.name):
        info.epoch = int(match.group(1))
    if path.suffix == ".safetensors":
        try:
            meta, info.kind = read_metadata(path)
        except CheckpointError as exc:
            info.note = str(exc).split(";")[0]
            return info
        state = meta.get("state", {}) if isinstance(meta.get("state"), dict) else {}
        step, epoch = state.get("step", meta.get("step")), state.get("epoch", meta.get("epoch"))
        info.step = step if isinstance(step, int) else None
        if info.epoch is None and isinstance(epoch, int):
            info.epoch = epoch
        rng = meta.get("rng") if isinstance(meta.get("rng"), dict) else {}
        info.device = str(rng.get("noise_device", ""))
        info.world_size = meta.get("world_size") if isinstance(meta.get("world_size"), int) else None
    return info


def _exports(path: Path) -> list[FileInfo]:
    """Model files beside the run's own: the weight exports, ONNX/TorchScript files, model cards, evaluations."""
    found = []
    for folder in (path, path / "exports"):
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir()):
            # hidden files are atomic writes in progress (.NAME.XXXX.tmp)
            if item.is_file() and item.suffix in EXPORT_SUFFIXES and item.name not in NOT_EXPORTS:
                if not item.name.startswith("."):
                    found.append(_file_info(item))
    return found


def format_duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
