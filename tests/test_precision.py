"""Choices made on the user's machine: train.precision=auto, the CPU kernel choices, their record (start-up
line, config.json, checkpoints, metrics.jsonl), their reuse on resume, the probe's isolation, and pacing."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ganforge.checkpoint import load_meta
from ganforge.config import apply_overrides, from_dict
from ganforge.recipes import get_recipe
from ganforge.training import fastpath, setup
from ganforge.training.distributed import DistContext
from ganforge.training.fastpath import Choice, OneDNNLinear
from ganforge.training.loop import Trainer
from ganforge.training.pacing import Pacer
from ganforge.training.precision import BF16_MARGIN, cpu_bf16_native, resolve_precision
from ganforge.training.probe import Variant, time_variants
from ganforge.training.state import load_resume_config

SRC = Path(__file__).resolve().parents[1] / "src"
CPU = torch.device("cpu")
AVX512_BF16 = {"avx2", "avx512f", "avx512_bf16"}


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- what counts as native bf16 --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags,capability,env,machine,native",
    [
        ({"avx2"}, "AVX2", {}, "x86_64", False),  # Zen 3: no BF16 at all
        ({"avx2", "avx512f"}, "AVX512", {}, "x86_64", False),  # AVX-512 without BF16 (Skylake, Zen 3 has none)
        (AVX512_BF16, "AVX512", {}, "x86_64", True),  # Zen 4/5, Cooper Lake
        ({"avx2", "amx_bf16"}, "AVX512", {}, "x86_64", True),  # AMX (Sapphire Rapids)
        (AVX512_BF16, "AVX2", {}, "x86_64", False),  # ATEN_CPU_CAPABILITY=avx2 on a BF16 machine
        (AVX512_BF16, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "x86_64", False),  # oneDNN capped
        (AVX512_BF16, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "x86_64", True),  # a cap above BF16
        ({"fp", "asimd", "bf16"}, "DEFAULT", {}, "aarch64", True),  # Arm with the BF16 extension
        ({"fp", "asimd"}, "DEFAULT", {}, "arm64", False),
    ],
)
def test_native_bf16_needs_the_instructions_and_kernels_allowed_to_use_them(flags, capability, env, machine, native):
    got, why = cpu_bf16_native(flags, capability, env, machine)
    assert got is native and why


# --- the resolution rules, with the probe's measurement injected ---------------------------------------------
class Measure:
    def __init__(self, fp32: float, bf16: float) -> None:
        self.times, self.calls = (fp32, bf16), 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        return self.times


def test_auto_on_a_cpu_without_native_bf16_is_fp32_without_probing():
    measure = Measure(1.0, 0.1)  # even a probe claiming bf16 is faster is not asked
    plan = resolve_precision("auto", CPU, (False, "AVX2, no AVX512_BF16/AMX"), measure)
    assert plan.choice.value == "fp32" and "not native" in plan.choice.reason and plan.choice.requested == "auto"
    assert measure.calls == 0 and plan.warning is None


@pytest.mark.parametrize(
    "speedup,expected", [(1.6, "bf16"), (BF16_MARGIN + 0.01, "bf16"), (1.02, "fp32"), (0.7, "fp32")]
)
def test_auto_on_a_native_bf16_cpu_takes_bf16_only_where_the_probe_finds_it_faster(speedup, expected):
    measure = Measure(speedup, 1.0)
    plan = resolve_precision("auto", CPU, (True, "AVX512_BF16"), measure)
    assert measure.calls == 1 and plan.choice.value == expected and not plan.tf32


def test_explicit_bf16_without_native_support_trains_bf16_and_warns_with_the_measured_slowdown():
    plan = resolve_precision("bf16", CPU, (False, "AVX2, no AVX512_BF16/AMX"), Measure(0.05, 0.64))
    assert plan.choice.value == "bf16"
    assert plan.warning.startswith("warning: ") and "12.8x slower" in plan.warning and "\n" not in plan.warning
    native = resolve_precision("bf16", CPU, (True, "AVX512_BF16"), Measure(1.0, 1.0))
    assert native.choice.value == "bf16" and native.warning is None


def test_explicit_fp32_is_never_probed_and_cuda_auto_takes_the_faster():
    measure = Measure(1.0, 0.5)
    assert resolve_precision("fp32", CPU, (True, "x"), measure).choice.value == "fp32" and measure.calls == 0
    cuda = torch.device("cuda", 0)
    slower_bf16 = resolve_precision("auto", cuda, (True, "H100"), Measure(1.0, 1.2))
    assert slower_bf16.choice.value == "fp32" and slower_bf16.tf32  # fp32 with TF32 matmuls
    assert resolve_precision("auto", cuda, (True, "H100"), Measure(1.0, 0.5)).choice.value == "bf16"
    assert resolve_precision("auto", torch.device("mps"), (False, "mps"), measure).choice.value == "fp32"


def test_cudnn_is_autotuned_on_cuda_conv_runs_unless_deterministic_and_named_in_the_start_up_line():
    cuda = torch.device("cuda", 0)
    assert setup.choose_cudnn(CPU, False, True) is None and setup.choose_cudnn(cuda, False, False) is None
    assert setup.choose_cudnn(cuda, False, True).value == "benchmark"
    assert setup.choose_cudnn(cuda, True, True).value == "deterministic"
    line = setup.describe({"device": {"value": "cuda:0"}, "cudnn": setup.choose_cudnn(cuda, False, True)})
    assert "cuDNN benchmark (autotuned per batch shape)" in line


def test_training_leaves_cudnn_autotuning_as_it_found_it():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not before  # whatever the caller set is what comes back
    try:
        with setup.cuda_kernel_switches(deterministic=True):
            assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark is (not before)
        with setup.cuda_kernel_switches(deterministic=False):
            torch.backends.cudnn.benchmark = before  # what choose_cudnn's caller does on CUDA
        assert torch.backends.cudnn.benchmark is (not before)
    finally:
        torch.backends.cudnn.benchmark = before


# --- under AVX2 emulation, in a fresh process -----------------------------------------------------------
EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.skipif(not fastpath.is_x86(), reason="AVX2 emulation is an x86 setting")
def test_auto_resolves_to_fp32_under_avx2_emulation(tmp_path):
    """What a run chooses when the kernels are capped at AVX2 (how an AVX-512-BF16 machine computes like a Zen 3):
    the run's own setup in a subprocess with those variables, so this means something on any x86 CI machine."""
    code = (
        "import json, sys\n"
        "from ganforge.config import apply_overrides\n"
        "from ganforge.recipes import get_recipe\n"
        "from ganforge.training.distributed import DistContext\n"
        "from ganforge.training.loop import Trainer\n"
        "cfg = get_recipe('digits-quick')\n"
        "apply_overrides(cfg, ['data.max_images=64', 'train.progress=false', 'train.device=cpu'])\n"
        "trainer = Trainer(cfg, DistContext(), __import__('pathlib').Path(sys.argv[1]))\n"
        "print(json.dumps({'precision': cfg.train.precision, 'runtime': trainer.runtime}))\n"
    )
    env = {**os.environ, **EMULATE_AVX2, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runtime = out["runtime"]
    assert get_recipe("digits-quick").train.precision == "auto"
    assert out["precision"] == "fp32" and runtime["precision"]["value"] == "fp32"
    assert "not native" in runtime["precision"]["reason"] and runtime["device"]["capability"] == "AVX2"
    assert runtime["device"]["emulated_by"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert "emulated" in runtime["summary"]


# --- the probe is invisible to the run --------------------------------------------------------------------
def _rng_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def test_the_probe_leaves_weights_optimisers_and_rng_streams_untouched():
    cfg = get_recipe("digits-quick")
    apply_overrides(cfg, ["train.batch_size=8", "train.precision=fp32"])
    built = setup.build_setup(cfg, DistContext())
    nets = built.nets
    x = torch.randn(8, 1, 28, 28)
    nets.opt_d.zero_grad()
    nets.discriminator_core(x, torch.zeros(8, dtype=torch.long)).mean().backward()
    nets.opt_d.step()  # the run's optimiser has state to disturb
    before_weights = {
        k: v.clone() for m in (nets.generator_core, nets.discriminator_core) for k, v in m.state_dict().items()
    }
    before_adam = [t.clone() for s in nets.opt_d.state.values() for t in s.values()]
    rng_before = _rng_states()
    copies = []

    def keep(g: nn.Module, d: nn.Module) -> None:
        copies.append((g, {k: v.clone() for k, v in g.state_dict().items()}))

    def optimizers(g, d):
        return torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())

    times = time_variants(
        cfg, DistContext(), nets.generator_core, nets.discriminator_core, False, optimizers,
        {"a": Variant(prepare=keep), "b": Variant()}, budget_s=0.05,
    )  # fmt: skip
    assert set(times) == {"a", "b"} and all(0 < t < 60 for t in times.values())
    copy_g, copy_start = copies[0]
    assert any(not torch.equal(v, copy_start[k]) for k, v in copy_g.state_dict().items()), "the probe trained nothing"
    after = {k: v for m in (nets.generator_core, nets.discriminator_core) for k, v in m.state_dict().items()}
    assert all(torch.equal(before_weights[k], after[k]) for k in before_weights)
    assert all(
        torch.equal(a, b) for a, b in zip(before_adam, [t for s in nets.opt_d.state.values() for t in s.values()])
    )
    rng_after = _rng_states()
    assert torch.equal(rng_before[0], rng_after[0]) and rng_before[1] == rng_after[1]
    assert np.array_equal(rng_before[2], rng_after[2])


def test_the_probe_reads_each_variant_by_its_median_round_not_one_lucky_one(monkeypatch):
    """A one-off fast round (single steps on a shared VM vary both ways) must not decide."""
    import ganforge.training.probe as probe

    # per variant: the warm-up step, the estimate step, then three timed rounds
    seconds = {"a": iter([9.0, 1.0, 0.1, 1.0, 1.0]), "b": iter([9.0, 0.5, 0.6, 0.5, 0.5])}
    named = {}

    def scripted_run(step, variant, x, y, repeats, device):
        return next(seconds[named[id(variant)]])

    monkeypatch.setattr(probe, "_run", scripted_run)
    cfg = get_recipe("digits-quick")
    apply_overrides(cfg, ["train.batch_size=8", "train.precision=fp32"])
    nets = setup.build_setup(cfg, DistContext()).nets
    variants = {"a": Variant(), "b": Variant()}
    named.update({id(v): name for name, v in variants.items()})

    def optimizers(g, d):
        return torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())

    times = time_variants(
        cfg, DistContext(), nets.generator_core, nets.discriminator_core, False, optimizers, variants,
        budget_s=60.0, max_rounds=3,
    )  # fmt: skip
    assert times == {"a": 1.0, "b": 0.5}  # the fastest round would have said a (0.1) beats b (0.5)


