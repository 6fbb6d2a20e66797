"""Faults and bad input outside the training loop: the run-directory lock, temporary files of killed writers,
full disks, numbers checked at parse time, data that is silently wrong, and checks before work.

Every case ends in one line and exit code 2, or a named warning, and loses nothing (docs/reliability.md
lists each promise with the test here that checks it). The training loop's own cases (Ctrl-C twice,
divergence) live in test_resume.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge import checkpoint
from ganforge.checkpoint import (
    atomic_write_bytes,
    check_output_space,
    clean_stale_temporaries,
    load_tensors,
    os_errno,
    save_tensors,
)
from ganforge.cli import main
from ganforge.errors import RunInUseError, WriteError
from ganforge.rundir import LOCK_NAME, RunDir

TINY = ["--set", "data.max_images=32", "--batch-size", "16", "--set", "train.progress=false", "--device", "cpu"]
DIGITS = ["--set", "data.dataset=digits", *TINY]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr); argparse's exits count too."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors_and_warnings(err: str) -> tuple[list[str], list[str]]:
    lines = [line for line in err.splitlines() if line.strip()]
    warned = [line for line in lines if line.startswith("ganforge: warning:")]
    return [line for line in lines if line not in warned], warned


def user_error(capsys, *args, fragments=()) -> str:
    """Assert exit 2 and one line ``ganforge: error: ...`` holding ``fragments``, last on stderr, no traceback
    (progress lines and ``ganforge: warning:`` lines may come before it)."""
    code, _, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ganforge: error:")]
    assert code == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def temporaries(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.rglob(".*") if checkpoint.ATOMIC_TEMP_NAME.fullmatch(p.name) or p.name.startswith(".tmp")
    )


# --------------------------------------------------------------------------- the run-directory lock


def test_a_locked_run_refuses_train_resume_and_overwrite_naming_the_pid(capsys, trained_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_runs["mnist-mlp"], run)
    before = (run / "metrics.jsonl").read_text()
    with RunDir(run).lock():
        holder = f"PID {os.getpid()}"
        for args in (
            ["train", "mnist-mlp", "--out", run, *DIGITS],
            ["train", "--resume", run, "--epochs", "2"],
            ["train", "mnist-mlp", "--out", run, "--overwrite", *DIGITS],
        ):
            user_error(capsys, *args, fragments=(str(run), "in use by another ganforge process", holder))
        assert (run / "metrics.jsonl").read_text() == before  # nothing truncated or deleted
    assert not (run / LOCK_NAME).exists()  # released: the lock file goes with it
    assert cli(capsys, "train", "--resume", run, "--epochs", "2")[0] == 0


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from ganforge.rundir import RunDir; RunDir({str(run)!r}).lock(); print(1, flush=True); "
            "import time; time.sleep(600)",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(RunInUseError, match=f"PID {holder.pid}"):
            RunDir(run).lock()
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # the file stays, naming the dead PID...
    with RunDir(run).lock():  # ...but the kernel dropped the lock with the process
        assert (run / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_failed_run_leaves_no_directory_and_overwrite_needs_the_lock(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "new" / "run"
    user_error(capsys, "train", "anime-dcgan", "--data-root", tmp_path / "empty", "--out", out, fragments=("empty",))
    assert not (tmp_path / "new").exists()  # the lock made the folders; nothing was written, so they are gone

    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.safetensors").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="lock"):
        RunDir(run).create(overwrite=True)  # deleting without the lock is a programming error
    assert (run / "checkpoints" / "latest.safetensors").exists()
    with RunDir(run).lock():
        RunDir(run).create(overwrite=True)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "checkpoints", "samples"]
        assert not any((run / "checkpoints").iterdir())


def test_two_overwrite_runs_started_together_one_trains_the_other_is_refused(tmp_path, capsys):
    """Why 1: both trained into one folder (every record twice), or died in rmtree, or left no config.json."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "old-result.txt").write_text("the run being replaced")
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "step", "step": 999}) + "\n")
    command = [sys.executable, "-m", "ganforge", "train", "digits-mlp", "--out", str(run), "--overwrite",
               "--epochs", "100000", "--set", "train.log_every=1", *TINY]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
    procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        deadline = time.monotonic() + 180
        while all(p.poll() is None for p in procs):  # the refused one ends by itself; the other trains on
            assert time.monotonic() < deadline, "neither run was refused"
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        assert loser.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"in use by another ganforge process (PID {winner.pid})" in lines[0], err
        while not any(r.get("kind") == "step" and r["step"] < 999 for r in RunDir(run).read_records()):
            assert winner.poll() is None and time.monotonic() < deadline, winner.communicate()[1]
            time.sleep(0.05)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    records = RunDir(run).read_records()
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps and steps == sorted(set(steps)) and 999 not in steps  # no record twice, none of the old run
    assert not (run / "old-result.txt").exists()
    assert json.loads((run / "config.json").read_text())["recipe"] == "digits-mlp"
    # killed with the lock held: the next --overwrite takes the directory at once
    assert cli(capsys, "train", "digits-mlp", "--out", run, "--overwrite", "--max-steps", "2", *TINY)[0] == 0
    assert not (run / LOCK_NAME).exists()


