"""Batch loaders: the whole dataset on the device (main path), or streamed from image files.

Both follow one contract. Epoch ``e``'s order is ``randperm(N)`` from a CPU generator seeded by
``(seed, e)``: identical on every device and every rank, and needing no saved RNG state, so resuming
is just ``epoch(e, start_batch=k)``. Batches are ``train.batch_size`` images (the GLOBAL batch);
rank ``r`` of ``world_size`` takes ``tensor_split(batch, world_size)[r]``, so the ranks' shards
concatenate to the single-process batch. Each batch comes out normalised on the device,
``(x/255 - mean)/std``, as float32 [b, C, H, W], with int64 labels [b] (or None).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ganforge.config import DataConfig, RunConfig
from ganforge.data.core import ImageData, affine_from_stats, warn_skipped, warn_unlabelled
from ganforge.data.folder import FolderScan, decode_image, scan_folder
from ganforge.data.sources import dataset_fingerprint, load_dataset
from ganforge.errors import ConfigError, DataError

logger = logging.getLogger("ganforge.data")

GiB = 1 << 30
MAX_IN_MEMORY_BYTES = 8 * GiB  # in_memory=auto: at most this much uint8 data...
MAX_IN_MEMORY_FRACTION = 0.25  # ...and at most this fraction of physical RAM


@runtime_checkable
class BatchLoader(Protocol):
    batches_per_epoch: int
    num_images: int

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield (x float32 [b, C, H, W] normalised, labels int64 [b] or None), both on the device."""
        ...


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch): distinct pairs give unrelated streams."""
    digest = hashlib.blake2b(f"ganforge-epoch:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_order(
    n: int, seed: int, epoch: int, shuffle: bool = True, hflip: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(order int64 [n], flip mask bool [n] indexed by image, or None), on the CPU, for epoch ``epoch``."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)  # int64 [n]
    # Drawn after the permutation from the same generator, so hflip never changes the order.
    flips = torch.rand(n, generator=g) < 0.5 if hflip else None  # bool [n]
    return order, flips


def shard_indices(order: torch.Tensor, b: int, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s part of global batch ``b`` of ``order``: ``tensor_split(batch, world_size)[rank]``."""
    idx = order[b * batch_size : (b + 1) * batch_size]  # int64 [B] (shorter at the end)
    if world_size > 1:
        idx = torch.tensor_split(idx, world_size)[rank]  # int64 [~B/world]
    return idx


