"""The divergence guard and the collapse alarm on synthetic and recorded metric series.

Each trigger fires where the series says it must (and only once per episode), nothing fires on the
oscillation real GAN runs show, and the state survives a JSON round trip as a resume needs.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ganforge.config import RunConfig, TrainConfig, apply_overrides
from ganforge.errors import ConfigError
from ganforge.training import guards
from ganforge.training.guards import Alarm, CollapseAlarm, DivergenceGuard, coverage_keys

FIXTURES = Path(__file__).with_name("fixtures")
FD = "fd_mnist-classifier"
MODES = "modes_mnist-classifier-per-channel"


def window(step: int, d_loss=0.7, g_loss=1.5, d_real=0.7, d_fake=0.3) -> dict:
    return {"kind": "step", "step": step, "d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}


def fd_eval(step: int, value: float, **extra) -> dict:
    return {"kind": "eval", "step": step, FD: value, "tracked": FD, "tracked_lower_is_better": True, **extra}


def feed(guard, records) -> list[tuple[int, Alarm]]:
    """(index, alarm) for every record that raised one."""
    return [(i, a) for i, r in enumerate(records) if (a := guard.observe(r)) is not None]


def recorded_windows() -> list[dict]:
    """A real run's log windows: stacked-mnist-dcgan, first 918 steps on the MNIST test split (docs/quality.md)."""
    return [json.loads(line) for line in (FIXTURES / "stacked_dcgan_windows.jsonl").read_text().splitlines()]


def oscillating_windows(n: int = 400, seed: int = 0) -> list[dict]:
    """Losses and D outputs swinging as in a healthy BCE run (D(x) 0.5-0.95, D(G(z)) 0.05-0.5), with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    d_real = np.clip(0.72 + 0.15 * np.sin(t / 7) + 0.05 * rng.standard_normal(n), 0.4, 0.97)
    d_fake = np.clip(0.28 - 0.15 * np.sin(t / 7 + 0.5) + 0.05 * rng.standard_normal(n), 0.03, 0.6)
    d_loss = -np.log(d_real) - np.log(1 - d_fake)
    g_loss = -np.log(d_fake)
    return [window(50 * (i + 1), d_loss[i], g_loss[i], d_real[i], d_fake[i]) for i in range(n)]


def noisy_decreasing_fd(n: int = 60, seed: int = 0) -> list[float]:
    """FD falling to a plateau, each evaluation off by a log-normal factor: sigma 0.22 matches anime-dcgan's
    plateau (FD between 37 and 84 over 23 evaluations, README)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return list((300 * np.exp(-t / 8) + 40) * np.exp(0.22 * rng.standard_normal(n)))


# --------------------------------------------------------------------------- divergence guard


def test_loss_beyond_the_bound_warns_once_per_episode():
    guard = DivergenceGuard(TrainConfig())
    series = [
        window(50),
        window(100, d_loss=3e20, g_loss=2.0),
        window(150, g_loss=-5e4),
        window(200),
        window(250, g_loss=math.inf),
    ]
    fired = feed(guard, series)
    assert [i for i, _ in fired] == [1, 4]  # 150 continues the episode begun at 100; 200 ends it
    first = fired[0][1]
    assert first.guard == "divergence" and first.triggers == ("loss_bound",) and first.action == "warn"
    assert first.step == 100 and "3e+20" in first.message and "d_loss" in first.message
    assert first.values == {"d_loss": 3e20}
    assert fired[1][1].values == {"g_loss": math.inf}


def test_nan_loss_counts_as_beyond_the_bound():
    alarm = DivergenceGuard(TrainConfig()).observe(window(50, d_loss=math.nan))
    assert alarm is not None and alarm.triggers == ("loss_bound",)


