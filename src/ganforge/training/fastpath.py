"""Kernel choices for training on a CPU, made once per run from the hardware; the maths stays the same.

fp32 ``nn.Linear`` on x86 CPUs that are not Intel's: PyTorch sends fp32 matrix products to MKL's
``sgemm``, which on other vendors' CPUs runs a slower code path (measured on a 2-core AMD EPYC with
AVX-512: about 90 GFLOP/s per core, against about 190 for the same products through oneDNN, the
library PyTorch already uses for its convolutions). ``use_onednn_linear`` switches the Linear layers
of a model to ``OneDNNLinear``, which computes the forward and both gradients with oneDNN's fp32 matmul
(products too small to gain stay with MKL). Same parameters, same state_dict, same results up to
float rounding (the summation order differs).

``GANFORGE_CPU_LINEAR`` overrides the choice: ``onednn``, ``blas`` (PyTorch's own), or ``auto`` (the
default, ``choose_linear``): BLAS on Intel CPUs (MKL is Intel's own) and off x86; on other x86 CPUs a short
timed probe of the run's own training step with each (probe.py) when Linear layers carry a real share of
the model's FLOPs, since the vendor rule held on a Zen 5 with AVX-512 (oneDNN 2x) but not on a Zen 3 with
AVX2 (MKL and oneDNN within 10% of each other there); oneDNN must be ``LINEAR_MARGIN`` faster to be used.
Models whose Linear layers are a small share (the conv recipes) keep the vendor rule (``onednn_linear_wanted``).

Channels-last on the CPU: conv models train channels-last there (``train.channels_last`` forces it on
other devices too); ``GANFORGE_CPU_CHANNELS_LAST=0`` keeps the default layout, for comparisons.

Threads on the CPU: larger models (``SMALL_STEP_FLOPS`` forward FLOPs of G and D per batch or more) keep
torch's thread count. A small model's step (mnist-mlp, mnist-mlp-bn, mnist-quick, digits-*) is probed: a
short timed run of its own training step at one thread and at more (2, 4 and torch's count, up to torch's
count), and more threads are used only where they are ``THREAD_MARGIN`` faster than one. No rule fits every
machine here: on an idle 2-core Zen 3 (AVX2) two threads gave mnist-quick 1.57x, digits-quick 1.3x and
mnist-mlp-bn 1.3x, while when anything else runs on the machine, OpenMP threads that wait for a
descheduled partner make every operation 4-8 times slower (measured: mnist-mlp 5,700 -> 1,150 images/s
with two threads, while one thread kept 5,100), so a probe on a busy machine keeps one. The margin is
there because a count fixed at the start cannot react when the machine gets busy later.
A small model whose results are bit-identical at any thread count (checked at start:
``same_results_at_any_thread_count``; true for mnist-mlp) is not probed: it starts on one thread and
``ThreadTuner`` switches between one thread and torch's count while it trains, by measured step time.
The choice is recorded in the checkpoint, and a resumed run sets the recorded count (and so rounds the
same way) even on a machine whose own probe would differ. ``GANFORGE_CPU_THREADS=N`` (or
``OMP_NUM_THREADS``) sets the count instead.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Choice:
    """One run-time choice and why it was made: recorded in config.json, checkpoints and metrics.jsonl."""

    value: Any
    reason: str  # short, for the start-up line
    speedup: float | None = None  # measured: the alternative's step time / the chosen variant's (> 1: chosen faster)
    requested: str | None = None  # what the config asked for, where that was a request to resolve ("auto")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def kept(cls, record: dict[str, Any]) -> Choice:
        """The choice a checkpoint recorded, reused by a resumed run (no new measurement)."""
        reason = record.get("reason", "")
        reason = reason if reason.startswith("kept") else f"kept from the checkpoint: {reason}"
        return cls(record["value"], reason, record.get("speedup"), record.get("requested"))


# --- the CPU itself --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Instruction-set flags of this CPU: x86 ``flags``, Arm ``Features`` (lower case); on macOS, ``bf16``
    from sysctl's FEAT_BF16 (Apple M2 and later)."""
    info = _cpuinfo()
    flags = set((info.get("flags", "") + " " + info.get("Features", "")).lower().split())
    if platform.system() == "Darwin":
        import subprocess

        probe = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        if probe.stdout.strip() == "1":
            flags.add("bf16")
    return frozenset(flags)


