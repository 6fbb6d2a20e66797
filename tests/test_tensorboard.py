"""TensorBoard logging: the records of a real (tiny) run, resumed once, replayed into TensorBoardObserver and
read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from ganforge.cli import main

TINY = ["--set", "data.max_images=64", "--batch-size", "16", "--set", "train.progress=false",
        "--set", "train.log_every=2", "--set", "train.sample_every=1",
        "--set", "eval.every=1", "--set", "eval.num_samples=64"]  # fmt: skip


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> Path:
    """digits-quick: 2 epochs, then resumed for a third (metrics.jsonl holds a resume record)."""
    run = tmp_path_factory.mktemp("tb") / "run"
    assert main(["train", "digits-quick", "--epochs", "2", "--out", str(run), *TINY]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--set", "train.progress=false"]) == 0
    return run


def records_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def grids_of(run: Path, records: list[dict]) -> list[tuple[Path, int]]:
    """(grid, the step it was drawn at): epoch E's grid comes at the end of epoch E."""
    end_step = {r["epoch"] + 1: r["step"] for r in records if r["kind"] == "epoch"}
    paths = sorted((run / "samples").glob("epoch_*.png"))
    return [(p, end_step[int(p.stem.removeprefix("epoch_"))]) for p in paths]


def accumulate(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_resumed_run_logs_every_step_once(resumed_run, tmp_path):
    """Session 1 logs past the checkpoint (then 'crashes'); session 2 resumes from the checkpoint's step and is
    fed every record again: each step appears once, with session 2's values, and the grids are images."""
    from ganforge.tensorboard import TensorBoardObserver

    run = tmp_path / "run"
    shutil.copytree(resumed_run, run)
    records = records_of(run)
    config = json.loads((run / "config.json").read_text())
    resume_at = next(i for i, r in enumerate(records) if r["kind"] == "resume")
    checkpoint_step = records[resume_at]["step"]
    after = [r for r in records[resume_at + 1 :] if r["kind"] == "step"]
    grids = grids_of(run, records)

    first = TensorBoardObserver(run, config, resume_step=None)
    for record in records[:resume_at]:
        first.on_record(record)
    for grid, step in grids:
        if step <= checkpoint_step:
            first.on_grid(grid, step)
    for record in after[:2]:  # logged after the checkpoint, then lost with the crash: different values
        first.on_record({**record, "d_loss": 1234.0})
    first.close()

    second = TensorBoardObserver(run, config, resume_step=checkpoint_step)
    for record in records:
        second.on_record(record)
    for grid, step in grids:
        second.on_grid(grid, step)
    second.close()

    accumulator = accumulate(run / "tensorboard")
    tags = set(accumulator.Tags()["scalars"])
    expected = {f"train/{k}" for k in ("d_loss", "g_loss", "d_real", "d_fake", "d_fake_after", "images_per_s")}
    expected |= {f"epoch/{k}" for k in ("d_loss", "g_loss", "d_real", "d_fake")}
    tracked = next(r for r in records if r["kind"] == "eval")["tracked"]
    expected |= {f"eval/{tracked}"}
    assert expected <= tags
    step_records = [r for r in records if r["kind"] == "step"]
    logged = accumulator.Scalars("train/d_loss")
    assert [e.step for e in logged] == [r["step"] for r in step_records]  # each once, in order
    assert [e.value for e in logged] == pytest.approx([r["d_loss"] for r in step_records])  # 1234 purged
    evals = [r for r in records if r["kind"] == "eval"]
    assert [e.step for e in accumulator.Scalars(f"eval/{tracked}")] == [r["step"] for r in evals]
    assert [e.value for e in accumulator.Scalars(f"eval/{tracked}")] == pytest.approx([r[tracked] for r in evals])

    images = accumulator.Images("samples")
    assert [e.step for e in images] == [step for _, step in grids]
    with Image.open(grids[-1][0]) as grid:
        assert (images[-1].width, images[-1].height) == grid.size


def test_config_is_logged_as_hparams(resumed_run, tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from ganforge.tensorboard import TensorBoardObserver

    config = json.loads((resumed_run / "config.json").read_text())
    observer = TensorBoardObserver(tmp_path, config, resume_step=None)
    observer.on_record({"kind": "step", "step": 1, "d_loss": 0.5, "augment_p": 0.25})
    observer.close()
    accumulator = accumulate(tmp_path / "tensorboard")
    assert "train/augment_p" in accumulator.Tags()["scalars"]
    content = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.batch_size"].number_value == config["train"]["batch_size"]
    assert hparams["recipe"].string_value == "digits-quick"
    assert hparams["data.mean"].string_value == str(config["data"]["mean"])


def test_missing_tensorboard_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path):
    from ganforge.errors import GanforgeError
    from ganforge.tensorboard import TensorBoardObserver, check_available

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an environment without the package looks like
    with pytest.raises(GanforgeError, match=r"pip install '?ganforge\[tensorboard\]") as caught:
        check_available()
    assert "\n" not in str(caught.value)
    with pytest.raises(GanforgeError, match="ganforge\\[tensorboard\\]"):
        TensorBoardObserver(tmp_path, {}, resume_step=None)
    assert not (tmp_path / "tensorboard").exists()


def test_training_itself_writes_events_and_the_report_once_per_step_across_a_resume(tmp_path):
    """The loop's wiring: a run stopped at step 4 and resumed to step 8 leaves one event per logged step
    (2, 4, 6, 8) and a report.html."""
    run = tmp_path / "run"
    tiny = ["--set", "data.max_images=64", "--batch-size", "16", "--set", "train.progress=false"]
    tiny += ["--set", "train.tensorboard=true", "--set", "train.log_every=2", "--precision", "fp32"]
    tiny += ["--set", "train.sample_every=1"]
    assert main(["train", "digits-quick", "--out", str(run), "--max-steps", "4", *tiny]) == 0
    assert main(["train", "--resume", str(run), "--max-steps", "8", "--set", "train.progress=false"]) == 0
    accumulator = accumulate(run / "tensorboard")
    steps = [event.step for event in accumulator.Scalars("train/d_loss")]
    assert steps == [2, 4, 6, 8]
    assert accumulator.Images("samples")
    assert (run / "report.html").stat().st_size > 100_000