def count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def memory_budget() -> int:
    """Bytes the auto in-memory path may use: min(8 GiB, 25% of physical RAM); 8 GiB if RAM is unknown."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 0
    if physical <= 0:
        return MAX_IN_MEMORY_BYTES
    return int(min(MAX_IN_MEMORY_BYTES, physical * MAX_IN_MEMORY_FRACTION))


class _Batcher:
    """Ordering, batching, sharding and the on-device finish shared by both loaders."""

    def __init__(
        self,
        num_images: int,
        channels: int,
        labels: torch.Tensor | None,
        class_names: Sequence[str],
        name: str,
        batch_size: int,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        drop_last: bool,
        hflip: bool,
        shuffle: bool,
        rank: int,
        world_size: int,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"train.batch_size={batch_size} must be > 0")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.device = torch.device(device)
        self.num_images = num_images
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.batches_per_epoch = count_batches(num_images, batch_size, drop_last)
        if self.batches_per_epoch == 0:
            raise DataError(
                f"{name} has {num_images} images, fewer than train.batch_size={batch_size} with drop_last: "
                "lower --set train.batch_size or set train.drop_last=false"
            )
        self.seed, self.hflip, self.shuffle = seed, hflip, shuffle
        self.rank, self.world_size = rank, world_size
        self.name = name
        self.class_names = list(class_names)
        self.labels = labels.to(self.device) if labels is not None else None  # int64 [N] on the device
        self._scale, self._shift = affine_from_stats(mean, std, channels, self.device)  # [1, C, 1, 1] each

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _check_start(self, start_batch: int) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch={start_batch} is not in 0..{self.batches_per_epoch}")

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This epoch's order and flip mask, on the device (one copy per epoch, none per batch)."""
        order, flips = epoch_order(self.num_images, self.seed, epoch, self.shuffle, self.hflip)
        order = order.to(self.device)  # int64 [N]
        return order, flips.to(self.device) if flips is not None else None

    def _batch_indices(self, order: torch.Tensor, b: int) -> torch.Tensor:
        """This rank's indices of global batch ``b`` (device or CPU, like ``order``)."""
        return shard_indices(order, b, self.batch_size, self.rank, self.world_size)

    def _finish(
        self, x: torch.Tensor, idx: torch.Tensor, flips: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 [b, C, H, W] + image indices [b], both on the device -> (normalised float32, labels)."""
        if flips is not None:
            f = flips.index_select(0, idx).view(-1, 1, 1, 1)  # bool [b, 1, 1, 1]
            x = torch.where(f, x.flip(-1), x)  # uint8 [b, C, H, W]
        out = torch.addcmul(self._shift, x, self._scale)  # float32 [b, C, H, W]: (x/255 - mean)/std fused
        labels = self.labels.index_select(0, idx) if self.labels is not None else None  # int64 [b]
        return out, labels


class InMemoryLoader(_Batcher):
    """One uint8 copy of the dataset on the device; each batch is gathered and normalised there."""

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        seed: int = 0,
        drop_last: bool = False,
        hflip: bool = False,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        n, c = int(data.images.shape[0]), int(data.images.shape[1])
        super().__init__(
            n,
            c,
            data.labels,
            data.class_names,
            data.name,
            batch_size,
            device,
            mean,
            std,
            seed,
            drop_last,
            hflip,
            shuffle,
            rank,
            world_size,
        )
        self.fingerprint = data.fingerprint
        self.images = data.images.to(self.device)  # uint8 [N, C, H, W]; no copy when already there

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        self._check_start(start_batch)
        return self._iterate(epoch, start_batch)

    def _iterate(self, epoch: int, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order, flips = self._order(epoch)
        for b in range(start_batch, self.batches_per_epoch):
            idx = self._batch_indices(order, b)  # int64 [b] on the device
            yield self._finish(self.images.index_select(0, idx), idx, flips)  # uint8 gather, then float


class _FileDataset(Dataset):
    """Decodes one file per item (in DataLoader workers) exactly as the in-memory path does."""

    def __init__(self, files: list[str], channels: int, resolution: int) -> None:
        self.files, self.channels, self.resolution = files, channels, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        from pathlib import Path

        try:
            arr = decode_image(Path(self.files[i]), self.channels, self.resolution)  # uint8 [C, R, R]
            return torch.from_numpy(arr), i, ""
        except Exception as e:  # reported by the main process as a DataError naming the file
            blank = torch.zeros((self.channels, self.resolution, self.resolution), dtype=torch.uint8)
            return blank, i, f"{type(e).__name__}: {e}"


class _Collate:
    """default_collate, plus empty shards: with world_size > 1 a short last batch can leave a rank nothing."""

    def __init__(self, channels: int, resolution: int) -> None:
        self.shape = (0, channels, resolution, resolution)

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if not items:
            return torch.empty(self.shape, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), []
        return default_collate(items)


class _EpochBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch of the current epoch's order (set before each epoch).

    It holds plain numbers, not the loader: a reference cycle would leave the DataLoader's workers to
    the garbage collector, whose shutdown order makes it wait out the workers' join timeouts.
    """

    def __init__(self, num_images: int, batch_size: int, batches: int, rank: int, world_size: int) -> None:
        self.batch_size, self.batches, self.rank, self.world_size = batch_size, batches, rank, world_size
        self.order = torch.arange(num_images)  # int64 [N], replaced per epoch
        self.start_batch = 0

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start_batch, self.batches):
            yield shard_indices(self.order, b, self.batch_size, self.rank, self.world_size).tolist()  # CPU

    def __len__(self) -> int:
        return self.batches - self.start_batch


