"""A folder of image files: scanning, labels (sub-folders or a CSV), decoding.

Scanning is cheap (names only) and happens on every load, because the file list and the label
assignment decide the cache key; decoding happens once, on a cache miss (or per batch when
streaming). Files are taken in sorted order of their path relative to the root, so ``max_images``
and the cache key do not depend on the filesystem's listing order.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ganforge.config import DataConfig
from ganforge.data.core import Decoded, num_threads, pil_mode, pil_to_chw, resize_crop
from ganforge.errors import ConfigError, DataError

logger = logging.getLogger("ganforge.data")

# What PIL opens in practice; anything else in the folder is reported and skipped.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
    | {".tga", ".ico", ".jfif"}
)


@dataclass
class FolderScan:
    """The images of a folder, in order, with their labels; nothing decoded yet."""

    root: Path
    files: list[Path]  # absolute paths, sorted by relative path, after label filtering
    labels: list[int] | None  # class index per file
    class_names: list[str]
    label_csv: Path | None = None
    skipped: list[str] = field(default_factory=list)  # "relative/name (reason)"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def decode_image(path: Path, channels: int, resolution: int) -> np.ndarray:
    """One file -> uint8 [C, R, R]: EXIF orientation, convert to L/RGB, Resize + CenterCrop."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        with warnings.catch_warnings():
            # PIL warns about palette images with transparency; dropping alpha is what we want here.
            warnings.simplefilter("ignore", UserWarning)
            img = img.convert(pil_mode(channels))
        return pil_to_chw(resize_crop(img, resolution))  # uint8 [C, R, R]