def test_saturation_fires_at_the_nth_consecutive_window():
    guard = DivergenceGuard(TrainConfig(divergence_windows=4, on_divergence="stop"))
    saturated = window(0, d_real=0.9999, d_fake=0.0002)
    no_d_step = {**window(0), "d_real": None, "d_fake": None, "d_loss": None}
    series = [saturated] * 3 + [window(0)] + [saturated] * 2 + [no_d_step] + [saturated] * 2 + [saturated] * 3
    series = [{**r, "step": 50 * i} for i, r in enumerate(series)]
    fired = feed(guard, series)
    # the healthy window (index 3) resets the streak; the window without a D step (6) neither counts nor resets
    assert [i for i, _ in fired] == [8]
    assert (
        fired[0][1].triggers == ("saturation",) and fired[0][1].action == "stop" and "stopping" in fired[0][1].message
    )


def test_lr_1e4_like_run_trips_both_triggers_at_once():
    guard = DivergenceGuard(TrainConfig(divergence_windows=1))
    alarm = guard.observe(window(300, d_loss=3e20, g_loss=1e20, d_real=1.0, d_fake=0.0))
    assert alarm.triggers == ("loss_bound", "saturation") and alarm.values["g_loss"] == 1e20


def test_divergence_guard_is_quiet_on_real_and_oscillating_runs_and_when_off():
    for series in (recorded_windows(), oscillating_windows()):
        assert feed(DivergenceGuard(TrainConfig()), series) == []
    off = DivergenceGuard(TrainConfig(on_divergence="off", divergence_windows=1))
    assert off.observe(window(50, d_loss=1e30, d_real=1.0, d_fake=0.0)) is None
    assert DivergenceGuard(TrainConfig()).observe({**window(50, d_loss=1e30), "kind": "epoch"}) is None


def test_divergence_state_round_trips_through_json():
    series = [window(50 * i, d_real=1.0, d_fake=0.0) for i in range(1, 9)]
    straight = feed(DivergenceGuard(TrainConfig(divergence_windows=6)), series)
    first = DivergenceGuard(TrainConfig(divergence_windows=6))
    feed(first, series[:4])
    resumed = DivergenceGuard(TrainConfig(divergence_windows=6))
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [(i + 4, a) for i, a in feed(resumed, series[4:])] == straight and straight[0][0] == 5


# --------------------------------------------------------------------------- collapse alarm: the tracked metric


def test_metric_worse_than_best_by_the_factor_for_n_evaluations():
    alarm = CollapseAlarm(TrainConfig(collapse_factor=3.0, collapse_patience=3))
    values = [300, 100, 40, 35, 130, 120, 40, 150, 160, 170, 180, 200]  # best 35; > 105 from index 7 on
    fired = feed(alarm, [fd_eval(i, v) for i, v in enumerate(values)])
    assert [i for i, _ in fired] == [9]  # two worse evaluations (4, 5), a good one (6), then three (7, 8, 9)
    a = fired[0][1]
    assert a.guard == "collapse" and a.triggers == ("metric",) and a.action == "warn"
    assert a.values == {FD: 170, "best": 35} and "105" in a.message


def test_higher_is_better_metric_falls_below_best_over_factor():
    alarm = CollapseAlarm(TrainConfig(collapse_coverage=0, collapse_coverage_drop=0))
    records = [{"kind": "eval", "step": i, MODES: v, "tracked": MODES, "tracked_lower_is_better": False}
               for i, v in enumerate([40, 300, 900, 990, 400, 320, 310, 300, 99])]  # fmt: skip
    fired = feed(alarm, records)
    assert [i for i, _ in fired] == [7]  # below 990 / 3 = 330 at 5, 6, 7
    assert "below 330" in fired[0][1].message


def test_no_metric_alarm_on_a_noisy_decreasing_fd():
    for seed in range(5):
        series = [fd_eval(i, v) for i, v in enumerate(noisy_decreasing_fd(seed=seed))]
        assert feed(CollapseAlarm(TrainConfig()), series) == [], seed
    # the same series with a collapse at the end is caught
    collapsed = [*noisy_decreasing_fd(seed=0), 900.0, 1100.0, 1300.0]
    fired = feed(CollapseAlarm(TrainConfig()), [fd_eval(i, v) for i, v in enumerate(collapsed)])
    assert [i for i, _ in fired] == [len(collapsed) - 1]


