"""``train.precision=auto``: bf16 where the run's device computes it natively and a probe finds it faster.

Resolved once per run (``setup.py``), and recorded: the run's config (config.json, every checkpoint and
export) holds the resolved ``fp32`` or ``bf16``, and config.json's ``runtime`` block, every checkpoint and
the ``setup`` record of metrics.jsonl say why. A resumed run trains in the precision its checkpoint's
config names, so its rounding does not change; it does not probe again.

CPU: bf16 is native with AVX512_BF16 or AMX-BF16 (x86) or the BF16 extension (Arm), and only when the
kernels may use them: ``ATEN_CPU_CAPABILITY=avx2`` or ``ONEDNN_MAX_CPU_ISA=AVX2`` (how an AVX-512 machine
is made to compute like an AVX2 one) leave it emulated. Emulated bf16 made a training step of the quick
recipes about 13x slower than fp32 on a Zen 3 (AVX2), so ``auto`` then picks fp32 without measuring.
Where it is native, a probe of the run's own step (``probe.py``) must find bf16 ``BF16_MARGIN`` faster.
An explicit ``bf16`` on a CPU without it trains as asked, after a warning with the measured slowdown.

CUDA: both are measured, fp32 with TF32 matmuls against bf16 autocast; bf16 only by the margin (on an
H100 bf16 was slower than fp32 for every seed recipe: their kernels are too small to gain).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ganforge.training.fastpath import Choice, cpu_flags

BF16_MARGIN = 1.1  # bf16 changes the rounding of every step: it must buy at least this much speed
# oneDNN's ISA names in order (ONEDNN_MAX_CPU_ISA caps the kernels it dispatches); bf16 dot products from here on
_ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
)
EMULATION_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")

Measure = Callable[[], tuple[float, float]]  # () -> (fp32 seconds per step, bf16 seconds per step)


@dataclass
class PrecisionPlan:
    choice: Choice  # value "fp32" or "bf16"
    tf32: bool = False  # CUDA fp32: matmuls on TF32 tensor cores
    warning: str | None = None  # one line for the user (bf16 asked where it is emulated)


def cpu_bf16_native(flags: set[str], capability: str, env: Mapping[str, str], machine: str) -> tuple[bool, str]:
    """(whether this CPU's kernels compute bf16 natively, the short why) from its flags, ATen's capability
    (``torch.backends.cpu.get_cpu_capability()``), the environment (oneDNN's ISA cap) and the architecture."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64"):
        native = [f.upper() for f in ("avx512_bf16", "amx_bf16") if f in flags]
        if not native:
            return False, f"{capability}, no AVX512_BF16/AMX"
        if not capability.upper().startswith("AVX512"):
            return False, f"ATen kernels at {capability}"
        cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
        if cap in _ONEDNN_ISAS and _ONEDNN_ISAS.index(cap) < _ONEDNN_ISAS.index("AVX512_CORE_BF16"):
            return False, f"oneDNN capped at {cap}"
        return True, "+".join(native)
    if machine in ("aarch64", "arm64"):
        return ("bf16" in flags), ("Arm BF16" if "bf16" in flags else "Arm without BF16")
    return False, machine or "unknown CPU"


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and the short why (see the module docstring)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported()), torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return False, device.type
    capability = torch.backends.cpu.get_cpu_capability()
    return cpu_bf16_native(cpu_flags(), capability, os.environ, platform.machine())


def emulation_env() -> dict[str, str]:
    """The variables that cap this process's CPU kernels below the hardware's (set: an emulated CPU class)."""
    return {k: os.environ[k] for k in EMULATION_ENV if os.environ.get(k)}


def resolve_precision(
    requested: str, device: torch.device, native: tuple[bool, str], measure: Measure
) -> PrecisionPlan:
    """The precision a run trains in, and why. ``native``: ``bf16_native(device)``; ``measure()`` times the
    run's step in both precisions and is called only where the answer depends on it."""
    is_native, why = native
    if requested == "fp32":
        return PrecisionPlan(Choice("fp32", "asked"))
    if device.type == "cuda":
        return _resolve_cuda(requested, is_native, why, measure)
    if device.type != "cpu":  # mps: bf16 autocast unsupported (check_run_config refuses an explicit bf16)
        return PrecisionPlan(Choice("fp32", f"bf16 unsupported on {device.type}", requested=requested))
    if requested == "bf16":
        if is_native:
            return PrecisionPlan(Choice("bf16", "asked"))
        t_fp32, t_bf16 = measure()
        slower = t_bf16 / t_fp32
        warning = (
            f"warning: --precision bf16 on a CPU without native BF16 ({why}): a training step measured "
            f"{slower:.1f}x slower than fp32; --precision auto (or fp32) avoids it"
        )
        return PrecisionPlan(
            Choice("bf16", f"asked; not native: {slower:.1f}x slower", round(1 / slower, 3)), warning=warning
        )
    if not is_native:
        return PrecisionPlan(Choice("fp32", f"bf16 not native: {why}", requested=requested))
    t_fp32, t_bf16 = measure()
    speedup = t_fp32 / t_bf16
    if speedup >= BF16_MARGIN:
        return PrecisionPlan(Choice("bf16", f"{why}: {speedup:.2f}x fp32", round(speedup, 3), requested))
    return PrecisionPlan(Choice("fp32", f"bf16 only {speedup:.2f}x", round(1 / speedup, 3), requested))


def _resolve_cuda(requested: str, is_native: bool, name: str, measure: Measure) -> PrecisionPlan:
    if requested == "bf16":
        return PrecisionPlan(Choice("bf16", "asked"))
    if not is_native:
        return PrecisionPlan(Choice("fp32", f"TF32 matmuls; no bf16 on {name}", requested=requested), tf32=True)
    t_fp32, t_bf16 = measure()
    speedup = t_fp32 / t_bf16
    if speedup >= BF16_MARGIN:
        return PrecisionPlan(Choice("bf16", f"{speedup:.2f}x fp32+TF32", round(speedup, 3), requested))
    return PrecisionPlan(
        Choice("fp32", f"TF32 matmuls; bf16 {speedup:.2f}x", round(1 / speedup, 3), requested), tf32=True
    )


def kept_warning(choice: Choice, native: tuple[bool, str]) -> str | None:
    """A resumed run keeps bf16 from its checkpoint; say so where this CPU only emulates it."""
    if choice.value != "bf16" or native[0]:
        return None
    return (
        f"warning: this run trains in bf16 (kept from its checkpoint), which this CPU does not compute natively "
        f"({native[1]}): expect much slower steps; --precision fp32 switches (the rounding then changes)"
    )
