"""The dataset registry and ``load_dataset``: locate the source, hash it, decode once, cache.

Entries of ``DATASETS`` take ``(cfg, channels, resolution)`` and return a ``Source``: where the
data is (downloading it first when allowed), how to hash it and how to decode it. ``load_dataset``
turns that into an ``ImageData``, going through the cache in ``cache_dir()/datasets``.

Splits:
  mnist, fashion-mnist, cifar10: the official train/test files.
  digits: scikit-learn's 1,797 bundled 8x8 digits; test = every 5th image (index % 5 == 4, 359
      images), train = the other 1,438. No RNG, so the split is the same on every version; the
      file is ordered roughly 0..9 repeatedly, so both splits are balanced across classes.
  image-folder: a folder has no split; train and test both use every image.
  stacked-mnist: drawn from the MNIST split of the same name (see ``stacked``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganforge.config import DataConfig
from ganforge.data import stacked
from ganforge.data.core import (
    Decoded,
    ImageData,
    cached_decode,
    digest_files,
    fingerprint,
    pil_mode,
    to_model_format,
    warn_skipped,
    warn_unlabelled,
)
from ganforge.data.folder import FolderScan, decode_folder, scan_folder
from ganforge.data.idx import read_idx
from ganforge.errors import ConfigError, DataError
from ganforge.registry import Registry

logger = logging.getLogger("ganforge.data")


@dataclass
class Source:
    """A located dataset, not yet decoded."""

    name: str  # e.g. "mnist/test"
    digest: Callable[[], str]  # content hash of the source files
    build: Callable[[], Decoded]  # decode (only on a cache miss)
    options: dict[str, Any] = field(default_factory=dict)  # what else changes the decoded tensor
    skipped: list[str] = field(default_factory=list)  # files left out before decoding (reported)
    own_labels: bool = True  # built-in labels (mnist...) vs labels chosen by cfg.labels (image-folder)
    scan: FolderScan | None = None  # image-folder: the scan (its images left out for want of a label are reported)


DATASETS: Registry[Callable[[DataConfig, int, int], Source]] = Registry("dataset")


def load_dataset(cfg: DataConfig, channels: int, resolution: int) -> ImageData:
    """Decode (or fetch from the cache) ``cfg.dataset`` as uint8 [N, channels, resolution, resolution]."""
    source, fp = _locate(cfg, channels, resolution)
    decoded = cached_decode(fp, source.name, source.build)
    warn_skipped(source.name, sorted(source.skipped + decoded.skipped))
    if source.scan is not None:
        scan = source.scan
        warn_unlabelled(source.name, scan.unlabelled, scan.num_labelled_candidates, scan.unlabelled_why)
    images, labels, class_names = decoded.images, decoded.labels, decoded.class_names
    if cfg.max_images > 0:  # builders already stop early; this keeps the contract for any entry
        images = images[: cfg.max_images]
        labels = labels[: cfg.max_images] if labels is not None else None
    if source.own_labels and cfg.labels == "none":
        labels, class_names = None, []
    return ImageData(images, labels, list(class_names), source.name, fp)


def dataset_fingerprint(cfg: DataConfig, channels: int, resolution: int) -> str:
    """The ``ImageData.fingerprint`` that ``load_dataset`` would give, without decoding anything."""
    return _locate(cfg, channels, resolution)[1]


def _locate(cfg: DataConfig, channels: int, resolution: int) -> tuple[Source, str]:
    pil_mode(channels)  # 1 or 3, else a ConfigError naming the fix
    if resolution <= 0:
        raise ConfigError(f"model.resolution={resolution} must be > 0")
    source = DATASETS.get(cfg.dataset)(cfg, channels, resolution)
    if source.own_labels and cfg.labels in ("subfolders", "csv"):
        raise ConfigError(
            f"data.labels={cfg.labels} applies to image-folder only; {cfg.dataset} has its own labels: "
            "use --set data.labels=auto (or none)"
        )
    options = {"dataset": cfg.dataset, "channels": channels, "resolution": resolution, "max": cfg.max_images}
    return source, fingerprint(source.digest(), {**options, **source.options})


# --------------------------------------------------------------------------- helpers


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser().resolve()


def _reason(e: BaseException) -> str:
    """First line of an exception, short enough for a one-line message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _torchvision_download(cls_name: str, root: Path, train: bool) -> None:
    """torchvision's own downloader (tests replace the class's ``download`` so no network is tried).

    torchvision makes ``ROOT/<Name>/raw`` (and ROOT itself) before it tries the network; when the download
    fails, the empty folders it made are removed again, so a mistyped --data-root leaves nothing behind.
    """
    import torchvision.datasets as tvd

    made = [p for p in (root / cls_name / "raw", root / cls_name, root, *root.parents) if not p.exists()]
    try:
        getattr(tvd, cls_name)(str(root), train=train, download=True)
    except BaseException:
        for folder in made:  # deepest first; a folder that now holds a file (a partial download) stays
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break
        raise