def test_non_positive_best_never_trips_the_ratio():
    kid = "kid_x"
    records = [{"kind": "eval", "step": i, kid: v, "tracked": kid, "tracked_lower_is_better": True}
               for i, v in enumerate([-0.01, 5.0, 6.0, 7.0, 8.0])]  # fmt: skip
    assert feed(CollapseAlarm(TrainConfig(collapse_patience=1)), records) == []


# --------------------------------------------------------------------------- collapse alarm: coverage


def test_coverage_keys_are_normalised():
    record = {
        "coverage_x": 0.8, "coverage_entropy_x": 1.8, MODES: 250.0, "modes_kl_mnist-classifier-per-channel": 2.0,
        "modes_real_mnist-classifier-per-channel": 1000.0, "modes_kl_real_mnist-classifier-per-channel": 0.04,
        "modes_y": 3.0, "recall_x": 0.1, "tracked": "fd_x",
    }  # fmt: skip
    assert coverage_keys(record) == {"coverage_x": 0.8, MODES: 0.25}  # modes_y has no real figure to scale by


def test_low_coverage_early_does_not_fire_but_a_fall_below_the_floor_does():
    alarm = CollapseAlarm(TrainConfig(collapse_coverage=0.5, collapse_coverage_drop=0))
    coverage = [0.01, 0.1, 0.3, 0.6, 0.9, 0.7, 0.45, 0.4, 0.3, 0.8, 0.2]
    fired = feed(alarm, [{"kind": "eval", "step": i, "coverage_x": c} for i, c in enumerate(coverage)])
    assert [i for i, _ in fired] == [6, 10]  # once per stretch below 0.5, and only after reaching it
    assert fired[0][1].triggers == ("coverage_floor",) and "best 0.9" in fired[0][1].message


def test_modes_below_the_floor_relative_to_the_real_figure():
    alarm = CollapseAlarm(TrainConfig(collapse_coverage=0.5, collapse_coverage_drop=0))
    real = "modes_real_mnist-classifier-per-channel"
    records = [{"kind": "eval", "step": i, MODES: m, real: 1000.0} for i, m in enumerate([20, 600, 990, 499])]
    fired = feed(alarm, records)
    assert [i for i, _ in fired] == [3] and fired[0][1].values == {MODES: pytest.approx(0.499)}


def test_sharp_drop_between_evaluations():
    alarm = CollapseAlarm(TrainConfig(collapse_coverage=0, collapse_coverage_drop=0.5))
    coverage = [0.1, 0.5, 0.9, 0.5, 0.44, 0.21, 0.2]
    fired = feed(alarm, [{"kind": "eval", "step": i, "coverage_x": c} for i, c in enumerate(coverage)])
    assert [i for i, _ in fired] == [5]  # 0.44 -> 0.21 loses more than half; 0.9 -> 0.5 does not
    assert fired[0][1].triggers == ("coverage_drop",) and "0.44 to 0.21" in fired[0][1].message


def test_one_evaluation_can_trip_several_triggers_in_one_alarm():
    alarm = CollapseAlarm(TrainConfig(collapse_patience=1))
    feed(alarm, [fd_eval(0, 10.0, coverage_x=0.95)])
    a = alarm.observe(fd_eval(1, 100.0, coverage_x=0.1))
    assert a.triggers == ("metric", "coverage_floor", "coverage_drop") and a.message.count(";") >= 3


# --------------------------------------------------------------------------- collapse alarm: D's margin


