"""Loading a trained generator and drawing images from it: the Python API behind ``ganforge generate``.

``load_generator(path)`` returns a ``TrainedGenerator``; ``ganforge generate`` and ``ganforge export``
are built on it, so the command line and a user's own code draw the same images for the same seed.
The helpers below it (top-k by the discriminator, per-class grids, latent walks, writers) are the
rest of what ``generate`` offers.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

from ganforge.checkpoint import atomic_write, atomic_write_bytes, load_module, load_tensors
from ganforge.config import RunConfig, from_dict
from ganforge.data import denormalize
from ganforge.errors import CheckpointError, ConfigError
from ganforge.models import build_models

Labels = int | Sequence[int] | torch.Tensor | np.ndarray


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its latest checkpoint (or its generator export); a file is itself."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "latest.safetensors", path / "generator.safetensors"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{path} holds no checkpoints/latest.safetensors or generator.safetensors; "
            "is it a ganforge run directory whose training saved at least once?"
        )
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory or a .safetensors checkpoint")
    return path


def draw_noise(
    num: int,
    latent_dim: int,
    seed: int,
    mean: float = 0.0,
    std: float = 1.0,
    device: str | torch.device = "cpu",
    truncation: float | None = None,
) -> torch.Tensor:
    """z ~ N(mean, std^2 I), drawn on the CPU so the same seed gives the same noise on every device.

    ``truncation=t`` draws from the standard normal truncated to [-t, t] before scaling: every element
    with |z| > t is redrawn (from the same seeded stream) until it falls inside, so the elements already
    inside are exactly those of the untruncated draw. Smaller t trades variety for typical samples.
    """
    if truncation is not None and not truncation > 0:
        raise ConfigError(f"truncation={truncation} must be > 0 (or None for no truncation)")
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num, latent_dim, generator=generator)  # [num, latent_dim]
    if truncation is not None:
        outside = z.abs() > truncation
        while outside.any():
            z[outside] = torch.randn(int(outside.sum()), generator=generator)
            outside = z.abs() > truncation
    return (z * std + mean).to(device)


class TrainedGenerator:
    """A trained generator, in eval mode (BatchNorm uses its running statistics), ready to sample.

    Build it with ``load_generator``. Sizes: ``latent_dim``, ``num_classes`` (0: unconditional),
    ``channels``, ``resolution``. ``sample`` returns uint8 images [N, C, H, W] (NCHW, 0..255); the
    network itself is ``network`` (``network(z, labels)`` gives floats in the data's normalisation).
    Bad arguments raise ``ConfigError``, unreadable files ``CheckpointError`` (both ``GanforgeError``).
    """

    def __init__(
        self,
        config: RunConfig,
        network: nn.Module,
        source: Path,
        weights: str = "generator",
        device: str | torch.device = "cpu",
        meta: dict[str, Any] | None = None,
        kind: str = "",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.source = Path(source)
        self.weights = weights  # "ema" (the moving average of G) or "generator" (the raw G)
        self.meta = meta or {}  # the checkpoint's JSON metadata (counters, versions, ...)
        self.kind = kind  # "training", "generator", ...: what the source file is

    # --- sizes ----------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def latent_dim(self) -> int:
        return self.config.model.latent_dim

    @property
    def channels(self) -> int:
        return self.config.model.channels

    @property
    def resolution(self) -> int:
        return self.config.model.resolution

    @property
    def generator(self) -> nn.Module:
        return self.network

    @functools.cached_property
    def discriminator(self) -> nn.Module | None:
        """The discriminator saved beside G (eval mode), or None for a generator-only export."""
        tensors, _, _ = load_tensors(self.source)
        if not any(k.startswith("discriminator.") for k in tensors):
            return None
        _, discriminator = build_models(self.config.model)
        load_module("discriminator", discriminator, tensors, self.source)
        return discriminator.to(self.device).eval()

    # --- inputs ---------------------------------------------------------------------------------------
    def noise(self, n: int, seed: int | None = None, truncation: float | None = None) -> torch.Tensor:
        """The latent codes ``sample`` uses: float32 [n, latent_dim] on the CPU (see ``draw_noise``)."""
        sample = self.config.sample
        return draw_noise(n, self.latent_dim, _seed(seed), sample.noise_mean, sample.noise_std, truncation=truncation)

    def labels_for(self, n: int, labels: Labels | None = None, seed: int | None = None) -> torch.Tensor | None:
        """int64 [n] class labels: ``labels`` checked (an int means that class for all), or, for a conditional
        model without labels, uniform over the classes from ``seed + 1``; None for an unconditional model."""
        if labels is None:
            if not self.conditional:
                return None
            return torch.randint(self.num_classes, (n,), generator=torch.Generator().manual_seed(_seed(seed) + 1))
        if not self.conditional:
            raise ConfigError("this generator is unconditional: pass no labels (and no --class/--per-class)")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.dim() == 0:  # one class for every image
            labels = labels.expand(n)
        labels = labels.reshape(-1).clone()  # [n]
        if labels.numel() != n:
            raise ConfigError(f"got {labels.numel()} labels for {n} images; pass one label per image or one int")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ConfigError(f"class must be in 0..{self.num_classes - 1} for this model")
        return labels

    # --- images ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """G's raw output for the given noise: float [N, C, H, W] in the data's normalisation, on the CPU."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ConfigError(f"z must be [N, {self.latent_dim}], got {list(z.shape)}")
        if labels is not None:
            labels = self.labels_for(z.shape[0], labels)
        elif self.conditional:
            raise ConfigError(f"this generator is conditional on {self.num_classes} classes: pass labels")
        outputs = []
        for start in range(0, z.shape[0], batch_size):
            z_batch = z[start : start + batch_size].to(self.device)  # [b, latent_dim]
            y_batch = None if labels is None else labels[start : start + batch_size].to(self.device)  # [b]
            outputs.append(self.network(z_batch, y_batch).float().cpu())  # [b, C, H, W]
        return torch.cat(outputs)

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised floats -> uint8 pixels: x * std + mean, times 255, clamped to 0..255 and rounded."""
        return denormalize(x, self.config.data.mean, self.config.data.std)

    def images(self, z: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """uint8 [N, C, H, W] images for the given noise (and labels)."""
        return self.to_uint8(self.decode(z, labels, batch_size))

    def sample_with_labels(
        self,
        n: int,
        labels: Labels | None = None,
        seed: int | None = None,
        truncation: float | None = None,
        batch_size: int = 256,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like ``sample``, and also the int64 [n] labels used (None for an unconditional model)."""
        if n <= 0:
            raise ConfigError(f"n={n}: the number of images must be > 0")
        seed = _seed(seed)
        y = self.labels_for(n, labels, seed)
        return self.images(self.noise(n, seed, truncation), y, batch_size), y

    def sample(
        self,
        n: int,
        labels: Labels | None = None,
        seed: int | None = None,
        truncation: float | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """``n`` images as uint8 [n, C, H, W] (0..255, NCHW), on the CPU.

        ``labels``: one int (that class for every image) or n ints, for a conditional model; without
        them the classes are drawn uniformly. ``seed`` makes the draw reproducible (the same as
        ``ganforge generate --seed``); None draws one from torch's global RNG. ``truncation``: see
        ``draw_noise``.
        """
        return self.sample_with_labels(n, labels, seed, truncation, batch_size)[0]

    def to_pil(self, images: torch.Tensor | int, **sample_args: Any) -> list[Image.Image]:
        """PIL images ("L" or "RGB"): from uint8 [N, C, H, W] images, or ``to_pil(n, seed=...)`` to sample n first."""
        if isinstance(images, int):
            images = self.sample(images, **sample_args)
        return [_pil(image) for image in images]

    def __repr__(self) -> str:
        return (
            f"TrainedGenerator({self.config.recipe}, {self.config.model.arch}, latent_dim={self.latent_dim}, "
            f"num_classes={self.num_classes}, {self.channels}x{self.resolution}x{self.resolution}, "
            f"weights={self.weights}, source={self.source})"
        )


def _seed(seed: int | None) -> int:
    """The given seed, or a fresh one from torch's global RNG (so ``torch.manual_seed`` makes it repeatable)."""
    return int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> TrainedGenerator:
    """Load a trained generator from a run directory, a training checkpoint or ``generator.safetensors``.

    ``ema=True`` takes the exponential moving average of G when the run kept one (``train.ema_decay``),
    else the raw G; ``ema=False`` always the raw G. Tensors are read on the CPU and moved to ``device``,
    so a checkpoint made on a GPU samples on a CPU machine. A missing, damaged or foreign file raises
    ``CheckpointError`` with a one-line message.
    """
    source = resolve_checkpoint(path)
    tensors, meta, kind = load_tensors(source)
    if not any(k.startswith(("generator.", "ema.")) for k in tensors):
        what = "a discriminator export" if kind == "discriminator" else f"a {kind or 'ganforge'} file"
        raise CheckpointError(
            f"{source} is {what}, which holds no generator; pass the run directory, "
            "its generator.safetensors or checkpoints/latest.safetensors"
        )
    if "config" not in meta:
        raise CheckpointError(f"{source} carries no config; it was not written by ganforge train")
    cfg = from_dict(meta["config"])
    generator, _ = build_models(cfg.model)
    prefix = "ema" if ema and any(k.startswith("ema.") for k in tensors) else "generator"
    load_module(prefix, generator, tensors, source)
    return TrainedGenerator(cfg, generator, source, prefix, device, meta, kind)


# --- what `ganforge generate` adds: compatibility names, ranking, grids, walks, writers --------------------


def load_gan(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> TrainedGenerator:
    """``load_generator`` under its older name (the evaluate command uses it)."""
    return load_generator(path, device, ema=use_ema)


def generate_images(
    gan: TrainedGenerator,
    num: int,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    truncation: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num`` samples as uint8 [num, C, H, W] and their int64 labels (conditional) or None."""
    return gan.sample_with_labels(num, labels, seed, truncation, batch_size)


@torch.no_grad()
def discriminator_scores(
    gan: TrainedGenerator, images_uint8: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """D's probability that each image is real, float [N] (the ranking of the anime system's generate step)."""
    discriminator = gan.discriminator
    if discriminator is None:
        raise CheckpointError(
            f"{gan.source} has no discriminator (a generator-only export); pass the run directory or "
            "checkpoints/latest.safetensors to rank by the discriminator"
        )
    if discriminator.pack > 1:
        raise ConfigError(
            f"{gan.source} has a packed discriminator (model.d_pack={discriminator.pack}): it scores packs of "
            "images, not each image, so it cannot rank them; generate without --top-k"
        )
    mean = torch.tensor(gan.config.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(gan.config.data.std).view(1, -1, 1, 1)
    scores = []
    for start in range(0, images_uint8.shape[0], batch_size):
        # score the images exactly as they are saved (after uint8 rounding), normalised as D saw reals
        x = (images_uint8[start : start + batch_size].float() / 255 - mean) / std  # [b, C, H, W]
        y = None if labels is None else labels[start : start + batch_size].to(gan.device)
        scores.append(torch.sigmoid(discriminator(x.to(gan.device), y).float()).cpu())
    return torch.cat(scores)


def generate_top_k(
    gan: TrainedGenerator,
    k: int,
    candidates: int,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    truncation: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Draw ``candidates`` samples, keep the ``k`` the discriminator scores highest (best first)."""
    if k > candidates:
        raise ConfigError(f"--top-k {k} is more than --candidates {candidates}; raise --candidates")
    images, labels = generate_images(gan, candidates, labels, seed, batch_size, truncation)
    scores = discriminator_scores(gan, images, labels, batch_size)
    order = torch.argsort(scores, descending=True)[:k]
    return images[order], None if labels is None else labels[order], scores[order]


def per_class_grid_inputs(
    num_classes: int, per_row: int, latent_dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and labels for a grid with row k = class k, the same ``per_row`` noises in every row."""
    z_row = draw_noise(per_row, latent_dim, seed)  # [per_row, latent_dim]
    z = z_row.repeat(num_classes, 1)  # [classes * per_row, latent_dim]
    labels = torch.arange(num_classes).repeat_interleave(per_row)  # [classes * per_row]
    return z, labels


def interpolation_noise(steps: int, latent_dim: int, seed: int, points: int = 2) -> torch.Tensor:
    """A latent walk: ``steps`` points on each spherical-linear leg between ``points`` random z."""
    anchors = draw_noise(points, latent_dim, seed)  # [points, latent_dim]
    t = torch.linspace(0, 1, steps).unsqueeze(1)  # [steps, 1]
    path = []
    for leg, (a, b) in enumerate(zip(anchors[:-1], anchors[1:])):
        omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1 + 1e-7, 1 - 1e-7))
        # slerp keeps the walk at the norm typical of Gaussian noise, where G was trained
        points_on_leg = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
        path.append(points_on_leg if leg == 0 else points_on_leg[1:])  # each joint appears once
    return torch.cat(path)  # [steps + (points - 2) * (steps - 1), latent_dim]


def save_grid(images_uint8: torch.Tensor, path: str | Path, nrow: int = 8) -> None:
    """Save uint8 [N, C, H, W] images as one PNG grid (torchvision's make_grid layout), atomically."""
    grid = torchvision.utils.make_grid(images_uint8.float() / 255, nrow=nrow, padding=2, pad_value=1.0)
    atomic_write(Path(path), lambda tmp: torchvision.utils.save_image(grid, tmp, format="png"))


def _pil(image_uint8: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] -> a PIL L or RGB image."""
    return Image.fromarray(image_uint8.cpu().permute(1, 2, 0).squeeze(-1).numpy())


def save_images(images_uint8: torch.Tensor, directory: str | Path, labels: torch.Tensor | None = None) -> list[Path]:
    """One PNG per image: ``000000.png`` or ``000000_class3.png``, each written atomically."""
    directory = Path(directory)
    paths = []
    for i, image in enumerate(images_uint8):
        suffix = "" if labels is None else f"_class{int(labels[i])}"
        path = directory / f"{i:06d}{suffix}.png"
        atomic_write(path, lambda tmp, image=image: _pil(image).save(tmp, format="PNG"))
        paths.append(path)
    return paths


def save_gif(images_uint8: torch.Tensor, path: str | Path, duration_ms: int = 80) -> None:
    """An animated GIF, one frame per image (a latent walk), written atomically."""
    frames = [_pil(img) for img in images_uint8]
    atomic_write(
        Path(path),
        lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0
        ),
    )


def save_npz(
    path: str | Path, images_uint8: torch.Tensor, labels: torch.Tensor | None = None, scores: torch.Tensor | None = None
) -> list[str]:
    """``images`` uint8 [N, C, H, W] (and int64 ``labels``, float ``scores``) as one .npz, atomically; returns
    the array names written."""
    payload = {"images": images_uint8.cpu().numpy().astype(np.uint8)}
    if labels is not None:
        payload["labels"] = labels.cpu().numpy().astype(np.int64)
    if scores is not None:
        payload["scores"] = scores.cpu().numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return list(payload)