# --- the record and resume ----------------------------------------------------------------------------
def _fake_probe(times: dict[str, float]):
    def probe(cfg, ctx, g, d, per_sample, optimizers, variants, **_):
        # thread counts (probed only where torch has more than one) all alike: the run keeps one thread
        return {name: times.get(name, 1.0) if name.startswith("threads=") else times[name] for name in variants}

    return probe


def _no_probe(*args, **kwargs):
    raise AssertionError("a resumed run must not probe again")


def _tiny(recipe: str, *extra: str):
    cfg = get_recipe(recipe)
    apply_overrides(cfg, ["data.dataset=digits", "data.max_images=32", "train.batch_size=16", "train.progress=false"])
    apply_overrides(cfg, ["train.device=cpu", "train.epochs=2", "train.max_steps=2", *extra])
    return cfg


def test_a_probed_thread_count_is_named_recorded_and_kept_on_resume(tmp_path, monkeypatch, capsys):
    """A small conv model whose probe measures two threads 2x faster than one trains on two; its resume on a
    one-core machine keeps two threads (and so its rounding) without probing again."""
    monkeypatch.delenv("GANFORGE_CPU_THREADS", raising=False)  # conftest's pin: the choice itself is tested here
    monkeypatch.setattr(fastpath, "baseline_cpu_threads", lambda: 2)
    monkeypatch.setattr(setup, "time_variants", _fake_probe({"threads=1": 1.0, "threads=2": 0.5}))
    run = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        Trainer(_tiny("digits-quick"), DistContext(), run).run()
        line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("device cpu"))
        assert "2 threads (small model:" in line and "2.00x one thread" in line, line
        threads = json.loads((run / "config.json").read_text())["runtime"]["threads"]
        assert threads["value"] == 2 and threads["speedup"] == 2.0

        monkeypatch.setattr(fastpath, "baseline_cpu_threads", lambda: 1)
        monkeypatch.setattr(setup, "time_variants", _no_probe)
        checkpoint, resumed_cfg = load_resume_config(run)
        apply_overrides(resumed_cfg, ["train.max_steps=4"])
        Trainer(resumed_cfg, DistContext(), resume=checkpoint)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_choices_are_recorded_named_at_start_and_kept_on_resume(tmp_path, monkeypatch, capsys):
    """A first run on a 'BF16 machine' (measured bf16 and oneDNN faster) of a conv recipe; its resume on a machine
    whose own rules and probes would choose otherwise keeps every choice, without probing."""
    monkeypatch.delenv("GANFORGE_CPU_THREADS", raising=False)  # conftest's pin: the choice itself is tested here
    monkeypatch.setattr(setup, "bf16_native", lambda device: (True, "test BF16"))
    monkeypatch.setattr(setup, "time_variants", _fake_probe({"fp32": 2.0, "bf16": 1.0, "blas": 1.0, "onednn": 1.0}))
    run = tmp_path / "run"
    cfg = _tiny("digits-quick")
    trainer = Trainer(cfg, DistContext(), run)
    trainer.run()
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("device cpu"))
    for named in ("precision bf16 (test BF16: 2.00x fp32)", "1 thread (small model", "linear BLAS", "channels-last"):
        assert named in line, (named, line)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["precision"] == "bf16" and config["runtime"]["precision"]["requested"] == "auto"
    assert config["runtime"]["summary"] == line
    assert from_dict(config).train.precision == "bf16"  # config.json stays a loadable config
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "setup" and first["runtime"] == config["runtime"]
    meta, _ = load_meta(run / "checkpoints" / "latest.safetensors")
    assert meta["runtime"] == config["runtime"] and meta["config"]["train"]["precision"] == "bf16"

    # the machine the run resumes on: no native bf16, more threads, no channels-last rule, a probe never asked
    monkeypatch.setattr(setup, "bf16_native", lambda device: (False, "AVX2, no AVX512_BF16/AMX"))
    monkeypatch.setattr(setup, "time_variants", _no_probe)
    monkeypatch.setattr(fastpath, "SMALL_STEP_FLOPS", 0.0)
    monkeypatch.setattr(fastpath, "baseline_cpu_threads", lambda: 3)
    monkeypatch.setattr(setup, "choose_channels_last", lambda *a: Choice(False, "test"))
    checkpoint, resumed_cfg = load_resume_config(run)
    apply_overrides(resumed_cfg, ["train.max_steps=4"])
    resumed = Trainer(resumed_cfg, DistContext(), resume=checkpoint)
    assert torch.get_num_threads() == 1 and resumed.setup.channels_last
    assert resumed.step.autocast_dtype is torch.bfloat16 and resumed.cfg.train.precision == "bf16"
    resumed.run()
    out = capsys.readouterr().out
    assert "kept from the checkpoint" in out and "warning: this run trains in bf16 (kept" in out
    runtime = json.loads((run / "config.json").read_text())["runtime"]
    assert runtime["threads"]["value"] == 1 and runtime["precision"]["requested"] == "auto"
    records = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["kind"] == "resume"][0]["runtime"] == runtime


