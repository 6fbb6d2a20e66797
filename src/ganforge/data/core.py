"""What every dataset shares: the decoded ``ImageData``, image preprocessing, hashing and the cache.

All preprocessing happens once, at load, in uint8: colour conversion with PIL (``convert("L")`` /
``convert("RGB")``) and resizing with torchvision's ``Resize`` + ``CenterCrop`` on PIL images
(bilinear with antialias), so a dataset looks the same whether it came from IDX arrays, CIFAR
pickles or a folder of JPEGs, and the same as a torchvision pipeline would give.

Image files of any mode are first brought to 8 bits as they look (``convert_image``): 16-bit
integers are scaled by their range (v * 255 / 65535, i.e. v / 257, rounded), 32-bit integers by
theirs (negative values are black), 32-bit floats are read as 0..1 (clipped), and transparent
pixels are composited onto white.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

from ganforge.checkpoint import atomic_write, check_output_space, clean_stale_temporaries, format_bytes
from ganforge.errors import CacheWarning, ConfigError, GanforgeWarning, WriteError

logger = logging.getLogger("ganforge.data")

# Bump when decoding or preprocessing changes, so old cache entries are never reused.
CACHE_FORMAT = 2  # 2: 16/32-bit and float images scaled to 8 bits, transparency composited onto white


class DataWarning(GanforgeWarning):
    """Image files that were skipped while loading a dataset (undecodable, unsupported), or images left out
    because they have no label."""


@dataclass
class ImageData:
    """A decoded dataset, ready for the model: one uint8 tensor plus labels."""

    images: torch.Tensor  # uint8 [N, C, H, W] at the model's channels and resolution
    labels: torch.Tensor | None  # int64 [N] class indices, or None
    class_names: list[str]  # [] when unlabelled
    name: str  # e.g. "mnist/test", "image-folder:anime-faces"
    fingerprint: str  # hex hash of the source bytes + preprocessing (the cache key)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Decoded:
    """What a dataset's builder returns on a cache miss."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # int64 [N]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # "file (reason)" for files left out


