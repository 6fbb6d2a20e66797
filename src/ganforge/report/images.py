"""Grid images for the HTML pages: JPEG thumbnails inside a byte budget, or relative links.

A 400-epoch run has 400 grids of up to 776x776 pixels (anime-dcgan's 8x8 faces at 96 px); as PNGs that is
hundreds of MB. The timeline therefore embeds JPEG thumbnails all of one size, chosen so that the whole
timeline fits ``TIMELINE_BUDGET_BYTES``: short runs get sharp large frames, long ones smaller frames. Final
grids, few in number, are embedded at full size as PNG.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

TIMELINE_BUDGET_BYTES = 2_000_000  # encoded JPEG bytes of all timeline frames together (base64 adds a third)
MAX_SIDE = 640  # a thumbnail's longer side never exceeds this (nor the grid's own size)
MIN_SIDE = 96  # nor falls below this, however many frames: past it a frame shows nothing
SIDE_QUANTUM = 32  # sizes are multiples of this, so a run that grows re-encodes its frames rarely
JPEG_QUALITY = 80
FULL_PNG_LIMIT = 300_000  # a full-size grid above this (anime-dcgan's 776 px faces: ~1 MB) is embedded as JPEG
FULL_JPEG_QUALITY = 90


@dataclass
class ThumbnailCache:
    """Encoded thumbnails keyed by file identity and size, so the report rewritten every minute during training
    encodes each grid once (a changed file has another mtime or size and is encoded again)."""

    encoded: dict[tuple[str, int, int, int], bytes] = field(default_factory=dict)

    def keep_only(self, side: int) -> None:
        """Forget thumbnails of other sizes (a growing run shrinks its frames now and then)."""
        self.encoded = {key: value for key, value in self.encoded.items() if key[3] == side}

    def jpeg(self, path: Path, side: int) -> bytes:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, side)
        if key not in self.encoded:
            self.encoded[key] = encode_jpeg(path, side)
        return self.encoded[key]


def encode_jpeg(path: Path, side: int, quality: int = JPEG_QUALITY) -> bytes:
    """``path`` as a JPEG whose longer side is at most ``side`` pixels (grayscale stays one channel)."""
    with Image.open(path) as image:
        image = image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB")
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def full_uri(path: Path) -> str:
    """A grid at full size: its PNG as it is, or a fine JPEG when the PNG is large."""
    payload = path.read_bytes()
    if len(payload) <= FULL_PNG_LIMIT:
        return data_uri(payload, "image/png")
    return data_uri(encode_jpeg(path, native_side(path), FULL_JPEG_QUALITY), "image/jpeg")


def relative_link(path: Path, page: Path) -> str:
    """``path`` as a link relative to the page's folder (the page may be written anywhere)."""
    return Path(os.path.relpath(path.resolve(), page.resolve().parent)).as_posix()


def native_side(path: Path) -> int:
    with Image.open(path) as image:
        return max(image.size)


def timeline_sources(
    paths: list[Path], cache: ThumbnailCache, budget: int = TIMELINE_BUDGET_BYTES
) -> tuple[list[str], int]:
    """Data URIs of ``paths`` as thumbnails of one common size that fit ``budget`` together; and that size.

    The size is estimated from the first, middle and last frames (early noise compresses worst, late samples
    best), then lowered further while the whole set still exceeds the budget.
    """
    if not paths:
        return [], 0
    side = min(MAX_SIDE, max(native_side(p) for p in (paths[0], paths[-1])))
    probes = sorted({paths[0], paths[len(paths) // 2], paths[-1]})
    for _ in range(4):
        estimate = len(paths) * sum(len(cache.jpeg(p, side)) for p in probes) / len(probes)
        if estimate <= budget or side <= MIN_SIDE:
            break
        side = _smaller(side, budget / estimate)
    frames = [cache.jpeg(p, side) for p in paths]
    while sum(map(len, frames)) > budget and side > MIN_SIDE:
        side = _smaller(side, budget / sum(map(len, frames)))
        frames = [cache.jpeg(p, side) for p in paths]
    cache.keep_only(side)
    return [data_uri(f, "image/jpeg") for f in frames], side


def _smaller(side: int, byte_ratio: float) -> int:
    """The next side to try when the frames are ``1 / byte_ratio`` times too big: JPEG bytes grow about with
    the pixel count, so the side shrinks with the ratio's square root (rounded down to the quantum)."""
    target = side * math.sqrt(byte_ratio) * 0.95
    quantised = int(target // SIDE_QUANTUM) * SIDE_QUANTUM
    return max(MIN_SIDE, min(quantised, side - SIDE_QUANTUM))


def crop_rows(path: Path, rows: int, padding: int = 2) -> list[str]:
    """The ``rows`` image rows of a torchvision grid (``padding`` px between cells) as PNG data URIs: the
    rows of a conditional model's grid are its classes."""
    with Image.open(path) as image:
        width, height = image.size
        cell = (height - padding) // rows - padding  # make_grid: height = rows * (cell + padding) + padding
        uris = []
        for row in range(rows):
            top = padding + row * (cell + padding)
            strip = image.crop((0, top, width, top + cell))
            buffer = io.BytesIO()
            strip.save(buffer, format="PNG")
            uris.append(data_uri(buffer.getvalue(), "image/png"))
    return uris
