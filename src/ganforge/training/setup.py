"""Everything a run builds before its first step: networks, optimisers, EMA, wrappers, CPU kernel choices.

Initial weights depend on the seed alone: the models are built right after seeding, before anything
else draws random numbers.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganforge.config import RunConfig
from ganforge.errors import ConfigError
from ganforge.models import build_models, freeze_discriminator_blocks
from ganforge.training.distributed import DistContext, convert_sync_batchnorm
from ganforge.training.fastpath import (
    CHANNELS_LAST_ENV,
    ENV,
    Choice,
    ThreadTuner,
    baseline_cpu_threads,
    choose_channels_last,
    choose_linear,
    choose_threads,
    cpu_name,
    has_conv,
    same_results_at_any_thread_count,
    set_cpu_threads,
    threads_overridden,
    use_onednn_linear,
)
from ganforge.training.precision import bf16_native, emulation_env, kept_warning, resolve_precision
from ganforge.training.probe import THREAD_BUDGET_S, THREAD_MAX_ROUNDS, Variant, time_variants
from ganforge.training.step import Networks


@dataclass
class Setup:
    nets: Networks
    channels_last: bool  # conv models keep their weights and inputs in NHWC
    thread_tuner: ThreadTuner | None  # live choice of the CPU thread count, or None
    # what was chosen on this machine and why ({"device": ..., "precision": ..., "threads": ...}): config.json's
    # "runtime" block, the checkpoints' "runtime" meta (a resumed run keeps it) and metrics.jsonl's setup record
    choices: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # one line each, for the user at start

    @property
    def summary(self) -> str:
        """The start-up line: what was chosen and why (``describe``)."""
        return describe(self.choices)


def check_run_config(cfg: RunConfig, device: torch.device) -> None:
    """Combinations of fields that ``config.validate`` cannot judge alone (they depend on the device)."""
    tcfg = cfg.train
    if tcfg.g_update == "simultaneous" and (tcfg.d_every != 1 or tcfg.g_every != 1):
        raise ConfigError("train.g_update=simultaneous steps D and G together: d_every and g_every must be 1")
    if tcfg.precision == "bf16" and device.type == "mps":
        raise ConfigError("train.precision=bf16 is not supported on mps; use fp32")


def check_shards(cfg: RunConfig, num_images: int, world_size: int) -> None:
    """Under torchrun every rank needs images in every batch: a rank with an empty shard has no batch mean
    (the loaders can hand out empty shards; training cannot use them). With ``model.d_pack``, every rank's
    shard of every batch must be whole packs."""
    last = 0 if cfg.train.drop_last else num_images % cfg.train.batch_size
    if 0 < last < world_size:
        raise ConfigError(
            f"the last batch of each epoch has {last} image(s) for {world_size} processes, so some "
            "would get none: set --set train.drop_last=true, or change --batch-size or data.max_images"
        )
    pack = cfg.model.d_pack
    for n, which in ((cfg.train.batch_size, "each batch"), (last, "the last batch of each epoch")):
        shards = {n // world_size, -(-n // world_size)}  # DistContext.shard's sizes
        if n and any(size % pack for size in shards):
            raise ConfigError(
                f"model.d_pack={pack} needs whole packs on every process, but {which} ({n} image(s) over "
                f"{world_size} process(es)) leaves a part: change --batch-size, or set --set train.drop_last=true"
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's seeds stop at 2**32; config seeds go to 2**63
    torch.manual_seed(seed)


def build_setup(cfg: RunConfig, ctx: DistContext, previous: dict[str, Any] | None = None) -> Setup:
    """Seed, build G and D, and make them ready to train on ``ctx.device`` (see the module doc).

    Resolves ``train.precision=auto`` in ``cfg`` itself, so the run's config (and every file it is written
    to) names the precision the run trains in. ``previous``: the ``runtime`` record of the checkpoint a run
    resumes from; its kernel choices are kept (no new probe), so the resumed run rounds the same way.
    """
    check_run_config(cfg, ctx.device)
    seed_everything(cfg.train.seed)
    generator, discriminator = build_models(cfg.model)
    if cfg.train.sync_batchnorm and ctx.enabled:  # BatchNorm statistics over the global batch (also on CPU)
        generator = convert_sync_batchnorm(generator, ctx.device)
        discriminator = convert_sync_batchnorm(discriminator, ctx.device)
    kernels = _Kernels()
    if cfg.train.init_g or cfg.train.init_d:
        kernels.choices["init"] = load_initial_weights(cfg, generator, discriminator)
    if cfg.train.freeze_d_layers:  # FreezeD: their parameters stay out of D's optimiser
        freeze_discriminator_blocks(discriminator, cfg.train.freeze_d_layers)
    generator, discriminator = _choose_kernels(cfg, ctx, generator, discriminator, previous or {}, kernels)
    ema = copy.deepcopy(generator).eval().requires_grad_(False) if cfg.train.ema_decay > 0 else None
    opt_g, opt_d = _optimizers(cfg, ctx.device, generator, discriminator, kernels.channels_last)
    g_called, d_called, d_for_g = _wrap(cfg, ctx, generator, discriminator)
    nets = Networks(
        generator, discriminator, g_called, d_called, d_for_g, opt_g, opt_d, ema, _per_sample(generator, discriminator)
    )
    return Setup(nets, kernels.channels_last, kernels.thread_tuner, kernels.choices, kernels.warnings)


def load_initial_weights(cfg: RunConfig, generator: nn.Module, discriminator: nn.Module) -> dict[str, Any]:
    """train.init_g / init_d into the fresh networks; returns each source's path and sha256 for the record."""
    from ganforge.export.reference import load_reference_state_dict

    sources = {}
    for which, path, module in (("g", cfg.train.init_g, generator), ("d", cfg.train.init_d, discriminator)):
        if path:
            load_reference_state_dict(path, module, cfg.recipe, which)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            sources[which] = {"path": str(Path(path).resolve()), "sha256": digest}
    return sources