def test_d_gap_saturated_over_windows():
    alarm = CollapseAlarm(TrainConfig(collapse_gap=0.9, collapse_gap_windows=3))
    gaps = [(0.95, 0.02)] * 2 + [(0.8, 0.2)] + [(0.97, 0.01)] * 5 + [(0.7, 0.3)] + [(0.99, 0.0)] * 3
    fired = feed(alarm, [window(50 * i, d_real=r, d_fake=f) for i, (r, f) in enumerate(gaps)])
    assert [i for i, _ in fired] == [5, 11]
    assert fired[0][1].triggers == ("d_gap",) and fired[0][1].values == {"d_real": 0.97, "d_fake": 0.01}


def test_collapse_alarm_is_quiet_on_real_and_oscillating_windows():
    for series in (recorded_windows(), oscillating_windows()):
        assert feed(CollapseAlarm(TrainConfig()), series) == []
    assert CollapseAlarm(TrainConfig(on_collapse="off", collapse_gap_windows=1)).observe(
        window(50, d_real=1.0, d_fake=0.0)
    ) is None  # fmt: skip


# --------------------------------------------------------------------------- actions, rollbacks, state


def collapse_once(alarm: CollapseAlarm, step: int, rollback_possible: bool = True) -> Alarm:
    alarm.observe(fd_eval(step, 10.0))
    return alarm.observe(fd_eval(step + 1, 1000.0), rollback_possible=rollback_possible)


def test_rollback_action_until_max_rollbacks_then_warn():
    alarm = CollapseAlarm(TrainConfig(on_collapse="rollback", max_rollbacks=2, collapse_patience=1))
    first = collapse_once(alarm, 0)
    assert first.action == "rollback" and "rollback 1 of at most 2" in first.message and "x0.5" in first.message
    alarm.rolled_back()
    assert alarm.best == 10.0 and alarm.worse_streak == 0 and alarm.rollbacks == 1
    assert collapse_once(alarm, 10).action == "rollback"
    alarm.rolled_back()
    last = collapse_once(alarm, 20)
    assert last.action == "warn" and "max_rollbacks=2 reached" in last.message
    fresh = CollapseAlarm(TrainConfig(on_collapse="rollback", collapse_patience=1))
    early = collapse_once(fresh, 0, rollback_possible=False)
    assert early.action == "warn" and "no best.safetensors" in early.message
    stop = collapse_once(CollapseAlarm(TrainConfig(on_collapse="stop", collapse_patience=1)), 0)
    assert stop.action == "stop"


def test_collapse_state_round_trips_through_json():
    cfg = TrainConfig(on_collapse="rollback", collapse_patience=2)
    series = [
        fd_eval(0, 50.0, coverage_x=0.9), window(1, d_real=0.99, d_fake=0.0), fd_eval(2, 30.0, coverage_x=0.95),
        fd_eval(3, 200.0, coverage_x=0.6), fd_eval(4, 210.0, coverage_x=0.3), window(5),
        fd_eval(6, 220.0, coverage_x=0.1), fd_eval(7, 20.0, coverage_x=0.9),
    ]  # fmt: skip
    straight_alarm = CollapseAlarm(cfg)
    straight = feed(straight_alarm, series)
    assert straight  # the series does trip the alarm, so the comparison below means something
    for cut in range(1, len(series)):
        first = CollapseAlarm(cfg)
        head = feed(first, series[:cut])
        first.rollbacks = 1
        resumed = CollapseAlarm(cfg)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert resumed.rollbacks == 1
        resumed.rollbacks = 0
        tail = [(i + cut, a) for i, a in feed(resumed, series[cut:])]
        assert head + tail == straight, cut
    assert resumed.state_dict() == straight_alarm.state_dict()
    with pytest.raises(ValueError, match="version"):
        CollapseAlarm(cfg).load_state_dict({"version": 99})


def test_alarm_record_is_a_json_metrics_line():
    alarm = DivergenceGuard(TrainConfig()).observe(window(7, d_loss=1e9))
    line = json.loads(json.dumps(alarm.record()))
    assert line["kind"] == "alarm" and line["step"] == 7 and line["guard"] == "divergence"
    assert line["triggers"] == ["loss_bound"] and line["action"] == "warn" and line["message"] == alarm.message