# --------------------------------------------------------------------------- temporaries of killed writers


def test_clean_stale_temporaries_removes_only_old_leftovers_of_our_writers(tmp_path):
    old = time.time() - 3600
    names = {
        ".latest.safetensors.ab12cd_9.tmp": True,  # atomic_write's, an hour old
        ".tmpAb12Cd": True,  # safetensors' save_file's own, an hour old
        ".fresh.png.zz99yy88.tmp": False,  # a writer in another process may be at work on it
        "notes.tmp": False,  # not ours
        ".x.tmp": False,  # not mkstemp's pattern
        "latest.safetensors": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
        if name != ".fresh.png.zz99yy88.tmp":
            os.utime(tmp_path / name, (old, old))
    removed = clean_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)
    assert [p.name for p in clean_stale_temporaries(tmp_path, min_age=0)] == [".fresh.png.zz99yy88.tmp"]
    assert clean_stale_temporaries(tmp_path / "missing") == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from ganforge.checkpoint import atomic_write
def write(tmp):
    tmp.write_bytes(b"half a file")
    print("writing", flush=True)
    time.sleep(600)
atomic_write(Path(sys.argv[1]), write)
"""


def _kill_a_writer(target: Path) -> Path:
    """Start ``atomic_write(target)`` in a process and SIGKILL it mid-write; return the temporary it left."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (left,) = [p for p in target.parent.iterdir() if checkpoint.ATOMIC_TEMP_NAME.fullmatch(p.name)]
    return left


def test_leftovers_of_killed_writers_are_cleaned_on_the_next_start(tmp_path, monkeypatch, capsys):
    # a run directory: the next train on it holds the lock, so any leftover is dead and goes at once
    run = tmp_path / "run"
    assert cli(capsys, "train", "digits-mlp", "--out", run, "--max-steps", "2", *TINY)[0] == 0
    left = _kill_a_writer(run / "checkpoints" / "latest.safetensors")
    assert cli(capsys, "train", "--resume", run, "--max-steps", "4")[0] == 0
    assert not left.exists() and temporaries(run) == []
    # a cache: other processes may be writing there, so only leftovers older than STALE_AFTER_S go
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    from ganforge.data import core as data_core
    from ganforge.metrics import cache as metrics_cache

    monkeypatch.setattr(data_core, "_TIDIED", set())
    monkeypatch.setattr(metrics_cache, "_TIDIED", set())
    datasets = tmp_path / "cache" / "datasets"
    fresh = _kill_a_writer(datasets / "abc.safetensors")
    stale = datasets / ".def.safetensors.a1b2c3d4.tmp"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 2 * checkpoint.STALE_AFTER_S,) * 2)
    stats = tmp_path / "cache" / "real-stats" / ".tmpQw12Er"  # safetensors' own, from a killed save_file
    stats.parent.mkdir(parents=True)
    stats.write_bytes(b"x")
    os.utime(stats, (time.time() - 2 * checkpoint.STALE_AFTER_S,) * 2)
    assert cli(capsys, "train", "digits-mlp", "--out", tmp_path / "run2", "--max-steps", "1", *TINY)[0] == 0
    metrics_cache.stats_dir()
    assert not stale.exists() and not stats.exists()
    assert fresh.exists()  # a minute ago: maybe a live writer in another process


# --------------------------------------------------------------------------- full disks


