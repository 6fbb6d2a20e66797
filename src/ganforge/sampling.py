"""Loading a trained GAN and drawing images from it: grids, files, top-k, latent walks."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class LoadedGAN:
    config: RunConfig
    generator: nn.Module  # eval mode; the EMA weights when the run kept an EMA
    discriminator: nn.Module | None  # eval mode; None for a generator-only export
    device: torch.device
    source: Path

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes


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


def load_gan(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedGAN:
    """Build the networks from the config stored in the checkpoint and load their weights.

    Tensors are read on the CPU and moved, so a checkpoint made on a GPU samples on a CPU machine.
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
    generator, discriminator = build_models(cfg.model)
    prefix = "ema" if use_ema and any(k.startswith("ema.") for k in tensors) else "generator"
    load_module(prefix, generator, tensors, source)
    if any(k.startswith("discriminator.") for k in tensors):
        load_module("discriminator", discriminator, tensors, source)
    else:
        discriminator = None
    device = torch.device(device)
    generator.to(device).eval()
    if discriminator is not None:
        discriminator.to(device).eval()
    return LoadedGAN(cfg, generator, discriminator, device, source)


def draw_noise(
    num: int, latent_dim: int, seed: int, mean: float = 0.0, std: float = 1.0, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """z ~ N(mean, std^2 I), drawn on the CPU so the same seed gives the same noise on every device."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num, latent_dim, generator=generator) * std + mean  # [num, latent_dim]
    return z.to(device)


@torch.no_grad()
def generate_from_noise(
    gan: LoadedGAN, z: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """Normalised float images [N, C, H, W] for the given noise (and labels, if conditional)."""
    outputs = []
    for start in range(0, z.shape[0], batch_size):
        z_batch = z[start : start + batch_size].to(gan.device)
        y_batch = None if labels is None else labels[start : start + batch_size].to(gan.device)
        outputs.append(gan.generator(z_batch, y_batch).float().cpu())
    return torch.cat(outputs)


def check_labels(gan: LoadedGAN, labels: torch.Tensor | None) -> None:
    if gan.num_classes == 0 and labels is not None:
        raise ConfigError("this generator is unconditional; drop --class/--per-class")
    if labels is not None and labels.numel() and (labels.min() < 0 or labels.max() >= gan.num_classes):
        raise ConfigError(f"class must be in 0..{gan.num_classes - 1} for this model")


def generate_images(
    gan: LoadedGAN, num: int, labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num`` samples as uint8 [num, C, H, W] (0..255) and their int64 labels (conditional) or None.

    A conditional model without given labels gets labels drawn uniformly over the classes.
    """
    cfg = gan.config
    if gan.num_classes > 0 and labels is None:
        labels = torch.randint(gan.num_classes, (num,), generator=torch.Generator().manual_seed(seed + 1))
    check_labels(gan, labels)
    z = draw_noise(num, cfg.model.latent_dim, seed, cfg.sample.noise_mean, cfg.sample.noise_std)
    images = generate_from_noise(gan, z, labels, batch_size)
    return denormalize(images, cfg.data.mean, cfg.data.std), labels


@torch.no_grad()
def discriminator_scores(
    gan: LoadedGAN, images_uint8: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 256
) -> torch.Tensor:
    """D's probability that each image is real, float [N] (the ranking of the anime system's generate step)."""
    if gan.discriminator is None:
        raise CheckpointError(
            f"{gan.source} has no discriminator (a generator-only export); pass the run directory or "
            "checkpoints/latest.safetensors to rank by the discriminator"
        )
    mean = torch.tensor(gan.config.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(gan.config.data.std).view(1, -1, 1, 1)
    scores = []
    for start in range(0, images_uint8.shape[0], batch_size):
        # score the images exactly as they are saved (after uint8 rounding), normalised as D saw reals
        x = (images_uint8[start : start + batch_size].float() / 255 - mean) / std  # [b, C, H, W]
        y = None if labels is None else labels[start : start + batch_size].to(gan.device)
        scores.append(torch.sigmoid(gan.discriminator(x.to(gan.device), y).float()).cpu())
    return torch.cat(scores)


def generate_top_k(
    gan: LoadedGAN, k: int, candidates: int, labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Draw ``candidates`` samples, keep the ``k`` the discriminator scores highest (best first)."""
    if k > candidates:
        raise ConfigError(f"--top-k {k} is more than --candidates {candidates}; raise --candidates")
    images, labels = generate_images(gan, candidates, labels, seed, batch_size)
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