def _walk(root: Path) -> list[Path]:
    """All non-hidden files under ``root``, following symlinked folders once."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return out


def _sort_classes(values: set[str]) -> list[str]:
    """Numeric class names sort as numbers ("2" before "10"), others alphabetically."""
    if values and all(re.fullmatch(r"-?\d+", v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def scan_folder(cfg: DataConfig, check_headers: bool = False) -> FolderScan:
    """List the images under ``cfg.root`` and attach labels per ``cfg.labels``.

    ``check_headers`` opens each file's header (cheap) so the streaming loader can drop files PIL
    cannot identify up front; the in-memory path finds bad files while decoding them instead.
    """
    root = Path(cfg.root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist: point --data-root at a folder of images")
    if not root.is_dir():
        raise DataError(f"--data-root {root} is a file, not a folder: point it at the folder that holds the images")
    mode = "none" if cfg.labels == "auto" else cfg.labels
    csv_path = None
    if mode == "csv":
        if not cfg.label_csv or not cfg.label_column:
            raise ConfigError(
                "data.labels=csv needs data.label_csv and data.label_column "
                "(e.g. --set data.label_csv=tags.csv --set data.label_column=hair)"
            )
        csv_path = Path(cfg.label_csv).expanduser()
        csv_path = (csv_path if csv_path.is_absolute() else root / csv_path).resolve()

    images: list[Path] = []
    others: list[str] = []
    for path in _walk(root):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        elif csv_path is None or path.resolve() != csv_path:
            others.append(f"{path.relative_to(root).as_posix()} (not an image file)")
    images.sort(key=lambda p: p.relative_to(root).as_posix())
    others.sort()
    if not images:
        found = f" (it holds {len(others)} other files)" if others else " (it is empty)"
        raise DataError(
            f"no images in {root}{found}: put .jpg/.png files in it (sub-folders are searched) "
            "or point --data-root at another folder"
        )
    scan = FolderScan(root, images, None, [], csv_path, others)
    if check_headers:
        _drop_unidentified(scan)
    if mode == "subfolders":
        _label_by_subfolder(scan)
    elif mode == "csv":
        assert csv_path is not None
        _label_by_csv(scan, csv_path, cfg.label_column)
    if check_headers and cfg.max_images > 0:  # in memory, decode_folder stops after max_images good files
        scan.files = scan.files[: cfg.max_images]
        if scan.labels is not None:
            scan.labels = scan.labels[: cfg.max_images]
    return scan


def _drop_unidentified(scan: FolderScan) -> None:
    def ok(path: Path) -> str:
        try:
            with Image.open(path):
                return ""
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(num_threads()) as pool:
        reasons = list(pool.map(ok, scan.files, chunksize=64))
    bad = [f"{scan.rel(p)} ({r})" for p, r in zip(scan.files, reasons, strict=True) if r]
    scan.files = [p for p, r in zip(scan.files, reasons, strict=True) if not r]
    scan.skipped = sorted(scan.skipped + bad)
    if not scan.files:
        raise DataError(f"none of the image files in {scan.root} can be read: replace them or use another folder")


def _label_by_subfolder(scan: FolderScan) -> None:
    parts = [p.relative_to(scan.root).parts for p in scan.files]
    names = _sort_classes({q[0] for q in parts if len(q) > 1})
    if not names:
        raise DataError(
            f"data.labels=subfolders but {scan.root} has no sub-folders with images: "
            "put each class in its own sub-folder, or use --set data.labels=none"
        )
    index = {n: i for i, n in enumerate(names)}
    keep = [len(q) > 1 for q in parts]
    dropped = keep.count(False)
    scan.labels = [index[q[0]] for q, k in zip(parts, keep, strict=True) if k]
    scan.files = [p for p, k in zip(scan.files, keep, strict=True) if k]
    scan.class_names = names
    logger.info(
        "%s: %d classes from sub-folders; kept %d of %d images (%d directly in the root have no class)",
        scan.root,
        len(names),
        len(scan.files),
        len(scan.files) + dropped,
        dropped,
    )


def _label_by_csv(scan: FolderScan, csv_path: Path, column: str) -> None:
    """Match CSV rows to images by file name (or by relative path when the CSV holds one)."""
    if not csv_path.is_file():
        raise DataError(
            f"label CSV {csv_path} not found: set --set data.label_csv=PATH (absolute, or relative to {scan.root})"
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "file" not in columns:
            raise DataError(
                f"{csv_path} has no 'file' column (columns: {', '.join(columns) or 'none'}): "
                "the label CSV needs a 'file' column with the image file names"
            )
        if column not in columns:
            others = ", ".join(c for c in columns if c != "file")
            raise DataError(f"{csv_path} has no column {column!r}: set --set data.label_column= one of: {others}")
        table: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            key = (row.get("file") or "").strip().replace("\\", "/")
            value = (row.get(column) or "").strip()
            if not key or not value:
                continue  # no label for that file: it is dropped like a file without a row
            if table.get(key, value) != value:
                raise DataError(
                    f"{csv_path} line {line}: {key} is labelled both {table[key]!r} and {value!r}: "
                    "keep one row per file"
                )
            table[key] = value
    values: list[str | None] = []
    for path in scan.files:
        rel = scan.rel(path)
        values.append(table.get(rel, table.get(path.name)))
    kept = [v for v in values if v is not None]
    if not kept:
        raise DataError(
            f"no image under {scan.root} has a labelled row in {csv_path.name} (column {column!r}): "
            "the 'file' column must hold the image file names (e.g. 3.jpg)"
        )
    names = _sort_classes(set(kept))
    index = {n: i for i, n in enumerate(names)}
    total = len(scan.files)
    scan.files = [p for p, v in zip(scan.files, values, strict=True) if v is not None]
    scan.labels = [index[v] for v in values if v is not None]
    scan.class_names = names
    logger.info(
        "%s: %d classes from %s column %r; kept %d of %d images (%d have no labelled row)",
        scan.root,
        len(names),
        csv_path.name,
        column,
        len(scan.files),
        total,
        total - len(scan.files),
    )


def decode_folder(scan: FolderScan, channels: int, resolution: int, limit: int = 0) -> Decoded:
    """Decode the files of ``scan`` in order, skipping unreadable ones, until ``limit`` good images (0 = all).

    Threads do the work (PIL releases the GIL while decoding and resizing).
    """
    n = len(scan.files) if limit <= 0 else min(limit, len(scan.files))
    out = torch.empty((n, channels, resolution, resolution), dtype=torch.uint8)  # filled in file order
    picked: list[int] = []  # indices into scan.files of the decoded images
    bad: list[str] = []

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, channels, resolution)
        except Exception as e:  # corrupt, truncated, or not really an image
            return f"{type(e).__name__}: {e}"

    start = 0
    with ThreadPoolExecutor(num_threads()) as pool:
        while len(picked) < n and start < len(scan.files):
            # Only as many files as still needed (plus slack for bad ones), so max_images stays cheap.
            stop = min(len(scan.files), start + max(n - len(picked), 16))
            for i, res in zip(range(start, stop), pool.map(one, scan.files[start:stop]), strict=True):
                if isinstance(res, str):
                    bad.append(f"{scan.rel(scan.files[i])} ({res})")
                elif len(picked) < n:
                    out[len(picked)] = torch.from_numpy(res)
                    picked.append(i)
            start = stop
    if not picked:
        raise DataError(f"none of the image files in {scan.root} can be read: replace them or use another folder")
    if len(picked) < n:
        out = out[: len(picked)].clone()  # uint8 [N_ok, C, R, R]; drop the unused tail
    labels = None
    if scan.labels is not None:
        labels = torch.tensor([scan.labels[i] for i in picked], dtype=torch.int64)  # int64 [N_ok]
    # Only decode failures: the scan's own skips are reported fresh on every load, cache hit or not.
    return Decoded(out, labels, list(scan.class_names), sorted(bad))