@pytest.mark.skipif(not fastpath._onednn_available(), reason="this PyTorch build has no oneDNN linear")
def test_a_measured_linear_choice_is_kept_on_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(fastpath.ENV, "auto")
    monkeypatch.setattr(fastpath, "_cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(fastpath, "is_x86", lambda: True)
    monkeypatch.setattr(setup, "time_variants", _fake_probe({"blas": 2.0, "onednn": 1.0}))
    run = tmp_path / "run"
    trainer = Trainer(_tiny("mnist-mlp"), DistContext(), run)
    assert any(type(m) is OneDNNLinear for m in trainer.nets.generator_core.modules())
    trainer.run()
    assert "linear oneDNN (2.00x)" in capsys.readouterr().out
    monkeypatch.setattr(setup, "time_variants", _fake_probe({"blas": 1.0, "onednn": 2.0}))  # now BLAS would win
    checkpoint, cfg = load_resume_config(run)
    resumed = Trainer(cfg, DistContext(), resume=checkpoint)
    assert any(type(m) is OneDNNLinear for m in resumed.nets.generator_core.modules())
    assert resumed.runtime["linear"]["value"] == "onednn"
    fresh = Trainer(_tiny("mnist-mlp"), DistContext(), tmp_path / "fresh")  # a new run measures anew
    assert not any(type(m) is OneDNNLinear for m in fresh.nets.generator_core.modules())


def test_the_linear_rule_and_environment_overrides(monkeypatch):
    g, d = setup.build_models(get_recipe("mnist-quick").model)  # conv model: Linear a small share, not probed
    monkeypatch.setattr(fastpath, "_cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(fastpath, "is_x86", lambda: True)
    choice = fastpath.choose_linear(g, d, _no_probe)
    assert "not probed" in choice.reason
    monkeypatch.setenv(fastpath.ENV, "blas")
    assert fastpath.choose_linear(g, d, _no_probe).value == "blas"
    monkeypatch.setattr(fastpath, "_cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setenv(fastpath.ENV, "auto")
    mlp_g, mlp_d = setup.build_models(get_recipe("mnist-mlp").model)
    assert fastpath.choose_linear(mlp_g, mlp_d, _no_probe).value == "blas"  # MKL on Intel: no probe


# --- pacing of the epoch ends -----------------------------------------------------------------------------
def test_pacer_keeps_a_task_under_its_share_of_the_time():
    now = [0.0]
    pacer = Pacer(share=0.1, min_interval=2.0, clock=lambda: now[0])
    assert pacer.due()  # the first time always
    with pacer.timed():
        now[0] += 1.0  # the task takes 1 s: the next may come 9 s after it ended
    now[0] += 5.0
    assert not pacer.due()
    now[0] += 4.0
    assert pacer.due()
    with pacer.timed():
        now[0] += 0.01  # a cheap task is still held to min_interval
    now[0] += 1.0
    assert not pacer.due()
    now[0] += 1.0
    assert pacer.due()


def test_a_stop_saves_latest_even_where_pacing_skipped_the_epoch_end(tmp_path):
    cfg = _tiny("mnist-mlp", "train.epochs=3", "train.max_steps=4", "train.precision=fp32")  # 2 steps per epoch
    trainer = Trainer(cfg, DistContext(), tmp_path / "run")
    trainer._latest_pacer.due = lambda: False  # a checkpoint that costs too much to write every epoch
    saved = []
    original = trainer._save_checkpoint
    trainer._save_checkpoint = lambda path: (saved.append((path.name, trainer.state.step)), original(path))
    result = trainer.run()
    assert result.stopped_early.startswith("reached --max-steps")
    assert ("latest.safetensors", 2) not in saved and ("latest.safetensors", 4) in saved
    meta, _ = load_meta(tmp_path / "run" / "checkpoints" / "latest.safetensors")
    assert meta["state"]["step"] == 4 and meta["state"]["epoch"] == 2
