"""Differentiable augmentation of D's inputs (DiffAugment's ops) and ADA's adaptive probability.

A small dataset lets D memorise the reals. Augmenting everything D sees (reals and fakes in the D
step, fakes in the G step) stops that without leaking the augmentation into G, provided the ops are
differentiable so G still gets gradients through them (Zhao et al. 2020, DiffAugment; Karras et al.
2020, ADA). The ops, on images in [-1, 1], per sample:

- ``color``: brightness ``x + (u - 1/2)``; saturation ``(x - mean_c x) * 2u + mean_c x`` (mean over
  channels); contrast ``(x - mean x) * (u + 1/2) + mean x`` (mean over channels and pixels); u ~ U(0, 1).
- ``translation``: an integer shift of up to 1/8 of the image in each axis, uniform in [-s, s],
  s = round(H / 8), zero fill.
- ``cutout``: a zero square of half the image's size (round(H / 2) x round(W / 2)) around a uniform
  centre, clipped at the borders.

Each primitive op (brightness, saturation, contrast, translation, cutout) is applied to each sample
with probability ``p``, independently, as in ADA; ``p = 1`` is DiffAugment. All randomness comes from
the ``torch.Generator`` the caller passes, drawn on that generator's device, in a fixed order (per op:
the B apply-decisions, then the op's parameters), so a checkpointed generator state resumes the
exact stream. With ``p <= 0`` nothing is drawn and ``x`` is returned as it is.

Hand-written, not kornia, by measurement and by fit. Forward + backward of color,translation,cutout
on a 64x3x96x96 batch (``benchmarks/augment_cost.py``, best of 7; AMD EPYC, 2 cores shared with other
jobs at a load of 1-7, nice 10, torch 2.14, two runs): this module 162 and 175 ms, kornia 0.9
(ColorJiggle + RandomAffine translate + RandomErasing) 505 and 1000 ms, so about 3x slower. (For scale:
one forward + backward of anime-dcgan's D on the same batch is about 40 GFLOP, seconds on this CPU.)
And kornia draws from torch's global RNG (no generator argument, so no exact resume without saving
and restoring the global state around every call), clamps colours to [0, 1] (zero gradient outside it,
where our [-1, 1] images live) and translates by bilinear resampling rather than by whole pixels.

``AdaptiveAugment`` is ADA's controller: fed D's logits on the reals it keeps r_t = E[sign(D(x_real))]
and, every ``interval`` D steps, moves p by sign(r_t - target) * (images seen) / ``speed_images``
(so p can go 0 -> 1 in ``speed_images`` images), clamped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ganforge.errors import ConfigError
from ganforge.registry import Registry

# One primitive op: (x [B, C, H, W], apply [B] bool, generator) -> x' [B, C, H, W].
Op = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]

TRANSLATION_RATIO = 1 / 8  # largest shift, as a fraction of the image side
CUTOUT_RATIO = 1 / 2  # side of the cut-out square, as a fraction of the image side


# ---- the ops with explicit parameters (pure, differentiable in x) ----


def adjust_brightness(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x + shift`` per sample; ``shift`` [B] (0 leaves the sample exactly as it is)."""
    return x + shift.view(-1, 1, 1, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's distance from its channel mean by ``factor`` [B] (0 = grey, 1 = unchanged, exactly:
    written as x f + mean (1 - f), one fused kernel, instead of (x - mean) f + mean)."""
    mean = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
    factor = factor.view(-1, 1, 1, 1)
    return torch.addcmul(mean * (1.0 - factor), x, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each sample's distance from its own mean (over channels and pixels) by ``factor`` [B]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    factor = factor.view(-1, 1, 1, 1)
    return torch.addcmul(mean * (1.0 - factor), x, factor)


def translate(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels, zero fill: ``out[b, :, i, j] = x[b, :, i - shift_y[b], j - shift_x[b]]``.

    ``shift_y``/``shift_x`` int64 [B] (positive = down/right). One gather over the flattened pixels and a
    mask: no padded copy, no host sync, and the gradient is the matching scatter. (Measured on 64x3x96x96,
    one thread: 21 ms forward + backward, against 51 ms for a gather per axis, 61 ms for indexing a padded
    copy and 37 ms for a nearest ``grid_sample``.)
    """
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) - shift_y.view(b, 1)  # [B, H] source row of each output row
    cols = torch.arange(w, device=x.device) - shift_x.view(b, 1)  # [B, W]
    inside = ((rows >= 0) & (rows < h)).view(b, h, 1) & ((cols >= 0) & (cols < w)).view(b, 1, w)  # [B, H, W]
    source = rows.clamp(0, h - 1).view(b, h, 1) * w + cols.clamp(0, w - 1).view(b, 1, w)  # [B, H, W] flat index
    picked = x.flatten(2).gather(2, source.view(b, 1, h * w).expand(b, c, h * w))  # [B, C, H*W]
    return picked.view(b, c, h, w) * inside.view(b, 1, h, w).to(x.dtype)


