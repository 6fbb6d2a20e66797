"""Where metrics keep what is expensive to recompute: trained evaluators and real-set statistics.

Both live under ``ganforge.data.cache_dir()`` (``$GANFORGE_CACHE``, else the XDG cache), in
``evaluators/`` and ``real-stats/``. Real statistics are keyed by everything that changes them:
the data's content fingerprint, the split, the extractor's identity (which includes a hash of its
weights) and the preprocessing, so a retrained evaluator or a changed dataset never reuses stale
numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from ganforge.checkpoint import atomic_write, check_output_space, clean_stale_temporaries
from ganforge.errors import CacheWarning, GanforgeError, WriteError
from ganforge.metrics.core import FeatureSet

logger = logging.getLogger("ganforge.metrics")

# Bump when feature extraction or the stored layout changes: old entries then stop matching.
STATS_FORMAT = 1


def cache_root() -> Path:
    """The user's ganforge cache (tests monkeypatch this function to a temporary folder)."""
    from ganforge.data import cache_dir

    return Path(cache_dir())


_TIDIED: set[Path] = set()  # folders whose stale temporaries this process has already removed
_UNWRITABLE: set[Path] = set()  # folders already reported as unwritable (warned once, not at every write)


def _tidy(directory: Path) -> Path:
    """Remove temporaries of killed writers (older than ``STALE_AFTER_S``), once per folder and process."""
    if directory not in _TIDIED:
        _TIDIED.add(directory)
        clean_stale_temporaries(directory)
    return directory


def evaluators_dir() -> Path:
    return _tidy(cache_root() / "evaluators")


def stats_dir() -> Path:
    return _tidy(cache_root() / "real-stats")


def writable_problem(directory: Path, expected_bytes: int = 0) -> str | None:
    """Why ``directory`` cannot take ``expected_bytes`` of cache now (one line), or None if it can."""
    try:
        check_output_space(directory, expected_bytes, "cache")
    except WriteError as e:
        return str(e)
    return None


def mark_unwritable(directory: Path) -> None:
    """Remember that the user was told ``directory`` cannot be written: later writes there fail quietly."""
    _UNWRITABLE.add(Path(directory))


def require_writable(directory: Path, what: str, expected_bytes: int = 0) -> None:
    """Fail before the work when a cache must store its result (a trained evaluator)."""
    problem = writable_problem(directory, expected_bytes)
    if problem is not None:
        raise GanforgeError(f"{what} needs a writable cache: {problem}; or set GANFORGE_CACHE to a writable folder")


def short_hash(payload: Any, length: int = 20) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def index_digest(index: torch.Tensor) -> str:
    """Which real images were used (a subset, or one half for real-vs-real) as a short hash."""
    return hashlib.sha256(index.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def real_stats_key(
    fingerprint: str,
    split: str,
    extractor_identity: str,
    preprocessing: dict[str, Any],
    subset: str,
) -> str:
    """Cache key of a real set's features: changes whenever any input that shapes them changes."""
    return short_hash(
        {
            "format": STATS_FORMAT,
            "fingerprint": fingerprint,
            "split": split,
            "extractor": extractor_identity,
            "preprocessing": preprocessing,
            "subset": subset,
        }
    )


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "data"


def stats_path(dataset: str, extractor_name: str, key: str) -> Path:
    return stats_dir() / f"{_safe(dataset)}-{_safe(extractor_name)}-{key}.safetensors"


def load_real_stats(path: Path, key: str) -> FeatureSet | None:
    """The cached real features, or None when missing, foreign or unreadable (then recomputed)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key or meta.get("format") != str(STATS_FORMAT):
                return None
            names = set(f.keys())
            feats = FeatureSet(
                f.get_tensor("features"),
                f.get_tensor("probs") if "probs" in names else None,
                f.get_tensor("labels") if "labels" in names else None,
            )
            feats._stats = (f.get_tensor("mean"), f.get_tensor("cov"))
            return feats
    except Exception as e:  # a truncated file is only a cache miss
        logger.warning("ignoring unreadable real-statistics cache %s (%s)", path, e)
        return None


def save_real_stats(path: Path, key: str, feats: FeatureSet, info: dict[str, Any]) -> None:
    """Atomic write (temp file + rename): an interrupted run never leaves a half file behind."""
    from safetensors.torch import save_file

    mean, cov = feats.stats()
    tensors = {"features": feats.features.contiguous(), "mean": mean.contiguous(), "cov": cov.contiguous()}
    if feats.probs is not None:
        tensors["probs"] = feats.probs.contiguous()
    if feats.labels is not None:
        tensors["labels"] = feats.labels.contiguous()
    meta = {"key": key, "format": str(STATS_FORMAT), "info": json.dumps(info, sort_keys=True, default=str)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def write_atomic(path: Path, write: Any, strict: bool = False) -> None:
    """Write via ``write(tmp_path)`` then rename; a failure warns (a cache only saves time) or, with
    ``strict``, is a one-line user error."""
    try:
        atomic_write(path, lambda tmp: write(str(tmp)))
    except (OSError, WriteError) as e:  # a read-only or full cache costs speed, not correctness
        if strict:
            if isinstance(e, WriteError):
                raise
            raise GanforgeError(f"cannot write {path} ({e}); set GANFORGE_CACHE to a writable folder") from None
        if path.parent in _UNWRITABLE:
            return
        mark_unwritable(path.parent)
        warnings.warn(
            f"could not write the cache {path} ({e}); set GANFORGE_CACHE to a writable folder", CacheWarning, 2
        )
