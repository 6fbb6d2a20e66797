"""Alarms on what the trainer already logs: divergence without NaN, and mode collapse.

Pure logic on ``metrics.jsonl`` records, with no part of the training loop imported, so each trigger
is tested on synthetic series and the loop only wires them in:

* ``DivergenceGuard`` reads the logged windows (``kind: step``): a loss beyond
  ``train.divergence_loss_bound``, or D(x) and D(G(z)) saturated at ~1 and ~0 for
  ``train.divergence_windows`` windows in a row. ``train.on_divergence``: warn | stop | off.
* ``CollapseAlarm`` reads evaluations (``kind: eval``) and logged windows: the tracked metric worse
  than its best by ``train.collapse_factor`` for ``train.collapse_patience`` evaluations in a row;
  class or mode coverage falling below ``train.collapse_coverage`` or dropping sharply; D(x) - D(G(z))
  saturated over ``train.collapse_gap_windows`` windows. ``train.on_collapse``: warn | stop | rollback | off.

Both return an ``Alarm`` (or None) from ``observe(record)``; the caller prints ``alarm.message``,
appends ``alarm.record()`` to ``metrics.jsonl`` and acts on ``alarm.action``. Each alarm fires once
when its condition starts and re-arms when the condition clears, so a run that stays diverged warns
once, not at every window. ``state_dict()`` / ``load_state_dict()`` are JSON-able, so a resumed run
keeps its streaks, bests and rollback count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ganforge.config import TrainConfig

STATE_VERSION = 1
LR_HINT = "try lower learning rates (--set optim.lr_d=..., optim.lr_g=...)"


@dataclass(frozen=True)
class Alarm:
    """One alarm: what fired, on which record, and what the trainer should do."""

    guard: str  # "divergence" | "collapse"
    triggers: tuple[str, ...]  # e.g. ("loss_bound",), ("metric", "coverage_drop")
    action: str  # "warn" | "stop" | "rollback"
    step: int | None  # the record's step
    message: str  # one line for the console
    values: dict[str, float] = field(default_factory=dict)  # the numbers that tripped it

    def record(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` record (``kind: alarm``)."""
        return {
            "kind": "alarm",
            "step": self.step,
            "guard": self.guard,
            "triggers": list(self.triggers),
            "action": self.action,
            "message": self.message,
            "values": dict(self.values),
        }


def _number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


# --------------------------------------------------------------------------- divergence