class StreamingLoader(_Batcher):
    """Image files decoded per batch by ``num_workers`` DataLoader workers: for folders too big for memory."""

    def __init__(
        self,
        scan: FolderScan,
        channels: int,
        resolution: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        seed: int = 0,
        drop_last: bool = False,
        hflip: bool = False,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        fingerprint_fn: Callable[[], str] | None = None,
    ) -> None:
        labels = torch.tensor(scan.labels, dtype=torch.int64) if scan.labels is not None else None  # int64 [N]
        super().__init__(
            len(scan.files),
            channels,
            labels,
            scan.class_names,
            f"image-folder:{scan.root.name}",
            batch_size,
            device,
            mean,
            std,
            seed,
            drop_last,
            hflip,
            shuffle,
            rank,
            world_size,
        )
        self.scan = scan
        self._fingerprint_fn = fingerprint_fn
        self._sampler = _EpochBatchSampler(self.num_images, batch_size, self.batches_per_epoch, rank, world_size)
        import torchvision.transforms.functional  # noqa: F401  (imported once here, not in every worker)

        pin = self.device.type == "cuda"
        self._loader = DataLoader(
            _FileDataset([str(p) for p in scan.files], channels, resolution),
            batch_sampler=self._sampler,
            collate_fn=_Collate(channels, resolution),
            num_workers=num_workers,
            pin_memory=pin,
            # Workers live across epochs; the sampler is re-read at each iter(), in this process.
            persistent_workers=num_workers > 0,
        )

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is dropped)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader._iterator = None

    @cached_property
    def fingerprint(self) -> str:
        """Equal to the in-memory path's; computed only when asked (hashing a huge folder takes time)."""
        if self._fingerprint_fn is None:
            raise AttributeError("this StreamingLoader was built without a fingerprint function")
        return self._fingerprint_fn()

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        self._check_start(start_batch)
        return self._iterate(epoch, start_batch)

    def _iterate(self, epoch: int, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order, flips = epoch_order(self.num_images, self.seed, epoch, self.shuffle, self.hflip)
        self._sampler.order, self._sampler.start_batch = order, start_batch
        flips = flips.to(self.device) if flips is not None else None  # bool [N]
        for x, idx, errors in self._loader:  # uint8 [b, C, R, R], int64 [b] (CPU), list[str]
            if any(errors):
                i = next(k for k, e in enumerate(errors) if e)
                path = self.scan.files[int(idx[i])]
                raise DataError(
                    f"{path} cannot be decoded ({errors[i]}): delete or replace it "
                    "(or use --set data.in_memory=on, which skips unreadable files)"
                )
            x = x.to(self.device, non_blocking=True)
            idx = idx.to(self.device, non_blocking=True)
            yield self._finish(x, idx, flips)


def make_loader(
    cfg: RunConfig, device: torch.device | str, rank: int = 0, world_size: int = 1, *, shuffle: bool = True
) -> BatchLoader:
    """The loader ``cfg`` asks for: in memory (decoded once, cached) or streaming (image-folder only)."""
    d, channels, resolution = cfg.data, cfg.model.channels, cfg.model.resolution
    if cfg.train.batch_size < world_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is the global batch, split over {world_size} processes: "
            f"set it to at least {world_size}"
        )
    mode = d.in_memory
    if mode == "off" and d.dataset != "image-folder":
        raise ConfigError(
            f"data.in_memory=off streams image files, which only image-folder has; {d.dataset} always fits "
            "in memory: use --set data.in_memory=auto"
        )
    if mode == "auto" and d.dataset == "image-folder":
        mode = _memory_mode_for_folder(d, channels, resolution)
    common = dict(
        mean=d.mean,
        std=d.std,
        seed=cfg.train.seed,
        drop_last=cfg.train.drop_last,
        hflip=d.hflip,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
    )
    loader: InMemoryLoader | StreamingLoader
    if mode == "off":
        scan = scan_folder(d, check_headers=True)
        warn_skipped(f"image-folder:{scan.root.name}", scan.skipped)
        warn_unlabelled(
            f"image-folder:{scan.root.name}", scan.unlabelled, scan.num_labelled_candidates, scan.unlabelled_why
        )
        loader = StreamingLoader(
            scan,
            channels,
            resolution,
            cfg.train.batch_size,
            device,
            num_workers=d.num_workers,
            fingerprint_fn=lambda: dataset_fingerprint(d, channels, resolution),
            **common,
        )
    else:
        data = load_dataset(d, channels, resolution)
        loader = InMemoryLoader(data, cfg.train.batch_size, device, **common)
    _check_num_classes(cfg, loader)
    return loader


def _memory_mode_for_folder(d: DataConfig, channels: int, resolution: int) -> str:
    """``on`` when the folder's images fit the memory budget as uint8, else ``off`` (stream from disk)."""
    scan = scan_folder(d, check_headers=False)  # the streaming path re-scans with header checks
    n = len(scan.files) if d.max_images <= 0 else min(d.max_images, len(scan.files))
    need, budget = n * channels * resolution * resolution, memory_budget()
    mode = "on" if need <= budget else "off"
    logger.info(
        "%s: %d images need %.2f GiB as uint8 (budget %.2f GiB): %s",
        scan.root,
        n,
        need / GiB,
        budget / GiB,
        "in memory" if mode == "on" else "streaming from disk",
    )
    return mode


def _check_num_classes(cfg: RunConfig, loader: BatchLoader) -> None:
    """A conditional model needs exactly as many classes as the data has."""
    wanted = cfg.model.num_classes
    if wanted > 0 and loader.num_classes != wanted:
        have = f"{loader.num_classes} classes" if loader.num_classes else "no labels"
        raise ConfigError(
            f"model.num_classes={wanted} but {loader.name} has {have} (data.labels={cfg.data.labels}): "
            f"set --set model.num_classes={loader.num_classes}"
            + ("" if loader.num_classes else " or give the data labels (data.labels=subfolders|csv)")
        )