def cut_out(
    x: torch.Tensor, centre_y: torch.Tensor, centre_x: torch.Tensor, size: tuple[int, int], apply: torch.Tensor
) -> torch.Tensor:
    """Zero a ``size`` = (h, w) rectangle covering rows [centre_y - h // 2, centre_y - h // 2 + h) (and the
    same for columns), clipped at the borders, in the samples where ``apply`` [B] is true."""
    b, _, height, width = x.shape
    top = (centre_y - size[0] // 2).view(b, 1)  # [B, 1]
    left = (centre_x - size[1] // 2).view(b, 1)
    rows = torch.arange(height, device=x.device)  # [H]
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top) & (rows < top + size[0])  # [B, H]
    in_cols = (cols >= left) & (cols < left + size[1])  # [B, W]
    cut = in_rows.view(b, 1, height, 1) & in_cols.view(b, 1, 1, width) & apply.view(b, 1, 1, 1)  # [B, 1, H, W]
    return x * (~cut).to(x.dtype)


# ---- the random versions: parameters drawn from the caller's generator ----


def _uniform(batch: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(batch, generator=generator, device=generator.device)  # [B] on the generator's device
    return u.to(device=like.device, dtype=like.dtype)


def _integers(low: int, high: int, batch: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform int64 in [low, high) [B], on ``like``'s device."""
    n = torch.randint(low, high, (batch,), generator=generator, device=generator.device)
    return n.to(like.device)


def random_brightness(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shift = _uniform(x.shape[0], generator, x) - 0.5  # [B] in [-1/2, 1/2)
    return adjust_brightness(x, shift * apply.to(x.dtype))  # a zero shift where not applied: x exactly


def random_saturation(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    factor = _uniform(x.shape[0], generator, x) * 2.0  # [B] in [0, 2)
    return adjust_saturation(x, torch.where(apply, factor, 1.0))  # factor 1: x exactly


def random_contrast(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    factor = _uniform(x.shape[0], generator, x) + 0.5  # [B] in [1/2, 3/2)
    return adjust_contrast(x, torch.where(apply, factor, 1.0))


def random_translation(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    reach_y, reach_x = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    shift_y = _integers(-reach_y, reach_y + 1, b, generator, x)  # [B]
    shift_x = _integers(-reach_x, reach_x + 1, b, generator, x)
    keep = apply.to(torch.int64)  # a zero shift is the identity, exactly
    return translate(x, shift_y * keep, shift_x * keep)


def random_cutout(x: torch.Tensor, apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    size = (int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5))
    centre_y = _integers(0, h, b, generator, x)  # [B]
    centre_x = _integers(0, w, b, generator, x)
    return cut_out(x, centre_y, centre_x, size, apply)


# Policy names (DiffAugment's) -> the primitive ops they run, in order.
AUGMENTATIONS: Registry[tuple[Op, ...]] = Registry("augmentation")
AUGMENTATIONS.register("color")((random_brightness, random_saturation, random_contrast))
AUGMENTATIONS.register("translation")((random_translation,))
AUGMENTATIONS.register("cutout")((random_cutout,))


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ("color", "translation"); "" -> () (augmentation off). Unknown names are a
    ``ConfigError`` listing the known ones."""
    names = tuple(part.strip() for part in policy.split(",") if part.strip())
    for name in names:
        if name not in AUGMENTATIONS:
            raise ConfigError(f"augment.policy: unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"augment.policy={policy!r} names an augmentation twice")
    return names


def augment(x: torch.Tensor, generator: torch.Generator, p: float, policy: Sequence[str]) -> torch.Tensor:
    """Apply ``policy``'s ops to ``x`` [B, C, H, W], each op to each sample with probability ``p``.

    Differentiable in ``x``. Draws from ``generator`` only (per op: B uniforms for the apply decisions, then
    the op's parameters); ``p <= 0`` or an empty policy returns ``x`` itself and draws nothing.
    """
    if p <= 0 or not policy:
        return x
    batch = x.shape[0]
    for name in policy:
        for op in AUGMENTATIONS.get(name):
            apply = _uniform(batch, generator, x) < p  # [B] bool
            x = op(x, apply, generator)
    return x


class Augmentation:
    """A parsed policy as a callable: ``Augmentation("color,translation,cutout")(x, generator, p)``."""

    def __init__(self, policy: str) -> None:
        self.policy = parse_policy(policy)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
        return augment(x, generator, p, self.policy)


class AdaptiveAugment:
    """ADA's p controller, driven by the overfitting heuristic r_t = E[sign(D(x_real))].

    Call ``observe(logits_real)`` on every D step's real logits and ``step()`` once per D step; every
    ``interval``-th step sets p <- clamp(p + sign(r_t - target) * n / speed_images, 0, 1), n being the
    images observed since the last update, and starts a new window. D too sure of the reals (r_t above
    target) means it is memorising them: more augmentation. Observing costs no host sync; the update
    syncs once per ``interval`` steps. Under DDP pass ``reduce`` to ``step`` (an all-reduce sum of a
    [2] tensor) so every rank moves p by the same global statistics.
    """

    def __init__(self, target: float = 0.6, interval: int = 4, speed_images: int = 500_000, p: float = 0.0) -> None:
        if not -1.0 < target < 1.0:
            raise ValueError(f"target={target} must be in (-1, 1): r_t = E[sign(D(x_real))] lies in [-1, 1]")
        if interval <= 0 or speed_images <= 0:
            raise ValueError(f"interval={interval} and speed_images={speed_images} must be > 0")
        self.target = target
        self.interval = interval
        self.speed_images = speed_images
        self.p = float(p)
        self.last_rt: float | None = None  # r_t of the last window (None before the first update): for logs
        self._sign_sum: torch.Tensor | float = 0.0  # sum of sign(D(x_real)) in this window (a device tensor)
        self._count = 0  # real images observed in this window
        self._steps = 0  # step() calls so far

    def observe(self, logits_real: torch.Tensor) -> None:
        # fp32: a bf16 sum of +-1 stops being exact past 256 images
        self._sign_sum = self._sign_sum + torch.sign(logits_real.detach().float()).sum()
        self._count += logits_real.numel()

    def step(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
        """Count one D step; on every ``interval``-th, update p and return True."""
        self._steps += 1
        if self._steps % self.interval:
            return False
        sign_sum = torch.as_tensor(self._sign_sum, dtype=torch.float32)  # on the logits' device
        stats = torch.stack([sign_sum, torch.full_like(sign_sum, self._count)])  # [2]
        if reduce is not None:
            stats = reduce(stats)
        total, count = stats.tolist()
        self._sign_sum, self._count = 0.0, 0
        if count <= 0:
            return False
        self.last_rt = total / count
        direction = (self.last_rt > self.target) - (self.last_rt < self.target)  # sign(r_t - target)
        self.p = min(max(self.p + direction * count / self.speed_images, 0.0), 1.0)
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: p, the open window's accumulators and the step count (a host sync for the sum)."""
        return {
            "p": self.p,
            "last_rt": self.last_rt,
            "sign_sum": float(self._sign_sum),
            "count": self._count,
            "steps": self._steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.last_rt = None if state["last_rt"] is None else float(state["last_rt"])
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self._steps = int(state["steps"])