# --------------------------------------------------------------------------- MNIST-like (IDX)

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(root: Path, folder: str, stem: str) -> Path | None:
    """torchvision's layout ROOT/<Folder>/raw first, then the file directly in ROOT; plain or .gz."""
    for d in (root / folder / "raw", root):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _idx_source(
    cfg: DataConfig, channels: int, resolution: int, key: str, title: str, folder: str, class_names: list[str]
) -> Source:
    root = _root(cfg)
    stems = _IDX_STEMS[cfg.split]
    found = [_find_idx(root, folder, s) for s in stems]
    if None in found:
        if not cfg.download:
            raise DataError(_missing_idx(title, cfg, root, folder, "downloading is off (--set data.download=true)"))
        try:
            _torchvision_download(folder, root, cfg.split == "train")
        except Exception as e:  # offline, blocked, a mirror down...
            why = f"downloading them failed: {_reason(e)}"
            raise DataError(_missing_idx(title, cfg, root, folder, why)) from None
        found = [_find_idx(root, folder, s) for s in stems]
        if None in found:
            raise DataError(_missing_idx(title, cfg, root, folder, "the download did not produce them"))
    images_path, labels_path = found[0], found[1]
    assert images_path is not None and labels_path is not None

    def build() -> Decoded:
        images = read_idx(images_path)  # uint8 [N, 28, 28]
        labels = read_idx(labels_path)  # uint8 [N]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape} do not match: "
                "download both files again"
            )
        if cfg.max_images > 0:  # before any resizing, which is the slow part
            images, labels = images[: cfg.max_images], labels[: cfg.max_images]
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1)  # uint8 [N, 1, 28, 28]
        x = to_model_format(x, channels, resolution)  # uint8 [N, C, R, R]
        return Decoded(x, torch.from_numpy(labels.astype(np.int64)), list(class_names))

    return Source(
        f"{key}/{cfg.split}",
        lambda: digest_files([(p.name.removesuffix(".gz"), p) for p in (images_path, labels_path)]),
        build,
        {"split": cfg.split},
    )


def _missing_idx(title: str, cfg: DataConfig, root: Path, folder: str, why: str) -> str:
    names = " and ".join(f"{s}.gz" for s in _IDX_STEMS[cfg.split])
    other = "test" if cfg.split == "train" else "train"
    hint = ""
    if all(_find_idx(root, folder, s) for s in _IDX_STEMS[other]):
        hint = f" (the {other} split is there: --split {other})"
    return (
        f"{title} {cfg.split} split not found{hint}: put {names} (gzipped or not) in {root / folder / 'raw'} "
        f"or directly in {root}, or point --data-root at the folder that holds them; {why}"
    )


@DATASETS.register("mnist")
def mnist(cfg: DataConfig, channels: int, resolution: int) -> Source:
    """MNIST handwritten digits, 28x28 grey, classes "0".."9"."""
    return _idx_source(cfg, channels, resolution, "mnist", "MNIST", "MNIST", [str(i) for i in range(10)])


@DATASETS.register("fashion-mnist")
def fashion_mnist(cfg: DataConfig, channels: int, resolution: int) -> Source:
    """Fashion-MNIST, 28x28 grey, torchvision's ten class names."""
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return _idx_source(cfg, channels, resolution, "fashion-mnist", "Fashion-MNIST", "FashionMNIST", names)


