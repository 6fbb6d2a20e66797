"""IDX files (MNIST, Fashion-MNIST), read directly.

torchvision's ``MNIST`` class insists on all four files of both splits; reading the IDX format
ourselves lets a root that holds only the test split work. Format: two zero bytes, a type code, the
number of dimensions, big-endian int32 sizes, then the data in row-major order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ganforge.errors import DataError

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file, gzipped or not (detected by content, not by name)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is a damaged gzip file ({e}): delete it and download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{path} is not an IDX file (bad header): replace it with the original dataset file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header): delete it and download it again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_TYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header says {shape}: delete it and download it again"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX (gzipped when ``compress`` or the name ends in .gz); used by tests and tools."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    big = np.dtype(_TYPES[codes[native]])
    data = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data += np.ascontiguousarray(array, dtype=big).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
