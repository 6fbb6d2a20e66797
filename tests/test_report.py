"""`ganforge report`, `compare` and `runs`: pages checked in a real headless Chromium, run directories made by
real (tiny) training runs through the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from pathlib import Path

import pytest

from ganforge.cli import main
from ganforge.recipes import RECIPES

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TINY = ["--epochs", "2", "--set", "data.max_images=64", "--batch-size", "16", "--set", "train.progress=false"]
# an evaluation and a grid after each epoch, a record every 2 steps: every chart and table of the report has data
EVALUATED = ["--set", "eval.every=1", "--set", "eval.num_samples=64",
             "--set", "train.log_every=2", "--set", "train.sample_every=1"]  # fmt: skip


def train(out: Path, *extra: str, recipe: str = "digits-quick") -> Path:
    assert main(["train", recipe, *TINY, *EVALUATED, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("runs") / "run-a")


@pytest.fixture(scope="module")
def run_b(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("runs") / "run-b", "--set", "optim.lr_g=1e-3", "--epochs", "3")


def page_data(page: Path) -> dict:
    """The JSON block the page's scripts draw from (charts, timeline)."""
    text = page.read_text(encoding="utf-8")
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)
    assert match, "no data block in the page"
    return json.loads(match.group(1).replace("<\\/", "</"))