@DATASETS.register("stacked-mnist")
def stacked_mnist(cfg: DataConfig, channels: int, resolution: int) -> Source:
    """Three MNIST digits as R, G, B: 1,000 modes, labels 100 d_R + 10 d_G + d_B (see ``data.stacked``)."""
    stacked.check_channels(channels)
    digits = _idx_source(stacked.channel_source(cfg), 1, 28, "mnist", "MNIST", "MNIST", [str(i) for i in range(10)])
    return Source(
        f"stacked-mnist/{cfg.split}",
        digits.digest,
        lambda: stacked.build_stacks(digits.build(), cfg, channels, resolution),
        {"split": cfg.split, "size": cfg.stacked_size, "seed": cfg.stacked_seed, "version": stacked.STACK_VERSION},
    )


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig, channels: int, resolution: int) -> Source:
    """CIFAR-10 through torchvision (python pickle batches), 32x32 RGB, ten classes."""
    root = _root(cfg)
    if root.name == _CIFAR_DIR and not (root / _CIFAR_DIR).is_dir():
        root = root.parent  # --data-root pointed at the batches folder itself
    names = _CIFAR_FILES[cfg.split] + ["batches.meta"]
    files = [root / _CIFAR_DIR / n for n in names]
    missing = [p for p in files if not p.is_file()]
    if missing:
        if not cfg.download:
            raise DataError(_missing_cifar(cfg, root, "downloading is off (--set data.download=true)"))
        try:
            _torchvision_download("CIFAR10", root, cfg.split == "train")
        except Exception as e:  # offline, blocked...
            raise DataError(_missing_cifar(cfg, root, f"downloading it failed: {_reason(e)}")) from None
        if any(not p.is_file() for p in files):
            raise DataError(_missing_cifar(cfg, root, "the download did not produce them"))

    def build() -> Decoded:
        import torchvision.datasets as tvd

        try:
            ds = tvd.CIFAR10(str(root), train=cfg.split == "train", download=False)
        except RuntimeError as e:  # torchvision's md5 check failed
            raise DataError(
                f"CIFAR-10 in {root / _CIFAR_DIR} is damaged ({_reason(e)}): delete the folder and download it again"
            ) from None
        data, targets = ds.data, ds.targets
        if cfg.max_images > 0:
            data, targets = data[: cfg.max_images], targets[: cfg.max_images]
        x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]
        x = to_model_format(x, channels, resolution)  # uint8 [N, C, R, R]
        return Decoded(x, torch.tensor(targets, dtype=torch.int64), list(ds.classes))

    return Source(
        f"cifar10/{cfg.split}", lambda: digest_files([(p.name, p) for p in files]), build, {"split": cfg.split}
    )


def _missing_cifar(cfg: DataConfig, root: Path, why: str) -> str:
    names = ", ".join(_CIFAR_FILES[cfg.split] + ["batches.meta"])
    return (
        f"CIFAR-10 {cfg.split} split not found: put {names} (from cifar-10-python.tar.gz) in {root / _CIFAR_DIR}, "
        f"or point --data-root at the folder that holds {_CIFAR_DIR}; {why}"
    )


# --------------------------------------------------------------------------- scikit-learn digits


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 ink levels -> 0..255, rounded to the nearest byte (16 -> 255 exactly).
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # uint8 [1797, 8, 8]
    return images, bunch.target.astype(np.int64)  # int64 [1797]


def _bundled_digits_file() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@DATASETS.register("digits")
def digits(cfg: DataConfig, channels: int, resolution: int) -> Source:
    """scikit-learn's bundled 8x8 digits (no download); split: test = index % 5 == 4 (see module doc)."""

    def split_mask(n: int) -> np.ndarray:
        test = np.arange(n) % 5 == 4
        return test if cfg.split == "test" else ~test

    def digest() -> str:
        import hashlib

        # the bundled file's bytes, read without importing scikit-learn (~2.5 s on a 2-core CPU, paid by every
        # digits run that finds its images in the cache); the decoding it stands for is _digits_arrays, v1
        bundled = _bundled_digits_file()
        if bundled is not None:
            return hashlib.blake2b(b"digits-v1:" + bundled.read_bytes(), digest_size=16).hexdigest()
        images, labels = _digits_arrays()  # a scikit-learn that keeps the data elsewhere: decode it to hash it
        return hashlib.blake2b(images.tobytes() + labels.tobytes(), digest_size=16).hexdigest()

    def build() -> Decoded:
        images, labels = _digits_arrays()
        keep = split_mask(len(images))
        images, labels = images[keep], labels[keep]
        if cfg.max_images > 0:
            images, labels = images[: cfg.max_images], labels[: cfg.max_images]
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # uint8 [N, 1, 8, 8]
        x = to_model_format(x, channels, resolution)  # uint8 [N, C, R, R]
        return Decoded(x, torch.from_numpy(labels), [str(i) for i in range(10)])

    return Source(f"digits/{cfg.split}", digest, build, {"split": cfg.split})


# --------------------------------------------------------------------------- image folder


@DATASETS.register("image-folder")
def image_folder(cfg: DataConfig, channels: int, resolution: int) -> Source:
    """Any folder of images (recursive); labels none | subfolders | csv (auto = none)."""
    scan = scan_folder(cfg)
    if cfg.split == "test":
        logger.info("%s: a folder has no split; --split test uses all its images", scan.root)
    hashed = [(scan.rel(p), p) for p in scan.files]
    if scan.label_csv is not None:
        hashed.append(("\0label-csv", scan.label_csv))  # a key no relative path can take
    labels = "none" if cfg.labels == "auto" else cfg.labels
    options = {"labels": labels, "label_column": cfg.label_column if labels == "csv" else ""}
    return Source(
        f"image-folder:{scan.root.name}",
        lambda: digest_files(hashed),
        lambda: decode_folder(scan, channels, resolution, cfg.max_images),
        options,
        list(scan.skipped),
        own_labels=False,
        scan=scan,
    )