@pytest.fixture
def full_disk(monkeypatch):
    """ENOSPC from the kernel for atomic writes to files whose names match the patterns the test appends: their
    temporary file is a link to /dev/full, so each library's own write call fails as on a full disk."""
    assert os.path.exists("/dev/full"), "this Linux machine has no /dev/full"
    patterns: list[str] = []
    real = checkpoint.temporary_beside

    def beside(path: Path) -> Path:
        tmp = real(path)
        if any(fnmatch(path.name, pattern) for pattern in patterns):
            tmp.unlink()
            tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(checkpoint, "temporary_beside", beside)
    return patterns


def _assert_write_error(info: pytest.ExceptionInfo, path: Path) -> None:
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "free there" in message, message
    assert "No space left on device" in message and info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, OSError)


def test_full_disk_in_every_plain_writer_keeps_the_previous_file_and_no_temporary(tmp_path, full_disk):
    from ganforge.plots import plot_training_curves
    from ganforge.sampling import save_gif, save_grid, save_images, save_npz

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    records = [{"kind": "step", "step": 1, "epoch": 0, "epoch_progress": 0.5, "d_loss": 1.0, "g_loss": 2.0}]
    run = RunDir(tmp_path / "run")
    writers = {
        "checkpoint.safetensors": lambda p: save_tensors(p, {"w": torch.ones(1000)}, {"step": 1}, "training"),
        "curves.png": lambda p: plot_training_curves(records, p),
        "grid.png": lambda p: save_grid(images, p, nrow=2),
        "walk.gif": lambda p: save_gif(images, p),
        "samples.npz": lambda p: save_npz(p, images, torch.arange(4)),
        "000000.png": lambda p: save_images(images[:1], p.parent),
        "metrics.jsonl": lambda p: run.truncate_after(5),
        "config.json": lambda p: run.write_config('{"recipe": "x"}\n'),
    }
    for name, write in writers.items():
        path = run.path / name
        if name == "metrics.jsonl":
            run.append({"kind": "step", "step": 1})
        write(path)
        before = path.read_bytes()
        full_disk.append(name)
        with pytest.raises(WriteError) as info:
            write(path)
        _assert_write_error(info, path)
        assert "the previous file is unchanged" in str(info.value)
        assert path.read_bytes() == before, name
        assert temporaries(run.path) == [], name
    (run.path / "metrics.jsonl").unlink()
    (run.path / "metrics.jsonl").symlink_to("/dev/full")  # appends are not atomic writes: they fail the same way
    with pytest.raises(WriteError) as info:
        run.append({"kind": "step", "step": 2})
    _assert_write_error(info, run.metrics)


SAFETENSORS_WRITERS = """
import json, resource, signal, sys, warnings
from pathlib import Path
import torch
from ganforge.data.core import Decoded, cache_path, write_cache
from ganforge.errors import CacheWarning, WriteError
from ganforge.metrics import cache
from ganforge.metrics.core import FeatureSet
from safetensors.torch import save_file

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel's file-size limit: writes past it fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
big = torch.zeros(200_000)
result = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    write_cache("f" * 32, Decoded(torch.zeros((64, 3, 32, 32), dtype=torch.uint8), None, []), "x")
    result["data_cache"] = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    result["data_cache_file"] = cache_path("f" * 32).exists()
    caught.clear()
    stats = cache.stats_dir() / "s.safetensors"
    cache.save_real_stats(stats, "k", FeatureSet(torch.randn(200, 128), None, None), {})
    result["stats"] = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
weights = cache.evaluators_dir() / "e.safetensors"
cache.write_atomic(weights, lambda tmp: save_file({"w": torch.ones(10)}, tmp), strict=True)
before = weights.read_bytes()
try:
    cache.write_atomic(weights, lambda tmp: save_file({"w": big}, tmp), strict=True)
except WriteError as e:
    result["evaluator"] = [str(e), type(e.__cause__).__name__]
result["evaluator_kept"] = weights.read_bytes() == before
root = cache.cache_root()
result["left"] = sorted(p.name for p in root.rglob(".*") if p.is_file())
print(json.dumps(result))
"""


def test_full_disk_in_the_safetensors_writers_warns_for_caches_and_fails_for_the_evaluator(tmp_path):
    """safetensors' save_file (data cache, real statistics, evaluators) writes from Rust: its failure is a
    SafetensorError carrying the OS error, which must still give one line and leave nothing behind."""
    env = {**os.environ, "GANFORGE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", SAFETENSORS_WRITERS], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (data_warning,) = result["data_cache"]
    assert "will not be cached" in data_warning and "File too large" in data_warning and "free there" in data_warning
    assert not result["data_cache_file"]
    (stats_warning,) = result["stats"]
    assert "could not write the cache" in stats_warning and "File too large" in stats_warning
    message, cause = result["evaluator"]
    assert "e.safetensors" in message and "File too large" in message and "\n" not in message
    assert cause == "SafetensorError" and result["evaluator_kept"]
    assert result["left"] == []  # neither our temporaries nor safetensors' own


