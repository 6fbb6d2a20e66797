"""Data-parallel training under torchrun, for real: 2 CPU processes (gloo) against 1.

Every rank draws the same global noise and keeps its shard, and the loader gives each rank its
``tensor_split`` of every global batch, so k steps on 2 processes must give the weights of k steps
on 1 with the same global batch and seed (float tolerance: DDP sums the ranks' gradients in
another order). Each torchrun launch costs a few seconds of process start-up, so every launch
checks several things; the single-process references run in this process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ganforge.checkpoint import load_tensors, module_tensors
from ganforge.cli import main
from ganforge.config import apply_overrides
from ganforge.errors import ConfigError
from ganforge.models import build_models
from ganforge.recipes import get_recipe
from ganforge.training.distributed import DistContext, init_distributed, rank_failure

# gloo on CPU processes, also where a GPU is visible (two ranks cannot share one GPU under NCCL)
TINY = ["--set", "data.dataset=digits", "--set", "data.max_images=64", "--batch-size", "16", "--device", "cpu"]
CGAN = [*TINY, "--set", "model.g_width=8", "--set", "model.d_width=8"]
QUIET = ["--set", "train.progress=false"]
LAUNCH_TIMEOUT = 180  # seconds; a hang fails the test instead of the CI job

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


@pytest.fixture(scope="module", autouse=True)
def same_kernels_everywhere():
    """1-process and 2-process runs compared to rounding must use the same Linear kernel: the choice is
    otherwise timed on each run's machine (and its load), and BLAS and oneDNN round differently."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GANFORGE_CPU_LINEAR", "blas")
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str | Path, program: list[str] | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node N [program] args`` (program: ``-m ganforge``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    cmd += program or ["-m", "ganforge"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # also silences torchrun's banner about it
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # its own session, so that a hang can be ended with every process torchrun started
    proc = subprocess.Popen(
        [*cmd, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {LAUNCH_TIMEOUT}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def train_here(*args: str | Path) -> None:
    """A single-process reference run, in this process (no start-up cost)."""
    assert main(["train", *map(str, args), *QUIET]) == 0


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def initial_weights(recipe: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    """The weights training starts from (what ``build_setup`` builds from the seed)."""
    cfg = get_recipe(recipe)
    apply_overrides(cfg, overrides)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    generator, discriminator = build_models(cfg.model)
    return {**module_tensors("generator", generator), **module_tensors("discriminator", discriminator)}


def weight_difference(run_a: Path, run_b: Path, start: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max |a - b| over all weights and buffers, ||a - b|| / ||a - start||) of two runs' latest checkpoints.

    The second number measures the disagreement against how far training moved the weights: Adam
    divides each gradient by its own magnitude, so a weight whose gradient is ~0 can move by up to
    the learning rate on float noise alone; relative to the whole update that stays tiny.
    """
    a, _, _ = load_tensors(run_a / "checkpoints" / "latest.safetensors")
    b, _, _ = load_tensors(run_b / "checkpoints" / "latest.safetensors")
    worst, diff2, moved2 = 0.0, 0.0, 0.0
    for key, initial in start.items():
        if not initial.is_floating_point():  # BatchNorm's step counter: exact
            assert torch.equal(a[key], b[key]), key
            continue
        delta = a[key].double() - b[key].double()
        worst = max(worst, delta.abs().max().item())
        diff2 += delta.pow(2).sum().item()
        moved2 += (a[key].double() - initial.double()).pow(2).sum().item()
    return worst, (diff2 / moved2) ** 0.5


def assert_same_weights(run_a: Path, run_b: Path, recipe: str, overrides: list[str]) -> None:
    worst, relative = weight_difference(run_a, run_b, initial_weights(recipe, overrides))
    print(f"{recipe}: max |2 procs - 1 proc| = {worst:.3g}, relative to the update {relative:.3g}")
    assert relative < 1e-4 and worst < 1e-4, (worst, relative)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_written_once(result: subprocess.CompletedProcess, run: Path, kinds: dict[str, int], fresh: bool) -> None:
    """Only rank 0 printed and wrote: its messages once, each record once, no stray temporary file."""
    lines = result.stdout.splitlines()
    assert lines.count(f"run directory: {run}") == (1 if fresh else 0), result.stdout
    assert sum(line.endswith(f"Resume with: ganforge train --resume {run}") for line in lines) == 1, result.stdout
    got = [r["kind"] for r in records(run)]
    assert {k: got.count(k) for k in kinds} == kinds, got
    steps = [(r["kind"], r["step"]) for r in records(run)]
    assert len(steps) == len(set(steps)), steps
    assert not list(run.rglob("*.tmp")), "a half-written file was left behind"


# ------------------------------------------------------------------------------------------------
def test_mnist_mlp_two_processes_equal_one_and_resume_with_one(tmp_path):
    """same-fake update, no BatchNorm; the 2-process run crosses an epoch end (4 batches of 16)."""
    overrides = ["data.dataset=digits", "data.max_images=64", "train.batch_size=16"]
    train_here("mnist-mlp", *TINY, "--max-steps", "4", "--out", tmp_path / "one")  # also fills the data cache
    result = ok(torchrun("train", "mnist-mlp", *TINY, *QUIET, "--max-steps", "4", "--out", tmp_path / "two"))
    two = tmp_path / "two"
    assert_written_once(result, two, {"epoch": 1, "stop": 1, "resume": 0}, fresh=True)
    for name in ("config.json", "samples/real.png", "samples/epoch_0001.png", "generator.safetensors"):
        assert (two / name).is_file(), name
    _, meta, _ = load_tensors(two / "checkpoints" / "latest.safetensors")
    assert meta["world_size"] == 2 and meta["state"]["step"] == 4
    assert_same_weights(tmp_path / "one", two, "mnist-mlp", overrides)

    # the 2-process checkpoint continues on 1 process exactly as the 1-process run does
    train_here("--resume", two, "--max-steps", "6", "--out", tmp_path / "two-then-one")
    train_here("--resume", tmp_path / "one", "--max-steps", "6")
    assert_same_weights(tmp_path / "one", tmp_path / "two-then-one", "mnist-mlp", overrides)


def test_mnist_cgan_sync_batchnorm_through_the_console_script(tmp_path):
    """Conditional DCGAN, BatchNorm in G and D synchronised over the 2 CPU processes."""
    overrides = ["data.dataset=digits", "data.max_images=64", "train.batch_size=16", "model.g_width=8"]
    overrides.append("model.d_width=8")
    train_here("mnist-cgan", *CGAN, "--max-steps", "3", "--out", tmp_path / "one")
    script = shutil.which("ganforge", path=str(Path(sys.executable).parent))
    program = [script] if script else ["-m", "ganforge"]  # torchrun runs the console script with python
    sync = ["--set", "train.sync_batchnorm=true"]
    run = tmp_path / "two"
    result = ok(
        torchrun("train", "mnist-cgan", *CGAN, *QUIET, *sync, "--max-steps", "3", "--out", run, program=program)
    )
    assert_written_once(result, run, {"stop": 1, "epoch": 0}, fresh=True)
    assert_same_weights(tmp_path / "one", run, "mnist-cgan", overrides)
    # and on to 1 process (SyncBatchNorm falls back to BatchNorm; the checkpoint keys are the same)
    train_here("--resume", run, "--max-steps", "5", "--out", tmp_path / "two-then-one")
    train_here("--resume", tmp_path / "one", "--max-steps", "5")
    assert_same_weights(tmp_path / "one", tmp_path / "two-then-one", "mnist-cgan", overrides)


# One launch for two checks: a 1-process checkpoint of the simultaneous update continues on 2
# processes, then (same job, next command line) rank 1 fails in the middle of a run.
TWO_RUNS_THEN_FAIL = """
import shlex, sys
from ganforge.cli import main
from ganforge.training import step

if main(shlex.split(sys.argv[1])) != 0:
    sys.exit(1)

call = step.TrainStep.__call__

def failing_step(self, *args, **kwargs):
    if self.ctx.rank == 1 and self.step_count == 1:  # the second step of the failing run
        raise RuntimeError("injected failure in rank 1")
    return call(self, *args, **kwargs)

step.TrainStep.__call__ = failing_step
sys.exit(main(shlex.split(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def resumed_then_failed(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    root = tmp_path_factory.mktemp("resume-fail")
    train_here("mnist-mlp-bn", *TINY, "--max-steps", "2", "--out", root / "start")
    train_here("--resume", root / "start", "--max-steps", "4", "--out", root / "one")
    script = root / "two_runs_then_fail.py"
    script.write_text(TWO_RUNS_THEN_FAIL)
    resume = ["train", "--resume", root / "start", "--set", "train.sync_batchnorm=true", *QUIET]
    resume += ["--max-steps", "4", "--out", root / "two"]
    failing = ["train", "mnist-mlp", *TINY, *QUIET, "--max-steps", "3", "--out", root / "failing"]
    start = time.monotonic()
    result = torchrun(" ".join(map(str, resume)), " ".join(map(str, failing)), program=[str(script)])
    return root, result, time.monotonic() - start


def test_simultaneous_update_resumed_from_one_process_on_two(resumed_then_failed):
    """mnist-mlp-bn: D and G gradients from one forward (two ``backward(inputs=...)``), BatchNorm in G;
    a 1-process checkpoint continues on 2 processes (with SyncBatchNorm) exactly as on 1."""
    root, result, _ = resumed_then_failed
    assert (root / "two" / "generator.safetensors").is_file(), result.stdout + result.stderr
    assert_written_once(result, root / "two", {"resume": 1, "stop": 1}, fresh=False)
    overrides = ["data.dataset=digits", "data.max_images=64", "train.batch_size=16"]
    assert_same_weights(root / "one", root / "two", "mnist-mlp-bn", overrides)


def test_a_failing_rank_ends_the_job_with_its_message(resumed_then_failed):
    _, result, elapsed = resumed_then_failed
    assert result.returncode != 0
    assert elapsed < 90, f"the job took {elapsed:.0f}s to end"  # gloo would wait 30 min; torchrun stops it
    output = result.stdout + result.stderr
    assert "RuntimeError: injected failure in rank 1" in output
    # torchrun's summary blames rank 1 (rank 0's own one-line account may be cut short by torchrun)
    root_cause = output.split("Root Cause (first observed failure):")[-1]
    assert "rank      : 1" in root_cause and "injected failure in rank 1" in root_cause, root_cause


# ------------------------------------------------------------------------------------------------
# bad launches, checked in this process with torchrun's environment (no process group is started)


@pytest.fixture
def as_rank_1_of_2(monkeypatch):
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_request_without_a_gpu_is_a_config_error(as_rank_1_of_2):
    with pytest.raises(ConfigError, match="no CUDA GPU is visible; use --device cpu"):
        init_distributed("cuda")
    assert not torch.distributed.is_initialized()


def test_rank_errors_name_the_rank_and_reach_torchrun(as_rank_1_of_2, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    error = rank_failure(ConfigError("bad value"))
    assert str(error) == "rank 1/2: bad value"
    assert json.loads((tmp_path / "error.json").read_text())["message"]["message"] == "ConfigError: rank 1/2: bad value"
    lost = rank_failure(RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:8074"))
    assert "rank 1/2: stopped because another process failed" in str(lost)


def test_last_batch_too_small_for_the_processes_is_refused(tmp_path):
    from ganforge.training.setup import check_shards

    cfg = get_recipe("mnist-mlp")
    apply_overrides(cfg, ["data.dataset=digits", "data.max_images=65", "train.batch_size=16"])
    ctx = DistContext(rank=0, world_size=2)  # the check comes before any collective
    with pytest.raises(ConfigError, match="last batch of each epoch has 1 image"):
        check_shards(cfg, 65, ctx.world_size)
    # an uneven but non-empty last batch (2 + 1 images) is fine: rank 1's mean over 1 image weighs 1/3
    assert DistContext(rank=1, world_size=2).shard_weight(3) * 1 / 2 == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "pack,batch,images,world,drop_last,problem",
    [
        (2, 16, 64, 1, False, None),
        (2, 16, 66, 1, False, None),  # a last batch of 2: one pack
        (2, 16, 65, 1, False, r"the last batch of each epoch \(1 image\(s\) over 1"),
        (2, 16, 65, 1, True, None),  # the partial batch is dropped
        (4, 12, 48, 2, False, r"each batch \(12 image\(s\) over 2"),  # 6 per process: not whole packs of 4
        (4, 16, 48, 2, False, None),  # 8 per process
        (2, 16, 54, 2, False, r"the last batch of each epoch \(6 image\(s\) over 2"),  # 3 per process
    ],
)
def test_a_packed_d_needs_whole_packs_on_every_process(pack, batch, images, world, drop_last, problem):
    from ganforge.training.setup import check_shards

    cfg = get_recipe("mnist-mlp")
    apply_overrides(cfg, [f"train.batch_size={batch}", f"model.d_pack={pack}", f"train.drop_last={drop_last}"])
    if problem is None:
        check_shards(cfg, images, world)
    else:
        with pytest.raises(ConfigError, match=f"model.d_pack={pack} needs whole packs on every process, but {problem}"):
            check_shards(cfg, images, world)


def test_a_penalty_objective_on_two_processes_equals_one(tmp_path):
    """R1's double backward runs on the plain D (never through DDP's hooks), and the one backward of
    loss + penalty still all-reduces D's whole gradient: 2 gloo processes give the 1-process weights."""
    extra = ["--set", "loss.name=r1", "--set", "loss.r1_gamma=10"]
    overrides = ["data.dataset=digits", "data.max_images=64", "train.batch_size=16", "loss.name=r1", "loss.r1_gamma=10"]
    train_here("mnist-mlp", *TINY, *extra, "--max-steps", "3", "--out", tmp_path / "one")
    ok(torchrun("train", "mnist-mlp", *TINY, *QUIET, *extra, "--max-steps", "3", "--out", tmp_path / "two"))
    assert_same_weights(tmp_path / "one", tmp_path / "two", "mnist-mlp", overrides)


def test_under_torchrun_only_rank_zero_locks_and_one_ctrl_c_saves_once(tmp_path, capsys):
    """Issue 12: under torchrun only rank 0 takes the run lock (rank 1 training beside it proves it does not
    try), a second `train --resume` is refused naming rank 0's PID, and Ctrl-C to the whole job (as a
    terminal sends it to the process group) saves one checkpoint that both ranks agreed on, once."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "ganforge"]
    cmd += ["train", "mnist-mlp", "--epochs", "100000", "--out", str(run), *TINY, *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           start_new_session=True)  # fmt: skip
    latest = run / "checkpoints" / "latest.safetensors"
    try:
        deadline = time.time() + LAUNCH_TIMEOUT
        while not latest.exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert job.poll() is None, job.communicate()
        holder = int((run / ".lock").read_text().split()[0])
        holder_env = Path(f"/proc/{holder}/environ").read_bytes().split(b"\0")
        assert b"RANK=0" in holder_env and b"LOCAL_RANK=0" in holder_env  # rank 0's process holds it

        assert main(["train", "--resume", str(run)]) == 2
        assert f"in use by another ganforge process (PID {holder})" in capsys.readouterr().err

        os.killpg(job.pid, signal.SIGINT)
        out, err = job.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
    # torchrun's own agent ends a Ctrl-C with its SignalException traceback; none may come from a rank
    assert "src/ganforge/" not in err and "site-packages/ganforge/" not in err, err
    assert out.count(f"Resume with: ganforge train --resume {run}") == 1, out
    assert "stopped by SIGINT" in out
    stops = [r for r in records(run) if r["kind"] == "stop"]
    assert len(stops) == 1 and stops[0]["reason"] == "stopped by SIGINT", stops
    _, meta, _ = load_tensors(latest)
    assert meta["state"]["step"] == stops[0]["step"] > 0  # the save is of the step both ranks stopped at
    assert not list(run.rglob("*.tmp"))
    assert not (run / ".lock").exists()  # released with the job
