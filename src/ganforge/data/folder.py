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
from ganforge.data.core import Decoded, convert_image, num_threads, pil_mode, pil_to_chw, resize_crop
from ganforge.errors import ConfigError, DataError

logger = logging.getLogger("ganforge.data")

# What PIL opens in practice: these are decoded, and reported (one warning line) when they cannot be.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
    | {".tga", ".ico", ".jfif"}
)
# Images in formats ganforge does not read: reported, so a folder of phone photos is not silently empty.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".exr", ".hdr", ".psd", ".svg", ".dng", ".cr2", ".nef", ".arw"}
)
# Anything else (tags.csv, notes.txt, metadata.json, ...) is not an image and is ignored quietly.


@dataclass
class FolderScan:
    """The images of a folder, in order, with their labels; nothing decoded yet."""

    root: Path
    files: list[Path]  # absolute paths, sorted by relative path, after label filtering
    labels: list[int] | None  # class index per file
    class_names: list[str]
    label_csv: Path | None = None
    skipped: list[str] = field(default_factory=list)  # "relative/name (reason)": image files left out
    unlabelled: list[str] = field(default_factory=list)  # relative names of images left out for want of a label
    unlabelled_why: str = ""  # e.g. "have no labelled row in tags.csv (column 'hair')"
    num_labelled_candidates: int = 0  # images the labels were looked up for

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


# PIL's note on palette transparency (convert_image composites it): filtered once here, not with
# warnings.catch_warnings around each decode, which is not thread-safe and, from the decoding threads,
# could leave "ignore UserWarning" installed for the whole process (ganforge's own warnings included)
warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)


def decode_image(path: Path, channels: int, resolution: int) -> np.ndarray:
    """One file -> uint8 [C, R, R]: EXIF orientation, to 8-bit L/RGB (``convert_image``), Resize + CenterCrop."""
    with Image.open(path) as source:
        img = convert_image(ImageOps.exif_transpose(source), pil_mode(channels), source)
        return pil_to_chw(resize_crop(img, resolution))  # uint8 [C, R, R]


def short_reason(error: BaseException, path: Path) -> str:
    """``Type: message`` on one line without the file's own path (the report names the file already)."""
    text = str(error).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or "unreadable"
    text = text.splitlines()[0]
    text = text if len(text) <= 100 else text[:97] + "..."
    return f"{type(error).__name__}: {text}"


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
    csv_path = _label_csv_path(cfg, root) if mode == "csv" else None
    images, unsupported = _list_images(root)
    skipped = sorted(f"{p.relative_to(root).as_posix()} (unsupported format {p.suffix.lower()})" for p in unsupported)
    scan = FolderScan(root, images, None, [], csv_path, skipped)
    if check_headers:
        _drop_unidentified(scan)
    if mode == "subfolders":
        _label_by_subfolder(scan)
    elif mode == "csv":
        assert csv_path is not None
        _label_by_csv(scan, csv_path, cfg.label_column)
    if scan.unlabelled and cfg.unlabelled == "error":
        first = ", ".join(scan.unlabelled[:3]) + (", ..." if len(scan.unlabelled) > 3 else "")
        raise DataError(
            f"{len(scan.unlabelled)} of {scan.num_labelled_candidates} images under {root} {scan.unlabelled_why} "
            f"({first}): label them, or --set data.unlabelled=drop to leave them out"
        )
    if check_headers and cfg.max_images > 0:  # in memory, decode_folder stops after max_images good files
        scan.files = scan.files[: cfg.max_images]
        if scan.labels is not None:
            scan.labels = scan.labels[: cfg.max_images]
    return scan


def _label_csv_path(cfg: DataConfig, root: Path) -> Path:
    """``data.label_csv``, relative to the image folder unless absolute."""
    if not cfg.label_csv or not cfg.label_column:
        raise ConfigError(
            "data.labels=csv needs data.label_csv and data.label_column "
            "(e.g. --set data.label_csv=tags.csv --set data.label_column=hair)"
        )
    csv_path = Path(cfg.label_csv).expanduser()
    return (csv_path if csv_path.is_absolute() else root / csv_path).resolve()


def _list_images(root: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``root`` in a stable order, and the image-like ones PIL cannot read.

    Files that are clearly not images (a tags.csv, a README) are ignored quietly.
    """
    images: list[Path] = []
    unsupported: list[Path] = []
    others: list[Path] = []
    for path in _walk(root):
        suffix = path.suffix.lower()
        (
            images if suffix in IMAGE_EXTENSIONS else unsupported if suffix in UNSUPPORTED_IMAGE_EXTENSIONS else others
        ).append(path)
    images.sort(key=lambda p: p.relative_to(root).as_posix())
    if others:
        logger.info("%s: ignored %d files that are not images (e.g. %s)", root, len(others), others[0].name)
    if not images:
        kinds = sorted({p.suffix.lower() or p.name for p in others + unsupported})
        listed = ", ".join(kinds[:5]) + (", ..." if len(kinds) > 5 else "")
        found = f" (it holds {len(others) + len(unsupported)} other files: {listed})" if kinds else " (it is empty)"
        raise DataError(
            f"no images in {root}{found}: put .jpg/.png files in it (sub-folders are searched) "
            "or point --data-root at another folder"
        )
    return images, unsupported


def _drop_unidentified(scan: FolderScan) -> None:
    def ok(path: Path) -> str:
        try:
            with Image.open(path):
                return ""
        except Exception as e:
            return short_reason(e, path)

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
    scan.num_labelled_candidates = len(scan.files)
    scan.unlabelled = [scan.rel(p) for p, k in zip(scan.files, keep, strict=True) if not k]
    scan.unlabelled_why = "lie directly in the folder, outside the class sub-folders,"
    scan.labels = [index[q[0]] for q, k in zip(parts, keep, strict=True) if k]
    scan.files = [p for p, k in zip(scan.files, keep, strict=True) if k]
    scan.class_names = names
    logger.info("%s: %d classes from sub-folders; kept %d images", scan.root, len(names), len(scan.files))


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
    scan.num_labelled_candidates = len(scan.files)
    scan.unlabelled = [scan.rel(p) for p, v in zip(scan.files, values, strict=True) if v is None]
    scan.unlabelled_why = f"have no labelled row in {csv_path.name} (column {column!r})"
    scan.files = [p for p, v in zip(scan.files, values, strict=True) if v is not None]
    scan.labels = [index[v] for v in values if v is not None]
    scan.class_names = names
    logger.info("%s: %d classes from %s column %r; kept %d images", scan.root, len(names), csv_path.name, column,
                len(scan.files))  # fmt: skip


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
            return short_reason(e, path)

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