@dataclass
class _Kernels:
    """What ``_choose_kernels`` decides (becomes part of the Setup)."""

    channels_last: bool = False
    thread_tuner: ThreadTuner | None = None
    choices: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _choose_kernels(
    cfg: RunConfig,
    ctx: DistContext,
    generator: nn.Module,
    discriminator: nn.Module,
    previous: dict[str, Any],
    kernels: _Kernels,
) -> tuple[nn.Module, nn.Module]:
    """Threads, memory layout, Linear kernels and precision for this machine (fastpath.py, precision.py):
    each kept from ``previous`` unless the environment overrides it, else chosen (rules, then probes);
    on CUDA also cuDNN's algorithm choice (``choose_cudnn``)."""
    tcfg, device, choices = cfg.train, ctx.device, kernels.choices
    choices["device"] = _device_record(device)
    layout = _kept(previous, "channels_last", CHANNELS_LAST_ENV in os.environ and not tcfg.channels_last)
    layout = layout or choose_channels_last(tcfg.channels_last, device, generator, discriminator)
    choices["channels_last"] = layout
    kernels.channels_last = bool(layout.value)
    memory_format = torch.channels_last if kernels.channels_last else torch.contiguous_format
    generator = generator.to(device, memory_format=memory_format)
    discriminator = discriminator.to(device, memory_format=memory_format)

    def optimizers(g: nn.Module, d: nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        return _optimizers(cfg, device, g, d, kernels.channels_last)

    def probe(variants: dict[str, Variant], **timing: float | int) -> dict[str, float]:  # budget_s, max_rounds
        """Step seconds of each variant, probed on copies of the networks as they now stand."""
        per_sample = _per_sample(generator, discriminator)
        return time_variants(cfg, ctx, generator, discriminator, per_sample, optimizers, variants, **timing)

    def measure(variants: dict[str, Variant]) -> tuple[float, float]:
        """Step seconds of the two variants."""
        times = probe(variants)
        first, second = variants
        return times[first], times[second]

    if device.type == "cpu":  # threads first: the other probes run at the chosen count
        threads = _kept(previous, "threads", threads_overridden())
        threads = threads or _probe_threads(tcfg.batch_size, generator, discriminator, probe)
        set_cpu_threads(threads.value)
        choices["threads"] = threads
        linear = _choose_linear_kernels(tcfg, generator, discriminator, previous, measure)
        choices["linear"] = linear
        if linear.value == "onednn":
            use_onednn_linear(generator, discriminator)  # fastpath.py: MKL is slow on some CPUs
        kernels.thread_tuner = _thread_tuner(tcfg.batch_size, generator, discriminator, threads.value)
        if kernels.thread_tuner is not None:
            choices["thread_tuner"] = Choice(list(kernels.thread_tuner.counts), "same numbers at any count: tuned live")
    _choose_precision(cfg, device, previous, measure, kernels)
    cudnn = choose_cudnn(device, tcfg.deterministic, has_conv(generator, discriminator))
    if cudnn is not None:
        choices["cudnn"] = cudnn
        # restored when training ends (cuda_kernel_switches); a Python flag, it does not initialise CUDA
        torch.backends.cudnn.benchmark = cudnn.value == "benchmark"
    return generator, discriminator


def choose_cudnn(device: torch.device, deterministic: bool, convolutions: bool) -> Choice | None:
    """How cuDNN picks its convolution algorithms on CUDA (None elsewhere, or without convolutions).

    ``benchmark``: cuDNN times its algorithms for each new input shape once and keeps the fastest, which
    is a measurement on the user's GPU rather than cuDNN's shape heuristics; a run's batches have one
    shape (two with a short last batch), so the timing is paid once or twice. ``deterministic`` where the
    run asks for reproducible kernels (train.deterministic), which rules out the autotuner's choices.
    """
    if device.type != "cuda" or not convolutions:
        return None
    if deterministic:
        return Choice("deterministic", "train.deterministic=true")
    return Choice("benchmark", "autotuned per batch shape")


def _kept(previous: dict[str, Any], key: str, overridden: bool) -> Choice | None:
    """The checkpoint's record of ``key`` (a resumed run keeps it), unless the environment overrides it."""
    record = previous.get(key)
    return Choice.kept(record) if isinstance(record, dict) and "value" in record and not overridden else None


def _choose_linear_kernels(tcfg, generator: nn.Module, discriminator: nn.Module, previous, measure) -> Choice:
    if tcfg.compile:
        return Choice("blas", "torch.compile")
    if tcfg.precision == "bf16":  # explicit bf16: autocast runs its own (oneDNN) kernels for every Linear
        return Choice("blas", "bf16 autocast")
    kept = _kept(previous, "linear", os.environ.get(ENV, "auto").strip().lower() != "auto")
    return kept or choose_linear(
        generator, discriminator, lambda: measure({"blas": Variant(), "onednn": Variant(prepare=use_onednn_linear)})
    )


def _probe_threads(batch: int, generator: nn.Module, discriminator: nn.Module, probe) -> Choice:
    """fastpath.choose_threads, with the run's own step timed at each count (probe.py)."""

    def measure(counts: tuple[int, ...]) -> dict[int, float]:
        variants = {f"threads={c}": Variant(threads=c) for c in counts}
        times = probe(variants, budget_s=THREAD_BUDGET_S, max_rounds=THREAD_MAX_ROUNDS)
        return {c: times[f"threads={c}"] for c in counts}

    def tuned_live() -> bool:  # _thread_tuner checks again once the Linear kernels, which it depends on, are chosen
        return same_results_at_any_thread_count(generator, discriminator, batch, (1, baseline_cpu_threads()))

    return choose_threads(generator, discriminator, batch, measure, tuned_live)


def _thread_tuner(batch: int, generator: nn.Module, discriminator: nn.Module, threads: int) -> ThreadTuner | None:
    """Small models whose numbers do not depend on the thread count tune it live (fastpath.ThreadTuner)."""
    counts = (1, baseline_cpu_threads())
    if threads == 1 and counts[1] > 1 and not threads_overridden():
        if same_results_at_any_thread_count(generator, discriminator, batch, counts):
            return ThreadTuner(counts)
    return None


def _choose_precision(cfg: RunConfig, device: torch.device, previous, measure, kernels: _Kernels) -> None:
    """Resolve ``train.precision`` in place (precision.py); a resumed run keeps its checkpoint's record."""
    tcfg = cfg.train
    native = bf16_native(device)
    record = previous.get("precision")
    if isinstance(record, dict) and record.get("value") == tcfg.precision:  # resumed: the same precision
        choice, tf32, warning = Choice.kept(record), bool(previous.get("tf32", {}).get("value")), None
        warning = kept_warning(choice, native) if device.type == "cpu" else None
    else:
        fp32 = Variant(tf32=device.type == "cuda")
        plan = resolve_precision(
            tcfg.precision, device, native, lambda: measure({"fp32": fp32, "bf16": Variant(autocast=torch.bfloat16)})
        )
        choice, tf32, warning = plan.choice, plan.tf32, plan.warning
    tcfg.precision = choice.value
    kernels.choices["precision"] = choice
    if device.type == "cuda":
        kernels.choices["tf32"] = Choice(tf32, "fp32 matmuls on TF32 tensor cores" if tf32 else "off")
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
    if warning:
        kernels.warnings.append(warning)


def _device_record(device: torch.device) -> dict[str, Any]:
    record: dict[str, Any] = {"value": str(device)}
    if device.type == "cpu":
        record["name"] = cpu_name()
        record["capability"] = torch.backends.cpu.get_cpu_capability()
        record["bf16_native"], record["bf16"] = bf16_native(device)
        if emulation_env():
            record["emulated_by"] = emulation_env()
    elif device.type == "cuda":
        record["name"] = torch.cuda.get_device_name(device)
    return record


def runtime_record(choices: dict[str, Any]) -> dict[str, Any]:
    """``Setup.choices`` as JSON (config.json's "runtime", the checkpoints' meta, metrics.jsonl)."""
    out = {k: v.as_dict() if isinstance(v, Choice) else v for k, v in choices.items()}
    out["summary"] = describe(choices)
    return out


def describe(choices: dict[str, Any]) -> str:
    """One line: what was chosen on this machine and why, e.g. ``device cpu (AMD EPYC, AVX2) · 1 thread (small
    model: 0.56 GFLOP per batch) · precision fp32 (bf16 not native: AVX2, no AVX512_BF16/AMX) · linear BLAS
    (oneDNN 0.97x) · channels-last (conv model on the CPU)``."""
    device = choices.get("device", {})
    detail = [device.get("name", ""), device.get("capability", "")]
    if device.get("emulated_by"):
        detail.append("emulated: " + " ".join(f"{k}={v}" for k, v in device["emulated_by"].items()))
    parts = [f"device {device.get('value', '?')} ({', '.join(d for d in detail if d)})"]
    if "threads" in choices:
        n, tuned = _value(choices["threads"]), choices.get("thread_tuner")
        tuning = f"; tuned live among {_value(tuned)}" if tuned else ""
        parts.append(f"{n} thread{'s' if n != 1 else ''} ({_reason(choices['threads'])}{tuning})")
    if "precision" in choices:
        parts.append(f"precision {_value(choices['precision'])} ({_reason(choices['precision'])})")
    if "linear" in choices:
        shown = {"onednn": "oneDNN", "blas": "BLAS"}.get(_value(choices["linear"]), _value(choices["linear"]))
        parts.append(f"linear {shown} ({_reason(choices['linear'])})")
    if "cudnn" in choices:
        parts.append(f"cuDNN {_value(choices['cudnn'])} ({_reason(choices['cudnn'])})")
    layout = choices.get("channels_last")
    if layout is not None and _reason(layout) != "no convolutions":
        parts.append(f"{'channels-last' if _value(layout) else 'NCHW'} ({_reason(layout)})")
    return " · ".join(parts)


def _value(choice: Choice | dict[str, Any]) -> Any:
    return choice.value if isinstance(choice, Choice) else choice.get("value")


def _reason(choice: Choice | dict[str, Any]) -> str:
    return choice.reason if isinstance(choice, Choice) else choice.get("reason", "")


def _per_sample(generator: nn.Module, discriminator: nn.Module) -> bool:
    """Whether real and fake may share one D forward: every layer acts per image (no batch statistics, no
    dropout). Not with BatchNorm in G either: there Adam turns float noise in the zero-gradient biases before
    each BatchNorm into full-size updates, and the changed summation order would show as a departure from
    the reference step (tests/test_training.py) that is larger than rounding."""
    per_batch = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return not any(isinstance(m, per_batch) for net in (generator, discriminator) for m in net.modules())


def _optimizers(
    cfg: RunConfig, device: torch.device, generator: nn.Module, discriminator: nn.Module, channels_last: bool
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    adam = dict(betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    # fused Adam (one kernel per parameter for the whole update), else multi-tensor (foreach). On the CPU
    # fused makes mnist-mlp steps 17% faster, but it rounds differently from torch's default Adam, which
    # foreach matches; conv models spend ~1% of a CPU step in Adam, so they keep foreach there.
    fused = device.type in ("cuda", "mps") or (device.type == "cpu" and not channels_last)
    fast = {"fused": True} if fused else {"foreach": True}
    trainable_d = [p for p in discriminator.parameters() if p.requires_grad]  # FreezeD leaves some out
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.optim.lr_g, **adam, **fast)
    opt_d = torch.optim.Adam(trainable_d, lr=cfg.optim.lr_d, **adam, **fast)
    return opt_g, opt_d


def _wrap(
    cfg: RunConfig, ctx: DistContext, generator: nn.Module, discriminator: nn.Module
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D for the D phase, D for the G phase) as the steps call them: DDP under torchrun, compiled if asked."""
    g_called, d_called = generator, discriminator
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # DDP copies rank 0's buffers (BatchNorm running statistics) to the other ranks at each forward;
        # with SyncBatchNorm they are equal on every rank already.
        g_called, d_called = DDP(generator, device_ids=ids), DDP(discriminator, device_ids=ids)
    # The G phase scores fakes with the plain D: its parameter gradients are not needed (and DDP must not
    # all-reduce them), only the gradient flowing back into G.
    d_for_g = discriminator
    if cfg.train.compile:
        g_called, d_called, d_for_g = torch.compile(g_called), torch.compile(d_called), torch.compile(discriminator)
    return g_called, d_called, d_for_g


@contextlib.contextmanager
def cuda_kernel_switches(deterministic: bool) -> Iterator[None]:
    """Put torch's process-wide CUDA kernel switches back when training ends, and make CUDA pick
    deterministic kernels while it trains if ``deterministic``.

    Training may turn on cuDNN's autotuner (``choose_cudnn``); a library call must not leave it on.
    cuDNN's convolution backward and cuBLAS's split reductions sum in an order that changes from run to
    run, so two CUDA runs (or a run and its resumed copy) drift apart by rounding unless deterministic
    kernels are chosen. The CPU kernels used here are deterministic already. torch raises if an op has
    no deterministic CUDA version.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for reproducible sums
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]
