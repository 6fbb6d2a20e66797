"""Datasets and batch loaders.

``load_dataset(cfg.data, channels, resolution)`` decodes a registered dataset once into a uint8
``ImageData`` at the model's channels and resolution, caching it under ``cache_dir()``;
``make_loader(run_cfg, device, rank, world_size)`` returns a ``BatchLoader`` whose
``epoch(e, start_batch)`` yields normalised float batches on the device, in an order that depends
only on (train.seed, e). See ``sources`` for the datasets and their splits, ``loaders`` for the
batching contract. Importing this package touches no GPU and no network.
"""

from ganforge.data.core import (
    DataWarning,
    ImageData,
    cache_dir,
    denormalize,
    normalize,
    resize_crop,
    to_model_format,
)
from ganforge.data.folder import IMAGE_EXTENSIONS, decode_image, scan_folder
from ganforge.data.idx import read_idx, write_idx
from ganforge.data.loaders import (
    BatchLoader,
    InMemoryLoader,
    StreamingLoader,
    epoch_order,
    epoch_seed,
    make_loader,
    memory_budget,
)
from ganforge.data.sources import DATASETS, dataset_fingerprint, load_dataset

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "BatchLoader",
    "DataWarning",
    "ImageData",
    "InMemoryLoader",
    "StreamingLoader",
    "cache_dir",
    "dataset_fingerprint",
    "decode_image",
    "denormalize",
    "epoch_order",
    "epoch_seed",
    "load_dataset",
    "make_loader",
    "memory_budget",
    "normalize",
    "read_idx",
    "resize_crop",
    "scan_folder",
    "to_model_format",
    "write_idx",
]