# --------------------------------------------------------------------------- settings and layering


def test_guard_settings_are_validated():
    cfg = RunConfig()
    apply_overrides(cfg, ["train.on_collapse=rollback", "train.on_divergence=stop", "train.collapse_factor=4"])
    for bad, match in [
        ("train.on_divergence=rollback", "on_divergence"),
        ("train.on_collapse=maybe", "on_collapse"),
        ("train.collapse_factor=1", "collapse_factor"),
        ("train.collapse_gap=0", "collapse_gap"),
        ("train.rollback_lr_factor=2", "rollback_lr_factor"),
        ("train.divergence_saturation=0.5", "divergence_saturation"),
        ("train.collapse_coverage=1.5", "collapse_coverage"),
        ("train.divergence_windows=-1", "divergence_windows"),
        ("train.max_rollbacks=-1", "max_rollbacks"),
    ]:
        with pytest.raises(ConfigError, match=match):
            apply_overrides(RunConfig(), [bad])


def test_guards_import_only_the_stdlib_torch_and_config():
    tree = ast.parse(Path(guards.__file__).read_text())
    imported = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    ganforge = {m for m in imported if m.startswith("ganforge")}
    assert ganforge == {"ganforge.config"}, ganforge
    assert all(m.split(".")[0] in {"ganforge", "torch", "__future__", "math", "collections", "dataclasses", "typing"}
               for m in imported), imported  # fmt: skip


def test_a_run_made_to_collapse_rolls_back_to_its_best_weights(tmp_path, monkeypatch):
    """A real short run with a learning rate far too high: the collapse alarm fires on an evaluation worse
    than the best, the loop restores best.safetensors byte for byte, lowers both learning rates and goes on;
    the alarm and the rollback are in metrics.jsonl."""
    import json

    import torch

    from ganforge.checkpoint import load_tensors
    from ganforge.cli import main
    from ganforge.training import loop

    restored = []
    restore = loop.restore_networks

    def checked_restore(path, cfg, nets):
        best = {k: v.clone() for k, v in load_tensors(path)[0].items()}
        restore(path, cfg, nets)
        for prefix, module in (("generator", nets.generator_core), ("discriminator", nets.discriminator_core)):
            for key, value in module.state_dict().items():
                assert torch.equal(value, best[f"{prefix}.{key}"]), key
        restored.append(path)

    monkeypatch.setattr(loop, "restore_networks", checked_restore)
    run = tmp_path / "run"
    args = ["train", "digits-mlp", "--out", str(run), "--epochs", "3", "--batch-size", "32"]
    args += ["--set", "data.max_images=256", "--set", "train.progress=false", "--set", "eval.every=1"]
    args += ["--set", "eval.num_samples=200", "--set", "train.on_collapse=rollback"]
    args += ["--set", "train.collapse_factor=1.05", "--set", "train.collapse_patience=1"]
    args += ["--set", "train.max_rollbacks=1"]
    assert main(args) == 0  # a sane start: the best checkpoint is from here
    # then a learning rate a thousand times too high: the samples collapse, the next evaluation is worse
    resume = ["train", "--resume", str(run), "--epochs", "5", "--set", "optim.lr_g=0.2", "--set", "optim.lr_d=0.2"]
    assert main([*resume, "--set", "train.progress=false"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rollbacks = [r for r in records if r["kind"] == "rollback"]
    alarms = [r for r in records if r["kind"] == "alarm" and r["action"] == "rollback"]
    assert len(rollbacks) == 1 and len(alarms) == 1 and len(restored) == 1
    assert rollbacks[0]["lr_g"] == pytest.approx(0.2 * 0.5)
    assert json.loads((run / "config.json").read_text())["optim"]["lr_g"] == pytest.approx(0.1)