def cache_dir() -> Path:
    """``$GANFORGE_CACHE``, else ``$XDG_CACHE_HOME/ganforge``, else ``~/.cache/ganforge``."""
    if os.environ.get("GANFORGE_CACHE"):
        return Path(os.environ["GANFORGE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ganforge"
    return Path.home() / ".cache" / "ganforge"


def num_threads() -> int:
    """Threads for decoding and hashing: PIL and hashlib release the GIL on big buffers."""
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------- normalisation


def channel_stats(values: Sequence[float] | torch.Tensor, channels: int, what: str = "mean") -> torch.Tensor:
    """Expand a per-channel list (1 value, or one per channel) to a float32 [C] tensor."""
    t = torch.as_tensor(values, dtype=torch.float32).flatten()  # [1] or [C]
    if t.numel() == 1:
        return t.expand(channels).clone()  # [C]
    if t.numel() != channels:
        raise ConfigError(f"data.{what} has {t.numel()} values for {channels} channels: give 1 or {channels}")
    return t


def normalize(
    images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 [N, C, H, W] (0..255) -> float32 ``(x/255 - mean) / std``, per channel, on ``images``' device."""
    c = images.shape[-3]
    scale, shift = affine_from_stats(mean, std, c, images.device)
    return torch.addcmul(shift, images, scale)  # float32 [N, C, H, W]


def denormalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Inverse of ``normalize``: float [N, C, H, W] -> uint8 0..255, clamped and rounded.

    Works for any normalisation the recipes use, e.g. mean 0.5/std 0.5 ([-1, 1], tanh generators)
    and MNIST's mean 0.1307/std 0.3081.
    """
    c = x.shape[-3]
    m = channel_stats(mean, c, "mean").to(x.device).view(-1, 1, 1)  # [C, 1, 1]
    s = channel_stats(std, c, "std").to(x.device).view(-1, 1, 1)  # [C, 1, 1]
    pixels = (x.float() * s + m) * 255.0  # float32 [N, C, H, W], nominally 0..255
    return pixels.clamp_(0.0, 255.0).round_().to(torch.uint8)  # uint8 [N, C, H, W]


def affine_from_stats(
    mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``x = img * scale + shift`` == ``(img/255 - mean)/std``: one fused op per batch."""
    m = channel_stats(mean, channels, "mean")  # [C]
    s = channel_stats(std, channels, "std")  # [C]
    scale = (1.0 / (255.0 * s)).view(1, -1, 1, 1).to(device)  # [1, C, 1, 1]
    shift = (-m / s).view(1, -1, 1, 1).to(device)  # [1, C, 1, 1]
    return scale, shift


# --------------------------------------------------------------------------- preprocessing


def pil_mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise ConfigError(f"model.channels={channels}: datasets load as 1 (grey) or 3 (RGB) channels; set one of them")


def resize_crop(img: Image.Image, resolution: int) -> Image.Image:
    """torchvision ``Resize(resolution)`` (shorter side, bilinear, antialias) + ``CenterCrop(resolution)``."""
    import torchvision.transforms.functional as TF

    if img.size == (resolution, resolution):
        return img
    img = TF.resize(img, [resolution], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(img, [resolution, resolution])


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def integer_bits(img: Image.Image) -> tuple[int, bool]:
    """(bits per sample, signed) of a PIL ``I`` image's source: PIL uses ``I`` (int32) for 16-bit PGM/PPM files
    as well as for 32-bit TIFFs, so the file's own declaration decides (other formats: int32)."""
    if img.format in ("PNG", "PPM"):
        return 16, False  # neither format stores more than 16 bits per sample
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return 32, True

    def first(tag: int, default: int) -> int:
        value = tags.get(tag, default)
        return int(value[0] if isinstance(value, tuple) else value)

    return first(258, 32), first(339, 1) == 2  # TIFF BitsPerSample; SampleFormat 1 (the default) = unsigned, 2 = signed


def to_8bit(img: Image.Image, source: Image.Image | None = None) -> Image.Image:
    """A 16-bit, 32-bit integer or 32-bit float PIL image -> mode L, scaled by the type's range; others as given.

    I;16*: v * 255 / 65535 (= v / 257), rounded. I: by its source's range (16-bit as above; 32-bit unsigned over
    0..2**32-1; 32-bit signed over 0..2**31-1, negatives black). F: 0..1 (the usual float convention), clipped.
    ``source`` is the image as opened, when ``img`` is a copy (which has lost the file's format and tags).
    """
    if img.mode in SIXTEEN_BIT_MODES:
        full, low = 65535.0, 0.0
    elif img.mode == "I":
        bits, signed = integer_bits(source if source is not None else img)
        full, low = float(2 ** (bits - 1) - 1 if signed else 2**bits - 1), 0.0
    elif img.mode == "F":
        full, low = 1.0, 0.0
    else:
        return img
    values = np.asarray(img).astype(np.float64)  # [H, W] in the type's units
    scaled = np.rint(np.clip(values, low, full) * (255.0 / full))  # [H, W], 0..255
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def convert_image(img: Image.Image, mode: str, source: Image.Image | None = None) -> Image.Image:
    """Any decoded image -> ``mode`` (L or RGB, 8 bits), as it looks: high bit depths scaled (``to_8bit``),
    palettes expanded, transparency (P with a transparent colour, PA, LA, RGBA) composited onto white,
    CMYK/YCbCr/HSV through PIL's RGB conversion, then grey by ITU-R 601 luma."""
    img = to_8bit(img, source)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    if img.mode not in ("L", "RGB", "1"):
        img = img.convert("RGB")  # CMYK, YCbCr, HSV, ...: PIL's own RGB conversion
    return img if img.mode == mode else img.convert(mode)


def pil_to_chw(img: Image.Image) -> np.ndarray:
    """PIL L or RGB image -> uint8 [C, H, W] array."""
    arr = np.array(img, dtype=np.uint8)  # [H, W] or [H, W, 3]; a writable copy for torch.from_numpy
    if arr.ndim == 2:
        return arr[None]  # [1, H, W]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # [3, H, W]


def to_model_format(images: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """uint8 [N, c, h, w] (c in 1, 3) -> uint8 [N, channels, resolution, resolution], like a folder of files.

    Grey -> RGB is an exact channel copy (what PIL's convert does), so it is done on the tensor after
    resizing; RGB -> grey uses PIL's ``convert("L")`` (ITU-R 601 luma) before resizing, as for files.
    """
    n, c, h, w = images.shape
    mode = pil_mode(channels)
    if c not in (1, 3):
        raise ValueError(f"expected 1 or 3 source channels, got {c}")
    if c == channels and h == w == resolution:
        return images
    src_mode = "L" if c == 1 else "RGB"
    work_mode = "L" if c == 1 else mode  # grey sources stay grey through the resize; repeat afterwards
    arrays = images.numpy()  # uint8 [N, c, h, w]

    def convert(start: int, stop: int) -> None:
        # Chunks, not single images: per-image tasks cost more in scheduling than the 28->64 resize itself.
        for i in range(start, stop):
            a = arrays[i, 0] if c == 1 else arrays[i].transpose(1, 2, 0)  # [h, w] or [h, w, 3]
            img = Image.fromarray(np.ascontiguousarray(a), mode=src_mode)
            if img.mode != work_mode:
                img = img.convert(work_mode)
            out[i] = torch.from_numpy(pil_to_chw(resize_crop(img, resolution)))  # uint8 [c', R, R]

    out = torch.empty((n, 1 if work_mode == "L" else 3, resolution, resolution), dtype=torch.uint8)
    step = max(256, -(-n // num_threads()))
    with ThreadPoolExecutor(num_threads()) as pool:
        list(pool.map(lambda a: convert(a, min(n, a + step)), range(0, n, step)))
    if out.shape[1] != channels:  # grey source, RGB model
        out = out.expand(n, channels, resolution, resolution).contiguous()  # uint8 [N, 3, R, R]
    return out


# --------------------------------------------------------------------------- hashing


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_files(files: Iterable[tuple[str, Path]]) -> str:
    """Content hash of (key, path) pairs: the keys (relative names) and every file's bytes."""
    files = list(files)
    with ThreadPoolExecutor(num_threads()) as pool:
        digests = list(pool.map(_file_digest, [p for _, p in files], chunksize=64))
    h = hashlib.blake2b(digest_size=16)
    for (key, _), d in zip(files, digests, strict=True):
        h.update(f"{key}\0{d}\n".encode())
    return h.hexdigest()


def fingerprint(source_digest: str, options: dict[str, Any]) -> str:
    """Cache key: the source content plus everything that changes the decoded tensor."""
    payload = {"format": CACHE_FORMAT, "pillow": PIL.__version__, "source": source_digest, **options}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- cache


def cache_path(fp: str) -> Path:
    return cache_dir() / "datasets" / f"{fp}.safetensors"


_TIDIED: set[Path] = set()  # cache folders whose stale temporaries this process has already removed


def read_cache(fp: str) -> Decoded | None:
    """The cached tensors for fingerprint ``fp``, or None (missing or unreadable: rebuilt)."""
    from safetensors import safe_open

    path = cache_path(fp)
    if path.parent not in _TIDIED:  # leftovers of a writer killed in an earlier run (old enough to be dead)
        _TIDIED.add(path.parent)
        clean_stale_temporaries(path.parent)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            images = f.get_tensor("images")
            labels = f.get_tensor("labels") if "labels" in f.keys() else None
        if meta.get("format") != str(CACHE_FORMAT) or meta.get("fingerprint") != fp:
            return None
        return Decoded(images, labels, json.loads(meta["class_names"]), json.loads(meta.get("skipped", "[]")))
    except Exception as e:  # a truncated or foreign file is just a cache miss
        logger.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, e)
        return None


def _cache_unwritable(directory: Path, expected_bytes: int = 0) -> str | None:
    try:
        check_output_space(directory, expected_bytes, "dataset cache")
    except WriteError as e:
        return str(e)
    return None


def _warn_uncached(problem: str) -> None:
    warnings.warn(
        f"decoded images will not be cached, so the next run decodes them again ({problem}); "
        "set GANFORGE_CACHE to a writable folder",
        CacheWarning,
        4,
    )


def write_cache(fp: str, decoded: Decoded, name: str) -> None:
    """Store atomically (temp file + os.replace) so a crash or a concurrent rank never leaves half a file.

    A cache only saves time: a full, read-only or missing disk is a warning, and the cache is not written when
    it would not leave the disk its headroom (a cache must not take the space the run's checkpoints need).
    """
    from safetensors.torch import save_file

    path = cache_path(fp)
    tensors = {"images": decoded.images.contiguous()}
    if decoded.labels is not None:
        tensors["labels"] = decoded.labels.contiguous()
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    problem = _cache_unwritable(path.parent, size)
    if problem is not None:
        _warn_uncached(problem)
        return
    meta = {
        "format": str(CACHE_FORMAT),
        "fingerprint": fp,
        "name": name,
        "class_names": json.dumps(decoded.class_names),
        "skipped": json.dumps(decoded.skipped),
    }
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except (OSError, WriteError) as e:  # a cache only costs speed
        _warn_uncached(f"{format_bytes(size)} for {path}: {e}")


def warn_skipped(where: str, skipped: list[str], shown: int = 3) -> None:
    """One warning line: how many image files were left out and why, naming the first few."""
    if not skipped:
        return
    unsupported = sum(" (unsupported format" in entry for entry in skipped)
    kinds = [f"{len(skipped) - unsupported} cannot be decoded", f"{unsupported} in a format ganforge does not read"]
    why = ", ".join(k for k, n in zip(kinds, (len(skipped) - unsupported, unsupported), strict=True) if n)
    first = "; ".join(skipped[:shown]) + (f"; and {len(skipped) - shown} more" if len(skipped) > shown else "")
    warnings.warn(f"{where}: skipped {len(skipped)} image file(s): {why}: {first}", DataWarning, 3)


def warn_unlabelled(where: str, unlabelled: list[str], total: int, why: str, shown: int = 3) -> None:
    """One warning line: how many images were left out for want of a label, naming the first few."""
    if not unlabelled:
        return
    first = ", ".join(unlabelled[:shown]) + (f", and {len(unlabelled) - shown} more" if len(unlabelled) > shown else "")
    warnings.warn(
        f"{where}: {len(unlabelled)} of {total} images {why} and are left out ({first}); "
        "--set data.unlabelled=error stops instead",
        DataWarning,
        3,
    )


def cached_decode(fp: str, name: str, build: Callable[[], Decoded]) -> Decoded:
    hit = read_cache(fp)
    if hit is not None:
        logger.info("%s: loaded %d images from cache %s", name, hit.images.shape[0], cache_path(fp))
        return hit
    directory = cache_path(fp).parent
    problem = _cache_unwritable(directory)
    if problem is not None:  # said before the decoding, which is the slow part
        _warn_uncached(problem)
        return build()
    decoded = build()
    write_cache(fp, decoded, name)
    return decoded