class DivergenceGuard:
    """Divergence that is not NaN, from the logged windows alone (cheap: a few comparisons per window)."""

    def __init__(self, train: TrainConfig) -> None:
        self.action = train.on_divergence
        self.loss_bound = train.divergence_loss_bound
        self.windows = train.divergence_windows
        self.saturation = train.divergence_saturation
        self.saturated_streak = 0  # consecutive saturated windows
        self.loss_fired = False  # fired for the current run of out-of-bound windows
        self.saturation_fired = False

    def observe(self, record: Mapping[str, Any]) -> Alarm | None:
        """Feed one ``metrics.jsonl`` record; only logged windows (``kind: step``) are read."""
        if self.action == "off" or record.get("kind", "step") != "step":
            return None
        step = record.get("step")
        reasons: list[str] = []
        triggers: list[str] = []
        values: dict[str, float] = {}
        if self.loss_bound > 0:
            losses = {k: v for k in ("d_loss", "g_loss") if (v := _number(record, k)) is not None}
            beyond = {k: v for k, v in losses.items() if not abs(v) <= self.loss_bound}  # NaN and inf too
            if beyond and not self.loss_fired:
                shown = ", ".join(f"{k} {_fmt(v)}" for k, v in beyond.items())
                reasons.append(f"{shown} beyond train.divergence_loss_bound={_fmt(self.loss_bound)}")
                triggers.append("loss_bound")
                values.update(beyond)
            if losses:
                self.loss_fired = bool(beyond)
        if self.windows > 0:
            d_real, d_fake = _number(record, "d_real"), _number(record, "d_fake")
            if d_real is not None and d_fake is not None:  # windows without a D step leave the streak as it is
                if d_real >= 1.0 - self.saturation and d_fake <= self.saturation:
                    self.saturated_streak += 1
                else:
                    self.saturated_streak, self.saturation_fired = 0, False
                if self.saturated_streak >= self.windows and not self.saturation_fired:
                    self.saturation_fired = True
                    reasons.append(
                        f"D(x) {_fmt(d_real)} and D(G(z)) {_fmt(d_fake)}: saturated for {self.saturated_streak} "
                        f"logged windows (train.divergence_windows={self.windows})"
                    )
                    triggers.append("saturation")
                    values.update(d_real=d_real, d_fake=d_fake)
        if not reasons:
            return None
        then = "stopping" if self.action == "stop" else "training continues"
        message = f"divergence at step {step}: {'; '.join(reasons)}; {then}; {LR_HINT}"
        return Alarm("divergence", tuple(triggers), self.action, step, message, values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "saturated_streak": self.saturated_streak,
            "loss_fired": self.loss_fired,
            "saturation_fired": self.saturation_fired,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_version(state, "DivergenceGuard")
        self.saturated_streak = int(state["saturated_streak"])
        self.loss_fired = bool(state["loss_fired"])
        self.saturation_fired = bool(state["saturation_fired"])


# --------------------------------------------------------------------------- collapse


def coverage_keys(record: Mapping[str, Any]) -> dict[str, float]:
    """Coverage figures of an eval record, normalised to 0..1: ``coverage_X`` as it is, ``modes_X`` over
    ``modes_real_X`` (modes covered by the generator / by as many real images) when both are there."""
    found: dict[str, float] = {}
    for key in record:
        value = _number(record, key)
        if value is None or not math.isfinite(value):
            continue
        if key.startswith("coverage_") and not key.startswith("coverage_entropy_"):
            found[key] = value
        elif key.startswith("modes_") and not key.startswith(("modes_kl_", "modes_real_")):
            real = _number(record, "modes_real_" + key.removeprefix("modes_"))
            if real is not None and real > 0:
                found[key] = value / real
    return found


class CollapseAlarm:
    """Mode collapse, from evaluations (tracked metric, coverage) and logged windows (D's margin)."""

    def __init__(self, train: TrainConfig) -> None:
        self.action = train.on_collapse
        self.factor = train.collapse_factor
        self.patience = train.collapse_patience
        self.coverage_floor = train.collapse_coverage
        self.coverage_drop = train.collapse_coverage_drop
        self.gap = train.collapse_gap
        self.gap_windows = train.collapse_gap_windows
        self.max_rollbacks = train.max_rollbacks
        self.lr_factor = train.rollback_lr_factor
        self.rollbacks = 0
        self._clear()

    def _clear(self) -> None:
        self.metric_key: str | None = None
        self.best: float | None = None
        self.worse_streak = 0
        self.metric_fired = False
        self.coverage_best: dict[str, float] = {}
        self.coverage_prev: dict[str, float] = {}
        self.coverage_low: dict[str, bool] = {}  # fired for the current stretch below the floor
        self.gap_streak = 0
        self.gap_fired = False

    # ----------------------------------------------------------------------------------------------
    def observe(self, record: Mapping[str, Any], rollback_possible: bool = True) -> Alarm | None:
        """Feed one ``metrics.jsonl`` record (``kind`` step or eval; others are ignored).

        ``rollback_possible``: False while there is no ``best.safetensors`` to roll back to; a
        ``rollback`` alarm then only warns.
        """
        if self.action == "off":
            return None
        kind = record.get("kind", "step")
        if kind == "eval":
            reasons, triggers, values = self._check_eval(record)
        elif kind == "step":
            reasons, triggers, values = self._check_window(record)
        else:
            return None
        if not reasons:
            return None
        step = record.get("step")
        action, then = self._decide(rollback_possible)
        message = f"possible mode collapse at step {step}: {'; '.join(reasons)}; {then}"
        return Alarm("collapse", tuple(triggers), action, step, message, values)

    def _decide(self, rollback_possible: bool) -> tuple[str, str]:
        if self.action == "stop":
            return "stop", "stopping"
        if self.action == "rollback":
            if self.rollbacks >= self.max_rollbacks:
                return "warn", f"train.max_rollbacks={self.max_rollbacks} reached: training continues without rollback"
            if not rollback_possible:
                return "warn", "no best.safetensors to roll back to yet: training continues"
            return "rollback", (
                f"rolling back to best.safetensors with learning rates x{self.lr_factor:g} "
                f"(rollback {self.rollbacks + 1} of at most {self.max_rollbacks})"
            )
        return "warn", "training continues (train.on_collapse=stop|rollback acts on it)"

    def rolled_back(self) -> None:
        """The trainer restored best.safetensors: count it and start the streaks afresh.

        Keep this alarm's own state across the restore (do not load the one stored in best.safetensors),
        or the rollback count would go back too. The best value stays: it is the restored checkpoint's.
        """
        self.rollbacks += 1
        best, key = self.best, self.metric_key
        coverage_best = dict(self.coverage_best)
        self._clear()
        self.best, self.metric_key, self.coverage_best = best, key, coverage_best

    # ----------------------------------------------------------------------------------------------
    def _check_eval(self, record: Mapping[str, Any]) -> tuple[list[str], list[str], dict[str, float]]:
        reasons: list[str] = []
        triggers: list[str] = []
        values: dict[str, float] = {}
        metric = self._check_metric(record)
        if metric:
            reasons.append(metric[0])
            triggers.append("metric")
            values.update(metric[1])
        for key, value in coverage_keys(record).items():
            best = self.coverage_best.get(key)
            prev = self.coverage_prev.get(key)
            self.coverage_best[key] = value if best is None else max(best, value)
            self.coverage_prev[key] = value
            if self.coverage_floor > 0:
                below = value < self.coverage_floor
                reached = best is not None and best >= self.coverage_floor
                if below and reached and not self.coverage_low.get(key):
                    reasons.append(
                        f"{key} {_fmt(value)} fell below train.collapse_coverage={_fmt(self.coverage_floor)} "
                        f"(best {_fmt(best)})"
                    )
                    triggers.append("coverage_floor")
                    values[key] = value
                self.coverage_low[key] = below and reached
            if self.coverage_drop > 0 and prev is not None and prev > 0 and value < (1 - self.coverage_drop) * prev:
                reasons.append(f"{key} dropped from {_fmt(prev)} to {_fmt(value)} since the last evaluation")
                triggers.append("coverage_drop")
                values[key] = value
        return reasons, list(dict.fromkeys(triggers)), values

    def _check_metric(self, record: Mapping[str, Any]) -> tuple[str, dict[str, float]] | None:
        key = record.get("tracked")
        value = _number(record, key) if isinstance(key, str) else None
        if value is None or not math.isfinite(value) or self.patience <= 0:
            return None
        lower = bool(record.get("tracked_lower_is_better", True))
        if key != self.metric_key:  # a resume that tracks another metric starts afresh
            self.metric_key, self.best, self.worse_streak, self.metric_fired = key, None, 0, False
        if self.best is None or (value < self.best if lower else value > self.best):
            self.best, self.worse_streak, self.metric_fired = value, 0, False
            return None
        best = self.best
        # A ratio needs a positive best (KID can be ~0 or negative): such series never trip this trigger.
        worse = best > 0 and (value > best * self.factor if lower else value * self.factor < best)
        if not worse:
            self.worse_streak, self.metric_fired = 0, False
            return None
        self.worse_streak += 1
        if self.worse_streak < self.patience or self.metric_fired:
            return None
        self.metric_fired = True
        direction = "above" if lower else "below"
        bound = best * self.factor if lower else best / self.factor
        reason = (
            f"{key} {_fmt(value)} has been {direction} {_fmt(bound)} (its best {_fmt(best)} "
            f"{'x' if lower else '/'} train.collapse_factor={self.factor:g}) for {self.worse_streak} evaluations"
        )
        return reason, {key: value, "best": best}

    def _check_window(self, record: Mapping[str, Any]) -> tuple[list[str], list[str], dict[str, float]]:
        d_real, d_fake = _number(record, "d_real"), _number(record, "d_fake")
        if self.gap_windows <= 0 or d_real is None or d_fake is None:
            return [], [], {}
        if d_real - d_fake >= self.gap:
            self.gap_streak += 1
        else:
            self.gap_streak, self.gap_fired = 0, False
        if self.gap_streak < self.gap_windows or self.gap_fired:
            return [], [], {}
        self.gap_fired = True
        reason = (
            f"D(x) - D(G(z)) = {_fmt(d_real - d_fake)} >= train.collapse_gap={_fmt(self.gap)} for "
            f"{self.gap_streak} logged windows: D tells every fake apart"
        )
        return [reason], ["d_gap"], {"d_real": d_real, "d_fake": d_fake}

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rollbacks": self.rollbacks,
            "metric_key": self.metric_key,
            "best": self.best,
            "worse_streak": self.worse_streak,
            "metric_fired": self.metric_fired,
            "coverage_best": dict(self.coverage_best),
            "coverage_prev": dict(self.coverage_prev),
            "coverage_low": dict(self.coverage_low),
            "gap_streak": self.gap_streak,
            "gap_fired": self.gap_fired,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_version(state, "CollapseAlarm")
        self.rollbacks = int(state["rollbacks"])
        self.metric_key = state["metric_key"]
        self.best = None if state["best"] is None else float(state["best"])
        self.worse_streak = int(state["worse_streak"])
        self.metric_fired = bool(state["metric_fired"])
        self.coverage_best = {str(k): float(v) for k, v in state["coverage_best"].items()}
        self.coverage_prev = {str(k): float(v) for k, v in state["coverage_prev"].items()}
        self.coverage_low = {str(k): bool(v) for k, v in state["coverage_low"].items()}
        self.gap_streak = int(state["gap_streak"])
        self.gap_fired = bool(state["gap_fired"])


def _check_version(state: Mapping[str, Any], what: str) -> None:
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{what} state version {state.get('version')!r} is not {STATE_VERSION}")