# ------------------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through selenium; fails (never skips) when missing: .ci/run installs it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "install chromium and chromium-driver (see .ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1300,1500"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def open_page(driver, page: Path) -> None:
    """Load ``page`` from disk and wait until its scripts report every chart drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 90).until(lambda d: d.execute_script("return document.body.dataset.ready"))
    assert driver.execute_script("return document.body.dataset.ready") == "1"


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def drawn_charts(driver) -> dict[str, int]:
    """Chart div id -> number of traces plotly drew in it."""
    return driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(div => [div.id, (div.data || []).filter(t => (t.y || []).length > 0).length]))"
    )


def move_slider(driver, index: int) -> None:
    driver.execute_script(
        "const s = document.getElementById('timeline-slider'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        index,
    )


def image_sources(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('[id^=timeline-image-]')).map(img => img.src)"
    )


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)), "screenshot failed"
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
    if os.environ.get("GANFORGE_TEST_ARTIFACTS"):
        folder = Path(os.environ["GANFORGE_TEST_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / name)
    return shot


# ------------------------------------------------------------------------------------------ report
def test_report_opens_in_chromium_with_charts_and_a_working_timeline(run_a, browser, tmp_path):
    from ganforge.report import write_report

    page = write_report(run_a)
    assert page == run_a / "report.html"
    data = page_data(page)
    open_page(browser, page)
    assert console_errors(browser) == []
    drawn = drawn_charts(browser)
    expected = {f"chart-{chart['id']}" for chart in data["charts"]}
    assert {"chart-losses", "chart-d-outputs", "chart-speed"} <= expected
    assert any(name.startswith("chart-metric-") for name in expected)  # the quality metrics
    assert set(drawn) == expected and all(count > 0 for count in drawn.values()), drawn

    # the timeline starts at the last grid; moving the slider shows another one
    positions = data["timeline"]["positions"]
    assert [p["label"].split(",")[0] for p in positions] == ["epoch 1", "epoch 2"]
    last = image_sources(browser)
    move_slider(browser, 0)
    first = image_sources(browser)
    assert first != last and first[0].startswith("data:image/jpeg;base64,")
    assert browser.find_element("id", "timeline-label").text.startswith("epoch 1")

    # the x-axis switch redraws every chart against epochs
    browser.find_element("css selector", "input[name=x-axis][value=epoch]").click()
    x_first = browser.execute_script("return document.getElementById('chart-losses').data[0].x.slice(0, 2)")
    losses = next(c for c in data["charts"] if c["id"] == "losses")
    assert x_first == pytest.approx(losses["x"]["epoch"][0][:2])
    assert console_errors(browser) == []
    save_screenshot(browser, tmp_path, "report.png")


def test_report_header_tables_and_files(run_a, tmp_path):
    from ganforge.report import load_run, write_report

    page = write_report(run_a, tmp_path / "elsewhere" / "r.html")
    html = page.read_text()
    run = load_run(run_a)
    records = [json.loads(line) for line in (run_a / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    tracked = evals[-1]["tracked"]
    best = min(evals, key=lambda r: r[tracked])
    assert run.status == "finished" and run.steps == records[-1]["step"] and run.epochs_done == 2
    assert run.best_eval == best
    assert "digits-quick" in html and "finished" in html and f"ganforge train --resume {run_a}" in html
    assert "fp32" in html or "bf16" in html
    # one metrics-table row per evaluation, the best one marked
    rows = re.findall(r"<tr( class=\"best\")?><td>(\d+)</td>", html)
    assert [int(step) for _, step in rows] == [r["step"] for r in evals]
    assert [bool(mark) for mark, _ in rows] == [r is best for r in evals]
    # checkpoints with their epochs read from the headers, exports, the config, per-class rows
    assert re.search(r"<td class=\"left\">latest.safetensors</td><td>[\d.]+ [KM]B</td><td>2</td><td>8</td>", html)
    assert "generator.safetensors" in html and "discriminator.safetensors" in html
    assert "grid_columns" in html and "lr_g" in html
    classes = load_run(run_a).config["model"]["num_classes"]
    assert html.count('alt="class ') == classes


def test_no_embed_links_the_grids_relative_to_the_page(run_a, tmp_path):
    from ganforge.report import write_compare, write_report

    embedded = write_report(run_a, tmp_path / "embedded.html")
    linked = write_report(run_a, tmp_path / "sub" / "linked.html", embed=False)
    compared = write_compare([run_a, run_a], tmp_path / "sub" / "compare.html", embed=False)
    assert 'width="0"' not in compared.read_text()
    for panel in page_data(compared)["timeline"]["panels"]:
        assert all((compared.parent / frame).resolve().is_file() for frame in panel["frames"])
    frames = page_data(linked)["timeline"]["panels"][0]["frames"]
    assert len(frames) == 2
    for frame in frames:
        assert not frame.startswith("data:") and (linked.parent / frame).resolve().is_file()
    assert "data:image/png" not in linked.read_text()
    assert linked.stat().st_size < embedded.stat().st_size


@pytest.mark.parametrize("recipe", RECIPES.names())
def test_report_of_every_recipe(trained_runs, recipe, tmp_path):
    from ganforge.report import write_report

    run = trained_runs[recipe]
    page = write_report(run, tmp_path / "report.html")
    data = page_data(page)
    ids = {chart["id"] for chart in data["charts"]}
    assert {"losses", "d-outputs"} <= ids
    grids = sorted((run / "samples").glob("epoch_*.png"))
    assert len(data["timeline"]["positions"]) == len(grids) >= 1
    assert len(data["timeline"]["panels"][0]["frames"]) == len(grids)
    assert f"<b>{recipe}</b>" in page.read_text()


def test_report_of_a_run_in_progress_with_a_half_written_line(run_a, tmp_path, browser):
    """No stop record yet and the last line torn mid-write: the report shows what is complete, as running."""
    from ganforge.report import load_run, write_report

    run = tmp_path / "in-progress"
    shutil.copytree(run_a, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    complete = [line for line in lines if json.loads(line)["kind"] != "stop"]
    torn = json.dumps({"kind": "step", "step": 999, "d_loss": 0.5})[:25]
    (run / "metrics.jsonl").write_text("\n".join(complete) + "\n" + torn)
    grids = sorted((run / "samples").glob("epoch_*.png"))
    payload = grids[-1].read_bytes()
    (run / "samples" / "epoch_0003.png").write_bytes(payload[: len(payload) // 2])  # a grid being written
    view = load_run(run)
    assert view.status == "running"
    assert len(view.records) == len(complete) and all(r["step"] != 999 for r in view.records)
    assert [g.path for g in view.grids] == grids  # the torn grid waits for the next report
    page = write_report(run)
    assert "running" in page.read_text()
    open_page(browser, page)
    assert console_errors(browser) == []
    assert all(count > 0 for count in drawn_charts(browser).values())


def test_status_stopped_interrupted_and_not_started(run_a, tmp_path):
    from ganforge.report import load_run, write_report

    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    records[-1]["reason"] = "reached --max-time 5 min"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    view = load_run(run)
    assert (view.status, view.status_detail) == ("stopped", "reached --max-time 5 min")
    assert view.resume_command == f"ganforge train --resume {run}"

    # no stop record and no write for an hour: killed, not running
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    an_hour_ago = time.time() - 3600
    os.utime(metrics, (an_hour_ago, an_hour_ago))
    assert load_run(run).status == "interrupted"

    # a resume after the stop record starts a new session: running again
    resumed = [*records, {"kind": "resume", "step": records[-1]["step"], "from": "x", "overrides": []}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in resumed))
    assert load_run(run).status == "running"

    metrics.write_text("")
    assert load_run(run).status == "not started"
    shutil.rmtree(run / "samples")
    page = write_report(run)  # nothing to draw yet: still a page
    assert page_data(page)["charts"] == [] and "No records yet" in page.read_text()


def test_report_observer_rewrites_at_most_every_interval(run_a, tmp_path):
    from ganforge.report import ReportObserver

    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    (run / "report.html").unlink(missing_ok=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grid = sorted((run / "samples").glob("epoch_*.png"))[0]

    slow = ReportObserver(run, every_s=3600)
    for record in records:
        slow.on_record(record)
    slow.on_grid(grid, records[0]["step"])
    assert slow.writes == 1 and (run / "report.html").is_file()  # the first record, then not within the hour
    slow.close()
    assert slow.writes == 2

    eager = ReportObserver(run, every_s=1e-9)
    for record in records[:3]:
        eager.on_record(record)
    assert eager.writes == 3
    assert [name for name in os.listdir(run) if name.endswith(".tmp")] == []  # atomic writes leave no temp files


def test_timeline_fits_its_budget_for_a_400_epoch_run(run_a, tmp_path):
    """400 grids: the frames shrink to one common size so that the whole report stays a few MB."""
    from ganforge.report import write_report
    from ganforge.report.images import TIMELINE_BUDGET_BYTES, ThumbnailCache, native_side, timeline_sources

    run = tmp_path / "long"
    shutil.copytree(run_a, run)
    grids = sorted((run / "samples").glob("epoch_*.png"))
    for epoch in range(3, 401):
        shutil.copy(grids[epoch % len(grids)], run / "samples" / f"epoch_{epoch:04d}.png")
    paths = sorted((run / "samples").glob("epoch_*.png"))
    assert len(paths) == 400
    sources, side = timeline_sources(paths, ThumbnailCache())
    payload = sum(len(s) for s in sources) * 3 / 4  # base64 -> bytes
    assert payload <= TIMELINE_BUDGET_BYTES and side < native_side(paths[0])
    few, few_side = timeline_sources(paths[:2], ThumbnailCache())
    assert few_side == native_side(paths[0])  # two frames fit at full size
    page = write_report(run)
    assert page.stat().st_size < 5_000_000
    assert len(page_data(page)["timeline"]["positions"]) == 400


def test_large_grids_are_embedded_as_jpeg_and_small_ones_as_png(run_a, tmp_path):
    import base64

    import numpy as np
    from PIL import Image

    from ganforge.report.images import FULL_PNG_LIMIT, full_uri

    small = sorted((run_a / "samples").glob("epoch_*.png"))[-1]
    assert small.stat().st_size <= FULL_PNG_LIMIT
    assert base64.b64decode(full_uri(small).split(",", 1)[1]) == small.read_bytes()  # as it is
    large = tmp_path / "faces.png"
    pixels = np.random.default_rng(0).integers(0, 256, (776, 776, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(large)
    assert large.stat().st_size > FULL_PNG_LIMIT
    uri = full_uri(large)
    assert uri.startswith("data:image/jpeg;base64,")
    decoded = tmp_path / "decoded.jpg"
    decoded.write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    with Image.open(decoded) as image:
        assert image.size == (776, 776)  # full size, only the encoding changes


# ------------------------------------------------------------------------------------------ compare
def test_compare_opens_in_chromium(run_a, run_b, browser, tmp_path):
    from ganforge.report import write_compare

    page = write_compare([run_a, run_b], tmp_path / "compare.html")
    data = page_data(page)
    open_page(browser, page)
    assert console_errors(browser) == []
    drawn = drawn_charts(browser)
    assert set(drawn) == {f"chart-{c['id']}" for c in data["charts"]} and all(n > 0 for n in drawn.values())
    names = browser.execute_script("return document.getElementById('chart-losses').data.map(t => t.name)")
    assert any(n.startswith("run-a") for n in names) and any(n.startswith("run-b") for n in names)

    # one slider over epochs 1..3; run-a (2 epochs) keeps its last grid at epoch 3
    assert [p["epoch"] for p in data["timeline"]["positions"]] == [1.0, 2.0, 3.0]
    at_end = image_sources(browser)
    assert len(at_end) == 2
    move_slider(browser, 1)
    at_two = image_sources(browser)
    assert at_two[0] == at_end[0] and at_two[1] != at_end[1]
    move_slider(browser, 0)
    assert image_sources(browser)[0] != at_two[0]

    html = page.read_text()
    fields = re.findall(r"<tr><td class=\"left\">([a-z_]+\.[a-z_0-9]+)</td>", html)
    assert "optim.lr_g" in fields and "train.epochs" in fields
    assert "train.batch_size" not in fields and "model.arch" not in fields  # equal in both: not listed
    # the final grids side by side, with the grid of the best evaluation's epoch where it is another one
    assert html.count('alt="last: epoch') == 2
    for run in (run_a, run_b):
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in evals if r["kind"] == "eval"]
        best = min(evals, key=lambda r: r[r["tracked"]])
        if best is not evals[-1]:
            assert f'alt="best: epoch {best["epoch"] + 1}"' in html
    assert console_errors(browser) == []
    save_screenshot(browser, tmp_path, "compare.png")


def test_compare_needs_two_runs(run_a, capsys):
    assert main(["compare", str(run_a), "--out", "x.html"]) == 2
    assert "at least two" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ runs + CLI
def test_runs_lists_every_run(run_a, run_b, capsys):
    root = run_a.parent.parent  # both module runs live under one pytest base folder
    assert main(["runs", str(root), "--json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert {"run-a", "run-b"} <= set(rows)
    a = rows["run-a"]
    records = [json.loads(line) for line in (run_a / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert (a["recipe"], a["status"], a["steps"], a["epochs"]) == ("digits-quick", "finished", records[-1]["step"], 2)
    assert a["best_metric"] == evals[-1]["tracked"]
    assert a["best_value"] == min(r[a["best_metric"]] for r in evals)
    assert rows["run-b"]["epochs"] == 3
    assert main(["runs", str(root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["recipe", "status", "steps", "time", "best", "path"]
    assert any(line.endswith(str(run_a)) for line in table)


def test_cli_report_writes_the_page_and_errors_are_one_line(run_a, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_a), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.is_file()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganforge: error:") and "not a ganforge run directory" in err and len(err.splitlines()) == 1
    assert main(["runs", str(tmp_path / "missing")]) == 2


def test_checkpoint_listing_reads_headers_only(run_a, tmp_path):
    """read_metadata parses the header alone: a checkpoint cut right after it still lists its epoch and step."""
    from ganforge.checkpoint import load_tensors, read_metadata
    from ganforge.errors import CheckpointError

    latest = run_a / "checkpoints" / "latest.safetensors"
    payload = latest.read_bytes()
    (header_len,) = struct.unpack("<Q", payload[:8])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(payload[: 8 + header_len])
    meta, kind = read_metadata(cut)
    _, full_meta, full_kind = load_tensors(latest)
    assert (meta["state"], kind) == (full_meta["state"], full_kind)
    with pytest.raises(CheckpointError):
        load_tensors(cut)
    cut.write_bytes(payload[:20])
    with pytest.raises(CheckpointError, match="truncated"):
        read_metadata(cut)


def test_report_config_fields_are_validated():
    from ganforge.config import RunConfig, apply_overrides
    from ganforge.errors import ConfigError

    cfg = RunConfig()
    assert (cfg.train.report, cfg.train.report_every_s, cfg.train.tensorboard) == (True, 60.0, False)
    apply_overrides(cfg, ["train.report_every_s=5", "train.report=false"])
    assert (cfg.train.report, cfg.train.report_every_s) == (False, 5.0)
    with pytest.raises(ConfigError, match="report_every_s"):
        apply_overrides(cfg, ["train.report_every_s=0"])


def test_script_json_cannot_close_the_script_element():
    from ganforge.report.page import script_json

    text = script_json({"label": "</script><script>alert(1)</script>"})
    assert "</" not in text and json.loads(text)["label"].startswith("</script>")