def cpu_name() -> str:
    """The CPU's model name as lscpu shows it (e.g. "AMD EPYC"), or the platform's processor string."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


ENV = "GANFORGE_CPU_LINEAR"
# Products smaller than this many multiply-adds stay with MKL: oneDNN's per-call overhead (~10 us) wins there.
_MIN_MACS = 1 << 21
_MIN_OUT_FEATURES = 8  # a Linear(., 1) head is a matrix-vector product: nothing to win


LINEAR_MARGIN = 1.1  # oneDNN must make the probed step this much faster: a kernel switch changes rounding
LINEAR_SHARE = 0.25  # Linear layers below this share of the forward FLOPs are not worth a probe


def _cpu_vendor() -> str:
    return _cpuinfo().get("vendor_id", "")


def _onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_wanted() -> bool:
    """The rule without a measurement: ``GANFORGE_CPU_LINEAR``, else oneDNN on non-Intel x86 CPUs with AVX-512
    (measured 2x on a Zen 5; never measured faster on AVX2). ``choose_linear`` probes where it matters."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice == "blas" or not _onednn_available():
        return False
    if choice == "onednn":
        return True
    avx512 = "AVX512" in torch.backends.cpu.get_cpu_capability()
    return is_x86() and avx512 and _cpu_vendor() not in ("GenuineIntel", "")