def test_os_errno_reads_the_code_safetensors_puts_in_its_message():
    from safetensors import SafetensorError

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert os_errno(full) == errno.ENOSPC
    assert os_errno(OSError(errno.EDQUOT, "quota")) == errno.EDQUOT and os_errno(ValueError("x")) is None


def test_full_disk_through_the_cli_is_one_line_and_keeps_the_files(capsys, trained_runs, tmp_path, full_disk):
    """Why 3: a full disk was a traceback (OSError: [Errno 28] No space left on device, exit 1)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_runs["mnist-mlp"], run)
    grid = tmp_path / "grid.png"
    assert cli(capsys, "generate", run, "--num", 4, "--out", grid)[0] == 0
    before = grid.read_bytes()
    full_disk.append("grid.png")
    user_error(capsys, "generate", run, "--num", 4, "--out", grid, fragments=(str(grid), "No space left", "free"))
    assert grid.read_bytes() == before and temporaries(tmp_path) == []

    latest = run / "checkpoints" / "latest.safetensors"
    kept = latest.read_bytes()
    full_disk.append("latest.safetensors")
    user_error(capsys, "train", "--resume", run, "--epochs", "2", fragments=(str(latest), "No space left"))
    assert latest.read_bytes() == kept and temporaries(run) == []
    load_tensors(latest)


def test_evaluate_on_a_full_disk_is_one_line(capsys, trained_runs, tmp_path, full_disk, monkeypatch):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    from ganforge.metrics import evaluator

    monkeypatch.setattr(evaluator, "TARGET_SAMPLES", 64)  # a tiny evaluator: this test is about the last write
    scores = tmp_path / "scores.json"
    args = ("evaluate", trained_runs["mnist-mlp"], "--metrics", "fd", "--num", 16, "--json", scores, "--device", "cpu")
    full_disk.append("scores.json")
    user_error(capsys, *args, fragments=(str(scores), "No space left"))
    assert not scores.exists() and temporaries(tmp_path) == []


def test_not_enough_space_is_found_before_any_work(capsys, trained_runs, tmp_path, monkeypatch):
    import ganforge.sampling

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the output")

    monkeypatch.setattr(ganforge.sampling, "generate_images", no_sampling)
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: 1000)
    out = tmp_path / "many" / "grid.png"
    user_error(capsys, "generate", trained_runs["mnist-mlp"], "--num", 64, "--out", out,
               fragments=("not enough space", str(out.parent), "1000 B"))  # fmt: skip
    assert not out.parent.exists()
    with pytest.raises(WriteError, match="needs about 1.0 GiB"):
        check_output_space(tmp_path, 1 << 30, "run directory")
    # a cache that would fill the disk is not written (the run's checkpoints need the space): a warning
    from ganforge.data.core import Decoded, cache_path, write_cache
    from ganforge.errors import CacheWarning

    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.warns(CacheWarning, match="will not be cached.*not enough space"):
        write_cache("0" * 32, Decoded(torch.zeros((4, 1, 8, 8), dtype=torch.uint8), None, []), "tiny")
    assert not cache_path("0" * 32).exists()
    monkeypatch.undo()
    check_output_space(tmp_path / "not" / "yet", 1 << 20)  # an existing parent with room: fine, nothing made
    assert not (tmp_path / "not").exists()


# --------------------------------------------------------------------------- numbers, checked at parse time


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["train", "mnist-mlp", "--seed", "-1"], ["--seed", "-1", "[0, 2**63)"]),
        (["train", "mnist-mlp", "--seed", "99999999999999999999"], ["--seed", "[0, 2**63)"]),
        (["train", "mnist-mlp", "--seed", "1.5"], ["--seed", "not a whole number"]),
        (["train", "mnist-mlp", "--batch-size", "0"], ["--batch-size", ">= 1"]),
        (["train", "mnist-mlp", "--epochs", "-1"], ["--epochs", ">= 0"]),
        (["train", "mnist-mlp", "--max-steps", "-5"], ["--max-steps", ">= 0"]),
        (["train", "mnist-mlp", "--max-time", "inf"], ["--max-time", "finite"]),
        (["train", "mnist-mlp", "--max-time", "nan"], ["--max-time", "finite"]),
        (["generate", "RUN", "--seed", "99999999999999999999"], ["--seed", "[0, 2**63)"]),
        (["generate", "RUN", "--batch-size", "0"], ["--batch-size", ">= 1"]),
        (["generate", "RUN", "--batch-size", "-1"], ["--batch-size", ">= 1"]),
        (["generate", "RUN", "--candidates", "0"], ["--candidates", ">= 1"]),
        (["generate", "RUN", "--num", "0"], ["--num", ">= 1"]),
        (["generate", "RUN", "--top-k", "-1"], ["--top-k", ">= 0"]),
        (["generate", "RUN", "--interpolate", "1"], ["--interpolate", ">= 2"]),
        (["generate", "RUN", "--class", "-1"], ["--class", ">= 0"]),
        (["generate", "RUN", "--nrow", "0"], ["--nrow", ">= 1"]),
        (["evaluate", "RUN", "--num", "2"], ["--num", ">= 4"]),
        (["evaluate", "RUN", "--seed", "-3"], ["--seed", "[0, 2**63)"]),
        (["evaluate", "RUN", "--batch-size", "0"], ["--batch-size", ">= 1"]),
        (["train-evaluator", "digits", "--epochs", "0"], ["--epochs", ">= 1"]),
    ],
)
def test_bad_numbers_are_one_line_at_parse_time(capsys, args, fragments):
    """Why 4: --seed -1 / 99999999999999999999 and generate --batch-size 0 / -1 were tracebacks."""
    user_error(capsys, *args, fragments=fragments)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optim.lr_g=inf", "optim.lr_g=inf must be a finite number"),
        ("optim.lr_d=-inf", "optim.lr_d=-inf must be a finite number"),
        ("train.seed=-1", "[0, 2**63)"),
        ("train.seed=9223372036854775808", "[0, 2**63)"),
        ("data.unlabelled=keep", "drop, error"),
    ],
)
def test_bad_config_numbers_are_one_line(capsys, override, fragment):
    """Why 9: optim.lr_g=inf was accepted while nan was rejected."""
    user_error(capsys, "train", "mnist-mlp", "--set", override, fragments=(fragment,))


def test_top_k_zero_means_off_and_large_seeds_work(capsys, trained_runs, tmp_path):
    """Why 9: --top-k 0 was rejected although sample.top_k=0 means off."""
    run = trained_runs["anime-dcgan"]  # its recipe keeps the top 64 of 512 by default
    code, out, err = cli(capsys, "generate", run, "--top-k", 0, "--num", 3, "--out", tmp_path / "a.npz")
    assert code == 0, err
    data = np.load(tmp_path / "a.npz")
    assert data["images"].shape[0] == 3 and "scores" not in data  # plain samples, not ranked ones
    seed = str(2**63 - 1)
    assert cli(capsys, "generate", run, "--num", 2, "--seed", seed, "--out", tmp_path / "b.npz")[0] == 0


def test_train_accepts_a_seed_beyond_numpys_range(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "digits-mlp", "--seed", str(2**40), "--max-steps", "1",
                       "--out", tmp_path / "run", *TINY)  # fmt: skip
    assert code == 0, err


# --------------------------------------------------------------------------- data that was silently wrong


def test_sixteen_bit_pngs_are_scaled_not_clipped_to_white(tmp_path):
    """Why 5: 16-bit grey PNGs of uniform noise decoded to 99.7% pure white, with no warning."""
    from ganforge.config import DataConfig
    from ganforge.data import load_dataset

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 65536, size=(24, 24), dtype=np.uint16) for _ in range(4)]
    for i, pixels in enumerate(noise):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: every file decodes
        data = load_dataset(DataConfig(dataset="image-folder", root=str(tmp_path)), 1, 24)
    want = np.stack([np.round(p / 257.0) for p in noise]).astype(np.uint8)  # v * 255 / 65535
    assert np.array_equal(data.images[:, 0].numpy(), want)
    assert (data.images == 255).float().mean() < 0.01


def _csv_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tagged"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "tags.csv").write_text("file,hair\n0.png,red\n1.png,blue\n2.png,red\n3.png,blue\n")
    return folder


def test_images_without_a_label_row_warn_once_or_stop(capsys, tmp_path):
    """Why 6: 38 of 118 images were dropped silently (the count was logged at a level the CLI hides)."""
    folder = _csv_folder(tmp_path)
    labels = ["--set", "data.labels=csv", "--set", "data.label_csv=tags.csv", "--set", "data.label_column=hair"]
    common = ["train", "anime-dcgan", "--data-root", folder, "--max-steps", "1", "--batch-size", "4",
              "--set", "train.progress=false", *labels]  # fmt: skip
    code, _, err = cli(capsys, *common, "--out", tmp_path / "run")
    errors, warned = errors_and_warnings(err)
    assert code == 0 and errors == [], err
    assert len(warned) == 1 and "2 of 6 images have no labelled row in tags.csv (column 'hair')" in warned[0], err
    assert "4.png" in warned[0] and "5.png" in warned[0]
    user_error(capsys, *common, "--set", "data.unlabelled=error", "--out", tmp_path / "strict",
               fragments=("2 of 6 images", "tags.csv", "data.unlabelled=drop"))  # fmt: skip


def test_non_images_are_ignored_quietly_and_bad_images_reported_in_one_line(capsys, tmp_path):
    """Why 9: a tags.csv in the image folder was reported as a file that is not a readable image."""
    folder = _csv_folder(tmp_path)
    (folder / "notes.txt").write_text("about this folder")
    args = ["train", "anime-dcgan", "--data-root", folder, "--max-steps", "1", "--batch-size", "4",
            "--set", "train.progress=false"]  # fmt: skip
    code, _, err = cli(capsys, *args, "--out", tmp_path / "quiet")
    assert code == 0 and err.strip() == "", err  # six good images, a CSV and a text file: nothing to say
    for i in range(5):
        (folder / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "phone.heic").write_bytes(b"\x00" * 64)
    code, _, err = cli(capsys, *args, "--out", tmp_path / "loud")
    errors, warned = errors_and_warnings(err)
    assert code == 0 and errors == [] and len(warned) == 1, err
    line = warned[0]
    assert "skipped 6 image file(s): 5 cannot be decoded, 1 in a format ganforge does not read" in line, line
    assert "broken0.jpg" in line and "and 3 more" in line and "tags.csv" not in line and "notes.txt" not in line


# --------------------------------------------------------------------------- checks before work, smaller cases


def _unwritable_cache(tmp_path: Path, monkeypatch) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GANFORGE_CACHE", str(blocker / "cache"))
    from ganforge.data import core as data_core
    from ganforge.metrics import cache as metrics_cache

    monkeypatch.setattr(data_core, "_TIDIED", set())
    monkeypatch.setattr(metrics_cache, "_TIDIED", set())
    monkeypatch.setattr(metrics_cache, "_UNWRITABLE", set())
    return blocker


def test_unwritable_cache_train_warns_once_evaluate_and_train_evaluator_fail_before_training(
    capsys, trained_runs, tmp_path, monkeypatch
):
    """Why 8: evaluate trained its evaluator for 24 s, then failed to store it; train only warned."""
    _unwritable_cache(tmp_path, monkeypatch)
    code, _, err = cli(capsys, "train", "digits-mlp", "--max-steps", "1", "--out", tmp_path / "run", *TINY)
    errors, warned = errors_and_warnings(err)
    assert code == 0 and errors == [] and len(warned) == 1 and "will not be cached" in warned[0], err

    from ganforge.metrics import evaluator

    def no_training(*args, **kwargs):
        raise AssertionError("trained the evaluator before finding that it cannot be stored")

    monkeypatch.setattr(evaluator, "fit_evaluator", no_training)
    run = trained_runs["mnist-mlp"]
    user_error(capsys, "evaluate", run, "--metrics", "fd", "--num", 8, "--json", tmp_path / "s.json",
               fragments=("needs a writable cache", "GANFORGE_CACHE"))  # fmt: skip
    user_error(capsys, "train-evaluator", "digits", fragments=("train-evaluator needs a writable cache",))


def test_evaluate_json_that_cannot_be_written_fails_before_work(capsys, trained_runs, tmp_path, monkeypatch):
    from ganforge.data import sources

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded data before checking --json")

    monkeypatch.setattr(sources, "_locate", no_loading)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    user_error(capsys, "evaluate", trained_runs["mnist-mlp"], "--json", blocker / "scores.json",
               fragments=("--json folder", str(blocker)))  # fmt: skip


def test_a_discriminator_export_is_named_as_such(capsys, trained_runs, tmp_path):
    """Why 9: evaluate RUN/discriminator.safetensors said "holds a generator of another architecture"."""
    export = trained_runs["mnist-mlp"] / "discriminator.safetensors"
    for command in ("evaluate", "generate"):
        user_error(capsys, command, export, "--out" if command == "generate" else "--json", tmp_path / "x.json",
                   fragments=("is a discriminator export", "generator.safetensors"))  # fmt: skip


def test_a_failed_download_leaves_no_folders(capsys, tmp_path, monkeypatch):
    """Why 9: a failed --data-root /nonexistent run created /nonexistent/MNIST/raw."""
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # torchvision's real downloader runs up to the network
    root = tmp_path / "nonexistent"
    line = user_error(capsys, "train", "mnist-mlp", "--data-root", root, "--out", tmp_path / "run",
                      fragments=(str(root / "MNIST" / "raw"), "downloading them failed"))  # fmt: skip
    assert "train-images-idx3-ubyte" in line
    assert not root.exists() and not (tmp_path / "run").exists()


def test_write_errors_name_path_and_free_space_for_each_cause(tmp_path):
    target = tmp_path / "x.bin"
    for code, fix in ((errno.ENOSPC, "free some space"), (errno.EROFS, "writable location"),
                      (errno.EACCES, "writable location"), (errno.EDQUOT, "free some space")):  # fmt: skip
        message = str(checkpoint.write_error(target, code))
        assert message.startswith(f"cannot write {target}: {os.strerror(code)} (") and "free there" in message
        assert fix in message and "\n" not in message
    atomic_write_bytes(target, b"ok")
    assert target.read_bytes() == b"ok" and temporaries(tmp_path) == []


def test_warnings_show_as_one_line_in_the_cli(capsys):
    from ganforge.cliargs import one_line_warnings
    from ganforge.data import DataWarning

    with warnings.catch_warnings(record=True) as others, one_line_warnings():
        warnings.simplefilter("always")
        warnings.warn("three files skipped", DataWarning, 1)
        warnings.warn("something else", UserWarning, 1)
    assert capsys.readouterr().err == "ganforge: warning: three files skipped\n"  # no file:line, no source line
    assert [str(w.message) for w in others] == ["something else"]  # other libraries' warnings: Python's own way


# --------------------------------------------------------------------------- divergence without NaN


def test_divergence_without_nan_warns_once_in_the_console_and_the_log_or_stops(capsys, tmp_path):
    """Why 7: Adam at lr 1e4 ran to exit 0 with losses of ~3e20 and not a word. Now the default (warn) says
    so once on the console and in metrics.jsonl and trains on; on_divergence=stop ends the run with a
    checkpoint, the resume command and exit 2."""
    wild = ["--set", "optim.lr_g=1e4", "--set", "optim.lr_d=1e4", "--set", "train.log_every=5", "--epochs", "4"]
    code, out, err = cli(capsys, "train", "digits-mlp", *wild, "--out", tmp_path / "warn", *DIGITS)
    assert code == 0, err
    warnings_printed = [line for line in out.splitlines() if line.startswith("warning: divergence at step")]
    assert len(warnings_printed) == 1 and "try lower learning rates" in warnings_printed[0], out
    records = [json.loads(line) for line in (tmp_path / "warn" / "metrics.jsonl").read_text().splitlines()]
    alarms = [r for r in records if r["kind"] == "alarm"]
    assert [a["guard"] for a in alarms] == ["divergence"] and alarms[0]["action"] == "warn"
    assert max(r["step"] for r in records if r["kind"] == "step") > alarms[0]["step"]  # it trained on

    stop = tmp_path / "stop"
    code, out, err = cli(capsys, "train", "digits-mlp", *wild, "--set", "train.on_divergence=stop", "--out", stop,
                         *DIGITS)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "stopped by the divergence alarm" in out and f"Resume with: ganforge train --resume {stop}" in out
    assert (stop / "checkpoints" / "latest.safetensors").exists()


def test_train_checks_run_directory_space_before_the_first_step(capsys, tmp_path, monkeypatch):
    from ganforge import checkpoint

    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: 1000)
    run = tmp_path / "run"
    user_error(capsys, "train", "digits-mlp", "--out", run, *DIGITS,
               fragments=("not enough space", "run directory", "1000 B"))  # fmt: skip
    assert not run.exists()  # nothing trained, nothing left that looks like a run