def choose_linear(generator: nn.Module, discriminator: nn.Module, measure: Callable[[], tuple[float, float]]) -> Choice:
    """fp32 Linear kernels for this run: "onednn" or "blas" and why (module docstring). ``measure()`` returns the
    probed step seconds (with BLAS, with oneDNN); it is called only where the rules cannot decide."""
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice in ("blas", "onednn") or not _onednn_available():
        value = "onednn" if choice == "onednn" and _onednn_available() else "blas"
        return Choice(value, f"{ENV}={choice}" if choice != "auto" else "no oneDNN in this PyTorch")
    if not is_x86() or _cpu_vendor() in ("GenuineIntel", ""):
        return Choice("blas", "MKL on Intel" if _cpu_vendor() == "GenuineIntel" else "not x86")
    total_flops, linear_flops = _forward_counts(generator, discriminator, 1)
    share = linear_flops / max(total_flops, 1.0)
    if share < LINEAR_SHARE:
        value = "onednn" if onednn_linear_wanted() else "blas"
        return Choice(value, f"Linear {share:.0%} of the FLOPs, not probed")
    t_blas, t_onednn = measure()
    speedup = t_blas / t_onednn
    if speedup >= LINEAR_MARGIN:
        return Choice("onednn", f"{speedup:.2f}x", round(speedup, 3))
    return Choice("blas", f"oneDNN {speedup:.2f}x", round(1 / speedup, 3))


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b_t.T (+ bias)``: oneDNN for products worth it, else ``torch.addmm``/``mm``. Both operands
    may be transposed views: oneDNN reads the strides, so no copy is made."""
    m, k = a.shape
    if m * k * b_t.shape[0] >= _MIN_MACS:
        return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")
    return torch.addmm(bias, a, b_t.t()) if bias is not None else a.mm(b_t.t())


class _OneDNNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)  # [m, n]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # [m, k], [n, k]
        grad = grad.contiguous()  # [m, n]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(grad, weight.t())  # [m, k] = grad @ weight
        if ctx.needs_input_grad[1]:
            grad_w = _mm(grad.t(), x.t())  # [n, k] = grad.T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)  # [n]
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU products run through oneDNN; anything else falls back to ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() >= 2
            and not torch.is_autocast_enabled("cpu")
        ):
            flat = x.reshape(-1, x.shape[-1]).contiguous()  # [m, in]
            out = _OneDNNLinearFn.apply(flat, self.weight, self.bias)  # [m, out]
            return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, self.weight, self.bias)


def use_onednn_linear(*modules: nn.Module) -> int:
    """Switch every plain ``nn.Linear`` (with enough outputs) in ``modules`` to ``OneDNNLinear``;
    returns how many. Parameters, buffers and state_dict keys are untouched."""
    count = 0
    for module in modules:
        for m in module.modules():
            if type(m) is nn.Linear and _switchable(m):
                m.__class__ = OneDNNLinear
                count += 1
    return count


def _switchable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.out_features >= _MIN_OUT_FEATURES


THREADS_ENV = "GANFORGE_CPU_THREADS"
SMALL_STEP_FLOPS = 1.5e9  # forward FLOPs of G and D over one batch
_BASELINE_THREADS: int | None = None  # torch's thread count before ganforge first changed it


def forward_flops(generator: nn.Module, discriminator: nn.Module, batch: int) -> float:
    """FLOPs of one forward of G and D over ``batch`` images (counted on 2 images, in eval mode, no grad)."""
    return _forward_counts(generator, discriminator, batch)[0]


def _forward_counts(generator: nn.Module, discriminator: nn.Module, batch: int) -> tuple[float, float]:
    """(all FLOPs, FLOPs in the Linear layers ``use_onednn_linear`` would switch) of one forward of G and D
    over ``batch`` images; the Linear count from the layers' shapes as they run."""
    from torch.utils.flop_counter import FlopCounterMode

    linear = [0.0]

    def count(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        rows = inputs[0].numel() // module.in_features
        linear[0] += 2.0 * rows * module.in_features * module.out_features

    layers = [m for net in (generator, discriminator) for m in net.modules() if _switchable(m)]
    hooks = [m.register_forward_hook(count) for m in layers]
    modes = [m.training for m in (generator, discriminator)]
    generator.eval(), discriminator.eval()  # BatchNorm must not update its running statistics here
    try:
        device = next(generator.parameters()).device
        n = 2 * discriminator.pack  # whole packs for a PacGAN D
        z = torch.zeros(n, generator.latent_dim, device=device)
        labels = torch.zeros(n, dtype=torch.long, device=device) if generator.num_classes > 0 else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            discriminator(generator(z, labels), labels)
    finally:
        generator.train(modes[0]), discriminator.train(modes[1])
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() / n * batch, linear[0] / n * batch


THREAD_MARGIN = 1.1  # more threads must beat one by this much: a count fixed at the start cannot react to load


def thread_counts_to_probe() -> tuple[int, ...]:
    """The intra-op thread counts a small model's step is probed at: 1, 2, 4 and torch's own, up to torch's."""
    baseline = baseline_cpu_threads()
    return tuple(sorted({c for c in (1, 2, 4, baseline) if c <= baseline}))


def choose_threads(
    generator: nn.Module,
    discriminator: nn.Module,
    batch: int,
    measure: Callable[[tuple[int, ...]], dict[int, float]],
    tuned_live: Callable[[], bool] = lambda: False,
) -> Choice:
    """The intra-op thread count to train with on the CPU (the count itself, for the record) and why.

    ``measure(counts)`` returns the probed step seconds at each count; ``tuned_live()`` says whether
    ``ThreadTuner`` will choose while training instead (then the run starts on one thread, unprobed)."""
    choice = os.environ.get(THREADS_ENV, "auto").strip().lower()
    if choice != "auto":
        return Choice(max(1, int(choice)), f"{THREADS_ENV}={choice}")
    if os.environ.get("OMP_NUM_THREADS"):
        return Choice(baseline_cpu_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    flops = forward_flops(generator, discriminator, batch)
    if flops >= SMALL_STEP_FLOPS:
        return Choice(baseline_cpu_threads(), "torch's default")
    size = f"small model: {flops / 1e9:.2g} GFLOP per batch"
    counts = thread_counts_to_probe()
    if len(counts) == 1 or tuned_live():
        return Choice(1, size if len(counts) > 1 else f"{size}, one core")
    seconds = measure(counts)
    best_more = min(counts[1:], key=lambda c: seconds[c])
    speedup = seconds[1] / seconds[best_more]  # > 1: more threads faster
    if speedup < THREAD_MARGIN:
        return Choice(1, f"{size}; {best_more} threads {speedup:.2f}x", round(1 / speedup, 3))
    return Choice(best_more, f"{size}; {speedup:.2f}x one thread", round(speedup, 3))


def threads_overridden() -> bool:
    """Whether the environment fixes the thread count (then it wins over a checkpoint's record too)."""
    return os.environ.get(THREADS_ENV, "auto").strip().lower() != "auto" or bool(os.environ.get("OMP_NUM_THREADS"))


def baseline_cpu_threads() -> int:
    """torch's intra-op thread count before ganforge first changed it."""
    global _BASELINE_THREADS
    if _BASELINE_THREADS is None:
        _BASELINE_THREADS = torch.get_num_threads()
    return _BASELINE_THREADS


def set_cpu_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None restores the count torch had before ganforge changed it."""
    baseline = baseline_cpu_threads()  # captured before the first change
    target = threads if threads is not None else baseline
    if torch.get_num_threads() != target:
        torch.set_num_threads(target)


def same_results_at_any_thread_count(generator: nn.Module, discriminator: nn.Module, batch: int, counts) -> bool:
    """Whether a G and D forward and backward over ``batch`` (and ``2 * batch``, the merged real+fake
    forward) gives bit-identical outputs and gradients at every thread count in ``counts``. True for the
    MLP recipes here (oneDNN's matmuls do not split their sums over threads at these sizes); convolutions
    and BatchNorm do, so models with either are not checked."""
    if has_conv(generator, discriminator) or any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for net in (generator, discriminator) for m in net.modules()
    ):
        return False
    before = torch.get_num_threads()
    runs = []
    try:
        for count in counts:
            torch.set_num_threads(count)
            g, d = copy.deepcopy(generator), copy.deepcopy(discriminator)
            rng = torch.Generator().manual_seed(0)
            z = torch.randn(batch, g.latent_dim, generator=rng)  # [b, nz]
            labels = torch.randint(g.num_classes, (batch,), generator=rng) if g.num_classes > 0 else None
            x = g(z, labels)  # [b, C, H, W]
            both = d(torch.cat([x, x.detach().flip(0)]), None if labels is None else torch.cat([labels, labels]))
            out = d(x, labels)
            (out.square().mean() + both.square().mean()).backward()
            runs.append([out.detach(), both.detach()] + [p.grad for p in (*g.parameters(), *d.parameters())])
    finally:
        torch.set_num_threads(before)
    same = [a is b is None or (a is not None and b is not None and torch.equal(a, b))  # frozen params: no grad
            for run in runs[1:] for a, b in zip(runs[0], run, strict=True)]  # fmt: skip
    return all(same)


class ThreadTuner:
    """Picks, while training runs, the faster of some intra-op thread counts, for models whose results do
    not depend on the count (``same_results_at_any_thread_count``), so switching changes no number.

    Every ``period`` steps it runs ``probe`` steps at each count (after one unmeasured step to settle)
    and keeps the count with the lower median step time until the next probe: two threads on an idle
    machine, one while other processes keep a core busy (where two threads run 4-8x slower).
    Call ``tick()`` after every training step.
    """

    def __init__(self, counts: tuple[int, ...], probe: int = 6, period: int = 400) -> None:
        self.counts, self.probe, self.period = counts, probe, max(period, (probe + 1) * len(counts) + 1)
        self.chosen = counts[0]
        self._step = 0
        self._last: float | None = None
        self._measuring: int | None = None  # the thread count of the step now running, if it is measured
        self._times: dict[int, list[float]] = {c: [] for c in counts}

    def tick(self) -> None:
        now = time.perf_counter()
        if self._measuring is not None and self._last is not None:
            self._times[self._measuring].append(now - self._last)
        self._last = now
        block = self.probe + 1
        position = self._step % self.period
        self._step += 1
        if position < block * len(self.counts):
            count = self.counts[position // block]
            self._measuring = count if position % block else None  # the first step at a new count settles
            set_cpu_threads(count)
            return
        if position == block * len(self.counts):  # the probe just ended: keep the fastest
            self.chosen = min(self.counts, key=lambda c: statistics.median(self._times[c] or [float("inf")]))
            self._times = {c: [] for c in self.counts}
        self._measuring = None
        set_cpu_threads(self.chosen)


CHANNELS_LAST_ENV = "GANFORGE_CPU_CHANNELS_LAST"


def cpu_channels_last_wanted(*modules: nn.Module) -> bool:
    """Whether conv models should train channels-last on the CPU (measured faster in docs/performance.md, with
    AVX-512 and with AVX2)."""
    if os.environ.get(CHANNELS_LAST_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return has_conv(*modules)


def choose_channels_last(forced: bool, device: torch.device, *modules: nn.Module) -> Choice:
    """The memory layout of a run's conv models (True: NHWC) and why."""
    if forced:
        return Choice(True, "train.channels_last=true")
    if device.type != "cpu" or not has_conv(*modules):
        return Choice(False, "no convolutions" if not has_conv(*modules) else f"default on {device.type}")
    if cpu_channels_last_wanted(*modules):
        return Choice(True, "conv model on the CPU")
    return Choice(False, f"{CHANNELS_LAST_ENV}={os.environ.get(CHANNELS_LAST_ENV)}")


def has_conv(*modules: nn.Module) -> bool:
    """Whether any module holds a 2D (transposed) convolution (channels-last applies to those)."""
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for module in modules for m in module.modules())
